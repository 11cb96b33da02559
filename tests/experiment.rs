//! The experiment runner: a grid stopped in the middle is finished by the
//! same command without rerunning a job, the report's mean ± std, and plan
//! errors that name the key.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pixpro::tools::experiment::{
    markdown, missing_protocols, read_results, run, write_report, Hardware, JobResult, Plan,
    RunnerOptions,
};
use pixpro::transfer::evaluate::Protocol;
use pixpro::transfer::probe::ProbeConfig;

mod common;
use common::{check_events, make_images, tiny_voc, TINY, TRAIN_SCALARS};

/// A plan over a data folder `data` (relative to the plan) whose every job
/// uses the tiny recipe; `extra` is appended as plan keys.
fn write_plan(dir: &Path, extra: &str) -> PathBuf {
    let tiny: toml::Table = toml::from_str(TINY).unwrap();
    let overrides = toml::to_string(&toml::Table::from_iter([(
        "overrides".to_string(),
        toml::Value::Table(tiny),
    )]))
    .unwrap();
    let text = format!(
        "data = \"data\"\nsteps = 3\nseeds = [0, 1]\nmethods = [\"random\", \"pixpro\"]\n{extra}\n\
         [probe]\nimage_size = 32\nepochs = 2\n\n{overrides}"
    );
    let path = dir.join("plan.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A plan whose ablation lists the default threshold (the plain pixpro job)
/// and one other value, for seed 0 only.
const ABLATION: &str =
    "[[ablation]]\nkey = \"model.threshold\"\nvalues = [0.7, 1.4]\nseeds = [0]\n";

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn a_stopped_grid_is_finished_without_rerunning_jobs() {
    let dir = tempfile::tempdir().unwrap();
    make_images(&dir.path().join("data/pretrain"), 10);
    tiny_voc(&dir.path().join("data/voc"));
    let plan_path = write_plan(dir.path(), ABLATION);
    let plan = Plan::load(&plan_path).unwrap();
    let ids: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    // Seed-major, ablations after; threshold 0.7 is the pixpro-s0 job.
    assert_eq!(
        ids,
        ["random-s0", "pixpro-s0", "random-s1", "pixpro-s1", "pixpro-threshold=1.4-s0"]
    );

    let out = dir.path().join("out");
    let opts = |max_jobs| RunnerOptions {
        out: out.clone(),
        results: out.join("results.json"),
        max_jobs,
        only: Vec::new(),
        quiet: true,
    };
    let first = run(&plan, &opts(Some(2))).unwrap();
    assert_eq!((first.ran, first.skipped, first.remaining), (2, 0, 3));
    // While another process holds the experiment's folder, nothing runs.
    let other = std::fs::File::options().write(true).open(out.join(".lock")).unwrap();
    other.try_lock().unwrap();
    let busy = run(&plan, &opts(None)).unwrap_err();
    assert!(matches!(busy, pixpro::Error::Busy { ref dir, .. } if *dir == out), "{busy}");
    drop(other);
    let before = read_results(&out.join("results.json")).unwrap();
    let done: Vec<&str> = before.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(done, ["random-s0", "pixpro-s0"]);
    let probes: Vec<PathBuf> =
        done.iter().map(|id| out.join("jobs").join(id).join("probe/probe.json")).collect();
    let stamps: Vec<_> = probes.iter().map(|p| mtime(p)).collect();
    let checkpoint = out.join("jobs/pixpro-s0/checkpoints/last.safetensors");
    let checkpoint_stamp = mtime(&checkpoint);

    let listing = Command::new(env!("CARGO_BIN_EXE_pixpro"))
        .args(["experiment", "--plan", plan_path.to_str().unwrap(), "--out"])
        .arg(&out)
        .arg("--dry-run")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("2 of 5 jobs finished"), "{listing}");
    assert_eq!(listing.matches("to run").count(), 3, "{listing}");

    let second = run(&plan, &opts(None)).unwrap();
    assert_eq!((second.ran, second.skipped, second.remaining), (3, 2, 0));
    assert!(second.stopped_by.is_none());
    let after = read_results(&out.join("results.json")).unwrap();
    assert_eq!(after.len(), 5);
    assert_eq!(after[..2], before[..], "finished jobs' records must not change");
    for (p, t) in probes.iter().zip(&stamps) {
        assert_eq!(mtime(p), *t, "{} was written again", p.display());
    }
    assert_eq!(mtime(&checkpoint), checkpoint_stamp);

    let by_id = |id: &str| after.iter().find(|r| r.id == id).unwrap();
    let ablated = by_id("pixpro-threshold=1.4-s0");
    assert_eq!(ablated.knobs, BTreeMap::from([("model.threshold".into(), 1.4.into())]));
    assert!(by_id("pixpro-s1").knobs.is_empty());
    assert_eq!(by_id("random-s1").images_per_sec, None);
    assert_eq!(by_id("random-s1").steps, 0);
    assert_eq!(by_id("random-s1").precision, None);
    let pretrained = by_id("pixpro-s1");
    assert!(pretrained.images_per_sec.is_some_and(|v| v > 0.0));
    assert_eq!((pretrained.steps, pretrained.probe.seed), (3, 1));
    // The row keeps what the run computed in, as its config.toml does.
    let precision = pretrained.precision.as_deref().unwrap();
    let saved = std::fs::read_to_string(out.join("jobs/pixpro-s1/config.toml")).unwrap();
    assert!(saved.contains(&format!("precision = \"{precision}\"")), "{precision}: {saved}");
    assert!(after.iter().all(|r| r.miou.is_finite() && r.wall_s > 0.0));

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("5 of 5 jobs finished"), "{md}");
    assert!(md.contains(&format!("Pretraining precision: {precision}.")), "{md}");
    assert!(md.contains("| 0.7 (default) | 1 |"), "{md}");
    assert!(out.join("results.png").exists());

    let third = run(&plan, &opts(None)).unwrap();
    assert_eq!((third.ran, third.skipped), (0, 5));
}

/// A pretrained job's row that ran `steps` steps.
fn with_steps(id: &str, method: &str, seed: u64, miou: f64, steps: u64) -> JobResult {
    JobResult { steps, ..result(id, method, seed, miou, Some(10.0)) }
}

fn result(id: &str, method: &str, seed: u64, miou: f64, images_per_sec: Option<f64>) -> JobResult {
    JobResult {
        id: id.into(),
        method: method.into(),
        seed,
        knobs: BTreeMap::new(),
        miou,
        per_class_iou: BTreeMap::new(),
        pixel_accuracy: 0.9,
        output_stride: None,
        images_per_sec,
        wall_s: 60.0,
        cpu_steal_fraction: None,
        steps: if method == "random" { 0 } else { 3 },
        config: None,
        precision: (method != "random").then(|| "fp32".into()),
        probe: ProbeConfig { image_size: 32, epochs: 2, seed, ..Default::default() },
        started_at: 0,
        finished_at: 60,
        hardware: Hardware { cpu: "test cpu".into(), cores: 2, threads: 2, device: "Cpu".into() },
        version: "0.0.0".into(),
        commit: None,
        evaluations: BTreeMap::new(),
        loss_curve: Vec::new(),
    }
}

/// A folder holding the tiny data set as `data`, and options that run
/// the jobs `only` (all when empty) of a plan beside it into its `out`.
fn tiny_grid(only: &[&str]) -> (tempfile::TempDir, RunnerOptions) {
    let dir = tempfile::tempdir().unwrap();
    make_images(&dir.path().join("data/pretrain"), 10);
    tiny_voc(&dir.path().join("data/voc"));
    let out = dir.path().join("out");
    let opts = RunnerOptions {
        results: out.join("results.json"),
        out,
        max_jobs: None,
        only: only.iter().map(|id| id.to_string()).collect(),
        quiet: true,
    };
    (dir, opts)
}

#[test]
fn a_protocol_added_later_is_measured_on_kept_checkpoints() {
    let (dir, opts) = tiny_grid(&[]);
    let out = opts.out.clone();
    let first = run(&Plan::load(&write_plan(dir.path(), "")).unwrap(), &opts).unwrap();
    assert_eq!(first.ran, 4);
    let recorded = read_results(&out.join("results.json")).unwrap();
    let job = recorded.iter().find(|r| r.id == "pixpro-s1").unwrap();
    let said = check_events(&out.join("jobs/pixpro-s1"), &[("eval/probe", job.miou, 3)]);
    assert!(
        said.contains(&format!("{TRAIN_SCALARS} scalars at each of 3 steps and 1 scores")),
        "{said}"
    );
    let checkpoint = out.join("jobs/pixpro-s1/checkpoints/last.safetensors");
    let stamp = mtime(&checkpoint);

    let more = "protocols = [\"probe\", \"retrieval\", \"correspondence\"]\n\
                [retrieval]\nimage_size = 32\n[correspondence]\nimage_size = 32\npairs_per_image = 1\n";
    let plan = Plan::load(&write_plan(dir.path(), more)).unwrap();
    let second = run(&plan, &opts).unwrap();
    assert_eq!((second.ran, second.skipped), (4, 4), "one evaluation per finished job");
    assert_eq!(mtime(&checkpoint), stamp, "pretrained again");
    let results = read_results(&out.join("results.json")).unwrap();
    for r in &results {
        let names: Vec<&str> = r.evaluations.keys().map(String::as_str).collect();
        assert_eq!(names, ["correspondence", "retrieval"], "{}", r.id);
        let e = &r.evaluations["retrieval"];
        assert!((0.0..=1.0).contains(&e.score) && e.recipe["seed"] == r.seed, "{e:?}");
        assert_eq!(r.evaluations["correspondence"].score_name, "top-1 accuracy");
        let folder = out.join("jobs").join(&r.id).join("retrieval/eval.json");
        assert!(folder.is_file(), "{}", folder.display());
        let scores = [
            ("eval/probe", r.miou, r.steps),
            ("eval/retrieval", e.score, r.steps),
            ("eval/correspondence", r.evaluations["correspondence"].score, r.steps),
        ];
        let said = check_events(&out.join("jobs").join(&r.id), &scores);
        assert!(said.contains(&format!("at each of {} steps and 3 scores", r.steps)), "{said}");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| probe mIoU | retrieval | correspondence | images/s |"), "{md}");
    assert!(md.contains("| pixpro − random | 2 |"), "{md}");
    assert_eq!(run(&plan, &opts).unwrap().ran, 0);

    // A recipe changed under recorded results is refused, naming the job.
    let changed = more.replace("pairs_per_image = 1", "pairs_per_image = 2");
    let e = run(&Plan::load(&write_plan(dir.path(), &changed)).unwrap(), &opts).unwrap_err();
    assert!(e.to_string().contains("correspondence was run with recipe"), "{e}");
}

#[test]
fn a_signal_is_answered_at_once_and_the_grid_stops_after_the_job() {
    let (dir, opts) = tiny_grid(&[]);
    let plan = write_plan(dir.path(), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixpro"))
        .args(["experiment", "--plan"])
        .arg(&plan)
        .arg("--out")
        .arg(&opts.out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said += &format!("{line}\n");
        if line.contains("start random-s0") {
            break;
        }
    }
    // random-s0 is measured only: the signal comes during its evaluation.
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    for line in lines {
        said += &format!("{}\n", line.unwrap());
    }
    assert!(child.wait().unwrap().success(), "{said}");
    assert!(said.contains("stopping: a pretraining stops at its next step"), "{said}");
    assert!(said.contains("stopped (interrupted by a signal)"), "{said}");
    let rows = read_results(&opts.results).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["random-s0"], "{said}");
}

#[test]
fn a_pretraining_recipe_changed_under_a_job_is_refused() {
    let (dir, opts) = tiny_grid(&["pixpro-s0"]);
    let plan_path = write_plan(dir.path(), "");
    let plan_text = std::fs::read_to_string(&plan_path).unwrap();
    assert_eq!(run(&Plan::load(&plan_path).unwrap(), &opts).unwrap().ran, 1);
    let rows = read_results(&opts.results).unwrap();
    let recorded = rows[0].config.as_ref().expect("a pretrained row records its config");
    assert_eq!(recorded["optim"]["warmup_epochs"], 0.5);
    assert_eq!(recorded["train"]["steps"], 3);

    // How the job runs may change: the row stands, and a folder copied to
    // another grid is measured on its checkpoint without training again.
    let edit = |from: &str, to: &str| {
        assert!(plan_text.contains(from), "{plan_text}");
        std::fs::write(&plan_path, plan_text.replace(from, to)).unwrap();
        Plan::load(&plan_path).unwrap()
    };
    let runtime = edit("workers = 2", "workers = 1");
    assert_eq!(run(&runtime, &opts).unwrap().ran, 0);
    let checkpoint = opts.out.join("jobs/pixpro-s0/checkpoints/last.safetensors");
    let stamp = mtime(&checkpoint);
    let elsewhere = |name: &str| RunnerOptions {
        results: opts.out.join(name),
        out: opts.out.clone(),
        max_jobs: None,
        only: opts.only.clone(),
        quiet: true,
    };
    assert_eq!(run(&runtime, &elsewhere("copy.json")).unwrap().ran, 1);
    assert_eq!(mtime(&checkpoint), stamp, "pretrained again");

    // The recipe may not, whether the job is recorded or only begun.
    let other = edit("warmup_epochs = 0.5", "warmup_epochs = 0.25");
    let e = run(&other, &opts).unwrap_err().to_string();
    assert!(e.contains("pixpro-s0") && e.contains("differs in optim.warmup_epochs)"), "{e}");
    let e = run(&other, &elsewhere("fresh.json")).unwrap_err().to_string();
    assert!(e.contains("begun with another recipe"), "{e}");
    assert!(e.contains("(differs in optim.warmup_epochs)"), "{e}");
    assert!(e.contains("config.toml"), "{e}");
    assert_eq!(mtime(&checkpoint), stamp, "trained on under another recipe");
}

#[test]
fn a_plans_eval_output_stride_remeasures_rows_measured_at_another() {
    let (dir, opts) = tiny_grid(&["random-s0", "pixpro-s0"]);
    let out = opts.out.clone();
    // TINY pretrains at output stride 8; unset, each job is measured there.
    let retrieval = "protocols = [\"retrieval\"]\n[retrieval]\nimage_size = 32\n";
    assert_eq!(
        run(&Plan::load(&write_plan(dir.path(), retrieval)).unwrap(), &opts).unwrap().ran,
        2
    );
    let strides = |rows: &[JobResult]| {
        rows.iter()
            .map(|r| (r.id.clone(), r.output_stride, r.evaluations["retrieval"].output_stride))
            .collect::<Vec<_>>()
    };
    let rows = read_results(&out.join("results.json")).unwrap();
    let at = |s| vec![("random-s0".into(), Some(s), s), ("pixpro-s0".into(), Some(s), s)];
    assert_eq!(strides(&rows), at(8));
    let checkpoint = out.join("jobs/pixpro-s0/checkpoints/last.safetensors");
    let stamp = mtime(&checkpoint);

    let plan =
        Plan::load(&write_plan(dir.path(), &format!("eval_output_stride = 16\n{retrieval}")))
            .unwrap();
    let names = |r: &JobResult| {
        missing_protocols(&plan, r).iter().map(Protocol::to_string).collect::<Vec<_>>()
    };
    assert_eq!(names(&rows[1]), ["probe", "retrieval"]);
    // A row of an older pixpro, without its probe's stride, was measured at
    // its model's.
    assert_eq!(
        names(&JobResult { output_stride: None, ..rows[1].clone() }),
        ["probe", "retrieval"]
    );
    assert_eq!(run(&plan, &opts).unwrap().ran, 2, "one measurement per recorded job");
    assert_eq!(mtime(&checkpoint), stamp, "pretrained again");
    let rows = read_results(&out.join("results.json")).unwrap();
    assert_eq!(strides(&rows), at(16));
    assert!(rows.iter().all(|r| names(r).is_empty()));
    let probe: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("jobs/pixpro-s0/probe/probe.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(probe["backbone"]["output_stride"], 16, "{probe}");
    assert_eq!(run(&plan, &opts).unwrap().ran, 0);

    let e = Plan::load(&write_plan(dir.path(), "eval_output_stride = 12\n")).unwrap_err();
    assert!(e.to_string().contains("eval_output_stride") && e.to_string().contains("12"), "{e}");
}

#[test]
fn ablation_jobs_run_seed_major_across_ablations() {
    let dir = tempfile::tempdir().unwrap();
    make_images(&dir.path().join("data/pretrain"), 2);
    tiny_voc(&dir.path().join("data/voc"));
    let two = "[[ablation]]\nkey = \"model.threshold\"\nvalues = [1.4, 2.8]\n\n\
               [[ablation]]\nkey = \"model.ppm_gamma\"\nvalues = [4.0]\n";
    let plan = Plan::load(&write_plan(dir.path(), two)).unwrap();
    let ids: Vec<&str> = plan.jobs.iter().skip(4).map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "pixpro-threshold=1.4-s0",
            "pixpro-threshold=2.8-s0",
            "pixpro-ppm_gamma=4.0-s0",
            "pixpro-threshold=1.4-s1",
            "pixpro-threshold=2.8-s1",
            "pixpro-ppm_gamma=4.0-s1",
        ]
    );
}

#[test]
fn step_ablations_of_several_methods_make_the_compute_curves() {
    let dir = tempfile::tempdir().unwrap();
    for part in ["data/pretrain", "data/voc"] {
        std::fs::create_dir_all(dir.path().join(part)).unwrap();
    }
    // Two ablations of one key and method make one table (long runs are
    // often wanted at fewer seeds than short ones).
    let steps = "[[ablation]]\nkey = \"train.steps\"\nvalues = [2, 3]\nseeds = [0]\n\
                 methods = [\"pixpro\", \"byol\"]\n\n\
                 [[ablation]]\nkey = \"train.steps\"\nvalues = [4]\nseeds = [0]\n";
    let plan = Plan::load(&write_plan(dir.path(), steps)).unwrap();
    let ids: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    // 3 steps is the plan's: pixpro's is the Methods job, byol's its own.
    assert_eq!(
        ids,
        [
            "random-s0",
            "pixpro-s0",
            "random-s1",
            "pixpro-s1",
            "pixpro-steps=2-s0",
            "byol-steps=2-s0",
            "byol-s0",
            "pixpro-steps=4-s0",
        ]
    );
    let titles: Vec<&str> = plan.groups.iter().map(|g| g.title.as_str()).collect();
    assert_eq!(
        titles,
        ["Methods", "Ablation of train.steps (pixpro)", "Ablation of train.steps (byol)"]
    );
    let labels: Vec<&str> = plan.groups[1].rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["2", "3 (default)", "4"]);
    let byol = plan.jobs.iter().find(|j| j.id == "byol-s0").unwrap();
    assert_eq!(byol.config.model.method.name(), "byol");

    let results = vec![
        result("random-s0", "random", 0, 0.20, None),
        result("random-s1", "random", 1, 0.24, None),
        with_steps("pixpro-s0", "pixpro", 0, 0.35, 3),
        with_steps("pixpro-s1", "pixpro", 1, 0.45, 3),
        with_steps("pixpro-steps=2-s0", "pixpro", 0, 0.30, 2),
        with_steps("byol-steps=2-s0", "byol", 0, 0.28, 2),
        with_steps("byol-s0", "byol", 0, 0.33, 3),
        with_steps("pixpro-steps=4-s0", "pixpro", 0, 0.50, 4),
    ];
    // Recorded elsewhere: no job folders here, so no loss curves, but the
    // scores are all reported.
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    write_report(&plan, &results, &out).unwrap();
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let section = &md[md.find("## Quality against compute").expect("a compute section")..];
    assert!(section.contains("| 2 | pixpro − random | 1 | +0.1000 |"), "{section}");
    assert!(section.contains("| 2 | byol − random | 1 | +0.0800 |"), "{section}");
    assert!(section.contains("| 2 | pixpro − byol | 1 | +0.0200 |"), "{section}");
    // Seeds 0 and 1: 0.15 and 0.21, sample std 0.0424.
    assert!(section.contains("| 3 | pixpro − random | 2 | +0.1800 ± 0.0424 |"), "{section}");
    assert!(section.contains("| 4 | pixpro − random | 1 | +0.3000 |"), "{section}");
    assert!(!section.contains("| 4 | byol"), "{section}");
    // One panel: the plan measures the probe only.
    let png = image::open(out.join("compute.png")).unwrap();
    assert_eq!((png.width(), png.height()), (960, 360));

    // A recorded job must have run the steps its id stands for.
    let mut wrong = results.clone();
    wrong[4].steps = 3;
    let file = out.join("results.json");
    std::fs::write(&file, serde_json::to_string(&wrong).unwrap()).unwrap();
    let opts = RunnerOptions {
        out: out.clone(),
        results: file,
        max_jobs: Some(0),
        only: Vec::new(),
        quiet: true,
    };
    let e = run(&plan, &opts).unwrap_err().to_string();
    assert!(e.contains("pixpro-steps=2-s0") && e.contains("asks for 2"), "{e}");
}

#[test]
fn a_compute_plans_variant_is_a_level_drawn_across_and_paired_with_every_point() {
    let dir = tempfile::tempdir().unwrap();
    for part in ["data/pretrain", "data/voc"] {
        std::fs::create_dir_all(dir.path().join(part)).unwrap();
    }
    let extra = "[[ablation]]\nkey = \"train.steps\"\nvalues = [2]\nseeds = [0]\n\n\
                 [[variant]]\nlabel = \"ctl\"\nset = { \"optim.lr_per_256\" = 1e-12 }\n";
    let plan = Plan::load(&write_plan(dir.path(), extra)).unwrap();
    let results = vec![
        result("random-s0", "random", 0, 0.20, None),
        result("random-s1", "random", 1, 0.24, None),
        with_steps("pixpro-s0", "pixpro", 0, 0.35, 3),
        with_steps("pixpro-s1", "pixpro", 1, 0.45, 3),
        with_steps("pixpro-steps=2-s0", "pixpro", 0, 0.30, 2),
        with_steps("pixpro-ctl-s0", "pixpro", 0, 0.25, 3),
        with_steps("pixpro-ctl-s1", "pixpro", 1, 0.27, 3),
    ];
    let report = |results: &[JobResult], name: &str| {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        write_report(&plan, results, &out).unwrap();
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        let png = image::open(out.join("compute.png")).unwrap().to_rgb8();
        (md, png)
    };
    let (md, png) = report(&results, "with");
    let section = &md[md.find("## Quality against compute").expect("a compute section")..];
    // Seeds 0 and 1 at 3 steps: 0.10 and 0.18, sample std 0.0566.
    assert!(
        section.contains("| 3 | pixpro − pixpro ctl (3 steps) | 2 | +0.1400 ± 0.0566 |"),
        "{section}"
    );
    assert!(section.contains("| 2 | pixpro − pixpro ctl (3 steps) | 1 | +0.0500 |"), "{section}");
    // Bands take their colours in order: pixpro's curve, random init, then
    // the control, the third colour, which nothing else in the picture has.
    let third = image::Rgb([30u8, 140, 60]);
    let count = |png: &image::RgbImage| png.pixels().filter(|p| **p == third).count();
    assert!(count(&png) > 0, "the control is drawn");
    let (md, png) = report(&results[..5], "without");
    assert!(!md.contains("ctl (3 steps) |"), "no finished control, no pair");
    assert_eq!(count(&png), 0, "no finished control, no level");
}

#[test]
fn a_variant_sets_several_keys_and_may_pretrain_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    for part in ["data/pretrain", "data/voc", "empty"] {
        std::fs::create_dir_all(dir.path().join(part)).unwrap();
    }
    let variant =
        "[[variant]]\nlabel = \"bs6\"\nset = { \"train.batch_size\" = 6, train = { steps = 2 } }\n\
                   seeds = [0]\npretrain = \"empty\"\n\n\
                   [[variant]]\nlabel = \"sqrt\"\nmethod = \"byol\"\n\
                   set = { \"optim.lr_scaling\" = \"sqrt\" }\n";
    let plan = Plan::load(&write_plan(dir.path(), variant)).unwrap();
    let ids: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "random-s0",
            "pixpro-s0",
            "random-s1",
            "pixpro-s1",
            "pixpro-bs6-s0",
            "byol-sqrt-s0",
            "byol-sqrt-s1"
        ]
    );
    let bs6 = &plan.jobs[4];
    assert_eq!((bs6.config.train.batch_size, bs6.config.train.steps), (6, 2));
    let knobs: Vec<&str> = bs6.knobs.keys().map(String::as_str).collect();
    assert_eq!(knobs, ["data.pretrain", "train.batch_size", "train.steps"]);
    assert_eq!(plan.jobs[5].config.model.method.name(), "byol");
    let group = plan.groups.iter().find(|g| g.title == "Variants").unwrap();
    let labels: Vec<&str> = group.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["pixpro bs6", "byol sqrt"]);

    // Paired with random init and with its method's own row.
    let results = vec![
        result("random-s0", "random", 0, 0.20, None),
        result("random-s1", "random", 1, 0.25, None),
        result("pixpro-s0", "pixpro", 0, 0.30, Some(10.0)),
        result("pixpro-s1", "pixpro", 1, 0.32, Some(10.0)),
        JobResult { steps: 2, ..result("pixpro-bs6-s0", "pixpro", 0, 0.40, Some(10.0)) },
    ];
    let md = markdown(&plan, &results);
    assert!(md.contains("| pixpro bs6 − random | 1 | +0.2000 |"), "{md}");
    assert!(md.contains("| pixpro bs6 − pixpro | 1 | +0.1000 |"), "{md}");

    // It pretrains on its own folder: an empty one is named when it runs.
    let out = dir.path().join("out");
    let file = out.join("results.json");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&file, serde_json::to_string(&results[..4]).unwrap()).unwrap();
    let opts = RunnerOptions { out, results: file, max_jobs: None, only: Vec::new(), quiet: true };
    let e = run(&plan, &opts).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");

    let err = |extra: &str| Plan::load(&write_plan(dir.path(), extra)).unwrap_err().to_string();
    let e = err("[[variant]]\nlabel = \"a\"\nset = { \"train.seed\" = 3 }\n");
    assert!(e.contains("variant[0].set") && e.contains("train.seed"), "{e}");
    let e = err("[[variant]]\nlabel = \"a\"\nset = { \"train.batch_size\" = 0 }\n");
    assert!(e.contains("variant[0].set") && e.contains("batch_size"), "{e}");
    let e = err("[[variant]]\nlabel = \"a\"\nset = {}\npretrain = \"nowhere\"\n");
    assert!(e.contains("variant[0].set"), "{e}");
    let e =
        err("[[variant]]\nlabel = \"a\"\nset = { \"train.steps\" = 1 }\npretrain = \"nowhere\"\n");
    assert!(e.contains("nowhere") && e.contains("variant[0].pretrain"), "{e}");
    let e = err("[[variant]]\nlabel = \"pixpro\"\nset = { \"train.steps\" = 1 }\n");
    assert!(e.contains("variant[0].label"), "{e}");
    // A variant whose job id is an ablation value's, with another recipe.
    let e = err(&format!(
        "[[variant]]\nlabel = \"threshold=1.4\"\nset = {{ \"train.steps\" = 1 }}\nseeds = [0]\n{ABLATION}"
    ));
    assert!(e.contains("ablation[0].values") && e.contains("pixpro-threshold=1.4-s0"), "{e}");

    // A variant measured with part of the plan's protocols: its jobs lack
    // only those, the others all of the plan's.
    let part = "protocols = [\"retrieval\", \"correspondence\"]\n\
                [[variant]]\nlabel = \"a\"\nset = { \"train.steps\" = 1 }\nseeds = [0]\n\
                protocols = [\"probe\", \"correspondence\"]\n";
    let plan = Plan::load(&write_plan(dir.path(), part)).unwrap();
    let (variant, plain) = (&plan.jobs[4], &plan.jobs[1]);
    assert_eq!(variant.id, "pixpro-a-s0");
    let names = |ps: &[Protocol]| ps.iter().map(Protocol::to_string).collect::<Vec<_>>();
    assert_eq!(names(&variant.protocols), ["correspondence"]);
    assert_eq!(names(&plain.protocols), ["retrieval", "correspondence"]);
    let missing = missing_protocols(&plan, &result("pixpro-a-s0", "pixpro", 0, 0.3, None));
    assert_eq!(names(&missing), ["correspondence"]);
    let missing = missing_protocols(&plan, &result("pixpro-s0", "pixpro", 0, 0.3, None));
    assert_eq!(names(&missing), ["retrieval", "correspondence"]);
    let e = err(&part.replace("[\"probe\", \"correspondence\"]", "[\"finetune\"]"));
    assert!(e.contains("variant[0].protocols") && e.contains("`finetune` is not one of"), "{e}");
    let e = err(&part.replace("[\"probe\", \"correspondence\"]", "[\"nope\"]"));
    assert!(e.contains("variant[0].protocols") && e.contains("plan.toml"), "{e}");
}

/// `r` with a retrieval score.
fn with_retrieval(r: JobResult, score: f64) -> JobResult {
    let e = pixpro::transfer::evaluate::Evaluation {
        protocol: "retrieval".into(),
        weights: String::new(),
        arch: "resnet18".into(),
        output_stride: 16,
        data: PathBuf::new(),
        recipe: serde_json::Value::Null,
        score_name: "mIoU".into(),
        score,
        per_class_iou: None,
        wall_s: 1.0,
        details: serde_json::Value::Null,
    };
    JobResult { evaluations: BTreeMap::from([("retrieval".to_string(), e)]), ..r }
}

#[test]
fn the_selection_rule_ranks_every_recipe_and_names_the_chosen_one() {
    let dir = tempfile::tempdir().unwrap();
    for part in ["data/pretrain", "data/voc"] {
        std::fs::create_dir_all(dir.path().join(part)).unwrap();
    }
    let extra = "protocols = [\"retrieval\"]\n\
                 [selection]\nprotocols = [\"probe\", \"retrieval\"]\n\
                 [[variant]]\nlabel = \"a\"\nset = { \"train.steps\" = 4 }\nseeds = [0]\n\
                 [[variant]]\nlabel = \"b\"\nset = { \"train.steps\" = 5 }\nseeds = [0]\n\
                 [[variant]]\nlabel = \"c\"\nset = { \"train.steps\" = 6 }\nseeds = [0]\n\
                 [[variant]]\nlabel = \"d\"\nmethod = \"byol\"\nset = { \"train.steps\" = 4 }\n\
                 seeds = [0]\n\
                 [[ablation]]\nkey = \"model.ppm_gamma\"\nvalues = [2.0, 4.0]\nseeds = [0, 1, 2]\n"
        .to_string()
        + ABLATION;
    let plan = Plan::load(&write_plan(dir.path(), &extra)).unwrap();
    let r = |id: &str, method: &str, seed: u64, probe: f64, retrieval: f64| {
        with_retrieval(result(id, method, seed, probe, Some(10.0)), retrieval)
    };
    let results = vec![
        r("random-s0", "random", 0, 0.90, 0.90),
        // The preset: mean probe 0.30, retrieval 0.20.
        r("pixpro-s0", "pixpro", 0, 0.28, 0.21),
        r("pixpro-s1", "pixpro", 1, 0.32, 0.19),
        // a: best probe, worst retrieval; b: second on both; c: tied with
        // the preset on retrieval, last on the probe.
        r("pixpro-a-s0", "pixpro", 0, 0.40, 0.10),
        r("pixpro-b-s0", "pixpro", 0, 0.35, 0.25),
        r("pixpro-c-s0", "pixpro", 0, 0.20, 0.20),
        // Not a candidate: another method, however good.
        r("byol-d-s0", "byol", 0, 0.99, 0.99),
        // Measured on the probe only so far: listed, unranked.
        result("pixpro-threshold=1.4-s0", "pixpro", 0, 0.50, Some(10.0)),
        // The preset's third seed, which only the gamma ablation asks for,
        // so far without retrieval: in the probe's mean, not retrieval's.
        result("pixpro-s2", "pixpro", 2, 0.30, Some(10.0)),
    ];
    let selection = plan.selection.as_ref().unwrap();
    let (ranked, waiting) = pixpro::tools::experiment::rank(&plan, selection, &results);
    let order: Vec<(&str, Vec<f64>, f64)> =
        ranked.iter().map(|r| (r.label.as_str(), r.ranks.clone(), r.mean_rank)).collect();
    // probe: a 1, b 2, preset 3, c 4; retrieval: b 1, preset and c 2.5, a 4.
    assert_eq!(
        order,
        [
            ("pixpro b", vec![2.0, 1.0], 1.5),
            ("pixpro a", vec![1.0, 4.0], 2.5),
            ("pixpro", vec![3.0, 2.5], 2.75),
            ("pixpro c", vec![4.0, 2.5], 3.25),
        ]
    );
    // The ablations' defaults, at fewer seeds (threshold) or more (gamma),
    // are the preset's recipe again, not candidates of their own.
    assert_eq!(waiting, ["model.ppm_gamma = 4.0", "model.threshold = 1.4"]);
    let md = markdown(&plan, &results);
    assert!(md.contains("chosen so far: **pixpro b** (mean rank 1.50)"), "{md}");
    // n is the seeds of the protocol measured on fewest (retrieval's 2).
    assert!(
        md.contains("| 3 | pixpro | 2 | 0.3000 ± 0.0200 (3) | 0.2000 ± 0.0141 (2.5) | 2.75 |"),
        "{md}"
    );
    assert!(md.contains("| - | model.threshold = 1.4 | - | - | - | - |"), "{md}");

    // Equal mean ranks go to the better probe. retrieval: c 1, preset 2,
    // b 3, a 4; so a, b and the preset all have 2.5.
    let mut tied = results.clone();
    tied[4] = r("pixpro-b-s0", "pixpro", 0, 0.35, 0.15);
    tied[5] = r("pixpro-c-s0", "pixpro", 0, 0.20, 0.30);
    let (ranked, _) = pixpro::tools::experiment::rank(&plan, selection, &tied);
    let order: Vec<(&str, f64)> = ranked.iter().map(|r| (r.label.as_str(), r.mean_rank)).collect();
    assert_eq!(order, [("pixpro a", 2.5), ("pixpro b", 2.5), ("pixpro", 2.5), ("pixpro c", 2.5)]);

    // The second stage: the preset (n 2) gives the spreads, probe 0.02 and
    // retrieval 0.0141. b is chosen (0.35, 0.25); a is more than a spread
    // behind it on retrieval, c on the probe, so only b needs more seeds.
    let (ranked, _) = pixpro::tools::experiment::rank(&plan, selection, &results);
    let (widest, near) = pixpro::tools::experiment::contenders(&ranked).unwrap();
    assert_eq!(widest.label, "pixpro");
    assert_eq!(near.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), ["pixpro b"]);
    assert!(
        md.contains(
            "at fewer seeds than pixpro (n 2) and within one of its seed spreads \
             (probe 0.0200, retrieval 0.0141) of the chosen row on every protocol: \
             **pixpro b** (n 1)."
        ),
        "{md}"
    );
    // a within a spread on both (0.34 >= 0.35 - 0.02, 0.24 >= 0.25 - 0.0141):
    // a contender too; the preset, at the most seeds, never is.
    let mut close = results.clone();
    close[3] = r("pixpro-a-s0", "pixpro", 0, 0.34, 0.24);
    let (ranked, _) = pixpro::tools::experiment::rank(&plan, selection, &close);
    let (_, near) = pixpro::tools::experiment::contenders(&ranked).unwrap();
    assert_eq!(near.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), ["pixpro b", "pixpro a"]);
    // ... but not at 0.23, just over a spread behind on retrieval.
    close[3] = r("pixpro-a-s0", "pixpro", 0, 0.34, 0.23);
    let (ranked, _) = pixpro::tools::experiment::rank(&plan, selection, &close);
    let (_, near) = pixpro::tools::experiment::contenders(&ranked).unwrap();
    assert_eq!(near.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), ["pixpro b"]);
    // The preset chosen and every other row more than a spread behind it.
    let mut behind = results.clone();
    for i in 3..6 {
        behind[i] = r(&results[i].id, "pixpro", 0, 0.27, 0.17);
    }
    assert!(
        markdown(&plan, &behind).contains(
            "No row at fewer seeds than pixpro (n 2) is within one of its seed spreads \
             (probe 0.0200, retrieval 0.0141) of the chosen row on every protocol."
        ),
        "{}",
        markdown(&plan, &behind)
    );
    // No row at two seeds yet: no spread, no second stage.
    let first: Vec<JobResult> = results.iter().filter(|r| r.id != "pixpro-s1").cloned().collect();
    let (ranked, _) = pixpro::tools::experiment::rank(&plan, selection, &first);
    assert!(pixpro::tools::experiment::contenders(&ranked).is_none());
    assert!(!markdown(&plan, &first).contains("seed spreads"));

    let err = |extra: &str| Plan::load(&write_plan(dir.path(), extra)).unwrap_err().to_string();
    let e = err("[selection]\nprotocols = [\"retrieval\"]\n");
    assert!(e.contains("selection.protocols") && e.contains("plan.toml"), "{e}");
    let e = err("[selection]\nprotocols = [\"probe\", \"probe\"]\n");
    assert!(e.contains("selection.protocols") && e.contains("twice"), "{e}");
    let e = err("[selection]\nprotocols = []\n");
    assert!(e.contains("selection.protocols"), "{e}");
    let e = err("[selection]\nprotocols = [\"probe\"]\nmethod = \"byol\"\n");
    assert!(e.contains("selection.method") && e.contains("byol"), "{e}");
    let e = err("[selection]\nprotocols = [\"probe\"]\nmethod = \"random\"\n");
    assert!(e.contains("selection.method") && e.contains("choose"), "{e}");
    let e = err("protocols = [\"retrieval\"]\n[selection]\nprotocols = [\"retrieval\"]\n\
                 [[variant]]\nlabel = \"a\"\nset = { \"train.steps\" = 4 }\nprotocols = [\"probe\"]\n");
    assert!(e.contains("selection.protocols") && e.contains("pixpro-a-s0"), "{e}");
}

#[test]
fn the_report_gives_mean_and_sample_std_over_seeds() {
    let dir = tempfile::tempdir().unwrap();
    for part in ["data/pretrain", "data/voc"] {
        std::fs::create_dir_all(dir.path().join(part)).unwrap();
    }
    let plan = Plan::load(&write_plan(dir.path(), ABLATION)).unwrap();
    let results = vec![
        result("pixpro-s0", "pixpro", 0, 0.4, Some(20.0)),
        result("pixpro-s1", "pixpro", 1, 0.6, Some(30.0)),
        result("random-s0", "random", 0, 0.25, None),
        // Not in the plan: kept in the file, left out of the tables.
        result("byol-s0", "byol", 0, 0.9, Some(10.0)),
    ];
    let md = markdown(&plan, &results);
    // mean 0.5, sample std sqrt(0.02) = 0.1414; one seed has no std.
    assert!(md.contains("| pixpro | 2 | 0.5000 ± 0.1414 | 25.0 | 1.0 min |"), "{md}");
    assert!(md.contains("| random | 1 | 0.2500 | - | 1.0 min |"), "{md}");
    assert!(md.contains("| 0.7 (default) | 1 | 0.4000 | 20.0 |"), "{md}");
    assert!(md.contains("| 1.4 | 0 | - | - | - |"), "{md}");
    assert!(md.contains("3 of 5 jobs finished"), "{md}");
    assert!(!md.contains("byol"), "{md}");
}

#[test]
fn plan_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = |extra: &str| {
        let path = write_plan(dir.path(), extra);
        let e = Plan::load(&path).unwrap_err().to_string();
        assert!(e.contains("plan.toml"), "{e}");
        e
    };
    let e = err("");
    assert!(e.contains("pretrain") && e.contains("data"), "missing data folder: {e}");
    for part in ["data/pretrain", "data/voc"] {
        std::fs::create_dir_all(dir.path().join(part)).unwrap();
    }
    let e = err("stepz = 4");
    assert!(e.contains("stepz"), "{e}");
    let e = err("[[ablation]]\nkey = \"model.threshhold\"\nvalues = [1.0]\n");
    assert!(e.contains("ablation[0].key") && e.contains("threshhold"), "{e}");
    let e = err("[[ablation]]\nkey = \"model.threshold\"\nvalues = [-1.0]\n");
    assert!(e.contains("model.threshold"), "{e}");
    let e = err("[[ablation]]\nkey = \"model.threshold\"\nvalues = [1.0]\nvalue = 2\n");
    assert!(e.contains("`value`"), "{e}");
    let e = err("[[ablation]]\nkey = \"train.steps\"\nvalues = [9]\nmethods = [\"random\"]\n");
    assert!(e.contains("ablation[0].methods") && e.contains("not pretrained"), "{e}");
    let e = err("[[ablation]]\nkey = \"train.seed\"\nvalues = [9]\n");
    assert!(e.contains("ablation[0].key"), "{e}");
    let path = write_plan(dir.path(), "");
    let text = std::fs::read_to_string(&path).unwrap();
    let bad_method = text.replace("\"random\", \"pixpro\"", "\"random\", \"byoll\"");
    std::fs::write(&path, bad_method).unwrap();
    let e = Plan::load(&path).unwrap_err().to_string();
    assert!(e.contains("methods") && e.contains("byoll"), "{e}");
    let bad_probe = text.replace("epochs = 2", "seed = 3");
    std::fs::write(&path, bad_probe).unwrap();
    let e = Plan::load(&path).unwrap_err().to_string();
    assert!(e.contains("probe.seed"), "{e}");
    let bad_probe = text.replace("epochs = 2", "image_sise = 3");
    std::fs::write(&path, bad_probe).unwrap();
    let e = Plan::load(&path).unwrap_err().to_string();
    assert!(e.starts_with("config key `probe.image_sise`: unknown field"), "{e}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn results_record_the_commit_the_runner_was_built_from_wherever_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    make_images(&dir.path().join("data/pretrain"), 2);
    tiny_voc(&dir.path().join("data/voc"));
    let plan_path = write_plan(dir.path(), "");
    // The runner starts inside another repository, as a user's project
    // folder may be one: its commit is not the code that made the numbers.
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "a user's project"]);
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_pixpro"))
        .current_dir(dir.path())
        .args(["experiment", "--plan", plan_path.to_str().unwrap(), "--max-jobs", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let results = read_results(&out.join("results.json")).unwrap();
    let recorded = results[0].commit.as_deref().map(|c| c.trim_end_matches("-dirty").to_string());
    let ours = git(Path::new(env!("CARGO_MANIFEST_DIR")), &["rev-parse", "HEAD"]);
    assert_eq!(recorded, ours);
    if ours.is_some() {
        assert_ne!(recorded, git(dir.path(), &["rev-parse", "HEAD"]));
    }
}

#[test]
fn weights_from_elsewhere_are_measured_beside_the_methods_and_paired_with_pixpro() {
    use pixpro::model::resnet::Arch;
    use pixpro::transfer::backbone::Backbone;
    use pixpro::transfer::export::{write_torchvision, ExportInfo};
    use pixpro::transfer::probe::probe_into;

    let dir = tempfile::tempdir().unwrap();
    make_images(&dir.path().join("data/pretrain"), 10);
    tiny_voc(&dir.path().join("data/voc"));
    // Random weights of another seed than any job's: their scores are theirs.
    let foreign = Backbone::random(Arch::ResNet18, 32, 7, tch::Device::Cpu).unwrap();
    std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
    let file = dir.path().join("elsewhere/r18.safetensors");
    write_torchvision(&file, &foreign.named_tensors(), &ExportInfo::of(&foreign)).unwrap();
    // Their loss per step, as scripts/reference-train writes it.
    let losses = [1.0, 0.75, 0.5].iter().enumerate();
    let lines: String =
        losses.map(|(i, l)| format!("{{\"step\": {}, \"loss\": {l}}}\n", i + 1)).collect();
    std::fs::write(dir.path().join("elsewhere/loss.jsonl"), lines).unwrap();
    let weights = |label: &str, file: &str| {
        format!(
            "[[weights]]\nlabel = \"{label}\"\nseed = 0\nfile = \"{file}\"\nsteps = 500\n\
             losses = \"elsewhere/loss.jsonl\"\n\
             [[weights]]\nlabel = \"{label}\"\nseed = 1\nfile = \"{file}\"\n\
             losses = \"elsewhere/loss.jsonl\"\n"
        )
    };
    let plan = Plan::load(&write_plan(dir.path(), &weights("other", "elsewhere/r18.safetensors")))
        .unwrap();
    let ids: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["random-s0", "pixpro-s0", "random-s1", "pixpro-s1", "other-s0", "other-s1"]);
    let out = dir.path().join("out");
    let opts = RunnerOptions {
        out: out.clone(),
        results: out.join("results.json"),
        max_jobs: None,
        only: Vec::new(),
        quiet: true,
    };
    assert_eq!(run(&plan, &opts).unwrap().ran, 6);
    let results = read_results(&out.join("results.json")).unwrap();
    let other = results.iter().find(|r| r.id == "other-s0").unwrap();
    assert_eq!((other.method.as_str(), other.steps, other.images_per_sec), ("other", 500, None));
    assert_eq!(results.iter().find(|r| r.id == "other-s1").unwrap().steps, 3);
    // The probe ran on the file, at the plan's output stride (8 in TINY).
    let direct = Backbone::from_file(&file, Some(8), tch::Device::Cpu).unwrap();
    let probe = ProbeConfig { seed: 0, ..plan.probe.clone() };
    let r =
        probe_into(&direct, &dir.path().join("data/voc"), &dir.path().join("p"), &probe).unwrap();
    assert_eq!(other.miou, r.miou);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| other |"), "{md}");
    assert!(md.contains("| other − random | 2 |"), "{md}");
    assert!(md.contains("| pixpro − other | 2 |"), "{md}");
    // Both rows' losses: pixpro's from its runs, the other's from its file
    // (TINY logs every step, so its windows are its steps).
    let section = &md[md.find("## Pretraining loss").expect("a loss section")..];
    assert!(section.contains("| other | 2 | 0.5000 ± 0.0000 |"), "{section}");
    assert!(section.contains("| pixpro | 2 |") && !section.contains("| random"), "{section}");
    assert!(out.join("loss.png").is_file());
    assert_eq!(run(&plan, &opts).unwrap().ran, 0, "a finished grid runs nothing");
    // The curves are kept in the results, so the section outlives the jobs'
    // folders (a grid finished on another machine).
    assert_eq!(other.loss_curve, [(1, 1.0), (2, 0.75), (3, 0.5)]);
    let pixpro = results.iter().find(|r| r.id == "pixpro-s0").unwrap();
    assert_eq!(pixpro.loss_curve.len(), 3, "TINY logs each of its 3 steps");
    let elsewhere = dir.path().join("report-elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    write_report(&plan, &results, &elsewhere).unwrap();
    let md = std::fs::read_to_string(elsewhere.join("results.md")).unwrap();
    assert!(md[md.find("## Pretraining loss").unwrap()..].contains("| pixpro | 2 |"), "{md}");

    // A file that is not there is named, with the job, when the job runs.
    let gone =
        Plan::load(&write_plan(dir.path(), &weights("later", "elsewhere/none.pth"))).unwrap();
    let e = run(&gone, &opts).unwrap_err().to_string();
    assert!(e.contains("none.pth") && e.contains("job later-s0"), "{e}");
    // Unless the run is limited to jobs it can do; the others stay to run.
    let only = |ids: &[&str]| RunnerOptions {
        out: out.clone(),
        results: out.join("results.json"),
        max_jobs: None,
        only: ids.iter().map(|s| s.to_string()).collect(),
        quiet: true,
    };
    let part = run(&gone, &only(&["random-s0", "pixpro-s1"])).unwrap();
    assert_eq!((part.ran, part.remaining), (0, 2));
    let e = run(&gone, &only(&["pixpro-s9"])).unwrap_err().to_string();
    assert!(e.contains("no job pixpro-s9"), "{e}");
    // A label must not pass for a method.
    let e = Plan::load(&write_plan(dir.path(), &weights("byol", "elsewhere/r18.safetensors")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("weights[0].label") && e.contains("method"), "{e}");
}

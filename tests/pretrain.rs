//! End-to-end pretraining on tiny generated images: the run directory, exact
//! resume, TensorBoard's view of a resumed run, and the errors a user sees
//! for bad input.
use std::path::{Path, PathBuf};
use std::process::Command;

use pixpro::model::precision::Precision;
use pixpro::train::config::Config;
use pixpro::train::pretrain;

mod common;
use common::{check_events, make_images, options, tensors, TINY, TRAIN_SCALARS};

fn tiny_config() -> Config {
    Config::from_toml_str(TINY, &Config::default()).unwrap()
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 12);
    // Under `auto`, as users run it: the saved config holds what it chose,
    // and the resumed half must compute in that, not choose again.
    let mut cfg = tiny_config();
    cfg.train.precision = Precision::Auto;
    let split = tmp.path().join("split");
    let first = pretrain(&cfg, &options(&data, &split, Some(2))).unwrap();
    assert_eq!((first.steps_done, first.finished), (2, false));
    let saved = || Config::from_toml_file(&split.join("config.toml"), &Config::default()).unwrap();
    let chosen = saved().train.precision;
    assert_ne!(chosen, Precision::Auto);

    // Where fp32 and bf16 time alike, a second trial could choose the
    // other, so the straight run is told what the first one chose.
    let mut straight_cfg = cfg.clone();
    straight_cfg.train.precision = chosen;
    let straight = tmp.path().join("straight");
    let s = pretrain(&straight_cfg, &options(&data, &straight, None)).unwrap();
    assert_eq!((s.steps_done, s.finished), (6, true));

    let second = pretrain(&cfg, &options(&data, &split, None)).unwrap();
    assert_eq!((second.steps_done, second.finished), (6, true));
    assert_eq!(saved().train.precision, chosen);

    let a = tensors(&straight.join("checkpoints/last.safetensors"));
    let b = tensors(&split.join("checkpoints/last.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between the straight and the resumed run");
    }
    // The weights really moved, so equality above is not trivially true.
    let init = tensors(&split.join("checkpoints/step-0000003.safetensors"));
    assert!(init.iter().zip(&a).any(|((_, t0), (_, t1))| !t0.equal(t1)));
}

#[test]
fn a_resume_under_auto_takes_the_saved_precision_and_tries_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let mut cfg = tiny_config();
    cfg.train.precision = Precision::Auto;
    let run = tmp.path().join("run");
    pretrain(&cfg, &options(&data, &run, Some(3))).unwrap();
    // Saved as the other precision than the one chosen: a resume that
    // tried again, or read the CPU's flags, would not keep it every time.
    let path = run.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let chosen = Config::from_toml_str(&text, &Config::default()).unwrap().train.precision;
    let other = if chosen == Precision::Bf16 { Precision::Fp32 } else { Precision::Bf16 };
    let swapped = text.replace(
        &format!("precision = \"{}\"", chosen.name()),
        &format!("precision = \"{}\"", other.name()),
    );
    assert_ne!(swapped, text);
    std::fs::write(&path, swapped).unwrap();
    let resumed = pretrain(&cfg, &options(&data, &run, None)).unwrap();
    assert_eq!((resumed.steps_done, resumed.precision.as_str()), (6, other.name()));
}

#[test]
fn run_directory_has_config_metrics_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let run = tmp.path().join("run");
    pretrain(&tiny_config(), &options(&data, &run, None)).unwrap();

    let saved = Config::from_toml_file(&run.join("config.toml"), &Config::default()).unwrap();
    assert_eq!(saved, tiny_config());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["step"], i as u64 + 1);
        for key in [
            "epoch",
            "loss",
            "lr",
            "momentum",
            "images_per_sec",
            "data_wait_fraction",
            "target_std",
        ] {
            assert!(
                line.get(key).is_some_and(|v| v.is_number()),
                "metrics line {i} lacks {key}: {line}"
            );
        }
        let loss = line["loss"].as_f64().unwrap();
        // Each direction is -2 * a mean cosine, so the total lies in [-4, 4].
        assert!((-4.0..=4.0).contains(&loss), "loss {loss} outside [-4, 4]");
    }
    assert!(lines[0]["momentum"].as_f64().unwrap() - 0.99 < 1e-12);
    let plot = image::open(run.join("plots/loss.png")).expect("plots/loss.png is drawn");
    assert!(plot.width() > 100 && plot.height() > 100);
    for f in ["last.safetensors", "step-0000003.safetensors", "step-0000006.safetensors"] {
        assert!(run.join("checkpoints").join(f).exists(), "missing checkpoints/{f}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["finished"], true);
    let precision = summary["precision"].as_str().unwrap();
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains(&format!("precision = \"{precision}\"")), "{precision}: {saved}");
    assert_ne!(precision, "auto", "the summary names what `auto` resolved to");
    // The host's steal share, a fraction, in the summary and every line
    // where Linux has it to read.
    if cfg!(target_os = "linux") {
        for record in lines.iter().chain([&summary]) {
            let steal = record["cpu_steal_fraction"].as_f64();
            assert!(steal.is_some_and(|f| (0.0..=1.0).contains(&f)), "{record}");
        }
    }
}

#[test]
fn tensorboard_reads_every_logged_scalar_once_across_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let cfg = tiny_config();
    let run = tmp.path().join("run");
    pretrain(&cfg, &options(&data, &run, Some(4))).unwrap();
    let said = check_events(&run, &[]);
    assert!(said.contains(&format!("{TRAIN_SCALARS} scalars at each of 4 steps")), "{said}");

    // As if killed after logging step 4 but before its checkpoint: the
    // resume starts from step 3 and logs step 4 again.
    std::fs::remove_file(run.join("checkpoints/last.safetensors")).unwrap();
    pretrain(&cfg, &options(&data, &run, None)).unwrap();
    let said = check_events(&run, &[]);
    assert!(said.contains(&format!("{TRAIN_SCALARS} scalars at each of 6 steps")), "{said}");

    // As if killed before the first checkpoint: the run starts over, and
    // no step of the first try is left in metrics.jsonl or the events.
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    pretrain(&cfg, &options(&data, &run, Some(1))).unwrap();
    let said = check_events(&run, &[]);
    assert!(said.contains(&format!("{TRAIN_SCALARS} scalars at each of 1 steps")), "{said}");
}

fn pixpro(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixpro")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "pixpro {args:?} panicked:\n{stderr}");
    (out.status.success(), stderr)
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(&path, format!("{TINY}\n{extra}")).unwrap();
    path
}

#[test]
fn cli_trains_then_continues_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let cfg = write_config(tmp.path(), "");
    let run = tmp.path().join("run");
    let (d, c, r) = (data.to_str().unwrap(), cfg.to_str().unwrap(), run.to_str().unwrap());
    let (ok, err) = pixpro(&["pretrain", "--data", d, "--out", r, "--config", c, "--stop-at", "3"]);
    assert!(ok, "{err}");
    assert!(err.contains("run the same command to continue"), "{err}");
    // No precision in the file: the `cpu` preset's `auto` chose, by a
    // trial where the CPU has bf16 units, and config.toml keeps its choice.
    let saved = Config::from_toml_file(&run.join("config.toml"), &Config::default()).unwrap();
    let kept = saved.train.precision.name();
    let line =
        err.lines().find(|l| l.contains("precision auto:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&format!("auto: {kept}")), "{line}");
    match pixpro::model::precision::cpu_bf16_units() {
        Some(unit) => {
            assert!(line.contains("in a trial on this CPU") && line.contains(unit), "{line}")
        }
        None => assert_eq!(kept, "fp32", "{line}"),
    }
    let (ok, err) = pixpro(&["pretrain", "--data", d, "--out", r, "--config", c]);
    assert!(ok, "{err}");
    assert!(err.contains("resuming") && err.contains("step 6/6"), "{err}");
    let (ok, err) = pixpro(&["pretrain", "--data", d, "--out", r, "--config", c, "--seed", "9"]);
    assert!(!ok);
    assert!(err.contains("train.seed") && err.contains("new --out"), "{err}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "");
    let run = tmp.path().join("run");
    let train = |data: &Path, config: &Path, extra: &[&str]| {
        let args = ["pretrain", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap()];
        pixpro(&[&args[..], &["--config", config.to_str().unwrap()], extra].concat())
    };

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, err) = train(&empty, &cfg, &[]);
    assert!(!ok && err.contains("empty"), "{err}");

    // The OS error is said once, though the library also hands it on as the
    // cause.
    let nowhere = tmp.path().join("nowhere");
    let (ok, err) = train(&nowhere, &cfg, &[]);
    let said = format!("error: {}: No such file or directory (os error 2)\n", nowhere.display());
    assert!(!ok && err.ends_with(&said), "{err}");

    let junk = tmp.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("a.jpg"), b"not a jpeg at all").unwrap();
    std::fs::write(junk.join("notes.txt"), b"hello").unwrap();
    let (ok, err) = train(&junk, &cfg, &[]);
    assert!(!ok && err.contains("a.jpg"), "{err}");

    let few = tmp.path().join("few");
    make_images(&few, 2);
    let (ok, err) = train(&few, &cfg, &[]);
    assert!(!ok && err.contains("batch"), "{err}");

    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, "[train]\nbatch_sise = 4\n").unwrap();
    let (ok, err) = train(&few, &typo, &[]);
    assert!(!ok && err.contains("batch_sise") && err.contains("typo.toml"), "{err}");

    let kind = tmp.path().join("kind.toml");
    std::fs::write(&kind, "[model]\narch = \"resnet51\"\n").unwrap();
    let (ok, err) = train(&few, &kind, &[]);
    let said = "error: config key `model.arch`: unknown variant `resnet51`, expected one of \
                `resnet18`, `resnet34`, `resnet50`";
    assert!(!ok && err.contains(said) && err.contains("kind.toml"), "{err}");

    let range = tmp.path().join("range.toml");
    std::fs::write(&range, TINY.replace("output_stride = 8", "output_stride = 12")).unwrap();
    let (ok, err) = train(&few, &range, &[]);
    assert!(!ok && err.contains("model.output_stride"), "{err}");

    let (ok, err) = train(&few, &cfg, &["--resume"]);
    assert!(!ok && err.contains("--resume"), "{err}");
}

#[test]
fn doctor_names_the_libtorch_it_was_built_against() {
    let out = Command::new(env!("CARGO_BIN_EXE_pixpro")).arg("doctor").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The torch wheel scripts/setup installs.
    assert!(text.contains("libtorch: 2.11."), "{text}");
    assert!(text.contains("cpu bfloat16 units: "), "{text}");
    assert!(text.contains("cuda available: "), "{text}");
}

/// A safetensors file's tensors by name.
fn file_tensors(path: impl AsRef<Path>) -> Vec<(String, tch::Tensor)> {
    let mut v = tch::Tensor::read_safetensors(path.as_ref()).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn init_starts_both_encoders_from_given_weights_and_resume_ignores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let cfg = write_config(tmp.path(), "");
    let (d, c) = (data.to_str().unwrap(), cfg.to_str().unwrap());
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (ok, err) = pixpro(&["pretrain", "--data", d, "--out", &path("a"), "--config", c]);
    assert!(ok, "{err}");
    let ckpt = path("a/checkpoints/last.safetensors");
    let export = |from: &str, to: &str| {
        let (ok, err) =
            pixpro(&["export", "--checkpoint", from, "--format", "torchvision", "--out", to]);
        assert!(ok, "{err}");
    };
    export(&ckpt, &path("a.safetensors"));

    // Started from the export, no step taken: the same encoder comes back.
    let b = ["pretrain", "--data", d, "--out", &path("b"), "--config", c];
    let (ok, err) =
        pixpro(&[&b[..], &["--init", &path("a.safetensors"), "--stop-at", "0"]].concat());
    assert!(ok, "{err}");
    export(&path("b/checkpoints/last.safetensors"), &path("b.safetensors"));
    let (want, got) = (file_tensors(path("a.safetensors")), file_tensors(path("b.safetensors")));
    assert_eq!(want.len(), got.len());
    for ((nw, w), (ng, g)) in want.iter().zip(&got) {
        assert_eq!(nw, ng);
        assert!(w.equal(g), "{nw} differs");
    }
    // The target encoder too; the heads are fresh, not run a's.
    let b_all = tensors(Path::new(&path("b/checkpoints/last.safetensors")));
    let a_all = tensors(Path::new(&ckpt));
    let get = |all: &[(String, tch::Tensor)], name: &str| {
        all.iter().find(|(n, _)| n == name).unwrap().1.shallow_clone()
    };
    let stem = "encoder.conv1.weight";
    assert!(get(&b_all, &format!("target/{stem}")).equal(&get(&a_all, &format!("online/{stem}"))));
    let head = "online/projector.linear1.weight";
    assert!(!get(&b_all, head).equal(&get(&a_all, head)));
    let record = std::fs::read_to_string(path("b/init.json")).unwrap();
    assert!(record.contains("a.safetensors"), "{record}");

    // Resuming continues from the run's own checkpoint, and says so.
    let (ok, err) = pixpro(&[&b[..], &["--init", &path("nowhere.pth")]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("--init") && err.contains("ignored"), "{err}");

    // Bad weights are named before anything trains.
    let fresh = ["pretrain", "--data", d, "--out", &path("c"), "--config", c, "--init"];
    let wide = tmp.path().join("r50.safetensors");
    let r50 = pixpro::transfer::backbone::Backbone::random(
        pixpro::model::resnet::Arch::ResNet50,
        32,
        0,
        tch::Device::Cpu,
    )
    .unwrap();
    let info = pixpro::transfer::export::ExportInfo::of(&r50);
    pixpro::transfer::export::write_torchvision(&wide, &r50.named_tensors(), &info).unwrap();
    let (ok, err) = pixpro(&[&fresh[..], &[wide.to_str().unwrap()]].concat());
    assert!(!ok && err.contains("r50.safetensors") && err.contains("resnet50"), "{err}");
    std::fs::write(path("notes.pth"), "not weights").unwrap();
    let (ok, err) = pixpro(&[&fresh[..], &[&path("notes.pth")]].concat());
    assert!(!ok && err.contains("notes.pth"), "{err}");
    let bytes = std::fs::read(path("a.safetensors")).unwrap();
    std::fs::write(path("cut.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let (ok, err) = pixpro(&[&fresh[..], &[&path("cut.safetensors")]].concat());
    assert!(!ok && err.contains("cut.safetensors"), "{err}");
    assert!(!tmp.path().join("c/checkpoints/last.safetensors").exists());
}

//! Nothing lost: bad batches, broken checkpoints, signals and kills, on tiny
//! generated images (see docs/robustness.md for the behaviour pinned here).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pixpro::train::checkpoint::{Checkpoint, Meta, FORMAT_VERSION};
use pixpro::train::config::Config;
use pixpro::train::{open_loader, pretrain, saved_config, RunDir, RunOptions, Trainer};
use pixpro::Error;

mod common;
#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;
use common::{assert_same_tensors, make_images, options, TINY};

/// The tiny recipe with extra `[train]` keys.
fn config(extra_train: &str) -> Config {
    let text = TINY.replace("device = \"cpu\"", &format!("device = \"cpu\"\n{extra_train}"));
    Config::from_toml_str(&text, &Config::default()).unwrap()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metric_steps(run: &Path) -> Vec<u64> {
    metrics(run).iter().map(|l| l["step"].as_u64().unwrap()).collect()
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn meta(step: u64) -> Meta {
    Meta {
        version: FORMAT_VERSION,
        step,
        total_steps: 6,
        epoch: 0,
        index_in_epoch: 0,
        config: String::new(),
        skipped_steps: 0,
    }
}

#[test]
fn a_nan_batch_changes_nothing_but_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let cfg = config("");
    let loader = open_loader(&cfg, &data, 1, tch::Device::Cpu).unwrap();
    let mut batches = loader.iter_from(0, 0);
    let mut trainer = Trainer::new(&cfg, loader.batches_per_epoch(), tch::Device::Cpu).unwrap();
    // One good step first, so the momentum buffers are not all zero.
    let stats = trainer.train_step(&batches.next().unwrap().unwrap()).unwrap();
    assert!(!stats.skipped && stats.loss.is_finite() && stats.grad_norm > 0.0);
    let before = tmp.path().join("before.safetensors");
    trainer.save(&before, meta(0)).unwrap();

    let mut bad = batches.next().unwrap().unwrap();
    bad.view2[17] = f32::NAN;
    let stats = trainer.train_step(&bad).unwrap();
    assert!(stats.skipped, "loss {} grad norm {}", stats.loss, stats.grad_norm);
    assert_eq!(trainer.step, 2, "a skipped step still counts");
    let after = tmp.path().join("after.safetensors");
    trainer.save(&after, meta(0)).unwrap();
    // Online and target weights, BN statistics and LARS momentum, bit for bit.
    assert_same_tensors(&before, &after);

    let stats = trainer.train_step(&batches.next().unwrap().unwrap()).unwrap();
    assert!(!stats.skipped && stats.loss.is_finite());
}

#[test]
fn skipped_steps_are_counted_and_a_streak_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);

    let once = tmp.path().join("once");
    let opts = RunOptions { nan_steps: vec![2], ..options(&data, &once, None) };
    let s = pretrain(&config(""), &opts).unwrap();
    assert_eq!((s.steps_done, s.finished, s.skipped_steps), (6, true, 1));
    let lines = metrics(&once);
    assert!(lines[1]["loss"].is_null(), "{}", lines[1]);
    assert_eq!(lines[0]["skipped_steps"], 0);
    assert_eq!(lines[5]["skipped_steps"], 1);
    assert_eq!(summary(&once)["skipped_steps"], 1);

    // Steps 5, 6 and 7 go bad: the run stops at 7 without writing the
    // checkpoint due at step 6, so the one from step 3 is kept.
    let streak = tmp.path().join("streak");
    let mut cfg = config("max_bad_steps = 3");
    cfg.train.steps = 20;
    let opts = RunOptions { nan_steps: (5..=20).collect(), ..options(&data, &streak, None) };
    let err = pretrain(&cfg, &opts).unwrap_err();
    assert!(matches!(err, Error::Diverged { step: 7, bad_steps: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("last.safetensors (step 3)") && msg.contains("lr_per_256"), "{msg}");
    let last = streak.join("checkpoints/last.safetensors");
    assert_eq!(Checkpoint::load(&last).unwrap().meta.step, 3);
    assert!(!streak.join("checkpoints/step-0000006.safetensors").exists());
    let s = summary(&streak);
    assert_eq!((s["finished"].as_bool(), s["skipped_steps"].as_u64()), (Some(false), Some(3)));
    assert!(s["stopped_by"].as_str().unwrap().contains("diverged"), "{s}");
}

#[test]
fn a_truncated_last_checkpoint_falls_back_to_the_numbered_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let cfg = config("");
    let straight = tmp.path().join("straight");
    pretrain(&cfg, &options(&data, &straight, None)).unwrap();

    // Stopped at 5: last.safetensors holds step 5, step-0000003 the one before.
    let run = tmp.path().join("run");
    pretrain(&cfg, &options(&data, &run, Some(5))).unwrap();
    let last = run.join("checkpoints/last.safetensors");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let s = pretrain(&cfg, &options(&data, &run, None)).unwrap();
    assert_eq!((s.steps_done, s.finished), (6, true));
    // Steps 4 and 5 ran twice; metrics.jsonl has each step once.
    assert_eq!(metric_steps(&run), (1..=6).collect::<Vec<_>>());
    assert_same_tensors(&straight.join("checkpoints/last.safetensors"), &last);
}

#[test]
fn a_run_without_a_loadable_checkpoint_names_the_files_tried() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let run = tmp.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::write(run.join("checkpoints/last.safetensors"), b"not a checkpoint").unwrap();
    std::fs::write(run.join("checkpoints/step-0000003.safetensors"), b"").unwrap();
    let err = pretrain(&config(""), &options(&data, &run, None)).unwrap_err().to_string();
    assert!(err.contains("last.safetensors") && err.contains("step-0000003.safetensors"), "{err}");
}

/// Starts the real binary on `run`, its stderr in `run`.stderr.
fn spawn(data: &Path, run: &Path, cfg: &Path, extra: &[&str]) -> Child {
    spawn_logged(data, run, cfg, extra, &run.with_extension("stderr"))
}

fn spawn_logged(data: &Path, run: &Path, cfg: &Path, extra: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pixpro"))
        .args(["pretrain", "--data"])
        .arg(data)
        .arg("--out")
        .arg(run)
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stderr_of(run: &Path) -> String {
    std::fs::read_to_string(run.with_extension("stderr")).unwrap_or_default()
}

/// Waits until metrics.jsonl of `run` has `lines` lines; false if the
/// process exited first.
fn wait_for_lines(child: &mut Child, run: &Path, lines: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= lines {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "no {lines} metrics lines:\n{}", stderr_of(run));
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// The tiny recipe for `pixpro pretrain --config`, in fp32: under the
/// preset's `auto` two fresh runs would each time a precision trial, and at
/// this size, where a step is mostly overhead, the two can choose apart.
fn write_config(dir: &Path, steps: u64) -> PathBuf {
    let path = dir.join("tiny.toml");
    let train = format!("steps = {steps}\nprecision = \"fp32\"");
    std::fs::write(&path, TINY.replace("steps = 6", &train)).unwrap();
    path
}

#[test]
fn sigterm_checkpoints_and_the_same_command_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let cfg = write_config(tmp.path(), 1000);
    let run = tmp.path().join("run");
    let mut child = spawn(&data, &run, &cfg, &[]);
    assert!(wait_for_lines(&mut child, &run, 1), "{}", stderr_of(&run));
    kill(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", stderr_of(&run));
    let s = summary(&run);
    assert!(s["stopped_by"].as_str().unwrap().contains("signal"), "{s}");
    let done = s["steps_done"].as_u64().unwrap();
    let ck = Checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(ck.meta.step, done);
    assert!(done < 1000);

    let until = (done + 2).to_string();
    let mut child = spawn(&data, &run, &cfg, &["--stop-at", &until]);
    assert!(child.wait().unwrap().success(), "{}", stderr_of(&run));
    assert!(stderr_of(&run).contains(&format!("resuming {} at step {done}", run.display())));
    assert_eq!(summary(&run)["steps_done"].as_u64(), Some(done + 2));
}

#[test]
fn sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let steps = 10;
    let cfg_path = write_config(tmp.path(), steps);
    let run = tmp.path().join("killed");
    let mut child = spawn(&data, &run, &cfg_path, &[]);
    // A step after the first periodic checkpoint (3), varying between runs.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let kill_after = 4 + (nanos.subsec_nanos() as usize % 5);
    assert!(wait_for_lines(&mut child, &run, kill_after), "{}", stderr_of(&run));
    kill(&child, "-KILL");
    child.wait().unwrap();
    // Only counted: the kill may have torn the last line.
    let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
    let saved = Checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap().meta.step;
    eprintln!("killed after {logged} logged steps, checkpoint at step {saved}");
    assert!(saved >= 3 && saved as usize <= logged);

    // The killed process held the run's lock; the kernel dropped it.
    assert!(run.join(".lock").exists());
    let mut child = spawn(&data, &run, &cfg_path, &[]);
    assert!(child.wait().unwrap().success(), "{}", stderr_of(&run));
    assert_eq!(metric_steps(&run), (1..=steps).collect::<Vec<_>>());

    // The same recipe, uninterrupted, in this process.
    let straight = tmp.path().join("straight");
    let cfg = saved_config(&RunDir::new(&run)).unwrap();
    pretrain(&cfg, &options(&data, &straight, None)).unwrap();
    assert_same_tensors(
        &straight.join("checkpoints/last.safetensors"),
        &run.join("checkpoints/last.safetensors"),
    );
}

#[test]
fn a_second_process_on_a_run_directory_stops_at_once_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let cfg = write_config(tmp.path(), 6);
    let alone = tmp.path().join("alone");
    assert!(spawn(&data, &alone, &cfg, &[]).wait().unwrap().success(), "{}", stderr_of(&alone));

    let run = tmp.path().join("run");
    let mut first = spawn(&data, &run, &cfg, &[]);
    let holder = format!("pid {} on ", first.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(run.join(".lock")).unwrap_or_default().starts_with(&holder) {
        assert!(first.try_wait().unwrap().is_none(), "{}", stderr_of(&run));
        assert!(Instant::now() < deadline, "no lock taken:\n{}", stderr_of(&run));
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = tmp.path().join("second.stderr");
    let started = Instant::now();
    let status = spawn_logged(&data, &run, &cfg, &[], &log).wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{said}");
    // It did not wait for the lock (a time bound would only measure how
    // busy the machine is: starting libtorch alone takes most of a second).
    eprintln!("the second process exited after {:?}", started.elapsed());
    assert!(first.try_wait().unwrap().is_none(), "the second process waited:\n{said}");
    let want = format!("error: {} is in use by {holder}", run.display());
    assert!(said.contains(&want), "{said}");

    assert!(first.wait().unwrap().success(), "{}", stderr_of(&run));
    assert_eq!(metric_steps(&run), (1..=6).collect::<Vec<_>>());
    let files = |dir: &Path| {
        let mut names: Vec<_> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap().path().strip_prefix(dir).unwrap().to_path_buf())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files(&run), files(&alone));
    for ck in ["last.safetensors", "step-0000003.safetensors", "step-0000006.safetensors"] {
        let ck = Path::new("checkpoints").join(ck);
        assert_same_tensors(&alone.join(&ck), &run.join(&ck));
    }
    let losses = |dir: &Path| metrics(dir).iter().map(|l| l["loss"].clone()).collect::<Vec<_>>();
    assert_eq!(losses(&run), losses(&alone));
}

#[test]
fn a_disk_that_refuses_writes_stops_the_run_with_its_last_checkpoint_intact() {
    // The first write refused is a checkpoint, then a metrics line.
    for (log_every, refused) in [(100, "checkpoints/last.safetensors"), (1, "metrics.jsonl")] {
        refused_writes(log_every, refused);
    }
}

/// Trains until the first checkpoint, then refuses every write: the error
/// names `refused` in the run; what is left loads, and the same command
/// afterwards ends as a run never stopped.
fn refused_writes(log_every: u64, refused: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 8);
    let steps = 24;
    let cfg_path = tmp.path().join("tiny.toml");
    let text = TINY.replace("steps = 6", &format!("steps = {steps}"));
    std::fs::write(&cfg_path, text.replace("log_every = 1", &format!("log_every = {log_every}")))
        .unwrap();
    let run = tmp.path().join("run");
    // stderr to a pipe: the limit below would refuse a log file too.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixpro"))
        .args(["pretrain", "--data"])
        .args([&data, Path::new("--out"), &run, Path::new("--config"), &cfg_path])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = run.join("checkpoints/step-0000003.safetensors");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !first.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(2));
    }
    // A file-size limit of one byte, set on the running process, fails
    // every write past the first byte of any file, as a full disk fails
    // every write: a real OS error, without mounting a small file system.
    let limited = Command::new("prlimit")
        .args(["--fsize=1", "--pid", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(limited.success());
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    let error = said.lines().rfind(|l| l.starts_with("error: ")).unwrap_or_default();
    let want = format!("error: {}: File too large (os error 27)", run.join(refused).display());
    assert_eq!(error, want, "{said}");

    let mut left = Vec::new();
    for entry in walkdir::WalkDir::new(&run) {
        let path = entry.unwrap().into_path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(".tmp"), "a partial file is left: {}", path.display());
        if name.ends_with(".safetensors") {
            Checkpoint::load(&path).unwrap();
            left.push(name);
        }
    }
    assert!(left.contains(&"step-0000003.safetensors".to_string()), "{left:?}");
    // Every line that is there is whole.
    let logged = metric_steps(&run);
    let saved = Checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap().meta.step;
    eprintln!("stopped after {} logged steps, checkpoint at step {saved}: {error}", logged.len());
    assert!(saved < steps);

    // Space again: the same command resumes, and ends as a run never stopped.
    let mut child = spawn(&data, &run, &cfg_path, &[]);
    assert!(child.wait().unwrap().success(), "{}", stderr_of(&run));
    let logged: Vec<u64> = (1..=steps).filter(|s| s % log_every == 0 || *s == steps).collect();
    assert_eq!(metric_steps(&run), logged);
    let straight = tmp.path().join("straight");
    let cfg = saved_config(&RunDir::new(&run)).unwrap();
    pretrain(&cfg, &options(&data, &straight, None)).unwrap();
    assert_same_tensors(
        &straight.join("checkpoints/last.safetensors"),
        &run.join("checkpoints/last.safetensors"),
    );
}

/// A small deterministic generator, so that a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// `seed` with a few bytes changed, inserted or cut off.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            match self.below(3) {
                0 if !b.is_empty() => {
                    let i = self.below(b.len());
                    b[i] = self.next() as u8;
                }
                1 => {
                    let i = self.below(b.len() + 1);
                    b.insert(i, self.next() as u8);
                }
                _ => b.truncate(self.below(b.len() + 1)),
            }
        }
        b
    }
}

/// The files of one fuzz target's seed corpus, in a fixed order.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Stable-Rust stand-in for the cargo-fuzz targets (fuzz/, see
/// docs/robustness.md): their property checks over the seed corpus and over
/// mutations of it from a fixed seed. Damaged images and configs give an
/// error or a well-formed value, never a panic.
#[test]
fn damaged_images_and_configs_never_panic() {
    let images = seeds("decode_image");
    let configs = seeds("config");
    // Seeds must be good inputs, or the mutations explore only error paths.
    for (i, bytes) in images.iter().enumerate() {
        assert!(pixpro::data::dataset::decode_rgb(bytes).is_ok(), "image seed {i} does not decode");
        fuzz_checks::check_image(bytes);
    }
    for (i, bytes) in configs.iter().enumerate() {
        let text = std::str::from_utf8(bytes).unwrap();
        let cfg = Config::from_toml_str(text, &Config::default()).unwrap();
        assert!(cfg.validate().is_ok(), "config seed {i} does not validate");
        fuzz_checks::check_config(bytes);
    }
    let mut rng = XorShift(0x5eed);
    for i in 0..2000 {
        fuzz_checks::check_image(&rng.mutate(&images[i % images.len()]));
    }
    for i in 0..2000 {
        let text = String::from_utf8_lossy(&rng.mutate(&configs[i % configs.len()])).to_string();
        fuzz_checks::check_config(text.as_bytes());
    }
}

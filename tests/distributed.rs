//! Data-parallel pretraining over Gloo on this machine: several `pixpro
//! pretrain` processes started the way torchrun starts them.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{make_images, tensors, TINY};
use pixpro::train::config::Config;

/// The tiny recipe of the other end-to-end tests with a batch of `batch`
/// per process, one libtorch thread, and the peak learning rate from the
/// first step, so that the weights move visibly in a few steps.
fn config(dir: &Path, batch: usize, sync_bn: bool, steps: u64) -> PathBuf {
    config_checkpointing(dir, batch, sync_bn, steps, 1000)
}

/// [`config`] with a checkpoint every `checkpoint_every` steps.
fn config_checkpointing(
    dir: &Path,
    batch: usize,
    sync_bn: bool,
    steps: u64,
    checkpoint_every: u64,
) -> PathBuf {
    let path = dir.join(format!("config-{batch}-{sync_bn}-{steps}-{checkpoint_every}.toml"));
    let mut cfg = Config::from_toml_str(TINY, &Config::default()).unwrap();
    cfg.optim.warmup_epochs = 0.0;
    cfg.optim.lr_per_256 = 4.0;
    cfg.train.batch_size = batch;
    cfg.train.steps = steps;
    cfg.train.workers = 1;
    cfg.train.threads = 1;
    cfg.train.checkpoint_every = checkpoint_every;
    cfg.distributed.sync_bn = sync_bn;
    cfg.distributed.timeout_s = 30.0;
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

/// The steps of a run's metrics.jsonl, one per line.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

/// The loss of each logged step.
fn logged_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `pixpro pretrain ... EXTRA` as rank `rank` of `world` on `port`, or
/// with no launch variables for `None`.
fn spawn(
    config: &Path,
    data: &Path,
    out: &Path,
    rank_world: Option<(usize, usize, u16)>,
    extra: &[&str],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixpro"));
    cmd.args(["pretrain", "--quiet"])
        .args(extra)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--config")
        .arg(config)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((rank, world, port)) = rank_world {
        cmd.env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
    }
    cmd.spawn().unwrap()
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn two_ranks(config: &Path, data: &Path, out: &Path, extra: &[&str]) {
    let port = free_port();
    let ranks: Vec<Child> =
        (0..2).map(|r| spawn(config, data, out, Some((r, 2, port)), extra)).collect();
    for (r, child) in ranks.into_iter().enumerate() {
        finish(child, &format!("rank {r}"));
    }
}

/// `max|a - b| / max|b|` for each floating-point tensor of two checkpoints,
/// by name.
fn differences(a: &Path, b: &Path) -> Vec<(String, f64)> {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    let mut diffs = Vec::new();
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        if !ta.is_floating_point() {
            assert!(ta.equal(tb), "{na} differs");
            continue;
        }
        // A bias right before a BatchNorm has a true gradient of 0 (the BN
        // subtracts it again), so its momentum buffer is rounding noise.
        if na.starts_with("optim/") && na.ends_with("linear1.bias") {
            continue;
        }
        let scale = tb.abs().max().double_value(&[]).max(1e-6);
        diffs.push((na.clone(), (ta - tb).abs().max().double_value(&[]) / scale));
    }
    diffs
}

/// The tensors of `diffs` beyond the tolerance of runs that should agree
/// but for rounding, as "name: diff" lines: 1e-5 for weights and BatchNorm
/// statistics; 1e-4 for the LARS momentum buffers, whose every update is
/// scaled to eta * |w| and so carries the relative rounding of its gradient
/// undamped.
fn beyond_tolerance(diffs: &[(String, f64)]) -> Vec<String> {
    let tolerance = |name: &str| if name.starts_with("optim/") { 1e-4 } else { 1e-5 };
    diffs
        .iter()
        .filter(|(name, diff)| *diff >= tolerance(name))
        .map(|(name, diff)| format!("{name}: {diff:.2e}"))
        .collect()
}

/// The largest of [`differences`], with the name of its tensor.
fn worst(diffs: &[(String, f64)]) -> (f64, String) {
    diffs.iter().fold((0.0, String::new()), |w, (n, d)| if *d > w.0 { (*d, n.clone()) } else { w })
}

/// A BatchNorm's own parameters, its running statistics, or a BatchNorm
/// parameter's LARS buffer.
fn is_batch_norm(name: &str) -> bool {
    name.contains(".bn") || name.contains(".downsample.1.")
}

/// 2 ranks x 8 images against 1 x 16, SyncBN on: after one step every
/// tensor agrees to 1e-5; over 6 steps the loss of every step to 1e-5 and
/// the weights to 1e-4, but not the BatchNorm parameters and LARS buffers.
///
/// Measured on this recipe: after one step 2 x 8 and 1 x 16 differ by at
/// most 2.9e-6 in any tensor (seeds 0-4; without SyncBN, by about 1 in
/// BatchNorm parameters and 5e-3 to 3e-2 in the loss), and over seeds 0-9
/// the loss by at most 4.8e-7 in any of the 6 steps. After 6 steps single
/// channels have come apart, by up to 8.8e-3 (relative to the tensor's
/// largest entry) in BatchNorm parameters, 4.2e-2 in LARS buffers and
/// 4.1e-5 in weights, and 6 seeds of 10 miss 1e-3 in the first two; in seed
/// 4 one channel of `layer2.1.bn2` goes from 1.5e-6 to 7.6e-3 in its second
/// step while its other entries stay near 1e-8. That is rounding
/// amplified, not SyncBN: 1 process x 16 on two threads against one
/// thread, the same arithmetic summed in another order and no SyncBN at
/// all, comes apart as far (up to 1.0e-2, 3.8e-2 and 1.1e-5; 6 seeds of 10
/// miss 1e-3). So after 6 steps no two runs are bound to agree to 1e-3 in
/// BatchNorm parameters and LARS buffers or to 1e-5 in weights, however
/// exact the statistics.
#[test]
fn two_processes_of_8_equal_one_process_of_16_with_sync_bn() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 32);
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let (cfg_one, cfg_two) = (config(tmp.path(), 16, true, 6), config(tmp.path(), 8, true, 6));
    let last = |run: &Path| run.join("checkpoints/last.safetensors");
    let first_step = |run: &Path| run.join("step-1.safetensors");
    // Each run stops after one step, keeps that state aside, and resumes
    // (bit-exact) to the end.
    finish(spawn(&cfg_one, &data, &one, None, &["--stop-at", "1"]), "1 x 16, step 1");
    two_ranks(&cfg_two, &data, &two, &["--stop-at", "1"]);
    for run in [&one, &two] {
        std::fs::copy(last(run), first_step(run)).unwrap();
    }
    finish(spawn(&cfg_one, &data, &one, None, &[]), "1 x 16");
    two_ranks(&cfg_two, &data, &two, &[]);
    assert_eq!(logged_steps(&two), (1..=6).collect::<Vec<_>>(), "rank 0 alone writes the metrics");

    let (diff, name) = worst(&differences(&first_step(&two), &first_step(&one)));
    assert!(diff < 1e-5, "after one step 2 x 8 differs from 1 x 16 by {diff:.2e} in {name}");
    let loss_gap = |a: &Path, b: &Path| {
        logged_losses(a)
            .iter()
            .zip(logged_losses(b))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let gap = loss_gap(&two, &one);
    assert!(gap < 1e-5, "the losses of 2 x 8 and 1 x 16 differ by {gap:.2e}");
    let weights: Vec<(String, f64)> = differences(&last(&two), &last(&one))
        .into_iter()
        .filter(|(name, _)| !name.starts_with("optim/") && !is_batch_norm(name))
        .collect();
    let (diff, name) = worst(&weights);
    assert!(diff < 1e-4, "after 6 steps 2 x 8 differs from 1 x 16 by {diff:.2e} in {name}");

    // The comparison can fail: without SyncBN each rank normalises its 8
    // images alone, and one step is enough to tell.
    let unsynced = tmp.path().join("unsynced");
    two_ranks(&config(tmp.path(), 8, false, 6), &data, &unsynced, &["--stop-at", "1"]);
    let diffs = differences(&last(&unsynced), &first_step(&one));
    let (diff, name) = worst(&diffs);
    assert!(diff > 0.1, "without SyncBN 2 x 8 should differ from 1 x 16, got {diff:.2e} in {name}");
    assert!(beyond_tolerance(&diffs).len() > 10, "without SyncBN most tensors should differ");
    let gap = loss_gap(&unsynced, &one);
    assert!(gap > 1e-3, "without SyncBN the first loss should differ, got {gap:.2e}");
}

#[test]
fn resuming_with_another_world_size_continues_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 32);
    let run = tmp.path().join("run");
    let cfg = config(tmp.path(), 8, true, 4);
    finish(spawn(&cfg, &data, &run, None, &["--stop-at", "2"]), "the first 2 steps");
    two_ranks(&cfg, &data, &run, &[]);
    let steps = logged_steps(&run);
    assert_eq!(steps, vec![1, 2, 3, 4], "one line per step, across the change of world size");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["finished"], true);
}

#[test]
fn the_ranks_of_a_run_under_auto_precision_choose_together() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 32);
    let run = tmp.path().join("run");
    let fp32 = config(tmp.path(), 8, true, 2);
    let text = std::fs::read_to_string(&fp32).unwrap();
    assert!(text.contains("precision = \"fp32\""), "{text}");
    let auto = tmp.path().join("auto.toml");
    std::fs::write(&auto, text.replace("precision = \"fp32\"", "precision = \"auto\"")).unwrap();
    // Rank 0 decides (by a trial where the CPU has bf16 units) and tells
    // rank 1 in a collective; a rank that skipped it would leave the other
    // waiting until the 30 s timeout fails the run.
    two_ranks(&auto, &data, &run, &[]);
    let saved = Config::from_toml_file(&run.join("config.toml"), &Config::default()).unwrap();
    assert_ne!(saved.train.precision.name(), "auto");
    assert_eq!(logged_steps(&run), vec![1, 2]);
}

#[test]
fn a_rank_that_dies_makes_the_others_exit_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 32);
    let run = tmp.path().join("run");
    let cfg = config(tmp.path(), 8, true, 100_000);
    let port = free_port();
    let mut rank0 = spawn(&cfg, &data, &run, Some((0, 2, port)), &[]);
    let mut rank1 = spawn(&cfg, &data, &run, Some((1, 2, port)), &[]);
    // Wait until the two are training together, then kill rank 1 outright.
    let started = Instant::now();
    let metrics = run.join("metrics.jsonl");
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "the ranks never got going");
        assert!(rank0.try_wait().unwrap().is_none(), "rank 0 stopped before rank 1 was killed");
        std::thread::sleep(Duration::from_millis(100));
    }
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = rank0.try_wait().unwrap() {
            break status;
        }
        if killed.elapsed() > Duration::from_secs(90) {
            rank0.kill().unwrap();
            panic!("rank 0 still running 90 s after rank 1 died");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(rank0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "rank 0 exited successfully after losing rank 1: {stderr}");
    assert!(stderr.contains("error: distributed run: rank 0 of 2"), "unclear error: {stderr}");
    assert!(!stderr.contains("distributed run: distributed run"), "said twice: {stderr}");
    eprintln!("rank 0 exited {:.1} s after rank 1 died", killed.elapsed().as_secs_f64());
}

/// The process that torchrun's agent `agent` started as rank `rank` of its
/// `restart`-th group, found by its parent and its launch variables.
fn torchrun_worker(agent: u32, rank: usize, restart: u64) -> Option<u32> {
    let wanted = [format!("RANK={rank}"), format!("TORCHELASTIC_RESTART_COUNT={restart}")];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        // `pid (name) state ppid ...`, and the name may hold spaces.
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |v: &String| vars.contains(&v.as_bytes());
        (ppid == agent && wanted.iter().all(has)).then_some(pid)
    })
}

#[test]
fn torchrun_restarts_a_group_that_lost_a_rank_and_it_ends_as_if_never_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 32);
    let cfg = config_checkpointing(tmp.path(), 8, true, 6, 2);
    let whole = tmp.path().join("whole");
    two_ranks(&cfg, &data, &whole, &[]);

    let run = tmp.path().join("restarted");
    let log_path = tmp.path().join("torchrun.log");
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    let mut agent = Command::new(&torchrun)
        .args(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_pixpro"))
        .args(["pretrain", "--quiet", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .arg("--config")
        .arg(&cfg)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        // The restart and the resume are checked in rank 0's info lines.
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", torchrun.display()));
    // Rank 1 dies once the group has written its step-2 checkpoint, at
    // whatever point of step 3 or 4 it has reached by then.
    let started = Instant::now();
    while !run.join("checkpoints/step-0000002.safetensors").exists() {
        assert!(started.elapsed() < Duration::from_secs(180), "no checkpoint at step 2");
        assert!(agent.try_wait().unwrap().is_none(), "torchrun stopped before step 2");
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = torchrun_worker(agent.id(), 1, 0).expect("rank 1 of torchrun's first group");
    let killed = Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();
    assert!(killed.success(), "could not kill rank 1 (pid {victim})");
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            agent.kill().unwrap();
            panic!("torchrun still running after 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "the restarted group failed:\n{log}");
    assert!(log.contains("torchrun's agent restarted the group (restart 1)"), "{log}");
    let resumed_at = log
        .lines()
        .find_map(|l| l.split_once("resuming ")?.1.split_once(" at step ")?.1.split_once(" of 6"))
        .and_then(|(step, _)| step.parse::<u64>().ok());
    assert!(
        resumed_at.is_some_and(|s| (2..6).contains(&s)),
        "the restarted group should resume from a checkpoint before the end:\n{log}"
    );
    assert_eq!(logged_steps(&run), (1..=6).collect::<Vec<_>>(), "each step logged once");

    let last = |run: &Path| run.join("checkpoints/last.safetensors");
    let diffs = differences(&last(&run), &last(&whole));
    let beyond = beyond_tolerance(&diffs);
    assert!(
        beyond.is_empty(),
        "the restarted run differs from one never killed:\n{}",
        beyond.join("\n")
    );
    eprintln!("largest difference from the run never killed: {:.2e}", worst(&diffs).0);
}

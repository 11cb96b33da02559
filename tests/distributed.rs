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
/// first step, so that the weights move visibly in 3 steps.
fn config(dir: &Path, batch: usize, sync_bn: bool, steps: u64) -> PathBuf {
    write_config(dir, batch, sync_bn, steps, 1, 1000)
}

/// [`config`] with SyncBN on and `threads` libtorch threads.
fn config_with_threads(dir: &Path, batch: usize, steps: u64, threads: usize) -> PathBuf {
    write_config(dir, batch, true, steps, threads, 1000)
}

fn write_config(
    dir: &Path,
    batch: usize,
    sync_bn: bool,
    steps: u64,
    threads: usize,
    checkpoint_every: u64,
) -> PathBuf {
    let path =
        dir.join(format!("config-{batch}-{sync_bn}-{steps}-{threads}-{checkpoint_every}.toml"));
    let mut cfg = Config::from_toml_str(TINY, &Config::default()).unwrap();
    cfg.optim.warmup_epochs = 0.0;
    cfg.optim.lr_per_256 = 4.0;
    cfg.train.batch_size = batch;
    cfg.train.steps = steps;
    cfg.train.workers = 1;
    cfg.train.threads = threads;
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

fn two_ranks(config: &Path, data: &Path, out: &Path) {
    let port = free_port();
    let ranks: Vec<Child> =
        (0..2).map(|r| spawn(config, data, out, Some((r, 2, port)), &[])).collect();
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

/// The tensors of `diffs` that differ by more than their tolerance plus
/// twice what `noise` (the same comparison between two runs that differ
/// only in rounding) shows for them, as "name: diff (rounding: noise)"
/// lines. Tolerance 1e-5 for weights and BatchNorm statistics; 1e-4 for the
/// LARS momentum buffers, whose every update is scaled to eta * |w| and so
/// carries the relative rounding of its gradient undamped.
fn beyond_rounding(diffs: &[(String, f64)], noise: &[(String, f64)]) -> Vec<String> {
    let tolerance = |name: &str| if name.starts_with("optim/") { 1e-4 } else { 1e-5 };
    diffs
        .iter()
        .zip(noise)
        .filter(|((name, diff), (_, noise))| *diff >= tolerance(name) + 2.0 * noise)
        .map(|((name, diff), (_, noise))| format!("{name}: {diff:.2e} (rounding: {noise:.2e})"))
        .collect()
}

/// The largest of [`differences`], with the name of its tensor.
fn worst(diffs: &[(String, f64)]) -> (f64, String) {
    diffs.iter().fold((0.0, String::new()), |w, (n, d)| if *d > w.0 { (*d, n.clone()) } else { w })
}

#[test]
fn two_processes_of_8_equal_one_process_of_16_with_sync_bn() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 32);

    let one = tmp.path().join("one");
    finish(spawn(&config(tmp.path(), 16, true, 3), &data, &one, None, &[]), "one process");
    // The same process on two threads: the same arithmetic, summed in
    // another order. LARS scales every update of a weight to eta * |w|
    // whatever |g|, so a layer whose gradient is nearly cancelled at some
    // step turns that rounding into a visible change of direction (on some
    // CPUs 7e-3 in one momentum buffer by step 3); 2 x 8 may differ from
    // 1 x 16 by as much as this run does, and no more.
    let rounding = tmp.path().join("one-on-two-threads");
    let two_threads = config_with_threads(tmp.path(), 16, 3, 2);
    finish(spawn(&two_threads, &data, &rounding, None, &[]), "one process on two threads");
    let two = tmp.path().join("two");
    two_ranks(&config(tmp.path(), 8, true, 3), &data, &two);
    assert_eq!(logged_steps(&two), vec![1, 2, 3], "rank 0 alone writes the metrics");
    let last = |run: &Path| run.join("checkpoints/last.safetensors");
    let noise = differences(&last(&rounding), &last(&one));
    let beyond = beyond_rounding(&differences(&last(&two), &last(&one)), &noise);
    assert!(beyond.is_empty(), "2 x 8 differs from 1 x 16 beyond rounding:\n{}", beyond.join("\n"));

    // The comparison can fail: without SyncBN each rank normalises its 8
    // images alone, and the weights come out measurably different.
    let unsynced = tmp.path().join("unsynced");
    two_ranks(&config(tmp.path(), 8, false, 3), &data, &unsynced);
    let diffs = differences(&last(&unsynced), &last(&one));
    let (diff, name) = worst(&diffs);
    assert!(
        diff > 1e-4,
        "without SyncBN 2 x 8 should differ from 1 x 16, got {diff:.2e} in {name}"
    );
    assert!(
        beyond_rounding(&diffs, &noise).len() > 10,
        "without SyncBN most BatchNorms should differ beyond rounding"
    );
}

#[test]
fn resuming_with_another_world_size_continues_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    make_images(&data, 32);
    let run = tmp.path().join("run");
    let cfg = config(tmp.path(), 8, true, 4);
    finish(spawn(&cfg, &data, &run, None, &["--stop-at", "2"]), "the first 2 steps");
    two_ranks(&cfg, &data, &run);
    let steps = logged_steps(&run);
    assert_eq!(steps, vec![1, 2, 3, 4], "one line per step, across the change of world size");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["finished"], true);
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
    assert!(stderr.contains("distributed run: rank 0 of 2"), "unclear error: {stderr}");
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
    let cfg = write_config(tmp.path(), 8, true, 6, 1, 2);
    let whole = tmp.path().join("whole");
    two_ranks(&cfg, &data, &whole);

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
    // The same arithmetic in the same order as the run never killed: no
    // rounding noise to allow for, only the 2-rank test's tolerances.
    let no_noise = vec![(String::new(), 0.0); diffs.len()];
    let beyond = beyond_rounding(&diffs, &no_noise);
    assert!(
        beyond.is_empty(),
        "the restarted run differs from one never killed:\n{}",
        beyond.join("\n")
    );
    eprintln!("largest difference from the run never killed: {:.2e}", worst(&diffs).0);
}

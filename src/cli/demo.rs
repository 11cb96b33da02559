//! `pixpro demo`: the whole loop in one command: build TuxSeg, pretrain with
//! the cpu preset, and measure the result against a random-init backbone
//! with the evaluation protocols, ending with one table of both.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use pixpro::model::precision::Precision;
use pixpro::tools::bench;
use pixpro::tools::tuxseg::{self, TuxsegOptions};
use pixpro::train::checkpoint::Checkpoint;
use pixpro::train::config::{Config, Preset};
use pixpro::train::{self, events, DirLock, RunDir, RunOptions};
use pixpro::transfer::backbone::Weights;
use pixpro::transfer::evaluate::{Evaluation, Evaluator, Protocol, Recipes};

use super::args::Device;
use super::eval::summary;

/// Training steps timed before pretraining, after one untimed: a few
/// seconds on a fast machine, under a minute on a slow one.
const TIMED_STEPS: usize = 3;

/// Two-view samples per second of the cpu preset on 2 idle cores of an AMD
/// EPYC, the machine of the minutes below. Measured there at 96 px, the
/// preset's size until issue #17: 37.5 (the README's demo, 37-38,
/// docs/results.md, "Throughput"). At the preset's 80 px, 1.33 times that,
/// the ratio `pixpro bench` measured between the two sizes (the budget
/// table of docs/experiments/tuxseg-recipe.toml), so that the preset's 1330
/// steps cost what 1000 did. The timing before pretraining measures the
/// same thing, the median training step.
const REFERENCE_IMAGES_PER_SEC: f64 = 37.5 * 1.33;

/// Minutes one backbone's evaluation by `protocol` took on that machine: the
/// fastest of the 15 jobs of docs/results-eval.json (the others shared the
/// machine), rounded up. The probe's is the demo's 16 minutes there less its
/// 14.2 of pretraining, halved and rounded up.
fn protocol_minutes(protocol: Protocol) -> f64 {
    match protocol {
        Protocol::Probe => 1.0,
        Protocol::Retrieval => 0.5,
        Protocol::Correspondence => 1.25,
        Protocol::Finetune { .. } => 3.0,
    }
}

/// Minutes of pretraining and of measuring both backbones, for `steps_left`
/// steps of `batch` samples on a machine that trains at `images_per_sec`.
/// Pretraining scales with that rate. The evaluations do not: on an EPYC
/// that pretrains 5.8 times slower than the reference (6.5 images/s), they
/// took 1.5 times longer (byol-s0 in docs/results-cpu.json against the
/// fastest eval-grid jobs), which the rate ratio's fourth root matches. That
/// is one job on one other machine, with test builds beside its pretraining
/// but not its evaluations: a rough rule, the best one measured.
fn estimate_minutes(
    steps_left: u64,
    batch: usize,
    images_per_sec: f64,
    protocols: &[Protocol],
) -> (f64, f64) {
    let pretraining = steps_left as f64 * batch as f64 / images_per_sec / 60.0;
    let slower = (REFERENCE_IMAGES_PER_SEC / images_per_sec).powf(0.25);
    let measuring = 2.0 * protocols.iter().map(|&p| protocol_minutes(p)).sum::<f64>() * slower;
    (pretraining, measuring)
}

fn parse_protocol(s: &str) -> std::result::Result<Protocol, String> {
    s.parse().map_err(|e: pixpro::Error| e.to_string())
}

#[derive(Args)]
pub(super) struct DemoArgs {
    /// Folder for the data, the run and the probes.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Where TuxSeg is (or is built, with seed 0) [default: OUT/tuxseg].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Pretraining steps [default: the cpu preset's].
    #[arg(long)]
    steps: Option<u64>,
    /// Seed of pretraining and of the evaluations; the data set stays the same.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How both backbones are measured (comma-separated): probe, retrieval,
    /// correspondence, finetune, finetune:F. Fine-tuning adds about 6 minutes each.
    #[arg(long, value_delimiter = ',', value_parser = parse_protocol,
          default_value = "probe,retrieval,correspondence")]
    protocols: Vec<Protocol>,
    #[command(flatten)]
    device: Device,
}

pub(super) fn run(args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    let _owner = DirLock::acquire(&args.out)?;
    let data = args.data.clone().unwrap_or_else(|| args.out.join("tuxseg"));
    let run = args.out.join("pretrain");
    let mut cfg = Preset::Cpu.config();
    cfg.train.seed = args.seed;
    cfg.train.device = args.device.choice();
    if let Some(s) = args.steps {
        cfg.train.steps = s;
    }
    let preset_steps = Preset::Cpu.config().train.steps;
    let (pretraining, measuring) = estimate_minutes(
        preset_steps,
        cfg.train.batch_size,
        REFERENCE_IMAGES_PER_SEC,
        &args.protocols,
    );
    let names: Vec<String> = args.protocols.iter().map(Protocol::to_string).collect();
    eprintln!(
        "pixpro demo: build TuxSeg (real photos with pasted real-object cutouts), pretrain {} at {} px \
         for {} steps (cpu preset), then measure it and a random-init backbone ({}). \
         About {:.0} minutes for the preset's {} steps on 2 idle cores of a recent server CPU; \
         this machine's time is measured before pretraining starts. Re-running continues where \
         it stopped.",
        cfg.model.arch,
        cfg.augment.image_size,
        cfg.train.steps,
        names.join(", "),
        (pretraining + measuring).ceil(),
        preset_steps
    );
    ensure_tuxseg(&data)?;
    let mut cfg = recipe_to_continue(&cfg, &run)?;
    // The precision the timing was taken in, so that `auto`'s trial runs
    // once and the estimate is of the arithmetic the pretraining uses.
    if let Some(timed) = announce_time(args, &cfg, &data, &run)? {
        cfg.train.precision = timed;
    }
    eprintln!("[2/3] pretraining into {}", run.display());
    let summary =
        train::pretrain(&cfg, &RunOptions::new(data.join("pretrain"), RunDir::new(&run)))?;
    if !summary.finished {
        eprintln!("stopped at step {}; run the same command to continue", summary.steps_done);
        return Ok(());
    }
    let rows = evaluate_both(args, &cfg, &data, &run)?;
    // For TensorBoard: the pretrained scores with their run, random init's
    // (which has no run) in its own folder, under the same tags.
    let tags = |pick: fn(&(Evaluation, Evaluation)) -> &Evaluation| -> Vec<(String, f64)> {
        rows.iter().map(|r| (format!("eval/{}", pick(r).protocol), pick(r).score)).collect()
    };
    events::write_scores(&run, summary.steps_done, &tags(|r| &r.0))?;
    events::write_scores(&args.out.join("random"), 0, &tags(|r| &r.1))?;
    println!(
        "\nTuxSeg val, pretrained {} steps against random init ({:.0} min in all):\n\n\
         | protocol | score | pixpro | random init | difference |\n|---|---|---:|---:|---:|",
        summary.steps_done,
        started.elapsed().as_secs_f64() / 60.0
    );
    for (ours, random) in &rows {
        println!(
            "| {} | {} | {:.4} | {:.4} | {:+.4} |",
            ours.protocol,
            ours.score_name,
            ours.score,
            random.score,
            ours.score - random.score
        );
    }
    Ok(())
}

/// `cfg`, or where the demo left a pretraining in `run`, `cfg` continuing
/// it (with the precision it began in), which must be the same recipe. A
/// run begun by an earlier version, under a preset that has changed since,
/// would otherwise finish under the new one, or, finished, be measured and
/// reported as the preset's.
fn recipe_to_continue(cfg: &Config, run: &Path) -> Result<Config> {
    let dir = RunDir::new(run);
    if !dir.can_resume() {
        return Ok(cfg.clone());
    }
    let saved = train::saved_config(&dir)?;
    let continued = cfg.continuing(&saved);
    if continued != saved {
        anyhow::bail!(
            "{} was pretrained with another recipe than this demo's (differs in {}), perhaps \
             by an earlier version of the cpu preset; move it away, or give another --out, to \
             pretrain it again",
            run.display(),
            saved.differing_keys(&continued).join(", ")
        );
    }
    Ok(continued)
}

/// Times a few training steps of `cfg` on this machine, as it is loaded
/// now, and says how long the rest of the demo will take: the start line's
/// minutes are a fast machine's, and a slow one takes several times longer.
/// The precision it timed, or `None` when the pretraining is already done
/// and nothing is timed.
fn announce_time(
    args: &DemoArgs,
    cfg: &Config,
    data: &Path,
    run: &Path,
) -> Result<Option<Precision>> {
    // The checkpoint a resume would start from: last.safetensors, or the
    // newest numbered copy where that is unreadable.
    let done = RunDir::new(run)
        .checkpoint_files()
        .iter()
        .find_map(|p| Checkpoint::read_meta(p))
        .map_or(0, |m| m.step);
    let steps_left = cfg.train.steps.saturating_sub(done);
    if steps_left == 0 {
        return Ok(None);
    }
    eprintln!("      timing {TIMED_STEPS} training steps on this machine");
    let timed = bench::run(cfg, &data.join("pretrain"), 1, TIMED_STEPS)?;
    let (pretraining, measuring) =
        estimate_minutes(steps_left, cfg.train.batch_size, timed.images_per_sec, &args.protocols);
    let (pretraining, measuring) = (pretraining.ceil(), measuring.ceil());
    eprintln!(
        "      {:.1} images/s here: about {pretraining:.0} minutes of pretraining ({steps_left} \
         step{}{}) and {measuring:.0} of measuring, {:.0} in all",
        timed.images_per_sec,
        if steps_left == 1 { "" } else { "s" },
        if done > 0 { format!(", continuing from step {done}") } else { String::new() },
        pretraining + measuring
    );
    Ok(Some(timed.precision))
}

/// Step 1: builds TuxSeg into `data` unless it is there already, always
/// with seed 0, so that every demo seed is measured on the same data set.
fn ensure_tuxseg(data: &Path) -> Result<()> {
    if data.join("voc").join("ImageSets").exists() {
        eprintln!("[1/3] TuxSeg already in {}", data.display());
        return Ok(());
    }
    let s =
        tuxseg::build(&TuxsegOptions { out: data.to_path_buf(), seed: 0, ..Default::default() })?;
    eprintln!(
        "[1/3] TuxSeg: {} pretrain / {} train / {} val scenes in {}",
        s.pretrain_images,
        s.train_images,
        s.val_images,
        data.display()
    );
    Ok(())
}

/// Step 3: measures the run's last checkpoint and a random-init backbone of
/// the same architecture with every protocol asked for, on TuxSeg's
/// labelled scenes, into OUT/pixpro/PROTOCOL and OUT/random/PROTOCOL; the
/// recipes are the experiment grids' (160 px probe and retrieval, as the
/// scenes are), seeded by --seed.
fn evaluate_both(
    args: &DemoArgs,
    cfg: &Config,
    data: &Path,
    run: &Path,
) -> Result<Vec<(Evaluation, Evaluation)>> {
    eprintln!("[3/3] measuring both backbones, frozen unless fine-tuned");
    let mut recipes = Recipes::default().with_seed(args.seed);
    recipes.probe.image_size = 160;
    recipes.retrieval.image_size = 160;
    recipes.validate()?;
    let evaluator =
        Evaluator { recipes, device: train::pick_device(cfg.train.device)?, progress: true };
    let ours = Weights::Checkpoint(RunDir::new(run).last_checkpoint());
    let random = Weights::Random { arch: cfg.model.arch, seed: args.seed };
    let voc = data.join("voc");
    // A re-run (after a stop during the evaluations, or with one more
    // protocol) keeps what an earlier run measured with the same recipe.
    let measure = |weights: &Weights, stride, p: Protocol, (dir, who): (&str, &str)| {
        let out = args.out.join(dir).join(p.folder());
        if let Some(e) = evaluator.kept(weights, stride, p, &voc, &out) {
            eprintln!("  {who:<11} {} (kept from an earlier run)", summary(&e));
            return Ok(e);
        }
        let e = evaluator.evaluate(weights, stride, p, &voc, &out)?;
        eprintln!("  {who:<11} {}", summary(&e));
        Ok::<_, anyhow::Error>(e)
    };
    let mut rows = Vec::new();
    for &p in &args.protocols {
        let a = measure(&ours, None, p, ("pixpro", "pixpro"))?;
        let b = measure(&random, Some(cfg.model.output_stride), p, ("random", "random init"))?;
        rows.push((a, b));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_machine_gets_the_readmes_twenty_minutes() {
        let protocols: Vec<Protocol> =
            ["probe", "retrieval", "correspondence"].iter().map(|p| p.parse().unwrap()).collect();
        let cfg = Preset::Cpu.config();
        let (steps, batch) = (cfg.train.steps, cfg.train.batch_size);
        let (p, m) = estimate_minutes(steps, batch, REFERENCE_IMAGES_PER_SEC, &protocols);
        assert!((14.0..15.0).contains(&p), "{p}");
        assert!((19.0..21.0).contains(&(p + m)), "{p} + {m}");
        // A machine at a fifth of the speed pretrains five times longer but
        // measures only about 1.5 times longer.
        let fifth = REFERENCE_IMAGES_PER_SEC / 5.0;
        let (p5, m5) = estimate_minutes(steps, batch, fifth, &protocols);
        assert!((p5 / p - 5.0).abs() < 1e-9, "{p5}");
        assert!((1.4..1.6).contains(&(m5 / m)), "{m5} / {m}");
        // The README's example: 83 + 9 minutes on the EPYC that trained the
        // 96 px preset at 6.5 images/s, so 80 px at 1.33 times that.
        let (slow, slow_m) = estimate_minutes(steps, batch, 6.5 * 1.33, &protocols);
        assert_eq!((slow.ceil(), slow_m.ceil()), (83.0, 9.0), "{slow} {slow_m}");
        // A run half done has half its pretraining left.
        let (half, _) = estimate_minutes(steps / 2, batch, REFERENCE_IMAGES_PER_SEC, &protocols);
        assert!((half / p - 0.5).abs() < 1e-9);
    }
}

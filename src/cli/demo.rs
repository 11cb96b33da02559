//! `pixpro demo`: the whole loop in one command: build TuxSeg, pretrain with
//! the cpu preset, and measure the result against a random-init backbone
//! with the evaluation protocols, ending with one table of both.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use pixpro::tools::tuxseg::{self, TuxsegOptions};
use pixpro::train::config::{Config, Preset};
use pixpro::train::{self, events, DirLock, RunDir, RunOptions};
use pixpro::transfer::backbone::Weights;
use pixpro::transfer::evaluate::{Evaluation, Evaluator, Protocol, Recipes};

use super::args::Device;
use super::eval::summary;

/// Pretraining and the probe of both backbones, measured for the cpu preset
/// on 2 idle cores; see README.
const DEMO_MINUTES: f64 = 16.0;

/// Minutes one backbone's evaluation by `protocol` adds on 2 idle cores:
/// the fastest of the 15 jobs of docs/results-eval.json (the others shared
/// the machine), rounded up.
fn protocol_minutes(protocol: Protocol) -> f64 {
    match protocol {
        // Part of DEMO_MINUTES.
        Protocol::Probe => 0.0,
        Protocol::Retrieval => 0.5,
        Protocol::Correspondence => 1.25,
        Protocol::Finetune { .. } => 3.0,
    }
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
    let minutes =
        DEMO_MINUTES + 2.0 * args.protocols.iter().map(|&p| protocol_minutes(p)).sum::<f64>();
    let names: Vec<String> = args.protocols.iter().map(Protocol::to_string).collect();
    eprintln!(
        "pixpro demo: build TuxSeg (real photos with pasted real-object cutouts), pretrain {} at {} px \
         for {} steps (cpu preset), then measure it and a random-init backbone ({}). \
         About {:.0} minutes for the preset's {} steps on 2 idle CPU cores, longer on a busy or \
         slower machine (the progress bar shows its own estimate); re-running continues where \
         it stopped.",
        cfg.model.arch,
        cfg.augment.image_size,
        cfg.train.steps,
        names.join(", "),
        minutes.ceil(),
        Preset::Cpu.config().train.steps
    );
    ensure_tuxseg(&data)?;
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

//! `pixpro demo`: the whole loop in one command: build TuxSeg, pretrain with
//! the cpu preset, and probe the result against a random-init backbone.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use pixpro::tools::tuxseg::{self, TuxsegOptions};
use pixpro::train::config::{Config, Preset};
use pixpro::train::{self, events, DirLock, RunDir, RunOptions};
use pixpro::transfer::backbone::Backbone;
use pixpro::transfer::probe::{probe_into, ProbeConfig, ProbeResult};

use super::args::Device;
use super::probe::print_probe;

/// Measured for the cpu preset on a 2-core machine; see README.
const DEMO_MINUTES: u32 = 16;

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
    /// Seed of pretraining and of the probes; the data set stays the same.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    eprintln!(
        "pixpro demo: build TuxSeg (real photos with pasted real-object cutouts), pretrain {} at {} px \
         for {} steps (cpu preset), then probe it and a random-init backbone. \
         About {} minutes for the preset's {} steps on 2 idle CPU cores, longer on a busy or \
         slower machine (the progress bar shows its own estimate); re-running continues where \
         it stopped.",
        cfg.model.arch,
        cfg.augment.image_size,
        cfg.train.steps,
        DEMO_MINUTES,
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
    let (r_ours, r_rand) = probe_both(args, &cfg, &data, &run)?;
    // For TensorBoard: the pretrained score with its run, random init's
    // (which has no run) with its probe, both under the same tag.
    let probe = |miou: f64| [("eval/probe".to_string(), miou)];
    events::write_scores(&run, summary.steps_done, &probe(r_ours.miou))?;
    events::write_scores(&args.out.join("probe-random"), 0, &probe(r_rand.miou))?;
    print_probe("pixpro", &r_ours);
    print_probe("random init", &r_rand);
    println!(
        "TuxSeg val mIoU: pixpro {:.4} vs random init {:.4} ({:+.4}); pretrained {} steps; {:.0} min in all",
        r_ours.miou,
        r_rand.miou,
        r_ours.miou - r_rand.miou,
        summary.steps_done,
        started.elapsed().as_secs_f64() / 60.0
    );
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

/// Step 3: probes the run's last checkpoint and a random-init backbone of
/// the same architecture on TuxSeg's labelled scenes.
fn probe_both(
    args: &DemoArgs,
    cfg: &Config,
    data: &Path,
    run: &Path,
) -> Result<(ProbeResult, ProbeResult)> {
    eprintln!("[3/3] probing (frozen backbone, per-pixel linear classifier)");
    let probe_cfg = ProbeConfig { image_size: 160, seed: args.seed, ..Default::default() };
    let device = train::pick_device(cfg.train.device)?;
    let ours = Backbone::from_checkpoint(&RunDir::new(run).last_checkpoint(), None, device)?;
    let random = Backbone::random(cfg.model.arch, cfg.model.output_stride, args.seed, device)?;
    let voc = data.join("voc");
    let r_ours = probe_into(&ours, &voc, &args.out.join("probe-pixpro"), &probe_cfg)?;
    let r_rand = probe_into(&random, &voc, &args.out.join("probe-random"), &probe_cfg)?;
    Ok((r_ours, r_rand))
}

//! `pixpro pretrain`: a new run from a preset, a TOML file and flags, or the
//! continuation of one from its saved config.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use pixpro::distributed::collective::Launch;
use pixpro::method::Method;
use pixpro::model::precision::Precision;
use pixpro::train::config::{Config, Preset};
use pixpro::train::{self, steal, DirLock, InitWeights, RunDir, RunOptions};
use pixpro::transfer::backbone::Backbone;

use super::args::{ConfigFile, DeviceArg, ImageFolder, Quiet, Workers};

#[derive(Args)]
pub(super) struct PretrainArgs {
    #[command(flatten)]
    images: ImageFolder,
    /// Run directory: config.toml, metrics.jsonl, checkpoints/.
    #[arg(long)]
    out: PathBuf,
    /// Starting recipe [default: paper-r50 with a CUDA device, else cpu].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[command(flatten)]
    config: ConfigFile,
    /// What to learn: pixpro, pixpro+instance (adds the BYOL-style instance
    /// branch), or the baselines byol and pixcontrast [default: pixpro].
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Total optimiser steps (overrides --epochs).
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Total epochs over the data.
    #[arg(long)]
    epochs: Option<u64>,
    /// Images per step in this process (two views each).
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Arithmetic of the networks' forward passes: fp32, bf16 autocast, or
    /// auto (bf16 on a CUDA GPU of compute capability 8.0 or later, and on a
    /// CPU with bfloat16 units where a timed trial of both finds it faster;
    /// fp32 elsewhere; the run keeps what it chose) [default: the config's;
    /// the presets' is auto].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    #[command(flatten)]
    loader: Workers,
    /// Save a checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Start both encoders (online and target) from these weights: a pixpro
    /// checkpoint, torchvision/timm-named safetensors or .pth, a Detectron2
    /// pickle, the reference PixPro's checkpoint. The heads start fresh.
    /// Ignored when RUN resumes.
    #[arg(long, value_name = "WEIGHTS")]
    init: Option<PathBuf>,
    /// Continue RUN from its last checkpoint (also the default when RUN has one).
    #[arg(long)]
    resume: bool,
    /// Stop with a checkpoint once this many steps are done, before the end.
    #[arg(long)]
    stop_at: Option<u64>,
    #[command(flatten)]
    progress: Quiet,
}

impl PretrainArgs {
    /// Applies the flags that change what is trained.
    fn apply_recipe_flags(&self, cfg: &mut Config) {
        if let Some(m) = self.method {
            cfg.model.method = m;
        }
        if let Some(s) = self.steps {
            cfg.train.steps = s;
        }
        if let Some(e) = self.epochs {
            cfg.train.epochs = e;
            cfg.train.steps = 0;
        }
        if let Some(b) = self.batch_size {
            cfg.train.batch_size = b;
        }
        if let Some(s) = self.seed {
            cfg.train.seed = s;
        }
        if let Some(p) = self.precision {
            cfg.train.precision = p;
        }
    }

    /// Applies the flags that change only how it runs; allowed on resume.
    fn apply_runtime_flags(&self, cfg: &mut Config) {
        if let Some(w) = self.loader.workers {
            cfg.train.workers = w;
        }
        if let Some(c) = self.checkpoint_every {
            cfg.train.checkpoint_every = c;
        }
        if let Some(d) = self.device {
            cfg.train.device = d.into();
        }
    }

    fn requested_config(&self) -> Result<Config> {
        let preset = self.preset.unwrap_or(if tch::Cuda::is_available() {
            Preset::PaperR50
        } else {
            Preset::Cpu
        });
        let mut cfg = self.config.over(preset.config())?;
        self.apply_recipe_flags(&mut cfg);
        self.apply_runtime_flags(&mut cfg);
        Ok(cfg)
    }

    /// On resume the run's saved config wins; flags and files given again
    /// must describe the same recipe (so the same command continues a run),
    /// and only how it runs may change.
    fn resumed_config(&self, run: &RunDir) -> Result<Config> {
        let saved = train::saved_config(run)
            .with_context(|| format!("cannot resume {}", run.root.display()))?;
        let base = match self.preset {
            Some(p) => p.config(),
            None => saved.clone(),
        };
        let mut asked = self.config.over(base)?;
        self.apply_recipe_flags(&mut asked);
        let mut cfg = asked.continuing(&saved);
        if cfg != saved {
            bail!(
                "{} was started with another recipe (differs in {}); continue it without \
                 those options, or give a new --out to start a new run",
                run.root.display(),
                saved.differing_keys(&cfg).join(", ")
            );
        }
        self.apply_runtime_flags(&mut cfg);
        Ok(cfg)
    }
}

/// The encoder `--init` names, checked against the run's architecture
/// before anything trains.
fn init_weights(path: &std::path::Path, cfg: &Config) -> Result<InitWeights> {
    let os = Some(cfg.model.output_stride);
    let backbone = Backbone::from_file(path, os, tch::Device::Cpu)?;
    if backbone.arch != cfg.model.arch {
        bail!(
            "--init {}: holds a {}, but this run trains a {} (model.arch); give weights of the              same depth or set --config's model.arch",
            path.display(),
            backbone.arch,
            cfg.model.arch
        );
    }
    Ok(InitWeights { tensors: backbone.named_tensors(), source: backbone.note.clone() })
}

/// The first words of a resumable command's last line: why it stopped
/// early, and that the same command continues, or "finished".
pub(super) fn outcome(stopped_by: &Option<String>) -> String {
    match stopped_by {
        Some(why) => format!("stopped ({why}); run the same command to continue"),
        None => "finished".to_string(),
    }
}

pub(super) fn run(args: &PretrainArgs) -> Result<()> {
    let run = RunDir::new(&args.out);
    let launch = Launch::from_env()?;
    let rank0 = launch.as_ref().is_none_or(|l| l.rank == 0);
    // Before the run's files are read: another process may be writing them.
    let _owner = if rank0 { Some(DirLock::acquire(&run.root)?) } else { None };
    let resuming = run.can_resume();
    if args.resume && !resuming {
        bail!(
            "--resume: {} has no checkpoints/last.safetensors to continue from",
            run.root.display()
        );
    }
    let cfg = if resuming { args.resumed_config(&run)? } else { args.requested_config()? };
    cfg.validate()?;
    // In a data-parallel run only rank 0 reports; the others train quietly.
    let quiet = args.progress.quiet || !rank0;
    let data = &args.images.data;
    if !quiet {
        eprintln!(
            "pixpro pretrain: {} {} px, batch {}, {} -> {}{}",
            cfg.model.arch,
            cfg.augment.image_size,
            cfg.train.batch_size,
            data.display(),
            run.root.display(),
            if resuming { " (resuming)" } else { "" }
        );
    }
    let init = match (&args.init, resuming) {
        (Some(path), true) => {
            if !quiet {
                eprintln!(
                    "--init {} ignored: {} continues from its own checkpoint",
                    path.display(),
                    run.root.display()
                );
            }
            None
        }
        // The other ranks start from rank 0's weights, broadcast.
        (Some(path), false) if rank0 => Some(init_weights(path, &cfg)?),
        _ => None,
    };
    let started = Instant::now();
    let summary = train::pretrain(
        &cfg,
        &RunOptions { stop_at: args.stop_at, quiet, init, ..RunOptions::new(data.clone(), run) },
    )?;
    if !quiet {
        let how = outcome(&summary.stopped_by);
        eprintln!(
            "{how}: step {}/{}, loss {}, {:.1} img/s, data wait {:.1}%{}, {:.0} s; outputs in {}",
            summary.steps_done,
            summary.total_steps,
            summary.final_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
            summary.images_per_sec,
            100.0 * summary.data_wait_fraction,
            steal::shown(summary.cpu_steal_fraction).map(|s| format!(", {s}")).unwrap_or_default(),
            started.elapsed().as_secs_f64(),
            summary.run_dir.display()
        );
    }
    Ok(())
}

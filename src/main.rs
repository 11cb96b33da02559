//! `pixpro`: the command line. Parsing and printing live here; the work is
//! done by the library.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use pixpro::config::{Config, DeviceChoice, Preset};
use pixpro::train::{self, RunDir, RunOptions};

#[derive(Parser)]
#[command(
    name = "pixpro",
    version,
    about = "PixPro: pixel-level self-supervised pretraining of ResNet backbones",
    long_about = "PixPro: pixel-level self-supervised pretraining of ResNet backbones \
                  (Xie et al., CVPR 2021), on libtorch.\n\n\
                  Start with `pixpro pretrain --data DIR --out RUN --preset cpu`."
)]
struct Cli {
    /// Logs through tracing; RUST_LOG=debug shows more.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain a backbone on a folder of unlabelled images.
    #[command(after_help = "Examples:\n  \
        pixpro pretrain --data ~/photos --out runs/cpu --preset cpu\n  \
        pixpro pretrain --data /imagenet/train --out runs/r50 --preset paper-r50 --device cuda\n  \
        pixpro pretrain --data ~/photos --out runs/cpu          # continue an interrupted run")]
    Pretrain(PretrainArgs),
    /// Time the data pipeline and the training step (images/s, data wait, memory).
    #[command(after_help = "Examples:\n  \
        pixpro bench --data ~/photos --preset cpu\n  \
        pixpro bench --data ~/photos --arch resnet50 --image-size 224 --batch-size 16 --json")]
    Bench(BenchArgs),
    /// Print libtorch, CUDA and thread facts for this machine.
    Doctor,
}

#[derive(Args)]
struct BenchArgs {
    /// Folder of images (JPEG, PNG, WebP), searched recursively.
    #[arg(long)]
    data: PathBuf,
    /// Starting recipe [default: cpu].
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,
    /// TOML file whose keys override the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    arch: Option<pixpro::resnet::Arch>,
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// 32, 16 or 8: dilate the last stage(s) instead of striding.
    #[arg(long)]
    output_stride: Option<u32>,
    /// Timed steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long)]
    workers: Option<usize>,
    /// libtorch intra-op threads [default: libtorch's choice].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// End with one JSON line (images_per_sec, peak_rss_mb, data_wait_fraction, ...).
    #[arg(long)]
    json: bool,
}

fn bench(args: &BenchArgs) -> Result<()> {
    let mut cfg = args.preset.config();
    if let Some(path) = &args.config {
        cfg = Config::from_toml_file(path, &cfg)?;
    }
    if let Some(a) = args.arch {
        cfg.model.arch = a;
    }
    if let Some(s) = args.image_size {
        cfg.augment.image_size = s;
    }
    if let Some(b) = args.batch_size {
        cfg.train.batch_size = b;
    }
    if let Some(o) = args.output_stride {
        cfg.model.output_stride = o;
    }
    if let Some(w) = args.workers {
        cfg.train.workers = w;
    }
    if let Some(t) = args.threads {
        cfg.train.threads = t;
    }
    if let Some(d) = args.device {
        cfg.train.device = d.into();
    }
    let r = pixpro::bench::run(&cfg, &args.data, args.warmup, args.steps)?;
    println!(
        "{} {} px, batch {}, output stride {}, {} ({} torch threads, {} loader workers)",
        r.arch, r.image_size, r.batch_size, r.output_stride, r.device, r.torch_threads, r.workers
    );
    println!(
        "train: {:.2} img/s (median step {:.1} ms, min {:.1}, max {:.1}, {} steps); data wait {:.1}% of step time",
        r.images_per_sec,
        r.step_ms_median,
        r.step_ms_min,
        r.step_ms_max,
        r.steps,
        100.0 * r.data_wait_fraction
    );
    println!(
        "data alone: {:.1} two-view img/s ({:.1} per worker); peak memory {:.0} MiB",
        r.data_images_per_sec, r.data_images_per_sec_per_worker, r.peak_rss_mb
    );
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

#[derive(Args)]
struct PretrainArgs {
    /// Folder of images (JPEG, PNG, WebP), searched recursively.
    #[arg(long)]
    data: PathBuf,
    /// Run directory: config.toml, metrics.jsonl, checkpoints/.
    #[arg(long)]
    out: PathBuf,
    /// Starting recipe [default: paper-r50 with a CUDA device, else cpu].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// TOML file whose keys override the preset ([model], [augment], [optim], [train]).
    #[arg(long)]
    config: Option<PathBuf>,
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
    /// Loader threads [default: the cores libtorch leaves free, at least 1].
    #[arg(long)]
    workers: Option<usize>,
    /// Save a checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Continue RUN from its last checkpoint (also the default when RUN has one).
    #[arg(long)]
    resume: bool,
    /// Stop with a checkpoint once this many steps are done, before the end.
    #[arg(long)]
    stop_at: Option<u64>,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}

impl PretrainArgs {
    /// Applies the flags that change what is trained.
    fn apply_recipe_flags(&self, cfg: &mut Config) {
        if let Some(s) = self.steps {
            cfg.train.steps = Some(s);
        }
        if let Some(e) = self.epochs {
            cfg.train.epochs = Some(e);
            cfg.train.steps = None;
        }
        if let Some(b) = self.batch_size {
            cfg.train.batch_size = b;
        }
        if let Some(s) = self.seed {
            cfg.train.seed = s;
        }
    }

    /// Applies the flags that change only how it runs; allowed on resume.
    fn apply_runtime_flags(&self, cfg: &mut Config) {
        if let Some(w) = self.workers {
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
        let mut cfg = preset.config();
        if let Some(path) = &self.config {
            cfg = Config::from_toml_file(path, &cfg)?;
        }
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
        let mut cfg = match self.preset {
            Some(p) => p.config(),
            None => saved.clone(),
        };
        if let Some(path) = &self.config {
            cfg = Config::from_toml_file(path, &cfg)?;
        }
        self.apply_recipe_flags(&mut cfg);
        let t = &saved.train;
        cfg.train.workers = t.workers;
        cfg.train.prefetch = t.prefetch;
        cfg.train.threads = t.threads;
        cfg.train.checkpoint_every = t.checkpoint_every;
        cfg.train.log_every = t.log_every;
        cfg.train.device = t.device;
        if cfg != saved {
            let changed = diff_keys(&saved.to_toml(), &cfg.to_toml());
            bail!(
                "{} was started with another recipe (differs in {}); continue it without \
                 those options, or give a new --out to start a new run",
                run.root.display(),
                changed.join(", ")
            );
        }
        self.apply_runtime_flags(&mut cfg);
        Ok(cfg)
    }
}

/// Keys whose values differ between two TOML documents, as `table.key`.
fn diff_keys(a: &str, b: &str) -> Vec<String> {
    fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) {
        for (k, v) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(inner) => flatten(&key, inner, out),
                other => out.push((key, other.to_string())),
            }
        }
    }
    let parse = |s: &str| {
        let mut out = Vec::new();
        if let Ok(t) = s.parse::<toml::Table>() {
            flatten("", &t, &mut out);
        }
        out
    };
    let (a, b) = (parse(a), parse(b));
    let mut keys: Vec<String> =
        b.iter().filter(|kv| !a.contains(kv)).map(|kv| kv.0.clone()).collect();
    keys.extend(a.iter().filter(|(k, _)| !b.iter().any(|kv| &kv.0 == k)).map(|kv| kv.0.clone()));
    keys.sort();
    keys.dedup();
    keys
}

fn pretrain(args: &PretrainArgs) -> Result<()> {
    let run = RunDir::new(&args.out);
    let resuming = run.can_resume();
    if args.resume && !resuming {
        bail!(
            "--resume: {} has no checkpoints/last.safetensors to continue from",
            run.root.display()
        );
    }
    let cfg = if resuming { args.resumed_config(&run)? } else { args.requested_config()? };
    cfg.validate()?;
    if !args.quiet {
        eprintln!(
            "pixpro pretrain: {} {} px, batch {}, {} -> {}{}",
            cfg.model.arch,
            cfg.augment.image_size,
            cfg.train.batch_size,
            args.data.display(),
            run.root.display(),
            if resuming { " (resuming)" } else { "" }
        );
    }
    let started = Instant::now();
    let summary = train::pretrain(
        &cfg,
        &RunOptions { data: args.data.clone(), run, stop_at: args.stop_at, quiet: args.quiet },
    )?;
    if !args.quiet {
        let how = match &summary.stopped_by {
            Some(why) => format!("stopped ({why}); run the same command to continue"),
            None => "finished".to_string(),
        };
        eprintln!(
            "{how}: step {}/{}, loss {}, {:.1} img/s, data wait {:.1}%, {:.0} s; outputs in {}",
            summary.steps_done,
            summary.total_steps,
            summary.final_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
            summary.images_per_sec,
            100.0 * summary.data_wait_fraction,
            started.elapsed().as_secs_f64(),
            summary.run_dir.display()
        );
    }
    Ok(())
}

fn doctor() {
    println!("pixpro {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch threads: {}", tch::get_num_threads());
    println!("cuda available: {}", tch::Cuda::is_available());
    println!("cuda devices: {}", tch::Cuda::device_count());
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Pretrain(a)) => pretrain(a),
        Some(Command::Bench(a)) => bench(a),
        Some(Command::Doctor) => {
            doctor();
            Ok(())
        }
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `pixpro bench`: images per second of the training step and of the data
//! pipeline for a recipe, without writing a run.
use anyhow::Result;
use clap::Args;
use pixpro::model::precision::Precision;
use pixpro::model::resnet::Arch;
use pixpro::tools::bench;
use pixpro::train::config::{Config, Preset};
use pixpro::train::steal;

use super::args::{ConfigFile, DeviceArg, ImageFolder, Workers};

#[derive(Args)]
pub(super) struct BenchArgs {
    #[command(flatten)]
    images: ImageFolder,
    /// Starting recipe.
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,
    #[command(flatten)]
    config: ConfigFile,
    #[arg(long)]
    arch: Option<Arch>,
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
    #[command(flatten)]
    loader: Workers,
    /// libtorch intra-op threads [default: libtorch's choice].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Arithmetic of the networks' forward passes: fp32, bf16, or auto (as a run would choose,
    /// by a timed trial on a CPU with bfloat16 units) [default: the config's; the presets' is
    /// auto].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// End with one JSON line (images_per_sec, peak_rss_mb, data_wait_fraction, ...).
    #[arg(long)]
    json: bool,
    /// Time the data pipeline alone over --steps batches, without building
    /// the model; with --workers 1 it measures one core.
    #[arg(long)]
    data_only: bool,
    /// Decode every JPEG whole, not at the reduced size the crops allow
    /// (`augment.reduced_decode = false`): the baseline of its speed-up.
    #[arg(long)]
    whole_decode: bool,
}

impl BenchArgs {
    /// The preset, then the TOML file, then the flags.
    fn config(&self) -> Result<Config> {
        let mut cfg = self.config.over(self.preset.config())?;
        if let Some(a) = self.arch {
            cfg.model.arch = a;
        }
        if let Some(s) = self.image_size {
            cfg.augment.image_size = s;
        }
        if let Some(b) = self.batch_size {
            cfg.train.batch_size = b;
        }
        if let Some(o) = self.output_stride {
            cfg.model.output_stride = o;
        }
        if let Some(w) = self.loader.workers {
            cfg.train.workers = w;
        }
        if let Some(t) = self.threads {
            cfg.train.threads = t;
        }
        if let Some(d) = self.device {
            cfg.train.device = d.into();
        }
        if let Some(p) = self.precision {
            cfg.train.precision = p;
        }
        if self.whole_decode {
            cfg.augment.reduced_decode = false;
        }
        Ok(cfg)
    }
}

pub(super) fn run(args: &BenchArgs) -> Result<()> {
    let cfg = args.config()?;
    if args.data_only {
        return data_only(args, &cfg);
    }
    let r = bench::run(&cfg, &args.images.data, args.warmup, args.steps)?;
    println!(
        "{} {} px, batch {}, output stride {}, {}, {} ({} torch threads, {} loader workers)",
        r.arch,
        r.image_size,
        r.batch_size,
        r.output_stride,
        r.precision.name(),
        r.device,
        r.torch_threads,
        r.workers
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
    if let Some(s) = steal::shown(r.cpu_steal_fraction) {
        println!(
            "{s} of the CPU time during the timed steps: a hypervisor gave the cores to another \
             guest, so these numbers measure the host's load as well as the code"
        );
    }
    println!(
        "data alone: {:.1} two-view img/s ({:.1} per worker); peak memory {:.0} MiB",
        r.data_images_per_sec, r.data_images_per_sec_per_worker, r.peak_rss_mb
    );
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

/// `--data-only`: the loader over --steps batches, no model.
fn data_only(args: &BenchArgs, cfg: &Config) -> Result<()> {
    let r = bench::data_only(cfg, &args.images.data, args.steps)?;
    println!(
        "{} images found and checked in {:.2} s, first batch {:.2} s later",
        r.images, r.scan_s, r.first_batch_s
    );
    println!(
        "data alone, {} px, batch {}, {} decode: {:.1} two-view img/s with {} loader workers ({:.1} per worker); peak memory {:.0} MiB",
        r.image_size,
        r.batch_size,
        if r.reduced_decode { "reduced" } else { "whole" },
        r.data_images_per_sec,
        r.workers,
        r.data_images_per_sec_per_worker,
        r.peak_rss_mb
    );
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

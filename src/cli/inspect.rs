//! `pixpro inspect`: pictures of what pretraining sees (the two views and
//! their positive pairs) and of what a checkpoint learnt (its features).
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use pixpro::tools::inspect;
use pixpro::train::config::Preset;
use pixpro::train::load_pixpro;

use super::args::{Checkpoint, ConfigFile, Device, ImageFolder};

#[derive(Subcommand)]
pub(super) enum InspectCommand {
    /// Original with both crop boxes, the two augmented views, lines joining positive cells.
    #[command(
        after_help = "Example:\n  pixpro inspect views --data ~/photos --out pics --preset paper-r50"
    )]
    Views(InspectViewsArgs),
    /// PCA of the dense features, PPM similarity of query cells, nearest-neighbour matches.
    #[command(
        after_help = "Example:\n  pixpro inspect features --checkpoint runs/cpu/checkpoints/last.safetensors --images ~/photos --out pics"
    )]
    Features(InspectFeaturesArgs),
}

#[derive(Args)]
pub(super) struct InspectViewsArgs {
    #[command(flatten)]
    images: ImageFolder,
    #[arg(long)]
    out: PathBuf,
    /// Recipe whose augmentation, output stride and threshold are shown.
    #[arg(long, value_enum, default_value = "paper-r50")]
    preset: Preset,
    #[command(flatten)]
    config: ConfigFile,
    /// Pictures to draw (the first images of the folder, sorted).
    #[arg(long, default_value_t = 4)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub(super) struct InspectFeaturesArgs {
    #[command(flatten)]
    weights: Checkpoint,
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Network input size for the pictures [default: the checkpoint's, at
    /// least 224]: the encoder is fully convolutional, and a small training
    /// size gives cells too coarse to see.
    #[arg(long)]
    image_size: Option<u32>,
    #[command(flatten)]
    device: Device,
}

pub(super) fn run(command: &InspectCommand) -> Result<()> {
    match command {
        InspectCommand::Views(a) => views(a),
        InspectCommand::Features(a) => features(a),
    }
}

fn views(args: &InspectViewsArgs) -> Result<()> {
    let cfg = args.config.over(args.preset.config())?;
    cfg.validate()?;
    let grid = inspect::feature_grid(cfg.augment.image_size, cfg.model.output_stride);
    let written = inspect::inspect_views(
        &args.images.data,
        &args.out,
        args.count,
        &cfg.augment,
        grid,
        cfg.model.threshold,
        args.seed,
    )?;
    eprintln!("wrote {} pictures to {}", written.len(), args.out.display());
    Ok(())
}

fn features(args: &InspectFeaturesArgs) -> Result<()> {
    let (cfg, model) = load_pixpro(&args.weights.checkpoint, args.device.pick()?)?;
    let mut augment = cfg.augment.clone();
    augment.image_size = args.image_size.unwrap_or(augment.image_size.max(224));
    augment.validate()?;
    let written = inspect::inspect_features(
        &model,
        &args.images,
        &args.out,
        args.count,
        &augment,
        args.seed,
    )?;
    eprintln!("wrote {} pictures to {}", written.len(), args.out.display());
    Ok(())
}

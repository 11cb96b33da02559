//! `pixpro finetune`: the whole backbone trained with a small FCN head on a
//! VOC-layout folder, scored on its val split (the same as `pixpro eval
//! --protocol finetune`, with the share of the train split as a flag).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixpro::transfer::evaluate::{Evaluator, Protocol};

use super::args::{BackboneShape, BackboneSource, Device, Quiet};
use super::eval::{recipes, summary};

#[derive(Args)]
pub(super) struct FinetuneArgs {
    #[command(flatten)]
    backbone: BackboneSource,
    #[command(flatten)]
    shape: BackboneShape,
    /// Folder in the Pascal VOC 2012 layout (JPEGImages, SegmentationClass, ImageSets/Segmentation).
    #[arg(long)]
    voc: PathBuf,
    /// Output folder: eval.json, finetune.json, confusion.png, prediction pictures.
    #[arg(long)]
    out: PathBuf,
    /// Share of the train split to train on, in (0, 1]: a subset fixed by the seed
    /// [default: the recipe's, 1].
    #[arg(long)]
    train_fraction: Option<f64>,
    /// TOML whose [finetune] table sets the recipe (steps, lr, crop_size, ...).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seeds the subset, the batches, the augmentation, the head (and random init) [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    device: Device,
    #[command(flatten)]
    quiet: Quiet,
}

pub(super) fn run(args: &FinetuneArgs) -> Result<()> {
    let recipes = recipes(args.config.as_ref(), args.seed)?;
    let protocol =
        format!("finetune{}", args.train_fraction.map(|f| format!(":{f}")).unwrap_or_default())
            .parse::<Protocol>()?;
    let weights = args.backbone.weights(&args.shape, recipes.finetune.seed);
    let evaluator = Evaluator { recipes, device: args.device.pick()?, progress: !args.quiet.quiet };
    let e =
        evaluator.evaluate(&weights, args.shape.output_stride(), protocol, &args.voc, &args.out)?;
    println!("{}", summary(&e));
    if !args.quiet.quiet {
        eprintln!("wrote eval.json, finetune.json and pictures in {}", args.out.display());
    }
    Ok(())
}

//! `pixpro finetune`: the whole backbone trained with a small FCN head on a
//! VOC-layout folder, scored on its val split (the same as `pixpro eval
//! --protocol finetune`, with the share of the train split as a flag).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixpro::transfer::evaluate::{Evaluator, Protocol};

use super::args::{BackboneShape, BackboneSource, Device, Quiet, RecipeArgs, VocFolder};
use super::eval::summary;

#[derive(Args)]
pub(super) struct FinetuneArgs {
    #[command(flatten)]
    backbone: BackboneSource,
    #[command(flatten)]
    shape: BackboneShape,
    #[command(flatten)]
    voc: VocFolder,
    /// Output folder: eval.json, finetune.json, confusion.png, prediction pictures.
    #[arg(long)]
    out: PathBuf,
    /// Share of the train split to train on, in (0, 1]: a subset fixed by the seed
    /// [default: the recipe's, 1].
    #[arg(long)]
    train_fraction: Option<f64>,
    #[command(flatten)]
    recipe: RecipeArgs,
    #[command(flatten)]
    device: Device,
    #[command(flatten)]
    quiet: Quiet,
}

pub(super) fn run(args: &FinetuneArgs) -> Result<()> {
    let recipes = args.recipe.recipes()?;
    let protocol =
        format!("finetune{}", args.train_fraction.map(|f| format!(":{f}")).unwrap_or_default())
            .parse::<Protocol>()?;
    let weights = args.backbone.weights(&args.shape, recipes.finetune.seed);
    let evaluator = Evaluator { recipes, device: args.device.pick()?, progress: !args.quiet.quiet };
    let e = evaluator.evaluate(
        &weights,
        args.shape.output_stride(),
        protocol,
        &args.voc.voc,
        &args.out,
    )?;
    println!("{}", summary(&e));
    if !args.quiet.quiet {
        eprintln!("wrote eval.json, finetune.json and pictures in {}", args.out.display());
    }
    Ok(())
}

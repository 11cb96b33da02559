//! `pixpro eval`: any backbone measured by one or more protocols, each
//! writing `eval.json` (the same top-level fields for every protocol) and
//! its own files into `OUT/PROTOCOL/`.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixpro::transfer::evaluate::{Evaluation, Evaluator, Protocol};

use super::args::{BackboneShape, BackboneSource, Device, Quiet, RecipeArgs, VocFolder};

#[derive(Args)]
pub(super) struct EvalArgs {
    #[command(flatten)]
    backbone: BackboneSource,
    #[command(flatten)]
    shape: BackboneShape,
    /// What to measure, one or more (comma-separated or repeated): probe, retrieval,
    /// correspondence, finetune, finetune:F (fine-tuning on a share F of the train split).
    #[arg(long, required = true, value_delimiter = ',', value_parser = parse_protocol)]
    protocol: Vec<Protocol>,
    #[command(flatten)]
    voc: VocFolder,
    /// Output folder: one subfolder per protocol.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    recipe: RecipeArgs,
    #[command(flatten)]
    device: Device,
    /// Print the eval.json of each protocol to stdout instead of a line each.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    quiet: Quiet,
}

fn parse_protocol(s: &str) -> std::result::Result<Protocol, String> {
    s.parse().map_err(|e: pixpro::Error| e.to_string())
}

/// One line for a user: the score, with what stands beside it.
pub(super) fn summary(e: &Evaluation) -> String {
    let mut line = format!("{}: {} {:.4}", e.protocol, e.score_name, e.score);
    if let Some(chance) = e.details.get("chance").and_then(|v| v.as_f64()) {
        let plain = e.details["accuracy_no_colour"].as_f64().unwrap_or(f64::NAN);
        line.push_str(&format!(" (without colour augmentation {plain:.4}; chance {chance:.4})"));
    }
    line.push_str(&format!(", {:.0} s", e.wall_s));
    line
}

pub(super) fn run(args: &EvalArgs) -> Result<()> {
    let recipes = args.recipe.recipes()?;
    let weights = args.backbone.weights(&args.shape, recipes.probe.seed);
    let evaluator = Evaluator { recipes, device: args.device.pick()?, progress: !args.quiet.quiet };
    for &protocol in &args.protocol {
        let out = args.out.join(protocol.folder());
        let e = evaluator.evaluate(
            &weights,
            args.shape.output_stride(),
            protocol,
            &args.voc.voc,
            &out,
        )?;
        if args.json {
            print!("{}", std::fs::read_to_string(out.join("eval.json"))?);
        } else {
            println!("{}", summary(&e));
        }
        if !args.quiet.quiet {
            eprintln!(
                "backbone: {} ({}, output stride {}); wrote {}",
                e.weights,
                e.arch,
                e.output_stride,
                out.display()
            );
        }
    }
    Ok(())
}

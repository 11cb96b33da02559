//! `pixpro export`: a backbone (a checkpoint's online encoder, or any
//! weights `--weights` reads) in torchvision's or
//! Detectron2's names and file format.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixpro::transfer::export::{write_detectron2, write_torchvision};

use super::args::{BackboneShape, BackboneSource};

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// safetensors with torchvision ResNet names (load_state_dict, strict, without fc).
    Torchvision,
    /// The pickle Detectron2 reads (res2..res5, stem, *.norm, shortcut).
    Detectron2,
}

#[derive(Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    backbone: BackboneSource,
    #[command(flatten)]
    shape: BackboneShape,
    #[arg(long, value_enum)]
    format: ExportFormat,
    #[arg(long)]
    out: PathBuf,
}

pub(super) fn run(args: &ExportArgs) -> Result<()> {
    let backbone = args.backbone.load(&args.shape, 0, tch::Device::Cpu)?;
    let named = backbone.named_tensors();
    match args.format {
        ExportFormat::Torchvision => write_torchvision(&args.out, &named)?,
        ExportFormat::Detectron2 => write_detectron2(&args.out, &named)?,
    }
    eprintln!("wrote {} ({} encoder, {} tensors)", args.out.display(), backbone.arch, named.len());
    Ok(())
}

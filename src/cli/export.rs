//! `pixpro export`: a backbone (a checkpoint's online encoder, or any
//! weights `--weights` reads) in the names and file format of torchvision,
//! timm, OpenMMLab or Detectron2, with what it expects as input.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixpro::transfer::export::{
    write_detectron2, write_mmdet, write_pth, write_torchvision, ExportInfo,
};

use super::args::{BackboneShape, BackboneSource};

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// safetensors with torchvision ResNet names (load_state_dict, strict, without fc).
    Torchvision,
    /// torch.save file of the torchvision state dict, for torch.load(weights_only=True); also
    /// `timm`: timm's ResNet has the same names. Metadata in OUT.json.
    #[value(alias = "timm")]
    Pth,
    /// torch.save file {"state_dict", "meta"} for an OpenMMLab ResNet's init_cfg Pretrained.
    Mmdet,
    /// The pickle Detectron2 reads (res2..res5, stem, *.norm, shortcut). Metadata in OUT.json.
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
    let info = ExportInfo::of(&backbone);
    let sidecar = match args.format {
        ExportFormat::Torchvision => write_torchvision(&args.out, &named, &info).map(|()| None)?,
        ExportFormat::Pth => Some(write_pth(&args.out, &named, &info)?),
        ExportFormat::Mmdet => write_mmdet(&args.out, &named, &info).map(|()| None)?,
        ExportFormat::Detectron2 => Some(write_detectron2(&args.out, &named, &info)?),
    };
    let also = sidecar.map(|p| format!(" and {}", p.display())).unwrap_or_default();
    eprintln!(
        "wrote {}{also} ({} encoder, output stride {}, {} tensors)",
        args.out.display(),
        backbone.arch,
        backbone.output_stride,
        named.len()
    );
    Ok(())
}

//! `pixpro probe`: the dense linear probe of a backbone (a checkpoint's,
//! a weight file's or a random one) on a Pascal VOC-layout folder.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixpro::transfer::probe::{probe_into, ProbeConfig, ProbeResult};

use super::args::{toml_or_default, BackboneShape, BackboneSource, Device, VocFolder};

#[derive(Args)]
pub(super) struct ProbeArgs {
    #[command(flatten)]
    backbone: BackboneSource,
    #[command(flatten)]
    shape: BackboneShape,
    #[command(flatten)]
    voc: VocFolder,
    /// Output folder for probe.json.
    #[arg(long)]
    out: PathBuf,
    /// TOML with the probe recipe (image_size, epochs, lr, batch_size, seed).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    device: Device,
    /// Print probe.json to stdout instead of the table.
    #[arg(long)]
    json: bool,
}

impl ProbeArgs {
    /// The default recipe or the TOML file's, then the flags.
    fn config(&self) -> Result<ProbeConfig> {
        let mut cfg: ProbeConfig = toml_or_default(self.config.as_deref())?;
        if let Some(s) = self.image_size {
            cfg.image_size = s;
        }
        if let Some(e) = self.epochs {
            cfg.epochs = e;
        }
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A probe's table: mIoU and pixel accuracy, then the IoU of each class.
pub(super) fn print_probe(label: &str, r: &ProbeResult) {
    println!(
        "{label}: mIoU {:.4}, pixel accuracy {:.4} ({} train / {} val images, {:.0} s)",
        r.miou, r.pixel_accuracy, r.train_images, r.val_images, r.seconds
    );
    for (class, iou) in &r.per_class_iou {
        match iou {
            Some(v) => println!("  {class:<14} {v:.4}"),
            None => println!("  {class:<14} -"),
        }
    }
}

pub(super) fn run(args: &ProbeArgs) -> Result<()> {
    let cfg = args.config()?;
    let device = args.device.pick()?;
    let backbone = args.backbone.load(&args.shape, cfg.seed, device)?;
    let r = probe_into(&backbone, &args.voc.voc, &args.out, &cfg)?;
    if args.json {
        print!("{}", std::fs::read_to_string(args.out.join("probe.json"))?);
        return Ok(());
    }
    print_probe(&backbone.source, &r);
    eprintln!("wrote probe.json, confusion.png and prediction pictures in {}", args.out.display());
    Ok(())
}

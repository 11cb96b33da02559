//! `pixpro embed`: a backbone's dense features of an image, or of each
//! image of a folder, as safetensors files.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use pixpro::data::dataset::{load_rgb, Dataset};
use pixpro::transfer::export::write_features;

use super::args::{BackboneShape, BackboneSource, Device};

#[derive(Args)]
pub(super) struct EmbedArgs {
    #[command(flatten)]
    backbone: BackboneSource,
    #[command(flatten)]
    shape: BackboneShape,
    /// An image, or a folder of images (searched recursively).
    #[arg(long)]
    image: PathBuf,
    /// A .safetensors file for one image; a folder for a folder of images.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: Device,
}

pub(super) fn run(args: &EmbedArgs) -> Result<()> {
    let backbone = args.backbone.load(&args.shape, 0, args.device.pick()?)?;
    let write = |img_path: &Path, out: &Path| -> Result<()> {
        let img = load_rgb(img_path)?;
        let f = backbone.image_features(&img).to_device(tch::Device::Cpu);
        let meta = BTreeMap::from([
            ("image".to_string(), img_path.display().to_string()),
            ("weights".to_string(), backbone.source.clone()),
            ("arch".to_string(), backbone.arch.to_string()),
            ("output_stride".to_string(), backbone.output_stride.to_string()),
        ]);
        write_features(out, &f, &meta)?;
        Ok(())
    };
    if !args.image.is_dir() {
        write(&args.image, &args.out)?;
        eprintln!("wrote {}", args.out.display());
        return Ok(());
    }
    let (ds, report) = Dataset::scan(&args.image)?;
    for (path, why) in &report.bad {
        eprintln!("skipped {}: {why}", path.display());
    }
    for i in 0..ds.len() {
        let path = ds.path(i);
        let rel = path.strip_prefix(&args.image).unwrap_or(&path);
        let out = args.out.join(rel).with_extension("safetensors");
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
        }
        write(&path, &out)?;
    }
    eprintln!("wrote {} feature files under {}", ds.len(), args.out.display());
    Ok(())
}

//! Renders the README's pictures: `docs/img/views.png` (two training views
//! of a photo, their crops and positive cell pairs at the default 224 px,
//! 7 x 7, T = 0.7) and `docs/img/features-random.png` (features of a
//! randomly initialised ResNet-18 PixPro: what "nothing learned" looks like,
//! to compare with a trained checkpoint's `pixpro inspect features`).
//!
//! `cargo run --release --example readme_pictures -- PHOTOS_DIR [OUT_DIR]`
//! (OUT_DIR defaults to docs/img). Uses the first image of PHOTOS_DIR in
//! sorted order for both pictures.
use std::path::PathBuf;

use anyhow::{bail, Context};
use image::imageops;
use pixpro::data::dataset::Dataset;
use pixpro::data::views::AugmentConfig;
use pixpro::method::{ModelConfig, PixPro};
use pixpro::model::resnet::Arch;
use pixpro::tools::inspect::{feature_grid, features_picture, views_picture};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Wider pictures are halved so the README's PNGs stay small.
const MAX_WIDTH: u32 = 1200;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(photos) = args.next().map(PathBuf::from) else {
        bail!("usage: readme_pictures PHOTOS_DIR [OUT_DIR]");
    };
    let out = args.next().map_or_else(|| PathBuf::from("docs/img"), PathBuf::from);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let (data, _) = Dataset::scan(&photos)?;
    let img = data.load(0)?;
    let shrink = |p: image::RgbImage| {
        if p.width() > MAX_WIDTH {
            imageops::resize(&p, p.width() / 2, p.height() / 2, imageops::FilterType::Triangle)
        } else {
            p
        }
    };

    let cfg = AugmentConfig::default();
    // Seed 6 gives two partly overlapping crops, view 2 flipped, with a
    // readable number of pairs (about 55) on the first MATE nature photo;
    // any seed makes a valid picture.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let views = views_picture(&img, &cfg, feature_grid(cfg.image_size, 32), 0.7, &mut rng)?;
    shrink(views).save(out.join("views.png"))?;

    tch::manual_seed(0);
    let model =
        PixPro::new(ModelConfig { arch: Arch::ResNet18, ..Default::default() }, tch::Device::Cpu)?;
    let features = features_picture(&model, &img, cfg.image_size)?;
    shrink(features).save(out.join("features-random.png"))?;
    println!("wrote views.png and features-random.png to {}", out.display());
    Ok(())
}

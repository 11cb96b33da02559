//! Pictures of what the model is asked and what it learned: two views with
//! their crop boxes and positive cell pairs (spec sections 1-2), and for a
//! model the PCA of its dense encoder features, PPM similarity maps and
//! nearest-neighbour correspondences between two views (spec section 3).
//!
//! - [`views`]: what the model is asked: the views picture.
//! - [`features`]: what it learned: the features and correspondence
//!   pictures.
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use crate::data::dataset::Dataset;
use crate::data::views::View;
use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
use crate::objective::matching::positive_mask;
use crate::plots::{blend, WHITE};
use crate::{Error, Result};

mod views;
mod features;

pub use features::{correspondence_picture, features_picture, inspect_features, Correspondence};
pub use views::{inspect_views, views_picture};

/// Space between panels and the height of the two text lines on top.
const GAP: u32 = 12;

const HEADER: u32 = 44;

/// The C5 grid a ResNet makes of a `image_size` square input: the stem conv,
/// the max pool and every stride-2 stage round up, and `output_stride` 32,
/// 16 or 8 means 5, 4 or 3 such halvings (224 / 32 -> 7 x 7, 96 / 16 -> 6 x 6).
pub fn feature_grid(image_size: u32, output_stride: u32) -> (i64, i64) {
    let halvings = output_stride.max(1).ilog2();
    let side = (0..halvings).fold(i64::from(image_size), |n, _| (n + 1) / 2);
    (side, side)
}

fn check_grid(grid: (i64, i64), threshold: f64) -> Result<()> {
    if grid.0 < 1 || grid.1 < 1 {
        return Err(Error::config("grid", format!("must be at least 1 x 1, got {grid:?}")));
    }
    check_threshold(threshold)
}

fn check_threshold(threshold: f64) -> Result<()> {
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(Error::config("threshold", format!("{threshold} must be finite and > 0")));
    }
    Ok(())
}

/// The view's pixels back in RGB8: the ImageNet normalisation undone.
fn view_image(v: &View, size: u32) -> RgbImage {
    let n = size as usize * size as usize;
    RgbImage::from_fn(size, size, |x, y| {
        let i = y as usize * size as usize + x as usize;
        Rgb(std::array::from_fn(|c| {
            let u = v.pixels[c * n + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c];
            (u * 255.0).round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// Centre of cell `cell` (index `y * w + x`) of an `h` x `w` grid over a
/// `size` square panel, in the panel's pixels.
fn cell_centre((h, w): (i64, i64), cell: usize, size: u32) -> (f32, f32) {
    let (y, x) = (cell as i64 / w, cell as i64 % w);
    let s = size as f32;
    ((x as f32 + 0.5) * s / w as f32, (y as f32 + 0.5) * s / h as f32)
}

/// The pixel rectangle of one cell of a `size` panel.
fn cell_rect((h, w): (i64, i64), cell: usize, size: u32) -> (i64, i64, i64, i64) {
    let (y, x) = (cell as i64 / w, cell as i64 % w);
    let s = i64::from(size);
    (x * s / w, y * s / h, (x + 1) * s / w, (y + 1) * s / h)
}

/// Faint lines between the cells of a `size` panel at (ox, oy), so that the
/// grid the model sees shows on the picture.
fn draw_grid(img: &mut RgbImage, (ox, oy): (u32, u32), (h, w): (i64, i64), size: u32) {
    let s = i64::from(size);
    for k in 1..w {
        let x = i64::from(ox) + k * s / w;
        for y in 0..s {
            blend(img, x, i64::from(oy) + y, WHITE, 0.35);
        }
    }
    for k in 1..h {
        let y = i64::from(oy) + k * s / h;
        for x in 0..s {
            blend(img, i64::from(ox) + x, y, WHITE, 0.35);
        }
    }
}

/// The positive-pair mask of one pair of views, row-major `[i * hw + j]`.
fn positives(v1: &View, v2: &View, (h, w): (i64, i64), threshold: f64) -> Result<Vec<f32>> {
    let c1 = Tensor::from_slice(&v1.coords).view([1, 4]);
    let c2 = Tensor::from_slice(&v2.coords).view([1, 4]);
    let mask = positive_mask(&c1, &c2, h, w, threshold); // [1, hw, hw]
    Ok(Vec::<f32>::try_from(mask.view([-1]))?)
}

/// `{prefix}-{index:03}-{file stem}.png` under `out`.
fn picture_path(out: &Path, prefix: &str, index: usize, source: &Path) -> PathBuf {
    let stem = source.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.join(format!("{prefix}-{index:03}-{stem}.png"))
}

/// The first `count` images of `data` (any input `--data` takes, in its
/// order), decoded, with their index (which seeds each one's random stream)
/// and name.
fn first_images(data: &Path, out: &Path, count: usize) -> Result<Vec<(usize, PathBuf, RgbImage)>> {
    let (dataset, report) = Dataset::open(data)?;
    for (path, reason) in &report.bad {
        tracing::warn!("{}: skipped: {reason}", path.display());
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    (0..count.min(dataset.len())).map(|i| Ok((i, dataset.path(i), dataset.load(i)?))).collect()
}

fn image_rng(seed: u64, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64))
}

#[cfg(test)]
mod testing {
    use super::*;
    use crate::data::views::AugmentConfig;
    use crate::method::ModelConfig;
    use crate::method::PixPro;
    use crate::model::resnet::Arch;
    use rand::Rng;
    use tch::Device;

    /// A smooth colour ramp, never white.
    pub(super) fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 200 / w) as u8, (y * 200 / h) as u8, 90]))
    }

    pub(super) fn small_cfg(size: u32) -> AugmentConfig {
        AugmentConfig { image_size: size, ..Default::default() }
    }

    pub(super) fn tiny_model() -> PixPro {
        tch::manual_seed(11);
        let cfg = ModelConfig {
            arch: Arch::ResNet18,
            output_stride: 16,
            proj_hidden: 32,
            proj_dim: 16,
            ..Default::default()
        };
        PixPro::new(cfg, Device::Cpu).unwrap()
    }

    pub(super) fn noise(w: u32, h: u32) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        RgbImage::from_fn(w, h, |_, _| Rgb([rng.random(), rng.random(), rng.random()]))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    #[test]
    fn feature_grid_rounds_up_at_every_stride() {
        assert_eq!(feature_grid(224, 32), (7, 7));
        assert_eq!(feature_grid(96, 16), (6, 6));
        assert_eq!(feature_grid(100, 32), (4, 4));
        assert_eq!(feature_grid(64, 8), (8, 8));
    }

    #[test]
    fn inspect_writes_one_png_per_image_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        noise(70, 50).save(data.join("a.png")).unwrap();
        ramp(50, 70).save(data.join("b.png")).unwrap();
        let out = dir.path().join("out");
        let views = inspect_views(&data, &out, 5, &small_cfg(64), (4, 4), 0.7, 1).unwrap();
        assert_eq!(views, vec![out.join("views-000-a.png"), out.join("views-001-b.png")]);
        let model = tiny_model();
        let written = inspect_features(&model, &data, &out, 1, &small_cfg(64), 1).unwrap();
        assert_eq!(written, vec![out.join("features-000-a.png"), out.join("matches-000-a.png")]);
        for path in views.iter().chain(&written) {
            let (w, h) = image::image_dimensions(path).unwrap();
            assert!(w > 64 && h == HEADER + 64, "{} is {w} x {h}", path.display());
        }
    }
}

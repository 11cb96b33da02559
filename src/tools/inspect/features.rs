//! The features and correspondence pictures: what a model learned. The
//! PCA of its dense encoder features, PPM similarity maps, and the
//! nearest-neighbour matches between two views (spec section 3).
use std::path::{Path, PathBuf};

use image::{imageops, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::data::views::{make_view, two_views, AugmentConfig, View, ViewParams};
use crate::method::PixPro;
use crate::model::heads::normalize_cells;
use crate::model::heads::ConvMlp;
use crate::plots::{disc, fill, mix, paste, rect, save_png, segment, text, BLACK, WHITE};
use crate::{Error, Result};

use super::{
    cell_centre, cell_rect, check_threshold, draw_grid, first_images, image_rng, picture_path,
    positives, view_image, GAP, HEADER,
};

const GOOD: Rgb<u8> = Rgb([40, 200, 60]);

const BAD: Rgb<u8> = Rgb([230, 40, 40]);

const NO_POSITIVE: Rgb<u8> = Rgb([150, 150, 150]);

const QUERY: Rgb<u8> = Rgb([0, 255, 255]);

/// The online encoder and projector of a model, in eval mode.
struct Probe<'a> {
    model: &'a PixPro,
    projector: &'a ConvMlp,
}

/// Dense features of one view, on the CPU as float32.
struct Dense {
    /// Encoder C5, `[C, h*w]`.
    encoder: Tensor,
    /// Projector output, unit-normalised per cell, `[D, h*w]`.
    projected: Tensor,
    grid: (i64, i64),
}

impl<'a> Probe<'a> {
    /// Pictures of the pixel projector's features need a method that has
    /// one: every method but byol.
    fn new(model: &'a PixPro) -> Result<Self> {
        let projector = model.projector().ok_or_else(|| {
            Error::config(
                "model.method",
                format!(
                    "{} has no pixel projector to show; inspect features needs a pixel-level method",
                    model.cfg.method
                ),
            )
        })?;
        Ok(Probe { model, projector })
    }

    fn dense(&self, v: &View, size: u32) -> Result<Dense> {
        let s = i64::from(size);
        let device = self.model.online.device();
        tch::no_grad(|| {
            let x = Tensor::from_slice(&v.pixels).view([1, 3, s, s]).to_device(device);
            let enc = x.apply_t(self.model.encoder(), false); // [1, C, h, w]
            let z = normalize_cells(&enc.apply_t(self.projector, false)); // [1, D, h, w]
            let (_, c, h, w) = enc.size4()?;
            let d = z.size()[1];
            let cpu = |t: Tensor, ch: i64| {
                t.to_device(Device::Cpu).to_kind(Kind::Float).view([ch, h * w])
            };
            Ok(Dense { encoder: cpu(enc, c), projected: cpu(z, d), grid: (h, w) })
        })
    }
}

/// The first three principal components of the cells' encoder features,
/// each scaled to `[0, 1]` over the cells: `[h*w][3]`. Fewer cells or
/// channels than three leave the missing components at 0.5.
fn pca_colours(encoder: &Tensor) -> Result<Vec<[f32; 3]>> {
    let x = encoder.transpose(0, 1).to_kind(Kind::Double); // [hw, C]
    let xc = &x - x.mean_dim(0, true, Kind::Double); // [hw, C]
    let (u, s, _) = xc.f_svd(true, true)?; // [hw, k], [k]
    let k = s.size()[0].min(3);
    let scores = u.narrow(1, 0, k) * s.narrow(0, 0, k); // [hw, k]
    let cells = x.size()[0] as usize;
    let mut colours = vec![[0.5f32; 3]; cells];
    for c in 0..k {
        let comp = Vec::<f64>::try_from(scores.select(1, c).contiguous())?;
        let (lo, hi) = comp
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
        for (colour, v) in colours.iter_mut().zip(&comp) {
            colour[c as usize] = if hi > lo { ((v - lo) / (hi - lo)) as f32 } else { 0.5 };
        }
    }
    Ok(colours)
}

/// The PPM's similarity of `query` to every cell: `max(cos, 0)^gamma` over
/// the unit-normalised projector features `[D, hw]`.
fn similarity(projected: &Tensor, query: usize, gamma: f64) -> Result<Vec<f32>> {
    let q = projected.select(1, query as i64).unsqueeze(0); // [1, D]
    let a = q.matmul(projected).clamp_min(0.0).pow_tensor_scalar(gamma); // [1, hw]
    Ok(Vec::<f32>::try_from(a.view([-1]))?)
}

/// An inferno-like ramp from black through purple and red to pale yellow.
fn heat(t: f32) -> Rgb<u8> {
    const STOPS: [[u8; 3]; 5] =
        [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
    let x = t.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    mix(Rgb(STOPS[i]), Rgb(STOPS[i + 1]), x - i as f32)
}

/// A `size` panel that paints each cell's pixels by `colour(cell)`.
fn cell_panel(grid: (i64, i64), size: u32, colour: impl Fn(usize) -> Rgb<u8>) -> RgbImage {
    let mut panel = RgbImage::new(size, size);
    for cell in 0..(grid.0 * grid.1) as usize {
        let (x0, y0, x1, y1) = cell_rect(grid, cell, size);
        fill(&mut panel, x0, y0, x1, y1, colour(cell));
    }
    panel
}

/// The view shown unaugmented: the largest centred square of `img` at
/// `size`, normalised as training does.
fn plain_view(img: &RgbImage, size: u32) -> View {
    let plain = ViewParams {
        scale: [1.0, 1.0],
        ratio: [1.0, 1.0],
        flip_p: 0.0,
        jitter_p: 0.0,
        grayscale_p: 0.0,
        blur_p: 0.0,
        solarize_p: 0.0,
        ..ViewParams::view1()
    };
    // A full-area square crop only fits a square image, so every other image
    // takes RandomResizedCrop's fallback, the centred square; nothing random
    // is left.
    make_view(img, &plain, size, &mut ChaCha8Rng::seed_from_u64(0))
}

/// Query cells for the similarity maps: a quarter in, the centre, three
/// quarters in, along the diagonal.
fn query_cells((h, w): (i64, i64)) -> [usize; 3] {
    [1, 2, 3].map(|k| ((k * h / 4).min(h - 1) * w + (k * w / 4).min(w - 1)) as usize)
}

/// For one image (centre square at `image_size`): the input, the first three
/// PCA components of the encoder's C5 features as RGB, and the PPM
/// similarity (`max(cos, 0)^gamma` of the projector output) of three query
/// cells as heat maps over the image, each query cell boxed in cyan.
pub fn features_picture(model: &PixPro, img: &RgbImage, image_size: u32) -> Result<RgbImage> {
    render_features(&Probe::new(model)?, img, image_size)
}

fn render_features(probe: &Probe, img: &RgbImage, image_size: u32) -> Result<RgbImage> {
    let model = probe.model;
    let view = plain_view(img, image_size);
    let dense = probe.dense(&view, image_size)?;
    let grid = dense.grid;
    let size = image_size;
    let shown = view_image(&view, size);
    let mut out = RgbImage::from_pixel(5 * size + 4 * GAP, HEADER + size, WHITE);
    let at = |k: u32| k * (size + GAP);
    paste(&mut out, &shown, at(0), HEADER);

    let pca = pca_colours(&dense.encoder)?;
    let to_u8 = |v: f32| (v * 255.0).round() as u8;
    let pca_panel = cell_panel(grid, size, |c| Rgb(pca[c].map(to_u8)));
    paste(&mut out, &pca_panel, at(1), HEADER);

    let grey = imageops::grayscale(&shown);
    let gamma = model.cfg.ppm_gamma;
    for (k, query) in query_cells(grid).into_iter().enumerate() {
        let sim = similarity(&dense.projected, query, gamma)?;
        let ramp = cell_panel(grid, size, |c| heat(sim[c]));
        let panel = RgbImage::from_fn(size, size, |x, y| {
            let g = grey.get_pixel(x, y)[0];
            mix(Rgb([g, g, g]), *ramp.get_pixel(x, y), 0.65)
        });
        let ox = at(2 + k as u32);
        paste(&mut out, &panel, ox, HEADER);
        let (x0, y0, x1, y1) = cell_rect(grid, query, size);
        let corner = |x: i64, y: i64| ((ox as i64 + x) as f32, (i64::from(HEADER) + y) as f32);
        rect(&mut out, corner(x0, y0), corner(x1 - 1, y1 - 1), QUERY, 2.0, None);
        text(&mut out, ox as f32, 24.0, 13.0, BLACK, &format!("PPM similarity, query {}", k + 1));
    }
    let title = format!(
        "{:?} C5 {} x {} x {}, projector {}, gamma {gamma}",
        model.encoder().arch(),
        dense.encoder.size()[0],
        grid.0,
        grid.1,
        dense.projected.size()[0]
    );
    text(&mut out, 6.0, 3.0, 15.0, BLACK, &title);
    text(&mut out, at(0) as f32, 24.0, 13.0, BLACK, "input (centre square)");
    text(&mut out, at(1) as f32, 24.0, 13.0, BLACK, "encoder PCA 1-3 as RGB");
    Ok(out)
}

/// A nearest-neighbour correspondence picture and its score.
#[derive(Debug)]
pub struct Correspondence {
    pub picture: RgbImage,
    /// View-1 cells whose nearest view-2 cell is a positive.
    pub correct: usize,
    /// View-1 cells with at least one positive in view 2 (the most that can
    /// be correct).
    pub with_positive: usize,
    /// All view-1 cells.
    pub cells: usize,
}

impl Correspondence {
    /// `correct / with_positive`, 0 when no cell has a positive.
    pub fn fraction_correct(&self) -> f64 {
        if self.with_positive == 0 {
            0.0
        } else {
            self.correct as f64 / self.with_positive as f64
        }
    }
}

fn correspondence_of_views(
    probe: &Probe,
    v1: &View,
    v2: &View,
    size: u32,
    threshold: f64,
) -> Result<Correspondence> {
    let d1 = probe.dense(v1, size)?;
    let d2 = probe.dense(v2, size)?;
    let grid = d1.grid;
    let cells = (grid.0 * grid.1) as usize;
    let cos = d1.projected.transpose(0, 1).matmul(&d2.projected); // [hw, hw]
    let nearest = Vec::<i64>::try_from(cos.argmax(1, false))?;
    let mask = positives(v1, v2, grid, threshold)?;

    let mut out = RgbImage::from_pixel(2 * size + GAP, HEADER + size, WHITE);
    paste(&mut out, &view_image(v1, size), 0, HEADER);
    paste(&mut out, &view_image(v2, size), size + GAP, HEADER);
    draw_grid(&mut out, (0, HEADER), grid, size);
    draw_grid(&mut out, (size + GAP, HEADER), grid, size);
    let centre = |k: u32, cell: usize| {
        let (x, y) = cell_centre(grid, cell, size);
        (x + (k * (size + GAP)) as f32, y + HEADER as f32)
    };
    let (mut correct, mut with_positive) = (0, 0);
    let mut lines = Vec::with_capacity(cells);
    for (i, &j) in nearest.iter().enumerate() {
        let j = j as usize;
        let row = &mask[i * cells..(i + 1) * cells];
        let colour = if row[j] > 0.0 {
            GOOD
        } else if row.iter().any(|&m| m > 0.0) {
            BAD
        } else {
            NO_POSITIVE
        };
        correct += usize::from(colour == GOOD);
        with_positive += usize::from(colour != NO_POSITIVE);
        lines.push((i, j, colour));
    }
    // A cell without any positive cannot be right: a grey dot, no line.
    // Red under green, so the correct matches stay visible.
    for layer in [NO_POSITIVE, BAD, GOOD] {
        for &(i, j, colour) in lines.iter().filter(|l| l.2 == layer) {
            if colour != NO_POSITIVE {
                segment(&mut out, centre(0, i), centre(1, j), colour, 1.5, None);
            }
            disc(&mut out, centre(0, i).0, centre(0, i).1, 2.0, colour);
        }
    }
    let mut result = Correspondence { picture: out, correct, with_positive, cells };
    // Short lines: the picture is only two views wide.
    let title = format!(
        "nearest neighbours: {correct} of {with_positive} positive ({:.0}%), T = {threshold}",
        100.0 * result.fraction_correct()
    );
    text(&mut result.picture, 6.0, 3.0, 14.0, BLACK, &title);
    let legend = "cosine of projector features; green: positive, red: not, grey: none exists";
    text(&mut result.picture, 6.0, 24.0, 11.0, BLACK, legend);
    Ok(result)
}

/// Two views of `img` drawn as training would (`cfg`); for each view-1 cell
/// a line to its most similar view-2 cell (cosine of the projector output),
/// green when that pair is a positive at `threshold`, red when it is not;
/// a cell with no positive at all gets only a grey dot.
pub fn correspondence_picture(
    model: &PixPro,
    img: &RgbImage,
    cfg: &AugmentConfig,
    threshold: f64,
    rng: &mut impl Rng,
) -> Result<Correspondence> {
    cfg.validate()?;
    check_threshold(threshold)?;
    let (v1, v2) = two_views(img, cfg, rng);
    correspondence_of_views(&Probe::new(model)?, &v1, &v2, cfg.image_size, threshold)
}

/// For each of the first `count` images of `images` (sorted order), writes
/// [`features_picture`] at `cfg.image_size` to `out/features-NNN-<name>.png`
/// and [`correspondence_picture`] (views from `cfg`, threshold from the
/// model's configuration, stream seeded with `seed + i`) to
/// `out/matches-NNN-<name>.png`; returns the paths written and logs each
/// image's fraction of correct nearest neighbours.
pub fn inspect_features(
    model: &PixPro,
    images: &Path,
    out: &Path,
    count: usize,
    cfg: &AugmentConfig,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    cfg.validate()?;
    let probe = Probe::new(model)?;
    let threshold = model.cfg.threshold;
    let mut written = Vec::new();
    for (i, path, img) in first_images(images, out, count)? {
        let features = render_features(&probe, &img, cfg.image_size)?;
        let target = picture_path(out, "features", i, &path);
        save_png(&features, &target)?;
        written.push(target);

        let (v1, v2) = two_views(&img, cfg, &mut image_rng(seed, i));
        let matches = correspondence_of_views(&probe, &v1, &v2, cfg.image_size, threshold)?;
        tracing::info!(
            "{}: {} of {} nearest neighbours are positives",
            path.display(),
            matches.correct,
            matches.with_positive
        );
        let target = picture_path(out, "matches", i, &path);
        save_png(&matches.picture, &target)?;
        written.push(target);
    }
    Ok(written)
}
#[cfg(test)]
mod tests {
    use super::super::feature_grid;
    use super::super::testing::*;
    use super::*;
    #[test]
    fn features_picture_has_five_panels_on_the_model_grid() {
        let model = tiny_model();
        let picture = features_picture(&model, &noise(80, 64), 64).unwrap();
        assert_eq!(picture.dimensions(), (5 * 64 + 4 * GAP, HEADER + 64));
        let dense = Probe::new(&model).unwrap().dense(&plain_view(&noise(64, 64), 64), 64).unwrap();
        assert_eq!(dense.grid, feature_grid(64, 16));
        let sim = similarity(&dense.projected, 5, 2.0).unwrap();
        assert!((sim[5] - 1.0).abs() < 1e-5, "a cell is fully similar to itself");
        assert!(sim.iter().all(|v| (0.0..=1.0 + 1e-5).contains(v)));
    }

    #[test]
    fn pca_separates_two_kinds_of_cells() {
        // Two groups of cells differing along one direction: the first
        // component splits them to the two ends of the colour range.
        let mut data = vec![0f32; 4 * 6];
        for cell in 0..6 {
            data[cell] = if cell < 3 { 5.0 } else { -5.0 }; // channel 0
            data[6 + cell] = 0.01 * cell as f32; // channel 1
        }
        let colours = pca_colours(&Tensor::from_slice(&data).view([4, 6])).unwrap();
        let first: Vec<f32> = colours.iter().map(|c| c[0]).collect();
        let (a, b) = (first[0], first[5]);
        assert!((a - b).abs() > 0.99, "{first:?}");
        assert!(first[..3].iter().all(|v| (v - a).abs() < 0.01), "{first:?}");
    }

    #[test]
    fn identical_views_match_every_cell_to_itself() {
        let model = tiny_model();
        let probe = Probe::new(&model).unwrap();
        let v = plain_view(&noise(64, 64), 64);
        let c = correspondence_of_views(&probe, &v, &v, 64, 0.7).unwrap();
        assert_eq!((c.correct, c.with_positive, c.cells), (16, 16, 16));
        assert_eq!(c.fraction_correct(), 1.0);
        assert_eq!(c.picture.dimensions(), (2 * 64 + GAP, HEADER + 64));
        // Cell 0's line starts green at its centre.
        let (x, y) = cell_centre((4, 4), 0, 64);
        assert_eq!(*c.picture.get_pixel(x as u32, HEADER + y as u32), GOOD);
    }
}

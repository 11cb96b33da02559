//! Pictures of what the model is asked and what it learned: two views with
//! their crop boxes and positive cell pairs (spec sections 1-2), and for a
//! model the PCA of its dense encoder features, PPM similarity maps and
//! nearest-neighbour correspondences between two views (spec section 3).
use std::path::{Path, PathBuf};

use image::{imageops, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::data::dataset::{load_rgb, Dataset};
use crate::data::views::{make_view, two_views, AugmentConfig, View, ViewParams};
use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
use crate::method::PixPro;
use crate::model::heads::normalize_cells;
use crate::model::heads::ConvMlp;
use crate::objective::matching::positive_mask;
use crate::plots::{blend, disc, fill, mix, paste, rect, save_png, segment, text, BLACK, WHITE};
use crate::{Error, Result};

const VIEW1: Rgb<u8> = Rgb([245, 130, 20]);
const VIEW2: Rgb<u8> = Rgb([30, 150, 245]);
const GOOD: Rgb<u8> = Rgb([40, 200, 60]);
const BAD: Rgb<u8> = Rgb([230, 40, 40]);
const NO_POSITIVE: Rgb<u8> = Rgb([150, 150, 150]);
const QUERY: Rgb<u8> = Rgb([0, 255, 255]);
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

/// A saturated colour per cell, so the lines from one cell can be followed;
/// never white, which marks positive cell centres.
fn cell_colour(cell: usize, cells: usize) -> Rgb<u8> {
    let hue = cell as f32 / cells.max(1) as f32 * 6.0;
    let f = hue.fract();
    let (hi, lo, up, down) = (235.0, 40.0, 40.0 + 195.0 * f, 235.0 - 195.0 * f);
    let [r, g, b] = match hue as u32 % 6 {
        0 => [hi, up, lo],
        1 => [down, hi, lo],
        2 => [lo, hi, up],
        3 => [lo, down, hi],
        4 => [up, lo, hi],
        _ => [hi, lo, down],
    };
    Rgb([r as u8, g as u8, b as u8])
}

/// The positive-pair mask of one pair of views, row-major `[i * hw + j]`.
fn positives(v1: &View, v2: &View, (h, w): (i64, i64), threshold: f64) -> Result<Vec<f32>> {
    let c1 = Tensor::from_slice(&v1.coords).view([1, 4]);
    let c2 = Tensor::from_slice(&v2.coords).view([1, 4]);
    let mask = positive_mask(&c1, &c2, h, w, threshold); // [1, hw, hw]
    Ok(Vec::<f32>::try_from(mask.view([-1]))?)
}

/// The crop of `v` drawn on the original shown at `scale` and offset
/// `origin`: a solid box, dashed when flipped, with an arrow along the
/// view's x axis (pointing left when flipped).
fn draw_crop(
    img: &mut RgbImage,
    v: &View,
    (src_w, src_h): (u32, u32),
    origin: (f32, f32),
    scale: f32,
    c: Rgb<u8>,
) {
    // Coordinates are inclusive pixel indices over `extent - 1`.
    let px = |u: f32, extent: u32| u * extent.saturating_sub(1) as f32;
    let [x0, y0, x1, y1] = v.coords;
    let flipped = x0 > x1;
    let left = origin.0 + px(x0.min(x1), src_w) * scale;
    let right = origin.0 + (px(x0.max(x1), src_w) + 1.0) * scale;
    let top = origin.1 + px(y0, src_h) * scale;
    let bottom = origin.1 + (px(y1, src_h) + 1.0) * scale;
    rect(img, (left, top), (right, bottom), c, 3.0, flipped.then_some(8.0));
    let (cy, half) = ((top + bottom) / 2.0, (right - left) * 0.25);
    let cx = (left + right) / 2.0;
    let dir = if flipped { -1.0 } else { 1.0 };
    let (tail, head) = ((cx - dir * half, cy), (cx + dir * half, cy));
    segment(img, tail, head, c, 3.0, None);
    let barb = (half * 0.4).min(10.0);
    segment(img, head, (head.0 - dir * barb, cy - barb), c, 3.0, None);
    segment(img, head, (head.0 - dir * barb, cy + barb), c, 3.0, None);
}

/// Where the panels of a views picture go.
struct ViewsLayout {
    size: u32,
    orig_w: u32,
}

impl ViewsLayout {
    fn new(img: &RgbImage, size: u32) -> Self {
        let (w, h) = img.dimensions();
        let orig_w = ((u64::from(w) * u64::from(size)) / u64::from(h.max(1))).max(1) as u32;
        ViewsLayout { size, orig_w }
    }

    /// Top-left corner of view 1 (k = 0) or view 2 (k = 1).
    fn view_origin(&self, k: u32) -> (u32, u32) {
        (self.orig_w + GAP + k * (self.size + GAP), HEADER)
    }

    fn dimensions(&self) -> (u32, u32) {
        (self.orig_w + 2 * (self.size + GAP), HEADER + self.size)
    }
}

/// The views picture for known views: original with both crops, the two
/// views with their cell grids, every positive pair joined by a line in the
/// colour of its view-1 cell, cells with a positive marked by a white dot
/// and cells without one darkened.
fn render_views(
    img: &RgbImage,
    v1: &View,
    v2: &View,
    size: u32,
    grid: (i64, i64),
    threshold: f64,
) -> Result<RgbImage> {
    let mask = positives(v1, v2, grid, threshold)?;
    let cells = (grid.0 * grid.1) as usize;
    let layout = ViewsLayout::new(img, size);
    let (w, h) = layout.dimensions();
    let mut out = RgbImage::from_pixel(w, h, WHITE);

    let original = imageops::resize(img, layout.orig_w, size, imageops::FilterType::Triangle);
    paste(&mut out, &original, 0, HEADER);
    let scale = size as f32 / img.height().max(1) as f32;
    let origin = (0.0, HEADER as f32);
    draw_crop(&mut out, v1, img.dimensions(), origin, scale, VIEW1);
    draw_crop(&mut out, v2, img.dimensions(), origin, scale, VIEW2);

    let has_positive = |k: u32, cell: usize| {
        (0..cells)
            .any(|o| if k == 0 { mask[cell * cells + o] } else { mask[o * cells + cell] } > 0.0)
    };
    for (k, v) in [(0u32, v1), (1, v2)] {
        let (ox, oy) = layout.view_origin(k);
        paste(&mut out, &view_image(v, size), ox, oy);
        draw_grid(&mut out, (ox, oy), grid, size);
        for cell in (0..cells).filter(|&c| !has_positive(k, c)) {
            let (x0, y0, x1, y1) = cell_rect(grid, cell, size);
            let (ox, oy) = (i64::from(ox), i64::from(oy));
            for y in oy + y0..oy + y1 {
                for x in ox + x0..ox + x1 {
                    blend(&mut out, x, y, BLACK, 0.55);
                }
            }
        }
        let colour = if k == 0 { VIEW1 } else { VIEW2 };
        rect(
            &mut out,
            (ox as f32, oy as f32),
            ((ox + size) as f32, (oy + size) as f32),
            colour,
            3.0,
            None,
        );
    }

    let centre = |k: u32, cell: usize| {
        let (ox, oy) = layout.view_origin(k);
        let (x, y) = cell_centre(grid, cell, size);
        (ox as f32 + x, oy as f32 + y)
    };
    let mut pairs = 0;
    for i in 0..cells {
        for j in (0..cells).filter(|&j| mask[i * cells + j] > 0.0) {
            segment(&mut out, centre(0, i), centre(1, j), cell_colour(i, cells), 1.0, None);
            pairs += 1;
        }
    }
    // Markers last, on top of the lines.
    for k in 0..2 {
        for cell in (0..cells).filter(|&c| has_positive(k, c)) {
            let (x, y) = centre(k, cell);
            disc(&mut out, x, y, 4.0, BLACK);
            disc(&mut out, x, y, 2.5, WHITE);
        }
    }

    let with_positive = (0..cells).filter(|&c| has_positive(0, c)).count();
    let flip = |v: &View| if v.coords[0] > v.coords[2] { ", flipped" } else { "" };
    let title = format!(
        "T = {threshold}, grid {} x {}: {pairs} positive pairs; {with_positive} of {cells} view-1 cells have one",
        grid.0, grid.1
    );
    text(&mut out, 6.0, 3.0, 15.0, BLACK, &title);
    text(&mut out, 6.0, 24.0, 13.0, BLACK, "original, crops of view 1 and view 2");
    let (x1, _) = layout.view_origin(0);
    let (x2, _) = layout.view_origin(1);
    text(&mut out, x1 as f32, 24.0, 13.0, VIEW1, &format!("view 1{}", flip(v1)));
    text(&mut out, x2 as f32, 24.0, 13.0, VIEW2, &format!("view 2{}", flip(v2)));
    Ok(out)
}

/// Draws two views of `img` as training would (`cfg`) and pictures them:
/// the original with both crop boxes (view 1 orange, view 2 blue; a flipped
/// crop dashed, its arrow pointing left), the two augmented views with the
/// `feature_grid` (h, w) cells the model sees, and a line between the
/// centres of every positive pair at `threshold` (spec section 2); the title
/// gives the threshold and the number of pairs. Cells without any positive
/// are darkened; cells with one carry a white dot.
pub fn views_picture(
    img: &RgbImage,
    cfg: &AugmentConfig,
    feature_grid: (i64, i64),
    threshold: f64,
    rng: &mut impl Rng,
) -> Result<RgbImage> {
    cfg.validate()?;
    check_grid(feature_grid, threshold)?;
    let (v1, v2) = two_views(img, cfg, rng);
    render_views(img, &v1, &v2, cfg.image_size, feature_grid, threshold)
}

/// `{prefix}-{index:03}-{file stem}.png` under `out`.
fn picture_path(out: &Path, prefix: &str, index: usize, source: &Path) -> PathBuf {
    let stem = source.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.join(format!("{prefix}-{index:03}-{stem}.png"))
}

/// The first `count` images of `data` (sorted order), each with its own
/// random stream seeded from `seed` and its index.
fn first_images(data: &Path, out: &Path, count: usize) -> Result<Vec<(usize, PathBuf)>> {
    let (dataset, report) = Dataset::scan(data)?;
    for (path, reason) in &report.bad {
        tracing::warn!("{}: skipped: {reason}", path.display());
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    Ok((0..count.min(dataset.len())).map(|i| (i, dataset.path(i).to_path_buf())).collect())
}

fn image_rng(seed: u64, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64))
}

/// Writes [`views_picture`] of each of the first `count` images of `data`
/// (sorted order) to `out/views-NNN-<name>.png` and returns the paths. Image
/// `i` draws its views from a stream seeded with `seed + i`, so a picture
/// does not depend on `count`.
pub fn inspect_views(
    data: &Path,
    out: &Path,
    count: usize,
    cfg: &AugmentConfig,
    grid: (i64, i64),
    threshold: f64,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    cfg.validate()?;
    check_grid(grid, threshold)?;
    let mut written = Vec::new();
    for (i, path) in first_images(data, out, count)? {
        let img = load_rgb(&path)?;
        let picture = views_picture(&img, cfg, grid, threshold, &mut image_rng(seed, i))?;
        let target = picture_path(out, "views", i, &path);
        save_png(&picture, &target)?;
        written.push(target);
    }
    Ok(written)
}

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
    for (i, path) in first_images(images, out, count)? {
        let img = load_rgb(&path)?;
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
    use super::*;
    use crate::method::ModelConfig;
    use crate::model::resnet::Arch;

    /// A smooth colour ramp, never white.
    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 200 / w) as u8, (y * 200 / h) as u8, 90]))
    }

    /// A view of uniform mid grey at `coords`.
    fn grey_view(size: u32, coords: [f32; 4]) -> View {
        let n = (size * size) as usize;
        let pixels =
            (0..3).flat_map(|c| vec![(0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]; n]).collect();
        View { pixels, coords }
    }

    fn small_cfg(size: u32) -> AugmentConfig {
        AugmentConfig { image_size: size, ..Default::default() }
    }

    #[test]
    fn feature_grid_rounds_up_at_every_stride() {
        assert_eq!(feature_grid(224, 32), (7, 7));
        assert_eq!(feature_grid(96, 16), (6, 6));
        assert_eq!(feature_grid(100, 32), (4, 4));
        assert_eq!(feature_grid(64, 8), (8, 8));
    }

    #[test]
    fn views_picture_has_the_layout_size() {
        let img = ramp(90, 60);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let picture = views_picture(&img, &small_cfg(64), (4, 4), 0.7, &mut rng).unwrap();
        // Original 96 x 64, then two 64 px views, 12 px apart, 44 px header.
        assert_eq!(picture.dimensions(), (96 + 2 * (64 + 12), 44 + 64));
        assert!(views_picture(&img, &small_cfg(64), (0, 4), 0.7, &mut rng).is_err());
    }

    #[test]
    fn markers_sit_exactly_on_the_cells_with_positives() {
        // Spec golden case: view 2 is the top-left quarter of view 1, so
        // only view 1's top-left 4 x 4 cells have positives (16 of 49).
        let img = ramp(70, 70);
        let size = 112;
        let grid = (7, 7);
        let v1 = grey_view(size, [0.0, 0.0, 1.0, 1.0]);
        let v2 = grey_view(size, [0.0, 0.0, 0.5, 0.5]);
        let picture = render_views(&img, &v1, &v2, size, grid, 0.7).unwrap();
        let mask = positives(&v1, &v2, grid, 0.7).unwrap();
        let layout = ViewsLayout::new(&img, size);
        let (ox, oy) = layout.view_origin(0);
        let mut marked = 0;
        for cell in 0..49 {
            let expected = (0..49).any(|j| mask[cell * 49 + j] > 0.0);
            let (x, y) = cell_centre(grid, cell, size);
            let p = *picture.get_pixel(ox + x as u32, oy + y as u32);
            assert_eq!(p == WHITE, expected, "view-1 cell {cell}: {p:?}");
            marked += usize::from(expected);
        }
        assert_eq!(marked, 16);
        // Every view-2 cell has a positive: all 49 marked.
        let (ox, oy) = layout.view_origin(1);
        for cell in 0..49 {
            let (x, y) = cell_centre(grid, cell, size);
            assert_eq!(*picture.get_pixel(ox + x as u32, oy + y as u32), WHITE, "view-2 {cell}");
        }
    }

    #[test]
    fn a_line_joins_each_positive_pair() {
        // 2 x 2 grids over the top-left quarter and the centre quarter: the
        // only positive pair is view-1 cell 3 (bottom right) with view-2
        // cell 0 (top left), both centred on (0.375, 0.375). The midpoint of
        // their line falls in the gap between the views.
        let img = ramp(64, 64);
        let (size, grid) = (64, (2, 2));
        let v1 = grey_view(size, [0.0, 0.0, 0.5, 0.5]);
        let v2 = grey_view(size, [0.25, 0.25, 0.75, 0.75]);
        let mask = positives(&v1, &v2, grid, 0.7).unwrap();
        assert_eq!(mask.iter().sum::<f32>(), 1.0);
        assert_eq!(mask[3 * 4], 1.0);
        let picture = render_views(&img, &v1, &v2, size, grid, 0.7).unwrap();
        let layout = ViewsLayout::new(&img, size);
        let end = |k: u32, cell: usize| {
            let (x, y) = cell_centre(grid, cell, size);
            let (ox, oy) = layout.view_origin(k);
            (ox as f32 + x, oy as f32 + y)
        };
        let (a, b) = (end(0, 3), end(1, 0));
        let mid = (((a.0 + b.0) / 2.0).round() as u32, ((a.1 + b.1) / 2.0).round() as u32);
        assert!(mid.0 > layout.view_origin(0).0 + size && mid.0 < layout.view_origin(1).0);
        assert_eq!(*picture.get_pixel(mid.0, mid.1), cell_colour(3, 4));
        assert_eq!(*picture.get_pixel(mid.0, HEADER + 4), WHITE, "the gap is empty elsewhere");
    }

    #[test]
    fn flipped_crop_is_dashed() {
        let img = RgbImage::from_pixel(101, 101, BLACK);
        let mut out = img.clone();
        let v = grey_view(8, [0.9, 0.1, 0.1, 0.9]);
        draw_crop(&mut out, &v, (101, 101), (0.0, 0.0), 1.0, VIEW1);
        let top: Vec<bool> = (12..88).map(|x| *out.get_pixel(x, 10) == VIEW1).collect();
        assert!(top.iter().any(|&d| d) && top.iter().any(|&d| !d), "top edge dashed");
        let mut solid = img.clone();
        draw_crop(
            &mut solid,
            &grey_view(8, [0.1, 0.1, 0.9, 0.9]),
            (101, 101),
            (0.0, 0.0),
            1.0,
            VIEW1,
        );
        assert!((12..88).all(|x| *solid.get_pixel(x, 10) == VIEW1), "unflipped edge solid");
    }

    fn tiny_model() -> PixPro {
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

    fn noise(w: u32, h: u32) -> RgbImage {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        RgbImage::from_fn(w, h, |_, _| Rgb([rng.random(), rng.random(), rng.random()]))
    }

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

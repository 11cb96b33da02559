//! Pictures from numbers: training curves, confusion matrices and
//! segmentation overlays as PNG files, plus the small raster toolkit (lines,
//! boxes, discs, text) that the [`crate::tools::inspect`] pictures share.
//! Beside the stages: it imports none of them, so that training, transfer
//! and the tools can all draw.
//!
//! Everything is drawn straight into an [`RgbImage`]. Text uses DejaVu Sans,
//! read at run time and rasterised by the pure-Rust `ab_glyph` (no
//! fontconfig or freetype); where that file is missing the pictures are still
//! drawn, only without their text.
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use image::{ImageError, Rgb, RgbImage};
use serde::Deserialize;

use crate::{Error, Result};

/// Debian's fonts-dejavu-core.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub(crate) const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub(crate) const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const FRAME: Rgb<u8> = Rgb([90, 90, 90]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
/// How an ignored label (255) is shown.
pub const IGNORE_GREY: Rgb<u8> = Rgb([128, 128, 128]);

/// The font, read once; `None` (and one warning) when it cannot be read.
fn font() -> Option<&'static FontVec> {
    static FONT: OnceLock<Option<FontVec>> = OnceLock::new();
    FONT.get_or_init(|| {
        let loaded = std::fs::read(FONT_PATH)
            .map_err(|e| e.to_string())
            .and_then(|bytes| FontVec::try_from_vec(bytes).map_err(|e| e.to_string()));
        match loaded {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("{FONT_PATH}: {e}; pictures are drawn without text");
                None
            }
        }
    })
    .as_ref()
}

/// Mixes `c` into the pixel at (x, y) with weight `alpha`; outside the image
/// it does nothing, so shapes may run over the edges.
pub(crate) fn blend(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>, alpha: f32) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) {
        return;
    }
    let p = img.get_pixel_mut(x as u32, y as u32);
    for k in 0..3 {
        p[k] = (f32::from(p[k]) * (1.0 - alpha) + f32::from(c[k]) * alpha).round() as u8;
    }
}

/// A filled disc of radius `r` (0 = one pixel) centred on (x, y).
pub(crate) fn disc(img: &mut RgbImage, x: f32, y: f32, r: f32, c: Rgb<u8>) {
    let (cx, cy) = (x.round() as i64, y.round() as i64);
    let ri = r.ceil() as i64;
    for dy in -ri..=ri {
        for dx in -ri..=ri {
            if ((dx * dx + dy * dy) as f32) <= r * r + 0.25 {
                blend(img, cx + dx, cy + dy, c, 1.0);
            }
        }
    }
}

/// A segment `width` pixels wide from a to b; with `dash = Some(d)` only
/// every other stretch of `d` pixels is drawn.
pub(crate) fn segment(
    img: &mut RgbImage,
    a: (f32, f32),
    b: (f32, f32),
    c: Rgb<u8>,
    width: f32,
    dash: Option<f32>,
) {
    let len = (b.0 - a.0).hypot(b.1 - a.1);
    // Two samples per pixel of length leave no gaps at any angle.
    let steps = (len * 2.0).ceil().max(1.0) as usize;
    let r = ((width - 1.0) / 2.0).max(0.0);
    for i in 0..=steps {
        let t = i as f32 / steps as f32;
        if dash.is_some_and(|d| (t * len / d) as u64 % 2 == 1) {
            continue;
        }
        disc(img, a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1), r, c);
    }
}

/// The outline of the box with corners (x0, y0) and (x1, y1).
pub(crate) fn rect(
    img: &mut RgbImage,
    (x0, y0): (f32, f32),
    (x1, y1): (f32, f32),
    c: Rgb<u8>,
    width: f32,
    dash: Option<f32>,
) {
    segment(img, (x0, y0), (x1, y0), c, width, dash);
    segment(img, (x1, y0), (x1, y1), c, width, dash);
    segment(img, (x1, y1), (x0, y1), c, width, dash);
    segment(img, (x0, y1), (x0, y0), c, width, dash);
}

/// Fills columns `x0..x1`, rows `y0..y1` (clipped to the image).
pub(crate) fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    for y in y0..y1 {
        for x in x0..x1 {
            blend(img, x, y, c, 1.0);
        }
    }
}

/// Copies `src` into `dst` with its top-left corner at (x, y).
pub(crate) fn paste(dst: &mut RgbImage, src: &RgbImage, x: u32, y: u32) {
    for (sx, sy, p) in src.enumerate_pixels() {
        blend(dst, i64::from(x + sx), i64::from(y + sy), *p, 1.0);
    }
}

/// Width in pixels of `s` at `size` px; 0 without a font.
pub(crate) fn text_width(size: f32, s: &str) -> f32 {
    let Some(font) = font() else { return 0.0 };
    let sf = font.as_scaled(PxScale::from(size));
    let mut width = 0.0;
    let mut prev = None;
    for ch in s.chars() {
        let id = sf.glyph_id(ch);
        if let Some(p) = prev {
            width += sf.kern(p, id);
        }
        width += sf.h_advance(id);
        prev = Some(id);
    }
    width
}

/// Draws `s` with the top of its line box at (x, y), `size` px high.
pub(crate) fn text(img: &mut RgbImage, x: f32, y: f32, size: f32, c: Rgb<u8>, s: &str) {
    let Some(font) = font() else { return };
    let scale = PxScale::from(size);
    let sf = font.as_scaled(scale);
    let mut caret = ab_glyph::point(x, y + sf.ascent());
    let mut prev = None;
    for ch in s.chars() {
        let id = sf.glyph_id(ch);
        if let Some(p) = prev {
            caret.x += sf.kern(p, id);
        }
        let glyph = id.with_scale_and_position(scale, caret);
        caret.x += sf.h_advance(id);
        prev = Some(id);
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let px = bounds.min.x as i64 + i64::from(gx);
                let py = bounds.min.y as i64 + i64::from(gy);
                blend(img, px, py, c, coverage.min(1.0));
            });
        }
    }
}

/// Writes `img` as PNG, the error naming the file.
pub(crate) fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png).map_err(|e| match e {
        ImageError::IoError(io) => Error::io(path, io),
        other => Error::data(path, format!("cannot write PNG: {other}")),
    })
}

/// Linear mix from `a` (t = 0) to `b` (t = 1).
pub(crate) fn mix(a: Rgb<u8>, b: Rgb<u8>, t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    Rgb(std::array::from_fn(|k| (f32::from(a[k]) * (1.0 - t) + f32::from(b[k]) * t).round() as u8))
}

/// One line of `metrics.jsonl`; other fields are ignored.
#[derive(Deserialize)]
struct MetricsLine {
    step: u64,
    loss: f64,
    #[serde(default)]
    loss_avg: Option<f64>,
    lr: f64,
    momentum: f64,
}

/// Reads every line; a line that is not a metrics object fails the whole
/// read, naming the file and the 1-based line number.
fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str::<MetricsLine>(line)
                .map_err(|e| Error::data(path, format!("line {}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>>>()?;
    if lines.is_empty() {
        return Err(Error::data(path, "holds no metrics lines"));
    }
    Ok(lines)
}

/// About `max` round-numbered ticks (steps of 1, 2 or 5 times a power of
/// ten) covering `[lo, hi]`, and the step.
fn ticks(lo: f64, hi: f64, max: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / max as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    ((first..=last).map(|k| k as f64 * step).collect(), step)
}

/// A tick label with as many decimals as the tick step needs.
fn tick_label(v: f64, step: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        return format!("{v:.1e}");
    }
    let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// A `[lo, hi]` with a margin that is never empty.
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.1 * lo.abs().max(1e-3) };
    (lo - pad, hi + pad)
}

struct Series {
    name: &'static str,
    colour: Rgb<u8>,
    width: f32,
    points: Vec<(f64, f64)>,
}

const LABEL_PX: f32 = 13.0;
const TITLE_PX: f32 = 16.0;

/// One line chart in the box at (x, y) of size w x h: title top left, legend
/// top right, y tick labels on the left, step ticks and "step" below.
fn chart(img: &mut RgbImage, (x, y, w, h): (f32, f32, f32, f32), title: &str, series: &[Series]) {
    let (px0, px1, py0, py1) = (x + 80.0, x + w - 20.0, y + 30.0, y + h - 44.0);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = padded_range(all().map(|p| p.0));
    // Steps are whole numbers: a single step still gets a range of 2.
    let (x_lo, x_hi) = if x_hi - x_lo < 2.0 {
        ((x_lo + x_hi) / 2.0 - 1.0, (x_lo + x_hi) / 2.0 + 1.0)
    } else {
        (x_lo, x_hi)
    };
    let (y_lo, y_hi) = padded_range(all().map(|p| p.1));
    let sx = |v: f64| px0 + ((v - x_lo) / (x_hi - x_lo)) as f32 * (px1 - px0);
    let sy = |v: f64| py1 - ((v - y_lo) / (y_hi - y_lo)) as f32 * (py1 - py0);

    let (yt, ystep) = ticks(y_lo, y_hi, 5);
    for v in yt {
        let ty = sy(v);
        segment(img, (px0, ty), (px1, ty), GRID, 1.0, None);
        let label = tick_label(v, ystep);
        let lw = text_width(LABEL_PX, &label);
        text(img, px0 - 6.0 - lw, ty - LABEL_PX * 0.6, LABEL_PX, BLACK, &label);
    }
    let (xt, xstep) = ticks(x_lo, x_hi, 8);
    for v in xt {
        let tx = sx(v);
        segment(img, (tx, py0), (tx, py1), GRID, 1.0, None);
        let label = tick_label(v, xstep.max(1.0));
        let lw = text_width(LABEL_PX, &label);
        text(img, tx - lw / 2.0, py1 + 4.0, LABEL_PX, BLACK, &label);
    }
    rect(img, (px0, py0), (px1, py1), FRAME, 1.0, None);
    text(
        img,
        (px0 + px1) / 2.0 - text_width(LABEL_PX, "step") / 2.0,
        py1 + 22.0,
        LABEL_PX,
        BLACK,
        "step",
    );
    text(img, px0, y + 6.0, TITLE_PX, BLACK, title);

    for s in series {
        for pair in s.points.windows(2) {
            let a = (sx(pair[0].0), sy(pair[0].1));
            let b = (sx(pair[1].0), sy(pair[1].1));
            segment(img, a, b, s.colour, s.width, None);
        }
        if let [only] = s.points.as_slice() {
            disc(img, sx(only.0), sy(only.1), 2.0, s.colour);
        }
    }

    // Legend, right-aligned above the chart.
    let mut lx = px1;
    for s in series.iter().rev() {
        lx -= text_width(LABEL_PX, s.name) + 30.0;
        segment(img, (lx, y + 15.0), (lx + 18.0, y + 15.0), s.colour, 3.0, None);
        text(img, lx + 22.0, y + 8.0, LABEL_PX, BLACK, s.name);
    }
}

/// Training curves from `metrics_jsonl` (lines with at least `step`, `loss`,
/// `lr`, `momentum`, optionally `loss_avg`; other fields are ignored) as
/// three stacked panels, loss, learning rate and momentum over steps, in a
/// 960 x 900 PNG at `out_png`. A line that does not parse is an error naming
/// the file and line number.
pub fn plot_training(metrics_jsonl: &Path, out_png: &Path) -> Result<()> {
    let rows = read_metrics(metrics_jsonl)?;
    let pts = |f: fn(&MetricsLine) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| f(r).map(|v| (r.step as f64, v))).collect()
    };
    let mut loss = vec![Series {
        name: "loss",
        colour: Rgb([150, 190, 230]),
        width: 1.0,
        points: pts(|r| Some(r.loss)),
    }];
    let avg = pts(|r| r.loss_avg);
    if !avg.is_empty() {
        loss.push(Series { name: "loss_avg", colour: Rgb([20, 70, 160]), width: 2.0, points: avg });
    }
    let lr = [Series {
        name: "lr",
        colour: Rgb([200, 90, 20]),
        width: 2.0,
        points: pts(|r| Some(r.lr)),
    }];
    let momentum = [Series {
        name: "momentum",
        colour: Rgb([30, 140, 60]),
        width: 2.0,
        points: pts(|r| Some(r.momentum)),
    }];

    let (w, h) = (960u32, 900u32);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let panel = h as f32 / 3.0;
    chart(&mut img, (0.0, 0.0, w as f32, panel), "loss", &loss);
    chart(&mut img, (0.0, panel, w as f32, panel), "learning rate", &lr);
    chart(&mut img, (0.0, 2.0 * panel, w as f32, panel), "momentum (target EMA tau)", &momentum);
    save_png(&img, out_png)
}

/// One bar of [`plot_bars`]: a mean and, with two or more samples, a
/// standard deviation drawn as an error bar.
pub struct Bar {
    pub label: String,
    pub mean: f64,
    pub std: Option<f64>,
}

/// A titled row of bars of [`plot_bars`].
pub struct BarPanel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// Bar charts with error bars (mean ± std), one panel per [`BarPanel`],
/// stacked in a PNG 960 px wide. Bars start at zero, so their heights
/// compare honestly; each is labelled below and carries its value above,
/// since small differences are hard to see at that scale.
pub fn plot_bars(panels: &[BarPanel], out_png: &Path) -> Result<()> {
    const PANEL_H: f32 = 320.0;
    let (w, h) = (960u32, (PANEL_H * panels.len().max(1) as f32) as u32);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let colour = Rgb([70, 130, 190]);
    for (i, panel) in panels.iter().enumerate() {
        let y = i as f32 * PANEL_H;
        let (px0, px1, py0, py1) = (80.0, w as f32 - 20.0, y + 50.0, y + PANEL_H - 50.0);
        let top = panel
            .bars
            .iter()
            .map(|b| b.mean + b.std.unwrap_or(0.0))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_hi = if top > 0.0 { top * 1.15 } else { 1.0 };
        let sy = |v: f64| py1 - (v / y_hi) as f32 * (py1 - py0);
        let (yt, ystep) = ticks(0.0, y_hi, 5);
        for v in yt {
            let ty = sy(v);
            segment(&mut img, (px0, ty), (px1, ty), GRID, 1.0, None);
            let label = tick_label(v, ystep);
            let lw = text_width(LABEL_PX, &label);
            text(&mut img, px0 - 6.0 - lw, ty - LABEL_PX * 0.6, LABEL_PX, BLACK, &label);
        }
        rect(&mut img, (px0, py0), (px1, py1), FRAME, 1.0, None);
        text(&mut img, px0, y + 10.0, TITLE_PX, BLACK, &panel.title);
        let slot = (px1 - px0) / panel.bars.len().max(1) as f32;
        for (k, bar) in panel.bars.iter().enumerate() {
            let cx = px0 + slot * (k as f32 + 0.5);
            let half = (slot * 0.3).min(50.0);
            let bar_top = sy(bar.mean.max(0.0));
            fill(
                &mut img,
                (cx - half) as i64,
                bar_top as i64,
                (cx + half) as i64,
                py1 as i64,
                colour,
            );
            let mut value = format!("{:.4}", bar.mean);
            let mut label_y = bar_top;
            if let Some(sd) = bar.std {
                let (lo, hi) = (sy((bar.mean - sd).max(0.0)), sy(bar.mean + sd));
                segment(&mut img, (cx, lo), (cx, hi), BLACK, 2.0, None);
                for end in [lo, hi] {
                    segment(&mut img, (cx - 8.0, end), (cx + 8.0, end), BLACK, 2.0, None);
                }
                value.push_str(&format!(" ± {sd:.4}"));
                label_y = hi;
            }
            let vw = text_width(11.0, &value);
            text(&mut img, cx - vw / 2.0, label_y - 16.0, 11.0, BLACK, &value);
            let lw = text_width(LABEL_PX, &bar.label);
            text(&mut img, cx - lw / 2.0, py1 + 6.0, LABEL_PX, BLACK, &bar.label);
        }
    }
    save_png(&img, out_png)
}

/// Where the confusion matrix's cells go.
struct ConfusionLayout {
    n: usize,
    cell: u32,
    left: u32,
    top: u32,
}

impl ConfusionLayout {
    fn new(class_names: &[String]) -> Self {
        let n = class_names.len();
        let cell = (560 / n.max(1) as u32).clamp(14, 60);
        let widest = class_names
            .iter()
            .enumerate()
            .map(|(i, name)| text_width(LABEL_PX, &format!("{i} {name}")))
            .fold(0.0, f32::max);
        ConfusionLayout { n, cell, left: widest.ceil() as u32 + 16, top: 64 }
    }

    /// Columns x0..x1, rows y0..y1 of the cell (true `row`, predicted `col`).
    fn cell_rect(&self, row: usize, col: usize) -> (u32, u32, u32, u32) {
        let x0 = self.left + col as u32 * self.cell;
        let y0 = self.top + row as u32 * self.cell;
        (x0, y0, x0 + self.cell, y0 + self.cell)
    }

    fn size(&self) -> (u32, u32) {
        let side = self.n as u32 * self.cell;
        ((self.left + side + 16).max(420), self.top + side + 16)
    }
}

/// White for 0, dark blue for 1.
fn heat_blue(t: f32) -> Rgb<u8> {
    mix(WHITE, Rgb([8, 48, 107]), t)
}

/// A confusion matrix (`matrix[true][predicted]` counts) as a row-normalised
/// heat map: each row shows where the pixels of one true class went, darker
/// for a larger share, with the percentage in cells large enough to hold
/// it. Rows are labelled `index name`, columns by index.
pub fn plot_confusion(matrix: &[Vec<u64>], class_names: &[String], out_png: &Path) -> Result<()> {
    let n = class_names.len();
    if n == 0 || matrix.len() != n || matrix.iter().any(|r| r.len() != n) {
        let shape: Vec<usize> = matrix.iter().map(Vec::len).collect();
        return Err(Error::data(
            out_png,
            format!("confusion matrix rows {shape:?} do not make a square of {n} class names"),
        ));
    }
    let layout = ConfusionLayout::new(class_names);
    let (w, h) = layout.size();
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    text(
        &mut img,
        8.0,
        6.0,
        TITLE_PX,
        BLACK,
        "confusion: % of each true class (rows) by predicted class (columns)",
    );
    for (row, counts) in matrix.iter().enumerate() {
        let total: u64 = counts.iter().sum();
        for (col, &c) in counts.iter().enumerate() {
            let share = if total > 0 { c as f32 / total as f32 } else { 0.0 };
            let (x0, y0, x1, y1) = layout.cell_rect(row, col);
            fill(&mut img, x0.into(), y0.into(), x1.into(), y1.into(), heat_blue(share));
            if layout.cell >= 34 {
                let label = format!("{:.0}", share * 100.0);
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let lw = text_width(11.0, &label);
                let (cx, cy) = ((x0 + x1) as f32 / 2.0, (y0 + y1) as f32 / 2.0);
                text(&mut img, cx - lw / 2.0, cy - 7.0, 11.0, ink, &label);
            }
        }
        let (_, y0, _, y1) = layout.cell_rect(row, 0);
        let label = format!("{row} {}", class_names[row]);
        let lw = text_width(LABEL_PX, &label);
        let ty = (y0 + y1) as f32 / 2.0 - LABEL_PX * 0.6;
        text(&mut img, layout.left as f32 - 8.0 - lw, ty, LABEL_PX, BLACK, &label);
    }
    for col in 0..n {
        let (x0, y0, x1, _) = layout.cell_rect(0, col);
        let label = col.to_string();
        let lw = text_width(LABEL_PX, &label);
        text(
            &mut img,
            (x0 + x1) as f32 / 2.0 - lw / 2.0,
            y0 as f32 - 20.0,
            LABEL_PX,
            BLACK,
            &label,
        );
    }
    let (x0, y0, _, _) = layout.cell_rect(0, 0);
    let (_, _, x1, y1) = layout.cell_rect(n - 1, n - 1);
    rect(&mut img, (x0 as f32, y0 as f32), (x1 as f32, y1 as f32), FRAME, 1.0, None);
    save_png(&img, out_png)
}

/// The PASCAL VOC colour map for `n` classes (class 0, background, black),
/// the colours segmentation pictures usually use.
pub fn voc_palette(n: usize) -> Vec<[u8; 3]> {
    (0..n)
        .map(|class| {
            // Spreads the bits of the class index over the high bits of the
            // three channels, as the VOC development kit's `labelcolormap`.
            let mut rgb = [0u8; 3];
            let mut c = class;
            for bit in (0..8).rev() {
                for (k, channel) in rgb.iter_mut().enumerate() {
                    *channel |= (((c >> k) & 1) as u8) << bit;
                }
                c >>= 3;
            }
            rgb
        })
        .collect()
}

/// `image | ground truth | prediction` side by side, 4 px of white between,
/// labels painted with `palette[class]` and `ignore` (VOC's 255) in grey.
/// `labels` and `pred` are row-major, one entry per pixel of `image`; a
/// class without a palette colour is an error.
pub fn overlay_prediction(
    image: &RgbImage,
    labels: &[u8],
    pred: &[u8],
    palette: &[[u8; 3]],
    ignore: u8,
) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    let pixels = w as usize * h as usize;
    if labels.len() != pixels || pred.len() != pixels {
        return Err(Error::data(
            "overlay_prediction",
            format!(
                "image is {w} x {h} = {pixels} pixels but there are {} labels and {} predictions",
                labels.len(),
                pred.len()
            ),
        ));
    }
    let colour = |v: u8| -> Result<Rgb<u8>> {
        if v == ignore {
            return Ok(IGNORE_GREY);
        }
        palette.get(usize::from(v)).map(|c| Rgb(*c)).ok_or_else(|| {
            Error::data(
                "overlay_prediction",
                format!("class {v} has no colour in a palette of {}", palette.len()),
            )
        })
    };
    const GAP: u32 = 4;
    let mut out = RgbImage::from_pixel(3 * w + 2 * GAP, h, WHITE);
    paste(&mut out, image, 0, 0);
    for (i, (&l, &p)) in labels.iter().zip(pred).enumerate() {
        let (x, y) = (i as u32 % w, i as u32 / w);
        out.put_pixel(w + GAP + x, y, colour(l)?);
        out.put_pixel(2 * (w + GAP) + x, y, colour(p)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luma(p: &Rgb<u8>) -> f32 {
        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
    }

    fn metrics_file(dir: &Path, lines: &[String]) -> std::path::PathBuf {
        let path = dir.join("metrics.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    #[test]
    fn plot_training_writes_the_stated_size() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..5)
            .map(|i| {
                format!(
                    r#"{{"step": {}, "loss": {}, "loss_avg": {}, "lr": {}, "momentum": {}, "target_std": 0.06}}"#,
                    i * 10,
                    -1.0 - 0.3 * f64::from(i),
                    -1.0 - 0.2 * f64::from(i),
                    0.001 * f64::from(i + 1),
                    0.99 + 0.002 * f64::from(i)
                )
            })
            .collect();
        let out = dir.path().join("training.png");
        plot_training(&metrics_file(dir.path(), &lines), &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (960, 900));
        // The loss_avg curve (dark blue) is drawn somewhere in the top panel.
        let drawn = img
            .enumerate_pixels()
            .filter(|(_, y, p)| *y < 300 && **p == Rgb([20, 70, 160]))
            .count();
        assert!(drawn > 50, "{drawn} loss_avg pixels");
    }

    #[test]
    fn plot_training_names_a_malformed_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines: Vec<String> = (0..5)
            .map(|i| format!(r#"{{"step": {i}, "loss": -1.0, "lr": 0.1, "momentum": 0.99}}"#))
            .collect();
        lines[3] = r#"{"step": 3, "loss": -1.0, "lr": 0.1}"#.into();
        let path = metrics_file(dir.path(), &lines);
        let err = plot_training(&path, &dir.path().join("t.png")).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl") && err.contains("line 4"), "{err}");
        assert!(err.contains("momentum"), "{err}");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, step) = ticks(0.0, 1000.0, 5);
        assert_eq!(step, 200.0);
        assert_eq!(t, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(0.0001, 0.00002), "1.0e-4");
    }

    #[test]
    fn confusion_cells_darken_with_larger_values() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("confusion.png");
        let names: Vec<String> = ["background", "penguin", "flower"].map(String::from).into();
        let matrix = vec![vec![1, 3, 6], vec![0, 10, 0], vec![5, 0, 0]];
        plot_confusion(&matrix, &names, &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        let layout = ConfusionLayout::new(&names);
        assert_eq!(img.dimensions(), layout.size());
        // Corners, not centres: the centres carry the percentage.
        let at = |r: usize, c: usize| {
            let (x0, y0, _, _) = layout.cell_rect(r, c);
            luma(img.get_pixel(x0 + 3, y0 + 3))
        };
        assert!(
            at(0, 0) > at(0, 1) && at(0, 1) > at(0, 2),
            "{} {} {}",
            at(0, 0),
            at(0, 1),
            at(0, 2)
        );
        assert!(at(1, 0) > at(1, 1) && at(2, 1) > at(2, 0));
        assert_eq!(at(1, 0), 255.0, "an empty cell is white");
        assert!(plot_confusion(&matrix[..2], &names, &out).is_err());
    }

    #[test]
    fn overlay_puts_three_panels_side_by_side_with_ignore_grey() {
        let image = RgbImage::from_pixel(4, 2, Rgb([10, 200, 10]));
        let labels = [0, 1, 1, 255, 0, 0, 2, 2];
        let pred = [0, 1, 2, 2, 0, 0, 2, 1];
        let palette = voc_palette(3);
        assert_eq!(palette, vec![[0, 0, 0], [128, 0, 0], [0, 128, 0]]);
        let out = overlay_prediction(&image, &labels, &pred, &palette, 255).unwrap();
        assert_eq!(out.dimensions(), (3 * 4 + 8, 2));
        assert_eq!(*out.get_pixel(0, 0), Rgb([10, 200, 10]));
        assert_eq!(*out.get_pixel(4 + 4 + 1, 0), Rgb([128, 0, 0]), "truth, class 1");
        assert_eq!(*out.get_pixel(4 + 4 + 3, 0), IGNORE_GREY);
        assert_eq!(*out.get_pixel(2 * 8 + 2, 0), Rgb([0, 128, 0]), "prediction, class 2");
        assert!(overlay_prediction(&image, &labels[..7], &pred, &palette, 255).is_err());
        let err = overlay_prediction(&image, &labels, &pred, &palette[..2], 255).unwrap_err();
        assert!(err.to_string().contains("class 2"), "{err}");
    }

    #[test]
    fn dashed_segments_leave_gaps() {
        let mut img = RgbImage::from_pixel(40, 3, WHITE);
        segment(&mut img, (0.0, 1.0), (39.0, 1.0), BLACK, 1.0, Some(5.0));
        let dark = (0..40).filter(|&x| *img.get_pixel(x, 1) == BLACK).count();
        assert!((15..=25).contains(&dark), "{dark} of 40 drawn");
    }
}

//! Charts: the training curves of a run's metrics, bar charts of
//! experiment results and curves with seed bands of several runs.
use std::path::Path;

use image::{Rgb, RgbImage};
use serde::Deserialize;

use crate::{Error, Result};

use super::canvas::{
    blend, disc, fill, rect, save_png, segment, text, text_width, BLACK, FRAME, GRID, LABEL_PX,
    TITLE_PX, WHITE,
};

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
    name: String,
    colour: Rgb<u8>,
    width: f32,
    points: Vec<(f64, f64)>,
    /// (x, lo, hi), shaded translucently under the line.
    band: Vec<(f64, f64, f64)>,
    /// Whether the points are measurements, marked with dots when few.
    measured: bool,
}

/// The x axis of a line chart: what it counts, and whether it is drawn on
/// a log scale (for quantities that grow by factors, such as compute).
#[derive(Debug, Clone, Copy)]
pub struct XAxis<'a> {
    pub label: &'a str,
    pub log: bool,
}

impl XAxis<'static> {
    pub const STEPS: XAxis<'static> = XAxis { label: "step", log: false };
}

/// A count as a short tick label: 8000 as 8k, 2500000 as 2.5M.
fn compact(v: f64) -> String {
    let (scaled, unit) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{scaled:.2}");
    format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Ticks at 1, 2 and 5 times the powers of ten within `[lo, hi]`, both in
/// log10 units, with their labels; the two ends where fewer than two fall
/// inside.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    for k in lo.floor() as i32..=hi.ceil() as i32 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(k);
            let at = v.log10();
            if at >= lo && at <= hi {
                out.push((at, compact(v)));
            }
        }
    }
    if out.len() < 2 {
        out = [lo, hi].iter().map(|&at| (at, compact(10f64.powf(at)))).collect();
    }
    out
}

/// One line chart in the box at (x, y) of size w x h: title top left, legend
/// top right, y tick labels on the left, x ticks and the axis label below.
fn chart(
    img: &mut RgbImage,
    (x, y, w, h): (f32, f32, f32, f32),
    title: &str,
    axis: XAxis,
    series: &[Series],
) {
    let (px0, px1, py0, py1) = (x + 80.0, x + w - 20.0, y + 30.0, y + h - 44.0);
    let at = |v: f64| if axis.log { v.max(f64::MIN_POSITIVE).log10() } else { v };
    let all = || {
        series.iter().flat_map(|s| {
            let band = s.band.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]);
            s.points.iter().copied().chain(band)
        })
    };
    let (x_lo, x_hi) = padded_range(all().map(|p| at(p.0)));
    // Steps are whole numbers: a single step still gets a range of 2 (a
    // factor of 4 on a log axis).
    let min_range = if axis.log { 0.6 } else { 2.0 };
    let (x_lo, x_hi) = if x_hi - x_lo < min_range {
        ((x_lo + x_hi - min_range) / 2.0, (x_lo + x_hi + min_range) / 2.0)
    } else {
        (x_lo, x_hi)
    };
    let (y_lo, y_hi) = padded_range(all().map(|p| p.1));
    let sx = |v: f64| px0 + ((at(v) - x_lo) / (x_hi - x_lo)) as f32 * (px1 - px0);
    let sx_at = |a: f64| px0 + ((a - x_lo) / (x_hi - x_lo)) as f32 * (px1 - px0);
    let sy = |v: f64| py1 - ((v - y_lo) / (y_hi - y_lo)) as f32 * (py1 - py0);

    let (yt, ystep) = ticks(y_lo, y_hi, 5);
    for v in yt {
        let ty = sy(v);
        segment(img, (px0, ty), (px1, ty), GRID, 1.0, None);
        let label = tick_label(v, ystep);
        let lw = text_width(LABEL_PX, &label);
        text(img, px0 - 6.0 - lw, ty - LABEL_PX * 0.6, LABEL_PX, BLACK, &label);
    }
    let x_ticks = if axis.log {
        log_ticks(x_lo, x_hi)
    } else {
        let (xt, xstep) = ticks(x_lo, x_hi, 8);
        xt.into_iter().map(|v| (v, tick_label(v, xstep.max(1.0)))).collect()
    };
    for (v, label) in x_ticks {
        let tx = sx_at(v);
        segment(img, (tx, py0), (tx, py1), GRID, 1.0, None);
        let lw = text_width(LABEL_PX, &label);
        text(img, tx - lw / 2.0, py1 + 4.0, LABEL_PX, BLACK, &label);
    }
    rect(img, (px0, py0), (px1, py1), FRAME, 1.0, None);
    text(
        img,
        (px0 + px1) / 2.0 - text_width(LABEL_PX, axis.label) / 2.0,
        py1 + 22.0,
        LABEL_PX,
        BLACK,
        axis.label,
    );
    text(img, px0, y + 6.0, TITLE_PX, BLACK, title);

    for s in series {
        // Translucent, so that overlapping bands both show; each pixel
        // column once (a column shared by two pairs goes to the later one).
        let column = |img: &mut RgbImage, c: f32, lo: f64, hi: f64| {
            for row in sy(hi).ceil() as i64..=sy(lo).floor() as i64 {
                blend(img, c as i64, row, s.colour, 0.25);
            }
        };
        for pair in s.band.windows(2) {
            let ((xa, loa, hia), (xb, lob, hib)) = (pair[0], pair[1]);
            let (ca, cb) = (sx(xa), sx(xb));
            let mut c = ca.ceil();
            while c < cb {
                let t = f64::from((c - ca) / (cb - ca));
                column(img, c, loa + t * (lob - loa), hia + t * (hib - hia));
                c += 1.0;
            }
        }
        if let Some(&(x, lo, hi)) = s.band.last() {
            column(img, sx(x).ceil(), lo, hi);
        }
    }
    for s in series {
        for pair in s.points.windows(2) {
            let a = (sx(pair[0].0), sy(pair[0].1));
            let b = (sx(pair[1].0), sy(pair[1].1));
            segment(img, a, b, s.colour, s.width, None);
        }
        // Few points are measurements worth marking (a lone one would
        // not show at all); many are a curve.
        if s.measured && s.points.len() <= 16 {
            for p in &s.points {
                disc(img, sx(p.0), sy(p.1), 3.0, s.colour);
            }
        }
    }

    // Legend, right-aligned above the chart.
    let mut lx = px1;
    for s in series.iter().rev() {
        lx -= text_width(LABEL_PX, &s.name) + 30.0;
        segment(img, (lx, y + 15.0), (lx + 18.0, y + 15.0), s.colour, 3.0, None);
        text(img, lx + 22.0, y + 8.0, LABEL_PX, BLACK, &s.name);
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
    let line = |name: &str, colour: [u8; 3], width: f32, points: Vec<(f64, f64)>| Series {
        name: name.to_string(),
        colour: Rgb(colour),
        width,
        points,
        band: Vec::new(),
        measured: true,
    };
    let mut loss = vec![line("loss", [150, 190, 230], 1.0, pts(|r| Some(r.loss)))];
    let avg = pts(|r| r.loss_avg);
    if !avg.is_empty() {
        loss.push(line("loss_avg", [20, 70, 160], 2.0, avg));
    }
    let lr = [line("lr", [200, 90, 20], 2.0, pts(|r| Some(r.lr)))];
    let momentum = [line("momentum", [30, 140, 60], 2.0, pts(|r| Some(r.momentum)))];

    let (w, h) = (960u32, 900u32);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let panel = h as f32 / 3.0;
    let steps = XAxis::STEPS;
    chart(&mut img, (0.0, 0.0, w as f32, panel), "loss", steps, &loss);
    chart(&mut img, (0.0, panel, w as f32, panel), "learning rate", steps, &lr);
    let title = "momentum (target EMA tau)";
    chart(&mut img, (0.0, 2.0 * panel, w as f32, panel), title, steps, &momentum);
    save_png(&img, out_png)
}

/// One curve of [`plot_bands`]: per x, the mean and the band (lo, hi)
/// drawn around it.
pub struct Band {
    pub label: String,
    /// (x, mean, lo, hi), in x order.
    pub points: Vec<(f64, f64, f64, f64)>,
    /// False for a level drawn across the chart (random init, say): its
    /// ends are not measurements and get no dots.
    pub measured: bool,
}

const BAND_COLOURS: [[u8; 3]; 5] =
    [[20, 70, 160], [200, 90, 20], [30, 140, 60], [150, 40, 150], [90, 90, 90]];

fn band_series(bands: &[Band]) -> Vec<Series> {
    bands
        .iter()
        .enumerate()
        .map(|(i, b)| Series {
            name: b.label.clone(),
            colour: Rgb(BAND_COLOURS[i % BAND_COLOURS.len()]),
            width: 2.0,
            points: b.points.iter().map(|&(x, m, _, _)| (x, m)).collect(),
            band: b.points.iter().map(|&(x, _, lo, hi)| (x, lo, hi)).collect(),
            measured: b.measured,
        })
        .collect()
}

/// Curves over steps with shaded bands (the spread over seeds, say), one
/// colour per [`Band`], in a 960 x 420 PNG; `title` above.
pub fn plot_bands(title: &str, bands: &[Band], out_png: &Path) -> Result<()> {
    let (w, h) = (960u32, 420u32);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    chart(&mut img, (0.0, 0.0, w as f32, h as f32), title, XAxis::STEPS, &band_series(bands));
    save_png(&img, out_png)
}

/// A titled chart of [`plot_band_panels`].
pub struct BandPanel {
    pub title: String,
    pub bands: Vec<Band>,
}

/// Charts of curves with shaded bands stacked in a PNG 960 px wide, 360 px
/// a panel, all on one x axis; a [`Band`] keeps its colour from panel to
/// panel by its place in the list.
pub fn plot_band_panels(panels: &[BandPanel], axis: XAxis, out_png: &Path) -> Result<()> {
    const PANEL_H: f32 = 360.0;
    let (w, h) = (960u32, (PANEL_H * panels.len().max(1) as f32) as u32);
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    for (i, panel) in panels.iter().enumerate() {
        let frame = (0.0, i as f32 * PANEL_H, w as f32, PANEL_H);
        chart(&mut img, frame, &panel.title, axis, &band_series(&panel.bands));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn log_ticks_fall_on_one_two_five_and_read_short() {
        let t = log_ticks(3000f64.log10(), 600_000f64.log10());
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["5k", "10k", "20k", "50k", "100k", "200k", "500k"]);
        assert!((t[0].0 - 5000f64.log10()).abs() < 1e-12);
        assert_eq!(compact(2_500_000.0), "2.5M");
        assert_eq!(compact(512.0), "512");
        // Too narrow for two such ticks: the ends are labelled.
        assert_eq!(log_ticks(3.1, 3.2).len(), 2);
    }

    #[test]
    fn band_panels_draw_each_panel_in_its_own_box() {
        let dir = tempfile::tempdir().unwrap();
        let band = |label: &str, y: f64| Band {
            label: label.into(),
            points: [8000.0, 32000.0, 128000.0]
                .iter()
                .map(|&x| (x, y, y - 0.01, y + 0.01))
                .collect(),
            measured: true,
        };
        let panels = [
            BandPanel { title: "probe".into(), bands: vec![band("pixpro", 0.2)] },
            BandPanel {
                title: "retrieval".into(),
                bands: vec![band("pixpro", 0.1), band("byol", 0.3)],
            },
        ];
        let out = dir.path().join("c.png");
        plot_band_panels(&panels, XAxis { label: "images seen", log: true }, &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (960, 720));
        let in_panel = |lo: u32, hi: u32, c: [u8; 3]| {
            img.enumerate_pixels().filter(|(_, y, p)| (lo..hi).contains(y) && **p == Rgb(c)).count()
        };
        // pixpro's colour in both panels, byol's only in the second.
        assert!(in_panel(0, 360, BAND_COLOURS[0]) > 50);
        assert!(in_panel(360, 720, BAND_COLOURS[0]) > 50);
        assert_eq!(in_panel(0, 360, BAND_COLOURS[1]), 0);
        assert!(in_panel(360, 720, BAND_COLOURS[1]) > 50);
    }

    #[test]
    fn a_level_drawn_across_gets_no_dots() {
        let dir = tempfile::tempdir().unwrap();
        let coloured = |measured: bool| {
            let points = vec![(8000.0, 0.2, 0.19, 0.21), (128000.0, 0.2, 0.19, 0.21)];
            let bands = vec![Band { label: "random init".into(), points, measured }];
            let out = dir.path().join(format!("{measured}.png"));
            plot_band_panels(&[BandPanel { title: "probe".into(), bands }], XAxis::STEPS, &out)
                .unwrap();
            let img = image::open(&out).unwrap().to_rgb8();
            img.pixels().filter(|p| **p == Rgb(BAND_COLOURS[0])).count()
        };
        // The same line either way; the measured one adds two discs.
        let (level, measured) = (coloured(false), coloured(true));
        assert!(level > 50, "the line is drawn: {level} px");
        assert!(measured > level + 10, "dots add pixels: {measured} vs {level}");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, step) = ticks(0.0, 1000.0, 5);
        assert_eq!(step, 200.0);
        assert_eq!(t, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(0.0001, 0.00002), "1.0e-4");
    }
}

//! Pictures of a segmentation: the probe's confusion matrix, the VOC
//! palette, and image | ground truth | prediction overlays.
use std::path::Path;

use image::{Rgb, RgbImage};

use crate::{Error, Result};

use super::canvas::{
    fill, mix, paste, rect, save_png, text, text_width, BLACK, FRAME, LABEL_PX, TITLE_PX, WHITE,
};

/// How an ignored label (255) is shown.
pub const IGNORE_GREY: Rgb<u8> = Rgb([128, 128, 128]);

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
}

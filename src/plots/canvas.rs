//! The raster toolkit every picture is drawn with: blended pixels, discs,
//! (dashed) segments and boxes, text, and PNG output.
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use image::{ImageError, Rgb, RgbImage};

use crate::files::write_atomically;
use crate::{Error, Result};

/// Debian's fonts-dejavu-core.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub(crate) const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

pub(crate) const BLACK: Rgb<u8> = Rgb([0, 0, 0]);

pub(super) const FRAME: Rgb<u8> = Rgb([90, 90, 90]);

pub(super) const GRID: Rgb<u8> = Rgb([225, 225, 225]);

pub(super) const LABEL_PX: f32 = 13.0;

pub(super) const TITLE_PX: f32 = 16.0;

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

/// Writes `img` as PNG, whole or not at all, the error naming the file.
pub(crate) fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).map_err(|e| match e {
        ImageError::IoError(io) => Error::io(path, io),
        other => Error::data(path, format!("cannot write PNG: {other}")),
    })?;
    write_atomically(path, png.get_ref())
}

/// Linear mix from `a` (t = 0) to `b` (t = 1).
pub(crate) fn mix(a: Rgb<u8>, b: Rgb<u8>, t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    Rgb(std::array::from_fn(|k| (f32::from(a[k]) * (1.0 - t) + f32::from(b[k]) * t).round() as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashed_segments_leave_gaps() {
        let mut img = RgbImage::from_pixel(40, 3, WHITE);
        segment(&mut img, (0.0, 1.0), (39.0, 1.0), BLACK, 1.0, Some(5.0));
        let dark = (0..40).filter(|&x| *img.get_pixel(x, 1) == BLACK).count();
        assert!((15..=25).contains(&dark), "{dark} of 40 drawn");
    }
}

//! The views picture: what the model is asked. Two views of one image
//! with their crop boxes, their cell grids and every positive pair (spec
//! sections 1-2).
use std::path::{Path, PathBuf};

use image::{imageops, Rgb, RgbImage};
use rand::Rng;

use crate::data::views::{two_views, AugmentConfig, View};
use crate::plots::{blend, disc, paste, rect, save_png, segment, text, BLACK, WHITE};
use crate::Result;

use super::{
    cell_centre, cell_rect, check_grid, draw_grid, first_images, image_rng, picture_path,
    positives, view_image, GAP, HEADER,
};

const VIEW1: Rgb<u8> = Rgb([245, 130, 20]);

const VIEW2: Rgb<u8> = Rgb([30, 150, 245]);

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
    draw_original(&mut out, img, (v1, v2), size, layout.orig_w);
    let has_positive = |k: u32, cell: usize| {
        (0..cells)
            .any(|o| if k == 0 { mask[cell * cells + o] } else { mask[o * cells + cell] } > 0.0)
    };
    for (k, v) in [(0u32, v1), (1, v2)] {
        draw_view_panel(&mut out, &layout, k, v, grid, |cell| has_positive(k, cell));
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
    let title = format!(
        "T = {threshold}, grid {} x {}: {pairs} positive pairs; {with_positive} of {cells} view-1 cells have one",
        grid.0, grid.1
    );
    draw_titles(&mut out, &layout, &title, (v1, v2));
    Ok(out)
}

/// The original scaled to the picture's height, with both crop boxes.
fn draw_original(out: &mut RgbImage, img: &RgbImage, (v1, v2): (&View, &View), size: u32, w: u32) {
    let original = imageops::resize(img, w, size, imageops::FilterType::Triangle);
    paste(out, &original, 0, HEADER);
    let scale = size as f32 / img.height().max(1) as f32;
    let origin = (0.0, HEADER as f32);
    draw_crop(out, v1, img.dimensions(), origin, scale, VIEW1);
    draw_crop(out, v2, img.dimensions(), origin, scale, VIEW2);
}

/// View `k` (0 or 1) with its cell grid, the cells without a positive
/// darkened, framed in the view's colour.
fn draw_view_panel(
    out: &mut RgbImage,
    layout: &ViewsLayout,
    k: u32,
    v: &View,
    grid: (i64, i64),
    has_positive: impl Fn(usize) -> bool,
) {
    let size = layout.size;
    let (ox, oy) = layout.view_origin(k);
    paste(out, &view_image(v, size), ox, oy);
    draw_grid(out, (ox, oy), grid, size);
    for cell in (0..(grid.0 * grid.1) as usize).filter(|&c| !has_positive(c)) {
        let (x0, y0, x1, y1) = cell_rect(grid, cell, size);
        let (ox, oy) = (i64::from(ox), i64::from(oy));
        for y in oy + y0..oy + y1 {
            for x in ox + x0..ox + x1 {
                blend(out, x, y, BLACK, 0.55);
            }
        }
    }
    let colour = if k == 0 { VIEW1 } else { VIEW2 };
    let corner = |x: u32, y: u32| (x as f32, y as f32);
    rect(out, corner(ox, oy), corner(ox + size, oy + size), colour, 3.0, None);
}

/// The title line, and a caption above each panel.
fn draw_titles(out: &mut RgbImage, layout: &ViewsLayout, title: &str, (v1, v2): (&View, &View)) {
    let flip = |v: &View| if v.coords[0] > v.coords[2] { ", flipped" } else { "" };
    text(out, 6.0, 3.0, 15.0, BLACK, title);
    text(out, 6.0, 24.0, 13.0, BLACK, "original, crops of view 1 and view 2");
    let (x1, _) = layout.view_origin(0);
    let (x2, _) = layout.view_origin(1);
    text(out, x1 as f32, 24.0, 13.0, VIEW1, &format!("view 1{}", flip(v1)));
    text(out, x2 as f32, 24.0, 13.0, VIEW2, &format!("view 2{}", flip(v2)));
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
    for (i, path, img) in first_images(data, out, count)? {
        let picture = views_picture(&img, cfg, grid, threshold, &mut image_rng(seed, i))?;
        let target = picture_path(out, "views", i, &path);
        save_png(&picture, &target)?;
        written.push(target);
    }
    Ok(written)
}
#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    /// A view of uniform mid grey at `coords`.
    fn grey_view(size: u32, coords: [f32; 4]) -> View {
        let n = (size * size) as usize;
        let pixels =
            (0..3).flat_map(|c| vec![(0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]; n]).collect();
        View { pixels, coords }
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
}

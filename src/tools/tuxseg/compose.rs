//! Composing one scene: a random square crop of a photo with stamps alpha-blended on top, and
//! its label mask, with the ignore ring around each object's hard edge.
use std::path::PathBuf;

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, RgbImage, RgbaImage};
use rand::Rng;
use serde::Serialize;

use super::stamps::{resize_rgba, Stamp};
use super::{stream_rng, IGNORE};

/// Photos are decoded once and shrunk so their short side is this many scene sides: crops of
/// 0.35-1 of the short side then span a 1.4x-4x zoom range without keeping 60 MB photos around.
pub(super) const WORK_SIDES_PER_PHOTO: u32 = 4;
const CROP_SHARE: (f64, f64) = (0.35, 1.0);
/// Longest side of a pasted object as a share of the scene side.
const OBJECT_SHARE: (f64, f64) = (0.25, 0.65);
/// Objects per scene: pretraining may show none (plain photo crops), labelled scenes at least one.
pub(super) const PRETRAIN_OBJECTS: (usize, usize) = (0, 3);
pub(super) const LABELLED_OBJECTS: (usize, usize) = (1, 3);

/// One scene as placed, recorded in the manifest so users and tests can check every label.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SceneRecord {
    /// File stem under `pretrain/` or `voc/JPEGImages/`.
    pub(super) name: String,
    pub(super) photo: String,
    /// Square crop of the decoded, shrunk photo: x, y, side.
    pub(super) crop: [u32; 3],
    pub(super) flip: bool,
    pub(super) objects: Vec<Placed>,
}

/// A pasted stamp, in paint order (later ones occlude earlier ones).
#[derive(Debug, Clone, Serialize)]
pub(super) struct Placed {
    pub(super) stamp: String,
    pub(super) class: u8,
    pub(super) x: u32,
    pub(super) y: u32,
    pub(super) w: u32,
    pub(super) h: u32,
    pub(super) flip: bool,
}

/// Everything one split's scenes are drawn from.
pub(super) struct SplitPlan<'a> {
    pub(super) photos: &'a [RgbImage],
    pub(super) paths: &'a [PathBuf],
    pub(super) stamps: &'a [Stamp],
    /// Stamp indices per class this split may paste.
    pub(super) pool: &'a [Vec<usize>],
    pub(super) objects: (usize, usize),
    pub(super) stream: u64,
    pub(super) labelled: bool,
    pub(super) seed: u64,
    pub(super) size: u32,
}

impl SplitPlan<'_> {
    /// Draws scene `index` from its own stream: the record, the image and its label.
    pub(super) fn scene(&self, index: usize, name: String) -> (SceneRecord, RgbImage, GrayImage) {
        let mut rng = stream_rng(self.seed, self.stream, index);
        let size = self.size;
        let p = rng.random_range(0..self.photos.len());
        let photo = &self.photos[p];
        let short = photo.width().min(photo.height());
        let side = ((short as f64 * rng.random_range(CROP_SHARE.0..=CROP_SHARE.1)).round() as u32)
            .clamp(1, short);
        let x = rng.random_range(0..=photo.width() - side);
        let y = rng.random_range(0..=photo.height() - side);
        let flip = rng.random_bool(0.5);
        let crop = imageops::crop_imm(photo, x, y, side, side).to_image();
        let mut image = imageops::resize(&crop, size, size, FilterType::Triangle);
        if flip {
            imageops::flip_horizontal_in_place(&mut image);
        }

        let classes: Vec<usize> =
            (1..self.pool.len()).filter(|&c| !self.pool[c].is_empty()).collect();
        let count = rng.random_range(self.objects.0..=self.objects.1);
        let mut objects = Vec::with_capacity(count);
        let mut label = GrayImage::new(size, size);
        for _ in 0..count {
            // Class first, then a stamp of it, so large classes do not crowd out small ones.
            let class = classes[rng.random_range(0..classes.len())];
            let pool = &self.pool[class];
            let stamp = &self.stamps[pool[rng.random_range(0..pool.len())]];
            let (sw, sh) = stamp.rgba.dimensions();
            let long = size as f64 * rng.random_range(OBJECT_SHARE.0..=OBJECT_SHARE.1);
            let scale = long / sw.max(sh) as f64;
            let w = ((sw as f64 * scale).round() as u32).clamp(4, size);
            let h = ((sh as f64 * scale).round() as u32).clamp(4, size);
            let placed = Placed {
                stamp: stamp.id.clone(),
                class: stamp.class,
                x: rng.random_range(0..=size - w),
                y: rng.random_range(0..=size - h),
                w,
                h,
                flip: rng.random_bool(0.5),
            };
            let cutout = placed_cutout(&stamp.rgba, &placed);
            paste(&mut image, &mut label, &cutout, &placed, self.labelled);
            objects.push(placed);
        }
        let record = SceneRecord {
            name,
            photo: self.paths[p].display().to_string(),
            crop: [x, y, side],
            flip,
            objects,
        };
        (record, image, label)
    }
}

/// The stamp pixels exactly as pasted for `placed`.
pub(super) fn placed_cutout(stamp: &RgbaImage, placed: &Placed) -> RgbaImage {
    let mut cutout = resize_rgba(stamp, placed.w, placed.h);
    if placed.flip {
        imageops::flip_horizontal_in_place(&mut cutout);
    }
    cutout
}

/// Alpha-blends `cutout` onto the image and paints its label: class where alpha >= 128,
/// IGNORE on the 1-px ring (8-neighbourhood) just outside that hard mask, so a later object's
/// soft edge also masks what it half covers.
fn paste(
    image: &mut RgbImage,
    label: &mut GrayImage,
    cutout: &RgbaImage,
    at: &Placed,
    labelled: bool,
) {
    for (cx, cy, p) in cutout.enumerate_pixels() {
        let a = p[3] as u32;
        if a == 0 {
            continue;
        }
        let px = image.get_pixel_mut(at.x + cx, at.y + cy);
        for k in 0..3 {
            px[k] = ((p[k] as u32 * a + px[k] as u32 * (255 - a) + 127) / 255) as u8;
        }
    }
    if !labelled {
        return;
    }
    let solid = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && (x as u32) < at.w
            && (y as u32) < at.h
            && cutout.get_pixel(x as u32, y as u32)[3] >= 128
    };
    let (size_w, size_h) = (label.width() as i64, label.height() as i64);
    for y in -1..=at.h as i64 {
        for x in -1..=at.w as i64 {
            let (lx, ly) = (at.x as i64 + x, at.y as i64 + y);
            if lx < 0 || ly < 0 || lx >= size_w || ly >= size_h {
                continue;
            }
            let value = if solid(x, y) {
                at.class
            } else if (-1..=1).any(|dy| (-1..=1).any(|dx| solid(x + dx, y + dy))) {
                IGNORE
            } else {
                continue;
            };
            label.put_pixel(lx as u32, ly as u32, Luma([value]));
        }
    }
}

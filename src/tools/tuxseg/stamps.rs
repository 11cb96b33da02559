//! The objects: Tux Paint stamps under the class folders, kept only when they are photo cutouts
//! (judged by packaging, then by texture), cropped and shrunk for pasting.
use std::fs;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Rgba, RgbaImage};
use rayon::prelude::*;

use super::missing_sources;
use crate::{Error, Result};

/// Stamp folders (relative to the stamp root) and the class they map to; first match wins.
/// Categories left out (seasonal, symbols, town, space, clothes, people, ...) are mostly drawings
/// or have too few photo stamps for a 7:3 split; `other_animal` pools the small animal folders
/// (fish, insects, shellfish, amphibians, lizards) that are too small alone.
const CLASS_FOLDERS: &[(&str, u8)] = &[
    ("animals/mammals/", 1),
    ("animals/marsupials/", 1),
    ("animals/birds/", 2),
    ("animals/fish/", 3),
    ("animals/shellfish/", 3),
    ("animals/insects/", 3),
    ("animals/amphibians/", 3),
    ("animals/lizards/", 3),
    ("food/", 4),
    ("plants/", 5),
    ("household/", 6),
    ("hobbies/", 6),
    ("medical/", 6),
    ("sports/", 6),
    ("vehicles/", 7),
    ("military/vehicles/", 7),
];

/// The Debian package of the default stamp tree, named in the README.
pub(super) const STAMP_PACKAGE: &str = "tuxpaint-stamps-default";

/// Photo-likeness thresholds, measured on the stamps' own opaque pixels (alpha >= 128) and set by
/// looking at all 280 candidates of tuxpaint-stamps-default 2022.06.04. Clip-art is flat fills:
/// the two drawings there (hedgehog, pizza) have 70-81% exactly equal horizontal neighbours,
/// while photos have under 10%, palette-quantised flower photos up to 44%. Fewer than 1000
/// opaque pixels (scissors, rugby posts, a walnut) would be blown up 3x and blurred when pasted.
pub(super) const MIN_OPAQUE: usize = 1000;
pub(super) const MIN_COLOURS: usize = 48;
pub(super) const MAX_FLAT: f64 = 0.5;

/// Stamps that pass every test yet are not objects: decals meant to go on another stamp.
pub(super) const NOT_OBJECTS: &[&str] = &["vehicles/emergency/sedan_police"];

/// A photo stamp, cropped to its alpha box and shrunk to at most one scene side.
pub(super) struct Stamp {
    /// Path under the stamp root without `.png`, `/`-separated: the identity A and B split on.
    pub(super) id: String,
    pub(super) class: u8,
    pub(super) rgba: RgbaImage,
}

fn class_of(id: &str) -> Option<u8> {
    CLASS_FOLDERS.iter().find(|(prefix, _)| id.starts_with(prefix)).map(|&(_, class)| class)
}

/// Why a stamp is not a photo cutout by its packaging alone, or None if it may be one. Tux Paint
/// marks recolourable drawings `colorable`/`tintable` in `<name>.dat`, keeps clip-art under
/// `cartoon/` folders, ships a PNG beside an SVG as a raster fallback for a drawing, and
/// `*_mirror` files duplicate another stamp.
fn packaging_reject(path: &Path, id: &str) -> Option<&'static str> {
    if NOT_OBJECTS.contains(&id) {
        return Some("decal for another stamp, not an object");
    }
    if id.contains("_mirror") {
        return Some("mirror duplicate");
    }
    if id.split('/').any(|part| part == "cartoon") {
        return Some("cartoon folder");
    }
    if path.with_extension("svg").exists() {
        return Some("raster fallback of an SVG drawing");
    }
    // Most stamps have no `.dat`: no flags.
    let dat = fs::read_to_string(path.with_extension("dat")).unwrap_or_default();
    if dat.lines().any(|l| matches!(l.trim(), "colorable" | "tintable")) {
        return Some("colorable/tintable drawing");
    }
    None
}

/// Measures on opaque pixels (alpha >= 128) that tell photo texture from flat clip-art.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Texture {
    opaque: usize,
    /// Distinct colours at 5 bits per channel.
    colours: usize,
    /// Share of horizontally adjacent opaque pairs with exactly equal RGB.
    flat: f64,
}

fn texture(img: &RgbaImage) -> Texture {
    let mut seen = vec![false; 1 << 15];
    let (mut opaque, mut colours, mut pairs, mut equal) = (0, 0, 0usize, 0usize);
    for y in 0..img.height() {
        let mut prev: Option<[u8; 3]> = None;
        for x in 0..img.width() {
            let p = img.get_pixel(x, y).0;
            if p[3] < 128 {
                prev = None;
                continue;
            }
            opaque += 1;
            let bin =
                ((p[0] as usize >> 3) << 10) | ((p[1] as usize >> 3) << 5) | (p[2] as usize >> 3);
            if !seen[bin] {
                seen[bin] = true;
                colours += 1;
            }
            let rgb = [p[0], p[1], p[2]];
            if let Some(q) = prev {
                pairs += 1;
                equal += (q == rgb) as usize;
            }
            prev = Some(rgb);
        }
    }
    Texture { opaque, colours, flat: if pairs == 0 { 1.0 } else { equal as f64 / pairs as f64 } }
}

fn texture_reject(t: &Texture) -> Option<String> {
    if t.opaque < MIN_OPAQUE {
        Some(format!("only {} opaque pixels", t.opaque))
    } else if t.colours < MIN_COLOURS {
        Some(format!("only {} colours", t.colours))
    } else if t.flat > MAX_FLAT {
        Some(format!("{:.0}% flat neighbours: flat drawing", t.flat * 100.0))
    } else {
        None
    }
}

/// Decodes a stamp as RGBA, or says why it is not an RGB cutout.
fn decode_stamp(path: &Path) -> Result<std::result::Result<RgbaImage, &'static str>> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::Image { path: path.to_path_buf(), reason: e.to_string() })?;
    let colour = img.color();
    Ok(if !colour.has_alpha() {
        Err("no alpha channel")
    } else if !colour.has_color() {
        Err("grey image (tintable drawing)")
    } else {
        Ok(img.to_rgba8())
    })
}

/// A stamp under a class folder that is not a photo cutout: (id, reason).
pub(super) type Rejected = (String, String);

/// Photo-like stamps under class folders, sorted by id, and the rejected ones.
pub(super) fn find_stamps(root: &Path, size: u32) -> Result<(Vec<Stamp>, Vec<Rejected>)> {
    if !root.is_dir() {
        return Err(missing_sources(root, "no Tux Paint stamp folder".into()));
    }
    let mut candidates = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::io(path, e.into())
        })?;
        let path = entry.path();
        if !entry.file_type().is_file() || path.extension().is_none_or(|e| e != "png") {
            continue;
        }
        let Ok(rel) = path.with_extension("").strip_prefix(root).map(Path::to_path_buf) else {
            continue;
        };
        let id = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>();
        let id = id.join("/");
        if let Some(class) = class_of(&id) {
            candidates.push((path.to_path_buf(), id, class));
        }
    }
    let judged = candidates
        .into_par_iter()
        .map(|(path, id, class)| {
            if let Some(why) = packaging_reject(&path, &id) {
                return Ok(Err((id, why.to_string())));
            }
            let rgba = match decode_stamp(&path)? {
                Ok(rgba) => rgba,
                Err(why) => return Ok(Err((id, why.to_string()))),
            };
            if let Some(why) = texture_reject(&texture(&rgba)) {
                return Ok(Err((id, why)));
            }
            Ok(Ok(Stamp { id, class, rgba: fit_stamp(&rgba, size) }))
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut stamps, mut rejected) = (Vec::new(), Vec::new());
    for j in judged {
        match j {
            Ok(stamp) => stamps.push(stamp),
            Err(r) => rejected.push(r),
        }
    }
    Ok((stamps, rejected))
}

/// Crops a stamp to the box of its visible pixels and shrinks it to at most `size` a side, so
/// every paste is a downscale from a small image.
fn fit_stamp(rgba: &RgbaImage, size: u32) -> RgbaImage {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in rgba.enumerate_pixels() {
        if p[3] > 0 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    // The photo test guarantees opaque pixels, so the box is never empty here.
    let cropped = imageops::crop_imm(rgba, x0, y0, x1 - x0, y1 - y0).to_image();
    let (w, h) = cropped.dimensions();
    let scale = size as f64 / w.max(h) as f64;
    if scale >= 1.0 {
        return cropped;
    }
    let (nw, nh) =
        (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    resize_rgba(&cropped, nw, nh)
}

/// Resizes with premultiplied alpha: `imageops::resize` assumes premultiplied input, and
/// filtering straight RGBA bleeds the colour of invisible pixels into the object's edge. The
/// float buffer holds 0-1 values because `resize` clamps f32 samples to that range.
pub(super) fn resize_rgba(src: &RgbaImage, w: u32, h: u32) -> RgbaImage {
    let pre: ImageBuffer<Rgba<f32>, Vec<f32>> =
        ImageBuffer::from_fn(src.width(), src.height(), |x, y| {
            let p = src.get_pixel(x, y).0.map(|v| v as f32 / 255.0);
            Rgba([p[0] * p[3], p[1] * p[3], p[2] * p[3], p[3]])
        });
    let resized = imageops::resize(&pre, w, h, FilterType::Triangle);
    ImageBuffer::from_fn(w, h, |x, y| {
        let p = resized.get_pixel(x, y).0;
        let a = p[3].clamp(0.0, 1.0);
        // Below half a level the pixel rounds to invisible; dividing by it would only add noise.
        if a * 255.0 < 0.5 {
            return Rgba([0, 0, 0, 0]);
        }
        let un = |v: f32| (v / a * 255.0).round().clamp(0.0, 255.0) as u8;
        Rgba([un(p[0]), un(p[1]), un(p[2]), (a * 255.0).round() as u8])
    })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn texture_tells_noisy_photos_from_flat_fills() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let noisy = RgbaImage::from_fn(40, 40, |_, _| {
            Rgba([rng.random(), rng.random(), rng.random(), 255])
        });
        let flat = RgbaImage::from_fn(40, 40, |x, _| {
            if x < 20 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 0, 255, 255])
            }
        });
        assert_eq!(texture_reject(&texture(&noisy)), None);
        assert!(texture_reject(&texture(&flat)).is_some());
        let t = texture(&flat);
        assert_eq!((t.opaque, t.colours), (1600, 2));
    }
}

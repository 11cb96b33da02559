//! Builds "tuxseg", the cut-and-paste segmentation data set of `shared/docs/data.md`: real
//! wallpaper photos with pasted Tux Paint photo stamps, written as unlabelled pretraining images
//! plus a Pascal VOC 2012 style labelled set whose val objects and backgrounds never appear in
//! pretraining.
//!
//! Every random choice comes from a ChaCha stream keyed by (seed, purpose, item index), so the
//! output is byte-identical for a seed however rayon schedules the work.
use std::fs;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageBuffer, ImageEncoder, Luma, RgbImage, Rgba, RgbaImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::{Error, Result};

/// The one command that installs every source this module reads (Debian package names).
pub const INSTALL_LINE: &str = "apt-get install -y --no-install-recommends \
lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds plasma-workspace-wallpapers \
tuxpaint-stamps-default";

/// Class names; the index is the label value in `SegmentationClass/*.png`.
pub const CLASSES: [&str; 8] =
    ["background", "mammal", "bird", "other_animal", "food", "plant", "object", "vehicle"];

// VOC's label for pixels the probe must not score: here the 1-px ring just outside each pasted
// mask, where the stamp's soft alpha edge blends object and background.
pub use crate::transfer::voc::IGNORE;

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

/// The 37 packaged photographs: (path, Debian package, licence from the package's copyright
/// file). Left out after looking at every file: the rendered or abstract lomiri images
/// Fossa_by_Jasper_Roks, Infinite-Sea_by_Aury88, Painting-Colors_by__herobrine7gamer (20.04) and
/// analogpattern_by_Peter_Nerlich, umang_by_Abhishek_Mudgal (16.04).
const PACKAGED_PHOTOS: &[(&str, &str, &str)] = &[
    ("/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/Dragonfly_by_Bolly.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/Picture_0B_by_freespace.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/Picture_1A_by_freespace.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/free_by_Peter_Nerlich.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg", L16, "CC-BY-SA-4.0"),
    ("/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg", L16, "CC0-1.0"),
    ("/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg", L16, "CC-BY-4.0"),
    ("/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg", L20, "CC-BY-SA-3.0"),
    ("/usr/share/backgrounds/mate/nature/Aqua.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Blinds.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Dune.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/FreshFlower.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Garden.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/GreenMeadow.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/LadyBird.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/RainDrops.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Storm.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/TwoWings.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Wood.jpg", MATE, "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/YellowFlower.jpg", MATE, "GPL-2+"),
    ("/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/Grey/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/Path/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
    ("/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg", PLASMA, PLASMA_LICENCE),
];
const L16: &str = "lomiri-wallpapers-16.04";
const L20: &str = "lomiri-wallpapers-20.04";
const MATE: &str = "mate-backgrounds";
const PLASMA: &str = "plasma-workspace-wallpapers";
const PLASMA_LICENCE: &str = "GPL-2+ (Debian copyright; the file's metadata.json says LGPLv3)";
const STAMP_PACKAGE: &str = "tuxpaint-stamps-default";

/// Fewer photos than this cannot give both a pretraining and a held-out split.
const MIN_PHOTOS: usize = 4;
/// Share of photos held out for the probe splits (data.md: about 3:1).
const HELDOUT_SHARE: f64 = 0.25;
/// Share of each class's stamps that go to B, the val-only set (data.md: about 7:3).
const B_SHARE: f64 = 0.3;

/// Photos are decoded once and shrunk so their short side is this many scene sides: crops of
/// 0.35-1 of the short side then span a 1.4x-4x zoom range without keeping 60 MB photos around.
const WORK_SIDES_PER_PHOTO: u32 = 4;
const CROP_SHARE: (f64, f64) = (0.35, 1.0);
/// Longest side of a pasted object as a share of the scene side.
const OBJECT_SHARE: (f64, f64) = (0.25, 0.65);
/// Objects per scene: pretraining may show none (plain photo crops), labelled scenes at least one.
const PRETRAIN_OBJECTS: (usize, usize) = (0, 3);
const LABELLED_OBJECTS: (usize, usize) = (1, 3);
const JPEG_QUALITY: u8 = 90;

/// Photo-likeness thresholds, measured on the stamps' own opaque pixels (alpha >= 128) and set by
/// looking at all 280 candidates of tuxpaint-stamps-default 2022.06.04. Clip-art is flat fills:
/// the two drawings there (hedgehog, pizza) have 70-81% exactly equal horizontal neighbours,
/// while photos have under 10%, palette-quantised flower photos up to 44%. Fewer than 1000
/// opaque pixels (scissors, rugby posts, a walnut) would be blown up 3x and blurred when pasted.
const MIN_OPAQUE: usize = 1000;
const MIN_COLOURS: usize = 48;
const MAX_FLAT: f64 = 0.5;

/// Stamps that pass every test yet are not objects: decals meant to go on another stamp.
const NOT_OBJECTS: &[&str] = &["vehicles/emergency/sedan_police"];

/// Purposes of the ChaCha streams; the item index fills the low 32 bits.
const STREAM_PHOTO_SPLIT: u64 = 1;
const STREAM_STAMP_SPLIT: u64 = 2;
const STREAM_PRETRAIN: u64 = 3;
const STREAM_TRAIN: u64 = 4;
const STREAM_VAL: u64 = 5;

/// What to build and from where.
#[derive(Debug, Clone)]
pub struct TuxsegOptions {
    /// Output folder; must be missing or empty.
    pub out: PathBuf,
    pub seed: u64,
    /// Photo files, or folders whose `*.jpg`/`*.jpeg`/`*.png` files (not recursive) are photos.
    /// Missing entries are skipped. Default: the 37 packaged photos of data.md.
    pub photo_roots: Vec<PathBuf>,
    /// Tux Paint stamp tree `<category>/<sub>/<name>.png`. Default `/usr/share/tuxpaint/stamps`.
    pub stamp_root: PathBuf,
    pub pretrain_images: usize,
    pub train_images: usize,
    pub val_images: usize,
    /// Side of the square scenes in pixels.
    pub image_size: u32,
}

impl Default for TuxsegOptions {
    /// 160-px scenes leave room for 96-128 px pretraining crops at several scales. 2000
    /// pretraining scenes are ~10 epochs for a 15-minute CPU run, and each of the ~28 pretraining
    /// photos gives ~70 distinct crops. 300 train scenes (~600 objects) are plenty for a
    /// per-pixel linear classifier; 200 val scenes (~400 objects of ~50 B stamps) keep the
    /// per-class IoU from hinging on a handful of pixels. Building takes about 20 s on 2 cores.
    fn default() -> Self {
        TuxsegOptions {
            out: PathBuf::from("data/tuxseg"),
            seed: 0,
            photo_roots: PACKAGED_PHOTOS.iter().map(|(p, _, _)| PathBuf::from(p)).collect(),
            stamp_root: PathBuf::from("/usr/share/tuxpaint/stamps"),
            pretrain_images: 2000,
            train_images: 300,
            val_images: 200,
            image_size: 160,
        }
    }
}

/// What was built: counts for logs and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TuxsegSummary {
    pub out: PathBuf,
    pub classes: Vec<String>,
    pub pretrain_photos: usize,
    pub heldout_photos: usize,
    /// Photo stamps per class (index as in `classes`, background 0) in A and in B.
    pub stamps_a: Vec<usize>,
    pub stamps_b: Vec<usize>,
    /// Pasted objects per class in each split.
    pub objects_pretrain: Vec<usize>,
    pub objects_train: Vec<usize>,
    pub objects_val: Vec<usize>,
    pub pretrain_images: usize,
    pub train_images: usize,
    pub val_images: usize,
}

/// A photo stamp, cropped to its alpha box and shrunk to at most one scene side.
struct Stamp {
    /// Path under the stamp root without `.png`, `/`-separated: the identity A and B split on.
    id: String,
    class: u8,
    rgba: RgbaImage,
}

/// One scene as placed, recorded in the manifest so users and tests can check every label.
#[derive(Debug, Clone, Serialize)]
struct SceneRecord {
    /// File stem under `pretrain/` or `voc/JPEGImages/`.
    name: String,
    photo: String,
    /// Square crop of the decoded, shrunk photo: x, y, side.
    crop: [u32; 3],
    flip: bool,
    objects: Vec<Placed>,
}

/// A pasted stamp, in paint order (later ones occlude earlier ones).
#[derive(Debug, Clone, Serialize)]
struct Placed {
    stamp: String,
    class: u8,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    flip: bool,
}

#[derive(Serialize)]
struct StampEntry<'a> {
    id: &'a str,
    class: &'static str,
}

#[derive(Serialize)]
struct Manifest<'a> {
    seed: u64,
    image_size: u32,
    classes: Vec<&'static str>,
    pretrain_photos: Vec<String>,
    heldout_photos: Vec<String>,
    stamps_a: Vec<StampEntry<'a>>,
    stamps_b: Vec<StampEntry<'a>>,
    /// Stamps under a class folder that failed the photo test, with the reason.
    rejected_stamps: Vec<Rejected>,
    pretrain: &'a [SceneRecord],
    train: &'a [SceneRecord],
    val: &'a [SceneRecord],
}

/// Builds the data set into `opts.out` (see the module doc and data.md).
pub fn build(opts: &TuxsegOptions) -> Result<TuxsegSummary> {
    check_options(opts)?;
    let photo_paths = find_photos(&opts.photo_roots)?;
    let (pretrain_paths, heldout_paths) = split_photos(&photo_paths, opts.seed);
    let (stamps, rejected) = find_stamps(&opts.stamp_root, opts.image_size)?;
    let (a, b) = split_stamps(&stamps, opts.seed, &opts.stamp_root)?;
    tracing::info!(
        photos = photo_paths.len(),
        stamps = stamps.len(),
        rejected = rejected.len(),
        "tuxseg sources found"
    );

    let work_side = opts.image_size * WORK_SIDES_PER_PHOTO;
    let pretrain_photos = load_photos(&pretrain_paths, work_side)?;
    let heldout_photos = load_photos(&heldout_paths, work_side)?;

    let voc = opts.out.join("voc");
    for dir in [
        opts.out.join("pretrain"),
        voc.join("JPEGImages"),
        voc.join("SegmentationClass"),
        voc.join("ImageSets").join("Segmentation"),
    ] {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }

    let pretrain_plan = SplitPlan {
        photos: &pretrain_photos,
        paths: &pretrain_paths,
        stamps: &stamps,
        pool: &a,
        objects: PRETRAIN_OBJECTS,
        stream: STREAM_PRETRAIN,
        labelled: false,
        seed: opts.seed,
        size: opts.image_size,
    };
    let train_plan = SplitPlan {
        photos: &heldout_photos,
        paths: &heldout_paths,
        objects: LABELLED_OBJECTS,
        stream: STREAM_TRAIN,
        labelled: true,
        ..pretrain_plan
    };
    let val_plan = SplitPlan { pool: &b, stream: STREAM_VAL, ..train_plan };
    let jpegs = voc.join("JPEGImages");
    let pretrain =
        pretrain_plan.render_all("", opts.pretrain_images, &opts.out.join("pretrain"), None)?;
    let train = train_plan.render_all("train_", opts.train_images, &jpegs, Some(&voc))?;
    let val = val_plan.render_all("val_", opts.val_images, &jpegs, Some(&voc))?;

    let sets = voc.join("ImageSets").join("Segmentation");
    write_lines(&sets.join("train.txt"), train.iter().map(|s| s.name.as_str()))?;
    write_lines(&sets.join("val.txt"), val.iter().map(|s| s.name.as_str()))?;
    write_lines(&opts.out.join("classes.txt"), CLASSES.iter().copied())?;

    let per_class = |ids: &[usize]| count_classes(ids.iter().map(|&i| stamps[i].class));
    let objects = |scenes: &[SceneRecord]| {
        count_classes(scenes.iter().flat_map(|s| s.objects.iter().map(|o| o.class)))
    };
    let summary = TuxsegSummary {
        out: opts.out.clone(),
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        pretrain_photos: pretrain_paths.len(),
        heldout_photos: heldout_paths.len(),
        stamps_a: per_class(&a.concat()),
        stamps_b: per_class(&b.concat()),
        objects_pretrain: objects(&pretrain),
        objects_train: objects(&train),
        objects_val: objects(&val),
        pretrain_images: pretrain.len(),
        train_images: train.len(),
        val_images: val.len(),
    };

    let entries = |pool: &[Vec<usize>]| -> Vec<StampEntry> {
        pool.iter()
            .flatten()
            .map(|&i| StampEntry { id: &stamps[i].id, class: CLASSES[stamps[i].class as usize] })
            .collect()
    };
    let manifest = Manifest {
        seed: opts.seed,
        image_size: opts.image_size,
        classes: CLASSES.to_vec(),
        pretrain_photos: pretrain_paths.iter().map(|p| p.display().to_string()).collect(),
        heldout_photos: heldout_paths.iter().map(|p| p.display().to_string()).collect(),
        stamps_a: entries(&a),
        stamps_b: entries(&b),
        rejected_stamps: rejected,
        pretrain: &pretrain,
        train: &train,
        val: &val,
    };
    let readme = readme(opts, &summary, &pretrain_paths, &heldout_paths);
    write_file(&opts.out.join("README.md"), readme.as_bytes())?;
    // Written last: its presence marks a complete build.
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::data(&opts.out, format!("cannot serialise manifest: {e}")))?;
    write_file(&opts.out.join("manifest.json"), &json)?;
    Ok(summary)
}

fn check_options(opts: &TuxsegOptions) -> Result<()> {
    if opts.image_size < 32 {
        return Err(Error::config("image_size", format!("{} is below 32 px", opts.image_size)));
    }
    if opts.train_images == 0 || opts.val_images == 0 {
        return Err(Error::config("train_images/val_images", "both splits need images"));
    }
    // Refusing a used folder keeps stale files of an earlier, larger build out of the set.
    if let Ok(mut entries) = fs::read_dir(&opts.out) {
        if entries.next().is_some() {
            return Err(Error::config(
                "out",
                format!("{} is not empty; remove it or choose another folder", opts.out.display()),
            ));
        }
    }
    Ok(())
}

fn missing_sources(path: &Path, what: String) -> Error {
    Error::data(path, format!("{what}; install the packaged sources with: {INSTALL_LINE}"))
}

/// Photo files named by `roots` (files as they are, folders by their image files), sorted.
fn find_photos(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for root in roots {
        if root.is_file() {
            found.push(root.clone());
        } else if root.is_dir() {
            let entries = fs::read_dir(root).map_err(|e| Error::io(root, e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io(root, e))?.path();
                let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                if path.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    found.dedup();
    if found.len() < MIN_PHOTOS {
        let first = roots.first().cloned().unwrap_or_default();
        return Err(missing_sources(
            &first,
            format!(
                "found {} background photos in {} photo roots, need at least {MIN_PHOTOS}",
                found.len(),
                roots.len()
            ),
        ));
    }
    Ok(found)
}

fn stream_rng(seed: u64, purpose: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((purpose << 32) | index as u64);
    rng
}

/// Splits photo files about 3:1 into (pretraining, held-out), both sorted.
fn split_photos(paths: &[PathBuf], seed: u64) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut shuffled = paths.to_vec();
    shuffled.shuffle(&mut stream_rng(seed, STREAM_PHOTO_SPLIT, 0));
    let heldout_n =
        ((paths.len() as f64 * HELDOUT_SHARE).round() as usize).clamp(1, paths.len() - 1);
    let mut heldout = shuffled.split_off(paths.len() - heldout_n);
    shuffled.sort();
    heldout.sort();
    (shuffled, heldout)
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
type Rejected = (String, String);

/// Photo-like stamps under class folders, sorted by id, and the rejected ones.
fn find_stamps(root: &Path, size: u32) -> Result<(Vec<Stamp>, Vec<Rejected>)> {
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
fn resize_rgba(src: &RgbaImage, w: u32, h: u32) -> RgbaImage {
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

/// Stamp indices per class (index 0, background, stays empty).
type ClassPools = Vec<Vec<usize>>;

/// Splits each class's stamps ~7:3 by identity into A and B.
fn split_stamps(stamps: &[Stamp], seed: u64, root: &Path) -> Result<(ClassPools, ClassPools)> {
    let (mut a, mut b) = (vec![Vec::new(); CLASSES.len()], vec![Vec::new(); CLASSES.len()]);
    for class in 1..CLASSES.len() {
        let mut ids: Vec<usize> =
            (0..stamps.len()).filter(|&i| stamps[i].class as usize == class).collect();
        if ids.len() < 2 {
            return Err(missing_sources(
                root,
                format!(
                    "class `{}` has {} photo-like stamps, need at least 2 for the A/B split",
                    CLASSES[class],
                    ids.len()
                ),
            ));
        }
        ids.shuffle(&mut stream_rng(seed, STREAM_STAMP_SPLIT, class));
        let b_n = ((ids.len() as f64 * B_SHARE).round() as usize).clamp(1, ids.len() - 1);
        b[class] = ids.split_off(ids.len() - b_n);
        b[class].sort();
        ids.sort();
        a[class] = ids;
    }
    Ok((a, b))
}

fn load_photos(paths: &[PathBuf], work_side: u32) -> Result<Vec<RgbImage>> {
    paths
        .par_iter()
        .map(|path| {
            let img = image::ImageReader::open(path)
                .map_err(|e| Error::io(path, e))?
                .with_guessed_format()
                .map_err(|e| Error::io(path, e))?
                .decode()
                .map_err(|e| Error::Image { path: path.clone(), reason: e.to_string() })?;
            let (w, h) = (img.width(), img.height());
            let short = w.min(h);
            let img = if short > work_side {
                let s = work_side as f64 / short as f64;
                let (nw, nh) = ((w as f64 * s).round() as u32, (h as f64 * s).round() as u32);
                img.resize_exact(nw.max(work_side), nh.max(work_side), FilterType::Triangle)
            } else {
                img
            };
            Ok(DynamicImage::to_rgb8(&img))
        })
        .collect()
}

/// Everything one split's scenes are drawn from.
struct SplitPlan<'a> {
    photos: &'a [RgbImage],
    paths: &'a [PathBuf],
    stamps: &'a [Stamp],
    /// Stamp indices per class this split may paste.
    pool: &'a [Vec<usize>],
    objects: (usize, usize),
    stream: u64,
    labelled: bool,
    seed: u64,
    size: u32,
}

impl SplitPlan<'_> {
    /// Renders `n` scenes in parallel and writes `<dir>/<prefix><index>.jpg` (and the label PNG
    /// under `voc/SegmentationClass` when `voc` is given).
    fn render_all(
        &self,
        prefix: &str,
        n: usize,
        dir: &Path,
        voc: Option<&Path>,
    ) -> Result<Vec<SceneRecord>> {
        (0..n)
            .into_par_iter()
            .map(|i| {
                let name = format!("{prefix}{i:06}");
                let (record, image, label) = self.scene(i, name);
                let jpg = dir.join(format!("{}.jpg", record.name));
                write_file(&jpg, &encode_jpeg(&image, &jpg)?)?;
                if let Some(voc) = voc {
                    let png = voc.join("SegmentationClass").join(format!("{}.png", record.name));
                    write_file(&png, &encode_png(&label, &png)?)?;
                }
                Ok(record)
            })
            .collect()
    }

    fn scene(&self, index: usize, name: String) -> (SceneRecord, RgbImage, GrayImage) {
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
fn placed_cutout(stamp: &RgbaImage, placed: &Placed) -> RgbaImage {
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

fn count_classes(classes: impl Iterator<Item = u8>) -> Vec<usize> {
    let mut counts = vec![0; CLASSES.len()];
    for c in classes {
        counts[c as usize] += 1;
    }
    counts
}

fn encode_jpeg(image: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, JPEG_QUALITY)
        .encode_image(image)
        .map_err(|e| Error::data(path, format!("JPEG encoding failed: {e}")))?;
    Ok(buf)
}

fn encode_png(label: &GrayImage, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    PngEncoder::new(&mut buf)
        .write_image(label.as_raw(), label.width(), label.height(), image::ExtendedColorType::L8)
        .map_err(|e| Error::data(path, format!("PNG encoding failed: {e}")))?;
    Ok(buf)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn write_lines<'a>(path: &Path, lines: impl Iterator<Item = &'a str>) -> Result<()> {
    let text: String = lines.map(|l| format!("{l}\n")).collect();
    write_file(path, text.as_bytes())
}

fn photo_source(path: &Path) -> (&'static str, &'static str) {
    PACKAGED_PHOTOS
        .iter()
        .find(|(p, _, _)| Path::new(p) == path)
        .map(|&(_, package, licence)| (package, licence))
        .unwrap_or(("(not a packaged photo)", "unknown: check the file's own terms"))
}

fn readme(
    opts: &TuxsegOptions,
    s: &TuxsegSummary,
    pretrain_photos: &[PathBuf],
    heldout_photos: &[PathBuf],
) -> String {
    let mut md = String::new();
    let mut line = |l: String| {
        md.push_str(&l);
        md.push('\n');
    };
    line("# tuxseg: cut-and-paste segmentation on real photos".into());
    line(String::new());
    line(
        "This is real photos with pasted real-object cutouts, not a natural-scene benchmark: \
         crops of Debian wallpaper photographs with Tux Paint photo stamps alpha-blended on top. \
         Built by `pixpro::tools::tuxseg::build` as described in shared/docs/data.md."
            .into(),
    );
    line(String::new());
    let total_a: usize = s.stamps_a.iter().sum();
    let total_b: usize = s.stamps_b.iter().sum();
    line(format!(
        "Seed {}, scenes {}x{} px. Sources: {} photos ({} pretraining, {} held out) and {} \
         photo stamps ({} in A, {} in B).",
        opts.seed,
        opts.image_size,
        opts.image_size,
        s.pretrain_photos + s.heldout_photos,
        s.pretrain_photos,
        s.heldout_photos,
        total_a + total_b,
        total_a,
        total_b
    ));
    line(String::new());
    line("## Layout".into());
    line(String::new());
    line(format!(
        "- `pretrain/*.jpg`: {} crops of pretraining photos with 0-3 A stamps; no labels.",
        s.pretrain_images
    ));
    line(format!(
        "- `voc/`: Pascal VOC 2012 segmentation layout. `train` ({} scenes): held-out photos \
         with 1-3 A stamps; `val` ({} scenes): held-out photos with 1-3 B stamps. \
         `SegmentationClass/*.png` hold class indices (see `classes.txt`), 255 = ignore: the \
         1-px ring just outside each object's alpha >= 128 mask; later objects occlude earlier.",
        s.train_images, s.val_images
    ));
    line(
        "- `manifest.json`: which photos and stamp identities are in which split, the rejected \
         stamps with the reason, and every scene's photo crop and pasted objects."
            .into(),
    );
    line(String::new());
    line("No val object and no val background pixel is seen in pretraining.".into());
    line(String::new());
    line("## Classes and objects".into());
    line(String::new());
    line(
        "| index | class | stamps A | stamps B | objects pretrain | objects train | objects val |"
            .into(),
    );
    line("| --- | --- | --- | --- | --- | --- | --- |".into());
    for (i, class) in CLASSES.iter().enumerate().skip(1) {
        line(format!(
            "| {i} | {class} | {} | {} | {} | {} | {} |",
            s.stamps_a[i],
            s.stamps_b[i],
            s.objects_pretrain[i],
            s.objects_train[i],
            s.objects_val[i]
        ));
    }
    line(String::new());
    line(
        "Stamp folders per class: mammal = animals/mammals, animals/marsupials; bird = \
         animals/birds; other_animal = animals/{fish,shellfish,insects,amphibians,lizards}; food \
         = food; plant = plants; object = household, hobbies, medical, sports; vehicle = \
         vehicles, military/vehicles."
            .into(),
    );
    line(String::new());
    line(format!(
        "A stamp counts as a photo cutout when it is not a `*_mirror` duplicate, not under a \
         `cartoon` folder, has no `.svg` twin, is not marked colorable/tintable in its `.dat`, \
         is not a decal ({NOT_OBJECTS:?}), is an RGB image with alpha, and its opaque (alpha >= 128) pixels number at least \
         {MIN_OPAQUE}, hold at least {MIN_COLOURS} distinct colours at 5 bits per channel, and at \
         most {:.0}% of horizontally adjacent opaque pairs are exactly equal (flat fills).",
        MAX_FLAT * 100.0
    ));
    line(String::new());
    line("## Sources and licences".into());
    line(String::new());
    line(format!(
        "Stamps: Debian package `{STAMP_PACKAGE}`, GPL-2, from `{}`; the identities are listed \
         in manifest.json.",
        opts.stamp_root.display()
    ));
    line(String::new());
    line("| split | photo | package | licence |".into());
    line("| --- | --- | --- | --- |".into());
    for (split, paths) in [("pretrain", pretrain_photos), ("held-out", heldout_photos)] {
        for path in paths {
            let (package, licence) = photo_source(path);
            line(format!("| {split} | `{}` | {package} | {licence} |", path.display()));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use image::Rgb;
    use serde_json::Value;

    use super::*;

    /// One stamp folder per class, in class order.
    const CLASS_DIRS: [&str; 7] = [
        "animals/mammals/cats",
        "animals/birds",
        "animals/fish",
        "food/fruit",
        "plants/flowers",
        "household/tools",
        "vehicles/auto",
    ];

    /// An ellipse cutout with a ~2 px soft edge; noisy colour around `base` when `textured`,
    /// one flat colour (clip-art) otherwise.
    fn write_stamp(
        path: &Path,
        w: u32,
        h: u32,
        base: [u8; 3],
        textured: bool,
        rng: &mut ChaCha8Rng,
    ) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let (rx, ry) = (w as f64 / 2.0, h as f64 / 2.0);
        let img = RgbaImage::from_fn(w, h, |x, y| {
            let (dx, dy) = ((x as f64 + 0.5 - rx) / rx, (y as f64 + 0.5 - ry) / ry);
            let r = (dx * dx + dy * dy).sqrt();
            let alpha = ((1.0 - r) * rx.min(ry) / 2.0).clamp(0.0, 1.0);
            let mut c = base;
            if textured {
                for v in &mut c {
                    *v = (*v as i32 + rng.random_range(-40..=40)).clamp(0, 255) as u8;
                }
            }
            Rgba([c[0], c[1], c[2], (alpha * 255.0).round() as u8])
        });
        img.save(path).unwrap();
    }

    /// 8 noise-and-gradient "photos" and 3 textured stamps per class, plus stamps the filters
    /// must drop: a flat drawing, a mirror duplicate, a cartoon and one outside every class.
    fn make_inputs(dir: &Path) -> (PathBuf, PathBuf) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let photos = dir.join("photos");
        fs::create_dir_all(&photos).unwrap();
        for i in 0..8u32 {
            let img = RgbImage::from_fn(120, 90, |x, y| {
                let n: u8 = rng.random_range(0..40);
                Rgb([(x * 2) as u8 / 2 + n, (y * 2) as u8 / 2 + n, (i * 25) as u8 + n])
            });
            img.save(photos.join(format!("photo{i}.jpg"))).unwrap();
        }
        let stamps = dir.join("stamps");
        for (c, sub) in CLASS_DIRS.iter().enumerate() {
            for k in 0..3u32 {
                let base = [(c * 35) as u8, (k * 80) as u8, 200 - (c * 25) as u8];
                let path = stamps.join(sub).join(format!("thing{k}.png"));
                write_stamp(&path, 50 + 6 * k, 40, base, true, &mut rng);
            }
        }
        let birds = stamps.join("animals/birds");
        write_stamp(&birds.join("flat.png"), 50, 40, [200, 30, 30], false, &mut rng);
        write_stamp(&birds.join("thing0_mirror.png"), 50, 40, [9, 9, 9], true, &mut rng);
        write_stamp(&birds.join("cartoon/toon.png"), 50, 40, [9, 9, 9], true, &mut rng);
        write_stamp(&stamps.join("symbols/star.png"), 50, 40, [9, 9, 9], true, &mut rng);
        (photos, stamps)
    }

    fn options(inputs: &(PathBuf, PathBuf), out: PathBuf, seed: u64) -> TuxsegOptions {
        TuxsegOptions {
            out,
            seed,
            photo_roots: vec![inputs.0.clone()],
            stamp_root: inputs.1.clone(),
            pretrain_images: 10,
            train_images: 8,
            val_images: 8,
            image_size: 64,
        }
    }

    fn strings(v: &Value) -> BTreeSet<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }

    fn stamp_ids(v: &Value) -> BTreeSet<String> {
        v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    }

    fn placed(o: &Value) -> Placed {
        let n = |k: &str| o[k].as_u64().unwrap() as u32;
        Placed {
            stamp: o["stamp"].as_str().unwrap().to_string(),
            class: n("class") as u8,
            x: n("x"),
            y: n("y"),
            w: n("w"),
            h: n("h"),
            flip: o["flip"].as_bool().unwrap(),
        }
    }

    /// The label a pixel must have: the topmost object whose hard mask or 1-px ring holds it.
    fn expected_label(objects: &[(Placed, RgbaImage)], px: u32, py: u32) -> u8 {
        let solid = |o: &Placed, cut: &RgbaImage, x: i64, y: i64| {
            x >= 0
                && y >= 0
                && x < o.w as i64
                && y < o.h as i64
                && cut.get_pixel(x as u32, y as u32)[3] >= 128
        };
        for (o, cut) in objects.iter().rev() {
            let (x, y) = (px as i64 - o.x as i64, py as i64 - o.y as i64);
            if solid(o, cut, x, y) {
                return o.class;
            }
            if (-1..=1).any(|dy| (-1..=1).any(|dx| solid(o, cut, x + dx, y + dy))) {
                return IGNORE;
            }
        }
        0
    }

    #[test]
    fn tiny_build_has_disjoint_splits_exact_masks_and_voc_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = make_inputs(tmp.path());
        let out = tmp.path().join("out");
        let summary = build(&options(&inputs, out.clone(), 3)).unwrap();
        assert_eq!((summary.pretrain_photos, summary.heldout_photos), (6, 2));
        assert_eq!(summary.stamps_a, vec![0, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(summary.stamps_b, vec![0, 1, 1, 1, 1, 1, 1, 1]);

        let manifest: Value =
            serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
        let (pre_photos, held_photos) =
            (strings(&manifest["pretrain_photos"]), strings(&manifest["heldout_photos"]));
        assert!(pre_photos.is_disjoint(&held_photos));
        let (a, b) = (stamp_ids(&manifest["stamps_a"]), stamp_ids(&manifest["stamps_b"]));
        assert!(a.is_disjoint(&b));
        let rejected: BTreeSet<String> = manifest["rejected_stamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect();
        for id in
            ["animals/birds/flat", "animals/birds/thing0_mirror", "animals/birds/cartoon/toon"]
        {
            assert!(rejected.contains(id) && !a.contains(id) && !b.contains(id), "{id}");
        }
        assert!(!rejected.contains("symbols/star") && !a.contains("symbols/star"));
        for (split, photos, pool) in
            [("pretrain", &pre_photos, &a), ("train", &held_photos, &a), ("val", &held_photos, &b)]
        {
            for scene in manifest[split].as_array().unwrap() {
                assert!(photos.contains(scene["photo"].as_str().unwrap()), "{split} photo");
                for o in scene["objects"].as_array().unwrap() {
                    assert!(pool.contains(o["stamp"].as_str().unwrap()), "{split} stamp");
                }
            }
        }

        let classes = fs::read_to_string(out.join("classes.txt")).unwrap();
        assert_eq!(classes.lines().collect::<Vec<_>>(), CLASSES.to_vec());
        let readme = fs::read_to_string(out.join("README.md")).unwrap();
        assert!(readme.contains("real photos with pasted real-object cutouts"));
        assert_eq!(fs::read_dir(out.join("pretrain")).unwrap().count(), 10);

        let (stamps, _) = find_stamps(&inputs.1, 64).unwrap();
        let by_id: BTreeMap<&str, &RgbaImage> =
            stamps.iter().map(|s| (s.id.as_str(), &s.rgba)).collect();
        let voc = out.join("voc");
        let (mut class_px, mut ignore_px, mut interior_err, mut interior_n) = (0, 0, 0u64, 0u64);
        for split in ["train", "val"] {
            let list = fs::read_to_string(voc.join(format!("ImageSets/Segmentation/{split}.txt")))
                .unwrap();
            let scenes = manifest[split].as_array().unwrap();
            assert_eq!(
                list.lines().collect::<Vec<_>>(),
                scenes.iter().map(|s| s["name"].as_str().unwrap()).collect::<Vec<_>>()
            );
            for scene in scenes {
                let name = scene["name"].as_str().unwrap();
                let image =
                    image::open(voc.join(format!("JPEGImages/{name}.jpg"))).unwrap().to_rgb8();
                let label = image::open(voc.join(format!("SegmentationClass/{name}.png"))).unwrap();
                assert_eq!(label.color(), image::ColorType::L8);
                let label = label.to_luma8();
                assert_eq!((image.dimensions(), label.dimensions()), ((64, 64), (64, 64)));
                let objects: Vec<(Placed, RgbaImage)> = scene["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| {
                        let p = placed(o);
                        let cut = placed_cutout(by_id[p.stamp.as_str()], &p);
                        (p, cut)
                    })
                    .collect();
                assert!((1..=3).contains(&objects.len()));
                for (x, y, v) in label.enumerate_pixels() {
                    let v = v[0];
                    assert!((v as usize) < CLASSES.len() || v == IGNORE, "value {v}");
                    assert_eq!(v, expected_label(&objects, x, y), "{name} at ({x}, {y})");
                    class_px += (v != 0 && v != IGNORE) as usize;
                    ignore_px += (v == IGNORE) as usize;
                    // Where the top object is fully opaque the image shows the stamp (up to JPEG).
                    if let Some((o, cut)) = objects
                        .iter()
                        .rev()
                        .find(|(o, _)| x >= o.x && y >= o.y && x < o.x + o.w && y < o.y + o.h)
                    {
                        let c = cut.get_pixel(x - o.x, y - o.y);
                        if c[3] == 255 {
                            interior_n += 1;
                            interior_err += (0..3)
                                .map(|k| {
                                    (c[k] as i64 - image.get_pixel(x, y)[k] as i64).unsigned_abs()
                                })
                                .sum::<u64>();
                        }
                    }
                }
            }
        }
        assert!(class_px > 0 && ignore_px > 0 && ignore_px < class_px, "{class_px} {ignore_px}");
        // Noisy stamps through JPEG: a pasted pixel stays close to the stamp, a missed paste
        // would be ~100 levels off.
        let mean_err = interior_err as f64 / (3 * interior_n) as f64;
        assert!(mean_err < 25.0, "mean error {mean_err}");
    }

    fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                (e.path().strip_prefix(root).unwrap().to_path_buf(), fs::read(e.path()).unwrap())
            })
            .collect()
    }

    #[test]
    fn same_seed_gives_identical_bytes_and_another_seed_differs() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = make_inputs(tmp.path());
        for (dir, seed) in [("a", 5), ("b", 5), ("c", 6)] {
            build(&options(&inputs, tmp.path().join(dir), seed)).unwrap();
        }
        let (a, b, c) = (
            files(&tmp.path().join("a")),
            files(&tmp.path().join("b")),
            files(&tmp.path().join("c")),
        );
        assert!(a.len() > 30);
        assert!(a == b, "same seed, different output");
        let differing = a.iter().zip(&c).filter(|(x, y)| x.1 != y.1).count();
        assert!(differing > a.len() / 2, "only {differing} files differ across seeds");
    }

    #[test]
    fn missing_sources_name_the_install_line() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = make_inputs(tmp.path());
        let mut opts = options(&inputs, tmp.path().join("out"), 0);
        opts.photo_roots = vec![tmp.path().join("no-photos"), tmp.path().join("nor-here.jpg")];
        let err = build(&opts).unwrap_err().to_string();
        assert!(err.contains(INSTALL_LINE), "{err}");

        let mut opts = options(&inputs, tmp.path().join("out"), 0);
        opts.stamp_root = tmp.path().join("no-stamps");
        let err = build(&opts).unwrap_err().to_string();
        assert!(err.contains(INSTALL_LINE), "{err}");
    }

    #[test]
    fn refuses_a_non_empty_output_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = make_inputs(tmp.path());
        let err = build(&options(&inputs, tmp.path().to_path_buf(), 0)).unwrap_err();
        assert!(matches!(err, Error::Config { ref key, .. } if key == "out"), "{err}");
    }

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

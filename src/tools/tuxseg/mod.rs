//! Builds "tuxseg", the cut-and-paste segmentation data set of `shared/docs/data.md`: real
//! wallpaper photos with pasted Tux Paint photo stamps, written as unlabelled pretraining images
//! plus a Pascal VOC 2012 style labelled set whose val objects and backgrounds never appear in
//! pretraining.
//!
//! Every random choice comes from a ChaCha stream keyed by (seed, purpose, item index), so the
//! output is byte-identical for a seed however rayon schedules the work.
//!
//! [`build`] runs the files in this order:
//! - `photos`: finds the background photos (by default the 37 packaged wallpapers) and, once
//!   they are split, decodes them at a working size.
//! - `stamps`: finds the Tux Paint stamps under the class folders and keeps the photo cutouts.
//! - `split`: photos into pretraining and held-out, each class's stamps into A and B, so val
//!   shares no object and no background with pretraining.
//! - `compose`: one scene: a photo crop with stamps pasted on, its label mask and ignore ring.
//! - `write`: the scenes in the VOC layout, its file lists, `classes.txt` and `manifest.json`.
//! - `readme`: the README.md that describes the build and the licence of every source.
use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::train::lock::{DirLock, LOCK_FILE};
use crate::{Error, Result};

mod photos;
mod stamps;
mod split;
mod compose;
mod write;
mod readme;
#[cfg(test)]
mod tests;

use compose::{SceneRecord, SplitPlan, LABELLED_OBJECTS, PRETRAIN_OBJECTS, WORK_SIDES_PER_PHOTO};
use photos::PACKAGED_PHOTOS;
use split::ClassPools;
use stamps::{Rejected, Stamp};

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

/// Every source, found and split: what each split's scenes are drawn from.
struct Sources {
    pretrain_paths: Vec<PathBuf>,
    heldout_paths: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    rejected: Vec<Rejected>,
    /// Stamp indices per class for pretraining and train (A) and for val only (B).
    a: ClassPools,
    b: ClassPools,
}

/// The scenes of each split as written, in file order.
struct Scenes {
    pretrain: Vec<SceneRecord>,
    train: Vec<SceneRecord>,
    val: Vec<SceneRecord>,
}

/// Builds the data set into `opts.out` (see the module doc and data.md).
pub fn build(opts: &TuxsegOptions) -> Result<TuxsegSummary> {
    check_options(opts)?;
    // Two builds into one folder would interleave their scenes.
    let _owner = DirLock::acquire(&opts.out)?;
    check_empty(&opts.out)?;
    let sources = find_sources(opts)?;
    let work_side = opts.image_size * WORK_SIDES_PER_PHOTO;
    let pretrain_photos = photos::load_photos(&sources.pretrain_paths, work_side)?;
    let heldout_photos = photos::load_photos(&sources.heldout_paths, work_side)?;
    write::create_folders(&opts.out)?;
    let scenes = render(opts, &sources, &pretrain_photos, &heldout_photos)?;
    write::write_lists(&opts.out, &scenes)?;
    let summary = summarise(opts, &sources, &scenes);
    let readme = readme::readme(opts, &summary, &sources.pretrain_paths, &sources.heldout_paths);
    write::write_file(&opts.out.join("README.md"), readme.as_bytes())?;
    // Written last: its presence marks a complete build.
    write::write_manifest(opts, &sources, &scenes)?;
    Ok(summary)
}

fn check_options(opts: &TuxsegOptions) -> Result<()> {
    if opts.image_size < 32 {
        return Err(Error::config("image_size", format!("{} is below 32 px", opts.image_size)));
    }
    if opts.train_images == 0 || opts.val_images == 0 {
        return Err(Error::config("train_images/val_images", "both splits need images"));
    }
    Ok(())
}

/// Refusing a used folder keeps stale files of an earlier, larger build out
/// of the set; the lock file is this build's own.
fn check_empty(out: &Path) -> Result<()> {
    let entries = fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    if entries.flatten().any(|e| e.file_name() != LOCK_FILE) {
        return Err(Error::config(
            "out",
            format!("{} is not empty; remove it or choose another folder", out.display()),
        ));
    }
    Ok(())
}

fn missing_sources(path: &Path, what: String) -> Error {
    Error::data(path, format!("{what}; install the packaged sources with: {INSTALL_LINE}"))
}

fn find_sources(opts: &TuxsegOptions) -> Result<Sources> {
    let photo_paths = photos::find_photos(&opts.photo_roots)?;
    let (pretrain_paths, heldout_paths) = split::split_photos(&photo_paths, opts.seed);
    let (stamps, rejected) = stamps::find_stamps(&opts.stamp_root, opts.image_size)?;
    let (a, b) = split::split_stamps(&stamps, opts.seed, &opts.stamp_root)?;
    tracing::info!(
        photos = photo_paths.len(),
        stamps = stamps.len(),
        rejected = rejected.len(),
        "tuxseg sources found"
    );
    Ok(Sources { pretrain_paths, heldout_paths, stamps, rejected, a, b })
}

fn stream_rng(seed: u64, purpose: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((purpose << 32) | index as u64);
    rng
}

/// Renders and writes the three splits: pretraining photos with A stamps, held-out photos with
/// A stamps for train and with B stamps for val.
fn render(
    opts: &TuxsegOptions,
    sources: &Sources,
    pretrain_photos: &[RgbImage],
    heldout_photos: &[RgbImage],
) -> Result<Scenes> {
    let pretrain_plan = SplitPlan {
        photos: pretrain_photos,
        paths: &sources.pretrain_paths,
        stamps: &sources.stamps,
        pool: &sources.a,
        objects: PRETRAIN_OBJECTS,
        stream: STREAM_PRETRAIN,
        labelled: false,
        seed: opts.seed,
        size: opts.image_size,
    };
    let train_plan = SplitPlan {
        photos: heldout_photos,
        paths: &sources.heldout_paths,
        objects: LABELLED_OBJECTS,
        stream: STREAM_TRAIN,
        labelled: true,
        ..pretrain_plan
    };
    let val_plan = SplitPlan { pool: &sources.b, stream: STREAM_VAL, ..train_plan };
    let voc = opts.out.join("voc");
    let jpegs = voc.join("JPEGImages");
    Ok(Scenes {
        pretrain: pretrain_plan.render_all(
            "",
            opts.pretrain_images,
            &opts.out.join("pretrain"),
            None,
        )?,
        train: train_plan.render_all("train_", opts.train_images, &jpegs, Some(&voc))?,
        val: val_plan.render_all("val_", opts.val_images, &jpegs, Some(&voc))?,
    })
}

fn summarise(opts: &TuxsegOptions, sources: &Sources, scenes: &Scenes) -> TuxsegSummary {
    let per_class = |ids: &[usize]| count_classes(ids.iter().map(|&i| sources.stamps[i].class));
    let objects = |scenes: &[SceneRecord]| {
        count_classes(scenes.iter().flat_map(|s| s.objects.iter().map(|o| o.class)))
    };
    TuxsegSummary {
        out: opts.out.clone(),
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        pretrain_photos: sources.pretrain_paths.len(),
        heldout_photos: sources.heldout_paths.len(),
        stamps_a: per_class(&sources.a.concat()),
        stamps_b: per_class(&sources.b.concat()),
        objects_pretrain: objects(&scenes.pretrain),
        objects_train: objects(&scenes.train),
        objects_val: objects(&scenes.val),
        pretrain_images: scenes.pretrain.len(),
        train_images: scenes.train.len(),
        val_images: scenes.val.len(),
    }
}

fn count_classes(classes: impl Iterator<Item = u8>) -> Vec<usize> {
    let mut counts = vec![0; CLASSES.len()];
    for c in classes {
        counts[c as usize] += 1;
    }
    counts
}

//! Writing a build: scene JPEGs and label PNGs in the Pascal VOC 2012 layout, its file lists,
//! `classes.txt` and `manifest.json`.
use std::fs;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{GrayImage, ImageEncoder, RgbImage};
use rayon::prelude::*;
use serde::Serialize;

use super::compose::{SceneRecord, SplitPlan};
use super::stamps::Rejected;
use super::{Scenes, Sources, TuxsegOptions, CLASSES};
use crate::{Error, Result};

const JPEG_QUALITY: u8 = 90;

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
    rejected_stamps: &'a [Rejected],
    pretrain: &'a [SceneRecord],
    train: &'a [SceneRecord],
    val: &'a [SceneRecord],
}

/// Creates the output folders, so the parallel writers never race to make one.
pub(super) fn create_folders(out: &Path) -> Result<()> {
    let voc = out.join("voc");
    for dir in [
        out.join("pretrain"),
        voc.join("JPEGImages"),
        voc.join("SegmentationClass"),
        voc.join("ImageSets").join("Segmentation"),
    ] {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(())
}

impl SplitPlan<'_> {
    /// Renders `n` scenes in parallel and writes `<dir>/<prefix><index>.jpg` (and the label PNG
    /// under `voc/SegmentationClass` when `voc` is given).
    pub(super) fn render_all(
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
}

/// The VOC image sets (file stems in scene order) and `classes.txt`.
pub(super) fn write_lists(out: &Path, scenes: &Scenes) -> Result<()> {
    let sets = out.join("voc").join("ImageSets").join("Segmentation");
    write_lines(&sets.join("train.txt"), scenes.train.iter().map(|s| s.name.as_str()))?;
    write_lines(&sets.join("val.txt"), scenes.val.iter().map(|s| s.name.as_str()))?;
    write_lines(&out.join("classes.txt"), CLASSES.iter().copied())
}

/// `manifest.json`: which sources went to which split, and every scene as placed.
pub(super) fn write_manifest(
    opts: &TuxsegOptions,
    sources: &Sources,
    scenes: &Scenes,
) -> Result<()> {
    let stamps = &sources.stamps;
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
        pretrain_photos: sources.pretrain_paths.iter().map(|p| p.display().to_string()).collect(),
        heldout_photos: sources.heldout_paths.iter().map(|p| p.display().to_string()).collect(),
        stamps_a: entries(&sources.a),
        stamps_b: entries(&sources.b),
        rejected_stamps: &sources.rejected,
        pretrain: &scenes.pretrain,
        train: &scenes.train,
        val: &scenes.val,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::data(&opts.out, format!("cannot serialise manifest: {e}")))?;
    write_file(&opts.out.join("manifest.json"), &json)
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

pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn write_lines<'a>(path: &Path, lines: impl Iterator<Item = &'a str>) -> Result<()> {
    let text: String = lines.map(|l| format!("{l}\n")).collect();
    write_file(path, text.as_bytes())
}

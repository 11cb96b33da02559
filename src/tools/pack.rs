//! `pixpro data pack`: any input `--data` takes, written once as
//! WebDataset tar shards (`OUT/shard-000000.tar`, ...), optionally with each
//! image shrunk so its longer side is at most `max_side` (what large runs do
//! before pretraining, so that no step decodes a 24-megapixel photo).
//!
//! The images go into the shards in the input's own order, one member each,
//! named `INDEX.EXT` (the WebDataset key is the image's index in the input:
//! source names may hold dots, which would split a key). So a pack of a
//! folder, without resizing, numbers its images as the folder does, and a
//! one-process pretraining on it draws the same batches.
//!
//! The write is resumable and whole-or-nothing per shard: a shard is written
//! under `NAME.tmp` and renamed into place once complete; before the rename
//! its lines are appended to `OUT/index.jsonl` (source, index, shard,
//! member, bytes, resized size), so every shard in place is in the index. A
//! re-run of the same command keeps the shards in place, drops index lines
//! of a shard that never got renamed, and continues with the next image.
//! `OUT/pack.json` holds the settings, so a re-run with other ones is
//! refused rather than mixing two packings.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Cursor, Write};
use std::path::{Path, PathBuf};

use fast_image_resize as fr;
use image::{ImageReader, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::dataset::{decode_rgb, Dataset};
use crate::files::{write_atomically, PartialFile};
use crate::train::progress_bar;
use crate::{Error, Result};

/// Quality of a re-encoded JPEG: high enough that the pixels pretraining
/// sees barely move, as large runs' packing scripts use.
pub const JPEG_QUALITY: u8 = 95;

/// Images prepared (read, maybe resized) in parallel before being written
/// in order.
const CHUNK: usize = 64;

/// What to pack and how.
#[derive(Debug, Clone)]
pub struct PackOptions {
    pub from: PathBuf,
    pub out: PathBuf,
    /// A shard is closed before a member would take it past this many bytes
    /// (a shard holds at least one member, whatever its size).
    pub shard_size: u64,
    /// Longer side, in pixels, above which an image is shrunk and re-encoded.
    pub max_side: Option<u32>,
    pub quiet: bool,
}

/// What a pack did.
#[derive(Debug, Clone, PartialEq)]
pub struct PackSummary {
    /// Images in the shards, from this run and earlier ones.
    pub images: usize,
    pub shards: usize,
    /// Shards that an earlier run had completed.
    pub kept_shards: usize,
    /// Images shrunk to `max_side` by this run.
    pub resized: usize,
    /// Images left out, and why: unreadable at the scan, or, when resizing,
    /// undecodable.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The settings a pack is made with, kept in `OUT/pack.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    from: PathBuf,
    shard_size: u64,
    max_side: Option<u32>,
}

/// One line of `index.jsonl`: where image `index` of the input went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IndexLine {
    source: PathBuf,
    index: usize,
    shard: String,
    member: String,
    bytes: u64,
    /// Width and height after shrinking; absent when the bytes are the
    /// source's own.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    resized: Option<[u32; 2]>,
}

/// Packs `opts.from` into `opts.out` (see the module).
pub fn pack(opts: &PackOptions) -> Result<PackSummary> {
    if opts.shard_size == 0 {
        return Err(Error::config("shard_size", "must be at least one byte"));
    }
    if opts.max_side == Some(0) {
        return Err(Error::config("max_side", "must be at least one pixel"));
    }
    let mut packer = Packer::open(opts)?;
    packer.run()?;
    Ok(packer.summary)
}

/// One pack in progress: the input, the shard being filled, the index.
struct Packer<'a> {
    opts: &'a PackOptions,
    dataset: Dataset,
    /// The next input image to pack.
    next: usize,
    /// The number of the next shard to start.
    shard: usize,
    summary: PackSummary,
}

/// The shard being written, with its index lines.
struct OpenShard {
    name: String,
    tar: tar::Builder<PartialFile>,
    bytes: u64,
    lines: Vec<IndexLine>,
}

/// An input image ready to go into a shard.
struct Prepared {
    index: usize,
    bytes: Vec<u8>,
    ext: String,
    resized: Option<[u32; 2]>,
}

impl<'a> Packer<'a> {
    /// Scans the input and picks up where an earlier run of the same pack
    /// stopped.
    fn open(opts: &'a PackOptions) -> Result<Packer<'a>> {
        let (dataset, report) = Dataset::open(&opts.from)?;
        let settings = Settings {
            from: opts.from.clone(),
            shard_size: opts.shard_size,
            max_side: opts.max_side,
        };
        check_settings(&opts.out, &settings)?;
        let kept = kept_lines(&opts.out)?;
        let next = kept.last().map_or(0, |l| l.index + 1);
        if let Some(last) = kept.last() {
            if last.index >= dataset.len() || dataset.path(last.index) != last.source {
                return Err(Error::data(
                    &opts.out,
                    format!(
                        "the shards here were packed from {} as image {}, which is not what {} \
                         holds now: the input changed; pack into a new --out",
                        last.source.display(),
                        last.index,
                        opts.from.display()
                    ),
                ));
            }
        }
        let shards: std::collections::BTreeSet<&str> =
            kept.iter().map(|l| l.shard.as_str()).collect();
        let summary = PackSummary {
            images: kept.len(),
            shards: shards.len(),
            kept_shards: shards.len(),
            resized: 0,
            skipped: report.bad,
        };
        Ok(Packer { opts, dataset, next, shard: shards.len(), summary })
    }

    /// Packs every image from `next` on, closing a shard whenever the next
    /// member would not fit.
    fn run(&mut self) -> Result<()> {
        let n = self.dataset.len();
        let bar = progress_bar(self.opts.quiet, self.next as u64, n as u64);
        let mut open: Option<OpenShard> = None;
        while self.next < n {
            let end = (self.next + CHUNK).min(n);
            let prepared: Vec<_> = (self.next..end)
                .into_par_iter()
                .map(|i| (i, prepare(&self.dataset, i, self.opts.max_side)))
                .collect();
            for (i, res) in prepared {
                let item = match res {
                    Ok(item) => item,
                    Err(e) => {
                        tracing::warn!("{}: left out: {e}", self.dataset.path(i).display());
                        self.summary.skipped.push((self.dataset.path(i), e.to_string()));
                        continue;
                    }
                };
                let size = member_size(item.bytes.len() as u64);
                if open.as_ref().is_some_and(|s| s.bytes + size > self.opts.shard_size) {
                    let full = open.take().expect("checked just above");
                    self.close(full)?;
                }
                let shard = match &mut open {
                    Some(shard) => shard,
                    None => open.insert(self.start_shard()?),
                };
                self.append(shard, item)?;
                bar.set_message(shard.name.clone());
            }
            bar.set_position(end as u64);
            self.next = end;
        }
        if let Some(last) = open {
            self.close(last)?;
        }
        bar.finish_and_clear();
        Ok(())
    }

    fn start_shard(&mut self) -> Result<OpenShard> {
        let name = format!("shard-{:06}.tar", self.shard);
        self.shard += 1;
        let file = PartialFile::create(&self.opts.out.join(&name))?;
        Ok(OpenShard { name, tar: tar::Builder::new(file), bytes: 0, lines: Vec::new() })
    }

    fn append(&mut self, shard: &mut OpenShard, item: Prepared) -> Result<()> {
        let member = format!("{:08}.{}", item.index, item.ext);
        let mut header = tar::Header::new_ustar();
        header.set_size(item.bytes.len() as u64);
        header.set_mode(0o644);
        // No time stamp, owner or other state of this machine: the same
        // input packs to the same bytes.
        header.set_mtime(0);
        let path = self.opts.out.join(&shard.name);
        shard
            .tar
            .append_data(&mut header, &member, item.bytes.as_slice())
            .map_err(|e| Error::io(&path, e))?;
        shard.bytes += member_size(item.bytes.len() as u64);
        shard.lines.push(IndexLine {
            source: self.dataset.path(item.index),
            index: item.index,
            shard: shard.name.clone(),
            member,
            bytes: item.bytes.len() as u64,
            resized: item.resized,
        });
        self.summary.images += 1;
        self.summary.resized += usize::from(item.resized.is_some());
        Ok(())
    }

    /// Ends the shard's archive, records its lines in the index, then renames
    /// it into place (in that order: see the module).
    fn close(&mut self, shard: OpenShard) -> Result<()> {
        let path = self.opts.out.join(&shard.name);
        let file = shard.tar.into_inner().map_err(|e| Error::io(&path, e))?;
        let index = self.opts.out.join(INDEX);
        let mut text = String::new();
        for line in &shard.lines {
            text += &serde_json::to_string(line).expect("an index line is always serialisable");
            text.push('\n');
        }
        let appended = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()));
        appended.map_err(|e| Error::io(&index, e))?;
        file.commit()?;
        self.summary.shards += 1;
        Ok(())
    }
}

const INDEX: &str = "index.jsonl";
const SETTINGS: &str = "pack.json";

/// Bytes a member takes in a tar: its header block and its data padded to
/// whole blocks.
fn member_size(bytes: u64) -> u64 {
    512 + bytes.div_ceil(512) * 512
}

/// Writes `settings` for a new pack, or checks them against an earlier one.
fn check_settings(out: &Path, settings: &Settings) -> Result<()> {
    let path = out.join(SETTINGS);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let earlier: Settings = serde_json::from_str(&text)
                .map_err(|e| Error::data(&path, format!("not a pack's settings: {e}")))?;
            if &earlier != settings {
                return Err(Error::data(
                    out,
                    format!(
                        "was packed with other settings ({}); run the same command to continue \
                         it, or pack into a new --out",
                        text.trim()
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Shards written among other files would be read with them, or
            // refused as a mix (`data::sources`); a typo must not do that.
            let other = std::fs::read_dir(out).ok().and_then(|mut d| d.next());
            if let Some(Ok(entry)) = other {
                return Err(Error::data(
                    out,
                    format!(
                        "holds {} and no pack ({SETTINGS}): pack into a new or empty folder",
                        entry.path().display()
                    ),
                ));
            }
            let text = serde_json::to_string(settings).expect("settings are always serialisable");
            write_atomically(&path, text.as_bytes())
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The index lines of the shards in place, up to the first one that is
/// not; the index is rewritten without the others (a shard that was never
/// renamed into place, a line cut by a crash).
fn kept_lines(out: &Path) -> Result<Vec<IndexLine>> {
    let path = out.join(INDEX);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let raw: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(&path, e))?;
    let mut kept = Vec::with_capacity(raw.len());
    let mut dropped = false;
    for (k, text) in raw.iter().enumerate() {
        let line: IndexLine = match serde_json::from_str(text) {
            Ok(line) => line,
            // Only the last line can be cut short by a crash.
            Err(_) if k + 1 == raw.len() => {
                dropped = true;
                break;
            }
            Err(e) => return Err(Error::data(&path, format!("line {}: {e}", k + 1))),
        };
        // Lines are in shard order: from the first shard not in place on
        // (never renamed, or removed since), everything is packed again, so
        // the shards stay numbered without a gap.
        if !out.join(&line.shard).is_file() {
            dropped = true;
            break;
        }
        kept.push(line);
    }
    if dropped {
        let mut text = String::new();
        for line in &kept {
            text += &serde_json::to_string(line).expect("an index line is always serialisable");
            text.push('\n');
        }
        write_atomically(&path, text.as_bytes())?;
    }
    Ok(kept)
}

/// Image `i`'s bytes for its member: its own, or, when its longer side is
/// over `max_side`, shrunk (upright, as the loader would see it) and
/// re-encoded as JPEG.
fn prepare(ds: &Dataset, i: usize, max_side: Option<u32>) -> Result<Prepared> {
    let bytes = ds.read(i)?;
    let name = ds.path(i);
    let ext = name.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let image_error = |reason: String| Error::Image { path: name.clone(), reason };
    let Some(max_side) = max_side else {
        return Ok(Prepared { index: i, bytes, ext, resized: None });
    };
    let (w, h) = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| image_error(e.to_string()))?
        .into_dimensions()
        .map_err(|e| image_error(e.to_string()))?;
    if w.max(h) <= max_side {
        return Ok(Prepared { index: i, bytes, ext, resized: None });
    }
    let img = decode_rgb(&bytes).map_err(image_error)?;
    let small = shrink(&img, max_side);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&small)
        .map_err(|e| image_error(format!("re-encoding: {e}")))?;
    let resized = Some([small.width(), small.height()]);
    Ok(Prepared { index: i, bytes: jpeg, ext: "jpg".into(), resized })
}

/// `img` scaled so its longer side is `max_side`, the other in proportion
/// (rounded, at least 1), with an antialiased filter (Lanczos3, as PIL's
/// `thumbnail` and the packing scripts of large runs use).
pub fn shrink(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let scale = f64::from(max_side) / f64::from(w.max(h));
    let side = |s: u32| ((f64::from(s) * scale).round() as u32).clamp(1, max_side);
    let (nw, nh) = (side(w), side(h));
    let src = fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3)
        .expect("an RgbImage buffer always matches its dimensions");
    let mut dst = fr::images::Image::new(nw, nh, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
    fr::Resizer::new().resize(&src, &mut dst, &options).expect("both images are RGB8");
    RgbImage::from_raw(nw, nh, dst.into_vec()).expect("the resizer fills nw x nh RGB8 pixels")
}

/// Parses a shard size such as `1GB`, `500MB`, `64KiB` or `4096` (bytes):
/// decimal units (kB/KB, MB, GB, TB) and binary ones (KiB, MiB, GiB, TiB).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` does not start with a number"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{unit}` in `{text}` is not a unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = (value * scale as f64).round();
    if bytes < 1.0 {
        return Err(format!("`{text}` is less than a byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5 MB"), Ok(1_500_000));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("GB").is_err());
        assert!(parse_size("3 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn shrink_keeps_the_aspect_and_caps_the_longer_side() {
        let img = RgbImage::from_pixel(400, 300, Rgb([10, 200, 30]));
        let small = shrink(&img, 100);
        assert_eq!(small.dimensions(), (100, 75));
        assert_eq!(small.get_pixel(50, 37), &Rgb([10, 200, 30]));
        assert_eq!(shrink(&RgbImage::new(1000, 2), 10).dimensions(), (10, 1));
    }
}

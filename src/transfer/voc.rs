//! Reader of the Pascal VOC 2012 segmentation layout (data.md, "The
//! evaluation task"): `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`
//! holding class indices (255 = ignore), `ImageSets/Segmentation/<split>.txt`.
//!
//! Real VOC masks are paletted PNGs whose palette *indices* are the class
//! ids; the `image` crate expands palettes to colours, so masks are decoded
//! with the `png` crate and no transformation. 8-bit greyscale masks (what
//! our TuxSeg builder writes) hold the ids directly and are read the same way.
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// The label of pixels that count for no class (object boundaries in VOC).
pub const IGNORE: u8 = 255;

/// Pascal VOC 2012 class names, index = class id.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Class names of a dataset: `classes.txt` (one name per line, line i names
/// class i, blank lines skipped) in `root`, else in its parent, else VOC's 21.
pub fn class_names(root: &Path) -> Result<Vec<String>> {
    let candidates = [Some(root.join("classes.txt")), root.parent().map(|p| p.join("classes.txt"))];
    for path in candidates.into_iter().flatten() {
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let names: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.is_empty() {
            return Err(Error::data(&path, "lists no class names"));
        }
        if let Some(dup) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
            return Err(Error::data(&path, format!("class name `{}` given twice", dup.1)));
        }
        if names.len() > IGNORE as usize {
            return Err(Error::data(
                &path,
                format!("lists {} classes; masks hold at most 255 (255 = ignore)", names.len()),
            ));
        }
        return Ok(names);
    }
    Ok(VOC_CLASSES.iter().map(|s| s.to_string()).collect())
}

/// A VOC folder's class names with its `train` and `val` splits, what
/// every evaluation that trains or remembers on train and scores val reads.
pub fn train_val(root: &Path) -> Result<(Vec<String>, VocSplit, VocSplit)> {
    let classes = class_names(root)?;
    let train = VocSplit::open(root, "train", classes.len())?;
    let val = VocSplit::open(root, "val", classes.len())?;
    Ok((classes, train, val))
}

/// One labelled image: `mask` is row-major, the image's size, one class id
/// (or [`IGNORE`]) per pixel.
#[derive(Debug, Clone)]
pub struct VocSample {
    pub id: String,
    pub image: RgbImage,
    pub mask: Vec<u8>,
}

/// The ids of one split, checked to have an image and a mask each; samples
/// are decoded on demand.
#[derive(Debug, Clone)]
pub struct VocSplit {
    root: PathBuf,
    split: String,
    ids: Vec<String>,
    num_classes: usize,
}

impl VocSplit {
    /// Lists `ImageSets/Segmentation/<split>.txt` and checks that every id has
    /// both files, so a broken folder fails before any work is done.
    pub fn open(root: impl AsRef<Path>, split: &str, num_classes: usize) -> Result<VocSplit> {
        let root = root.as_ref().to_path_buf();
        if num_classes == 0 || num_classes > IGNORE as usize {
            return Err(Error::config(
                "num_classes",
                format!("{num_classes} is not in 1..=255 (255 is the ignore label)"),
            ));
        }
        let list = root.join("ImageSets").join("Segmentation").join(format!("{split}.txt"));
        if !list.is_file() {
            return Err(Error::data(&list, format!("split file of split `{split}` not found")));
        }
        let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
        let ids: Vec<String> = text
            .lines()
            // VOC's own lists may carry a second column; the id is the first.
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect();
        if ids.is_empty() {
            return Err(Error::data(&list, "lists no image ids"));
        }
        let out = VocSplit { root, split: split.to_string(), ids, num_classes };
        for id in &out.ids {
            for path in [out.image_path(id), out.mask_path(id)] {
                if !path.is_file() {
                    return Err(Error::data(
                        &path,
                        format!("not found (listed as `{id}` in {})", list.display()),
                    ));
                }
            }
        }
        Ok(out)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn split(&self) -> &str {
        &self.split
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn image_path(&self, id: &str) -> PathBuf {
        self.root.join("JPEGImages").join(format!("{id}.jpg"))
    }

    pub fn mask_path(&self, id: &str) -> PathBuf {
        self.root.join("SegmentationClass").join(format!("{id}.png"))
    }

    /// Decodes sample `index` (in split-file order) and checks its mask.
    pub fn get(&self, index: usize) -> Result<VocSample> {
        let id = self.ids.get(index).ok_or_else(|| {
            Error::data(
                &self.root,
                format!("sample {index} asked of split `{}` with {}", self.split, self.ids.len()),
            )
        })?;
        let image_path = self.image_path(id);
        let image = image::open(&image_path)
            .map_err(|e| Error::Image { path: image_path.clone(), reason: e.to_string() })?
            .to_rgb8();
        let mask_path = self.mask_path(id);
        let (mw, mh, mask) = read_mask(&mask_path)?;
        if (mw, mh) != image.dimensions() {
            return Err(Error::data(
                &mask_path,
                format!(
                    "mask is {mw}x{mh} but its image {} is {}x{}",
                    image_path.display(),
                    image.width(),
                    image.height()
                ),
            ));
        }
        if let Some(i) =
            mask.iter().position(|&v| v != IGNORE && usize::from(v) >= self.num_classes)
        {
            let (x, y) = (i % mw as usize, i / mw as usize);
            return Err(Error::data(
                &mask_path,
                format!(
                    "value {} at pixel ({x}, {y}) is neither a class id below {} nor {IGNORE} \
                     (ignore)",
                    mask[i], self.num_classes
                ),
            ));
        }
        Ok(VocSample { id: id.clone(), image, mask })
    }

    /// All samples in split-file order.
    pub fn iter(&self) -> impl Iterator<Item = Result<VocSample>> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }
}

/// The indices (ascending) of the images of a split of `n` that `fraction`
/// and `seed` pick (fine-tuning's `train_fraction`, a held-out part): the first ceil(fraction * n), at least 1, of a seeded
/// shuffle, so a seed's subset for a smaller fraction lies inside the one
/// for a larger fraction.
pub fn seeded_subset(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    // The slack keeps 0.1 * 30 (3.0000000000000004 in floating point) at 3.
    let count = ((fraction * n as f64 - 1e-9).ceil().max(1.0) as usize).min(n);
    order.truncate(count);
    order.sort_unstable();
    order
}

/// Reads a mask PNG as raw values: palette indices of a paletted PNG, or grey
/// levels of a greyscale one (1, 2, 4 or 8 bits). Returns (width, height,
/// row-major values).
pub fn read_mask(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let bad = |reason: String| Error::Image { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    // IDENTITY keeps palette indices instead of expanding them to colours.
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let size = reader.output_buffer_size().ok_or_else(|| bad("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(e.to_string()))?;
    match info.color_type {
        png::ColorType::Indexed | png::ColorType::Grayscale => {}
        other => {
            return Err(bad(format!(
                "a mask must be a paletted or greyscale PNG of class ids, this one is {other:?}"
            )))
        }
    }
    let bits = info.bit_depth as usize;
    if bits > 8 {
        return Err(bad(format!("{bits}-bit mask; class ids need 8 bits at most")));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let per_byte = 8 / bits;
    let value_mask = ((1u16 << bits) - 1) as u8;
    let mut out = Vec::with_capacity(w * h);
    for row in buf.chunks_exact(info.line_size).take(h) {
        // Sub-byte depths pack pixels most significant bits first.
        out.extend((0..w).map(|x| {
            let shift = 8 - bits * (x % per_byte + 1);
            (row[x / per_byte] >> shift) & value_mask
        }));
    }
    Ok((info.width, info.height, out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (id, split, RGB pixels, mask) of one test image.
    pub(crate) type Sample<'a> = (&'a str, &'a str, Vec<[u8; 3]>, Vec<u8>);

    /// Writes a VOC-layout folder of `w`x`h` samples; masks are written as
    /// paletted PNGs like real VOC.
    pub(crate) fn write_voc(root: &Path, w: u32, h: u32, samples: &[Sample]) {
        for dir in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let mut lists: std::collections::BTreeMap<&str, String> = Default::default();
        for (id, split, rgb, mask) in samples {
            let flat: Vec<u8> = rgb.iter().flatten().copied().collect();
            let img = RgbImage::from_raw(w, h, flat).unwrap();
            img.save(root.join("JPEGImages").join(format!("{id}.jpg"))).unwrap();
            write_paletted(&root.join("SegmentationClass").join(format!("{id}.png")), w, h, mask);
            lists.entry(split).or_default().push_str(&format!("{id}\n"));
        }
        for (split, text) in lists {
            let path = root.join("ImageSets/Segmentation").join(format!("{split}.txt"));
            std::fs::write(path, text).unwrap();
        }
    }

    /// An 8-bit paletted PNG whose palette colours differ from the indices,
    /// so reading colours instead of indices would fail the tests.
    pub(crate) fn write_paletted(path: &Path, w: u32, h: u32, values: &[u8]) {
        let file = std::io::BufWriter::new(File::create(path).unwrap());
        let mut enc = png::Encoder::new(file, w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        let palette: Vec<u8> =
            (0..=255u8).flat_map(|i| [i.wrapping_mul(37), 255 - i, i ^ 0x5a]).collect();
        enc.set_palette(palette);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(values).unwrap();
    }

    fn uniform(w: u32, h: u32, c: [u8; 3]) -> Vec<[u8; 3]> {
        vec![c; (w * h) as usize]
    }

    #[test]
    fn a_fraction_picks_a_seeded_nested_subset() {
        let a = seeded_subset(30, 0.1, 5);
        assert_eq!(a.len(), 3);
        assert_eq!(a, seeded_subset(30, 0.1, 5));
        assert_ne!(a, seeded_subset(30, 0.1, 6));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&i| i < 30), "{a:?}");
        let half = seeded_subset(30, 0.5, 5);
        assert_eq!(half.len(), 15);
        assert!(a.iter().all(|i| half.contains(i)), "{a:?} not in {half:?}");
        assert_eq!(seeded_subset(30, 1.0, 5), (0..30).collect::<Vec<_>>());
        assert_eq!(seeded_subset(300, 0.001, 5).len(), 1);
        assert_eq!(seeded_subset(7, 0.5, 5).len(), 4);
    }

    #[test]
    fn reads_palette_indices_not_colours() {
        let dir = tempfile::tempdir().unwrap();
        let mask = vec![0, 1, 2, 255, 20, 0];
        write_voc(dir.path(), 3, 2, &[("a", "train", uniform(3, 2, [9, 9, 9]), mask.clone())]);
        let split = VocSplit::open(dir.path(), "train", 21).unwrap();
        let s = split.get(0).unwrap();
        assert_eq!(s.id, "a");
        assert_eq!(s.image.dimensions(), (3, 2));
        assert_eq!(s.mask, mask);
    }

    #[test]
    fn reads_greyscale_and_packed_masks() {
        let dir = tempfile::tempdir().unwrap();
        let grey = dir.path().join("g.png");
        image::GrayImage::from_raw(2, 2, vec![0, 3, 255, 1]).unwrap().save(&grey).unwrap();
        assert_eq!(read_mask(&grey).unwrap(), (2, 2, vec![0, 3, 255, 1]));

        // 2-bit paletted, 5 pixels wide so a row ends mid-byte.
        let packed = dir.path().join("p.png");
        let file = std::io::BufWriter::new(File::create(&packed).unwrap());
        let mut enc = png::Encoder::new(file, 5, 1);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Two);
        enc.set_palette(vec![0u8; 12]);
        let mut writer = enc.write_header().unwrap();
        // values 1,2,3,0 | 2
        writer.write_image_data(&[0b01_10_11_00, 0b10_00_00_00]).unwrap();
        drop(writer);
        assert_eq!(read_mask(&packed).unwrap(), (5, 1, vec![1, 2, 3, 0, 2]));
    }

    #[test]
    fn class_names_from_file_or_voc() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("voc");
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(class_names(&root).unwrap().len(), 21);
        std::fs::write(dir.path().join("classes.txt"), "background\nfruit\n\nbird\n").unwrap();
        assert_eq!(class_names(&root).unwrap(), ["background", "fruit", "bird"]);
        std::fs::write(root.join("classes.txt"), "bg\nthing\n").unwrap();
        assert_eq!(class_names(&root).unwrap(), ["bg", "thing"]);
        std::fs::write(root.join("classes.txt"), "bg\nthing\nbg\n").unwrap();
        let e = class_names(&root).unwrap_err().to_string();
        assert!(e.contains("classes.txt") && e.contains("`bg` given twice"), "{e}");
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_voc(root, 2, 2, &[("ok", "train", uniform(2, 2, [1, 2, 3]), vec![0, 1, 2, 255])]);

        let e = err_text(VocSplit::open(root, "val", 21));
        assert!(e.contains("ImageSets/Segmentation/val.txt"), "{e}");

        // Listed id without an image, then without a mask.
        std::fs::write(root.join("ImageSets/Segmentation/val.txt"), "ok\nghost\n").unwrap();
        let e = err_text(VocSplit::open(root, "val", 21));
        assert!(e.contains("JPEGImages/ghost.jpg") && e.contains("ghost"), "{e}");
        std::fs::copy(root.join("JPEGImages/ok.jpg"), root.join("JPEGImages/ghost.jpg")).unwrap();
        let e = err_text(VocSplit::open(root, "val", 21));
        assert!(e.contains("SegmentationClass/ghost.png"), "{e}");

        // Mask of another size: both sizes and both files in the message.
        write_paletted(&root.join("SegmentationClass/ghost.png"), 3, 2, &[0; 6]);
        let split = VocSplit::open(root, "val", 21).unwrap();
        let e = err_text(split.get(1));
        assert!(e.contains("SegmentationClass/ghost.png") && e.contains("3x2"), "{e}");
        assert!(e.contains("JPEGImages/ghost.jpg") && e.contains("2x2"), "{e}");

        // Value 2 is not a class when there are 2 classes; 255 is fine.
        let split = VocSplit::open(root, "train", 2).unwrap();
        let e = err_text(split.get(0));
        assert!(e.contains("SegmentationClass/ok.png") && e.contains("value 2"), "{e}");
        assert!(VocSplit::open(root, "train", 3).unwrap().get(0).is_ok());

        // A colour PNG is not a mask.
        image::RgbImage::new(2, 2).save(root.join("SegmentationClass/ok.png")).unwrap();
        let e = err_text(split.get(0));
        assert!(e.contains("SegmentationClass/ok.png") && e.contains("paletted"), "{e}");
    }
}

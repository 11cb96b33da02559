//! The unlabelled photos `--data` names: find them, check them up front,
//! decode one to RGB8 on demand (the input side of spec section 1).
//!
//! Whatever holds them ([`crate::data::sources`]: a folder tree, tar shards,
//! a zip archive, a list of files), the images are numbered once, in a
//! fixed order, so that an index means the same image on every machine and
//! every run; the loader only ever asks for image `i`.
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use rayon::prelude::*;

use crate::data::archive::ZipImages;
use crate::data::jpeg::{self, Placement};
use crate::data::shards::Shards;
use crate::data::sources::{self, Source};
use crate::{Error, Result};

/// File name extensions we treat as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Largest image we agree to decode. Generous enough for a 100 MP camera
/// file, small enough that a decompression bomb (a few KB claiming
/// 50000 x 50000 pixels) is refused before anything is allocated.
pub const MAX_MEGAPIXELS: u64 = 200;

/// Bytes per pixel of the widest colour type we accept (RGBA, 16 bits), so
/// the decoder's allocation limit follows from [`MAX_MEGAPIXELS`].
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// How much of an archive member the scan reads to check its header: the
/// whole header of nearly every photo (an EXIF block with its thumbnail is
/// at most 64 KiB), without reading the whole of large ones. A header that
/// is longer is read whole (see [`check_header_of`]).
pub(crate) const HEADER_BYTES: usize = 64 * 1024;

/// What a scan found besides the usable images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanReport {
    /// Images whose header cannot be read, and why: files, or archive
    /// members named `ARCHIVE/MEMBER`.
    pub bad: Vec<(PathBuf, String)>,
    /// Files (or members) that do not have an image extension.
    pub other_files: usize,
    /// Shards that hold no image: not an error, but worth a look.
    pub empty: Vec<PathBuf>,
}

/// The readable images of one input, in a fixed order.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    images: Images,
}

/// Where the images are: each kind reads its own.
#[derive(Debug, Clone)]
enum Images {
    /// Loose files: a folder tree (sorted) or a list (in its order).
    Files(Vec<PathBuf>),
    Shards(Shards),
    Zip(ZipImages),
}

impl Dataset {
    /// Finds every JPEG/PNG/WebP file under `root` (any depth, following
    /// symbolic links) and reads each header in parallel, so that a broken
    /// file is reported now rather than hours into training.
    ///
    /// Fails when `root` is missing or is not a folder, or when it holds no
    /// readable image; unreadable images otherwise go to [`ScanReport::bad`].
    pub fn scan(root: &Path) -> Result<(Dataset, ScanReport)> {
        let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
        if !meta.is_dir() {
            return Err(Error::data(root, "is not a folder"));
        }

        let mut candidates = Vec::new();
        let mut report = ScanReport::default();
        for entry in walkdir::WalkDir::new(root).follow_links(true) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // A symlink loop or an unreadable sub-folder should not
                    // hide the rest of the data set; it is reported instead.
                    let path = e.path().unwrap_or(root).to_path_buf();
                    report.bad.push((path, e.to_string()));
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            if has_image_extension(entry.path()) {
                candidates.push(entry.into_path());
            } else {
                report.other_files += 1;
            }
        }
        candidates.sort();
        let paths = check_files(candidates, &mut report);
        finish(root, Images::Files(paths), report)
    }

    /// The images of any input [`sources::Source::of`] recognises: a folder
    /// tree as [`Dataset::scan`], tar shards, a zip archive or a list of
    /// files, each checked the same way up front.
    pub fn open(input: &Path) -> Result<(Dataset, ScanReport)> {
        let mut report = ScanReport::default();
        let images = match Source::of(input)? {
            Source::Folder(root) => return Dataset::scan(&root),
            Source::Shards(files) => Images::Shards(Shards::scan(files, &mut report)?),
            Source::Zip(path) => Images::Zip(ZipImages::scan(&path, &mut report)?),
            Source::List(path) => {
                let mut candidates = Vec::new();
                for file in sources::read_list(&path)? {
                    if has_image_extension(&file) {
                        candidates.push(file);
                    } else {
                        report.other_files += 1;
                    }
                }
                Images::Files(check_files(candidates, &mut report))
            }
        };
        finish(input, images, report)
    }

    /// The input this data set was read from, as given.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of readable images.
    pub fn len(&self) -> usize {
        match &self.images {
            Images::Files(paths) => paths.len(),
            Images::Shards(shards) => shards.len(),
            Images::Zip(zip) => zip.len(),
        }
    }

    /// Always false: a data set without images is refused when opened.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Name of image `i`: its file, or `ARCHIVE/MEMBER` for a member of a
    /// shard or zip. Panics when `i >= len()`, like slice indexing.
    pub fn path(&self, i: usize) -> PathBuf {
        match &self.images {
            Images::Files(paths) => paths[i].clone(),
            Images::Shards(shards) => shards.name(i),
            Images::Zip(zip) => zip.name(i),
        }
    }

    /// The encoded bytes of image `i`, as stored. Panics when `i >= len()`.
    pub fn read(&self, i: usize) -> Result<Vec<u8>> {
        match &self.images {
            Images::Files(paths) => std::fs::read(&paths[i]).map_err(|e| Error::io(&paths[i], e)),
            Images::Shards(shards) => shards.read(i),
            Images::Zip(zip) => zip.read(i),
        }
    }

    /// Decodes image `i` to RGB8, upright. Panics when `i >= len()`.
    pub fn load(&self, i: usize) -> Result<RgbImage> {
        if let Images::Files(paths) = &self.images {
            return load_rgb(&paths[i]);
        }
        let bytes = self.read(i)?;
        decode_rgb(&bytes).map_err(|reason| Error::Image { path: self.path(i), reason })
    }

    /// The images of each tar shard (`ranges[s]` are shard `s`'s), or none
    /// for an input that is not sharded: what the loader splits over ranks.
    pub fn shard_ranges(&self) -> &[Range<usize>] {
        match &self.images {
            Images::Shards(shards) => shards.ranges(),
            Images::Files(_) | Images::Zip(_) => &[],
        }
    }
}

/// Reads the header of every candidate file in parallel: the readable ones,
/// in the order given; the others go to `report.bad`.
fn check_files(candidates: Vec<PathBuf>, report: &mut ScanReport) -> Vec<PathBuf> {
    let checked: Vec<_> = candidates
        .into_par_iter()
        .map(|p| {
            let res = check_header(&p);
            (p, res)
        })
        .collect();
    let mut paths = Vec::with_capacity(checked.len());
    for (path, res) in checked {
        match res {
            Ok(()) => paths.push(path),
            Err(reason) => report.bad.push((path, reason)),
        }
    }
    paths
}

/// The data set, or an error saying what was found instead of images.
fn finish(root: &Path, images: Images, report: ScanReport) -> Result<(Dataset, ScanReport)> {
    let dataset = Dataset { root: root.to_path_buf(), images };
    if dataset.is_empty() {
        let reason = match report.bad.first() {
            Some((first, why)) => format!(
                "none of the {} images could be read; first: {}: {why}",
                report.bad.len(),
                first.strip_prefix(root).unwrap_or(first).display()
            ),
            None if !report.empty.is_empty() => {
                format!("all {} shards hold no images", report.empty.len())
            }
            None => {
                format!("no JPEG/PNG/WebP images found ({} other files)", report.other_files)
            }
        };
        return Err(Error::data(root, reason));
    }
    Ok((dataset, report))
}

pub(crate) fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_MEGAPIXELS * 1_000_000 * MAX_BYTES_PER_PIXEL);
    limits
}

fn open(
    path: &Path,
) -> std::result::Result<ImageReader<std::io::BufReader<std::fs::File>>, String> {
    // The content decides the format: photo collections often hold PNGs
    // named .jpg, which the extension alone would send to the wrong decoder.
    let mut reader =
        ImageReader::open(path).and_then(|r| r.with_guessed_format()).map_err(|e| e.to_string())?;
    reader.limits(limits());
    Ok(reader)
}

fn check_size(width: u32, height: u32) -> std::result::Result<(), String> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(format!("image is {width} x {height} pixels"));
    }
    if pixels > MAX_MEGAPIXELS * 1_000_000 {
        return Err(format!(
            "image is {width} x {height} pixels ({} MP), more than the {MAX_MEGAPIXELS} MP we decode",
            pixels / 1_000_000
        ));
    }
    Ok(())
}

/// Reads only the header: cheap enough to run on every file at start-up.
fn check_header(path: &Path) -> std::result::Result<(), String> {
    let (w, h) = open(path)?.into_dimensions().map_err(|e| e.to_string())?;
    check_size(w, h)
}

/// [`check_header`] for an image held in an archive, from `head`, its
/// first [`HEADER_BYTES`] (or all of its `size` bytes if fewer). A header
/// longer than that fails on `head` alone, so then the whole image is read
/// with `whole` and checked again: the verdict is the one of a full read.
pub(crate) fn check_header_of(
    head: &[u8],
    size: u64,
    whole: &mut dyn FnMut() -> std::io::Result<Vec<u8>>,
) -> std::result::Result<(), String> {
    let check = |bytes: &[u8]| {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        reader.limits(limits());
        let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
        check_size(w, h)
    };
    match check(head) {
        Err(_) if (head.len() as u64) < size => check(&whole().map_err(|e| e.to_string())?),
        verdict => verdict,
    }
}

/// Decodes any supported file to RGB8 with its EXIF orientation applied
/// (JPEGs by libjpeg-turbo, as PIL decodes them; see [`Opened`]).
/// Alpha is dropped (not composited), 16-bit and grey images are converted.
/// A JPEG cut short (an interrupted copy or download) is an error, although
/// the decoder would return it with the missing rows grey.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes).map_err(|reason| Error::Image { path: path.to_path_buf(), reason })
}

/// [`load_rgb`] on the bytes of a file already read: the decoded image, or
/// why it cannot be decoded (without the file name, which the caller adds).
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    Ok(Opened::new(bytes)?.decode(1)?.0)
}

/// An image read as far as its upright size, to be decoded at the size its
/// use needs: a JPEG by libjpeg-turbo, whole or reduced (`jpeg`), anything
/// else (PNG, WebP, and the CMYK JPEGs libjpeg cannot turn into RGB) by the
/// `image` crate, whole, at once.
pub struct Opened<'a> {
    bytes: &'a [u8],
    kind: Kind,
}

enum Kind {
    Jpeg { stored: (u32, u32), orientation: Orientation },
    Decoded(RgbImage),
}

impl<'a> Opened<'a> {
    /// Reads the header (a JPEG's) or the whole image (any other): its size
    /// and, for a JPEG, that it is complete.
    pub fn new(bytes: &'a [u8]) -> std::result::Result<Opened<'a>, String> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        if reader.format() == Some(ImageFormat::Jpeg) {
            if !jpeg::is_complete(bytes) {
                return Err(
                    "JPEG file is truncated (no end-of-image marker after the image data)".into()
                );
            }
            if let Some(stored) = jpeg::size(bytes, 1)? {
                check_size(stored.0, stored.1)?;
                let orientation = jpeg::orientation(bytes);
                return Ok(Opened { bytes, kind: Kind::Jpeg { stored, orientation } });
            }
        }
        Ok(Opened { bytes, kind: Kind::Decoded(decode_with_image_crate(reader)?) })
    }

    /// Width and height upright (EXIF orientation applied).
    pub fn dimensions(&self) -> (u32, u32) {
        match &self.kind {
            Kind::Jpeg { stored: (w, h), orientation } => {
                if jpeg::turns(*orientation) {
                    (*h, *w)
                } else {
                    (*w, *h)
                }
            }
            Kind::Decoded(img) => img.dimensions(),
        }
    }

    /// The image upright at 1/`denom` of its size (1, 2, 4 or 8), or whole
    /// if it is not a JPEG, with where its pixels sit on the whole image.
    pub fn decode(self, denom: u32) -> std::result::Result<(RgbImage, Placement), String> {
        let (stored, orientation) = match self.kind {
            Kind::Decoded(img) => return Ok((img, Placement::IDENTITY)),
            Kind::Jpeg { stored, orientation } => (stored, orientation),
        };
        let img = jpeg::decode(self.bytes, denom, check_size)?
            .ok_or("libjpeg read the header but not the colour space of the image")?;
        let at = Placement::of(denom, stored, img.dimensions(), orientation);
        let mut img = DynamicImage::ImageRgb8(img);
        img.apply_orientation(orientation);
        Ok((img.into_rgb8(), at))
    }
}

/// Any format `image` reads, to RGB8 with its EXIF orientation applied.
/// Alpha is dropped (not composited), 16-bit and grey images are converted.
fn decode_with_image_crate(
    mut reader: ImageReader<Cursor<&[u8]>>,
) -> std::result::Result<RgbImage, String> {
    reader.limits(limits());
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    check_size(w, h)?;
    // A malformed EXIF block should not cost us an otherwise good photo.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageBuffer, Luma, Rgb, Rgba, RgbaImage};

    fn write_rgb(path: &Path, w: u32, h: u32) {
        RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 7])).save(path).unwrap();
    }

    #[test]
    fn scan_finds_nested_images_sorted_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/deep")).unwrap();
        write_rgb(&root.join("b/deep/z.PNG"), 5, 4);
        write_rgb(&root.join("a.jpg"), 8, 8);
        write_rgb(&root.join("b/m.JPEG"), 8, 8);
        std::fs::write(root.join("notes.txt"), "hello").unwrap();
        std::fs::write(root.join("broken.png"), "not a png at all").unwrap();

        let (ds, report) = Dataset::scan(root).unwrap();
        let names: Vec<_> =
            (0..ds.len()).map(|i| ds.path(i).strip_prefix(root).unwrap().to_path_buf()).collect();
        assert_eq!(
            names,
            vec![PathBuf::from("a.jpg"), PathBuf::from("b/deep/z.PNG"), PathBuf::from("b/m.JPEG")]
        );
        assert_eq!(report.other_files, 1);
        assert_eq!(report.bad.len(), 1);
        assert!(report.bad[0].0.ends_with("broken.png"));
        assert_eq!(ds.load(1).unwrap().dimensions(), (5, 4));
    }

    #[test]
    #[cfg(unix)]
    fn scan_follows_symlinked_folders() {
        let data = tempfile::tempdir().unwrap();
        write_rgb(&data.path().join("x.png"), 3, 3);
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(data.path(), dir.path().join("linked")).unwrap();
        let (ds, _) = Dataset::scan(dir.path()).unwrap();
        assert_eq!(ds.len(), 1);
    }

    #[test]
    fn scan_errors_say_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        let msg = Dataset::scan(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("no JPEG/PNG/WebP images found (1 other files)"), "{msg}");

        std::fs::write(dir.path().join("a.jpg"), "not a jpeg").unwrap();
        let msg = Dataset::scan(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("none of the 1 images could be read; first: a.jpg"), "{msg}");

        let missing = dir.path().join("nope");
        let msg = Dataset::scan(&missing).unwrap_err().to_string();
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn load_converts_any_colour_type_to_rgb8() {
        let dir = tempfile::tempdir().unwrap();
        let gray = dir.path().join("g.png");
        GrayImage::from_pixel(4, 3, Luma([200])).save(&gray).unwrap();
        let rgba = dir.path().join("a.png");
        RgbaImage::from_pixel(4, 3, Rgba([10, 20, 30, 0])).save(&rgba).unwrap();
        let deep = dir.path().join("d.png");
        ImageBuffer::<Luma<u16>, _>::from_pixel(4, 3, Luma([65535u16])).save(&deep).unwrap();

        assert_eq!(load_rgb(&gray).unwrap().get_pixel(1, 1), &Rgb([200, 200, 200]));
        assert_eq!(load_rgb(&rgba).unwrap().get_pixel(1, 1), &Rgb([10, 20, 30]));
        assert_eq!(load_rgb(&deep).unwrap().get_pixel(1, 1), &Rgb([255, 255, 255]));
    }

    /// A JPEG whose EXIF says "rotate 90 degrees clockwise to display"
    /// (orientation 6), as phones write portrait photos.
    #[test]
    fn exif_orientation_is_applied() {
        use image::ImageEncoder;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portrait.jpg");
        // Stored landscape 32 x 16: left half red, right half blue.
        let stored =
            RgbImage::from_fn(
                32,
                16,
                |x, _| {
                    if x < 16 {
                        Rgb([255, 0, 0])
                    } else {
                        Rgb([0, 0, 255])
                    }
                },
            );
        // Little-endian TIFF header, one IFD entry: tag 0x0112 (Orientation),
        // type SHORT, count 1, value 6; no next IFD.
        let exif = vec![
            0x49, 0x49, 0x2A, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x12, 0x01, 0x03, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let mut bytes = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(stored.as_raw(), 32, 16, image::ExtendedColorType::Rgb8).unwrap();
        std::fs::write(&path, bytes).unwrap();

        let upright = load_rgb(&path).unwrap();
        assert_eq!(upright.dimensions(), (16, 32), "rotated to portrait");
        // Turning clockwise puts the stored left (red) half on top.
        let top = upright.get_pixel(8, 4);
        let bottom = upright.get_pixel(8, 28);
        assert!(top[0] > 200 && top[2] < 60, "top should be red, got {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom should be blue, got {bottom:?}");
    }

    /// Photoshop and PIL store CMYK JPEGs with inverted inks and an Adobe
    /// APP14 marker; such a file must come out in the colours a viewer
    /// shows, not as a colour negative. (tests/fixtures/cmyk.jpg is made by
    /// scripts/make_fuzz_seeds.py.)
    #[test]
    fn a_cmyk_jpeg_decodes_to_the_colours_it_shows() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk.jpg");
        let img = load_rgb(&path).unwrap();
        assert_eq!(img.dimensions(), (16, 16));
        let quadrants = [
            ((4, 4), [255, 0, 0]),
            ((12, 4), [0, 255, 0]),
            ((4, 12), [0, 0, 255]),
            ((12, 12), [0; 3]),
        ];
        for ((x, y), want) in quadrants {
            let got = img.get_pixel(x, y).0;
            let close = got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 24);
            assert!(close, "pixel ({x}, {y}) is {got:?}, should be about {want:?}");
        }
    }

    #[test]
    fn load_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.png");
        let mut bytes = Vec::new();
        RgbImage::from_pixel(64, 64, Rgb([1, 2, 3]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let msg = load_rgb(&p).unwrap_err().to_string();
        assert!(msg.contains("cut.png"), "{msg}");
    }

    fn jpeg_bytes(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * y) as u8, (x ^ y) as u8, (x + y) as u8]))
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Jpeg)
            .unwrap();
        bytes
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_but_trailing_data_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = jpeg_bytes(128, 96);
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let msg = load_rgb(&cut).unwrap_err().to_string();
        assert!(msg.contains("cut.jpg") && msg.contains("truncated"), "{msg}");

        let mut with_trailer = bytes.clone();
        with_trailer.extend_from_slice(b"\0\0\0\x18ftypmp42 trailing video, no end marker");
        let trailer = dir.path().join("motion.jpg");
        std::fs::write(&trailer, &with_trailer).unwrap();
        assert_eq!(load_rgb(&trailer).unwrap().dimensions(), (128, 96));
        assert!(jpeg::is_complete(&bytes));

        // A complete thumbnail inside APP1 must not vouch for a cut image.
        let thumb = jpeg_bytes(8, 8);
        let mut with_thumb = bytes[..2].to_vec();
        with_thumb.extend_from_slice(&[0xFF, 0xE1]);
        with_thumb.extend_from_slice(&(thumb.len() as u16 + 2).to_be_bytes());
        with_thumb.extend_from_slice(&thumb);
        with_thumb.extend_from_slice(&bytes[2..]);
        assert!(jpeg::is_complete(&with_thumb));
        assert!(!jpeg::is_complete(&with_thumb[..with_thumb.len() - 100]));
    }

    #[test]
    fn huge_dimensions_are_refused_before_decoding() {
        assert!(check_size(20_000, 10_000).is_ok());
        let msg = check_size(50_000, 50_000).unwrap_err();
        assert!(msg.contains("2500 MP"), "{msg}");
        assert!(check_size(0, 10).is_err());
    }
}

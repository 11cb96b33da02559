//! JPEG decoding by libjpeg-turbo (`csrc/jpeg.c`), whole or reduced.
//!
//! libjpeg-turbo is the decoder under PIL and torchvision, so a JPEG gives
//! pixpro exactly the pixels it gives a PyTorch pipeline (the `image`
//! crate's decoder is a level or two away, enough to move features by 0.5%).
//! Its DCT scaling reconstructs a JPEG at 1/2, 1/4 or 1/8 of its size from
//! the low frequencies of each 8x8 block, at a fraction of the work: what a
//! random-resized crop of a large photo needs (see `views::reduction`).
//!
//! No crate fits: `turbojpeg` binds the TurboJPEG API, which Debian ships
//! as a library apart from libjpeg (not installed here), or builds
//! libjpeg-turbo from source with CMake and NASM (neither here); `mozjpeg`
//! builds its own libjpeg, without SIMD unless NASM is there; the pure-Rust
//! decoders (zune-jpeg, jpeg-decoder) do not compute libjpeg's pixels.
use image::metadata::Orientation;
use image::RgbImage;

/// The reductions libjpeg's DCT scaling gives: a JPEG decodes at 1/`d` of
/// its size for each `d` here.
pub const REDUCTIONS: [u32; 4] = [1, 2, 4, 8];

extern "C" {
    fn pixpro_jpeg_decode(
        data: *const u8,
        len: usize,
        denom: i32,
        out: *mut u8,
        out_len: usize,
        width: *mut u32,
        height: *mut u32,
        message: *mut std::ffi::c_char,
        message_len: usize,
    ) -> i32;
}

const OK: i32 = 0;
const UNSUPPORTED_COLOUR: i32 = 2;

/// What a call to the shim returned.
enum Outcome {
    Done {
        width: u32,
        height: u32,
    },
    /// CMYK or YCCK, which libjpeg does not convert to RGB.
    UnsupportedColour,
}

fn call(bytes: &[u8], denom: u32, out: Option<&mut [u8]>) -> Result<Outcome, String> {
    debug_assert!(REDUCTIONS.contains(&denom));
    let (mut width, mut height) = (0u32, 0u32);
    let mut message = [0 as std::ffi::c_char; 200];
    let (ptr, len) = match out {
        Some(buf) => (buf.as_mut_ptr(), buf.len()),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: every pointer is valid for the length passed with it; the shim
    // writes at most `len` bytes to `ptr` (it refuses any other size) and at
    // most `message.len()` bytes, NUL included, to `message`.
    let status = unsafe {
        pixpro_jpeg_decode(
            bytes.as_ptr(),
            bytes.len(),
            denom as i32,
            ptr,
            len,
            &mut width,
            &mut height,
            message.as_mut_ptr(),
            message.len(),
        )
    };
    match status {
        OK => Ok(Outcome::Done { width, height }),
        UNSUPPORTED_COLOUR => Ok(Outcome::UnsupportedColour),
        _ => {
            // SAFETY: the shim NUL-terminates what it writes, and the buffer
            // starts NUL-terminated.
            let text = unsafe { std::ffi::CStr::from_ptr(message.as_ptr()) };
            let text = text.to_string_lossy();
            Err(if text.is_empty() {
                "libjpeg could not decode the file".into()
            } else {
                text.into()
            })
        }
    }
}

/// The stored size (before EXIF orientation) of a JPEG at 1/`denom`, or
/// `None` for CMYK/YCCK.
pub fn size(bytes: &[u8], denom: u32) -> Result<Option<(u32, u32)>, String> {
    Ok(match call(bytes, denom, None)? {
        Outcome::Done { width, height } => Some((width, height)),
        Outcome::UnsupportedColour => None,
    })
}

/// The JPEG at 1/`denom` of its stored size as RGB8, before EXIF
/// orientation; `None` for CMYK/YCCK. `check` sees the output size first and
/// may refuse it (too large to allocate).
pub fn decode(
    bytes: &[u8],
    denom: u32,
    check: impl FnOnce(u32, u32) -> Result<(), String>,
) -> Result<Option<RgbImage>, String> {
    let Some((w, h)) = size(bytes, denom)? else { return Ok(None) };
    check(w, h)?;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    match call(bytes, denom, Some(&mut buf))? {
        Outcome::Done { width, height } if (width, height) == (w, h) => {}
        _ => return Err("libjpeg gave a different size on the second read".into()),
    }
    Ok(Some(RgbImage::from_raw(w, h, buf).expect("the buffer holds w * h RGB pixels")))
}

/// The segments of a JPEG's header, marker and payload, up to and with its
/// first scan (whose payload is the entropy-coded data, to the end of the
/// file). Stops at the end of the bytes (then `ran_out` is set), at an end
/// marker, or at anything that is not a marker, a layout it does not know.
pub(crate) struct Segments<'a> {
    b: &'a [u8],
    i: usize,
    pub(crate) ran_out: bool,
}

impl<'a> Segments<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Segments { b, i: 2, ran_out: false }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.b;
        loop {
            let i = self.i;
            if i + 4 > b.len() {
                self.ran_out = true;
                return None;
            }
            if b[i] != 0xFF {
                return None;
            }
            let marker = b[i + 1];
            match marker {
                // Fill byte before a marker.
                0xFF => self.i += 1,
                // Markers without a length field.
                0x01 | 0xD0..=0xD8 => self.i += 2,
                0xD9 => return None,
                _ => {
                    let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                    self.i = i + 2 + len;
                    if marker == 0xDA {
                        let Some(scan) = b.get(self.i..) else {
                            self.ran_out = true;
                            return None;
                        };
                        self.i = b.len();
                        return Some((marker, scan));
                    }
                    return Some((marker, &b[i + 4..self.i.min(b.len())]));
                }
            }
        }
    }
}

/// Whether a JPEG's end-of-image marker follows its first scan. The headers
/// are walked segment by segment so that an EXIF thumbnail (a whole JPEG
/// inside APP1) is not mistaken for the image, and data appended after the
/// end marker (motion-photo videos, vendor trailers) does not matter. Only a
/// layout we understand is judged; anything else is left to the decoder.
pub fn is_complete(b: &[u8]) -> bool {
    let mut segments = Segments::new(b);
    for (marker, payload) in segments.by_ref() {
        if marker == 0xDA {
            // Entropy-coded data escapes 0xFF as FF 00, so the first FF D9
            // is the end marker; most files end with it.
            return payload.ends_with(&[0xFF, 0xD9])
                || payload.windows(2).any(|w| w == [0xFF, 0xD9]);
        }
    }
    !segments.ran_out
}

/// The EXIF orientation of a JPEG; a missing or malformed EXIF block reads
/// as upright, so that it does not cost an otherwise good photo.
pub fn orientation(bytes: &[u8]) -> Orientation {
    Segments::new(bytes)
        .find_map(|(marker, payload)| {
            let tiff = payload.strip_prefix(b"Exif\0\0")?;
            (marker == 0xE1).then(|| Orientation::from_exif_chunk(tiff)).flatten()
        })
        .unwrap_or(Orientation::NoTransforms)
}

/// Where each axis of the upright image comes from: for the horizontal and
/// vertical display axes, whether it is the stored image's vertical axis
/// (a quarter turn) and whether it runs backwards.
fn display_axes(o: Orientation) -> [(bool, bool); 2] {
    use Orientation::*;
    match o {
        NoTransforms => [(false, false), (false, false)],
        FlipHorizontal => [(false, true), (false, false)],
        FlipVertical => [(false, false), (false, true)],
        Rotate180 => [(false, true), (false, true)],
        // Turned clockwise to display: the display's x runs up the stored
        // rows, its y along the stored columns.
        Rotate90 => [(true, true), (true, false)],
        Rotate270 => [(true, false), (true, true)],
        Rotate90FlipH => [(true, false), (true, false)],
        Rotate270FlipH => [(true, true), (true, true)],
    }
}

/// Whether orientation `o` is a quarter turn, so that the upright image's
/// width is the stored height.
pub fn turns(o: Orientation) -> bool {
    display_axes(o)[0].0
}

/// How a reduced decode's pixels sit on the full-size upright image: pixel
/// edge `u` of the full image (in pixels, along an axis) is at
/// `u * scale + offset[axis]` in the reduced one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub scale: f64,
    pub offset: [f64; 2],
}

impl Placement {
    pub const IDENTITY: Placement = Placement { scale: 1.0, offset: [0.0, 0.0] };

    /// Reduced pixel `k` covers full pixels `k*d .. (k+1)*d` of the stored
    /// image, the last block partly; an axis that runs backwards on display
    /// starts with that partial block, shifted by the part that is missing.
    pub fn of(
        denom: u32,
        stored_full: (u32, u32),
        stored_reduced: (u32, u32),
        o: Orientation,
    ) -> Placement {
        let d = f64::from(denom);
        let mut offset = [0.0; 2];
        for (axis, (turned, backwards)) in display_axes(o).into_iter().enumerate() {
            if backwards {
                // A quarter turn swaps the axes.
                let (full, reduced) = if (axis == 1) != turned {
                    (stored_full.1, stored_reduced.1)
                } else {
                    (stored_full.0, stored_reduced.0)
                };
                offset[axis] = f64::from(reduced) - f64::from(full) / d;
            }
        }
        Placement { scale: 1.0 / d, offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageEncoder};

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = |a: u32, b: u32| ((a * 7 + b * 3 + (a * b) % 29) % 256) as u8;
            image::Rgb([v(x, y), v(y, x), ((x + 2 * y) % 256) as u8])
        })
    }

    fn jpeg(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90);
        if let Some(exif) = exif {
            enc.set_exif_metadata(exif).unwrap();
        }
        enc.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .unwrap();
        bytes
    }

    /// A little-endian TIFF block with one entry, the orientation tag.
    fn exif_orientation(value: u8) -> Vec<u8> {
        vec![
            0x49, 0x49, 42, 0, 8, 0, 0, 0, // header, first IFD at 8
            1, 0, // one entry
            0x12, 0x01, 3, 0, 1, 0, 0, 0, value, 0, 0, 0, // tag 0x0112, SHORT, 1
            0, 0, 0, 0, // no next IFD
        ]
    }

    #[test]
    fn reduced_sizes_round_up_and_whole_decode_is_close_to_the_source() {
        let img = photo(203, 97);
        let bytes = jpeg(&img, None);
        assert_eq!(size(&bytes, 1).unwrap(), Some((203, 97)));
        assert_eq!(size(&bytes, 2).unwrap(), Some((102, 49)));
        assert_eq!(size(&bytes, 8).unwrap(), Some((26, 13)));
        let back = decode(&bytes, 1, |_, _| Ok(())).unwrap().unwrap();
        let diff: f64 = back
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / img.as_raw().len() as f64;
        assert!(diff < 8.0, "mean difference {diff} levels after JPEG at quality 90");
    }

    #[test]
    fn the_size_check_refuses_before_allocating_and_garbage_is_an_error() {
        let bytes = jpeg(&photo(64, 48), None);
        let err = decode(&bytes, 2, |w, h| Err(format!("{w} x {h} is too big"))).unwrap_err();
        assert_eq!(err, "32 x 24 is too big");
        let mut broken = bytes.clone();
        broken.truncate(20);
        assert!(decode(&broken, 1, |_, _| Ok(())).is_err());
        let err = decode(b"\xFF\xD8not a jpeg at all", 1, |_, _| Ok(())).unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn orientation_is_read_from_the_exif_block() {
        let img = photo(40, 24);
        assert_eq!(orientation(&jpeg(&img, None)), Orientation::NoTransforms);
        for value in 1..=8u8 {
            let bytes = jpeg(&img, Some(exif_orientation(value)));
            assert_eq!(orientation(&bytes), Orientation::from_exif(value).unwrap(), "{value}");
        }
    }

    /// For every orientation, a reduced decode placed with [`Placement`]
    /// lines up with the full decode: each reduced pixel is nearly the mean
    /// of the full pixels it is placed on, and would not be if it were
    /// placed a quarter of a pixel off.
    #[test]
    fn placement_lines_reduced_pixels_up_with_full_ones_in_every_orientation() {
        // Smooth, so that a block's reduced pixel is close to its mean, but
        // varying fast enough that a misplacement of a reduced pixel shows.
        let img = RgbImage::from_fn(203, 117, |x, y| {
            let (x, y) = (f64::from(x), f64::from(y));
            let v = |t: f64| (127.5 + 120.0 * t.sin()) as u8;
            image::Rgb([v(x / 9.0), v(y / 7.0), v((x + y) / 13.0)])
        });
        let d = 4;
        for value in 1..=8u8 {
            let o = Orientation::from_exif(value).unwrap();
            let bytes = jpeg(&img, Some(exif_orientation(value)));
            let full = decode(&bytes, 1, |_, _| Ok(())).unwrap().unwrap();
            let reduced = decode(&bytes, d, |_, _| Ok(())).unwrap().unwrap();
            let stored = (full.dimensions(), reduced.dimensions());
            let mut full = DynamicImage::ImageRgb8(full);
            full.apply_orientation(o);
            let full = full.to_rgb8();
            let mut small = DynamicImage::ImageRgb8(reduced);
            small.apply_orientation(o);
            let small = small.to_rgb8();
            // Each reduced pixel against the mean of the full pixels it
            // covers where `p` places it.
            let error = |p: Placement| {
                let (mut total, mut n) = (0.0, 0.0);
                for ry in 1..small.height() - 1 {
                    for rx in 1..small.width() - 1 {
                        let span = |r: u32, off: f64| {
                            let lo = ((f64::from(r) - off) / p.scale).round() as i64;
                            lo..lo + i64::from(d)
                        };
                        let (xs, ys) = (span(rx, p.offset[0]), span(ry, p.offset[1]));
                        let inside = |v: &std::ops::Range<i64>, extent: u32| {
                            v.start >= 0 && v.end <= i64::from(extent)
                        };
                        if !inside(&xs, full.width()) || !inside(&ys, full.height()) {
                            continue;
                        }
                        let mut mean = [0.0; 3];
                        for y in ys.clone() {
                            for x in xs.clone() {
                                let q = full.get_pixel(x as u32, y as u32);
                                for c in 0..3 {
                                    mean[c] += f64::from(q[c]) / f64::from(d * d);
                                }
                            }
                        }
                        let r = small.get_pixel(rx, ry);
                        total += (0..3).map(|c| (mean[c] - f64::from(r[c])).abs()).sum::<f64>();
                        n += 3.0;
                    }
                }
                total / n
            };
            let p = Placement::of(d, stored.0, stored.1, o);
            let right = error(p);
            // A quarter of a reduced pixel: what leaving out the partial
            // block's shift would cost on this image.
            for shifted in [[0.25, 0.0], [0.0, 0.25], [-0.25, 0.0], [0.0, -0.25]] {
                let q =
                    Placement { offset: [p.offset[0] + shifted[0], p.offset[1] + shifted[1]], ..p };
                let wrong = error(q);
                assert!(
                    right * 3.0 < wrong,
                    "orientation {value}: placed {right}, shifted {wrong}"
                );
            }
            assert!(right < 4.0, "orientation {value}: {right} levels off");
        }
    }
}

//! Two augmented views of one image, each with its crop coordinates in the
//! source image (spec section 1).
//!
//! The pipeline follows the reference's torchvision transforms step by step:
//! random resized crop (bilinear), horizontal flip, colour jitter in random
//! order, grayscale, gaussian blur, solarize, ImageNet normalisation. Pixels
//! live in `[0, 1]` f32 planes after the resize; the colour operations use
//! torchvision's tensor formulas (the reference ran them on PIL uint8 images,
//! which differ only by rounding).
use std::cell::RefCell;

use fast_image_resize as fr;
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};

pub use super::jpeg::Placement;
use super::jpeg::REDUCTIONS;
use super::photometric::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur, grayscale,
    normalize, solarize,
};
pub use super::photometric::{IMAGENET_MEAN, IMAGENET_STD};
use crate::{Error, Result};

/// The augmentation of one view. Probabilities are in `[0, 1]`; ranges are
/// `[min, max]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ViewParams {
    /// Fraction of the image area the crop covers.
    pub scale: [f64; 2],
    /// Crop aspect ratio (width / height), sampled log-uniformly.
    pub ratio: [f64; 2],
    pub flip_p: f64,
    /// Jitter strengths as torchvision's `ColorJitter(b, c, s, h)`.
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    /// Probability of applying the colour jitter at all.
    pub jitter_p: f64,
    pub grayscale_p: f64,
    pub blur_p: f64,
    /// Blur sigma range, in pixels of the output view (not of the source
    /// image): at a smaller `image_size` the same sigma blurs relatively more.
    pub blur_sigma: [f64; 2],
    pub solarize_p: f64,
}

impl ViewParams {
    /// View 1 of the spec: blur always, never solarize.
    pub fn view1() -> Self {
        ViewParams {
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            jitter_p: 0.8,
            grayscale_p: 0.2,
            blur_p: 1.0,
            blur_sigma: [0.1, 2.0],
            solarize_p: 0.0,
        }
    }

    /// View 2 of the spec: blur rarely, solarize sometimes.
    pub fn view2() -> Self {
        ViewParams { blur_p: 0.1, solarize_p: 0.2, ..Self::view1() }
    }

    fn validate(&self, key: &str) -> Result<()> {
        let range = |name: &str, v: [f64; 2], ok: bool, rule: &str| {
            if v.iter().all(|x| x.is_finite()) && v[0] <= v[1] && ok {
                Ok(())
            } else {
                Err(Error::config(format!("{key}.{name}"), format!("must be {rule}, got {v:?}")))
            }
        };
        range(
            "scale",
            self.scale,
            self.scale[0] > 0.0 && self.scale[1] <= 1.0,
            "0 < min <= max <= 1",
        )?;
        range("ratio", self.ratio, self.ratio[0] > 0.0, "0 < min <= max")?;
        range(
            "blur_sigma",
            self.blur_sigma,
            self.blur_sigma[0] > 0.0 && self.blur_sigma[1] <= MAX_BLUR_SIGMA,
            &format!("0 < min <= max <= {MAX_BLUR_SIGMA} (pixels of the view)"),
        )?;
        let probabilities = [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
            ("solarize_p", self.solarize_p),
        ];
        for (name, v) in probabilities {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::config(
                    format!("{key}.{name}"),
                    format!("is a probability, must be in [0, 1], got {v}"),
                ));
            }
        }
        // Brightness and contrast factors are drawn from [max(0, 1-x), 1+x];
        // saturation likewise; hue shifts by at most half the colour wheel.
        let strengths = [
            ("brightness", self.brightness, f64::INFINITY),
            ("contrast", self.contrast, f64::INFINITY),
            ("saturation", self.saturation, f64::INFINITY),
            ("hue", self.hue, 0.5),
        ];
        for (name, v, max) in strengths {
            if !(v.is_finite() && 0.0 <= v && v <= max) {
                return Err(Error::config(
                    format!("{key}.{name}"),
                    format!("must be in [0, {max}], got {v}"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for ViewParams {
    fn default() -> Self {
        Self::view1()
    }
}

/// Larger sigmas would make the kernel wider than any sensible view.
const MAX_BLUR_SIGMA: f64 = 50.0;

/// The `[augment]` table of the configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Side of the square views, in pixels.
    pub image_size: u32,
    pub view1: ViewParams,
    /// Keys missing from `[augment.view2]` take view 2's defaults, not view
    /// 1's (a plain `#[serde(default)]` would silently turn on view 1's
    /// always-on blur).
    #[serde(deserialize_with = "view2_with_defaults")]
    pub view2: ViewParams,
    /// Decode a JPEG at 1/2, 1/4 or 1/8 of its size when both crops keep at
    /// least `image_size` pixels a side at that size (libjpeg's DCT
    /// scaling; the crops and their coordinates do not change, the pixels
    /// move a little: docs/performance.md). Off decodes every image whole.
    pub reduced_decode: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            image_size: 224,
            view1: ViewParams::view1(),
            view2: ViewParams::view2(),
            reduced_decode: true,
        }
    }
}

impl AugmentConfig {
    /// Checks every value; the error names the TOML key, e.g.
    /// `augment.view1.scale`.
    pub fn validate(&self) -> Result<()> {
        if !(32..=4096).contains(&self.image_size) {
            return Err(Error::config(
                "augment.image_size",
                format!("must be in [32, 4096] pixels, got {}", self.image_size),
            ));
        }
        self.view1.validate("augment.view1")?;
        self.view2.validate("augment.view2")
    }
}

/// View 2 with only the keys present overridden.
fn view2_with_defaults<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<ViewParams, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        scale: Option<[f64; 2]>,
        ratio: Option<[f64; 2]>,
        flip_p: Option<f64>,
        brightness: Option<f64>,
        contrast: Option<f64>,
        saturation: Option<f64>,
        hue: Option<f64>,
        jitter_p: Option<f64>,
        grayscale_p: Option<f64>,
        blur_p: Option<f64>,
        blur_sigma: Option<[f64; 2]>,
        solarize_p: Option<f64>,
    }
    let p = Patch::deserialize(d)?;
    let v = ViewParams::view2();
    Ok(ViewParams {
        scale: p.scale.unwrap_or(v.scale),
        ratio: p.ratio.unwrap_or(v.ratio),
        flip_p: p.flip_p.unwrap_or(v.flip_p),
        brightness: p.brightness.unwrap_or(v.brightness),
        contrast: p.contrast.unwrap_or(v.contrast),
        saturation: p.saturation.unwrap_or(v.saturation),
        hue: p.hue.unwrap_or(v.hue),
        jitter_p: p.jitter_p.unwrap_or(v.jitter_p),
        grayscale_p: p.grayscale_p.unwrap_or(v.grayscale_p),
        blur_p: p.blur_p.unwrap_or(v.blur_p),
        blur_sigma: p.blur_sigma.unwrap_or(v.blur_sigma),
        solarize_p: p.solarize_p.unwrap_or(v.solarize_p),
    })
}

/// A crop in source pixels: rows `top..top+height`, columns `left..left+width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// One augmented view.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// `[3, S, S]` CHW, normalised with the ImageNet mean and std.
    pub pixels: Vec<f32>,
    /// `[x0, y0, x1, y1]` of the crop in the source, normalised to `[0, 1]`
    /// over inclusive pixel indices; `x0 > x1` when flipped.
    pub coords: [f32; 4],
}

fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    // Not `random_range`: it refuses an empty range, and `lo == hi` is a
    // legitimate way to switch randomness off.
    lo + (hi - lo) * rng.random::<f64>()
}

fn coin(rng: &mut impl Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// torchvision's `RandomResizedCrop.get_params`, draw for draw: ten attempts
/// at a crop of area `W*H*U(scale)` and log-uniform aspect ratio that fits,
/// else a centre crop with the ratio clamped into `ratio`. Python's `round`
/// rounds half to even, hence `round_ties_even`. `width` and `height` must be
/// at least 1.
pub fn crop_box(
    width: u32,
    height: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> CropBox {
    let (wf, hf) = (f64::from(width), f64::from(height));
    let log_ratio = [ratio[0].ln(), ratio[1].ln()];
    for _ in 0..10 {
        let target_area = wf * hf * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_ratio[0], log_ratio[1]).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if 0.0 < w && w <= wf && 0.0 < h && h <= hf {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox { top, left, height: h, width: w };
        }
    }
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < ratio[0] {
        (width, ((wf / ratio[0]).round_ties_even() as u32).clamp(1, height))
    } else if in_ratio > ratio[1] {
        (((hf * ratio[1]).round_ties_even() as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// The spec's crop coordinates: `x0 = j/(W-1)`, `x1 = (j+w-1)/(W-1)` and the
/// same for rows, x0 and x1 swapped when the view is flipped. A source one
/// pixel wide (or high) has a single position, 0.
pub fn coords(b: &CropBox, width: u32, height: u32, flipped: bool) -> [f32; 4] {
    let norm = |v: u32, extent: u32| {
        if extent > 1 {
            (f64::from(v) / f64::from(extent - 1)) as f32
        } else {
            0.0
        }
    };
    let x0 = norm(b.left, width);
    let x1 = norm(b.left + b.width - 1, width);
    let y0 = norm(b.top, height);
    let y1 = norm(b.top + b.height - 1, height);
    if flipped {
        [x1, y0, x0, y1]
    } else {
        [x0, y0, x1, y1]
    }
}

thread_local! {
    // The resizer keeps scratch buffers between calls; one per worker thread.
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Bilinear (antialiased, as PIL) resize of the crop region straight from the
/// source buffer to `size` x `size` RGB8. `img` may be a reduced decode of
/// the image the crop was drawn on; `at` says where its pixels sit.
fn resize_crop(img: &RgbImage, at: &Placement, b: &CropBox, size: u32) -> Vec<u8> {
    let src =
        fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
            .expect("an RgbImage buffer always matches its dimensions");
    let mut dst = fr::images::Image::new(size, size, fr::PixelType::U8x3);
    // A reduced decode's last block may be a fraction of a pixel short of
    // the scaled crop; clamping keeps the crop inside the buffer.
    let place = |start: u32, len: u32, offset: f64, extent: u32| {
        let extent = f64::from(extent);
        let a = (f64::from(start) * at.scale + offset).clamp(0.0, extent);
        let b = (f64::from(start + len) * at.scale + offset).clamp(a, extent);
        (a, b - a)
    };
    let (left, width) = place(b.left, b.width, at.offset[0], img.width());
    let (top, height) = place(b.top, b.height, at.offset[1], img.height());
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(left, top, width, height);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .expect("the crop is clamped into the image");
    dst.into_vec()
}

/// RGB8 HWC to three `[0, 1]` planes, mirroring each row when `flipped`.
/// A table of the 256 quotients replaces a division per value (the same
/// f32s), and each row is walked forwards or backwards as a whole, so the
/// per-pixel loop has no branch.
#[inline(always)]
fn to_planes(rgb: &[u8], s: usize, flipped: bool, out: &mut [f32]) {
    static UNIT: [f32; 256] = {
        let mut t = [0f32; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = i as f32 / 255.0;
            i += 1;
        }
        t
    };
    let n = s * s;
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    let rows = rgb.chunks_exact(s * 3).zip(r.chunks_exact_mut(s).zip(g.chunks_exact_mut(s)));
    for ((row, (r, g)), b) in rows.zip(b.chunks_exact_mut(s)) {
        let mut put = |x: usize, p: &[u8]| {
            r[x] = UNIT[usize::from(p[0])];
            g[x] = UNIT[usize::from(p[1])];
            b[x] = UNIT[usize::from(p[2])];
        };
        if flipped {
            row.chunks_exact(3).rev().enumerate().for_each(|(x, p)| put(x, p));
        } else {
            row.chunks_exact(3).enumerate().for_each(|(x, p)| put(x, p));
        }
    }
}

/// torchvision `ColorJitter`'s draws: the four operations in a random order,
/// each factor drawn up front (brightness, contrast, saturation, hue), an
/// operation with strength 0 skipped.
#[derive(Clone, Copy, Debug)]
struct Jitter {
    order: [usize; 4],
    brightness: Option<f64>,
    contrast: Option<f64>,
    saturation: Option<f64>,
    hue: Option<f64>,
}

impl Jitter {
    fn draw(p: &ViewParams, rng: &mut impl Rng) -> Jitter {
        let mut order = [0usize, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        fn factor(rng: &mut impl Rng, x: f64) -> Option<f64> {
            (x > 0.0).then(|| uniform(rng, (1.0 - x).max(0.0), 1.0 + x))
        }
        Jitter {
            order,
            brightness: factor(rng, p.brightness),
            contrast: factor(rng, p.contrast),
            saturation: factor(rng, p.saturation),
            hue: (p.hue > 0.0).then(|| uniform(rng, -p.hue, p.hue)),
        }
    }

    #[inline(always)]
    fn apply(&self, px: &mut [f32]) {
        for op in self.order {
            match (op, self.brightness, self.contrast, self.saturation, self.hue) {
                (0, Some(f), ..) => adjust_brightness(px, f as f32),
                (1, _, Some(f), ..) => adjust_contrast(px, f as f32),
                (2, _, _, Some(f), _) => adjust_saturation(px, f as f32),
                (3, .., Some(f)) => adjust_hue(px, f as f32),
                _ => {}
            }
        }
    }
}

/// Every random draw of one view. No draw depends on a pixel, so a view is
/// planned from the image's size alone, before the image is decoded: both
/// crops are known when the decode size is chosen.
#[derive(Clone, Copy, Debug)]
pub struct ViewPlan {
    crop: CropBox,
    flipped: bool,
    jitter: Option<Jitter>,
    grayscale: bool,
    blur_sigma: Option<f64>,
    solarize: bool,
}

impl ViewPlan {
    /// The draws in the order of the pipeline: crop, flip, jitter,
    /// grayscale, blur, solarize.
    pub fn draw(width: u32, height: u32, p: &ViewParams, rng: &mut impl Rng) -> ViewPlan {
        let crop = crop_box(width, height, p.scale, p.ratio, rng);
        let flipped = coin(rng, p.flip_p);
        let jitter = coin(rng, p.jitter_p).then(|| Jitter::draw(p, rng));
        let grayscale = coin(rng, p.grayscale_p);
        let blur_sigma =
            coin(rng, p.blur_p).then(|| uniform(rng, p.blur_sigma[0], p.blur_sigma[1]));
        let solarize = coin(rng, p.solarize_p);
        ViewPlan { crop, flipped, jitter, grayscale, blur_sigma, solarize }
    }

    /// The view at `size` x `size` of an image `width` x `height` (the one
    /// the plan was drawn for), whose pixels `img` holds as `at` says.
    pub fn render(
        &self,
        img: &RgbImage,
        at: &Placement,
        width: u32,
        height: u32,
        size: u32,
    ) -> View {
        let s = size as usize;
        let mut px = vec![0f32; 3 * s * s];
        let rgb = resize_crop(img, at, &self.crop, size);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has just been found to have AVX2.
            unsafe { self.photometric_avx2(&rgb, s, &mut px) };
        } else {
            self.photometric(&rgb, s, &mut px);
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.photometric(&rgb, s, &mut px);
        View { pixels: px, coords: coords(&self.crop, width, height, self.flipped) }
    }

    /// The resized crop `rgb` to the view's normalised planes in `px`:
    /// flip, jitter, grayscale, blur, solarize, normalise.
    #[inline(always)]
    fn photometric(&self, rgb: &[u8], s: usize, px: &mut [f32]) {
        to_planes(rgb, s, self.flipped, px);
        if let Some(jitter) = &self.jitter {
            jitter.apply(px);
        }
        if self.grayscale {
            grayscale(px);
        }
        if let Some(sigma) = self.blur_sigma {
            gaussian_blur(px, s, sigma as f32);
        }
        if self.solarize {
            solarize(px);
        }
        normalize(px);
    }

    /// [`Self::photometric`] compiled for AVX2: the same operations in the
    /// same order on 8 lanes instead of SSE2's 4, so the same f32s (the
    /// compiler neither reorders float sums nor fuses a multiply and an
    /// add on its own). On ImageNet-sized JPEGs this, not the decode, was
    /// the largest part of a view's time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn photometric_avx2(&self, rgb: &[u8], s: usize, px: &mut [f32]) {
        self.photometric(rgb, s, px)
    }
}

/// The largest reduction (1, 2, 4 or 8) at which every crop still has at
/// least `size` source pixels along each side, so the view is still made
/// by shrinking: what PIL's `draft` mode asks of a JPEG decode.
pub fn reduction(plans: &[ViewPlan], size: u32) -> u32 {
    let smallest = plans.iter().map(|p| p.crop.width.min(p.crop.height)).min().unwrap_or(0);
    REDUCTIONS.into_iter().rev().find(|&d| smallest >= d * size).unwrap_or(1)
}

/// One view of `img` at `size` x `size`: crop, flip, jitter, grayscale, blur,
/// solarize, normalise, with the random draws in that order.
pub fn make_view(img: &RgbImage, p: &ViewParams, size: u32, rng: &mut impl Rng) -> View {
    let (w, h) = img.dimensions();
    ViewPlan::draw(w, h, p, rng).render(img, &Placement::IDENTITY, w, h, size)
}

/// View 1 then view 2 of the same image, from one random stream.
pub fn two_views(img: &RgbImage, cfg: &AugmentConfig, rng: &mut impl Rng) -> (View, View) {
    let decoded = |_| Ok::<_, std::convert::Infallible>((img, Placement::IDENTITY));
    let Ok(views) = two_views_decoded(img.width(), img.height(), cfg, rng, decoded);
    views
}

/// [`two_views`] of an image of upright size `width` x `height` not yet
/// decoded: both views are planned, then `decode` is asked for the image at
/// the largest reduction both crops allow (1 when `cfg.reduced_decode` is
/// off) and returns its pixels and where they sit, at that reduction or any
/// smaller one. Both views come from that one decode, and the random
/// stream, crops and coordinates are those of [`two_views`].
pub fn two_views_decoded<I: std::borrow::Borrow<RgbImage>, E>(
    width: u32,
    height: u32,
    cfg: &AugmentConfig,
    rng: &mut impl Rng,
    decode: impl FnOnce(u32) -> std::result::Result<(I, Placement), E>,
) -> std::result::Result<(View, View), E> {
    let plans = [
        ViewPlan::draw(width, height, &cfg.view1, rng),
        ViewPlan::draw(width, height, &cfg.view2, rng),
    ];
    let allowed = if cfg.reduced_decode { reduction(&plans, cfg.image_size) } else { 1 };
    let (img, at) = decode(allowed)?;
    let render = |p: &ViewPlan| p.render(img.borrow(), &at, width, height, cfg.image_size);
    Ok((render(&plans[0]), render(&plans[1])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Geometry only: every colour operation off.
    fn plain(flip_p: f64) -> ViewParams {
        ViewParams {
            scale: [0.3, 1.0],
            flip_p,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            solarize_p: 0.0,
            ..ViewParams::view1()
        }
    }

    fn denorm(v: &View, c: usize, i: usize, s: usize) -> f32 {
        v.pixels[c * s * s + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c]
    }

    #[test]
    fn crop_box_stays_inside_the_image() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (w, h) in [(1, 1), (2, 3), (64, 48), (500, 20), (7, 900), (1000, 1000)] {
            for _ in 0..200 {
                let b = crop_box(w, h, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
                assert!(b.width >= 1 && b.height >= 1, "{b:?}");
                assert!(b.left + b.width <= w && b.top + b.height <= h, "{b:?} in {w}x{h}");
            }
        }
    }

    #[test]
    fn crop_box_falls_back_to_a_centre_crop_for_extreme_aspect_ratios() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // No crop of a 1000 x 10 strip has area >= 8% and ratio <= 4/3.
        let wide = crop_box(1000, 10, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        assert_eq!(wide, CropBox { top: 0, left: 493, height: 10, width: 13 });
        let tall = crop_box(10, 1000, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        assert_eq!(tall, CropBox { top: 493, left: 0, height: 13, width: 10 });
        // A square image cannot hold a whole-area crop of ratio >= 2: full
        // width, height from the smallest allowed ratio, centred.
        let flat = crop_box(40, 40, [1.0, 1.0], [2.0, 3.0], &mut rng);
        assert_eq!(flat, CropBox { top: 10, left: 0, height: 20, width: 40 });
    }

    #[test]
    fn coords_follow_the_spec_formula() {
        let full = CropBox { top: 0, left: 0, height: 48, width: 64 };
        assert_eq!(coords(&full, 64, 48, false), [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(coords(&full, 64, 48, true), [1.0, 0.0, 0.0, 1.0]);
        let b = CropBox { top: 10, left: 20, height: 11, width: 31 };
        let c = coords(&b, 101, 51, false);
        assert_eq!(c, [0.2, 0.2, 0.5, 0.4]);
        let one = CropBox { top: 0, left: 0, height: 1, width: 1 };
        assert_eq!(coords(&one, 1, 1, true), [0.0, 0.0, 0.0, 0.0]);
    }

    /// A bright block in the source must appear in the view where the
    /// coordinates say, flipped or not.
    #[test]
    fn a_source_pixel_lands_where_the_coordinates_predict() {
        let (w, h, s) = (80u32, 60u32, 64usize);
        let (bx, by) = (50.0f32, 22.0f32);
        let mut img = RgbImage::new(w, h);
        for y in 21..24 {
            for x in 49..52 {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        let mut checked = [0usize; 2];
        for seed in 0..200 {
            for (k, flip) in [0.0, 1.0].into_iter().enumerate() {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let v = make_view(&img, &plain(flip), s as u32, &mut rng);
                let [x0, y0, x1, y1] = v.coords;
                assert_eq!(x0 > x1, flip == 1.0);
                // Source position -> fraction of the view -> view pixel centre.
                let u = (bx / (w - 1) as f32 - x0) / (x1 - x0);
                let t = (by / (h - 1) as f32 - y0) / (y1 - y0);
                if !(0.1..0.9).contains(&u) || !(0.1..0.9).contains(&t) {
                    continue;
                }
                let (mut sum, mut sx, mut sy) = (0.0, 0.0, 0.0);
                for i in 0..s * s {
                    let l = denorm(&v, 0, i, s);
                    if l > 0.05 {
                        sum += l;
                        sx += l * (i % s) as f32;
                        sy += l * (i / s) as f32;
                    }
                }
                let (cx, cy) = (sx / sum, sy / sum);
                let (ex, ey) = (u * s as f32 - 0.5, t * s as f32 - 0.5);
                // The resize maps pixel centres, the coordinates pixel
                // indices: they differ by up to half a source pixel.
                let crop_w = (x1 - x0).abs() * (w - 1) as f32 + 1.0;
                let tol = 0.5 * s as f32 / crop_w + 1.0;
                assert!(
                    (cx - ex).abs() < tol && (cy - ey).abs() < tol,
                    "seed {seed} flip {flip}: block at ({cx}, {cy}), expected ({ex}, {ey}), coords {:?}",
                    v.coords
                );
                checked[k] += 1;
            }
        }
        assert!(checked[0] > 20 && checked[1] > 20, "{checked:?}");
    }

    #[test]
    fn grayscale_gives_equal_channels() {
        let img = RgbImage::from_fn(50, 40, |x, y| Rgb([x as u8 * 5, y as u8 * 6, 100]));
        let p = ViewParams { grayscale_p: 1.0, ..ViewParams::view2() };
        let v = make_view(&img, &p, 32, &mut ChaCha8Rng::seed_from_u64(3));
        let n = 32 * 32;
        for i in 0..n {
            let r = denorm(&v, 0, i, 32);
            assert!((r - denorm(&v, 1, i, 32)).abs() < 1e-5);
            assert!((r - denorm(&v, 2, i, 32)).abs() < 1e-5);
        }
    }

    #[test]
    fn solarize_inverts_bright_values_only() {
        let mut px = vec![200.0 / 255.0, 128.0 / 255.0, 127.0 / 255.0, 0.0];
        solarize(&mut px);
        for (a, b) in px.iter().zip([55.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0, 0.0]) {
            assert!((a - b).abs() < 1e-6, "{px:?}");
        }

        let img = RgbImage::from_pixel(40, 40, Rgb([200, 100, 255]));
        let p = ViewParams { solarize_p: 1.0, ..plain(0.0) };
        let v = make_view(&img, &p, 32, &mut ChaCha8Rng::seed_from_u64(4));
        let want = [55.0 / 255.0, 100.0 / 255.0, 0.0];
        for (c, w) in want.into_iter().enumerate() {
            assert!((denorm(&v, c, 100, 32) - w).abs() < 1e-5);
        }
    }

    #[test]
    fn a_uniform_image_normalises_to_known_values() {
        let img = RgbImage::from_pixel(30, 20, Rgb([255, 0, 128]));
        let v = make_view(&img, &plain(0.5), 32, &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!(v.pixels.len(), 3 * 32 * 32);
        let want = [1.0, 0.0, 128.0 / 255.0];
        for (c, w) in want.into_iter().enumerate() {
            let expect = (w - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            assert!(v.pixels[c * 1024..(c + 1) * 1024].iter().all(|x| (x - expect).abs() < 1e-5));
        }
    }

    /// The AVX2 build of the colour operations must give the SSE2 one's
    /// f32s exactly, so that a seed gives the same views on any x86 CPU.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_views_equal_the_portable_ones_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let all = ViewParams {
            jitter_p: 1.0,
            grayscale_p: 0.0,
            blur_p: 1.0,
            solarize_p: 1.0,
            flip_p: 0.5,
            ..ViewParams::view1()
        };
        let grey = ViewParams { grayscale_p: 1.0, solarize_p: 0.0, ..all.clone() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let s = 45;
        let rgb: Vec<u8> = (0..3 * s * s).map(|i| (i * 131 % 256) as u8).collect();
        for p in [&all, &grey].into_iter().cycle().take(16) {
            let plan = ViewPlan::draw(300, 200, p, &mut rng);
            let (mut portable, mut avx2) = (vec![0f32; 3 * s * s], vec![0f32; 3 * s * s]);
            plan.photometric(&rgb, s, &mut portable);
            // SAFETY: AVX2 was detected above.
            unsafe { plan.photometric_avx2(&rgb, s, &mut avx2) };
            assert_eq!(portable, avx2, "{plan:?}");
        }
    }

    #[test]
    fn same_seed_same_views() {
        let img = RgbImage::from_fn(90, 70, |x, y| Rgb([x as u8, y as u8, (x * y) as u8]));
        let cfg = AugmentConfig { image_size: 48, ..AugmentConfig::default() };
        let a = two_views(&img, &cfg, &mut ChaCha8Rng::seed_from_u64(9));
        let b = two_views(&img, &cfg, &mut ChaCha8Rng::seed_from_u64(9));
        let c = two_views(&img, &cfg, &mut ChaCha8Rng::seed_from_u64(10));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.0.pixels.iter().chain(&a.1.pixels).all(|v| v.is_finite()));
    }

    #[test]
    fn validate_names_the_bad_key() {
        assert!(AugmentConfig::default().validate().is_ok());
        let bad = |f: fn(&mut AugmentConfig)| {
            let mut c = AugmentConfig::default();
            f(&mut c);
            match c.validate() {
                Err(Error::Config { key, .. }) => key,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(bad(|c| c.image_size = 16), "augment.image_size");
        assert_eq!(bad(|c| c.view1.scale = [0.5, 0.2]), "augment.view1.scale");
        assert_eq!(bad(|c| c.view1.scale = [0.0, 1.0]), "augment.view1.scale");
        assert_eq!(bad(|c| c.view2.scale = [0.5, 1.5]), "augment.view2.scale");
        assert_eq!(bad(|c| c.view1.ratio = [-1.0, 1.0]), "augment.view1.ratio");
        assert_eq!(bad(|c| c.view2.solarize_p = 1.5), "augment.view2.solarize_p");
        assert_eq!(bad(|c| c.view1.flip_p = f64::NAN), "augment.view1.flip_p");
        assert_eq!(bad(|c| c.view1.hue = 0.6), "augment.view1.hue");
        assert_eq!(bad(|c| c.view2.brightness = -0.1), "augment.view2.brightness");
        assert_eq!(bad(|c| c.view2.blur_sigma = [0.0, 2.0]), "augment.view2.blur_sigma");
        let msg = {
            let mut c = AugmentConfig::default();
            c.view1.scale = [0.5, 0.2];
            c.validate().unwrap_err().to_string()
        };
        assert!(msg.contains("0 < min <= max <= 1, got [0.5, 0.2]"), "{msg}");
    }

    #[test]
    fn toml_tables_fill_missing_keys_from_their_own_view() {
        let cfg: AugmentConfig =
            toml::from_str("image_size = 96\n[view1]\nflip_p = 0.0\n[view2]\nsolarize_p = 0.5\n")
                .unwrap();
        assert_eq!(cfg.image_size, 96);
        assert_eq!(cfg.view1, ViewParams { flip_p: 0.0, ..ViewParams::view1() });
        assert_eq!(cfg.view2, ViewParams { solarize_p: 0.5, ..ViewParams::view2() });
        let empty: AugmentConfig = toml::from_str("").unwrap();
        assert_eq!(empty, AugmentConfig::default());
        let text = toml::to_string(&AugmentConfig::default()).unwrap();
        assert_eq!(toml::from_str::<AugmentConfig>(&text).unwrap(), AugmentConfig::default());
        assert!(toml::from_str::<AugmentConfig>("[view2]\nblur = 1.0\n").is_err());
        assert!(toml::from_str::<AugmentConfig>("size = 1\n").is_err());
    }

    /// `cargo test --release --lib data::views::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_make_view() {
        let img = RgbImage::from_fn(500, 375, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let big = RgbImage::from_fn(4000, 3000, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
        for (name, src) in [("500x375", &img), ("4000x3000", &big)] {
            for size in [96u32, 224] {
                let cfg = AugmentConfig { image_size: size, ..AugmentConfig::default() };
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                let n = 200;
                let t = std::time::Instant::now();
                for _ in 0..n {
                    std::hint::black_box(two_views(src, &cfg, &mut rng));
                }
                let per_view = t.elapsed().as_secs_f64() * 1e3 / (2 * n) as f64;
                println!("source {name}, {size} px: {per_view:.3} ms per view");
            }
        }
    }
}

//! The photometric half of a view's augmentation: torchvision's tensor
//! formulas for colour jitter's four operations, grayscale, gaussian blur,
//! solarize and the ImageNet normalisation, each in place on three `[0, 1]`
//! f32 planes. The random draws that choose them stay in [`super::views`].

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// ITU-R 601-2 luma, as PIL's `convert("L")` (used by grayscale, contrast
/// and saturation).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

#[inline(always)]
fn planes(px: &mut [f32]) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let n = px.len() / 3;
    let (r, rest) = px.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    (r, g, b)
}

#[inline(always)]
pub(crate) fn adjust_brightness(px: &mut [f32], f: f32) {
    for v in px.iter_mut() {
        *v = (*v * f).clamp(0.0, 1.0);
    }
}

/// Blends towards the mean grey level of the whole view.
#[inline(always)]
pub(crate) fn adjust_contrast(px: &mut [f32], f: f32) {
    let (r, g, b) = planes(px);
    let n = r.len();
    let sum: f64 =
        (0..n).map(|i| f64::from(LUMA[0] * r[i] + LUMA[1] * g[i] + LUMA[2] * b[i])).sum();
    let mean = (sum / n as f64) as f32;
    let offset = (1.0 - f) * mean;
    for v in px.iter_mut() {
        *v = (f * *v + offset).clamp(0.0, 1.0);
    }
}

/// Blends each pixel towards its own grey level.
#[inline(always)]
pub(crate) fn adjust_saturation(px: &mut [f32], f: f32) {
    let (r, g, b) = planes(px);
    for i in 0..r.len() {
        let grey = (1.0 - f) * (LUMA[0] * r[i] + LUMA[1] * g[i] + LUMA[2] * b[i]);
        r[i] = (f * r[i] + grey).clamp(0.0, 1.0);
        g[i] = (f * g[i] + grey).clamp(0.0, 1.0);
        b[i] = (f * b[i] + grey).clamp(0.0, 1.0);
    }
}

/// Rotates the hue in HSV by `shift` turns (torchvision `_rgb2hsv` /
/// `_hsv2rgb`).
///
/// Written without branches (selects instead of `if` and `match`, floors by
/// truncation of non-negative values) so that the loop vectorises on plain
/// SSE2: per pixel it is the same arithmetic as the textbook form, which
/// the tests keep as the reference.
#[inline(always)]
pub(crate) fn adjust_hue(px: &mut [f32], shift: f32) {
    let (r, g, b) = planes(px);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (rv, gv, bv) = (*r, *g, *b);
        let maxc = rv.max(gv).max(bv);
        let minc = rv.min(gv).min(bv);
        let chroma = maxc - minc;
        // Grey pixels have no hue to rotate; their arithmetic below is
        // NaN or infinite and is dropped by the last select.
        let grey = chroma <= 0.0;
        let s = chroma / maxc;
        let rc = (maxc - rv) / chroma;
        let gc = (maxc - gv) / chroma;
        let bc = (maxc - bv) / chroma;
        let h6 = if maxc == rv {
            bc - gc
        } else if maxc == gv {
            2.0 + rc - bc
        } else {
            4.0 + gc - rc
        };
        // rem_euclid(1.0): |x| < 2 here, so truncation is exact.
        let x = h6 / 6.0 + shift;
        let frac = x - (x as i32) as f32;
        let h = if frac < 0.0 { frac + 1.0 } else { frac };
        let hi = h * 6.0;
        let sector = (hi as i32) as f32;
        let f = hi - sector;
        // h can round up to 1.0, which is sector 0 again.
        let sector = if sector >= 6.0 { sector - 6.0 } else { sector };
        let v = maxc;
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        let pick = |k: [f32; 6]| {
            let mut out = k[5];
            for (i, &value) in k.iter().enumerate().take(5).rev() {
                out = if sector == i as f32 { value } else { out };
            }
            out
        };
        let (nr, ng, nb) =
            (pick([v, q, p, p, t, v]), pick([t, v, v, q, p, p]), pick([p, p, t, v, v, q]));
        *r = if grey { rv } else { nr };
        *g = if grey { gv } else { ng };
        *b = if grey { bv } else { nb };
    }
}

/// Three equal channels of ITU-R 601-2 luma.
#[inline(always)]
pub(crate) fn grayscale(px: &mut [f32]) {
    let (r, g, b) = planes(px);
    for i in 0..r.len() {
        let l = LUMA[0] * r[i] + LUMA[1] * g[i] + LUMA[2] * b[i];
        r[i] = l;
        g[i] = l;
        b[i] = l;
    }
}

/// Mirror index (`dcb|abcd|cba`, torchvision's "reflect"), clamped so a
/// kernel wider than the view still reads inside it.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    r.clamp(0, n - 1) as usize
}

/// Separable gaussian blur of each `s` x `s` plane, radius `ceil(3 sigma)`,
/// sigma in pixels of the view.
#[inline(always)]
pub(crate) fn gaussian_blur(px: &mut [f32], s: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as usize;
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|k| {
            let d = k as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|w| *w /= total);

    let mut padded = vec![0f32; s + 2 * radius];
    let mut tmp = vec![0f32; s * s];
    let offsets: Vec<usize> =
        (0..s + 2 * radius).map(|i| reflect(i as isize - radius as isize, s)).collect();
    for plane in px.chunks_exact_mut(s * s) {
        // Rows: pad once per row so the inner loop has no bounds logic; the
        // middle is the row itself, only the margins are mirrored.
        for y in 0..s {
            let row = &plane[y * s..(y + 1) * s];
            padded[radius..radius + s].copy_from_slice(row);
            for i in (0..radius).chain(radius + s..s + 2 * radius) {
                padded[i] = row[offsets[i]];
            }
            convolve(&kernel, &mut tmp[y * s..(y + 1) * s], |k| &padded[k..k + s]);
        }
        // Columns: tap k of output row y is row `offsets[y + k]` of `tmp`.
        for y in 0..s {
            let out = &mut plane[y * s..(y + 1) * s];
            convolve(&kernel, out, |k| &tmp[offsets[y + k] * s..(offsets[y + k] + 1) * s]);
        }
    }
}

/// `out[x] = sum over k of kernel[k] * tap(k)[x]`, summed in the order of
/// `k` from 0.0. Outputs are taken a block of `BLOCK` at a time with the
/// block's sums held in registers over all taps (one load per
/// multiply-add, where a pass over the whole row per tap also loads and
/// stores the sums); the block is independent lanes, so it vectorises.
#[inline(always)]
fn convolve<'a>(kernel: &[f32], out: &mut [f32], tap: impl Fn(usize) -> &'a [f32]) {
    const BLOCK: usize = 16;
    let mut x0 = 0;
    while x0 < out.len() {
        let n = BLOCK.min(out.len() - x0);
        let mut acc = [0f32; BLOCK];
        for (k, &w) in kernel.iter().enumerate() {
            let src = &tap(k)[x0..x0 + n];
            if let Ok(src) = <&[f32; BLOCK]>::try_from(src) {
                for (a, v) in acc.iter_mut().zip(src) {
                    *a += w * v;
                }
            } else {
                for (a, v) in acc.iter_mut().zip(src) {
                    *a += w * v;
                }
            }
        }
        out[x0..x0 + n].copy_from_slice(&acc[..n]);
        x0 += n;
    }
}

/// PIL `ImageOps.solarize(img, 128)`: values at or above 128/255 inverted.
#[inline(always)]
pub(crate) fn solarize(px: &mut [f32]) {
    let threshold = 128.0 / 255.0;
    for v in px.iter_mut() {
        if *v >= threshold {
            *v = 1.0 - *v;
        }
    }
}

#[inline(always)]
pub(crate) fn normalize(px: &mut [f32]) {
    let n = px.len() / 3;
    for (c, plane) in px.chunks_exact_mut(n).enumerate() {
        let inv_std = 1.0 / IMAGENET_STD[c];
        for v in plane.iter_mut() {
            *v = (*v - IMAGENET_MEAN[c]) * inv_std;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_operations_match_torchvision() {
        // Saturation 0 leaves the grey level; contrast 0 leaves the mean grey.
        let mut px = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        adjust_saturation(&mut px, 0.0);
        assert!((px[0] - 0.299).abs() < 1e-6 && (px[2] - 0.299).abs() < 1e-6);
        let mut px = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        adjust_contrast(&mut px, 0.0);
        assert!(px.iter().all(|v| (v - 0.1495).abs() < 1e-6), "{px:?}");
        let mut px = vec![0.6, 0.2];
        adjust_brightness(&mut px, 2.0);
        assert_eq!(px, vec![1.0, 0.4]);
        // A third of a turn takes red to green, green to blue (planes: r r g g b b).
        let mut px = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        adjust_hue(&mut px, 1.0 / 3.0);
        for (a, b) in px.iter().zip([0.0, 0.0, 1.0, 0.0, 0.0, 1.0]) {
            assert!((a - b).abs() < 1e-5, "{px:?}");
        }
        let mut px = vec![0.3, 0.3, 0.3];
        adjust_hue(&mut px, 0.25);
        assert_eq!(px, vec![0.3, 0.3, 0.3]);
    }

    /// The textbook form of `adjust_hue` (one pixel, with branches), which
    /// the vectorisable one must equal.
    fn hue_reference(rv: f32, gv: f32, bv: f32, shift: f32) -> (f32, f32, f32) {
        let maxc = rv.max(gv).max(bv);
        let minc = rv.min(gv).min(bv);
        let chroma = maxc - minc;
        if chroma <= 0.0 {
            return (rv, gv, bv);
        }
        let s = chroma / maxc;
        let rc = (maxc - rv) / chroma;
        let gc = (maxc - gv) / chroma;
        let bc = (maxc - bv) / chroma;
        let h6 = if maxc == rv {
            bc - gc
        } else if maxc == gv {
            2.0 + rc - bc
        } else {
            4.0 + gc - rc
        };
        let h = (h6 / 6.0 + shift).rem_euclid(1.0);
        let hi = h * 6.0;
        let sector = hi.floor();
        let f = hi - sector;
        let v = maxc;
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        match sector as i32 % 6 {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        }
    }

    #[test]
    fn hue_equals_the_textbook_form_bit_for_bit() {
        let levels = [0.0f32, 0.05, 0.2, 0.37, 0.5, 0.81, 0.99, 1.0];
        let mut colours = Vec::new();
        for &r in &levels {
            for &g in &levels {
                for &b in &levels {
                    colours.push((r, g, b));
                }
            }
        }
        for shift in [-0.5f32, -0.1, -0.03, 0.0, 0.02, 0.1, 1.0 / 3.0, 0.5] {
            let n = colours.len();
            let mut px = vec![0f32; 3 * n];
            for (i, &(r, g, b)) in colours.iter().enumerate() {
                (px[i], px[n + i], px[2 * n + i]) = (r, g, b);
            }
            adjust_hue(&mut px, shift);
            for (i, &(r, g, b)) in colours.iter().enumerate() {
                let got = (px[i], px[n + i], px[2 * n + i]);
                assert_eq!(
                    got,
                    hue_reference(r, g, b, shift),
                    "rgb ({r}, {g}, {b}), shift {shift}"
                );
            }
        }
    }

    #[test]
    fn blur_keeps_a_flat_image_flat_and_spreads_a_point() {
        let s = 32;
        let mut flat = vec![0.5f32; 3 * s * s];
        gaussian_blur(&mut flat, s, 2.0);
        assert!(flat.iter().all(|v| (v - 0.5).abs() < 1e-5));
        let mut dot = vec![0f32; 3 * s * s];
        dot[16 * s + 16] = 1.0;
        gaussian_blur(&mut dot, s, 1.0);
        let total: f32 = dot[..s * s].iter().sum();
        assert!((total - 1.0).abs() < 1e-4 && dot[16 * s + 16] < 0.2);
        assert!((dot[16 * s + 15] - dot[16 * s + 17]).abs() < 1e-6);
    }

    /// Rows then columns, one output at a time, each a sum over the taps in
    /// order from 0.0: the f32s the blocked loops must give exactly.
    #[test]
    fn blur_sums_each_pixel_in_tap_order_bit_for_bit() {
        for (s, sigma) in [(37usize, 2.0f32), (16, 0.4), (5, 1.9)] {
            let mut px: Vec<f32> = (0..3 * s * s).map(|i| ((i * 53 % 97) as f32) / 96.0).collect();
            let input = px.clone();
            gaussian_blur(&mut px, s, sigma);
            let r = (3.0 * sigma).ceil() as isize;
            let mut w: Vec<f32> =
                (-r..=r).map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp()).collect();
            let total: f32 = w.iter().sum();
            w.iter_mut().for_each(|v| *v /= total);
            let pass = |src: &[f32], at: &dyn Fn(usize, usize, isize) -> usize| {
                let mut out = vec![0f32; s * s];
                for y in 0..s {
                    for x in 0..s {
                        let mut sum = 0.0f32;
                        for (k, wk) in w.iter().enumerate() {
                            sum += wk * src[at(y, x, k as isize - r)];
                        }
                        out[y * s + x] = sum;
                    }
                }
                out
            };
            for c in 0..3 {
                let plane = &input[c * s * s..(c + 1) * s * s];
                let rows = pass(plane, &|y, x, d| y * s + reflect(x as isize + d, s));
                let want = pass(&rows, &|y, x, d| reflect(y as isize + d, s) * s + x);
                assert_eq!(&px[c * s * s..(c + 1) * s * s], &want[..], "size {s}, sigma {sigma}");
            }
        }
    }

    #[test]
    fn blur_equals_a_direct_2d_convolution_with_reflected_borders() {
        let (s, sigma) = (11usize, 1.3f32);
        let mut px: Vec<f32> = (0..3 * s * s).map(|i| ((i * 37 % 101) as f32) / 100.0).collect();
        let input = px.clone();
        gaussian_blur(&mut px, s, sigma);
        let r = (3.0 * sigma).ceil() as isize;
        let w: Vec<f32> =
            (-r..=r).map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp()).collect();
        let total: f32 = w.iter().sum();
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let mut want = 0.0;
                    for (i, wy) in w.iter().enumerate() {
                        for (j, wx) in w.iter().enumerate() {
                            let sy = reflect(y as isize + i as isize - r, s);
                            let sx = reflect(x as isize + j as isize - r, s);
                            want += wy * wx / (total * total) * input[c * s * s + sy * s + sx];
                        }
                    }
                    let got = px[c * s * s + y * s + x];
                    assert!((got - want).abs() < 1e-5, "({c}, {y}, {x}): {got} != {want}");
                }
            }
        }
    }
}

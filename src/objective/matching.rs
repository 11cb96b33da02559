//! Positive pixel pairs between two views from their crop coordinates (spec section 2).
use tch::{Kind, Tensor};

/// Cell centres of an `h` x `w` grid laid over each crop, in normalised
/// image coordinates, flattened row-major (cell index `y * w + x`, as a
/// `[B, C, H, W]` map flattened over `H, W`), and each crop's bin diagonal.
///
/// `coords` is `[B, 4]` of `x0, y0, x1, y1`; a flipped crop has `x0 > x1`, so
/// its bin width is negative and its columns map right to left.
fn centres(coords: &Tensor, h: i64, w: i64) -> (Tensor, Tensor, Tensor) {
    let b = coords.size()[0];
    let c = coords.to_kind(Kind::Double); // [B, 4]
    let x0 = c.select(1, 0).view([b, 1, 1]); // [B, 1, 1]
    let y0 = c.select(1, 1).view([b, 1, 1]); // [B, 1, 1]
    let bw = (c.select(1, 2).view([b, 1, 1]) - &x0) / w as f64; // [B, 1, 1]
    let bh = (c.select(1, 3).view([b, 1, 1]) - &y0) / h as f64; // [B, 1, 1]
    let opts = (Kind::Double, coords.device());
    let xs = (Tensor::arange(w, opts) + 0.5).view([1, 1, w]); // [1, 1, W]
    let ys = (Tensor::arange(h, opts) + 0.5).view([1, h, 1]); // [1, H, 1]
    let cx = (xs * &bw + x0).expand([b, h, w], false).reshape([b, h * w]); // [B, HW]
    let cy = (ys * &bh + y0).expand([b, h, w], false).reshape([b, h * w]); // [B, HW]
    let diag = (&bw * &bw + &bh * &bh).sqrt().view([b]); // [B]
    (cx, cy, diag)
}

/// The positive-pair mask from view a to view b: `M[n, i, j] = 1` when cell
/// `i` of view a and cell `j` of view b are closer than `threshold` times the
/// larger of the two views' bin diagonals (strict `<`), else 0.
///
/// `coords_a`, `coords_b`: `[B, 4]` (`x0, y0, x1, y1`, normalised, inclusive
/// pixel indices, see spec section 1). Returns `[B, h*w, h*w]` float32 on the
/// coordinates' device, with no gradient. The distances are computed in
/// float64 so that cases on the boundary (distance / diagonal = 0.7071 next
/// to T = 0.7) do not depend on rounding. The mask from b to a is the
/// transpose of this one.
///
/// Panics, naming both sizes, when the coordinates are not two `[B, 4]`
/// tensors of the same `B`: they come from our own view sampler, not from a
/// user.
pub fn positive_mask(
    coords_a: &Tensor,
    coords_b: &Tensor,
    h: i64,
    w: i64,
    threshold: f64,
) -> Tensor {
    let (sa, sb) = (coords_a.size(), coords_b.size());
    assert!(
        sa.len() == 2 && sa[1] == 4 && sa == sb,
        "positive_mask: coordinates must both be [B, 4], got {sa:?} and {sb:?}"
    );
    assert!(h > 0 && w > 0, "positive_mask: grid must be non-empty, got {h} x {w}");
    tch::no_grad(|| {
        let (ax, ay, adiag) = centres(coords_a, h, w); // [B, HW] x2, [B]
        let (bx, by, bdiag) = centres(coords_b, h, w); // [B, HW] x2, [B]
        let dx = ax.unsqueeze(2) - bx.unsqueeze(1); // [B, HW, HW]
        let dy = ay.unsqueeze(2) - by.unsqueeze(1); // [B, HW, HW]
        let dist = (&dx * &dx + &dy * &dy).sqrt(); // [B, HW, HW]
        let max_diag = adiag.maximum(&bdiag).view([-1, 1, 1]); // [B, 1, 1]
        (dist / max_diag).lt(threshold).to_kind(Kind::Float) // [B, HW, HW]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positive_mask_single(a: [f32; 4], b: [f32; 4], h: i64, w: i64, t: f64) -> Tensor {
        let ca = Tensor::from_slice(&a).view([1, 4]);
        let cb = Tensor::from_slice(&b).view([1, 4]);
        positive_mask(&ca, &cb, h, w, t)
    }

    /// (positive pairs, view-1 cells with at least one positive)
    fn counts(a: [f32; 4], b: [f32; 4]) -> (i64, i64) {
        let m = positive_mask_single(a, b, 7, 7, 0.7); // [1, 49, 49]
        let pairs = m.sum(Kind::Float).double_value(&[]) as i64;
        let cells = m.amax([2], false).sum(Kind::Float).double_value(&[]) as i64;
        (pairs, cells)
    }

    #[test]
    fn golden_identical_views() {
        assert_eq!(counts([0., 0., 1., 1.], [0., 0., 1., 1.]), (49, 49));
    }

    #[test]
    fn golden_flipped_view_pairs_cell_0_with_cell_6() {
        assert_eq!(counts([0., 0., 1., 1.], [1., 0., 0., 1.]), (49, 49));
        let m = positive_mask_single([0., 0., 1., 1.], [1., 0., 0., 1.], 7, 7, 0.7);
        assert_eq!(m.double_value(&[0, 0, 6]), 1.0);
        assert_eq!(m.double_value(&[0, 0, 0]), 0.0);
    }

    #[test]
    fn golden_zoomed_view() {
        assert_eq!(counts([0., 0., 1., 1.], [0., 0., 0.5, 0.5]), (133, 16));
    }

    #[test]
    fn golden_disjoint_views() {
        assert_eq!(counts([0., 0., 0.4, 0.4], [0.6, 0.6, 1., 1.]), (0, 0));
    }

    #[test]
    fn golden_half_overlap() {
        assert_eq!(counts([0., 0., 0.5, 0.5], [0.25, 0., 0.75, 0.5]), (49, 28));
    }

    #[test]
    fn non_square_grid_is_row_major() {
        // 2 rows x 4 columns: bin 0.25 x 0.5, diagonal 0.559. A horizontal
        // neighbour is 0.447 diagonals away (positive), a vertical one 0.894.
        let m = positive_mask_single([0., 0., 1., 1.], [0., 0., 1., 1.], 2, 4, 0.7);
        assert_eq!(m.size(), vec![1, 8, 8]);
        assert_eq!(m.double_value(&[0, 0, 1]), 1.0, "cell (y0, x1) is index 1");
        assert_eq!(m.double_value(&[0, 0, 4]), 0.0, "cell (y1, x0) is index 4");
        assert_eq!(m.double_value(&[0, 5, 6]), 1.0);
        // Per row: 4 self pairs + 2 * 3 horizontal neighbours.
        assert_eq!(m.sum(Kind::Float).double_value(&[]), 20.0);
    }

    #[test]
    fn batch_is_per_image_and_mask_is_float_without_grad() {
        let a = Tensor::from_slice(&[0f32, 0., 1., 1., 0., 0., 0.4, 0.4]).view([2, 4]);
        let b = Tensor::from_slice(&[0f32, 0., 1., 1., 0.6, 0.6, 1., 1.]).view([2, 4]);
        let m = positive_mask(&a, &b, 7, 7, 0.7);
        assert_eq!(m.kind(), Kind::Float);
        assert!(!m.requires_grad());
        let per_image = m.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float);
        assert_eq!(Vec::<f32>::try_from(per_image).unwrap(), vec![49.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "[2, 4] and [3, 4]")]
    fn mismatched_batches_name_both_sizes() {
        let _ = positive_mask(
            &Tensor::zeros([2, 4], tch::kind::FLOAT_CPU),
            &Tensor::zeros([3, 4], tch::kind::FLOAT_CPU),
            7,
            7,
            0.7,
        );
    }
}

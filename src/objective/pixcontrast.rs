//! PixContrast, the paper's pixel-level contrastive baseline (spec section
//! 4): InfoNCE over the cells of two views, with the positives of PixPro's
//! matching rule and every other cell of the other view a negative.
use tch::{Kind, Tensor};

use crate::objective::loss::unit_cells_of_pair;
use crate::Result;

/// The paper's PixContrast temperature.
pub const TEMPERATURE: f64 = 0.3;

/// Logits of a cell with no positives: far enough below every real logit
/// (|cos / t| <= 1 / t) that `exp` of it is 0 in float32, yet finite, so that
/// the masked log-sum-exp has a finite gradient (an all `-inf` row would give
/// NaN).
const MASKED: f64 = -1e4;

/// `L(a->b)`: for every cell `i` of view a with at least one positive in view
/// b, with `s_ij = cos(p_a_i, z_b_j) / t` over all cells `j` of view b,
///
/// `l_i = -log( sum_{j in P(i)} exp(s_ij) / sum_j exp(s_ij) )`,
///
/// averaged over those cells of the whole batch (cells without positives are
/// left out; 0 when no cell has one).
///
/// - `p_a`: online features of view a, `[B, C, H, W]`;
/// - `z_b`: target features of view b, `[B, C, H', W']` (no gradient expected);
/// - `mask`: positives from a to b, `[B, H*W, H'*W']`, the same mask as
///   PixPro's loss (see [`crate::objective::matching::positive_mask`]).
///
/// Both inputs are normalised per cell here.
pub fn pixcontrast_loss(
    p_a: &Tensor,
    z_b: &Tensor,
    mask: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let (p, z) = unit_cells_of_pair("pixcontrast_loss", p_a, z_b, mask)?;
    let logits = p.transpose(1, 2).bmm(&z) / temperature; // [B, HW, H'W']
    let positive = mask.gt(0.5); // [B, HW, H'W']
    let all = logits.logsumexp([2i64].as_slice(), false); // [B, HW]
    let pos =
        logits.masked_fill(&positive.logical_not(), MASKED).logsumexp([2i64].as_slice(), false); // [B, HW]
    let anchors = positive.any_dim(2, false).to_kind(logits.kind()); // [B, HW]
    let n = anchors.sum(Kind::Float).clamp_min(1.0);
    Ok(((all - pos) * &anchors).sum(logits.kind()) / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::kind::FLOAT_CPU;

    /// One image, view a with 2 cells, view b with 3 cells, C = 2. Cell 0 of
    /// a has positives {0, 1} in b, cell 1 none.
    #[test]
    fn hand_computed_value() {
        // p_a cells: (1, 0), (0, 1); z_b cells: (1, 0), (0, 1), (-1, 0).
        let p = Tensor::from_slice(&[1f32, 0., 0., 1.]).view([1, 2, 1, 2]);
        let z = Tensor::from_slice(&[1f32, 0., -1., 0., 1., 0.]).view([1, 2, 1, 3]);
        let mask = Tensor::from_slice(&[1f32, 1., 0., 0., 0., 0.]).view([1, 2, 3]);
        let t = 0.5;
        let l = pixcontrast_loss(&p, &z, &mask, t).unwrap().double_value(&[]);
        // Cell 0: cosines 1, 0, -1 -> -log((e^2 + e^0) / (e^2 + e^0 + e^-2)).
        let (e2, e0, em2) = (2f64.exp(), 1.0, (-2f64).exp());
        let want = -((e2 + e0) / (e2 + e0 + em2)).ln();
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
    }

    /// With every cosine equal, `l_i = -log(|P(i)| / N)`: the loss counts
    /// exactly the positives of PixPro's matching rule.
    #[test]
    fn positives_are_pixpros_positives() {
        let c1 = Tensor::from_slice(&[0f32, 0., 0.8, 0.8, 0.1, 0.1, 1., 1.]).view([2, 4]);
        let c2 = Tensor::from_slice(&[0.2f32, 0.2, 1., 1., 1., 0., 0.2, 0.9]).view([2, 4]);
        let (h, w) = (3, 4);
        let mask = crate::objective::matching::positive_mask(&c1, &c2, h, w, 0.7); // [2, 12, 12]
        let ones = Tensor::ones([2, 5, h, w], FLOAT_CPU);
        let l = pixcontrast_loss(&ones, &ones, &mask, TEMPERATURE).unwrap().double_value(&[]);
        let counts = Vec::<f32>::try_from(
            mask.sum_dim_intlist([2i64].as_slice(), false, None::<Kind>).view([-1]),
        )
        .unwrap();
        let anchors: Vec<f64> =
            counts.iter().filter(|&&c| c > 0.0).map(|&c| -(f64::from(c) / 12.0).ln()).collect();
        assert!(anchors.len() > 1 && anchors.len() < 24, "{counts:?}");
        let want = anchors.iter().sum::<f64>() / anchors.len() as f64;
        assert!((l - want).abs() < 1e-4, "{l} vs {want}");
    }

    #[test]
    fn all_positives_give_zero_and_no_positives_give_zero() {
        let p = Tensor::randn([2, 4, 2, 2], FLOAT_CPU);
        let z = Tensor::randn([2, 4, 2, 2], FLOAT_CPU);
        let ones = Tensor::ones([2, 4, 4], FLOAT_CPU);
        let l = pixcontrast_loss(&p, &z, &ones, TEMPERATURE).unwrap().double_value(&[]);
        assert!(l.abs() < 1e-5, "{l}");
        let none = pixcontrast_loss(&p, &z, &ones.zeros_like(), TEMPERATURE).unwrap();
        assert_eq!(none.double_value(&[]), 0.0);
    }

    #[test]
    fn cells_without_positives_get_no_gradient_and_all_are_finite() {
        let p = Tensor::randn([1, 3, 1, 2], FLOAT_CPU).set_requires_grad(true);
        let z = Tensor::randn([1, 3, 1, 2], FLOAT_CPU);
        let mask = Tensor::from_slice(&[1f32, 0., 0., 0.]).view([1, 2, 2]);
        pixcontrast_loss(&p, &z, &mask, TEMPERATURE).unwrap().backward();
        let g = p.grad(); // [1, 3, 1, 2]
        assert_eq!(g.isfinite().all().int64_value(&[]), 1);
        assert_eq!(g.select(3, 1).abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(g.select(3, 0).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn a_closer_positive_lowers_the_loss() {
        let z = Tensor::from_slice(&[1f32, 0., 0., 1.]).view([1, 2, 1, 2]);
        let mask = Tensor::from_slice(&[1f32, 0., 0., 1.]).view([1, 2, 2]);
        let aligned = pixcontrast_loss(&z, &z, &mask, TEMPERATURE).unwrap().double_value(&[]);
        let swapped = z.flip([3]);
        let crossed = pixcontrast_loss(&swapped, &z, &mask, TEMPERATURE).unwrap().double_value(&[]);
        assert!(aligned < crossed, "{aligned} vs {crossed}");
    }

    #[test]
    fn mismatched_mask_is_an_error() {
        let p = Tensor::randn([2, 4, 2, 3], FLOAT_CPU);
        let err =
            pixcontrast_loss(&p, &p, &Tensor::ones([2, 5, 6], FLOAT_CPU), TEMPERATURE).unwrap_err();
        assert!(err.to_string().contains("expected [2, 6, 6]"), "{err}");
    }
}

//! The pixel consistency loss L(a->b) between the online prediction of one
//! view and the target features of the other (spec section 4).
use tch::{Kind, TchError, Tensor};

use crate::model::heads::normalize_cells;
use crate::Result;

/// Checks that `p_a` `[B, C, H, W]`, `z_b` `[B, C, H', W']` and `mask`
/// `[B, H*W, H'*W']` fit together (an error naming `loss` and every size
/// otherwise), and returns both maps unit-normalised per cell and flattened
/// to `[B, C, H*W]` and `[B, C, H'*W']`: what every pixel-pair loss starts
/// from.
pub(crate) fn unit_cells_of_pair(
    loss: &str,
    p_a: &Tensor,
    z_b: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (sp, sz, sm) = (p_a.size(), z_b.size(), mask.size());
    if sp.len() != 4 || sz.len() != 4 || sp[..2] != sz[..2] {
        return Err(TchError::Shape(format!(
            "{loss}: p_a {sp:?} and z_b {sz:?} must be [B, C, H, W] with the same B and C"
        ))
        .into());
    }
    let want = [sp[0], sp[2] * sp[3], sz[2] * sz[3]];
    if sm != want {
        return Err(TchError::Shape(format!(
            "{loss}: mask is {sm:?}, expected {want:?} for p_a {sp:?} and z_b {sz:?}"
        ))
        .into());
    }
    let (b, c) = (sp[0], sp[1]);
    let p = normalize_cells(p_a).reshape([b, c, -1]); // [B, C, HW]
    let z = normalize_cells(z_b).reshape([b, c, -1]); // [B, C, H'W']
    Ok((p, z))
}

/// `L(a->b) = -2 * mean_n [ sum_ij M_nij <p_a_ni, z_b_nj> / (sum_ij M_nij + 1e-6) ]`.
///
/// - `p_a`: online prediction of view a, `[B, C, H, W]` (PPM output);
/// - `z_b`: target features of view b, `[B, C, H', W']` (no gradient expected);
/// - `mask`: positives from a to b, `[B, H*W, H'*W']` (see
///   [`crate::objective::matching::positive_mask`]).
///
/// Both inputs are normalised per cell here. An image with no positive pair
/// contributes 0 and still counts in the mean. Each term is a cosine, so one
/// direction lies in [-2, 2] with -2 when every positive pair agrees exactly
/// (and 0 for an image without positives); the total `L(1->2) + L(2->1)` has
/// its minimum at -4. In practice the loss is negative: a value near 0 means
/// the features of positive pairs are unrelated.
///
/// Panics with both sizes when the shapes disagree; see
/// [`f_consistency_loss`] for the checked version.
pub fn consistency_loss(p_a: &Tensor, z_b: &Tensor, mask: &Tensor) -> Tensor {
    f_consistency_loss(p_a, z_b, mask).unwrap_or_else(|e| panic!("{e}"))
}

/// [`consistency_loss`] returning `Error::Torch(TchError::Shape)` naming the
/// mismatched sizes instead of panicking.
pub fn f_consistency_loss(p_a: &Tensor, z_b: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (p, z) = unit_cells_of_pair("consistency_loss", p_a, z_b, mask)?;
    let m = mask.to_kind(p.kind()); // [B, HW, H'W']
    let sim = p.transpose(1, 2).bmm(&z); // [B, HW, H'W']
    let agree = (sim * &m).sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>); // [B]
    let count = m.sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>); // [B]
    Ok((agree / (count + 1e-6)).mean(None::<Kind>) * -2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::kind::FLOAT_CPU;

    #[test]
    fn identical_features_on_the_diagonal_give_minus_two() {
        let x = Tensor::randn([3, 5, 2, 2], FLOAT_CPU);
        let eye = Tensor::eye(4, FLOAT_CPU).unsqueeze(0).repeat([3, 1, 1]); // [3, 4, 4]
        let l = consistency_loss(&(&x * 3.0), &x, &eye).double_value(&[]);
        assert!((l + 2.0).abs() < 1e-5, "{l}");
    }

    #[test]
    fn image_without_positives_counts_zero_in_the_mean() {
        let x = Tensor::randn([2, 5, 2, 2], FLOAT_CPU);
        let mask = Tensor::zeros([2, 4, 4], FLOAT_CPU);
        mask.get(0).copy_(&Tensor::eye(4, FLOAT_CPU));
        let l = consistency_loss(&x, &x, &mask).double_value(&[]);
        assert!((l + 1.0).abs() < 1e-5, "{l}");
        let none = consistency_loss(&x, &x, &Tensor::zeros([2, 4, 4], FLOAT_CPU));
        assert_eq!(none.double_value(&[]), 0.0);
    }

    #[test]
    fn opposite_features_give_plus_two() {
        let x = Tensor::randn([1, 3, 1, 2], FLOAT_CPU);
        let l = consistency_loss(&x, &(-&x), &Tensor::eye(2, FLOAT_CPU).unsqueeze(0));
        assert!((l.double_value(&[]) - 2.0).abs() < 1e-5);
    }

    #[test]
    fn different_grids_and_mismatches() {
        let p = Tensor::randn([2, 4, 2, 3], FLOAT_CPU);
        let z = Tensor::randn([2, 4, 1, 5], FLOAT_CPU);
        let ok = f_consistency_loss(&p, &z, &Tensor::ones([2, 6, 5], FLOAT_CPU)).unwrap();
        assert_eq!(ok.size(), Vec::<i64>::new());
        let err = f_consistency_loss(&p, &z, &Tensor::ones([2, 5, 6], FLOAT_CPU)).unwrap_err();
        assert!(err.to_string().contains("[2, 5, 6], expected [2, 6, 5]"), "{err}");
        let z3 = Tensor::randn([2, 3, 1, 5], FLOAT_CPU);
        let err = f_consistency_loss(&p, &z3, &Tensor::ones([2, 6, 5], FLOAT_CPU)).unwrap_err();
        assert!(err.to_string().contains("[2, 4, 2, 3] and z_b [2, 3, 1, 5]"), "{err}");
    }
}

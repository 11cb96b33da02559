//! The Pixel Propagation Module: smooths each cell's feature with those of
//! similar cells of the same view (spec section 3, "PPM").
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::model::heads::normalize_cells;
use crate::model::heads::{conv1x1, conv_mlp, ConvMlp};
use crate::{Error, Result};

/// The value transform g.
#[derive(Debug)]
enum Transform {
    Identity,
    Conv(nn::Conv2D),
    Mlp(Box<ConvMlp>),
}

/// For `x` of one view (`[B, C, H, W]`, cells i, j over all `H*W`):
///
/// ```text
/// xn_i = x_i / |x_i|
/// A_ij = max(<xn_i, xn_j>, 0) ^ gamma
/// v_j  = g(x)_j / |g(x)_j|
/// y_i  = sum_j A_ij v_j          (j over every cell, i included)
/// ```
///
/// No softmax, no row normalisation; gradients flow through A as well as v.
/// g is the identity (0 layers), `conv1x1` with bias (1 layer, named
/// `transform`), or conv-BN-ReLU-conv (2 layers, `transform.linear1` ...).
#[derive(Debug)]
pub struct Ppm {
    gamma: f64,
    transform: Transform,
}

/// Builds a PPM over `dim` channels under `p`. `gamma` must be finite and
/// positive, `transform_layers` 0, 1 or 2.
pub fn ppm(p: &nn::Path, dim: i64, gamma: f64, transform_layers: u8) -> Result<Ppm> {
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(Error::config("model.ppm_gamma", format!("{gamma} must be finite and > 0")));
    }
    let t = p / "transform";
    let transform = match transform_layers {
        0 => Transform::Identity,
        1 => Transform::Conv(conv1x1(&t, dim, dim)),
        2 => Transform::Mlp(Box::new(conv_mlp(&t, dim, dim, dim))),
        n => return Err(Error::config("model.ppm_layers", format!("{n} is not one of 0, 1, 2"))),
    };
    Ok(Ppm { gamma, transform })
}

impl ModuleT for Ppm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (b, c, h, w) = x.size4().expect("Ppm: input must be [B, C, H, W]");
        let xn = normalize_cells(x).reshape([b, c, h * w]); // [B, C, HW]
        let cos = xn.transpose(1, 2).bmm(&xn); // [B, HW, HW]
        let pos = cos.clamp_min(0.0); // [B, HW, HW]

        // d(a^gamma)/da is infinite at a = 0 for gamma < 1; the reference
        // release adds 1e-6 in that case, so do we (no change for gamma >= 1).
        let pos = if self.gamma < 1.0 { pos + 1e-6 } else { pos }; // [B, HW, HW]
        let a = pos.pow_tensor_scalar(self.gamma); // [B, HW, HW]
        let g = match &self.transform {
            Transform::Identity => x.shallow_clone(),
            Transform::Conv(conv) => x.apply(conv),
            Transform::Mlp(mlp) => mlp.forward_t(x, train),
        }; // [B, C, H, W]
        let v = normalize_cells(&g).reshape([b, c, h * w]); // [B, C, HW]
        v.bmm(&a.transpose(1, 2)).reshape([b, c, h, w]) // [B, C, H, W]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn identity_transform_matches_the_equation_by_loops() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = ppm(&vs.root(), 3, 2.0, 0).unwrap();
        let x = Tensor::randn([1, 3, 2, 2], (Kind::Double, Device::Cpu));
        let y = m.forward_t(&x, true).reshape([3, 4]);
        let cells = x.reshape([3, 4]);
        let xn: Vec<Tensor> = (0..4)
            .map(|i| {
                let c = cells.select(1, i);
                &c / c.norm()
            })
            .collect();
        for i in 0..4 {
            let mut want = Tensor::zeros([3], (Kind::Double, Device::Cpu));
            for j in 0..4 {
                let a = xn[i].dot(&xn[j]).double_value(&[]).max(0.0).powi(2);
                want += &xn[j] * a;
            }
            assert!(y.select(1, i as i64).allclose(&want, 1e-10, 1e-10, false), "cell {i}");
        }
    }

    #[test]
    fn shapes_names_and_config_errors() {
        for (layers, n_vars) in [(0, 0), (1, 2), (2, 9)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = ppm(&(vs.root() / "ppm"), 4, 2.0, layers).unwrap();
            assert_eq!(vs.variables().len(), n_vars, "{layers} layers");
            let y = m.forward_t(&Tensor::randn([2, 4, 3, 2], tch::kind::FLOAT_CPU), true);
            assert_eq!(y.size(), vec![2, 4, 3, 2]);
        }
        let vs = nn::VarStore::new(Device::Cpu);
        ppm(&(vs.root() / "ppm"), 4, 2.0, 1).unwrap();
        assert!(vs.variables().contains_key("ppm.transform.weight"));
        let key = |r: Result<Ppm>| match r {
            Err(Error::Config { key, .. }) => key,
            _ => panic!("expected a config error"),
        };
        assert_eq!(key(ppm(&vs.root(), 4, 2.0, 3)), "model.ppm_layers");
        assert_eq!(key(ppm(&vs.root(), 4, 0.0, 1)), "model.ppm_gamma");
    }

    #[test]
    fn gradient_flows_through_the_similarity() {
        // With the identity transform the only path besides v is A; gamma
        // 0.5 checks that the gradient stays finite where A is clamped to 0.
        for gamma in [2.0, 0.5] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = ppm(&vs.root(), 3, gamma, 0).unwrap();
            let x = Tensor::randn([1, 3, 3, 3], tch::kind::FLOAT_CPU).set_requires_grad(true);
            let y = m.forward_t(&x, true);
            let g = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x], false, false);
            assert!(g[0].abs().sum(Kind::Float).double_value(&[]) > 0.0, "gamma {gamma}");
            assert!(g[0].isfinite().all().int64_value(&[]) == 1, "gamma {gamma}");
        }
    }
}

//! The instance branch (spec section 3), BYOL-style: per-cell instance
//! projector and predictor, then average pooling to one vector per image,
//! and its loss (spec section 4). Alone it is the `byol` baseline; added to
//! the pixel loss with weight alpha it is `pixpro+instance`.
use tch::nn;
use tch::{Kind, TchError, Tensor};

use crate::model::heads::normalize_cells;
use crate::model::heads::{conv_mlp, ConvMlp};
use crate::Result;

/// The online side: instance projector (same shape as the pixel projector)
/// and predictor (`out_dim -> hidden -> out_dim`, BN and ReLU between).
/// Variable names `projector_instance.*` and `predictor.*`; the target holds
/// only `projector_instance.*`.
#[derive(Debug)]
pub struct InstanceHeads {
    pub projector: ConvMlp,
    pub predictor: Option<ConvMlp>,
}

impl InstanceHeads {
    /// The online heads under `root`: projector and predictor.
    pub fn online(root: &nn::Path, in_dim: i64, hidden: i64, out_dim: i64) -> InstanceHeads {
        InstanceHeads {
            projector: conv_mlp(&(root / "projector_instance"), in_dim, hidden, out_dim),
            predictor: Some(conv_mlp(&(root / "predictor"), out_dim, hidden, out_dim)),
        }
    }

    /// The target's heads under `root`: the projector only.
    pub fn target(root: &nn::Path, in_dim: i64, hidden: i64, out_dim: i64) -> InstanceHeads {
        InstanceHeads {
            projector: conv_mlp(&(root / "projector_instance"), in_dim, hidden, out_dim),
            predictor: None,
        }
    }

    /// One unit vector per image: `[B, C, H, W]` encoder map ->
    /// `normalize(avgpool(predictor(projector(x))))`, `[B, D]` (no predictor
    /// on the target side).
    pub fn forward_t(&self, c5: &Tensor, train: bool) -> Tensor {
        let x = c5.apply_t(&self.projector, train); // [B, D, H, W]
        let x = match &self.predictor {
            Some(p) => x.apply_t(p, train), // [B, D, H, W]
            None => x,
        };
        normalize_cells(&pool(&x)) // [B, D]
    }
}

/// Average over the cells: `[B, D, H, W]` -> `[B, D]`.
fn pool(x: &Tensor) -> Tensor {
    x.mean_dim([2i64, 3].as_slice(), false, None::<Kind>)
}

/// `-2 mean_n <q_a_n, z_b_n>` for unit vectors `q_a`, `z_b` of shape
/// `[B, D]`: -2 when each image's prediction matches its target, in [-2, 2].
pub fn instance_loss(q_a: &Tensor, z_b: &Tensor) -> Result<Tensor> {
    let (sq, sz) = (q_a.size(), z_b.size());
    if sq.len() != 2 || sq != sz {
        return Err(TchError::Shape(format!(
            "instance_loss: q_a {sq:?} and z_b {sz:?} must both be [B, D]"
        ))
        .into());
    }
    Ok((q_a * z_b).sum_dim_intlist([1i64].as_slice(), false, None::<Kind>).mean(None::<Kind>)
        * -2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::kind::FLOAT_CPU;
    use tch::Device;

    #[test]
    fn shapes_names_and_unit_outputs() {
        let vs = nn::VarStore::new(Device::Cpu);
        let online = InstanceHeads::online(&vs.root(), 8, 12, 4);
        let ts = nn::VarStore::new(Device::Cpu);
        let target = InstanceHeads::target(&ts.root(), 8, 12, 4);
        let mut names: Vec<_> = vs.variables().into_keys().collect();
        names.sort();
        assert!(names.contains(&"predictor.linear1.weight".to_string()), "{names:?}");
        assert!(names.contains(&"projector_instance.linear2.weight".to_string()), "{names:?}");
        assert_eq!(vs.variables()["predictor.linear1.weight"].size(), [12, 4, 1, 1]);
        assert_eq!(vs.variables()["projector_instance.linear1.weight"].size(), [12, 8, 1, 1]);
        assert!(ts.variables().keys().all(|k| k.starts_with("projector_instance.")));
        assert_eq!(ts.trainable_variables().len() * 2, vs.trainable_variables().len());

        let x = Tensor::randn([3, 8, 5, 4], FLOAT_CPU);
        for y in [online.forward_t(&x, true), target.forward_t(&x, true)] {
            assert_eq!(y.size(), [3, 4]);
            let norms = y.norm_scalaropt_dim(2, [1], false);
            assert!(norms.allclose(&Tensor::ones([3], FLOAT_CPU), 1e-5, 1e-5, false));
        }
    }

    #[test]
    fn pooling_is_the_mean_over_cells() {
        let x = Tensor::from_slice(&[1f32, 2., 3., 6.]).view([1, 1, 2, 2]);
        assert_eq!(Vec::<f32>::try_from(pool(&x).view([-1])).unwrap(), [3.0]);
    }

    #[test]
    fn loss_values() {
        let q = normalize_cells(&Tensor::randn([4, 6], FLOAT_CPU));
        let same = instance_loss(&q, &q).unwrap().double_value(&[]);
        assert!((same + 2.0).abs() < 1e-5, "{same}");
        let opposite = instance_loss(&q, &(-&q)).unwrap().double_value(&[]);
        assert!((opposite - 2.0).abs() < 1e-5, "{opposite}");
        let a = Tensor::from_slice(&[1f32, 0., 1., 0.]).view([2, 2]);
        let b = Tensor::from_slice(&[1f32, 0., 0., 1.]).view([2, 2]);
        let half = instance_loss(&a, &b).unwrap().double_value(&[]);
        assert!((half + 1.0).abs() < 1e-6, "{half}");
        assert!(instance_loss(&a, &Tensor::ones([3, 2], FLOAT_CPU)).is_err());
    }
}

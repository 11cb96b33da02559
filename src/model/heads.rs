//! Per-pixel MLP heads built from 1x1 convolutions: the projector of spec
//! section 3 (and, with other sizes, the instance projector and predictor).
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::model::resnet::{batch_norm2d, BatchNorm2d};

/// `conv1x1(in -> hidden, bias) -> BatchNorm2d -> ReLU -> conv1x1(hidden ->
/// out, bias)`, applied to every cell of a `[B, in, H, W]` map. The BN
/// statistics are over `B*H*W` cells. Parameter names `linear1`, `bn1`,
/// `linear2`, as the reference release's `MLP2d`.
#[derive(Debug)]
pub struct ConvMlp {
    linear1: nn::Conv2D,
    bn1: BatchNorm2d,
    linear2: nn::Conv2D,
}

/// A 1x1 conv with bias, initialised as PyTorch's `nn.Conv2d` default (weight
/// and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))): the spec gives no init
/// for the heads, and this is what a PyTorch implementation gets.
pub(crate) fn conv1x1(p: &nn::Path, c_in: i64, c_out: i64) -> nn::Conv2D {
    let bound = 1.0 / (c_in as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    nn::conv2d(
        p,
        c_in,
        c_out,
        1,
        nn::ConvConfig { ws_init: init, bs_init: init, ..Default::default() },
    )
}

/// Builds a [`ConvMlp`] under `p`; BN weight 1, bias 0.
pub fn conv_mlp(p: &nn::Path, in_dim: i64, hidden: i64, out_dim: i64) -> ConvMlp {
    ConvMlp {
        linear1: conv1x1(&(p / "linear1"), in_dim, hidden),
        bn1: batch_norm2d(&(p / "bn1"), hidden, 1.0),
        linear2: conv1x1(&(p / "linear2"), hidden, out_dim),
    }
}

/// The pixel projector: encoder channels -> `hidden` (4096) -> `out_dim` (256),
/// no output BN.
pub fn projector(p: &nn::Path, in_dim: i64, hidden: i64, out_dim: i64) -> ConvMlp {
    conv_mlp(p, in_dim, hidden, out_dim)
}

/// Unit-normalises every cell of a `[B, C, ...]` map along the channels, as
/// `F.normalize(x, dim=1)` (norms clamped at 1e-12 so a zero cell stays 0):
/// how the loss, the PPM's similarities and the instance branch all read a
/// head's output.
pub fn normalize_cells(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12) // [B, C, ...]
}

impl ModuleT for ConvMlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.linear1) // [B, hidden, H, W]
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.linear2) // [B, out, H, W]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn names_shapes_and_per_cell_action() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = projector(&(vs.root() / "projector"), 6, 10, 4);
        let mut names: Vec<_> =
            vs.variables().into_iter().map(|(k, t)| format!("{k} {:?}", t.size())).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "projector.bn1.bias [10]",
                "projector.bn1.num_batches_tracked []",
                "projector.bn1.running_mean [10]",
                "projector.bn1.running_var [10]",
                "projector.bn1.weight [10]",
                "projector.linear1.bias [10]",
                "projector.linear1.weight [10, 6, 1, 1]",
                "projector.linear2.bias [4]",
                "projector.linear2.weight [4, 10, 1, 1]",
            ]
        );
        let x = Tensor::randn([2, 6, 3, 5], tch::kind::FLOAT_CPU);
        let y = mlp.forward_t(&x, true);
        assert_eq!(y.size(), vec![2, 4, 3, 5]);
        // BatchNorm2d over N*H*W: the same result when the cells are laid out
        // as a [N*H*W, C, 1, 1] batch instead.
        let cells = x.permute([0, 2, 3, 1]).reshape([30, 6, 1, 1]);
        let y_cells = mlp.forward_t(&cells, true).reshape([2, 3, 5, 4]).permute([0, 3, 1, 2]);
        assert!(y.allclose(&y_cells, 1e-5, 1e-5, false));
        assert_eq!(vs.variables()["projector.bn1.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    }
}

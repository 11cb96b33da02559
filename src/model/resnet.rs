//! ResNet-18/34/50 encoders with torchvision's parameter names, returning the
//! C5 map (spec section 3, "Encoder").
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::distributed::syncbn::{self, BnState};
use crate::{Error, Result};

/// The encoder architecture; TOML values `"resnet18"`, `"resnet34"`,
/// `"resnet50"`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
}

const ARCH_NAMES: &str = "resnet18, resnet34, resnet50";

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::ResNet18, Arch::ResNet34, Arch::ResNet50];

    /// Channels of the C5 map.
    pub fn out_channels(self) -> i64 {
        match self {
            Arch::ResNet18 | Arch::ResNet34 => 512,
            Arch::ResNet50 => 2048,
        }
    }

    /// Blocks per stage (layer1..layer4), as torchvision.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
        }
    }

    /// Bottleneck blocks (1x1, 3x3, 1x1) rather than two 3x3 convolutions.
    pub fn bottleneck(self) -> bool {
        self == Arch::ResNet50
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        })
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resnet18" => Ok(Arch::ResNet18),
            "resnet34" => Ok(Arch::ResNet34),
            "resnet50" => Ok(Arch::ResNet50),
            _ => Err(Error::config(
                "model.arch",
                format!("unknown `{s}`, expected one of {ARCH_NAMES}"),
            )),
        }
    }
}

/// `nn.BatchNorm2d` with torchvision's state: weight, bias, running_mean,
/// running_var and the int64 `num_batches_tracked` counter, which tch's own
/// batch norm lacks. The counter is only bookkeeping (the running averages use
/// a fixed momentum 0.1), kept so that a saved store has exactly the keys
/// PyTorch's `load_state_dict` expects. In training mode it is synchronised
/// over the ranks of a data-parallel run while [`syncbn`] has a group.
#[derive(Debug)]
pub struct BatchNorm2d {
    bn: nn::BatchNorm,
    num_batches_tracked: Tensor,
    momentum: f64,
    eps: f64,
}

/// A `BatchNorm2d` over `channels` whose weight starts at `weight` and bias at
/// 0 (tch's default weight would be Uniform(0, 1)).
pub fn batch_norm2d(p: &nn::Path, channels: i64, weight: f64) -> BatchNorm2d {
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(weight),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    let bn = nn::batch_norm2d(p, channels, cfg);
    let num_batches_tracked =
        p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false);
    BatchNorm2d { bn, num_batches_tracked, momentum: cfg.momentum, eps: cfg.eps }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            let mut count = self.num_batches_tracked.shallow_clone();
            tch::no_grad(|| {
                count += 1i64;
            });
            if let Some(group) = syncbn::group() {
                let state = BnState {
                    weight: self.bn.ws.as_ref(),
                    bias: self.bn.bs.as_ref(),
                    running_mean: &self.bn.running_mean,
                    running_var: &self.bn.running_var,
                    momentum: self.momentum,
                    eps: self.eps,
                };
                return syncbn::batch_norm(xs, &state, &group);
            }
        }
        xs.apply_t(&self.bn, train)
    }
}

/// Conv without bias, weight ~ N(0, sqrt(2 / (k*k*out))) (He, fan-out; the
/// spec and torchvision's init).
fn conv(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, dilation: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: dilation * (k - 1) / 2,
        dilation,
        bias: false,
        ws_init: nn::Init::Randn { mean: 0.0, stdev: (2.0 / (k * k * c_out) as f64).sqrt() },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// One residual block: a chain of conv-BN pairs with ReLU between them (two
/// 3x3 for BasicBlock; 1x1, 3x3, 1x1 for Bottleneck), an optional projection
/// shortcut, and a ReLU after the sum.
#[derive(Debug)]
struct Block {
    branch: Vec<(nn::Conv2D, BatchNorm2d)>,
    downsample: Option<(nn::Conv2D, BatchNorm2d)>,
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.shallow_clone();
        for (i, (c, bn)) in self.branch.iter().enumerate() {
            ys = ys.apply(c).apply_t(bn, train);
            if i + 1 < self.branch.len() {
                ys = ys.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some((c, bn)) => xs.apply(c).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (shortcut + ys).relu()
    }
}

/// Builds one block. `dilation` is the one the 3x3 convs use; the stride sits
/// on the (first) 3x3 conv (ResNet v1.5).
fn block(p: &nn::Path, arch: Arch, c_in: i64, planes: i64, stride: i64, dilation: i64) -> Block {
    let c_out = if arch.bottleneck() { planes * 4 } else { planes };
    // The last BN of each block starts at 0, so each block starts as the
    // identity (spec section 3; torchvision's zero_init_residual).
    let branch = if arch.bottleneck() {
        vec![
            (conv(&(p / "conv1"), c_in, planes, 1, 1, 1), batch_norm2d(&(p / "bn1"), planes, 1.0)),
            (
                conv(&(p / "conv2"), planes, planes, 3, stride, dilation),
                batch_norm2d(&(p / "bn2"), planes, 1.0),
            ),
            (conv(&(p / "conv3"), planes, c_out, 1, 1, 1), batch_norm2d(&(p / "bn3"), c_out, 0.0)),
        ]
    } else {
        vec![
            (
                conv(&(p / "conv1"), c_in, planes, 3, stride, dilation),
                batch_norm2d(&(p / "bn1"), planes, 1.0),
            ),
            (
                conv(&(p / "conv2"), planes, planes, 3, 1, dilation),
                batch_norm2d(&(p / "bn2"), planes, 0.0),
            ),
        ]
    };
    let downsample = (stride != 1 || c_in != c_out).then(|| {
        let d = p / "downsample";
        (conv(&(&d / "0"), c_in, c_out, 1, stride, 1), batch_norm2d(&(&d / "1"), c_out, 1.0))
    });
    Block { branch, downsample }
}

/// A ResNet trunk without pooling or classifier: `forward_t` maps
/// `[B, 3, H, W]` to the C5 map `[B, out_channels, H/os, W/os]` (rounded up
/// at each stride-2 step).
#[derive(Debug)]
pub struct ResNet {
    arch: Arch,
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    pub fn arch(&self) -> Arch {
        self.arch
    }
}

/// Why a ResNet cannot be built at `output_stride`, if it cannot: the one
/// list of strides that [`resnet`], the config and plans check against.
pub fn unsupported_output_stride(output_stride: u32) -> Option<String> {
    (![32, 16, 8].contains(&output_stride))
        .then(|| format!("{output_stride} is not one of 32, 16, 8"))
}

/// Builds `arch` under `p` with torchvision's names (`conv1`, `bn1`,
/// `layer1.0.conv1`, ..., `layer2.0.downsample.{0,1}`; no `fc`).
///
/// `output_stride` 32, 16 or 8 replaces the stride of layer4, or of layer3
/// and layer4, by dilation, as torchvision's `replace_stride_with_dilation`
/// `[F, F, F]`, `[F, F, T]`, `[F, T, T]`. torchvision refuses dilation in
/// BasicBlock; here ResNet-18/34 dilate both of its 3x3 convs the same way.
pub fn resnet(p: &nn::Path, arch: Arch, output_stride: u32) -> Result<ResNet> {
    if let Some(reason) = unsupported_output_stride(output_stride) {
        return Err(Error::config("model.output_stride", reason));
    }
    // Which of layer2, layer3, layer4 dilate instead of striding.
    let dilate = [false, output_stride == 8, output_stride < 32];
    let conv1 = conv(&(p / "conv1"), 3, 64, 7, 2, 1);
    let bn1 = batch_norm2d(&(p / "bn1"), 64, 1.0);
    let expansion = if arch.bottleneck() { 4 } else { 1 };
    let mut c_in = 64;
    let mut dilation = 1;
    let mut layers = Vec::with_capacity(4);
    for (i, &n) in arch.blocks().iter().enumerate() {
        let planes = 64 << i;
        let mut stride = if i == 0 { 1 } else { 2 };
        // As torchvision: the first block of a dilated stage keeps the
        // previous dilation, the later ones use the new one.
        let previous_dilation = dilation;
        if i > 0 && dilate[i - 1] {
            dilation *= stride;
            stride = 1;
        }
        let lp = p / format!("layer{}", i + 1);
        let mut blocks = vec![block(&(&lp / "0"), arch, c_in, planes, stride, previous_dilation)];
        c_in = planes * expansion;
        for j in 1..n {
            blocks.push(block(&(&lp / j), arch, c_in, planes, 1, dilation));
        }
        layers.push(blocks);
    }
    Ok(ResNet { arch, conv1, bn1, layers })
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs
            .apply(&self.conv1) // [B, 64, H/2, W/2]
            .apply_t(&self.bn1, train)
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false); // [B, 64, H/4, W/4]
        for block in self.layers.iter().flatten() {
            ys = ys.apply_t(block, train);
        }
        ys // [B, C5, H/os, W/os]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tch::Device;

    fn names_and_shapes(vs: &nn::VarStore) -> BTreeMap<String, Vec<i64>> {
        vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect()
    }

    fn torchvision_keys(arch: &str) -> BTreeMap<String, Vec<i64>> {
        let path =
            format!("{}/tests/fixtures/torchvision_{arch}_keys.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect(&path);
        serde_json::from_str(&text).expect(&path)
    }

    fn assert_same_keys(arch: Arch) {
        let vs = nn::VarStore::new(Device::Cpu);
        resnet(&vs.root(), arch, 32).unwrap();
        let ours = names_and_shapes(&vs);
        let theirs = torchvision_keys(&arch.to_string());
        let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
        for (k, shape) in &theirs {
            assert_eq!(&ours[k], shape, "{k}");
        }
    }

    #[test]
    fn resnet18_names_and_shapes_match_torchvision() {
        assert_same_keys(Arch::ResNet18);
    }

    #[test]
    fn resnet50_names_and_shapes_match_torchvision() {
        assert_same_keys(Arch::ResNet50);
    }

    #[test]
    fn output_stride_sets_the_c5_size() {
        let x = Tensor::zeros([1, 3, 64, 64], tch::kind::FLOAT_CPU);
        for (arch, os, side) in [
            (Arch::ResNet18, 32, 2),
            (Arch::ResNet18, 16, 4),
            (Arch::ResNet18, 8, 8),
            (Arch::ResNet50, 16, 4),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = resnet(&vs.root(), arch, os).unwrap();
            let y = tch::no_grad(|| net.forward_t(&x, false));
            assert_eq!(y.size(), vec![1, arch.out_channels(), side, side], "{arch} os {os}");
        }
    }

    #[test]
    fn bad_output_stride_is_a_config_error() {
        let vs = nn::VarStore::new(Device::Cpu);
        match resnet(&vs.root(), Arch::ResNet18, 4) {
            Err(Error::Config { key, .. }) => assert_eq!(key, "model.output_stride"),
            other => panic!("expected a config error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn init_follows_the_spec() {
        let vs = nn::VarStore::new(Device::Cpu);
        resnet(&vs.root(), Arch::ResNet50, 32).unwrap();
        let v = vs.variables();
        let all = |name: &str, value: f64| {
            let t = &v[name];
            assert!(t.eq(value).all().int64_value(&[]) == 1, "{name} is not all {value}");
        };
        all("bn1.weight", 1.0);
        all("bn1.bias", 0.0);
        all("layer1.0.bn1.weight", 1.0);
        all("layer1.0.bn3.weight", 0.0);
        all("layer4.2.bn3.weight", 0.0);
        all("layer4.2.bn3.bias", 0.0);
        all("layer2.0.downsample.1.weight", 1.0);
        all("layer3.1.bn2.running_var", 1.0);
        // layer4.0.conv1: 1x1 to 512 channels, std sqrt(2/512) = 0.0625.
        let std = v["layer4.0.conv1.weight"].std(true).double_value(&[]);
        assert!((std - 0.0625).abs() < 0.002, "std {std}");
        let vs18 = nn::VarStore::new(Device::Cpu);
        resnet(&vs18.root(), Arch::ResNet18, 32).unwrap();
        let t = &vs18.variables()["layer3.1.bn2.weight"];
        assert_eq!(t.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn batch_norm_counts_training_batches_only() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = batch_norm2d(&vs.root(), 2, 1.0);
        let x = Tensor::randn([3, 2, 2, 2], tch::kind::FLOAT_CPU);
        let _ = bn.forward_t(&x, true);
        let _ = bn.forward_t(&x, true);
        let _ = bn.forward_t(&x, false);
        assert_eq!(vs.variables()["num_batches_tracked"].int64_value(&[]), 2);
    }

    #[test]
    fn arch_names_round_trip() {
        for a in [Arch::ResNet18, Arch::ResNet34, Arch::ResNet50] {
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
        }
        let err = "resnet101".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("resnet18, resnet34, resnet50"), "{err}");
        #[derive(Deserialize)]
        struct T {
            arch: Arch,
        }
        let t: T = toml::from_str("arch = \"resnet50\"").unwrap();
        assert_eq!(t.arch, Arch::ResNet50);
    }
}

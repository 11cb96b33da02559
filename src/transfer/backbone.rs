//! The frozen encoder that transfer uses: the online ResNet taken out of a
//! training checkpoint (or a randomly initialised one, the baseline), with
//! torchvision parameter names, for `probe`, `embed` and `export`.
use std::path::Path;

use tch::{nn, nn::ModuleT, Device, Tensor};

use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
use crate::model::resnet::{resnet, Arch, ResNet};
use crate::train::checkpoint::Checkpoint;
use crate::Result;

pub struct Backbone {
    vs: nn::VarStore,
    net: ResNet,
    pub arch: Arch,
    pub output_stride: u32,
    /// Where the weights came from, for reports.
    pub source: String,
}

impl Backbone {
    /// The online encoder of a pretraining checkpoint; architecture and
    /// output stride come from the config saved inside it.
    pub fn from_checkpoint(path: &Path, device: Device) -> Result<Backbone> {
        let ck = Checkpoint::load(path)?;
        let cfg = ck.config()?;
        let (arch, os) = (cfg.model.arch, cfg.model.output_stride);
        let mut vs = nn::VarStore::new(device);
        let net = resnet(&vs.root(), arch, os)?;
        ck.restore_part("online", "encoder.", &mut vs)?;
        vs.freeze();
        Ok(Backbone { vs, net, arch, output_stride: os, source: path.display().to_string() })
    }

    /// A ResNet with the spec's initialisation and nothing learned.
    pub fn random(arch: Arch, output_stride: u32, seed: u64, device: Device) -> Result<Backbone> {
        tch::manual_seed(seed as i64);
        let mut vs = nn::VarStore::new(device);
        let net = resnet(&vs.root(), arch, output_stride)?;
        vs.freeze();
        Ok(Backbone { vs, net, arch, output_stride, source: format!("random init (seed {seed})") })
    }

    /// The C5 feature map of an ImageNet-normalised batch `[B, 3, H, W]`,
    /// with BatchNorm in inference mode and no graph.
    pub fn features(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.forward_t(x, false))
    }

    /// Features of one RGB image at its own size, scaled to [0, 1] and
    /// normalised with ImageNet mean and std: `[C, h, w]`.
    pub fn image_features(&self, img: &image::RgbImage) -> Tensor {
        let (w, h) = img.dimensions();
        let x = Tensor::from_slice(img.as_raw())
            .view([h as i64, w as i64, 3])
            .permute([2, 0, 1])
            .to_kind(tch::Kind::Float)
            / 255.0;
        let mean = Tensor::from_slice(&IMAGENET_MEAN).view([3, 1, 1]);
        let std = Tensor::from_slice(&IMAGENET_STD).view([3, 1, 1]);
        let x = ((x - mean) / std).unsqueeze(0).to_device(self.vs.device());
        self.features(&x).squeeze_dim(0)
    }

    /// Every tensor with its torchvision name, sorted.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        crate::train::checkpoint::named(&self.vs)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The store and network for fine-tuning, unfrozen so that an optimiser
    /// over the store trains every layer (BatchNorm's running statistics
    /// stay untrainable buffers).
    pub fn into_trainable(self) -> (nn::VarStore, ResNet) {
        let Backbone { mut vs, net, .. } = self;
        vs.unfreeze();
        (vs, net)
    }
}

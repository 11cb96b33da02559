//! The frozen encoder that transfer uses: the online ResNet taken out of a
//! training checkpoint, out of any ResNet weight file (`weights.rs`), or a
//! randomly initialised one (the baseline), with torchvision parameter
//! names, for every evaluation, `embed` and `export`.
use std::path::{Path, PathBuf};

use tch::{nn, nn::ModuleT, Device, Tensor};

use crate::data::views::{IMAGENET_MEAN, IMAGENET_STD};
use crate::model::resnet::{resnet, Arch, ResNet};
use crate::train::checkpoint::Checkpoint;
use crate::transfer::weights::{copy_into, find_resnet, read_state_dict, Naming};
use crate::Result;

/// Where a backbone's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// A pixpro training checkpoint: its online encoder.
    Checkpoint(PathBuf),
    /// Any ResNet weight file `weights.rs` reads (a pixpro checkpoint too).
    File(PathBuf),
    /// The spec's initialisation, nothing learned.
    Random { arch: Arch, seed: u64 },
}

impl Weights {
    /// The backbone at `output_stride`, or at the one the weights imply:
    /// a checkpoint's saved stride, 32 (the networks' own) for a file, 16
    /// (the `cpu` preset's) for random init.
    pub fn load(&self, output_stride: Option<u32>, device: Device) -> Result<Backbone> {
        match self {
            Weights::Checkpoint(path) => Backbone::from_checkpoint(path, output_stride, device),
            Weights::File(path) => Backbone::from_file(path, output_stride, device),
            Weights::Random { arch, seed } => {
                Backbone::random(*arch, output_stride.unwrap_or(16), *seed, device)
            }
        }
    }

    /// What the loaded [`Backbone::source`] will say, known without loading.
    pub fn source(&self) -> String {
        match self {
            Weights::Checkpoint(path) | Weights::File(path) => path.display().to_string(),
            Weights::Random { seed, .. } => random_source(*seed),
        }
    }
}

fn random_source(seed: u64) -> String {
    format!("random init (seed {seed})")
}

pub struct Backbone {
    vs: nn::VarStore,
    net: ResNet,
    pub arch: Arch,
    pub output_stride: u32,
    /// Where the weights came from, for reports.
    pub source: String,
    /// What was read, for the user: format, prefix, tensors loaded.
    pub note: String,
}

impl Backbone {
    /// The online encoder of a pretraining checkpoint, at the output stride
    /// saved with it unless `output_stride` says otherwise.
    pub fn from_checkpoint(
        path: &Path,
        output_stride: Option<u32>,
        device: Device,
    ) -> Result<Backbone> {
        let ck = Checkpoint::load(path)?;
        let cfg = ck.config()?;
        let arch = cfg.model.arch;
        let os = output_stride.unwrap_or(cfg.model.output_stride);
        let mut vs = nn::VarStore::new(device);
        let net = resnet(&vs.root(), arch, os)?;
        ck.restore_part("online", "encoder.", &mut vs)?;
        vs.freeze();
        let note = format!(
            "{}: pixpro checkpoint at step {}, online encoder ({arch}, output stride {os})",
            path.display(),
            ck.meta.step
        );
        Ok(Backbone { vs, net, arch, output_stride: os, source: path.display().to_string(), note })
    }

    /// A ResNet out of any weight file (`weights.rs`); a pixpro checkpoint
    /// given here reads as with [`Backbone::from_checkpoint`]. Output stride
    /// 32 unless `output_stride` says otherwise.
    pub fn from_file(path: &Path, output_stride: Option<u32>, device: Device) -> Result<Backbone> {
        if Checkpoint::is_checkpoint(path) {
            return Backbone::from_checkpoint(path, output_stride, device);
        }
        let state = read_state_dict(path)?;
        let found = find_resnet(path, state.tensors.keys().map(String::as_str))?;
        let os = output_stride.unwrap_or(32);
        let mut vs = nn::VarStore::new(device);
        let net = resnet(&vs.root(), found.arch, os)?;
        let mut model = crate::train::checkpoint::named(&vs);
        let loaded = copy_into(path, &state, &found, &mut model)?;
        vs.freeze();
        let naming = match found.naming {
            Naming::Torchvision => "torchvision",
            Naming::Detectron2 => "Detectron2",
        };
        let prefix = if found.prefix.is_empty() {
            "no prefix".into()
        } else {
            format!("prefix `{}`", found.prefix)
        };
        let note = format!(
            "{}: {}, {naming} names, {prefix}: {loaded} tensors loaded into a {} \
             (output stride {os})",
            path.display(),
            state.format,
            found.arch
        );
        Ok(Backbone {
            vs,
            net,
            arch: found.arch,
            output_stride: os,
            source: path.display().to_string(),
            note,
        })
    }

    /// A ResNet with the spec's initialisation and nothing learned.
    pub fn random(arch: Arch, output_stride: u32, seed: u64, device: Device) -> Result<Backbone> {
        tch::manual_seed(seed as i64);
        let mut vs = nn::VarStore::new(device);
        let net = resnet(&vs.root(), arch, output_stride)?;
        vs.freeze();
        let source = random_source(seed);
        let note = format!("{source}: {arch}, output stride {output_stride}");
        Ok(Backbone { vs, net, arch, output_stride, source, note })
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

//! Flags that several commands take, defined once so that their help reads
//! the same in each.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pixpro::model::resnet::Arch;
use pixpro::train::config::{from_table, toml_error, Config, DeviceChoice};
use pixpro::train::pick_device;
use pixpro::transfer::backbone::{Backbone, Weights};
use pixpro::transfer::evaluate::Recipes;

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}

/// `--device` for the commands without a config to take it from; pretrain
/// and bench take an optional one that overrides the config's.
#[derive(Args)]
pub(super) struct Device {
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

impl Device {
    pub(super) fn choice(&self) -> DeviceChoice {
        self.device.into()
    }

    pub(super) fn pick(&self) -> Result<tch::Device> {
        Ok(pick_device(self.choice())?)
    }
}

/// The unlabelled images that pretrain, bench and inspect views read.
#[derive(Args)]
pub(super) struct ImageFolder {
    /// Images (JPEG, PNG, WebP): a folder tree; tar shards (a folder of .tar files, one .tar,
    /// or a pattern such as 'train-{000000..000099}.tar'); a .zip archive; or a .txt list of
    /// image files, one a line, relative to the list's folder.
    #[arg(long)]
    pub(super) data: PathBuf,
}

#[derive(Args)]
pub(super) struct ConfigFile {
    /// TOML file whose keys override the preset ([model], [augment], [optim], [train]).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ConfigFile {
    /// `base` with the file's keys over it, or `base` itself without --config.
    pub(super) fn over(&self, base: Config) -> Result<Config> {
        match &self.config {
            Some(path) => Ok(Config::from_toml_file(path, &base)?),
            None => Ok(base),
        }
    }
}

#[derive(Args)]
pub(super) struct Workers {
    /// Loader threads [default: the cores libtorch leaves free, at least 1].
    #[arg(long)]
    pub(super) workers: Option<usize>,
}

/// The backbone a command measures or writes: one of a pixpro checkpoint,
/// any ResNet weight file, or random init.
#[derive(Args)]
#[group(required = true, multiple = false, id = "backbone")]
pub(super) struct BackboneSource {
    /// Pretraining checkpoint whose online encoder is read, e.g. RUN/checkpoints/last.safetensors.
    #[arg(long, group = "backbone")]
    checkpoint: Option<PathBuf>,
    /// ResNet-18/34/50 weights: torchvision-named safetensors (`export --format torchvision`),
    /// a torch.save .pth/.pt (`export --format pth` or `mmdet`; any state dict, maybe under
    /// `state_dict` or `model`, maybe with prefixes such as `module.`, `encoder.`, `backbone.`;
    /// the reference PixPro's checkpoints), or a Detectron2 .pkl.
    #[arg(long, group = "backbone")]
    weights: Option<PathBuf>,
    /// A randomly initialised backbone (the baseline).
    #[arg(long, group = "backbone")]
    random_init: bool,
}

/// Architecture and stride of the backbone, where the source leaves them open.
#[derive(Args)]
pub(super) struct BackboneShape {
    /// Architecture for --random-init (files and checkpoints say their own).
    #[arg(long, default_value = "resnet18")]
    arch: Arch,
    /// Output stride, 32, 16 or 8 [default: a checkpoint's own; 32 for --weights; 16 for
    /// --random-init].
    #[arg(long)]
    output_stride: Option<u32>,
}

impl BackboneShape {
    pub(super) fn output_stride(&self) -> Option<u32> {
        self.output_stride
    }
}

impl BackboneSource {
    /// Where the weights come from; `seed` seeds random init.
    pub(super) fn weights(&self, shape: &BackboneShape, seed: u64) -> Weights {
        match (&self.checkpoint, &self.weights) {
            (Some(ck), _) => Weights::Checkpoint(ck.clone()),
            (None, Some(file)) => Weights::File(file.clone()),
            (None, None) => Weights::Random { arch: shape.arch, seed },
        }
    }

    /// The backbone, with what was read said on stderr.
    pub(super) fn load(
        &self,
        shape: &BackboneShape,
        seed: u64,
        device: tch::Device,
    ) -> Result<Backbone> {
        let backbone = self.weights(shape, seed).load(shape.output_stride, device)?;
        eprintln!("backbone: {}", backbone.note);
        Ok(backbone)
    }
}

/// The labelled folder an evaluation reads.
#[derive(Args)]
pub(super) struct VocFolder {
    /// Folder in the Pascal VOC 2012 layout (JPEGImages, SegmentationClass, ImageSets/Segmentation).
    #[arg(long)]
    pub(super) voc: PathBuf,
}

/// A recipe TOML file read as `T`, or `T`'s defaults without a file; errors
/// name the file.
pub(super) fn toml_or_default<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
) -> Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let table = toml::from_str(&text).map_err(toml_error);
    table.and_then(|t| from_table(t, "")).with_context(|| format!("{}", path.display()))
}

/// The evaluation recipes: a TOML file's tables over the defaults, one seed.
#[derive(Args)]
pub(super) struct RecipeArgs {
    /// TOML with the recipes: [probe], [retrieval], [correspondence], [finetune] tables.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seeds every protocol (the subset, batches, augmentation, heads) and random init
    /// [default: the recipes' seeds, 0].
    #[arg(long)]
    seed: Option<u64>,
}

impl RecipeArgs {
    /// The recipes, checked.
    pub(super) fn recipes(&self) -> Result<Recipes> {
        let mut r: Recipes = toml_or_default(self.config.as_deref())?;
        if let Some(seed) = self.seed {
            r = r.with_seed(seed);
        }
        r.validate()?;
        Ok(r)
    }
}

/// A pretraining checkpoint whose whole model a command reads.
#[derive(Args)]
pub(super) struct Checkpoint {
    /// Pretraining checkpoint, e.g. RUN/checkpoints/last.safetensors.
    #[arg(long)]
    pub(super) checkpoint: PathBuf,
}

#[derive(Args)]
pub(super) struct Quiet {
    /// No progress output.
    #[arg(long, short)]
    pub(super) quiet: bool,
}

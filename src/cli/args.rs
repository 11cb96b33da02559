//! Flags that several commands take, defined once so that their help reads
//! the same in each.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixpro::train::config::{Config, DeviceChoice};
use pixpro::train::pick_device;

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
    /// Folder of images (JPEG, PNG, WebP), searched recursively.
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

/// A pretraining checkpoint whose online encoder a command reads.
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

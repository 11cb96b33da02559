//! The one typed configuration of a pretraining run (TOML), its presets and
//! its validation. Everything a run does is decided here, once, at start.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::views::AugmentConfig;
use crate::distributed::collective::Engine;
use crate::method::ModelConfig;
use crate::model::precision::Precision;
use crate::model::resnet::Arch;
use crate::optim::lars::LarsConfig;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub augment: AugmentConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
    pub distributed: DistributedConfig,
}

/// LARS and the learning-rate schedule (spec section 6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Learning rate for a global batch of 256, scaled to the run's global
    /// batch by `lr_scaling`.
    pub lr_per_256: f64,
    pub lr_scaling: LrScaling,
    pub warmup_epochs: f64,
    pub warmup_start_factor: f64,
    pub final_lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub eta: f64,
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        let l = LarsConfig::default();
        OptimConfig {
            lr_per_256: 1.0,
            lr_scaling: LrScaling::Linear,
            warmup_epochs: 5.0,
            warmup_start_factor: 0.01,
            final_lr: 1e-6,
            momentum: l.momentum,
            weight_decay: l.weight_decay,
            eta: l.eta,
            eps: l.eps,
        }
    }
}

/// How the peak learning rate follows the global batch `B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// `lr_per_256 * B / 256`: the paper's rule, and the reference's.
    Linear,
    /// `lr_per_256 * sqrt(B / 256)`: what PixPro's authors suggest for
    /// small batches (zdaxie/PixPro issue 5), where the linear rule gives a
    /// very small rate.
    Sqrt,
}

impl OptimConfig {
    /// The peak learning rate for a global batch of `global_batch` images.
    pub fn peak_lr(&self, global_batch: usize) -> f64 {
        let ratio = global_batch as f64 / 256.0;
        match self.lr_scaling {
            LrScaling::Linear => self.lr_per_256 * ratio,
            LrScaling::Sqrt => self.lr_per_256 * ratio.sqrt(),
        }
    }

    pub fn lars(&self) -> LarsConfig {
        LarsConfig {
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            eta: self.eta,
            eps: self.eps,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// How long to train and how to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Images per process and step (two views each), as in the reference.
    pub batch_size: usize,
    /// Length of the run in epochs over the data, used when `steps` is 0.
    pub epochs: u64,
    /// Length of the run in optimiser steps; 0 means `epochs` epochs. (A
    /// number rather than an option so that a saved config reads back the
    /// same: TOML has no null.)
    pub steps: u64,
    pub seed: u64,
    /// Loader threads; 0 picks from the cores libtorch leaves free.
    pub workers: usize,
    /// Batches the loader prepares ahead of the model.
    pub prefetch: usize,
    /// libtorch intra-op threads; 0 keeps libtorch's default (all cores).
    pub threads: usize,
    /// Save `checkpoints/last.safetensors` and a numbered copy every N steps.
    pub checkpoint_every: u64,
    /// Append a line to metrics.jsonl every N steps.
    pub log_every: u64,
    pub device: DeviceChoice,
    /// `"fp32"`, `"bf16"` (bfloat16 autocast for the encoders' and
    /// projectors' forward passes, see `precision`) or `"auto"` (bf16 where
    /// it pays, see [`Precision::Auto`]; a run's saved config holds what it
    /// chose). The presets ask for `auto`; a config built from
    /// `Config::default()` alone, as the parity tests' are, for fp32.
    pub precision: Precision,
    /// Stop the run after this many consecutive steps skipped for a
    /// non-finite loss or gradient (a single bad batch is skipped and the
    /// run goes on; a long streak means the run has diverged).
    pub max_bad_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 128,
            epochs: 100,
            steps: 0,
            seed: 0,
            workers: 0,
            prefetch: 4,
            threads: 0,
            checkpoint_every: 1000,
            log_every: 10,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            max_bad_steps: 20,
        }
    }
}

/// How the processes of a data-parallel run work together; used only when
/// the launcher starts several (see docs/distributed.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// `"auto"` (NCCL on CUDA, Gloo on the CPU), `"gloo"` or `"nccl"`.
    pub engine: Engine,
    /// BatchNorm statistics over the global batch, as the reference.
    pub sync_bn: bool,
    /// Seconds a rank waits for the others (at start, and in any collective)
    /// before it gives up with an error instead of hanging.
    pub timeout_s: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        DistributedConfig { engine: Engine::Auto, sync_bn: true, timeout_s: 300.0 }
    }
}

/// Named starting points; a config file or flags change them further.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The reference recipe: ResNet-50, 224 px, batch 1024 over 8 GPUs, 100 epochs.
    #[value(name = "paper-r50")]
    PaperR50,
    /// ResNet-18 at 80 px for 1330 steps: about 15 minutes on 2 CPU cores.
    /// The recipe search of issue #17 chose it, on a held-out part of
    /// TuxSeg's train split, over 15 others at the same wall-clock: the
    /// square-root learning-rate rule at twice the paper's rate (0.71 at
    /// batch 32, where the paper's linear rule gives 0.125 and left the
    /// probe level with random init), and 80 px views, which buy 1330 steps
    /// in the time 96 px takes for 1000.
    Cpu,
}

impl Preset {
    pub fn config(self) -> Config {
        match self {
            Preset::PaperR50 => {
                let mut c = Config::default();
                c.train.precision = Precision::Auto;
                c
            }
            Preset::Cpu => {
                let mut c = Config::default();
                c.train.precision = Precision::Auto;
                c.model.arch = Arch::ResNet18;
                c.model.output_stride = 16;
                c.model.proj_hidden = 2048;
                c.augment.image_size = 80;
                c.optim.warmup_epochs = 1.0;
                c.optim.lr_scaling = LrScaling::Sqrt;
                c.optim.lr_per_256 = 2.0;
                c.train.batch_size = 32;
                c.train.steps = 1330;
                c.train.checkpoint_every = 100;
                c
            }
        }
    }
}

impl Default for Config {
    /// The paper's ResNet-50 recipe (spec sections 1-6) for one process of
    /// the reference's eight: batch 128 per process.
    fn default() -> Self {
        Config {
            model: ModelConfig::default(),
            augment: AugmentConfig::default(),
            optim: OptimConfig::default(),
            train: TrainConfig::default(),
            distributed: DistributedConfig::default(),
        }
    }
}

fn positive(key: &str, v: f64) -> Result<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(Error::config(key, format!("must be a positive number, got {v}")))
    }
}

impl Config {
    /// Reads a TOML file on top of `base`: keys it names replace the base's.
    pub fn from_toml_file(path: &Path, base: &Config) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, base).map_err(|e| match e {
            Error::Config { key, reason } => {
                Error::Config { key, reason: format!("{reason} (in {})", path.display()) }
            }
            other => other,
        })
    }

    pub fn from_toml_str(text: &str, base: &Config) -> Result<Config> {
        let overlay: toml::Table = toml::from_str(text).map_err(toml_error)?;
        base.with_overlay(overlay)
    }

    /// This config with the keys `overlay` names replaced, as a file would.
    pub fn with_overlay(&self, overlay: toml::Table) -> Result<Config> {
        let mut merged = self.to_table()?;
        merge(&mut merged, overlay);
        from_table(merged, "")
    }

    /// The config as a TOML table, e.g. to read one key by its path.
    pub fn to_table(&self) -> Result<toml::Table> {
        toml::Table::try_from(self)
            .map_err(|e| Error::config("(base)", format!("cannot serialise: {e}")))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }

    /// This config as a continuation of a run that was saved with `saved`:
    /// the keys that say only how a run runs here (loader threads and
    /// prefetch, libtorch threads, how often it checkpoints and logs, the
    /// device) are taken from `saved`, and so is the precision where this one
    /// asks for `auto` (the saved one is what `auto` chose when the run
    /// began). Equal to `saved` exactly when both describe the same recipe.
    pub fn continuing(&self, saved: &Config) -> Config {
        let mut c = self.clone();
        let (t, s) = (&mut c.train, &saved.train);
        if t.precision == Precision::Auto {
            t.precision = s.precision;
        }
        t.workers = s.workers;
        t.prefetch = s.prefetch;
        t.threads = s.threads;
        t.checkpoint_every = s.checkpoint_every;
        t.log_every = s.log_every;
        t.device = s.device;
        c
    }

    /// The keys, as `table.key`, whose values differ between this config and
    /// `other`, sorted: what an error about two recipes should name.
    pub fn differing_keys(&self, other: &Config) -> Vec<String> {
        fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match v {
                    toml::Value::Table(inner) => flatten(&key, inner, out),
                    other => {
                        out.insert(key, other.clone());
                    }
                }
            }
        }
        let flat = |c: &Config| {
            let mut out = BTreeMap::new();
            if let Ok(t) = c.to_table() {
                flatten("", &t, &mut out);
            }
            out
        };
        let (a, b) = (flat(self), flat(other));
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
    }

    /// Checks every value once, before any work starts.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.augment.validate()?;
        self.optim.lars().validate()?;
        positive("optim.lr_per_256", self.optim.lr_per_256)?;
        if !(self.optim.warmup_epochs >= 0.0 && self.optim.warmup_epochs.is_finite()) {
            return Err(Error::config(
                "optim.warmup_epochs",
                format!("must be >= 0, got {}", self.optim.warmup_epochs),
            ));
        }
        if !(0.0..=1.0).contains(&self.optim.warmup_start_factor) {
            return Err(Error::config(
                "optim.warmup_start_factor",
                format!("must be in [0, 1], got {}", self.optim.warmup_start_factor),
            ));
        }
        if !(self.optim.final_lr >= 0.0 && self.optim.final_lr.is_finite()) {
            return Err(Error::config(
                "optim.final_lr",
                format!("must be >= 0, got {}", self.optim.final_lr),
            ));
        }
        let t = &self.train;
        if t.batch_size < 2 {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "must be at least 2 (BatchNorm needs several images), got {}",
                    t.batch_size
                ),
            ));
        }
        if t.steps == 0 && t.epochs == 0 {
            return Err(Error::config(
                "train.steps",
                "set train.steps or train.epochs to at least 1",
            ));
        }
        if t.prefetch == 0 {
            return Err(Error::config("train.prefetch", "must be at least 1"));
        }
        if t.checkpoint_every == 0 {
            return Err(Error::config("train.checkpoint_every", "must be at least 1"));
        }
        if t.log_every == 0 {
            return Err(Error::config("train.log_every", "must be at least 1"));
        }
        if t.max_bad_steps == 0 {
            return Err(Error::config("train.max_bad_steps", "must be at least 1"));
        }
        positive("distributed.timeout_s", self.distributed.timeout_s)?;
        Ok(())
    }
}

/// A TOML syntax error: toml quotes the offending line and its place.
pub fn toml_error(e: toml::de::Error) -> Error {
    let msg = e.message().trim().to_string();
    let reason = match e.span() {
        Some(span) => format!("{msg} (at bytes {}..{})", span.start, span.end),
        None => msg,
    };
    Error::Config { key: "(file)".into(), reason }
}

/// `table` read as `T`; an error names the dotted key, below `prefix` (the
/// table's own key, "" for a whole file), whose value is of the wrong kind
/// (`model.arch`) or that is unknown. toml alone names only unknown keys.
pub fn from_table<T: serde::de::DeserializeOwned>(table: toml::Table, prefix: &str) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = [prefix, path.as_str()]
            .into_iter()
            .filter(|k| !k.is_empty() && *k != ".")
            .collect::<Vec<_>>()
            .join(".");
        let key = if key.is_empty() { "(file)".to_string() } else { key };
        Error::Config { key, reason: e.inner().message().trim().to_string() }
    })
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip_through_toml() {
        for p in [Preset::PaperR50, Preset::Cpu] {
            let c = p.config();
            c.validate().unwrap();
            let back = Config::from_toml_str(&c.to_toml(), &Config::default()).unwrap();
            assert_eq!(back, c, "{p:?}");
        }
    }

    #[test]
    fn the_peak_rate_scales_with_the_batch_linearly_or_by_its_root() {
        let mut o = Preset::Cpu.config().optim;
        assert_eq!(o.lr_scaling, LrScaling::Sqrt);
        // The cpu preset's 2 * sqrt(32 / 256) at batch 32.
        assert!((o.peak_lr(32) - 0.5_f64.sqrt()).abs() < 1e-12, "{}", o.peak_lr(32));
        o.lr_per_256 = 1.0;
        o.lr_scaling = LrScaling::Linear;
        // The paper's rule at batch 32, the preset's before issue #17.
        assert_eq!(o.peak_lr(32), 0.125);
        o.lr_scaling = LrScaling::Sqrt;
        assert_eq!(o.peak_lr(64), 0.5);
        assert_eq!(o.peak_lr(256), 1.0);
        let c = Config::from_toml_str("[optim]\nlr_scaling = \"sqrt\"\n", &Config::default());
        assert_eq!(c.unwrap().optim.lr_scaling, LrScaling::Sqrt);
        let e = Config::from_toml_str("[optim]\nlr_scaling = \"log\"\n", &Config::default());
        assert!(e.unwrap_err().to_string().contains("lr_scaling"));
    }

    #[test]
    fn a_continuation_may_change_how_it_runs_but_not_the_recipe() {
        let mut saved = Preset::Cpu.config();
        saved.train.precision = Precision::Fp32;
        let mut asked = saved.clone();
        asked.train.precision = Precision::Auto;
        asked.train.threads = 7;
        asked.train.checkpoint_every = 3;
        asked.train.device = DeviceChoice::Cuda;
        assert_eq!(asked.continuing(&saved), saved);
        assert_eq!(
            saved.differing_keys(&asked),
            ["train.checkpoint_every", "train.device", "train.precision", "train.threads"]
        );

        asked.optim.lr_per_256 = 1.0;
        asked.optim.lr_scaling = LrScaling::Linear;
        asked.train.precision = Precision::Bf16;
        let continued = asked.continuing(&saved);
        assert_ne!(continued, saved);
        assert_eq!(
            saved.differing_keys(&continued),
            ["optim.lr_per_256", "optim.lr_scaling", "train.precision"]
        );
    }

    #[test]
    fn paper_preset_has_the_spec_values() {
        let c = Preset::PaperR50.config();
        assert_eq!(c.model.arch, Arch::ResNet50);
        assert_eq!(c.augment.image_size, 224);
        assert_eq!(c.train.batch_size * 8, 1024);
        assert_eq!((c.train.epochs, c.train.steps), (100, 0));
        assert_eq!(c.optim.lr_per_256, 1.0);
        assert_eq!(c.optim.warmup_epochs, 5.0);
        assert_eq!(c.optim.weight_decay, 1e-5);
        assert_eq!(c.model.threshold, 0.7);
        assert_eq!(c.model.ppm_gamma, 2.0);
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let c = Config::from_toml_str("[train]\nbatch_size = 16\n", &Preset::Cpu.config()).unwrap();
        assert_eq!(c.train.batch_size, 16);
        assert_eq!(c.model.arch, Arch::ResNet18);
    }

    #[test]
    fn presets_choose_precision_and_bad_values_list_the_choices() {
        for preset in [Preset::Cpu, Preset::PaperR50] {
            assert_eq!(preset.config().train.precision, Precision::Auto);
        }
        assert_eq!(Config::default().train.precision, Precision::Fp32);
        let c = Config::from_toml_str("[train]\nprecision = \"bf16\"\n", &Config::default());
        assert_eq!(c.unwrap().train.precision, Precision::Bf16);
        let c = Config::from_toml_str("[train]\nprecision = \"auto\"\n", &Config::default());
        assert_eq!(c.unwrap().train.precision, Precision::Auto);
        let err = Config::from_toml_str("[train]\nprecision = \"fp16\"\n", &Config::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("fp16") && err.contains("bf16") && err.contains("auto"), "{err}");
    }

    #[test]
    fn unknown_key_is_named_by_its_path() {
        let err =
            Config::from_toml_str("[train]\nbatch_sise = 16\n", &Config::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("config key `train.batch_sise`: unknown field"),
            "{err}"
        );
        let err = Config::from_toml_str("[trian]\n", &Config::default()).unwrap_err();
        assert!(err.to_string().starts_with("config key `trian`: unknown field"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_kind_names_its_key() {
        let err = Config::from_toml_str("[model]\narch = \"resnet51\"\n", &Config::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `model.arch`: unknown variant `resnet51`, expected one of `resnet18`, \
             `resnet34`, `resnet50`"
        );
        let err = Config::from_toml_str("[train]\nbatch_size = \"many\"\n", &Config::default())
            .unwrap_err();
        assert!(
            err.to_string().starts_with("config key `train.batch_size`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_values_are_named() {
        let mut c = Config::default();
        c.train.batch_size = 1;
        assert!(c.validate().unwrap_err().to_string().contains("train.batch_size"));
        let c = Config::from_toml_str("[optim]\nlr_per_256 = -1.0\n", &Config::default()).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("optim.lr_per_256"));
    }
}

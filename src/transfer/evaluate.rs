//! One entry point for every protocol (`pixpro eval`, the experiment
//! runner): a backbone from any [`Weights`], measured by the probe,
//! retrieval, correspondence or fine-tuning, reported in one JSON shape
//! (`eval.json`) whatever the protocol.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::files::write_atomically;
use crate::transfer::backbone::Weights;
use crate::transfer::correspondence::{correspondence, CorrespondenceConfig};
use crate::transfer::finetune::{finetune_into, FinetuneConfig};
use crate::transfer::probe::{probe_into, ProbeConfig};
use crate::transfer::retrieval::{retrieval, RetrievalConfig};
use crate::{Error, Result};

/// What an evaluation measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    /// The dense linear probe (`probe.rs`).
    Probe,
    /// Nearest-neighbour label retrieval, nothing trained (`retrieval.rs`).
    Retrieval,
    /// Top-1 cell correspondence between two views (`correspondence.rs`).
    Correspondence,
    /// The whole backbone trained with an FCN head (`finetune.rs`), on the
    /// `[finetune]` recipe's share of the train split, or on this one.
    Finetune { train_fraction: Option<f64> },
}

pub const PROTOCOL_NAMES: &str = "probe, retrieval, correspondence, finetune, finetune:F \
     (fine-tuning on a share F in (0, 1] of the train split)";

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Protocol> {
        let bad = || Error::config("protocol", format!("`{s}` is not one of {PROTOCOL_NAMES}"));
        Ok(match s {
            "probe" => Protocol::Probe,
            "retrieval" => Protocol::Retrieval,
            "correspondence" => Protocol::Correspondence,
            "finetune" => Protocol::Finetune { train_fraction: None },
            _ => {
                let f: f64 =
                    s.strip_prefix("finetune:").ok_or_else(bad)?.parse().map_err(|_| bad())?;
                if !(f > 0.0 && f <= 1.0) {
                    return Err(bad());
                }
                Protocol::Finetune { train_fraction: Some(f) }
            }
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Probe => f.write_str("probe"),
            Protocol::Retrieval => f.write_str("retrieval"),
            Protocol::Correspondence => f.write_str("correspondence"),
            Protocol::Finetune { train_fraction: None } => f.write_str("finetune"),
            Protocol::Finetune { train_fraction: Some(x) } => write!(f, "finetune:{x}"),
        }
    }
}

impl Protocol {
    /// What the score is.
    pub fn score_name(&self) -> &'static str {
        match self {
            Protocol::Correspondence => "top-1 accuracy",
            _ => "mIoU",
        }
    }

    /// Its folder: `finetune:0.1` is `finetune-0.1` (no colon in paths).
    pub fn folder(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// A column heading: `finetune:0.1` reads `finetune 10%`.
    pub fn heading(&self) -> String {
        match self {
            Protocol::Finetune { train_fraction: Some(x) } => format!("finetune {}%", x * 100.0),
            other => other.to_string(),
        }
    }
}

/// Every protocol's recipe: the `[probe]`, `[retrieval]`, `[correspondence]`
/// and `[finetune]` tables of a TOML file or a plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipes {
    pub probe: ProbeConfig,
    pub retrieval: RetrievalConfig,
    pub correspondence: CorrespondenceConfig,
    pub finetune: FinetuneConfig,
}

impl Recipes {
    pub fn validate(&self) -> Result<()> {
        self.probe.validate()?;
        self.retrieval.validate()?;
        self.correspondence.validate()?;
        self.finetune.validate()
    }

    /// Every recipe seeded with `seed` (an experiment job's).
    pub fn with_seed(&self, seed: u64) -> Recipes {
        let mut r = self.clone();
        r.probe.seed = seed;
        r.retrieval.seed = seed;
        r.correspondence.seed = seed;
        r.finetune.seed = seed;
        r
    }

    /// The fine-tuning recipe on `train_fraction` of the train split, or on
    /// the `[finetune]` table's share.
    pub fn finetune_on(&self, train_fraction: Option<f64>) -> FinetuneConfig {
        FinetuneConfig {
            train_fraction: train_fraction.unwrap_or(self.finetune.train_fraction),
            ..self.finetune.clone()
        }
    }

    /// The recipe `protocol` runs with, as JSON for reports.
    pub fn of(&self, protocol: Protocol) -> serde_json::Value {
        let value = match protocol {
            Protocol::Probe => serde_json::to_value(&self.probe),
            Protocol::Retrieval => serde_json::to_value(&self.retrieval),
            Protocol::Correspondence => serde_json::to_value(&self.correspondence),
            Protocol::Finetune { train_fraction } => {
                serde_json::to_value(self.finetune_on(train_fraction))
            }
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

/// An evaluation's report, the same top-level fields for every protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub protocol: String,
    /// Where the weights came from.
    pub weights: String,
    pub arch: String,
    pub output_stride: u32,
    /// The VOC-layout folder measured on.
    pub data: PathBuf,
    pub recipe: serde_json::Value,
    /// What `score` is: mIoU, or top-1 accuracy.
    pub score_name: String,
    pub score: f64,
    /// IoU by class, for the segmentation protocols.
    pub per_class_iou: Option<BTreeMap<String, Option<f64>>>,
    pub wall_s: f64,
    /// Everything else the protocol measured (pixel accuracy, chance
    /// level, memory size, final loss, ...).
    pub details: serde_json::Value,
}

/// Fine-tuning's output stride: the paper's FCN runs on C5 at stride 16.
const FINETUNE_STRIDE: u32 = 16;

/// How evaluations run: the recipes, where, and whether to show progress.
pub struct Evaluator {
    pub recipes: Recipes,
    pub device: Device,
    /// Progress lines of the long protocols (fine-tuning) on stderr.
    pub progress: bool,
}

impl Evaluator {
    /// Loads the backbone and runs `protocol` on `voc`, writing `eval.json`
    /// and the protocol's own files (probe.json, finetune.json, pictures)
    /// into `out`. `output_stride` overrides the weights' (fine-tuning: 16).
    pub fn evaluate(
        &self,
        weights: &Weights,
        output_stride: Option<u32>,
        protocol: Protocol,
        voc: &Path,
        out: &Path,
    ) -> Result<Evaluation> {
        let (recipes, device, progress) = (&self.recipes, self.device, self.progress);
        let clock = Instant::now();
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let backbone = weights.load(stride_for(protocol, output_stride), device)?;
        let (source, arch, os) =
            (backbone.source.clone(), backbone.arch.to_string(), backbone.output_stride);
        let (score, per_class, details) = match protocol {
            Protocol::Probe => {
                let r = probe_into(&backbone, voc, out, &recipes.probe)?;
                (r.miou, Some(r.per_class_iou.clone()), json(&r))
            }
            Protocol::Retrieval => {
                let r = retrieval(&backbone, voc, &recipes.retrieval)?;
                (r.miou, Some(r.per_class_iou.clone()), json(&r))
            }
            Protocol::Correspondence => {
                let r = correspondence(&backbone, voc, &recipes.correspondence)?;
                (r.accuracy, None, json(&r))
            }
            Protocol::Finetune { train_fraction } => {
                let cfg = recipes.finetune_on(train_fraction);
                let r = finetune_into(backbone, voc, out, &cfg, progress)?;
                (r.miou, Some(r.per_class_iou.clone()), json(&r))
            }
        };
        let evaluation = Evaluation {
            protocol: protocol.to_string(),
            weights: source,
            arch,
            output_stride: os,
            data: voc.to_path_buf(),
            recipe: recipes.of(protocol),
            score_name: protocol.score_name().to_string(),
            score,
            per_class_iou: per_class,
            wall_s: clock.elapsed().as_secs_f64(),
            details,
        };
        let path = out.join("eval.json");
        let text = serde_json::to_string_pretty(&evaluation)
            .map_err(|e| Error::data(&path, e.to_string()))?;
        write_atomically(&path, text.as_bytes())?;
        Ok(evaluation)
    }

    /// What [`Evaluator::evaluate`] left in `out` before, if it measured the
    /// same weights (a file not written since), stride, protocol, recipe and
    /// data: a re-run keeps it instead of measuring again.
    pub fn kept(
        &self,
        weights: &Weights,
        output_stride: Option<u32>,
        protocol: Protocol,
        voc: &Path,
        out: &Path,
    ) -> Option<Evaluation> {
        let path = out.join("eval.json");
        let e: Evaluation = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        // Through text, as the kept recipe came: floats compare as written.
        let recipe = serde_json::to_string(&self.recipes.of(protocol)).ok()?;
        let recipe: serde_json::Value = serde_json::from_str(&recipe).ok()?;
        let fresh = match weights {
            Weights::Checkpoint(w) | Weights::File(w) => modified(&path)? >= modified(w)?,
            Weights::Random { arch, .. } => e.arch == arch.to_string(),
        };
        let same = fresh
            && e.protocol == protocol.to_string()
            && e.weights == weights.source()
            && stride_for(protocol, output_stride).is_none_or(|s| s == e.output_stride)
            && e.data == voc
            && e.recipe == recipe;
        same.then_some(e)
    }
}

/// The output stride `protocol` measures at: the one asked for, else the
/// weights' own, except fine-tuning's default.
fn stride_for(protocol: Protocol, output_stride: Option<u32>) -> Option<u32> {
    match protocol {
        Protocol::Finetune { .. } => Some(output_stride.unwrap_or(FINETUNE_STRIDE)),
        _ => output_stride,
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A protocol's full result, as JSON for `details`.
fn json<T: Serialize>(result: &T) -> serde_json::Value {
    serde_json::to_value(result).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Arch;

    #[test]
    fn protocol_names_round_trip() {
        for name in ["probe", "retrieval", "correspondence", "finetune", "finetune:0.1"] {
            assert_eq!(name.parse::<Protocol>().unwrap().to_string(), name);
        }
        assert_eq!("finetune:0.1".parse::<Protocol>().unwrap().heading(), "finetune 10%");
        for bad in ["knn", "finetune:0", "finetune:1.5", "finetune:x", "finetune:"] {
            let e = bad.parse::<Protocol>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("retrieval"), "{e}");
        }
    }

    #[test]
    fn an_earlier_evaluation_is_kept_only_for_the_same_weights_and_recipe() {
        let dir = tempfile::tempdir().unwrap();
        let (voc, out) = (dir.path().join("voc"), dir.path().join("eval"));
        std::fs::create_dir_all(&out).unwrap();
        let file = dir.path().join("w.safetensors");
        std::fs::write(&file, b"weights").unwrap();
        let weights = Weights::File(file.clone());
        let evaluator =
            Evaluator { recipes: Recipes::default(), device: Device::Cpu, progress: false };
        let p = Protocol::Retrieval;
        let e = Evaluation {
            protocol: p.to_string(),
            weights: weights.source(),
            arch: "resnet18".into(),
            output_stride: 32,
            data: voc.clone(),
            recipe: evaluator.recipes.of(p),
            score_name: p.score_name().into(),
            score: 0.25,
            per_class_iou: None,
            wall_s: 1.0,
            details: serde_json::Value::Null,
        };
        let text = serde_json::to_string_pretty(&e).unwrap();
        std::fs::write(out.join("eval.json"), text).unwrap();
        assert_eq!(evaluator.kept(&weights, None, p, &voc, &out), Some(e));
        assert!(evaluator.kept(&weights, Some(16), p, &voc, &out).is_none(), "stride");
        assert!(evaluator.kept(&weights, None, Protocol::Probe, &voc, &out).is_none());
        assert!(evaluator.kept(&weights, None, p, &out, &out).is_none(), "data");
        let other = Evaluator { recipes: Recipes::default().with_seed(1), ..evaluator };
        assert!(other.kept(&weights, None, p, &voc, &out).is_none(), "recipe");
        let random = Weights::Random { arch: Arch::ResNet18, seed: 0 };
        assert!(evaluator.kept(&random, None, p, &voc, &out).is_none(), "weights");
        // Weights written again after the evaluation: measured again.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        assert!(evaluator.kept(&weights, None, p, &voc, &out).is_none(), "newer weights");
    }

    #[test]
    fn recipes_take_the_seed_and_the_fraction() {
        let r = Recipes::default().with_seed(7);
        assert_eq!((r.probe.seed, r.retrieval.seed, r.finetune.seed), (7, 7, 7));
        let ft = r.of(Protocol::Finetune { train_fraction: Some(0.25) });
        assert_eq!(ft["train_fraction"], 0.25);
        assert_eq!(r.of(Protocol::Finetune { train_fraction: None })["train_fraction"], 1.0);
        let e = toml::from_str::<Recipes>("[retrieval]\nkk = 3").unwrap_err().to_string();
        assert!(e.contains("kk"), "{e}");
    }
}

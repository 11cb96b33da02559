//! The files of one run and reading them back.
//!
//! A run directory holds `config.toml` (the full resolved config),
//! `metrics.jsonl` (one JSON object per logged step),
//! `events.out.tfevents.pretrain` (the same numbers for TensorBoard; see
//! [`events`](super::events)), `checkpoints/` (`last.safetensors` plus
//! numbered copies), `plots/loss.png` (redrawn at every checkpoint),
//! `summary.json` at the end, and `init.json` when the encoders started
//! from given weights (`--init`).
use std::fs;
use std::path::{Path, PathBuf};

use tch::Device;

use crate::files::write_atomically;
use crate::method::PixPro;
use crate::train::checkpoint::Checkpoint;
use crate::train::config::Config;
use crate::train::events;
use crate::{Error, Result};

/// The files of one run.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn events(&self) -> PathBuf {
        self.root.join(events::PRETRAIN)
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn last_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("last.safetensors")
    }
    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }
    pub fn loss_plot(&self) -> PathBuf {
        self.plots().join("loss.png")
    }
    /// Where `--init` weights came from, for a run that started from some.
    pub fn init_record(&self) -> PathBuf {
        self.root.join("init.json")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn numbered_checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step-{step:07}.safetensors"))
    }
    /// The checkpoints to resume from, best first: `last.safetensors`, then
    /// the numbered copies, newest first.
    pub fn checkpoint_files(&self) -> Vec<PathBuf> {
        let mut numbered: Vec<(u64, PathBuf)> = fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let step = name.to_str()?.strip_prefix("step-")?.strip_suffix(".safetensors")?;
                Some((step.parse().ok()?, entry.path()))
            })
            .collect();
        numbered.sort_by_key(|n| std::cmp::Reverse(n.0));
        let last = self.last_checkpoint();
        last.exists().then_some(last).into_iter().chain(numbered.into_iter().map(|n| n.1)).collect()
    }
    /// A run with a checkpoint to continue from.
    pub fn can_resume(&self) -> bool {
        !self.checkpoint_files().is_empty()
    }
}

/// Reads a run's resolved config, for resuming.
pub fn saved_config(run: &RunDir) -> Result<Config> {
    Config::from_toml_file(&run.config(), &Config::default())
}

/// Drops the lines of `path` (metrics.jsonl) past `step`, and a torn last
/// line, atomically; a missing file is left missing.
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let keep = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
            .is_some_and(|s| s <= step)
    };
    let kept: String = text.lines().filter(|l| keep(l)).map(|l| format!("{l}\n")).collect();
    if kept.len() != text.len() {
        write_atomically(path, kept.as_bytes())?;
    }
    Ok(())
}

/// The online and target networks of a checkpoint, with the config saved in
/// it: for looking at what a run learned.
pub fn load_pixpro(path: &Path, device: Device) -> Result<(Config, PixPro)> {
    let ck = Checkpoint::load(path)?;
    let cfg = ck.config()?;
    let mut model = PixPro::new(cfg.model.clone(), device)?;
    ck.restore("online", &mut model.online)?;
    ck.restore("target", &mut model.target)?;
    Ok((cfg, model))
}

/// Redraws `plots/loss.png` from `metrics.jsonl`. A picture is a
/// convenience: failing to draw it only warns. Failing to write it stops
/// the run, as for any file: the disk that refuses it would refuse the next
/// checkpoint too.
pub(super) fn draw_loss_plot(run: &RunDir) -> Result<()> {
    // A run stopped before its first logged step (`--stop-at 0`, which
    // writes a config without training) has nothing to draw.
    let logged = std::fs::metadata(run.metrics()).is_ok_and(|m| m.len() > 0);
    if !logged {
        return Ok(());
    }
    match crate::plots::plot_training(&run.metrics(), &run.loss_plot()) {
        Err(e @ Error::Io { .. }) => Err(e),
        Err(e) => {
            tracing::warn!("could not draw {}: {e}", run.loss_plot().display());
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

//! What a run reports: a line of metrics.jsonl per logged step, the
//! progress bar, and the summary at the end.
use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// What a run did, as summary.json holds it.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub steps_done: u64,
    pub total_steps: u64,
    pub finished: bool,
    /// Why the run stopped early, if it did.
    pub stopped_by: Option<String>,
    pub final_loss: Option<f64>,
    /// Steps skipped for a non-finite loss or gradient, over the whole run.
    pub skipped_steps: u64,
    pub wall_s: f64,
    pub images_per_sec: f64,
    pub data_wait_fraction: f64,
    /// Share of the machine's CPU time a hypervisor took during the run
    /// ([`crate::train::steal`]); absent where it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_steal_fraction: Option<f64>,
    pub replaced_images: usize,
    pub device: String,
    /// fp32 or bf16: what the run computed in, as `auto` resolved it.
    pub precision: String,
    pub run_dir: PathBuf,
}

/// One line of metrics.jsonl.
#[derive(Serialize)]
pub(super) struct MetricsLine {
    pub(super) step: u64,
    /// Unix seconds when the line was written: TensorBoard's time axis.
    pub(super) wall_time: f64,
    pub(super) epoch: u64,
    pub(super) loss: f64,
    pub(super) loss_avg: f64,
    pub(super) lr: f64,
    pub(super) momentum: f64,
    pub(super) images_per_sec: f64,
    pub(super) data_wait_fraction: f64,
    /// Over the window's steps, as in [`RunSummary`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cpu_steal_fraction: Option<f64>,
    pub(super) target_std: f64,
    pub(super) positive_fraction: f64,
    pub(super) replaced_images: usize,
    /// Steps skipped so far for a non-finite loss or gradient.
    pub(super) skipped_steps: u64,
}

/// Sums over a stretch of steps, for rates and averages.
#[derive(Default)]
pub(super) struct Window {
    seconds: f64,
    waited: f64,
    images: usize,
    loss_sum: f64,
    steps: usize,
}

impl Window {
    /// `loss` is None for a skipped step, which counts in the rates only.
    pub(super) fn add(&mut self, seconds: f64, waited: f64, images: usize, loss: Option<f64>) {
        self.seconds += seconds;
        self.waited += waited;
        self.images += images;
        if let Some(loss) = loss {
            self.loss_sum += loss;
            self.steps += 1;
        }
    }
    pub(super) fn images_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }
    pub(super) fn wait_fraction(&self) -> f64 {
        if self.seconds > 0.0 {
            self.waited / self.seconds
        } else {
            0.0
        }
    }
    /// NaN (null in metrics.jsonl) when every step of the window was skipped.
    pub(super) fn mean_loss(&self) -> f64 {
        if self.steps == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.steps as f64
        }
    }
}

/// The progress bar of every long job (training, `data pack`), from `pos`
/// to `len` on stderr; hidden when quiet or when stderr is not a terminal.
pub fn progress_bar(quiet: bool, pos: u64, len: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_position(pos);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

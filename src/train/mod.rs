//! Stage 6, train: one configured pretraining run, from batches to
//! checkpoints and metrics in a run directory that can be resumed.
//!
//! - [`config`]: the one typed configuration (TOML), its presets and its
//!   validation.
//! - [`run`]: the loop: connect, open or resume, step, log, checkpoint,
//!   finish.
//! - [`checkpoint`]: everything a bit-exact resume needs, in one safetensors
//!   file.
//! - [`malloc`]: the glibc allocator settings that keep a training step from
//!   faulting its memory in anew.
pub mod config;
pub mod run;
pub mod checkpoint;
pub mod malloc;

pub use run::{
    auto_workers, interrupt_flag, load_pixpro, lr_schedule, open_loader, open_sharded_loader,
    pick_device, pretrain, pretrain_with_nan_batches, saved_config, total_steps, truncate_metrics,
    RunDir, RunOptions, RunSummary, StepStats, Trainer,
};

//! Stage 6, train: one configured pretraining run, from batches to
//! checkpoints and metrics in a run directory that can be resumed.
//!
//! - [`config`]: the one typed configuration (TOML), its presets and its
//!   validation.
//! - [`machine`]: what a run takes from the machine: the device, the loader
//!   and its threads, the signal flag.
//! - [`precision_trial`]: what `precision = "auto"` computes in on a CPU
//!   with bfloat16 units, decided by timing both.
//! - [`trainer`]: one step: forward, loss, backward, LARS, and the guard
//!   that skips a non-finite one.
//! - [`run`]: the loop, in phases: connect, open or resume, step, log,
//!   checkpoint, finish.
//! - [`report`]: metrics lines, the progress bar and the run's summary.
//! - [`events`]: TensorBoard event files of the metrics and of evaluation
//!   scores.
//! - [`checkpoint`]: everything a bit-exact resume needs, in one safetensors
//!   file.
//! - [`run_dir`]: the files of a run, and reading them back.
//! - [`lock`]: one process at a time per run directory (and per any other
//!   directory a command resumes).
//! - [`malloc`]: the glibc allocator settings that keep a training step from
//!   faulting its memory in anew.
//! - [`steal`]: the CPU time a hypervisor took, reported beside every
//!   throughput.
pub mod config;
pub mod machine;
pub mod trainer;
pub mod precision_trial;
pub mod run;
pub mod report;
pub mod events;
pub mod checkpoint;
pub mod run_dir;
pub mod lock;
pub mod malloc;
pub mod steal;

pub use lock::DirLock;
pub use machine::{auto_workers, interrupt_flag, open_loader, open_sharded_loader, pick_device};
pub use report::{progress_bar, RunSummary};
pub use run::{pretrain, InitWeights, RunOptions};
pub use run_dir::{load_pixpro, saved_config, truncate_metrics, RunDir};
pub use trainer::{lr_schedule, total_steps, StepStats, Trainer};

//! PixPro: pixel-level self-supervised pretraining (Xie et al., CVPR 2021).
//!
//! The library is a pipeline of stages, one folder each, in data-flow order:
//!
//! ```text
//!  files ─▶ data ─▶ model ─▶ objective ─▶ method ─▶ optim ─▶ train ─▶ transfer ─▶ tools
//!           views   ResNet   matching     online +   LARS     loop     probe       tuxseg
//!           coords  heads    loss         momentum   lr       config   export      experiment
//!           batches PPM      pixcontrast  target              ckpt     backbone    bench, inspect
//!
//!  beside them, importing no stage: distributed (process groups, SyncBN,
//!  gradient averaging), plots (PNG pictures of numbers) and files (writes
//!  that are whole or not at all)
//! ```
//!
//! - [`data`]: files -> two views with their crop coordinates -> batches.
//! - [`model`]: the networks: encoder, projector, PPM, instance heads.
//! - [`objective`]: positive pairs and the losses over them.
//! - [`method`]: model and objective paired with the momentum target, as
//!   `--method` picks.
//! - [`optim`]: LARS and the learning-rate schedule.
//! - [`train`]: the configuration, the loop, checkpoints and metrics.
//! - [`transfer`]: backbones out of checkpoints and foreign weight files;
//!   the probe, retrieval, correspondence and fine-tuning; export.
//! - [`tools`]: the demo data set, experiment grids, benchmarks, pictures.
//!
//! The rule that keeps the flow one way: a module imports only from its own
//! stage, from earlier stages, and from [`distributed`], [`plots`],
//! [`files`] and [`error`], which import no stage. `tests/layout.rs` checks it.
// Anything a user controls (files, configs, checkpoints) fails with an
// `Error` through `?`, never a panic; `expect` stays for internal invariants,
// its message saying why it cannot fail. .ci/run checks this with clippy.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod error;
pub mod files;
pub mod distributed;
pub mod plots;

pub mod data;
pub mod model;
pub mod objective;
pub mod method;
pub mod optim;
pub mod train;
pub mod transfer;
pub mod tools;

pub use error::{Error, Result};

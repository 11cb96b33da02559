//! PixPro: pixel-level self-supervised pretraining (Xie et al., CVPR 2021).
//!
//! Data flows one way: files -> [`dataset`] -> [`views`] (two crops and their
//! coordinates) -> [`loader`] (batches) -> [`model`] ([`resnet`], [`heads`],
//! [`ppm`]; [`precision`] for bf16) -> [`matching`] + [`loss`] -> [`lars`], [`schedule`] and
//! [`momentum`] -> [`checkpoint`] and metrics, driven by [`train`] and timed
//! by [`bench`]; [`config`] holds the one typed configuration.
// Anything a user controls (files, configs, checkpoints) fails with an
// `Error` through `?`, never a panic; `expect` stays for internal invariants,
// its message saying why it cannot fail. .ci/run checks this with clippy.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backbone;
pub mod bench;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod data_parallel;
pub mod dataset;
pub mod error;
pub mod experiment;
pub mod export;
pub mod heads;
pub mod inspect;
pub mod instance;
pub mod lars;
pub mod loader;
pub mod loss;
pub mod malloc;
pub mod matching;
pub mod model;
pub mod momentum;
pub mod pixcontrast;
pub mod plots;
pub mod ppm;
pub mod precision;
pub mod probe;
pub mod resnet;
pub mod schedule;
pub mod syncbn;
pub mod train;
pub mod tuxseg;
pub mod views;
pub mod voc;

pub use error::{Error, Result};

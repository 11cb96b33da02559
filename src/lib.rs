//! PixPro: pixel-level self-supervised pretraining (Xie et al., CVPR 2021).
//!
//! Data flows one way: files -> [`dataset`] -> [`views`] (two crops and their
//! coordinates) -> [`loader`] (batches) -> model ([`resnet`], [`heads`],
//! [`ppm`]) -> [`matching`] + [`loss`] -> [`lars`] / [`momentum`] ->
//! [`checkpoint`] and metrics, driven by [`train`].
pub mod error;
pub mod export;
pub mod probe;
pub mod voc;

pub use error::{Error, Result};

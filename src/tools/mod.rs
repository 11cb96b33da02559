//! Stage 8, tools: what a user runs around training, built on every stage
//! before.
//!
//! - [`tuxseg`]: builds the TuxSeg demo data set from Debian's photos.
//! - [`experiment`]: grids of pretrain + probe jobs, recorded as they finish.
//! - [`bench`]: times the data pipeline and the training step.
//! - [`inspect`]: pictures of views, matches and learned features.
//! - [`pack`]: any input written once as tar shards, optionally shrunk.
pub mod tuxseg;
pub mod experiment;
pub mod bench;
pub mod inspect;
pub mod pack;

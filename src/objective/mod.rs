//! Stage 3, objective: what the features are pulled towards.
//!
//! - [`matching`]: positive cell pairs of two views, from their crop
//!   coordinates (distance below T bin diagonals).
//! - [`loss`]: PixPro's pixel consistency loss, a negative cosine over the
//!   positive pairs.
//! - [`pixcontrast`]: the contrastive baseline, InfoNCE over the same pairs.
pub mod matching;
pub mod loss;
pub mod pixcontrast;

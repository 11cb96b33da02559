//! Stage 4, method: the model and the objective put together as `--method`
//! chooses, with the momentum target that gives the objective its targets.
//!
//! - [`config`]: [`Method`] (pixpro, pixpro+instance, byol, pixcontrast) and
//!   the `[model]` configuration section.
//! - [`momentum`]: the momentum (EMA) target's schedule and update.
//! - [`pair`]: the online and target networks of a method and one step's
//!   loss ([`PixPro`]).
pub mod config;
pub mod momentum;
pub mod pair;

pub use config::{Method, ModelConfig};
pub use pair::{PixPro, StepOutput};

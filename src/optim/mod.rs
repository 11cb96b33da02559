//! Stage 5, optim: how the online weights move.
//!
//! - [`lars`]: LARS with SGD momentum (the target's EMA is in
//!   [`crate::method::momentum`]).
//! - [`schedule`]: the learning rate at every step, warm-up then cosine.
pub mod lars;
pub mod schedule;

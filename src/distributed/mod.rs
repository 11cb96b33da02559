//! Beside the stages, distributed: data-parallel training over processes.
//! It imports no stage, so that the model (SyncBN) and the trainer (gradient
//! averaging) can both build on it.
//!
//! - [`collective`]: libtorch's process groups (Gloo, NCCL) through
//!   `csrc/collective.cpp`: all-reduce, broadcast, barrier, and the launch
//!   variables of torchrun, Slurm and Open MPI.
//! - [`syncbn`]: BatchNorm over the global batch.
//! - [`data_parallel`]: one start state on every rank, averaged gradients.
pub mod collective;
pub mod syncbn;
pub mod data_parallel;

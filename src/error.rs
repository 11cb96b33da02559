//! The library's one error type: every variant names the file, key or tensor
//! a user has to look at.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that should be an image but cannot be read as one.
    #[error("{path}: not a readable image: {reason}")]
    Image { path: PathBuf, reason: String },
    /// A data folder that cannot be used as it is (empty, nothing decodable,
    /// too few images for one batch, a VOC folder missing a part).
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    /// A configuration key with a bad value, or one we do not know.
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },
    /// A checkpoint that cannot be read, or that does not fit the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A weight file (`--weights`) that cannot be read, or holds no ResNet
    /// that fits.
    #[error("weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    /// `bad_steps` consecutive steps, up to `step`, had a non-finite loss or
    /// gradient and were skipped (train.max_bad_steps); the run stopped
    /// without writing a checkpoint; `kept` says which one is the last good
    /// state.
    #[error(
        "the run diverged: the last {bad_steps} steps (to step {step}) all had a non-finite loss \
         or gradient and were skipped (train.max_bad_steps = {bad_steps}); {kept}. Start a new \
         run with a lower optim.lr_per_256 or a longer optim.warmup_epochs"
    )]
    Diverged { step: u64, bad_steps: u64, kept: String },
    /// A directory another process is writing (see `train::lock`).
    #[error(
        "{dir} is in use by {holder}: wait for that run to end or stop it, or write to another \
         directory"
    )]
    Busy { dir: PathBuf, holder: String },
    /// A data-parallel launch that is set up wrong, or a collective that
    /// failed (a rank that died or hung past the timeout).
    #[error("distributed run: {0}")]
    Distributed(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config { key: key.into(), reason: reason.into() }
    }
    pub fn distributed(reason: impl Into<String>) -> Self {
        Error::Distributed(reason.into())
    }
    pub fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Data { path: path.into(), reason: reason.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

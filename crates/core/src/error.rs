//! One error type for the whole toolkit, with structured variants.

use std::path::PathBuf;

/// Result alias used across rustworthy.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data file exists but its content is corrupt, truncated or inconsistent.
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// A dataset could not be found; `hint` says how to get it.
    #[error("dataset {name} not found ({searched}); {hint}")]
    DatasetNotFound {
        name: String,
        searched: String,
        hint: String,
    },
    /// A configuration field holds an invalid value.
    #[error("invalid config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    /// A tensor has the wrong shape for an operation.
    #[error("shape mismatch in {op}: expected {expected}, got {got:?}")]
    Shape {
        op: String,
        expected: String,
        got: Vec<i64>,
    },
    /// A checkpoint does not fit the model it is loaded into, or is unreadable.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// A numeric failure during a run (NaN loss, diverged training, ...).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// Invalid argument to a library function.
    #[error("{0}")]
    Invalid(String),
    /// A query budget would be exceeded by the next evaluation.
    #[error("query budget exhausted: {used} of {budget} queries used, {needed} more needed")]
    BudgetExhausted { budget: u64, used: u64, needed: u64 },
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// JSON (de)serialization failure.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

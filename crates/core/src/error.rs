//! One error type for the whole toolkit, with structured variants.

use std::path::PathBuf;

/// Result alias used across rustworthy.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure a rustworthy library call can report; each variant names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be read or written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A data file exists but its content is corrupt, truncated or inconsistent.
    #[error("{path}: {msg}")]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with its content.
        msg: String,
    },
    /// A dataset could not be found; `hint` says how to get it.
    #[error("dataset {name} not found ({searched}); {hint}")]
    DatasetNotFound {
        /// The dataset's name, e.g. `fashion-mnist`.
        name: String,
        /// The folders searched and why each did not qualify.
        searched: String,
        /// How to install or point to the dataset.
        hint: String,
    },
    /// A configuration field holds an invalid value.
    #[error("invalid config field `{field}`: {msg}")]
    Config {
        /// The dotted name of the field, e.g. `train.optim.lr`.
        field: String,
        /// Why the value is rejected.
        msg: String,
    },
    /// A tensor has the wrong shape for an operation.
    #[error("shape mismatch in {op}: expected {expected}, got {got:?}")]
    Shape {
        /// The operation that rejected the tensor.
        op: String,
        /// The expected shape, in words or as a dimension list.
        expected: String,
        /// The shape actually passed.
        got: Vec<i64>,
    },
    /// A checkpoint does not fit the model it is loaded into, or is unreadable.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// What does not fit or could not be read.
        msg: String,
    },
    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// A numeric failure during a run (NaN loss, diverged training, ...).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// Invalid argument to a library function.
    #[error("{0}")]
    Invalid(String),
    /// The run was interrupted (Ctrl-C in an embedding application; see
    /// [`crate::progress::set_interrupt_check`]).
    #[error("interrupted")]
    Interrupted,
    /// A query budget would be exceeded by the next evaluation.
    #[error("query budget exhausted: {used} of {budget} queries used, {needed} more needed")]
    BudgetExhausted {
        /// The total number of queries allowed.
        budget: u64,
        /// Queries spent so far.
        used: u64,
        /// Queries the refused evaluation would have spent.
        needed: u64,
    },
    /// A collective of a distributed run failed (a rank died, timed out or disagreed).
    #[error("distributed: {0}")]
    Distributed(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// JSON (de)serialization failure.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// The same error, made to name the file `path` it came from: a config error gets
    /// ` (in PATH)` after its message (it stays a config error); any other error whose message
    /// names neither `path` nor its file name becomes `PATH: message`.
    pub fn in_file(self, path: &std::path::Path) -> Error {
        let shown = path.display().to_string();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| shown.clone());
        match self {
            Error::Config { field, msg } if !msg.contains(&shown) => Error::Config {
                field,
                msg: format!("{msg} (in {shown})"),
            },
            e => {
                let text = e.to_string();
                if text.contains(&shown) || text.contains(&name) {
                    e
                } else {
                    Error::Corrupt {
                        path: path.to_path_buf(),
                        msg: text,
                    }
                }
            }
        }
    }

    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// An [`Error::Corrupt`] for the file `path`.
    pub fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// An [`Error::Config`] rejecting the field `field`.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    /// An [`Error::Checkpoint`] for the checkpoint at `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// An [`Error::Invalid`] with the given message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn in_file_names_the_file_once() {
        let p = Path::new("/tmp/run.toml");
        let e = Error::config("train.lr", "must be > 0").in_file(p);
        assert!(matches!(e, Error::Config { .. }));
        assert_eq!(
            e.to_string(),
            "invalid config field `train.lr`: must be > 0 (in /tmp/run.toml)"
        );
        let e = Error::invalid("bad header").in_file(p);
        assert_eq!(e.to_string(), "/tmp/run.toml: bad header");
        let named = Error::corrupt(p, "truncated").in_file(p);
        assert_eq!(named.to_string(), "/tmp/run.toml: truncated");
    }
}

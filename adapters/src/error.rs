use std::path::PathBuf;

/// Errors of the adapters crate; messages name the file or field and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file that cannot be read or written, or does not hold what it should.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A write that failed (the message names the file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A configuration that cannot work: a size of zero, a width that does not fit.
    /// `field` names the setting (`num_tokens`, `imu_encoder.heads`, ...).
    #[error("{what}")]
    Config { field: String, what: String },
    /// A projector or front-stage kind that does not exist.
    #[error("unknown {what} '{kind}' (known: {known})")]
    UnknownKind {
        what: &'static str,
        kind: String,
        known: String,
    },
    /// Inputs whose shape does not fit the module (feature width, lengths per batch, frames).
    #[error("{0}")]
    Shape(String),
    /// A named parameter that is missing or has the wrong shape.
    #[error("{0}")]
    Parameter(String),
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    pub fn config(field: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            what: what.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

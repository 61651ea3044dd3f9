//! The error type of anymal-encoders. Every variant that concerns a file names it, so a user
//! reading the message knows which input to fix.

use std::path::PathBuf;

/// Errors from decoding media, computing features and loading or running frozen encoders.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read (missing, permissions, a directory...).
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The container or codec is not one the audio decoder handles (e.g. Opus).
    #[error("{path}: unsupported codec: {what}")]
    UnsupportedCodec { path: PathBuf, what: String },
    /// The bytes do not form a valid file of the format they claim (bad header, corrupt stream).
    #[error("{path}: invalid or corrupt media: {what}")]
    Corrupt { path: PathBuf, what: String },
    /// The file decoded but holds no samples.
    #[error("{path}: contains no audio samples")]
    Empty { path: PathBuf },
    /// A model file (CTranslate2 `model.bin`, safetensors, config) is malformed or unexpected.
    #[error("{path}: invalid model file: {what}")]
    Model { path: PathBuf, what: String },
    /// A model or data file that should have been fetched is not there.
    #[error("{path}: not found; fetch it with `{fetch}`")]
    MissingAsset { path: PathBuf, fetch: String },
    /// A caller passed arguments that cannot work (zero sample rate, unknown mel count...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle while building or running a model.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

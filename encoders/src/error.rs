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
    /// A cell of a tabular sensor file (IMU CSV, sktime `.ts`) that cannot be used: not a
    /// number, NaN/infinite, a time that does not increase. `line` is the 1-based line in the
    /// file, `column` names the field (number and, when known, its header name).
    #[error("{path}: line {line}, column {column}: {what}")]
    BadCell {
        path: PathBuf,
        line: usize,
        column: String,
        what: String,
    },
    /// A tabular sensor file whose content as a whole is unusable: no rows, too few rows,
    /// rows of different widths, the wrong number of channels.
    #[error("{path}: {what}")]
    BadData { path: PathBuf, what: String },
    /// Bytes FFmpeg recognises as no container at all (an empty file, random bytes, text).
    #[error("{path}: not a media file: {what}")]
    NotMedia { path: PathBuf, what: String },
    /// A media file (audio only, say) without a video stream; cover art does not count.
    #[error("{path}: has no video stream")]
    NoVideoStream { path: PathBuf },
    /// A video stream that decodes to no frame at all.
    #[error("{path}: the video stream holds no decodable frame")]
    NoVideoFrames { path: PathBuf },
    /// Bytes that are no image format the decoder handles (by content, not extension), or an
    /// image feature it does not support.
    #[error("{path}: unsupported image: {what}")]
    UnsupportedImage { path: PathBuf, what: String },
    /// An error from candle while building or running a model.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

//! The error type of anymal-encoders. Every variant that concerns a file names it, so a user
//! reading the message knows which input to fix; the others carry the condition as fields
//! (the option, the modality, the shapes) for callers that branch on it.

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
    /// A value of the recipe's `[encoder.options]` that the modality cannot use: an unknown
    /// key, a value of the wrong type or out of range, options for a modality that takes none.
    /// `field` is the offending key (a path such as `sampling.frames` when nested), `None` when
    /// the table as a whole is wrong.
    #[error("[encoder.options] for modality '{modality}':{} {what}", field_at(.field))]
    BadOption {
        modality: String,
        field: Option<String>,
        what: String,
    },
    /// No modality of this name is registered; `known` lists those that are.
    #[error("unknown modality '{name}' (known: {})", .known.join(", "))]
    UnknownModality { name: String, known: Vec<String> },
    /// A modality of this name is already registered.
    #[error("modality '{name}' is already registered")]
    DuplicateModality { name: String },
    /// A modality name that cannot serve as a manifest key and placeholder.
    #[error("modality name '{name}' must be lower-case letters, digits, '_' or '-'")]
    InvalidModalityName { name: String },
    /// An encoder reference that names no encoder of the modality: neither a short name it
    /// knows nor an existing file or folder, or a kind it does not have.
    #[error("{modality} encoder '{reference}': {what}")]
    UnknownEncoder {
        modality: String,
        reference: String,
        what: String,
    },
    /// Shapes or sizes that do not fit together: a batch's parts, a recording and the
    /// configuration, an encoder's outputs and its inputs.
    #[error("{what}: expected {expected}, got {got}")]
    ShapeMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// Something this crate does not implement, though the request itself is well formed.
    #[error("{what}")]
    Unsupported { what: String },
    /// An input with nothing in it: an empty batch, a clip without samples, a 0x0 image.
    #[error("{what}")]
    EmptyInput { what: String },
    /// One file of a batch, encoded on its own after the batch failed, and why it failed.
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// The calling code passed a value the function cannot work with: pixels of the wrong
    /// shape, a zero sample rate, a frame sampling or preprocessing setting out of range. A
    /// mistake in the program rather than in a file or the recipe; the message names the value.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A broken invariant of this crate or of a library under it (a bug, not a property of the
    /// input): an item left without a result, a resampler that refuses checked settings.
    #[error("internal: {0}")]
    Internal(String),
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
    /// A file whose declared (or decoded) size is over a bound of
    /// [`MediaLimits`](crate::limits::MediaLimits): `what` says what it holds, `limit` the
    /// bound, `setting` the name of the bound (a `--max-...` flag and a recipe `[limits]` key).
    #[error("{path}: {what}, over the limit of {limit} (raise it with --{} or `limits.{setting}` in the recipe)", .setting.replace('_', "-"))]
    TooLarge {
        path: PathBuf,
        what: String,
        limit: String,
        setting: &'static str,
    },
    /// An error from candle while building or running a model.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A [`Error::BadOption`] for `modality`'s `field` (`None`: the table as a whole).
    pub(crate) fn bad_option(modality: &str, field: Option<&str>, what: impl Into<String>) -> Self {
        Error::BadOption {
            modality: modality.to_string(),
            field: field.map(str::to_string),
            what: what.into(),
        }
    }
}

/// `" field:"`, or nothing for the table as a whole.
fn field_at(field: &Option<String>) -> String {
    match field {
        Some(f) => format!(" {f}:"),
        None => String::new(),
    }
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

//! Errors of the llm crate.
//!
//! Each condition a caller may act on has its own variant: a file that is missing, unreadable
//! or malformed, a tensor that is missing or of the wrong shape, a setting that is invalid or
//! not implemented, LoRA targets that select nothing. Errors about a file's contents name the
//! file, either in the variant or by wrapping the error in [`Error::InFile`];
//! [`Error::innermost`] looks through that wrapping.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Quant(#[from] anymal_quant::Error),
    /// Reading or writing a file failed (`op`: "read", "open", "write", "create").
    #[error("{path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A file, folder or cached model that is not there; `what` says what to do about it.
    #[error("{path}: {what}")]
    NotFound { path: PathBuf, what: String },
    /// A short model name that is not one of [`crate::loader::KNOWN_MODELS`].
    #[error("unknown model name '{name}'")]
    UnknownModel { name: String },
    /// A file whose contents are not what they must be.
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("{path}: missing tensor '{name}'")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: unsupported architecture '{arch}' (supported: llama, mistral, qwen2, gemma3)"
    )]
    UnsupportedArch { path: PathBuf, arch: String },
    /// A kind of file, type or feature anymal does not implement.
    #[error("unsupported {what}")]
    Unsupported { what: String },
    /// A setting that is invalid or not implemented, by field name (`use_dora`, `lora.r`).
    #[error("{field}: {what}")]
    Config { field: String, what: String },
    /// LoRA target modules that select none of the model's linear layers.
    #[error(
        "target_modules {targets} matches none of the model's linear layers (they are named like {})",
        examples.join(", ")
    )]
    NoLoraTargets {
        targets: String,
        examples: Vec<String>,
    },
    /// An adapter for a module path the model does not have (an adapter for another model).
    #[error(
        "adapts '{module}', which this model does not have (its layers are named like {example})"
    )]
    UnknownModule { module: String, example: String },
    /// Tensors, or a tensor and the model, that must fit together and do not.
    #[error("{what} has {got}, expected {expected}")]
    ShapeMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// A call whose `seqlen_offset` is not the number of positions its KV cache holds.
    #[error("seqlen_offset {offset} does not match the {cached} cached positions")]
    CacheOffset { offset: usize, cached: usize },
    /// A label that is not a token of the vocabulary.
    #[error("target id {id} is outside the vocabulary of {vocab}")]
    TargetOutOfVocab { id: u32, vocab: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// Returned by a [`crate::generate()`] token callback to end generation early; the text
    /// says why (for logs). Generation passes it on unchanged.
    #[error("{0}")]
    Stopped(String),
    /// An error about the contents of the file (or folder) `path`.
    #[error("{path}: {source}")]
    InFile { path: PathBuf, source: Box<Error> },
}

impl Error {
    /// [`Error::Format`]: `path` does not hold what it must.
    pub fn format(path: impl Into<PathBuf>, what: impl std::fmt::Display) -> Self {
        Self::Format {
            path: path.into(),
            what: what.to_string(),
        }
    }

    /// [`Error::NotFound`]: `path` is not there; `what` says so and what to do about it.
    pub fn not_found(path: impl Into<PathBuf>, what: impl std::fmt::Display) -> Self {
        Self::NotFound {
            path: path.into(),
            what: what.to_string(),
        }
    }

    /// [`Error::Io`]: `op` ("read", "write", ...) on `path` failed.
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// `e`, about the contents of `path` ([`Error::InFile`]).
    pub fn in_file(path: impl Into<PathBuf>, e: impl Into<Error>) -> Self {
        Self::InFile {
            path: path.into(),
            source: Box::new(e.into()),
        }
    }

    /// The error itself, or the one an [`Error::InFile`] wraps (through any depth): what went
    /// wrong, without where.
    pub fn innermost(&self) -> &Error {
        match self {
            Self::InFile { source, .. } => source.innermost(),
            e => e,
        }
    }
}

/// Code that runs inside candle (a custom op's forward or backward) must return candle's
/// error: candle's own pass through unchanged, ours as their message.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            Error::Quant(e) => e.into(),
            e => candle_core::Error::Msg(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_before() {
        let e = Error::NoLoraTargets {
            targets: "[\"qkv\"]".into(),
            examples: vec!["model.layers.0.self_attn.q_proj".into(), "lm_head".into()],
        };
        assert_eq!(
            e.to_string(),
            "target_modules [\"qkv\"] matches none of the model's linear layers \
             (they are named like model.layers.0.self_attn.q_proj, lm_head)"
        );
        let e = Error::in_file(
            "a.gguf",
            Error::ShapeMismatch {
                what: "token_embd".into(),
                got: "width 5".into(),
                expected: "576".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "a.gguf: token_embd has width 5, expected 576"
        );
        assert!(matches!(e.innermost(), Error::ShapeMismatch { .. }));
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(
            Error::io("x/adapter_config.json", "read", io).to_string(),
            "x/adapter_config.json: cannot read: gone"
        );
        let c: candle_core::Error = Error::TargetOutOfVocab { id: 10, vocab: 10 }.into();
        assert_eq!(
            c.to_string(),
            "target id 10 is outside the vocabulary of 10"
        );
    }
}

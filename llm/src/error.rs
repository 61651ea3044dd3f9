use std::path::PathBuf;

/// Errors of the llm crate. Loading errors name the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Quant(#[from] anymal_quant::Error),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: missing tensor '{name}'")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: unsupported architecture '{arch}' (supported: llama, mistral, qwen2, gemma3)"
    )]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

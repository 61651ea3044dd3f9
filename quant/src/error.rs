/// Errors of the quant crate. Each names the layer or type involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("unknown quantization type '{0}' (known: {known})", known = crate::QuantType::KNOWN.join(", "))]
    UnknownQuantType(String),
    #[error("cannot quantize a ({rows}, {cols}) weight to {ty}: the row length {cols} is not a multiple of its block size {block}")]
    BlockMismatch {
        rows: usize,
        cols: usize,
        ty: String,
        block: usize,
    },
    #[error("weight must be 2-D (out, in), got shape {0:?}")]
    NotMatrix(Vec<usize>),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

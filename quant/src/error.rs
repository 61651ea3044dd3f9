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
    /// Tensors that must fit together do not: a LoRA's `A` and `B`, or a LoRA and its layer.
    #[error("{what} has {got}, expected {expected}")]
    ShapeMismatch {
        what: String,
        expected: String,
        got: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Code that runs inside candle (a custom op's backward, `candle_core::Module`) must return
/// candle's error: candle's own pass through unchanged, ours as their message.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            e => candle_core::Error::Msg(e.to_string()),
        }
    }
}

/// `(out, in)` of a weight's dims; [`Error::NotMatrix`] unless it is 2-D.
pub(crate) fn matrix_dims(dims: &[usize]) -> Result<(usize, usize)> {
    match dims {
        [o, i] => Ok((*o, *i)),
        d => Err(Error::NotMatrix(d.to_vec())),
    }
}

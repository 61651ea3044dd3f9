//! Layer normalisation built from differentiable ops.
//!
//! candle's `LayerNorm::forward` takes a fused kernel without a backward pass on contiguous
//! input, so a trainable Perceiver would silently get no gradient through it.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::Result;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Weight initialised to one, bias to zero.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::init::ONE)?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::init::ZERO)?;
        Ok(Self { weight, bias, eps })
    }

    /// `(..., d) -> (..., d)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mean = xs.mean_keepdim(D::Minus1)?;
        let xc = xs.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

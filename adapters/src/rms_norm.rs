//! RMS normalisation built from differentiable ops (candle's fused `rms_norm` has no backward
//! pass, so a trainable norm through it would silently get no gradient).

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::Result;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Weight initialised to one.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::init::ONE)?;
        Ok(Self { weight, eps })
    }

    /// `(..., d) -> (..., d)`: `x / sqrt(mean(x^2) + eps) * weight`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ms = xs.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xs.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.weight)?)
    }
}

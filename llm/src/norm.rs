//! RMSNorm with a training path that autograd can differentiate.

use candle_core::{DType, Tensor, D};

use crate::Result;

/// `x / sqrt(mean(x^2) + eps) * w`, computed in f32. The weight is stored as the model applies it
/// (Gemma's `1 + w` is folded in at load time, as llama.cpp's converter does).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// The weight as applied (Gemma's `1 + w`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `(.., d) -> (.., d)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !xs.track_op() && xs.is_contiguous() && xs.dtype() != DType::F64 {
            // Inference only: the fused kernel has no backward, and nothing upstream trains here.
            let w = self.weight.to_dtype(xs.dtype())?;
            return Ok(candle_nn::ops::rms_norm(xs, &w, self.eps as f32)?);
        }
        if xs.dtype() != DType::F64 {
            // Training: the fused kernel with a hand-written backward that keeps only `xs`.
            return Ok(crate::fused_ops::rms_norm(
                xs,
                &self.weight,
                self.eps as f32,
            )?);
        }
        // f64 (the dense gradient checks): plain autograd ops.
        let dtype = xs.dtype();
        // Accumulate in at least f32 (bf16/f16 activations), in f64 when given f64.
        let acc = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let x = xs.to_dtype(acc)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        Ok(x.broadcast_mul(&self.weight.to_dtype(acc)?)?
            .to_dtype(dtype)?)
    }
}

/// `xs` through `norm` when the model has that norm (Gemma 3's q/k norms and its norms after
/// attention and the MLP), else `xs` unchanged.
pub fn maybe_norm(norm: Option<&RmsNorm>, xs: Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&xs),
        None => Ok(xs),
    }
}

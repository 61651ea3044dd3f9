//! The gated feed-forward block: `down(act(gate(x)) * up(x))`.

use anymal_quant::QLinear;
use candle_core::Tensor;

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Llama family.
    Silu,
    /// Gemma: GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: QLinear,
    pub up_proj: QLinear,
    pub down_proj: QLinear,
    pub act: Activation,
}

impl Mlp {
    /// `(b, t, d) -> (b, t, d)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?;
        let gate = match self.act {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let up = self.up_proj.forward(xs)?;
        Ok(self.down_proj.forward(&(gate * up)?)?)
    }
}

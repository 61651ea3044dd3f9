//! The gated feed-forward block: `down(act(gate(x)) * up(x))`.

use anymal_quant::QLinear;
use candle_core::{DType, Tensor};

pub use crate::gated_cpu::Activation;
use crate::Result;

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
        let gate_up = QLinear::forward_many(&[&self.gate_proj, &self.up_proj], xs)?;
        let (gate, up) = (&gate_up[0], &gate_up[1]);
        let training = gate.track_op() || up.track_op();
        let h = if gate.dtype() != DType::F64 && (training || gate.device().is_cpu()) {
            // Training: one op that keeps only gate and up for its backward. Inference on the
            // CPU: the same op, for its one-pass kernel.
            crate::fused_ops::gated(gate, up, self.act)?
        } else {
            // f64 (the dense references of the tests: candle's autograd, exact) and inference
            // on a GPU.
            let gate = match self.act {
                Activation::Silu => candle_nn::ops::silu(gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            (gate * up)?
        };
        Ok(self.down_proj.forward(&h)?)
    }
}

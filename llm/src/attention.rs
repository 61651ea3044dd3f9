//! Grouped-query self-attention with optional q/k norms (Gemma 3) and a sliding window.

use anymal_quant::QLinear;
use candle_core::{Tensor, D};

use crate::kv_cache::KvCache;
use crate::norm::{maybe_norm, RmsNorm};
use crate::rope::RopeTables;
use crate::Result;

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: QLinear,
    pub k_proj: QLinear,
    pub v_proj: QLinear,
    pub o_proj: QLinear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
}

impl Attention {
    /// `xs (b, t, d)`, `mask` additive `(b, 1, t, t_total)` (None: nothing masked); returns
    /// `(b, t, d)`.
    pub fn forward(
        &self,
        xs: &Tensor,
        rope: &RopeTables,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.q_proj.forward(xs)?.reshape((b, t, h, hd))?;
        let k = self.k_proj.forward(xs)?.reshape((b, t, kvh, hd))?;
        let v = self.v_proj.forward(xs)?.reshape((b, t, kvh, hd))?;
        let q = maybe_norm(self.q_norm.as_ref(), q)?;
        let k = maybe_norm(self.k_norm.as_ref(), k)?;
        let q = rope.apply(&q.transpose(1, 2)?)?;
        let k = rope.apply(&k.transpose(1, 2)?)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        // Grouped-query attention without copying keys and values per query head: the `n`
        // query heads sharing a kv head become `n * t` rows against that head's keys.
        let n = h / kvh;
        let t_total = k.dim(2)?;
        let q = q.reshape((b, kvh, n * t, hd))?;
        let scores = q.matmul(&k.t()?)?;
        let mask = match mask {
            Some(m) => Some(m.to_dtype(scores.dtype())?.unsqueeze(1)?), // (b, 1, 1, t, T)
            None => None,
        };
        let probs = if scores.track_op() && scores.dtype() != candle_core::DType::F64 {
            // Training: scale, mask and softmax in one op that keeps only the scores and the
            // probabilities for backward.
            crate::fused_ops::scaled_masked_softmax(&scores, self.scale, mask.as_ref(), n)?
        } else {
            let s = (scores * self.scale)?;
            let s = match &mask {
                Some(m) => s
                    .reshape((b, kvh, n, t, t_total))?
                    .broadcast_add(m)?
                    .reshape((b, kvh, n * t, t_total))?,
                None => s,
            };
            if s.track_op() {
                // The dense f64 gradient checks: plain autograd ops.
                candle_nn::ops::softmax(&s, D::Minus1)?
            } else {
                // Inference only: the fused softmax has no backward.
                candle_nn::ops::softmax_last_dim(&s)?
            }
        };
        let out = probs
            .matmul(&v)?
            .reshape((b, h, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, h * hd))?;
        Ok(self.o_proj.forward(&out)?)
    }
}

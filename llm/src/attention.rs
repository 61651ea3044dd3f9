//! Grouped-query self-attention with optional q/k norms (Gemma 3) and a sliding window.

use anymal_quant::QLinear;
use candle_core::{Tensor, D};

use crate::decode_attention::{decode_attention, DecodeRow, Heads};
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
        let qkv = self.project_qkv(xs)?;
        let out = self.attend(&qkv[0], &qkv[1], &qkv[2], rope, mask, cache)?;
        Ok(self.o_proj.forward(&out)?)
    }

    /// `[q, k, v]` of `xs`, in one call of the kernels where they allow it.
    fn project_qkv(&self, xs: &Tensor) -> Result<Vec<Tensor>> {
        Ok(QLinear::forward_many(
            &[&self.q_proj, &self.k_proj, &self.v_proj],
            xs,
        )?)
    }

    /// One new position for each of `b` sequences: `xs (b, 1, d)`, row `i` at its own
    /// position in its own cache (`rows[i]`, `caches[i]`, this block being `layer`). The
    /// projections and norms run once over all rows; rotation, the cache write and attention
    /// run per row, on the CPU in one fused pass ([`crate::decode_attention`]), elsewhere
    /// through the ops [`Self::forward`] runs for one sequence. Either way a row's result does
    /// not depend on the others (batched generation is tested to give the one-at-a-time
    /// tokens).
    pub fn forward_rows(
        &self,
        xs: &Tensor,
        rows: &[RowContext<'_>],
        caches: &mut [KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let qkv = self.project_qkv(xs)?;
        let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
        let fused = xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32;
        let out = if fused {
            let b = rows.len();
            let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
            let q = maybe_norm(self.q_norm.as_ref(), q.reshape((b, 1, h, hd))?)?;
            let k = maybe_norm(self.k_norm.as_ref(), k.reshape((b, 1, kvh, hd))?)?;
            let decode_rows: Vec<DecodeRow<'_>> = rows
                .iter()
                .map(|r| DecodeRow {
                    cos: &r.rope.cos_values,
                    sin: &r.rope.sin_values,
                    interleaved: r.rope.interleaved,
                    window: r.window,
                })
                .collect();
            let heads = Heads {
                q: h,
                kv: kvh,
                dim: hd,
                scale: self.scale as f32,
            };
            decode_attention(&q, &k, v, heads, &decode_rows, caches, layer)?
        } else {
            let mut outs = Vec::with_capacity(rows.len());
            for (i, (row, cache)) in rows.iter().zip(caches.iter_mut()).enumerate() {
                let one = |t: &Tensor| t.narrow(0, i, 1);
                outs.push(self.attend(
                    &one(q)?,
                    &one(k)?,
                    &one(v)?,
                    row.rope,
                    row.mask,
                    Some((cache, layer)),
                )?);
            }
            Tensor::cat(&outs, 0)?
        };
        Ok(self.o_proj.forward(&out)?)
    }

    /// Attention of projected `q (b, t, h * hd)` over `k, v (b, t, kvh * hd)` and the cached
    /// positions before them; returns `(b, t, h * hd)`, before the output projection.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &RopeTables,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        if cache.is_none() && q.device().is_cpu() && q.dtype() == candle_core::DType::F32 {
            // Whole sequences: one op (crate::attention_cpu).
            let q = maybe_norm(self.q_norm.as_ref(), q.reshape((b, t, h, hd))?)?;
            let k = maybe_norm(self.k_norm.as_ref(), k.reshape((b, t, kvh, hd))?)?;
            let heads = Heads {
                q: h,
                kv: kvh,
                dim: hd,
                scale: self.scale as f32,
            };
            return Ok(crate::attention_cpu::attention(
                &q.reshape((b, t, h * hd))?,
                &k.reshape((b, t, kvh * hd))?,
                v,
                heads,
                rope,
                mask,
            )?);
        }
        let q = q.reshape((b, t, h, hd))?;
        let k = k.reshape((b, t, kvh, hd))?;
        let v = v.reshape((b, t, kvh, hd))?;
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
        Ok(probs
            .matmul(&v)?
            .reshape((b, h, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, h * hd))?)
    }
}

/// Where the positions of a forward call are, for the kind of layer at hand (sliding-window
/// or global): their rotary tables, the mask over the cached and new positions (None: nothing
/// masked) and the window it applies (None: global).
#[derive(Clone, Copy)]
pub struct RowContext<'a> {
    pub rope: &'a RopeTables,
    pub mask: Option<&'a Tensor>,
    pub window: Option<usize>,
}

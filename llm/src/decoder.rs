//! The decoder: embeddings in, hidden states for every position out, differentiable back to the
//! input embeddings. One graph for the Llama family and Gemma 3; their differences are flags of
//! [`LlmConfig`] and optional norms, not copies of the model.

use std::sync::Arc;

use anymal_quant::{QLinear, EXACT_ROWS};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::attention::RowContext;
use crate::block::Block;
use crate::checkpoint::CheckpointedBlock;
use crate::config::LlmConfig;
use crate::kv_cache::KvCache;
use crate::norm::RmsNorm;
use crate::rope::RopeTables;
use crate::{Error, Result};

/// A frozen decoder LLM over quantized weights.
#[derive(Debug, Clone)]
pub struct Llm {
    pub cfg: LlmConfig,
    /// Token embedding table `(vocab, d)`, kept quantized; looked up without a gradient.
    pub embed_tokens: Arc<QTensor>,
    pub layers: Vec<Arc<Block>>,
    pub norm: RmsNorm,
    /// Output head `(vocab, d)`; the embedding table itself when tied.
    pub lm_head: QLinear,
    /// Llama 3.1 style per-frequency RoPE divisors.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Recompute each block during backward instead of keeping its activations.
    pub gradient_checkpointing: bool,
    pub device: Device,
    /// Dtype of activations (f32 on CPU; bf16 is possible on CUDA).
    pub dtype: DType,
}

impl Llm {
    /// The arithmetic of every linear layer's products over many rows on the CPU (training
    /// steps, prompts), the head's included: see [`anymal_quant::Compute`].
    pub fn set_compute(&mut self, compute: anymal_quant::Compute) {
        for p in self.linear_paths() {
            if self.linear(&p).is_some_and(|l| l.compute() == compute) {
                continue;
            }
            if let Some(l) = self.linear_mut(&p) {
                l.set_compute(compute);
            }
        }
    }

    /// `(b, t) u32 -> (b, t, d)`: token embeddings, times sqrt(d) for Gemma.
    pub fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        let e = self
            .embed_tokens
            .embedding(input_ids)?
            .to_dtype(self.dtype)?;
        Ok(match self.cfg.embed_scale() {
            // Gemma rounds the scale to the activation dtype; in f32 this is the exact value.
            Some(s) => (e * s)?,
            None => e,
        })
    }

    /// Hidden states after the final norm for every position.
    ///
    /// `inputs_embeds (b, t, d)` as returned by [`Llm::embed_tokens`], possibly with modality
    /// tokens spliced in; `attention_mask (b, seqlen_offset + t)` with 1 for real tokens and 0 for
    /// padding (None: all real); `cache` holds the keys/values of the first `seqlen_offset`
    /// positions. Returns `(b, t, d)`. Gradients reach `inputs_embeds`; no weight gets one.
    pub fn forward_embeds(
        &self,
        inputs_embeds: &Tensor,
        seqlen_offset: usize,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, d) = inputs_embeds.dims3()?;
        if d != self.cfg.hidden_size {
            return Err(Error::ShapeMismatch {
                what: "inputs_embeds".into(),
                got: format!("width {d}"),
                expected: format!("{} (the model's hidden size)", self.cfg.hidden_size),
            });
        }
        if let Some(c) = cache.as_deref() {
            if c.seq_len() != seqlen_offset {
                return Err(Error::CacheOffset {
                    offset: seqlen_offset,
                    cached: c.seq_len(),
                });
            }
        }
        // Decoding one position of one sequence: the path batched decoding takes, so that a
        // sequence decodes to the same bits alone and in a batch.
        if let (Some(c), 1, 1, None) = (cache.as_deref_mut(), b, t, attention_mask) {
            if !inputs_embeds.track_op() {
                return self.forward_rows(inputs_embeds, std::slice::from_mut(c));
            }
        }
        let ctx = self.position_context(b, t, seqlen_offset, attention_mask)?;
        let mut xs = inputs_embeds.to_dtype(self.dtype)?;
        let checkpoint = self.gradient_checkpointing && cache.is_none();
        for (i, layer) in self.layers.iter().enumerate() {
            let RowContext { rope, mask, .. } = ctx.for_layer(layer);
            // Only a graph-tracking input records the checkpointing op (and with it the
            // block's backward): an untracked input (text-only LoRA tuning, layer 0) runs the
            // block plainly, and its LoRA makes the output tracked for the layers after it.
            xs = if checkpoint && xs.track_op() {
                xs.apply_op1(CheckpointedBlock::new(
                    layer.clone(),
                    rope.clone(),
                    mask.cloned(),
                ))?
            } else {
                layer.forward(&xs, rope, mask, cache.as_deref_mut().map(|c| (c, i)))?
            };
        }
        self.norm.forward(&xs)
    }

    /// One new position for each of several sequences: `inputs_embeds (b, 1, d)`, row `i`
    /// continuing the sequence whose keys and values `caches[i]` holds (at its own position).
    /// Returns the hidden states `(b, 1, d)` after the final norm, inference only. Each row
    /// gets the result [`Self::forward_embeds`] gives it alone (attention runs per row; every
    /// other op treats rows independently), which is what lets batched generation match
    /// one-at-a-time generation token for token. More rows than
    /// [`anymal_quant::EXACT_ROWS`] go through in groups of that many, which keeps that promise.
    pub fn forward_rows(&self, inputs_embeds: &Tensor, caches: &mut [KvCache]) -> Result<Tensor> {
        // The fused attention computes on host values: a gradient would stop there unseen.
        if inputs_embeds.track_op() {
            return Err(Error::Unsupported {
                what: "gradients through Llm::forward_rows (decoding is inference only; \
                       train through forward_embeds)"
                    .into(),
            });
        }
        let (b, t, d) = inputs_embeds.dims3()?;
        if b > EXACT_ROWS && b == caches.len() {
            let groups = caches
                .chunks_mut(EXACT_ROWS)
                .enumerate()
                .map(|(g, c)| {
                    let rows = inputs_embeds.narrow(0, g * EXACT_ROWS, c.len())?;
                    self.forward_rows(&rows, c)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&groups, 0)?);
        }
        if t != 1 || b != caches.len() || d != self.cfg.hidden_size {
            return Err(Error::ShapeMismatch {
                what: "inputs_embeds of a decoding batch".into(),
                got: format!("({b}, {t}, {d}) for {} caches", caches.len()),
                expected: format!("({}, 1, {})", caches.len(), self.cfg.hidden_size),
            });
        }
        let ctxs = caches
            .iter()
            .map(|c| self.position_context(1, 1, c.seq_len(), None))
            .collect::<Result<Vec<_>>>()?;
        let mut xs = inputs_embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let rows: Vec<RowContext<'_>> = ctxs.iter().map(|c| c.for_layer(layer)).collect();
            xs = layer.forward_rows(&xs, &rows, caches, i)?;
        }
        self.norm.forward(&xs)
    }

    /// Rotary tables and masks for positions `offset .. offset + t` of `b` sequences, for
    /// both kinds of layer.
    fn position_context(
        &self,
        b: usize,
        t: usize,
        offset: usize,
        attention_mask: Option<&Tensor>,
    ) -> Result<PositionContext> {
        let hd = self.cfg.head_dim;
        let ff = self.rope_freq_factors.as_deref();
        let tables = |theta: f64, scale: f64| {
            RopeTables::new(
                hd,
                theta,
                scale,
                ff,
                offset,
                t,
                self.cfg.rope_interleaved,
                self.dtype,
                &self.device,
            )
        };
        let rope_global = tables(self.cfg.rope_theta, self.cfg.rope_scale)?;
        // Sliding-window layers (Gemma 3) rotate with their own base; other models have none,
        // so their tables and mask are the global ones, built once per call.
        let rope_local = match self.cfg.sliding_window {
            Some(_) => tables(self.cfg.rope_local_theta, 1.0)?,
            None => rope_global.clone(),
        };
        let mask_global = build_mask(b, t, offset, None, attention_mask, &self.device)?;
        let mask_local = match self.cfg.sliding_window {
            Some(w) => build_mask(b, t, offset, Some(w), attention_mask, &self.device)?,
            None => mask_global.clone(),
        };
        Ok(PositionContext {
            window: self.cfg.sliding_window,
            rope_global,
            rope_local,
            mask_global,
            mask_local,
        })
    }

    /// `(b, t, d) -> (b, t, vocab)` logits for every position given.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?.to_dtype(DType::F32)?)
    }

    /// Negative log-likelihood of `targets` at each of the hidden states `(n, d)`, shape `(n,)`:
    /// the head and cross-entropy fused over vocabulary slices (see [`crate::head_loss`]), so the
    /// `(n, vocab)` logits are never held. Differentiable in `hidden`.
    pub fn label_nll(&self, hidden: &Tensor, targets: &[u32]) -> Result<Tensor> {
        crate::head_loss::head_nll(&self.lm_head, hidden, targets)
    }

    /// Whether the output head shares the embedding table's storage.
    pub fn head_is_tied(&self) -> bool {
        matches!(self.lm_head.weight(), anymal_quant::QWeight::Ggml(w) if Arc::ptr_eq(w, &self.embed_tokens))
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Bytes held by frozen weights.
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &QLinear| l.storage_size_in_bytes();
        let mut n = self.embed_tokens.storage_size_in_bytes();
        if !self.head_is_tied() {
            n += lin(&self.lm_head);
        }
        for l in &self.layers {
            n += l.linears().iter().map(|(_, q)| lin(q)).sum::<usize>();
        }
        n
    }
}

/// The rotary tables and masks of one forward call, for global and sliding-window layers.
struct PositionContext {
    /// The sliding window of the model's local layers.
    window: Option<usize>,
    rope_global: RopeTables,
    rope_local: RopeTables,
    mask_global: Option<Tensor>,
    mask_local: Option<Tensor>,
}

impl PositionContext {
    fn for_layer(&self, layer: &Block) -> RowContext<'_> {
        if layer.sliding {
            RowContext {
                rope: &self.rope_local,
                mask: self.mask_local.as_ref(),
                window: self.window,
            }
        } else {
            RowContext {
                rope: &self.rope_global,
                mask: self.mask_global.as_ref(),
                window: None,
            }
        }
    }
}

/// Additive attention mask `(b, 1, t, offset + t)`: 0 where query `i` may attend key `j`, a
/// large negative number elsewhere (future keys, keys outside the sliding window, padding).
/// Finite rather than -inf so that a fully padded row gives uniform weights instead of NaN.
/// None when nothing is masked (a decoding step without padding): attention then skips the add.
pub fn build_mask(
    b: usize,
    t: usize,
    offset: usize,
    window: Option<usize>,
    attention_mask: Option<&Tensor>,
    device: &Device,
) -> Result<Option<Tensor>> {
    const NEG: f32 = -1e30;
    let total = offset + t;
    let keep: Option<Vec<Vec<u32>>> = match attention_mask {
        Some(m) => {
            let (mb, mt) = m.dims2()?;
            if mb != b || mt != total {
                return Err(Error::ShapeMismatch {
                    what: "attention_mask".into(),
                    got: format!("shape ({mb}, {mt})"),
                    expected: format!("({b}, {total})"),
                });
            }
            Some(m.to_dtype(DType::U32)?.to_vec2::<u32>()?)
        }
        None => None,
    };
    let mut data = Vec::with_capacity(b * t * total);
    let mut any_masked = false;
    for bi in 0..b {
        for i in 0..t {
            let qpos = offset + i;
            for j in 0..total {
                let causal = j <= qpos;
                let in_window = window.is_none_or(|w| qpos - j.min(qpos) < w);
                let real = keep.as_ref().is_none_or(|k| k[bi][j] != 0);
                let keep = causal && in_window && real;
                any_masked |= !keep;
                data.push(if keep { 0.0 } else { NEG });
            }
        }
    }
    if !any_masked {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(data, (b, 1, t, total), device)?))
}

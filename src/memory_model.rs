//! What adapter training holds at its peak, by component, from the model's shape: the memory
//! model behind `anymal inspect --train`.
//!
//! It counts the tensors anymal's training graph actually keeps (candle keeps every op's
//! inputs until backward; the fused training ops of `anymal_llm::fused_ops` keep only what
//! their backward needs), so it is checked against measured peak RSS in the README.

/// The shape of a model, as far as memory is concerned.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub name: String,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Gemma's extra norms after attention and after the MLP.
    pub post_norms: bool,
    /// Gemma's norms of each query and key head before the rotation.
    pub qk_norms: bool,
    /// Gemma's sliding-window layers, which take a mask of their own.
    pub sliding_window: bool,
    /// Bytes of the frozen weights as stored.
    pub weight_bytes: usize,
}

impl ModelShape {
    /// (hidden, ffn, query width, key/value width).
    fn widths(&self) -> (usize, usize, usize, usize) {
        (
            self.hidden,
            self.ffn,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        )
    }

    /// Parameters of the decoder's linear layers and the embedding (head tied or not: counted
    /// once, as the stored file does).
    pub fn params(&self) -> usize {
        let (d, f, q, kv) = self.widths();
        self.layers * (d * q + 2 * d * kv + q * d + 3 * d * f) + self.vocab * d
    }

    /// Named shapes of models too large to have here, for planning (weights at `bits` per
    /// parameter: 4.5 for Q4K, ~4.13 for NF4 with double quantization).
    pub fn named(name: &str, bits: f64) -> Option<Self> {
        let (layers, hidden, ffn, heads, kv_heads, vocab) = match name {
            "llama2-7b" => (32, 4096, 11008, 32, 32, 32000),
            "llama2-13b" => (40, 5120, 13824, 40, 40, 32000),
            "llama2-70b" => (80, 8192, 28672, 64, 8, 32000),
            _ => return None,
        };
        let mut s = Self {
            name: name.to_string(),
            layers,
            hidden,
            ffn,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            vocab,
            post_norms: false,
            qk_norms: false,
            sliding_window: false,
            weight_bytes: 0,
        };
        s.weight_bytes = (s.params() as f64 * bits / 8.0) as usize;
        Some(s)
    }
}

/// Which linear layers of every block carry a LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraTargets {
    QV,
    AllLinear,
}

/// One training set-up.
#[derive(Debug, Clone)]
pub struct TrainSetup {
    pub batch: usize,
    /// Tokens per sample: projected modality tokens + text.
    pub seq: usize,
    /// Positions per sample with a label (the head runs only there).
    pub labels: usize,
    pub gradient_checkpointing: bool,
    /// Bytes per activation element: 4 (f32, CPU) or 2 (bf16, CUDA).
    pub act_bytes: usize,
    /// Trainable projector parameters.
    pub projector_params: usize,
    pub lora: Option<(usize, LoraTargets)>,
    /// CUDA: a context and cuBLAS workspace instead of the CPU process baseline.
    pub cuda: bool,
}

/// Bytes per component at the peak of a step.
#[derive(Debug, Clone)]
pub struct MemoryEstimate {
    pub weights: usize,
    /// Trainable parameters, their gradients and AdamW's two moments, all f32.
    pub adapter_state: usize,
    pub trainable_params: usize,
    /// What the graph keeps for backward.
    pub activations: usize,
    /// The fused head + loss: a slice of dequantized head rows and their logits, plus the
    /// label positions' hidden states and gradient.
    pub head: usize,
    /// Transient during backward: one layer's gradients and one dequantized weight.
    pub backward_scratch: usize,
    /// The process itself (code, allocator, tokenizer), or on a GPU the CUDA context.
    pub runtime: usize,
}

impl MemoryEstimate {
    pub fn total(&self) -> usize {
        self.weights
            + self.adapter_state
            + self.activations
            + self.head
            + self.backward_scratch
            + self.runtime
    }
}

/// The process without model or activations (binary, allocator, thread stacks), and the
/// tokenizer's tables per vocabulary entry: fitted (least squares) to the measured peaks of the
/// alignment bench, alone, with checkpointing and with LoRA, on SmolLM2 (49k vocabulary) and
/// Gemma 3 (262k), where everything else is counted (README, "Memory model"). Refitted on
/// 2026-12-05: the earlier fit (40 MiB + 600 B) had absorbed the temporaries of Gemma's GELU
/// backward into the per-entry term, and those went when the gated op became one pass.
const CPU_BASE_BYTES: usize = 60 << 20;
const CPU_TOKENIZER_BYTES_PER_ENTRY: usize = 280;
/// CUDA context + cuBLAS workspace, typical for an H100 with CUDA 12 (not measured here).
const CUDA_RUNTIME_BYTES: usize = 600 << 20;
/// `anymal_llm::head_loss` dequantizes this many bytes of head rows per slice.
const HEAD_SLICE_BYTES: usize = 8 << 20;

/// Elements one token keeps in one layer's graph (see the module doc): the layer input, both
/// norms' outputs, the attention and MLP outputs and the residual sum (6 d, 8 d with Gemma's
/// post-norms); gate, up and their gated product (3 ffn); and attention's:
/// - on the CPU, anymal-llm's sequence attention op keeps its inputs q, k and v and the output
///   projection its output (2 q + 2 kv; one more q and kv where q and k are normed first);
/// - on a GPU, candle's ops: q, its rotation, the attention output and its contiguous copy
///   (4 q); k, v, the rotated k and v's contiguous copy (4 kv); scores and probabilities
///   (2 heads x T).
fn per_token_layer_elems(m: &ModelShape, seq: usize, cuda: bool) -> usize {
    let (_, _, q, kv) = m.widths();
    let d_terms = if m.post_norms { 8 } else { 6 };
    let attention = if cuda {
        4 * q + 4 * kv + 2 * m.heads * seq
    } else {
        let kept = 2 + usize::from(m.qk_norms);
        kept * (q + kv)
    };
    d_terms * m.hidden + attention + 3 * m.ffn
}

/// The additive `(b, 1, t, t)` f32 masks of one forward, shared by all layers (one, or two with
/// sliding-window layers): the one term that grows with the square of the sequence on the CPU.
fn attention_masks(m: &ModelShape, s: &TrainSetup) -> usize {
    (1 + usize::from(m.sliding_window)) * s.batch * s.seq * s.seq * 4
}

pub fn estimate(m: &ModelShape, s: &TrainSetup) -> MemoryEstimate {
    let tokens = s.batch * s.seq;
    let per_layer = tokens * per_token_layer_elems(m, s.seq, s.cuda) * s.act_bytes;
    let lora_params = match s.lora {
        None => 0,
        Some((r, targets)) => {
            let (d, f, q, kv) = m.widths();
            // r * (in + out) per adapted layer.
            let per_block = match targets {
                LoraTargets::QV => r * (d + q) + r * (d + kv),
                LoraTargets::AllLinear => {
                    r * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d))
                }
            };
            m.layers * per_block
        }
    };
    let trainable = s.projector_params + lora_params;
    // Training runs each adapted layer's frozen product and LoRA update as one op
    // (anymal-quant's lora_matmul), which keeps only its output, the frozen layer's own: the
    // adapters add no activations, with dropout too (its mask is recomputed in backward from a
    // seed; align + LoRA q,v with dropout 0.1 measured 948 MiB on SmolLM2, as without).
    let activations = if s.gradient_checkpointing {
        // Every layer's input, plus one layer rebuilt during its backward.
        m.layers * tokens * m.hidden * s.act_bytes + per_layer
    } else {
        m.layers * per_layer
    } + tokens * m.hidden * s.act_bytes // the spliced input embeddings
        + attention_masks(m, s);
    let n_labels = s.batch * s.labels;
    let slice_rows = (HEAD_SLICE_BYTES / (4 * m.hidden)).max(256).min(m.vocab);
    let head =
        slice_rows * m.hidden * 4 + 2 * n_labels * slice_rows * 4 + 3 * n_labels * m.hidden * 4;
    let largest_weight = (m.ffn * m.hidden).max(m.heads * m.head_dim * m.hidden);
    let backward_scratch = per_layer + largest_weight * s.act_bytes.max(4);
    MemoryEstimate {
        weights: m.weight_bytes,
        adapter_state: trainable * 4 * 4,
        trainable_params: trainable,
        activations,
        head,
        backward_scratch,
        runtime: if s.cuda {
            CUDA_RUNTIME_BYTES
        } else {
            CPU_BASE_BYTES + CPU_TOKENIZER_BYTES_PER_ENTRY * m.vocab
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(batch: usize, seq: usize, ckpt: bool) -> TrainSetup {
        TrainSetup {
            batch,
            seq,
            labels: seq / 2,
            gradient_checkpointing: ckpt,
            act_bytes: 2,
            projector_params: 1024 * 8192,
            lora: None,
            cuda: true,
        }
    }

    #[test]
    fn llama2_70b_shape_has_70b_parameters() {
        let m = ModelShape::named("llama2-70b", 4.5).unwrap();
        let p = m.params() as f64 / 1e9;
        assert!((68.0..70.0).contains(&p), "{p}");
    }

    /// On the CPU attention keeps no `(T, T)` scores (the sequence attention op), so the
    /// activations grow with the sequence length and no faster, but for the masks all layers
    /// share; on a GPU they grow faster.
    #[test]
    fn cpu_activations_are_linear_in_the_sequence() {
        let m = ModelShape::named("llama2-7b", 4.5).unwrap();
        let act = |seq, cuda| {
            let s = TrainSetup {
                cuda,
                ..setup(4, seq, false)
            };
            estimate(&m, &s).activations
        };
        let shared = |seq: usize| 4 * seq * m.hidden * 2 + 4 * seq * seq * 4;
        assert_eq!(
            act(512, false) - shared(512),
            2 * (act(256, false) - shared(256))
        );
        assert!(act(512, true) - shared(512) > 2 * (act(256, true) - shared(256)));
    }

    /// Checkpointing keeps one layer's activations instead of all of them; the rest is equal.
    #[test]
    fn checkpointing_saves_activations_only() {
        let m = ModelShape::named("llama2-7b", 4.5).unwrap();
        let (a, b) = (
            estimate(&m, &setup(4, 256, false)),
            estimate(&m, &setup(4, 256, true)),
        );
        assert!(b.activations * 10 < a.activations);
        assert_eq!(
            a.weights + a.head + a.adapter_state,
            b.weights + b.head + b.adapter_state
        );
    }
}

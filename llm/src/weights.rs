//! Frozen weights by name, from a GGUF file or HF safetensors, and the model built from them.
//!
//! Names are GGUF's (`blk.3.attn_q.weight`); HF names are mapped onto them at load
//! (`model.layers.3.self_attn.q_proj.weight`). GGUF tensors stay in their stored type unless a
//! re-quantization is asked for; dense HF weights are quantized on load (default Q4K).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anymal_quant::{QLinear, QuantType};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::attention::Attention;
use crate::block::Block;
use crate::config::{Arch, LlmConfig};
use crate::decoder::Llm;
use crate::mlp::{Activation, Mlp};
use crate::norm::RmsNorm;
use crate::{Error, Result};

/// A stored weight before it becomes part of a layer.
pub enum RawWeight {
    Quantized(QTensor),
    Dense(Tensor),
}

/// All weights of one checkpoint, by GGUF name.
pub struct WeightStore {
    pub path: PathBuf,
    tensors: HashMap<String, RawWeight>,
    /// Target type for dense (HF) linear weights and for `--requant` of GGUF ones.
    quantize_to: Option<QuantType>,
    device: Device,
}

impl WeightStore {
    pub fn new(
        path: &Path,
        tensors: HashMap<String, RawWeight>,
        quantize_to: Option<QuantType>,
        device: &Device,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            tensors,
            quantize_to,
            device: device.clone(),
        }
    }

    /// Reads every tensor of an open GGUF file.
    pub fn from_gguf(
        path: &Path,
        content: &gguf_file::Content,
        file: &mut std::fs::File,
        requant: Option<QuantType>,
        device: &Device,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let t = content
                .tensor(file, name, device)
                .map_err(|e| Error::format(path, format!("tensor '{name}': {e}")))?;
            tensors.insert(name.clone(), RawWeight::Quantized(t));
        }
        Ok(Self::new(path, tensors, requant, device))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn take(&mut self, name: &str) -> Result<RawWeight> {
        self.tensors
            .remove(name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    /// A small dense tensor (norm weights, biases, rope factors), as f32.
    pub fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(match self.take(name)? {
            RawWeight::Quantized(q) => q.dequantize(&self.device)?,
            RawWeight::Dense(t) => t.to_dtype(DType::F32)?.to_device(&self.device)?,
        })
    }

    pub fn dense_opt(&mut self, name: &str) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.dense(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The linear layer `prefix.weight` (+ `prefix.bias` when present).
    pub fn linear(&mut self, prefix: &str) -> Result<QLinear> {
        let bias = self.dense_opt(&format!("{prefix}.bias"))?;
        let name = format!("{prefix}.weight");
        let path = self.path.clone();
        let ctx = |e: anymal_quant::Error| Error::format(&path, format!("tensor '{name}': {e}"));
        match self.take(&name)? {
            RawWeight::Quantized(q) => {
                let l = QLinear::from_qtensor(q, bias).map_err(ctx)?;
                match self.quantize_to {
                    Some(ty) if is_quantized(&l) => l.requantize(ty).map_err(ctx),
                    _ => Ok(l),
                }
            }
            RawWeight::Dense(t) => {
                let ty = self.quantize_to.unwrap_or(QuantType::Ggml(GgmlDType::Q4K));
                QLinear::quantize(&t.to_device(&self.device)?, bias, ty).map_err(ctx)
            }
        }
    }

    /// The embedding table, quantized (dense HF tables go to Q8_0 where rows tile, else F16),
    /// unless loading asked for a dense type (`f32`, `f16`, `bf16`): then the table is that.
    pub fn embedding(&mut self, name: &str) -> Result<Arc<QTensor>> {
        let dense_request = match self.quantize_to {
            Some(QuantType::Ggml(t @ (GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16))) => {
                Some(t)
            }
            _ => None,
        };
        Ok(Arc::new(match self.take(name)? {
            RawWeight::Quantized(q) => q,
            RawWeight::Dense(t) => {
                let cols = t.dim(1)?;
                let ty = if let Some(t) = dense_request {
                    t
                } else if cols % 32 == 0 {
                    GgmlDType::Q8_0
                } else {
                    GgmlDType::F16
                };
                QTensor::quantize(&t.to_dtype(DType::F32)?.to_device(&self.device)?, ty)?
            }
        }))
    }

    /// Builds the decoder. `norm_shift` is added to norm weights (Gemma's HF checkpoints store
    /// `w` for `x * (1 + w)`; GGUF files already hold `1 + w`).
    pub fn build_llm(mut self, cfg: LlmConfig, norm_shift: f32) -> Result<Llm> {
        let device = self.device.clone();
        let eps = cfg.rms_norm_eps;
        let gemma = cfg.arch == Arch::Gemma3;
        let norm = |s: &mut Self, n: &str| -> Result<RmsNorm> {
            let w = s.dense(n)?;
            let w = if norm_shift != 0.0 {
                (w + norm_shift as f64)?
            } else {
                w
            };
            Ok(RmsNorm::new(w, eps))
        };
        // Gemma 3's extra norms (q/k, after attention, after the MLP); None for the others.
        let gemma_norm = |s: &mut Self, n: &str| -> Result<Option<RmsNorm>> {
            if gemma {
                norm(s, n).map(Some)
            } else {
                Ok(None)
            }
        };
        let embed_tokens = self.embedding("token_embd.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = |n: &str| format!("blk.{i}.{n}");
            let attn = Attention {
                q_proj: self.linear(&p("attn_q"))?,
                k_proj: self.linear(&p("attn_k"))?,
                v_proj: self.linear(&p("attn_v"))?,
                o_proj: self.linear(&p("attn_output"))?,
                q_norm: gemma_norm(&mut self, &p("attn_q_norm.weight"))?,
                k_norm: gemma_norm(&mut self, &p("attn_k_norm.weight"))?,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                scale: cfg.attn_scale,
            };
            check_linear(
                &self.path,
                &p("attn_q"),
                &attn.q_proj,
                cfg.num_heads * cfg.head_dim,
                cfg.hidden_size,
            )?;
            check_linear(
                &self.path,
                &p("attn_k"),
                &attn.k_proj,
                cfg.num_kv_heads * cfg.head_dim,
                cfg.hidden_size,
            )?;
            check_linear(
                &self.path,
                &p("attn_v"),
                &attn.v_proj,
                cfg.num_kv_heads * cfg.head_dim,
                cfg.hidden_size,
            )?;
            check_linear(
                &self.path,
                &p("attn_output"),
                &attn.o_proj,
                cfg.hidden_size,
                cfg.num_heads * cfg.head_dim,
            )?;
            let mlp = Mlp {
                gate_proj: self.linear(&p("ffn_gate"))?,
                up_proj: self.linear(&p("ffn_up"))?,
                down_proj: self.linear(&p("ffn_down"))?,
                act: if gemma {
                    Activation::GeluTanh
                } else {
                    Activation::Silu
                },
            };
            check_linear(
                &self.path,
                &p("ffn_gate"),
                &mlp.gate_proj,
                cfg.intermediate_size,
                cfg.hidden_size,
            )?;
            check_linear(
                &self.path,
                &p("ffn_down"),
                &mlp.down_proj,
                cfg.hidden_size,
                cfg.intermediate_size,
            )?;
            layers.push(Arc::new(Block {
                attn_norm: norm(&mut self, &p("attn_norm.weight"))?,
                attn,
                post_attn_norm: gemma_norm(&mut self, &p("post_attention_norm.weight"))?,
                ffn_norm: norm(&mut self, &p("ffn_norm.weight"))?,
                mlp,
                post_ffn_norm: gemma_norm(&mut self, &p("post_ffw_norm.weight"))?,
                sliding: cfg.is_sliding(i),
            }));
        }
        let final_norm = norm(&mut self, "output_norm.weight")?;
        let lm_head = if self.contains("output.weight") {
            self.linear("output")?
        } else {
            // Tied: the head multiplies by the embedding table itself, no second copy.
            QLinear::from_arc(embed_tokens.clone(), None)
                .map_err(|e| Error::in_file(&self.path, e))?
        };
        let (vocab, d) = embed_tokens.shape().dims2()?;
        if d != cfg.hidden_size {
            return Err(Error::in_file(
                &self.path,
                Error::ShapeMismatch {
                    what: "token_embd".into(),
                    got: format!("width {d}"),
                    expected: cfg.hidden_size.to_string(),
                },
            ));
        }
        let rope_freq_factors = self
            .dense_opt("rope_freqs.weight")?
            .map(|t| t.to_vec1::<f32>())
            .transpose()?;
        let mut cfg = cfg;
        cfg.vocab_size = vocab;
        Ok(Llm {
            cfg,
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            rope_freq_factors,
            gradient_checkpointing: false,
            device,
            dtype: DType::F32,
        })
    }
}

fn is_quantized(l: &QLinear) -> bool {
    !matches!(l.weight(), anymal_quant::QWeight::Dense(_))
}

fn check_linear(path: &Path, name: &str, l: &QLinear, out: usize, inp: usize) -> Result<()> {
    if l.shape() != (out, inp) {
        return Err(Error::in_file(
            path,
            Error::ShapeMismatch {
                what: format!("tensor '{name}.weight'"),
                got: format!("shape {:?}", l.shape()),
                expected: format!("({out}, {inp})"),
            },
        ));
    }
    Ok(())
}

/// Maps an HF parameter name onto the GGUF name anymal uses internally.
pub fn hf_to_gguf_name(hf: &str, arch: Arch) -> Option<String> {
    let name = hf
        .strip_prefix("model.language_model.")
        .map(|s| format!("model.{s}"));
    let name = name.as_deref().unwrap_or(hf);
    let name = name.strip_prefix("language_model.").unwrap_or(name);
    match name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        // Llama's norm before the MLP is Gemma's norm after attention.
        "post_attention_layernorm" if arch == Arch::Gemma3 => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{kind}"))
}

/// The HF module path of a GGUF linear (`blk.3.attn_q` -> `model.layers.3.self_attn.q_proj`),
/// the names PEFT adapters use.
pub fn gguf_to_hf_module(gguf_prefix: &str) -> Option<String> {
    if gguf_prefix == "output" {
        return Some("lm_head".into());
    }
    let rest = gguf_prefix.strip_prefix("blk.")?;
    let (idx, m) = rest.split_once('.')?;
    let hf = match m {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{idx}.{hf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_gguf_and_back() {
        assert_eq!(
            hf_to_gguf_name("model.layers.12.self_attn.q_proj.weight", Arch::Llama).unwrap(),
            "blk.12.attn_q.weight"
        );
        assert_eq!(
            hf_to_gguf_name("model.layers.0.self_attn.k_proj.bias", Arch::Qwen2).unwrap(),
            "blk.0.attn_k.bias"
        );
        assert_eq!(
            hf_to_gguf_name(
                "model.layers.1.pre_feedforward_layernorm.weight",
                Arch::Gemma3
            )
            .unwrap(),
            "blk.1.ffn_norm.weight"
        );
        assert_eq!(
            hf_to_gguf_name(
                "model.language_model.layers.1.mlp.up_proj.weight",
                Arch::Gemma3
            )
            .unwrap(),
            "blk.1.ffn_up.weight"
        );
        assert_eq!(
            hf_to_gguf_name("model.embed_tokens.weight", Arch::Llama).unwrap(),
            "token_embd.weight"
        );
        assert!(hf_to_gguf_name("vision_tower.x.weight", Arch::Gemma3).is_none());
        assert_eq!(
            hf_to_gguf_name(
                "model.layers.2.post_attention_layernorm.weight",
                Arch::Llama
            )
            .unwrap(),
            "blk.2.ffn_norm.weight"
        );
        assert_eq!(
            hf_to_gguf_name(
                "model.layers.2.post_attention_layernorm.weight",
                Arch::Gemma3
            )
            .unwrap(),
            "blk.2.post_attention_norm.weight"
        );
        assert_eq!(
            gguf_to_hf_module("blk.12.attn_q").unwrap(),
            "model.layers.12.self_attn.q_proj"
        );
    }
}

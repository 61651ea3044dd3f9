//! Hyper-parameters of a decoder, read from GGUF metadata or an HF `config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;

use crate::{Error, Result};

/// The decoder families anymal runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, Mistral (same graph).
    Llama,
    /// Llama graph with biases on q, k, v.
    Qwen2,
    /// Gemma 3: sandwich norms, q/k norms, sliding-window layers, scaled embeddings, GELU.
    Gemma3,
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// RoPE base of full-attention layers.
    pub rope_theta: f64,
    /// RoPE base of sliding-window layers (Gemma 3: 10 000).
    pub rope_local_theta: f64,
    /// Linear RoPE position scaling of full-attention layers (1.0 = none).
    pub rope_scale: f64,
    /// GGUF's llama layout pairs adjacent dims (the converter permutes q/k); HF and NeoX-style
    /// models rotate the two halves.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    /// Window of sliding-window layers.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer is global, the others slide (Gemma 3: 6). 0 = all global.
    pub sliding_window_pattern: usize,
    /// Multiplier on the attention logits.
    pub attn_scale: f64,
}

impl LlmConfig {
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && self.sliding_window_pattern > 0
            && !(layer + 1).is_multiple_of(self.sliding_window_pattern)
    }

    /// Gemma scales embeddings by sqrt(hidden) before the first layer.
    pub fn embed_scale(&self) -> Option<f64> {
        (self.arch == Arch::Gemma3).then(|| (self.hidden_size as f64).sqrt())
    }

    /// Reads the hyper-parameters of a GGUF file's metadata.
    pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Self> {
        let arch_s = get_str(path, md, "general.architecture")?;
        let arch = match arch_s.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(Error::UnsupportedArch {
                    path: path.into(),
                    arch: other.to_string(),
                })
            }
        };
        let p = |k: &str| format!("{arch_s}.{k}");
        let hidden = get_usize(path, md, &p("embedding_length"))?;
        let num_heads = get_usize(path, md, &p("attention.head_count"))?;
        let num_kv_heads = opt_usize(md, &p("attention.head_count_kv")).unwrap_or(num_heads);
        let head_dim = opt_usize(md, &p("attention.key_length"))
            .or_else(|| opt_usize(md, &p("rope.dimension_count")))
            .unwrap_or(hidden / num_heads.max(1));
        let vocab_size = match md.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => get_usize(path, md, &p("vocab_size"))?,
        };
        let gemma = arch == Arch::Gemma3;
        let sliding_window = if gemma {
            opt_usize(md, &p("attention.sliding_window"))
        } else {
            None
        };
        // Linear position scaling (Gemma 3 4B+ global layers); other kinds (yarn, llama3) are
        // not linear and are handled by their own tensors (`rope_freqs`) or not at all.
        let scaling_type = md
            .get(&p("rope.scaling.type"))
            .and_then(|v| v.to_string().ok());
        let rope_scale = match md
            .get(&p("rope.scaling.factor"))
            .and_then(|v| v.to_f32().ok())
        {
            Some(f) if f > 0.0 && scaling_type.is_none_or(|t| t == "linear") => f as f64,
            _ => 1.0,
        };
        let cfg = Self {
            arch,
            vocab_size,
            hidden_size: hidden,
            intermediate_size: get_usize(path, md, &p("feed_forward_length"))?,
            num_layers: get_usize(path, md, &p("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f64(md, &p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: opt_f64(md, &p("rope.freq_base")).unwrap_or(10_000.0),
            rope_local_theta: 10_000.0,
            rope_scale,
            rope_interleaved: arch == Arch::Llama,
            max_position_embeddings: opt_usize(md, &p("context_length")).unwrap_or(4096),
            sliding_window,
            sliding_window_pattern: if gemma { 6 } else { 0 },
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
        let hf: HfConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid config: {e}")))?;
        // Multimodal Gemma 3 checkpoints nest the language model's config.
        let hf = match hf.text_config {
            Some(t) if hf.hidden_size.is_none() => HfConfig {
                model_type: t.model_type.clone().or(hf.model_type),
                ..*t
            },
            _ => hf,
        };
        let model_type = hf.model_type.clone().unwrap_or_default();
        let arch = match model_type.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            other => {
                return Err(Error::UnsupportedArch {
                    path: path.into(),
                    arch: other.to_string(),
                })
            }
        };
        let need = |v: Option<usize>, k: &str| {
            v.ok_or_else(|| Error::format(path, format!("missing field '{k}'")))
        };
        let hidden = need(hf.hidden_size, "hidden_size")?;
        let num_heads = need(hf.num_attention_heads, "num_attention_heads")?;
        let head_dim = hf.head_dim.unwrap_or(hidden / num_heads.max(1));
        let gemma = arch == Arch::Gemma3;
        let params = |kind: &str| -> Option<&serde_json::Map<String, serde_json::Value>> {
            let p = hf.rope_parameters.as_ref()?;
            match p.get(kind) {
                Some(serde_json::Value::Object(m)) => Some(m),
                _ => Some(p),
            }
        };
        let theta_of = |kind: &str| params(kind).and_then(|m| m.get("rope_theta")?.as_f64());
        let rope_scale = hf
            .rope_scaling
            .as_ref()
            .or_else(|| params("full_attention"))
            .and_then(|r| {
                let kind = r.get("rope_type").or_else(|| r.get("type"))?.as_str()?;
                (kind == "linear")
                    .then(|| r.get("factor")?.as_f64())
                    .flatten()
            })
            .unwrap_or(1.0);
        let cfg = Self {
            arch,
            vocab_size: need(hf.vocab_size, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: need(hf.intermediate_size, "intermediate_size")?,
            num_layers: need(hf.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: hf
                .rope_theta
                .or_else(|| theta_of("full_attention"))
                .unwrap_or(10_000.0),
            rope_local_theta: hf
                .rope_local_base_freq
                .or_else(|| {
                    hf.rope_parameters
                        .as_ref()
                        .and_then(|p| p.get("sliding_attention")?.get("rope_theta")?.as_f64())
                })
                .unwrap_or(10_000.0),
            rope_scale,
            rope_interleaved: false,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
            sliding_window: if gemma { hf.sliding_window } else { None },
            sliding_window_pattern: if gemma {
                hf.sliding_window_pattern.unwrap_or(6)
            } else {
                0
            },
            attn_scale: 1.0 / hf.query_pre_attn_scalar.unwrap_or(head_dim as f64).sqrt(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::format(path, m));
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || self.num_layers == 0
            || self.hidden_size == 0
        {
            return bad(format!("implausible hyper-parameters {self:?}"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} heads not a multiple of {} kv heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} must be even for RoPE", self.head_dim));
        }
        Ok(())
    }
}

#[derive(Deserialize, Clone)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_scaling: Option<serde_json::Map<String, serde_json::Value>>,
    /// transformers 5 moves `rope_theta` and the scaling here; Gemma 3 nests one per layer
    /// type (`full_attention`, `sliding_attention`).
    rope_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    max_position_embeddings: Option<usize>,
    sliding_window: Option<usize>,
    sliding_window_pattern: Option<usize>,
    query_pre_attn_scalar: Option<f64>,
    text_config: Option<Box<HfConfig>>,
}

fn get_str(path: &Path, md: &HashMap<String, Value>, k: &str) -> Result<String> {
    match md.get(k) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(Error::format(path, format!("missing metadata '{k}'"))),
    }
}

pub(crate) fn opt_usize(md: &HashMap<String, Value>, k: &str) -> Option<usize> {
    md.get(k).and_then(|v| match v {
        Value::U8(x) => Some(*x as usize),
        Value::U16(x) => Some(*x as usize),
        Value::U32(x) => Some(*x as usize),
        Value::U64(x) => Some(*x as usize),
        Value::I32(x) if *x >= 0 => Some(*x as usize),
        Value::I64(x) if *x >= 0 => Some(*x as usize),
        _ => None,
    })
}

fn get_usize(path: &Path, md: &HashMap<String, Value>, k: &str) -> Result<usize> {
    opt_usize(md, k)
        .ok_or_else(|| Error::format(path, format!("missing or invalid metadata '{k}'")))
}

fn opt_f64(md: &HashMap<String, Value>, k: &str) -> Option<f64> {
    md.get(k).and_then(|v| match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> LlmConfig {
        let p = std::env::temp_dir().join(format!(
            "anymal-config-{}-{}.json",
            std::process::id(),
            json.len()
        ));
        std::fs::write(&p, json).unwrap();
        let c = LlmConfig::from_hf_json(&p).unwrap();
        std::fs::remove_file(&p).ok();
        c
    }

    /// transformers 5 writes `rope_parameters` instead of `rope_theta` / `rope_scaling`.
    #[test]
    fn transformers5_rope_parameters_are_read() {
        let c = parse(
            r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "linear", "factor": 2.0}}"#,
        );
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scale, 2.0);
        let g = parse(
            r#"{"model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 4,
            "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}"#,
        );
        assert_eq!(g.rope_theta, 1_000_000.0);
        assert_eq!(g.rope_local_theta, 10_000.0);
        assert_eq!(g.rope_scale, 1.0);
    }
}

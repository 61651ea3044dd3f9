//! Perceiver resampler (Flamingo; AnyMAL's projector for vision): `k` learned latent queries
//! cross-attend to the encoder frames (and to themselves) through `depth` layers, so any number
//! of frames becomes exactly `k` tokens.

use candle_core::{DType, Tensor, D};
use candle_nn::{linear_no_bias, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::layer_norm::LayerNorm;
use crate::Result;

/// Shape of the resampler; `dim` is its internal width (the LLM width when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerceiverConfig {
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_heads")]
    pub heads: usize,
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    #[serde(default = "default_ff_mult")]
    pub ff_mult: usize,
    #[serde(default)]
    pub dim: Option<usize>,
    /// Learned position embeddings for up to this many input frames (Flamingo's time
    /// embeddings): without them cross-attention ignores order, so a video's frames could be
    /// shuffled without changing the output -- and "moving left" would look like "moving right".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<usize>,
}

fn default_depth() -> usize {
    2
}
fn default_heads() -> usize {
    8
}
fn default_head_dim() -> usize {
    64
}
fn default_ff_mult() -> usize {
    4
}

impl Default for PerceiverConfig {
    fn default() -> Self {
        Self {
            depth: default_depth(),
            heads: default_heads(),
            head_dim: default_head_dim(),
            ff_mult: default_ff_mult(),
            dim: None,
            positions: None,
        }
    }
}

#[derive(Debug, Clone)]
struct CrossAttention {
    norm_media: LayerNorm,
    norm_latents: LayerNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl CrossAttention {
    fn new(dim: usize, heads: usize, head_dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            norm_media: LayerNorm::new(dim, 1e-5, vb.pp("norm_media"))?,
            norm_latents: LayerNorm::new(dim, 1e-5, vb.pp("norm_latents"))?,
            to_q: linear_no_bias(dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(dim, inner, vb.pp("to_v"))?,
            to_out: linear_no_bias(inner, dim, vb.pp("to_out"))?,
            heads,
            head_dim,
        })
    }

    /// `media (b, n, dim)`, `latents (b, k, dim)`, `key_bias (b, 1, 1, n + k)` additive.
    fn forward(&self, media: &Tensor, latents: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
        let (b, k, _) = latents.dims3()?;
        let media = self.norm_media.forward(media)?;
        let latents = self.norm_latents.forward(latents)?;
        // Latents attend to the frames and to each other (Flamingo's concatenated keys).
        let kv_in = Tensor::cat(&[&media, &latents], 1)?;
        let n_kv = kv_in.dim(1)?;
        let split = |t: Tensor, len: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.to_q.forward(&latents)?, k)?;
        let kk = split(self.to_k.forward(&kv_in)?, n_kv)?;
        let v = split(self.to_v.forward(&kv_in)?, n_kv)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&kk.t()?)? * scale)?.broadcast_add(key_bias)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let out = att
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, k, self.heads * self.head_dim))?;
        Ok(self.to_out.forward(&out)?)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl FeedForward {
    fn new(dim: usize, mult: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(dim, 1e-5, vb.pp("norm"))?,
            fc1: linear_no_bias(dim, dim * mult, vb.pp("fc1"))?,
            fc2: linear_no_bias(dim * mult, dim, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(&self.norm.forward(xs)?)?.gelu_erf()?;
        Ok(self.fc2.forward(&h)?)
    }
}

/// `(b, n, d_in)` frames -> `(b, k, d_out)` tokens.
#[derive(Debug, Clone)]
pub struct PerceiverResampler {
    proj_in: Linear,
    /// `(positions, dim)` added to the projected frames, when configured.
    positions: Option<Tensor>,
    latents: Tensor,
    layers: Vec<(CrossAttention, FeedForward)>,
    norm_out: LayerNorm,
    proj_out: Linear,
}

impl PerceiverResampler {
    pub fn new(
        cfg: &PerceiverConfig,
        d_in: usize,
        d_out: usize,
        num_tokens: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        // Zero of any of these builds tensors with an empty axis, which fail much later
        // ("empty tensor for reduce") without naming the setting.
        for (key, v) in [
            ("depth", cfg.depth),
            ("heads", cfg.heads),
            ("head_dim", cfg.head_dim),
            ("ff_mult", cfg.ff_mult),
            ("dim", cfg.dim.unwrap_or(1)),
        ] {
            if v == 0 {
                return Err(crate::Error::config(
                    format!("perceiver.{key}"),
                    format!("perceiver.{key} must be >= 1"),
                ));
            }
        }
        let dim = cfg.dim.unwrap_or(d_out);
        let proj_in = candle_nn::linear(d_in, dim, vb.pp("proj_in"))?;
        let latents = vb.get_with_hints(
            (num_tokens, dim),
            "latents",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let positions = match cfg.positions {
            Some(0) => {
                return Err(crate::Error::config(
                    "perceiver.positions",
                    "perceiver.positions must be >= 1 when set",
                ))
            }
            Some(p) => Some(vb.get_with_hints(
                (p, dim),
                "positions",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?),
            None => None,
        };
        let mut layers = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let vb = vb.pp(format!("layers.{i}"));
            layers.push((
                CrossAttention::new(dim, cfg.heads, cfg.head_dim, vb.pp("attn"))?,
                FeedForward::new(dim, cfg.ff_mult, vb.pp("ff"))?,
            ));
        }
        Ok(Self {
            proj_in,
            positions,
            latents,
            layers,
            norm_out: LayerNorm::new(dim, 1e-5, vb.pp("norm_out"))?,
            proj_out: candle_nn::linear(dim, d_out, vb.pp("proj_out"))?,
        })
    }

    /// `xs (b, n, d_in)`; frames at or beyond `lengths[i]` are padding and get no attention.
    pub fn forward(&self, xs: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let (k, dim) = self.latents.dims2()?;
        let mut media = self.proj_in.forward(xs)?;
        if let Some(pos) = &self.positions {
            let max = pos.dim(0)?;
            if n > max {
                return Err(crate::Error::Shape(format!(
                    "{n} input frames but the perceiver has positions for {max} (perceiver.positions)"
                )));
            }
            media = media.broadcast_add(&pos.narrow(0, 0, n)?.unsqueeze(0)?)?;
        }
        let mut bias = vec![0f32; b * (n + k)];
        for (i, &len) in lengths.iter().enumerate() {
            for f in len.max(1).min(n)..n {
                bias[i * (n + k) + f] = -1e30;
            }
        }
        let key_bias =
            Tensor::from_vec(bias, (b, 1, 1, n + k), xs.device())?.to_dtype(DType::F32)?;
        let mut lat = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((b, k, dim))?
            .contiguous()?;
        for (attn, ff) in &self.layers {
            lat = (attn.forward(&media, &lat, &key_bias)? + &lat)?;
            lat = (ff.forward(&lat)? + &lat)?;
        }
        Ok(self.proj_out.forward(&self.norm_out.forward(&lat)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sizes_are_named() {
        for (key, cfg) in [
            (
                "perceiver.heads",
                PerceiverConfig {
                    heads: 0,
                    ..Default::default()
                },
            ),
            (
                "perceiver.dim",
                PerceiverConfig {
                    dim: Some(0),
                    ..Default::default()
                },
            ),
        ] {
            let vb = VarBuilder::zeros(DType::F32, &candle_core::Device::Cpu);
            let e = PerceiverResampler::new(&cfg, 8, 16, 4, vb)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}

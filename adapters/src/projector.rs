//! The projector: frozen encoder frames `(b, n, d_enc)` -> LLM input embeddings `(b, t, d_llm)`,
//! by name as in LLaVA's builder (`linear`, `mlp2x_gelu`, `perceiver`) plus the audio projectors
//! of Qwen2-Audio (`qwen2_audio`: average-pool by 2, one linear layer) and Ultravox (`ultravox`:
//! stack 8 frames, RMSNorm, Linear, SwiGLU, RMSNorm, Linear), with those models' parameter
//! names so that their layouts carry over. `t` is `k` for the fixed-count reductions and
//! follows each item's length for the rate ones (see [`crate::pool`]).
//! Saved as `projector.safetensors` + `projector.json`, loadable without the run that made it.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::ctc_compress::{CompressOutput, CtcCompress, CtcCompressConfig, TABLE as CTC_TABLE};
use crate::front::{deserialize_front, FrontStage, FrontStageConfig};
use crate::params::ParamStore;
use crate::perceiver::{PerceiverConfig, PerceiverResampler};
use crate::pool::{pad_items, Reduce};
use crate::rms_norm::RmsNorm;
use crate::{Error, Result};

pub const CONFIG_FILE: &str = "projector.json";
pub const WEIGHTS_FILE: &str = "projector.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorKind {
    /// One linear layer (AnyMAL's choice for audio, IMU and video).
    Linear,
    /// Linear, GELU, linear (LLaVA-1.5's `mlp2x_gelu`).
    #[serde(rename = "mlp2x_gelu")]
    Mlp2xGelu,
    /// Learned latents cross-attending to the frames (AnyMAL's choice for images).
    Perceiver,
    /// Qwen2-Audio's: frames average-pooled by 2 (25 tokens/s from Whisper), then one linear
    /// layer (`linear.weight`, `linear.bias`).
    #[serde(rename = "qwen2_audio")]
    Qwen2Audio,
    /// Ultravox's: `n` stacked frames (8 by default), RMSNorm (`ln_pre`), Linear without bias
    /// (`linear_1`, to `hidden`), SwiGLU (halves the width: `silu(gate) * x` with `x, gate` the
    /// two halves), RMSNorm (`ln_mid`), Linear without bias (`linear_2`).
    Ultravox,
}

impl ProjectorKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "mlp2x_gelu" | "mlp" => Ok(Self::Mlp2xGelu),
            "perceiver" => Ok(Self::Perceiver),
            "qwen2_audio" => Ok(Self::Qwen2Audio),
            "ultravox" => Ok(Self::Ultravox),
            other => Err(Error::UnknownKind {
                what: "projector kind",
                kind: other.to_string(),
                known: "linear, mlp2x_gelu, perceiver, qwen2_audio, ultravox".into(),
            }),
        }
    }

    /// The reduction the kind is defined with, if it has one (`qwen2_audio`: average-pool by
    /// 2; `ultravox`: stack 8), used when a recipe names none.
    pub fn default_reduce(&self) -> Option<Reduce> {
        match self {
            Self::Qwen2Audio => Some(Reduce::AvgPool { n: 2 }),
            Self::Ultravox => Some(Reduce::Stack { n: 8 }),
            _ => None,
        }
    }
}

/// Everything needed to rebuild a projector and to use it: its shape and what it was trained
/// to connect (modality, encoder, LLM, prompt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorConfig {
    pub kind: ProjectorKind,
    /// Encoder feature width.
    pub d_enc: usize,
    /// LLM embedding width.
    pub d_llm: usize,
    /// Tokens handed to the LLM per item (`k`) by the fixed-count reductions and the
    /// Perceiver; unused by the rate reductions, whose count follows the item.
    pub num_tokens: usize,
    /// How the non-Perceiver kinds reduce `n` frames to tokens (the Perceiver needs none).
    #[serde(default = "default_reduce")]
    pub reduce: Reduce,
    /// Width of Ultravox's first linear layer (before SwiGLU halves it); default `4 * d_llm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perceiver: Option<PerceiverConfig>,
    /// A trainable stage in front of the projection, trained with it (see [`crate::front`]);
    /// its input width is `d_enc`. Read also from the `imu_encoder` key of older files.
    #[serde(
        default,
        alias = "imu_encoder",
        deserialize_with = "deserialize_front",
        skip_serializing_if = "Option::is_none"
    )]
    pub front: Option<FrontStageConfig>,
    /// CTC compression of a rate projector's tokens (see [`crate::ctc_compress`]): set by a
    /// CTC warm start that asked for it, with the frozen table's row count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctc_compress: Option<CtcCompressConfig>,
    /// Modality name, e.g. `audio`; its placeholder is `<audio>`.
    #[serde(default)]
    pub modality: String,
    /// Encoder reference as given (path or short name) and its content-derived id.
    #[serde(default)]
    pub encoder: String,
    #[serde(default)]
    pub encoder_id: String,
    /// The recipe's `[encoder.options]` (image size, video frames...), so inference builds the
    /// encoder exactly as training did.
    #[serde(default, skip_serializing_if = "is_empty_object")]
    pub encoder_options: serde_json::Value,
    /// LLM reference the projector was trained against.
    #[serde(default)]
    pub llm: String,
    /// The user turn used in training, with the placeholder, e.g. `<audio>\nTranscribe.`.
    #[serde(default)]
    pub prompt: String,
    /// Whether the LLM's chat template wrapped the prompt in training.
    #[serde(default)]
    pub chat_template: bool,
}

fn is_empty_object(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
}

fn default_reduce() -> Reduce {
    Reduce::Pool
}

#[derive(Debug, Clone)]
enum Body {
    Linear(Linear),
    Mlp(Linear, Linear),
    Perceiver(Box<PerceiverResampler>),
    Ultravox(Box<UltravoxMlp>),
}

/// Ultravox's projection of stacked frames (see [`ProjectorKind::Ultravox`]).
#[derive(Debug, Clone)]
struct UltravoxMlp {
    ln_pre: RmsNorm,
    linear_1: Linear,
    ln_mid: RmsNorm,
    linear_2: Linear,
}

impl UltravoxMlp {
    fn new(d_in: usize, hidden: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        if hidden < 2 || !hidden.is_multiple_of(2) {
            return Err(Error::config(
                "hidden",
                format!("ultravox's hidden width must be even (SwiGLU halves it), got {hidden}"),
            ));
        }
        Ok(Self {
            ln_pre: RmsNorm::new(d_in, 1e-6, vb.pp("ln_pre"))?,
            linear_1: candle_nn::linear_no_bias(d_in, hidden, vb.pp("linear_1"))?,
            ln_mid: RmsNorm::new(hidden / 2, 1e-6, vb.pp("ln_mid"))?,
            linear_2: candle_nn::linear_no_bias(hidden / 2, d_out, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.linear_1.forward(&self.ln_pre.forward(xs)?)?;
        let half = h.dim(candle_core::D::Minus1)? / 2;
        let x = h.narrow(candle_core::D::Minus1, 0, half)?;
        let gate = h.narrow(candle_core::D::Minus1, half, half)?;
        let h = (candle_nn::ops::silu(&gate)? * x)?;
        Ok(self.linear_2.forward(&self.ln_mid.forward(&h)?)?)
    }
}

#[derive(Debug, Clone)]
pub struct Projector {
    pub cfg: ProjectorConfig,
    front: Option<FrontStage>,
    body: Body,
    compress: Option<CtcCompress>,
}

impl Projector {
    /// Build from a config, taking (or creating) parameters from `vb`.
    pub fn new(cfg: &ProjectorConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.num_tokens == 0 || cfg.d_enc == 0 || cfg.d_llm == 0 {
            return Err(Error::config(
                "num_tokens",
                format!(
                    "projector needs num_tokens, d_enc and d_llm > 0 (got {}, {}, {})",
                    cfg.num_tokens, cfg.d_enc, cfg.d_llm
                ),
            ));
        }
        if cfg.reduce.factor() == Some(0) {
            return Err(Error::config(
                "stride",
                "projector reduce stride (frames per token) must be >= 1",
            ));
        }
        match (cfg.kind, cfg.reduce) {
            (ProjectorKind::Qwen2Audio, Reduce::AvgPool { .. })
            | (ProjectorKind::Ultravox, Reduce::Stack { .. }) => {}
            (ProjectorKind::Qwen2Audio | ProjectorKind::Ultravox, other) => {
                return Err(Error::config(
                    "reduce",
                    format!(
                        "a {:?} projector reduces with {:?}, not {other:?}",
                        cfg.kind,
                        cfg.kind.default_reduce().expect("audio kinds have one")
                    ),
                ))
            }
            _ => {}
        }
        let (front, d_feat) = match &cfg.front {
            Some(fc) => {
                if fc.input_width() != cfg.d_enc {
                    return Err(Error::config(
                        fc.name(),
                        format!(
                            "the {} reads features of width {}, the encoder's have width {}",
                            fc.name(),
                            fc.input_width(),
                            cfg.d_enc
                        ),
                    ));
                }
                (Some(FrontStage::new(fc, vb.clone())?), fc.output_width())
            }
            None => (None, cfg.d_enc),
        };
        let compress = match cfg.ctc_compress {
            None => None,
            Some(c) => {
                if !cfg.reduce.is_rate() || cfg.kind == ProjectorKind::Perceiver {
                    return Err(Error::config(
                        "ctc_compress",
                        "CTC compression needs a rate-based reduce (stack or avg_pool): a fixed token count has no time axis",
                    ));
                }
                let table = vb.get((c.classes, cfg.d_llm), CTC_TABLE)?;
                Some(CtcCompress::new(table, c.output)?)
            }
        };
        let d_in = cfg.reduce.out_dim(d_feat);
        let body = match cfg.kind {
            ProjectorKind::Linear | ProjectorKind::Qwen2Audio => {
                Body::Linear(candle_nn::linear(d_in, cfg.d_llm, vb.pp("linear"))?)
            }
            ProjectorKind::Ultravox => Body::Ultravox(Box::new(UltravoxMlp::new(
                d_in,
                cfg.hidden.unwrap_or(4 * cfg.d_llm),
                cfg.d_llm,
                vb.clone(),
            )?)),
            ProjectorKind::Mlp2xGelu => Body::Mlp(
                candle_nn::linear(d_in, cfg.d_llm, vb.pp("fc1"))?,
                candle_nn::linear(cfg.d_llm, cfg.d_llm, vb.pp("fc2"))?,
            ),
            ProjectorKind::Perceiver => Body::Perceiver(Box::new(PerceiverResampler::new(
                &cfg.perceiver.clone().unwrap_or_default(),
                d_feat,
                cfg.d_llm,
                cfg.num_tokens,
                vb.pp("perceiver"),
            )?)),
        };
        Ok(Self {
            cfg: cfg.clone(),
            front,
            body,
            compress,
        })
    }

    /// This projector with CTC compression by `table` (`(classes, d_llm)`, the blank last):
    /// the table goes into `store` (frozen) and the config records it.
    pub fn with_ctc_compress(
        &self,
        store: &ParamStore,
        table: &Tensor,
        output: CompressOutput,
    ) -> Result<Self> {
        let (classes, d) = table.dims2()?;
        if d != self.cfg.d_llm {
            return Err(Error::Shape(format!(
                "a CTC table of width {d} for a projector of width {}",
                self.cfg.d_llm
            )));
        }
        // A copy: the table may be read from this very store, and a Var cannot be set to a
        // tensor that shares its storage.
        let table = table.detach().copy()?;
        store.set_tensors([(CTC_TABLE.to_string(), table)].into_iter().collect())?;
        let mut cfg = self.cfg.clone();
        cfg.ctc_compress = Some(CtcCompressConfig { classes, output });
        Self::new(&cfg, store.var_builder())
    }

    /// The parameters training may change: all of `store` but the frozen CTC table.
    pub fn trainable_vars(&self, store: &ParamStore) -> Vec<(String, candle_core::Var)> {
        store
            .vars()
            .into_iter()
            .filter(|(n, _)| n != CTC_TABLE)
            .collect()
    }

    /// How many numbers training may change (the frozen CTC table not counted).
    pub fn trainable_params(&self, store: &ParamStore) -> usize {
        self.trainable_vars(store)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// `xs (b, n, d_enc)`, `lengths[i]` real frames of row `i` -> `(b, t, d_llm)` and the
    /// number of tokens of each row (`k` each for fixed-count projectors; with a rate
    /// reduction rows are right-padded to the longest, `t`; with CTC compression, the tokens
    /// it keeps).
    pub fn forward(&self, xs: &Tensor, lengths: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let (out, counts) = self.forward_frames(xs, lengths)?;
        match &self.compress {
            Some(c) => c.apply(&out, &counts),
            None => Ok((out, counts)),
        }
    }

    /// [`Self::forward`] before CTC compression: one token per `n` frames of a rate reduction.
    pub fn forward_frames(&self, xs: &Tensor, lengths: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let (b, _, d) = xs.dims3()?;
        if d != self.cfg.d_enc {
            return Err(Error::Shape(format!(
                "encoder features have width {d}, the projector expects {}",
                self.cfg.d_enc
            )));
        }
        if lengths.len() != b {
            return Err(Error::Shape(format!(
                "{} lengths for a batch of {b}",
                lengths.len()
            )));
        }
        let k = self.cfg.num_tokens;
        let encoded;
        let (xs, lengths) = match &self.front {
            Some(f) => {
                encoded = f.forward(xs, lengths)?;
                (&encoded.0, encoded.1.as_slice())
            }
            None => (xs, lengths),
        };
        if let Body::Perceiver(p) = &self.body {
            return Ok((p.forward(xs, lengths)?, vec![k; b]));
        }
        let (reduced, counts) = self.cfg.reduce.apply(xs, lengths, k)?;
        let out = match &self.body {
            Body::Linear(l) => l.forward(&reduced)?,
            Body::Mlp(a, c) => c.forward(&a.forward(&reduced)?.gelu_erf()?)?,
            Body::Ultravox(u) => u.forward(&reduced)?,
            Body::Perceiver(_) => unreachable!("returned above"),
        };
        Ok((out, counts))
    }

    /// Project a list of per-item features `(n_i, d_enc)` of different lengths: one
    /// `(t_i, d_llm)` tensor per item.
    pub fn forward_items(&self, items: &[Tensor]) -> Result<Vec<Tensor>> {
        let (xs, lengths) = pad_items(items)?;
        split_items(self.forward(&xs, &lengths)?)
    }

    /// [`Self::forward_items`] before CTC compression.
    pub fn frame_items(&self, items: &[Tensor]) -> Result<Vec<Tensor>> {
        let (xs, lengths) = pad_items(items)?;
        split_items(self.forward_frames(&xs, &lengths)?)
    }

    /// Names of the parameters of the last layer (its weight, and bias where it has one).
    pub fn output_layer(&self) -> &'static [&'static str] {
        match self.cfg.kind {
            ProjectorKind::Linear | ProjectorKind::Qwen2Audio => &["linear.weight", "linear.bias"],
            ProjectorKind::Mlp2xGelu => &["fc2.weight", "fc2.bias"],
            ProjectorKind::Perceiver => &["perceiver.proj_out.weight", "perceiver.proj_out.bias"],
            ProjectorKind::Ultravox => &["linear_2.weight"],
        }
    }

    /// Multiply the last layer's weight and bias by `factor`: the output scales by it. Used to
    /// start the projector at the scale of the LLM's own embeddings (a data-dependent init):
    /// tokens 30x louder than any word embedding make the first steps noise.
    pub fn scale_output(&self, store: &ParamStore, factor: f64) -> Result<()> {
        let vars = store.vars();
        for &name in self.output_layer() {
            let (_, v) = vars
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| Error::Parameter(format!("projector has no parameter '{name}'")))?;
            v.set(&(v.as_tensor() * factor)?)?;
        }
        Ok(())
    }

    /// Build a projector with fresh parameters drawn from `seed`.
    pub fn init(cfg: &ProjectorConfig, seed: u64, device: &Device) -> Result<(Self, ParamStore)> {
        let store = ParamStore::new(seed, device);
        let p = Self::new(cfg, store.var_builder())?;
        Ok((p, store))
    }

    /// Load `projector.json` + `projector.safetensors` from a folder.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, ParamStore)> {
        let cfg = load_config(dir)?;
        let store = ParamStore::new(0, device);
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(Error::file(
                &weights,
                "missing (a projector folder holds projector.json and projector.safetensors)",
            ));
        }
        store.load_safetensors(&weights)?;
        let before: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
        let p = Self::new(&cfg, store.var_builder())?;
        // Building must not have invented any parameter: all of them come from the file.
        let after = store.vars();
        if after.len() != before.len() {
            let missing: Vec<String> = after
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !before.contains(n))
                .collect();
            return Err(Error::file(
                &weights,
                format!("lacks parameters {missing:?}"),
            ));
        }
        Ok((p, store))
    }

    /// Write the config and parameters into `dir` (each file written then renamed).
    pub fn save(&self, dir: &Path, store: &ParamStore) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors: std::collections::HashMap<String, Tensor> =
            store.tensors().into_iter().collect();
        anymal_util::fs::write_atomic_with(&weights, |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(|e| Error::file(tmp, e))
        })?;
        let json = serde_json::to_string_pretty(&self.cfg)
            .map_err(|e| Error::file(dir.join(CONFIG_FILE), e))?;
        Ok(anymal_util::fs::write_atomic(
            &dir.join(CONFIG_FILE),
            json.as_bytes(),
        )?)
    }
}

/// A right-padded batch and its counts -> one `(t_i, d)` tensor per item.
fn split_items((out, counts): (Tensor, Vec<usize>)) -> Result<Vec<Tensor>> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &t)| Ok(out.get(i)?.narrow(0, 0, t)?))
        .collect()
}

/// Read and check `projector.json` in `dir`.
pub fn load_config(dir: &Path) -> Result<ProjectorConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("invalid projector config: {e}")))
}

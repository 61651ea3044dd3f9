//! CLIP and SigLIP ViT vision towers (candle-transformers' implementations) loaded from a
//! Hugging Face folder: `config.json` + `model.safetensors` (+ optional
//! `preprocessor_config.json`), as `CLIPModel`/`CLIPVisionModel`/`SiglipModel`/
//! `SiglipVisionModel` save them. Only the `vision_model.*` tensors are read.
//!
//! Tokens:
//! - CLIP: the hidden states of one encoder layer (default the last, = HF's
//!   `last_hidden_state`), `(b, 1 + n_patches, d)` with the CLS token first; LLaVA's choice
//!   (penultimate layer, patches only) is [`ClipVisionEncoder::with_feature_select`]`(-2, false)`.
//! - SigLIP: the post-layernorm last hidden state `(b, n_patches, d)` (SigLIP has no CLS token;
//!   the attention-pooling head is not used).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use candle_transformers::models::siglip;
use serde::Deserialize;

use super::preprocess::ImagePreprocessConfig;
use super::{file_sha256, ImageEncoder};
use crate::error::{Error, Result};

/// Which vision tower a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionTowerKind {
    Clip,
    Siglip,
}

impl VisionTowerKind {
    /// From `config.json`'s `model_type`; `None` for anything else.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "clip" | "clip_vision_model" => Some(Self::Clip),
            "siglip" | "siglip_vision_model" => Some(Self::Siglip),
            _ => None,
        }
    }
}

/// `CLIPVisionConfig` fields, with Hugging Face's defaults (a nested `vision_config` written by
/// `to_diff_dict` omits the ones left at their default).
#[derive(Debug, Deserialize)]
struct HfClipVisionConfig {
    #[serde(default = "d768")]
    hidden_size: usize,
    #[serde(default = "d3072")]
    intermediate_size: usize,
    #[serde(default = "d12")]
    num_hidden_layers: usize,
    #[serde(default = "d12")]
    num_attention_heads: usize,
    #[serde(default = "d3")]
    num_channels: usize,
    #[serde(default = "d224")]
    image_size: usize,
    #[serde(default = "d32")]
    patch_size: usize,
    #[serde(default = "d512")]
    projection_dim: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps_1e5")]
    layer_norm_eps: f64,
}

fn d3() -> usize {
    3
}
fn d12() -> usize {
    12
}
fn d32() -> usize {
    32
}
fn d224() -> usize {
    224
}
fn d512() -> usize {
    512
}
fn d768() -> usize {
    768
}
fn d3072() -> usize {
    3072
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps_1e5() -> f64 {
    1e-5
}

/// A loaded tower's sizes, as its `config.json` states them (what an exporter writes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisionTowerConfig {
    pub kind: VisionTowerKind,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

enum Tower {
    Clip(ClipVisionTransformer),
    Siglip(siglip::VisionModel),
}

/// A frozen CLIP or SigLIP vision tower; see the module docs.
pub struct ClipVisionEncoder {
    tower: Tower,
    config: VisionTowerConfig,
    /// CLIP only: which layer's hidden states (negative counts from the end, -1 = last).
    feature_layer: isize,
    /// CLIP only: keep the CLS token in front of the patches.
    keep_cls: bool,
    base_id: String,
    id: String,
    preprocess: ImagePreprocessConfig,
}

impl ClipVisionEncoder {
    /// Loads the tower in the Hugging Face folder `dir` onto `device` (weights in f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let model_err = |path: &Path, what: String| Error::Model {
            path: path.to_path_buf(),
            what,
        };
        let model_type = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = VisionTowerKind::from_model_type(model_type).ok_or_else(|| {
            model_err(
                &config_path,
                format!(
                    "model_type {model_type:?} is not a CLIP or SigLIP vision model (expected \
                     clip, clip_vision_model, siglip or siglip_vision_model)"
                ),
            )
        })?;
        // Full models nest the tower's settings; vision-only models keep them at the top.
        let vision = match config.get("vision_config") {
            Some(v) if !model_type.ends_with("_vision_model") => v.clone(),
            _ => config.clone(),
        };

        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            return Err(Error::Io {
                path: weights_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors (sharded checkpoints are not supported)",
                ),
            });
        }
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&weights_path, device)
                .map_err(|e| model_err(&weights_path, format!("cannot read safetensors: {e}")))?
                .into_iter()
                .filter(|(k, _)| k.starts_with("vision_model."))
                .collect();
        let has_class_embedding = tensors.contains_key("vision_model.embeddings.class_embedding");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device).pp("vision_model");
        let wrap = |e: candle_core::Error| model_err(&weights_path, e.to_string());

        let (tower, hidden_size, num_layers, image_size, patch_size, extra) = match kind {
            VisionTowerKind::Clip => {
                let c: HfClipVisionConfig = serde_json::from_value(vision)
                    .map_err(|e| model_err(&config_path, format!("vision config: {e}")))?;
                if c.hidden_act != "quick_gelu" {
                    return Err(model_err(
                        &config_path,
                        format!(
                            "hidden_act {:?}: candle's CLIP tower implements quick_gelu only",
                            c.hidden_act
                        ),
                    ));
                }
                // candle's CLIP layers hard-code eps 1e-5, which every released CLIP uses.
                if (c.layer_norm_eps - 1e-5).abs() > 1e-9 {
                    return Err(model_err(
                        &config_path,
                        format!(
                            "layer_norm_eps {}: only 1e-5 is supported",
                            c.layer_norm_eps
                        ),
                    ));
                }
                check_geometry(
                    &config_path,
                    c.image_size,
                    c.patch_size,
                    c.hidden_size,
                    c.num_attention_heads,
                )?;
                // candle substitutes random numbers for a missing class embedding: refuse.
                if !has_class_embedding {
                    return Err(model_err(
                        &weights_path,
                        "missing tensor vision_model.embeddings.class_embedding".into(),
                    ));
                }
                let cfg = ClipVisionConfig {
                    embed_dim: c.hidden_size,
                    activation: Activation::QuickGelu,
                    intermediate_size: c.intermediate_size,
                    num_hidden_layers: c.num_hidden_layers,
                    num_attention_heads: c.num_attention_heads,
                    projection_dim: c.projection_dim,
                    num_channels: c.num_channels,
                    image_size: c.image_size,
                    patch_size: c.patch_size,
                };
                let t = ClipVisionTransformer::new(vb, &cfg).map_err(wrap)?;
                (
                    Tower::Clip(t),
                    c.hidden_size,
                    c.num_hidden_layers,
                    c.image_size,
                    c.patch_size,
                    (c.intermediate_size, c.num_attention_heads, c.layer_norm_eps),
                )
            }
            VisionTowerKind::Siglip => {
                let c: siglip::VisionConfig = serde_json::from_value(vision)
                    .map_err(|e| model_err(&config_path, format!("vision config: {e}")))?;
                check_geometry(
                    &config_path,
                    c.image_size,
                    c.patch_size,
                    c.hidden_size,
                    c.num_attention_heads,
                )?;
                let t = siglip::VisionModel::new(&c, false, vb).map_err(wrap)?;
                (
                    Tower::Siglip(t),
                    c.hidden_size,
                    c.num_hidden_layers,
                    c.image_size,
                    c.patch_size,
                    (c.intermediate_size, c.num_attention_heads, c.layer_norm_eps),
                )
            }
        };
        if num_layers == 0 {
            return Err(model_err(&config_path, "num_hidden_layers is 0".into()));
        }
        let mut preprocess = match kind {
            VisionTowerKind::Clip => ImagePreprocessConfig::clip(image_size),
            VisionTowerKind::Siglip => ImagePreprocessConfig::siglip(image_size),
        };
        // A processor config that states other statistics wins over the family's defaults.
        let proc_path = dir.join("preprocessor_config.json");
        if proc_path.is_file() {
            let p = read_json(&proc_path)?;
            let triple = |key: &str| -> Result<Option<[f32; 3]>> {
                match p.get(key) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(v) => serde_json::from_value::<[f32; 3]>(v.clone())
                        .map(Some)
                        .map_err(|e| model_err(&proc_path, format!("{key}: {e}"))),
                }
            };
            if let Some(m) = triple("image_mean")? {
                preprocess.mean = m;
            }
            if let Some(s) = triple("image_std")? {
                preprocess.std = s;
            }
            preprocess
                .validate()
                .map_err(|e| model_err(&proc_path, e.to_string()))?;
        }
        let family = match kind {
            VisionTowerKind::Clip => "clip",
            VisionTowerKind::Siglip => "siglip",
        };
        let hash = file_sha256(&weights_path)?;
        let base_id = format!(
            "{family}-vit-{hidden_size}-{num_layers}-p{patch_size}-{image_size}-{}",
            &hash[..16]
        );
        Ok(Self {
            tower,
            config: VisionTowerConfig {
                kind,
                hidden_size,
                intermediate_size: extra.0,
                num_layers,
                num_heads: extra.1,
                image_size,
                patch_size,
                layer_norm_eps: extra.2,
            },
            feature_layer: -1,
            keep_cls: true,
            id: base_id.clone(),
            base_id,
            preprocess,
        })
    }

    /// CLIP only: take the hidden states of `layer` (1-based from the first layer when
    /// positive, from the end when negative: -1 = last, -2 = LLaVA's penultimate), and keep or
    /// drop the CLS token. The id records a non-default choice, since the features differ.
    pub fn with_feature_select(mut self, layer: isize, keep_cls: bool) -> Result<Self> {
        if self.config.kind != VisionTowerKind::Clip && (layer != -1 || !keep_cls) {
            return Err(Error::Unsupported {
                what: "SigLIP exposes only its last layer and has no CLS token".into(),
            });
        }
        self.layer_index(layer)?;
        self.feature_layer = layer;
        self.keep_cls = keep_cls;
        self.id = self.base_id.clone();
        if layer != -1 {
            self.id.push_str(&format!("-l{layer}"));
        }
        if !keep_cls {
            self.id.push_str("-nocls");
        }
        Ok(self)
    }

    /// 0-based index into the per-layer hidden states.
    fn layer_index(&self, layer: isize) -> Result<usize> {
        let n = self.config.num_layers as isize;
        let idx = if layer < 0 { n + layer } else { layer - 1 };
        if layer == 0 || idx < 0 || idx >= n {
            return Err(Error::InvalidArgument(format!(
                "feature layer {layer} of a {n}-layer tower"
            )));
        }
        Ok(idx as usize)
    }

    pub fn kind(&self) -> VisionTowerKind {
        self.config.kind
    }

    pub fn tower_config(&self) -> VisionTowerConfig {
        self.config
    }

    /// Tokens per image: `(image_size / patch_size)^2`, plus one with CLIP's CLS kept.
    pub fn num_tokens(&self) -> usize {
        let n = (self.config.image_size / self.config.patch_size).pow(2);
        n + usize::from(self.config.kind == VisionTowerKind::Clip && self.keep_cls)
    }

    /// `(b, 3, image_size, image_size)` normalized pixels -> `(b, n, d)` tokens, see the module
    /// docs for `n`.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4().map_err(|_| {
            Error::InvalidArgument(format!("pixels {:?}, expected (b, 3, h, w)", pixels.dims()))
        })?;
        if c != 3 || h != self.config.image_size || w != self.config.image_size {
            return Err(Error::InvalidArgument(format!(
                "pixels {:?}, expected (b, 3, {s}, {s})",
                pixels.dims(),
                s = self.config.image_size
            )));
        }
        let pixels = pixels.to_dtype(DType::F32)?;
        match &self.tower {
            Tower::Clip(t) => {
                let mut states = t.output_hidden_states(&pixels)?;
                // The last entry is the pooled output; the layers come before it.
                states.truncate(self.config.num_layers);
                let idx = self.layer_index(self.feature_layer)?;
                let xs = states.swap_remove(idx);
                if self.keep_cls {
                    Ok(xs)
                } else {
                    let n = xs.dim(1)?;
                    Ok(xs.narrow(1, 1, n - 1)?.contiguous()?)
                }
            }
            Tower::Siglip(t) => Ok(t.forward(&pixels)?),
        }
    }
}

impl ImageEncoder for ClipVisionEncoder {
    fn id(&self) -> &str {
        &self.id
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn preprocess_config(&self) -> &ImagePreprocessConfig {
        &self.preprocess
    }
    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        ClipVisionEncoder::encode(self, pixels)
    }
}

/// Sizes candle would otherwise trip over with an opaque shape error (or a panic).
fn check_geometry(
    path: &Path,
    image: usize,
    patch: usize,
    hidden: usize,
    heads: usize,
) -> Result<()> {
    if patch == 0
        || image < patch
        || !image.is_multiple_of(patch)
        || heads == 0
        || !hidden.is_multiple_of(heads)
    {
        return Err(Error::Model {
            path: path.to_path_buf(),
            what: format!(
                "image_size {image} must be a multiple of patch_size {patch}, hidden_size \
                 {hidden} of num_attention_heads {heads}"
            ),
        });
    }
    Ok(())
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Model {
        path: path.to_path_buf(),
        what: format!("not valid JSON: {e}"),
    })
}

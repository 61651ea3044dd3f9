//! The image half of `anymal export --format mmproj`: a CLIP or SigLIP vision tower (a Hugging
//! Face folder) and a trained `mlp2x_gelu` projector as llama.cpp's `mlp` projector type, the
//! one its LLaVA-1.5 models use (`clip.cpp`, `models/llava.cpp`; read, not copied):
//! - metadata: `clip.has_vision_encoder`, `clip.projector_type = "mlp"`, the tower's
//!   `clip.vision.*` sizes, `image_mean` / `image_std`, `clip.use_gelu` (SigLIP's tanh GELU;
//!   without it llama.cpp runs CLIP's quick GELU), and `feature_layer = [blocks]`, so that
//!   every block runs (without it llama.cpp stops one block early, LLaVA's default);
//! - the tower under `v.`: `patch_embd` (f16: llama.cpp's convolution runs in f16 anyway; a
//!   bias for SigLIP), `class_embd` (CLIP), `position_embd`, `pre_ln` (CLIP), per block
//!   `attn_{q,k,v,out}`, `ln1`, `ln2`, `ffn_up` (fc1), `ffn_down` (fc2), and `post_ln`
//!   (SigLIP, whose features are the post-layernorm last hidden state; CLIP's are the last
//!   hidden state without it, as anymal takes them);
//! - the projector as `mm.0` (fc1) and `mm.2` (fc2), with biases. llama.cpp's GELU between
//!   them is the tanh approximation, anymal's the exact one: they differ by at most 5e-4.
//!
//! llama.cpp loads blocks whose feed-forward width equals the model width as if their up and
//! down projections were swapped (a fix for an old converter); such towers are written in that
//! old naming so that the loader swaps them back.
//!
//! Refused with the reason: ImageNet CNNs (no llama.cpp graph), other projector kinds, token
//! pooling (`grid`, or `num_tokens` below the tower's tokens), and an image `size` other than
//! the tower's. Two differences are reported as warnings, not refused:
//! - a CLIP tower: this llama.cpp appends the class token after the patches while placing
//!   positions as if it came first, drops the first patch's output and hands the LLM the class
//!   token last (llama.cpp issue #25814), so a CLIP export does not see what anymal trained on
//!   until llama.cpp fixes that; SigLIP towers (no class token) are unaffected;
//! - images that are not square at the tower's size: llama.cpp resizes the longer side to fit
//!   and pads with gray, which anymal's resize modes do not match exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_adapters::pool::Reduce;
use anymal_adapters::projector::{Projector, ProjectorConfig, ProjectorKind};
use anymal_encoders::image::modality::resolve_image_encoder;
use anymal_encoders::image::{ClipVisionEncoder, ImageEncoder, ImageOptions, VisionTowerKind};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::{check_kind, config_name, MatrixType, MmprojSummary, Tensors};

/// Adds the vision tower and the `mlp2x_gelu` projector in `dir` to `tensors`; returns the
/// vision metadata and the report.
pub(super) fn write(
    dir: &Path,
    cfg: &ProjectorConfig,
    encoder: Option<&Path>,
    ty: MatrixType,
    tensors: &mut Tensors,
) -> Result<(Vec<(&'static str, Value)>, MmprojSummary)> {
    let at = dir.display();
    check_kind(
        cfg,
        dir,
        ProjectorKind::Mlp2xGelu,
        "llama.cpp's `mlp`, LLaVA-1.5's projector, over a CLIP or SigLIP tower",
    )?;
    let folder: PathBuf = match encoder {
        Some(p) => p.to_path_buf(),
        None => resolve_image_encoder(&cfg.encoder, &anymal_util::fs::cache_dir())
            .with_context(|| format!("{at}: encoder '{}'", cfg.encoder))?,
    };
    if !folder.is_dir() {
        bail!(
            "{}: an ImageNet CNN has no llama.cpp graph; `export --format mmproj` writes CLIP and SigLIP towers (a Hugging Face folder)",
            folder.display()
        );
    }
    let tower = ClipVisionEncoder::load(&folder, &Device::Cpu)
        .with_context(|| format!("encoder {}", folder.display()))?;
    let tc = tower.tower_config();
    if tc.hidden_size != cfg.d_enc {
        bail!(
            "{at}: the projector reads {}-wide features, the tower {} gives {}",
            cfg.d_enc,
            folder.display(),
            tc.hidden_size
        );
    }
    let options: ImageOptions = match &cfg.encoder_options {
        serde_json::Value::Null => ImageOptions::default(),
        v => serde_json::from_value(v.clone()).with_context(|| format!("{at}: encoder_options"))?,
    };
    if options.grid.is_some() {
        bail!("{at}: the projector reads grid-pooled tokens (encoder option `grid`); llama.cpp's mlp projector reads every patch");
    }
    let size = tc.image_size;
    if options.size.is_some_and(|s| s != size) {
        bail!(
            "{at}: trained on {}x{0} images; llama.cpp feeds the tower its own {size}x{size}",
            options.size.unwrap_or(size)
        );
    }
    let n_tokens = tower.num_tokens();
    match cfg.reduce {
        Reduce::Pool if cfg.num_tokens >= n_tokens => {}
        _ => bail!(
            "{at}: the projector reduces the tower's {n_tokens} tokens to {} (reduce {:?}); llama.cpp's mlp projector keeps every token (set projector.num_tokens = {n_tokens})",
            cfg.num_tokens,
            cfg.reduce
        ),
    }

    let weights = folder.join("model.safetensors");
    let hf: HashMap<String, Tensor> = candle_core::safetensors::load(&weights, &Device::Cpu)
        .with_context(|| format!("{}: cannot read", weights.display()))?;
    let get = |name: &str| -> Result<&Tensor> {
        hf.get(&format!("vision_model.{name}"))
            .with_context(|| format!("{}: no tensor vision_model.{name}", weights.display()))
    };
    let f32_ = GgmlDType::F32;
    let mat = ty.ggml();
    let siglip = tc.kind == VisionTowerKind::Siglip;
    tensors.put(
        "v.patch_embd.weight",
        get("embeddings.patch_embedding.weight")?,
        GgmlDType::F16,
    )?;
    if siglip {
        tensors.put(
            "v.patch_embd.bias",
            get("embeddings.patch_embedding.bias")?,
            f32_,
        )?;
    } else {
        tensors.put("v.class_embd", get("embeddings.class_embedding")?, f32_)?;
        tensors.put_norm("v.pre_ln", "pre_layrnorm", get)?;
    }
    tensors.put(
        "v.position_embd.weight",
        get("embeddings.position_embedding.weight")?,
        f32_,
    )?;
    // See the module docs: equal widths are written the old way round, which llama.cpp swaps.
    let (fc1_as, fc2_as) = if tc.intermediate_size == tc.hidden_size {
        ("ffn_down", "ffn_up")
    } else {
        ("ffn_up", "ffn_down")
    };
    for l in 0..tc.num_layers {
        let src = format!("encoder.layers.{l}");
        for (from, to) in [
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.out_proj", "attn_out"),
            ("mlp.fc1", fc1_as),
            ("mlp.fc2", fc2_as),
        ] {
            tensors.put_linear(
                &format!("v.blk.{l}.{to}"),
                &format!("{src}.{from}"),
                get,
                mat,
                true,
            )?;
        }
        for (from, to) in [("layer_norm1", "ln1"), ("layer_norm2", "ln2")] {
            tensors.put_norm(&format!("v.blk.{l}.{to}"), &format!("{src}.{from}"), get)?;
        }
    }
    if siglip {
        tensors.put_norm("v.post_ln", "post_layernorm", get)?;
    }
    let (_, store) = Projector::load(dir, &Device::Cpu)?;
    let proj: HashMap<String, Tensor> = store.tensors().into_iter().collect();
    let pget = |name: &str| -> Result<&Tensor> {
        proj.get(name)
            .with_context(|| format!("{at}: no projector parameter {name}"))
    };
    for (from, to) in [("fc1", "mm.0"), ("fc2", "mm.2")] {
        tensors.put_linear(to, from, pget, mat, true)?;
    }

    let pre = tower.preprocess_config();
    let u32v = |v: usize| Value::U32(v as u32);
    let triple = |v: [f32; 3]| Value::Array(v.iter().map(|&x| Value::F32(x)).collect());
    let md = vec![
        ("clip.vision.image_size", u32v(size)),
        ("clip.vision.patch_size", u32v(tc.patch_size)),
        ("clip.vision.embedding_length", u32v(tc.hidden_size)),
        (
            "clip.vision.feed_forward_length",
            u32v(tc.intermediate_size),
        ),
        ("clip.vision.block_count", u32v(tc.num_layers)),
        ("clip.vision.attention.head_count", u32v(tc.num_heads)),
        (
            "clip.vision.attention.layer_norm_epsilon",
            Value::F32(tc.layer_norm_eps as f32),
        ),
        ("clip.vision.projection_dim", u32v(cfg.d_llm)),
        ("clip.vision.image_mean", triple(pre.mean)),
        ("clip.vision.image_std", triple(pre.std)),
        (
            "clip.vision.feature_layer",
            Value::Array(vec![Value::I32(tc.num_layers as i32)]),
        ),
        ("clip.use_gelu", Value::Bool(siglip)),
    ];
    let mut warnings = vec![format!(
        "llama.cpp fits an image that is not {size}x{size} by resizing its longer side to {size} and padding with gray; anymal's '{}' resize differs, so only {size}x{size} images see exactly the pixels anymal trained on",
        config_name(options.resize.unwrap_or(pre.resize))
    )];
    let p = (size / tc.patch_size).pow(2);
    if !siglip {
        warnings.push(format!(
            "a CLIP tower: this llama.cpp places the class token after the patches with positions as if it came first, drops the first patch and hands the LLM {p} tokens with the class token last (llama.cpp issue #25814), where anymal trained on {n_tokens} with the class token first: its answers will differ until llama.cpp fixes that (SigLIP towers are unaffected)"
        ));
    }
    Ok((
        md,
        MmprojSummary {
            tensors: 0,
            bytes: 0,
            projector_type: "mlp",
            tokens: format!("{p} tokens per image"),
            warnings,
            media_flag: "--image IMAGE.png",
            config: cfg.clone(),
        },
    ))
}

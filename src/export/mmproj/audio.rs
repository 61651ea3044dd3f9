//! The audio half of `anymal export --format mmproj`: a Whisper encoder and a trained
//! `ultravox` projector in the layout llama.cpp's Whisper-encoder projector types read
//! (`clip.cpp`, `models/whisper-enc.cpp`; read, not copied):
//! - metadata: `clip.has_audio_encoder`, `clip.projector_type`, and the encoder's
//!   `clip.audio.*` sizes (embedding length, feed-forward length, blocks, heads, layer-norm
//!   epsilon, mel bins, stack factor), typed as the loader asserts them (u32, f32, bool);
//! - the encoder under `a.`: `a.conv1d.{1,2}.{weight,bias}` (the biases as `(d, 1)`),
//!   `a.position_embd.weight`, per block `a.blk.N.{attn_q,attn_k,attn_v,attn_out,ln1,ln2,
//!   ffn_up,ffn_down}` (no key bias: the graph asserts there is none), `a.post_ln`;
//! - Ultravox's projector under `mm.a.`: `norm_pre`, `mlp.1`, `norm_mid`, `mlp.2`. llama.cpp
//!   runs it as anymal's `ultravox` kind does: the encoder's output (after its final layer
//!   norm), `k` frames stacked frame-major, RMSNorm (eps 1e-6), Linear, SwiGLU with the SiLU
//!   on the second half, RMSNorm, Linear, no biases.
//!
//! What llama.cpp cannot run is refused with the reason: other encoders, other projector kinds
//! (its `qwen2a` pools *before* the encoder's final norm, anymal's `qwen2_audio` after it),
//! front stages, CTC compression, and stack factors that do not divide a window's 1500 frames
//! (its frame stacker pads with a power-of-two mask and then aborts on the extra row).
//! llama.cpp feeds the projector every frame of each 30 s window; a projector trained in the
//! `clip` or `window` context (the clip's own frames) is exported with a warning, since
//! llama.cpp shows it the silence after the clip too (`context = "full_window"` trains on
//! exactly what llama.cpp feeds).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_adapters::pool::Reduce;
use anymal_adapters::projector::{Projector, ProjectorConfig, ProjectorKind};
use anymal_encoders::audio::resolve_encoder_ref;
use anymal_encoders::audio::whisper::{Context as WhisperContext, WhisperWeights};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::{check_kind, config_name, MatrixType, MmprojSummary, Tensors};

/// Frames of one 30 s window at the encoder's output, all of which llama.cpp feeds the projector.
const WINDOW_FRAMES: usize = 1500;

/// Whisper's layer-norm epsilon (PyTorch's default, which Whisper uses).
const WHISPER_LN_EPS: f32 = 1e-5;

/// Checks that llama.cpp can run `cfg` and returns its stack factor.
pub fn check_exportable(cfg: &ProjectorConfig, dir: &Path) -> Result<usize> {
    let at = dir.display();
    check_kind(
        cfg,
        dir,
        ProjectorKind::Ultravox,
        "llama.cpp's projector type `ultravox`; train with projector.kind = \"ultravox\" and a stack factor dividing 1500",
    )?;
    let k = match cfg.reduce {
        Reduce::Stack { n } => n,
        other => bail!(
            "{at}: reduce {other:?}; llama.cpp's ultravox projector stacks frames (reduce = stack)"
        ),
    };
    if k == 0 || !WINDOW_FRAMES.is_multiple_of(k) {
        bail!(
            "{at}: stack factor {k} does not divide a window's {WINDOW_FRAMES} frames; llama.cpp's frame stacker then produces one row more than it expects and aborts (use 2, 3, 4, 5, 6, 10, 12 or 15)"
        );
    }
    Ok(k)
}

/// The warning for a projector trained on other frames than llama.cpp feeds it, if any.
fn context_warning(cfg: &ProjectorConfig) -> Option<String> {
    let context: WhisperContext = cfg
        .encoder_options
        .get("context")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    (context != WhisperContext::FullWindow).then(|| {
        format!(
            "the projector trained on the clip's own frames (encoder context '{}'); llama.cpp feeds it all {WINDOW_FRAMES} frames of each 30 s window, the silence after the clip included, so its answers will differ from anymal's (train with [encoder.options] context = \"full_window\" to match)",
            config_name(context)
        )
    })
}

/// Adds the Whisper encoder and the `ultravox` projector in `dir` to `tensors`; returns the
/// audio metadata and the report.
pub(super) fn write(
    dir: &Path,
    cfg: &ProjectorConfig,
    encoder: Option<&Path>,
    ty: MatrixType,
    tensors: &mut Tensors,
) -> Result<(Vec<(&'static str, Value)>, MmprojSummary)> {
    let k = check_exportable(cfg, dir)?;
    let (_, store) = Projector::load(dir, &Device::Cpu)?;
    let encoder_path: PathBuf = match encoder {
        Some(p) => p.to_path_buf(),
        None => resolve_encoder_ref(&cfg.encoder)
            .with_context(|| format!("{}: encoder '{}'", dir.display(), cfg.encoder))?,
    };
    let whisper = WhisperWeights::load(&encoder_path, &Device::Cpu)
        .with_context(|| format!("encoder {}", encoder_path.display()))?;
    let dims = whisper.dims;
    if dims.d_model != cfg.d_enc {
        bail!(
            "{}: the projector reads {}-wide features, the encoder {} gives {}",
            dir.display(),
            cfg.d_enc,
            encoder_path.display(),
            dims.d_model
        );
    }
    if dims.n_ctx < WINDOW_FRAMES {
        bail!(
            "{}: {} encoder positions; llama.cpp encodes 30 s windows of {WINDOW_FRAMES}",
            encoder_path.display(),
            dims.n_ctx
        );
    }

    let hf = &whisper.tensors;
    let get = |name: &str| -> Result<&Tensor> {
        hf.get(name)
            .with_context(|| format!("{}: no tensor {name}", whisper.file.display()))
    };
    let f32_ = GgmlDType::F32;
    let mat = ty.ggml();
    for (i, c) in ["conv1", "conv2"].iter().enumerate() {
        let w = get(&format!("model.encoder.{c}.weight"))?;
        tensors.put(format!("a.conv1d.{}.weight", i + 1), w, GgmlDType::F16)?;
        // The graph adds the bias to a (frames, d) result by broadcasting a (d, 1) tensor.
        let b = get(&format!("model.encoder.{c}.bias"))?.unsqueeze(1)?;
        tensors.put(format!("a.conv1d.{}.bias", i + 1), &b, f32_)?;
    }
    tensors.put(
        "a.position_embd.weight",
        &dims.positions()?.narrow(0, 0, dims.n_ctx)?,
        f32_,
    )?;
    let per_block = [
        ("self_attn.q_proj", "attn_q", true),
        ("self_attn.k_proj", "attn_k", false),
        ("self_attn.v_proj", "attn_v", true),
        ("self_attn.out_proj", "attn_out", true),
        ("fc1", "ffn_up", true),
        ("fc2", "ffn_down", true),
    ];
    for l in 0..dims.n_layers {
        let src = format!("model.encoder.layers.{l}");
        for (from, to, bias) in per_block {
            tensors.put_linear(
                &format!("a.blk.{l}.{to}"),
                &format!("{src}.{from}"),
                get,
                mat,
                bias,
            )?;
        }
        for (from, to) in [("self_attn_layer_norm", "ln1"), ("final_layer_norm", "ln2")] {
            tensors.put_norm(&format!("a.blk.{l}.{to}"), &format!("{src}.{from}"), get)?;
        }
    }
    tensors.put_norm("a.post_ln", "model.encoder.layer_norm", get)?;
    let proj: HashMap<String, Tensor> = store.tensors().into_iter().collect();
    let pget = |name: &str| -> Result<&Tensor> {
        proj.get(name)
            .with_context(|| format!("{}: no projector parameter {name}", dir.display()))
    };
    tensors.put("mm.a.norm_pre.weight", pget("ln_pre.weight")?, f32_)?;
    tensors.put("mm.a.mlp.1.weight", pget("linear_1.weight")?, mat)?;
    tensors.put("mm.a.norm_mid.weight", pget("ln_mid.weight")?, f32_)?;
    tensors.put("mm.a.mlp.2.weight", pget("linear_2.weight")?, mat)?;
    let ff = get("model.encoder.layers.0.fc1.weight")?.dim(0)?;

    let u32v = |v: usize| Value::U32(v as u32);
    let md = vec![
        ("clip.audio.embedding_length", u32v(dims.d_model)),
        ("clip.audio.feed_forward_length", u32v(ff)),
        ("clip.audio.block_count", u32v(dims.n_layers)),
        ("clip.audio.attention.head_count", u32v(dims.n_heads)),
        (
            "clip.audio.attention.layer_norm_epsilon",
            Value::F32(WHISPER_LN_EPS),
        ),
        ("clip.audio.num_mel_bins", u32v(dims.n_mels)),
        ("clip.audio.projection_dim", u32v(cfg.d_llm)),
        ("clip.audio.projector.stack_factor", u32v(k)),
    ];
    Ok((
        md,
        MmprojSummary {
            tensors: 0,
            bytes: 0,
            projector_type: "ultravox",
            tokens: format!("stack {k}, {} tokens per 30 s window", WINDOW_FRAMES / k),
            warnings: context_warning(cfg).into_iter().collect(),
            media_flag: "--audio CLIP.wav",
            config: cfg.clone(),
        },
    ))
}

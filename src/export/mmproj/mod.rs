//! `anymal export --format mmproj`: a trained projector and its frozen encoder as one llama.cpp
//! "mmproj" GGUF, the second file `llama-mtmd-cli`, `llama-server` and the tools built on
//! llama.cpp load beside the LLM's GGUF (`--mmproj`).
//!
//! One file per modality writes the layout llama.cpp's `tools/mtmd` loader reads for it
//! (`clip.cpp`, `models/*.cpp`; read, not copied): [`audio`] (Whisper + Ultravox) and
//! [`image`] (CLIP or SigLIP + LLaVA's two-layer MLP). This file holds what they share: the
//! tensor list, the common metadata, the atomic write and the report.

pub mod audio;
pub mod image;

use std::path::Path;

use anyhow::{bail, Context, Result};
use anymal_adapters::projector::{ProjectorConfig, ProjectorKind};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The type of the 2-D weight matrices in the file (the norms, biases and positions are always
/// f32; the convolutions f16, as llama.cpp's converter writes them and its im2col reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatrixType {
    F16,
    F32,
}

impl MatrixType {
    fn ggml(self) -> GgmlDType {
        match self {
            MatrixType::F16 => GgmlDType::F16,
            MatrixType::F32 => GgmlDType::F32,
        }
    }
}

/// What an export wrote, for the report.
#[derive(Debug)]
pub struct MmprojSummary {
    pub tensors: usize,
    pub bytes: u64,
    pub projector_type: &'static str,
    /// How many tokens llama.cpp hands the LLM (`150 per 30 s window`, `16 per image`).
    pub tokens: String,
    /// Where llama.cpp will not see what anymal trained on.
    pub warnings: Vec<String>,
    /// `llama-mtmd-cli`'s flag for a media file of the modality (`--audio CLIP.wav`).
    pub media_flag: &'static str,
    /// The exported projector's config (its LLM, prompt and chat-template setting).
    pub config: ProjectorConfig,
}

/// The tensors of the file being built, in order.
#[derive(Default)]
struct Tensors(Vec<(String, QTensor)>);

impl Tensors {
    /// Adds `t` as `name` stored as `dtype`.
    fn put(&mut self, name: impl Into<String>, t: &Tensor, dtype: GgmlDType) -> Result<()> {
        let name = name.into();
        // A fresh buffer: `QTensor::quantize` reads the whole storage, ignoring a view's
        // offset (Whisper's q, k and v are views into CTranslate2's fused projection).
        let t = t.to_dtype(candle_core::DType::F32)?;
        let owned = Tensor::from_vec(t.flatten_all()?.to_vec1::<f32>()?, t.shape(), &Device::Cpu)?;
        let q = QTensor::quantize(&owned, dtype).with_context(|| format!("writing {name}"))?;
        self.0.push((name, q));
        Ok(())
    }

    /// A linear layer: `{to}.weight` as `mat` and, with `bias`, `{to}.bias` in f32, from the
    /// source tensors `get` finds as `{from}.weight` and `{from}.bias`.
    fn put_linear<'a>(
        &mut self,
        to: &str,
        from: &str,
        get: impl Fn(&str) -> Result<&'a Tensor>,
        mat: GgmlDType,
        bias: bool,
    ) -> Result<()> {
        self.put(format!("{to}.weight"), get(&format!("{from}.weight"))?, mat)?;
        if bias {
            self.put(
                format!("{to}.bias"),
                get(&format!("{from}.bias"))?,
                GgmlDType::F32,
            )?;
        }
        Ok(())
    }

    /// `{to}.weight` and `{to}.bias` (a layer norm's) in f32, from the source tensors `get`
    /// finds as `{from}.weight` and `{from}.bias`.
    fn put_norm<'a>(
        &mut self,
        to: &str,
        from: &str,
        get: impl Fn(&str) -> Result<&'a Tensor>,
    ) -> Result<()> {
        for p in ["weight", "bias"] {
            self.put(
                format!("{to}.{p}"),
                get(&format!("{from}.{p}"))?,
                GgmlDType::F32,
            )?;
        }
        Ok(())
    }
}

/// Writes the projector folder `dir` and the encoder it was trained with as an mmproj GGUF at
/// `out` (written atomically). `encoder` overrides the folder's encoder reference.
pub fn export_mmproj(
    dir: &Path,
    encoder: Option<&Path>,
    ty: MatrixType,
    out: &Path,
) -> Result<MmprojSummary> {
    let cfg = anymal_adapters::projector::load_config(dir)?;
    let mut tensors = Tensors::default();
    let (metadata, mut summary) = match cfg.modality.as_str() {
        "audio" => audio::write(dir, &cfg, encoder, ty, &mut tensors)?,
        "image" => image::write(dir, &cfg, encoder, ty, &mut tensors)?,
        other => bail!(
            "{}: a projector for '{other}'; llama.cpp runs audio (Whisper + ultravox) and image (CLIP or SigLIP + mlp2x_gelu) projectors only",
            dir.display()
        ),
    };
    use gguf_file::Value;
    let mut md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("clip".into())),
        ("general.type", Value::String("mmproj".into())),
        (
            "general.name",
            Value::String(format!(
                "anymal {} + {} projector",
                cfg.encoder, summary.projector_type
            )),
        ),
        (
            "general.file_type",
            Value::U32(match ty {
                MatrixType::F32 => 0,
                MatrixType::F16 => 1,
            }),
        ),
        (
            "clip.has_audio_encoder",
            Value::Bool(cfg.modality == "audio"),
        ),
        (
            "clip.has_vision_encoder",
            Value::Bool(cfg.modality == "image"),
        ),
        (
            "clip.projector_type",
            Value::String(summary.projector_type.into()),
        ),
    ];
    md.extend(metadata);
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.0.iter().map(|(n, t)| (n.as_str(), t)).collect();
    anymal_llm::loader::write_gguf(out, &md_refs, &refs)
        .with_context(|| format!("{}: cannot write", out.display()))?;
    summary.tensors = tensors.0.len();
    summary.bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(summary)
}

/// How configs spell a setting (`ultravox`, `full_window`): its serde name.
fn config_name(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Refuses a projector of another kind than `kind`, the one the modality exports (`what`
/// says how llama.cpp calls it and how to train it), and what no llama.cpp projector does:
/// front stages and CTC compression.
fn check_kind(cfg: &ProjectorConfig, dir: &Path, kind: ProjectorKind, what: &str) -> Result<()> {
    let at = dir.display();
    if cfg.kind != kind {
        bail!(
            "{at}: projector kind '{}' has no llama.cpp equivalent; the {} kind that exports is `{}` ({what})",
            config_name(cfg.kind),
            cfg.modality,
            config_name(kind)
        );
    }
    if cfg.front.is_some() {
        bail!("{at}: a projector with a front stage has no llama.cpp equivalent");
    }
    if cfg.ctc_compress.is_some() {
        bail!(
            "{at}: a CTC-compressed projector drops tokens at run time, which llama.cpp cannot do"
        );
    }
    Ok(())
}

/// The prompt a llama.cpp user passes for the projector's training prompt: the placeholder
/// `<modality>` becomes mtmd's default media marker.
pub fn llama_cpp_prompt(cfg: &ProjectorConfig) -> String {
    cfg.prompt
        .replace(&format!("<{}>", cfg.modality), "<__media__>")
}

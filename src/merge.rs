//! `anymal merge`: fold a LoRA into the frozen weights, `W' = dequant(W) + scale * B A`, and
//! write the result as a GGUF (every adapted layer re-quantized to a chosen type, every other
//! tensor and all metadata copied unchanged, so llama.cpp and anymal load it like the original)
//! or as f16 safetensors with HF names (q/k rows back in HF order, Gemma's norms back to `w`).
//!
//! Merging into 4-bit weights is lossy: the merged weight is re-quantized, so the merged model
//! is not exactly the base with its adapter. [`logit_drift`] measures by how much.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use anymal_llm::config::Arch;
use anymal_llm::weights::{gguf_to_hf_module, hf_to_gguf_name};
use anymal_llm::{LoadedModel, LoraSet};
use anymal_quant::{QLinear, QuantType};
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

/// The linear layer of the model that a GGUF weight name belongs to, if it has an adapter.
fn adapted<'a>(model: &'a LoadedModel, gguf_name: &str) -> Option<&'a QLinear> {
    let path = gguf_to_hf_module(gguf_name.strip_suffix(".weight")?)?;
    model.llm.linear(&path).filter(|l| l.lora().is_some())
}

/// `merged weight` as a GGUF tensor of `ty` (a smaller block of the same family where `ty`'s
/// block does not tile the row).
fn merged_qtensor(lin: &QLinear, ty: QuantType) -> Result<QTensor> {
    let w = merged_dense(lin)?;
    match ty.fallback_for_row(lin.shape().1) {
        QuantType::Ggml(t) => Ok(QTensor::quantize(&w.contiguous()?, t)?),
        QuantType::Nf4 { .. } => bail!("NF4 is not a GGUF type; choose a GGUF --type"),
    }
}

/// Write `model` (whose LoRA is attached and which was loaded from a GGUF) as a GGUF: adapted
/// weights merged and quantized to `ty` (None: each layer's own type), the rest copied from
/// the source file.
pub fn write_merged_gguf(model: &LoadedModel, ty: Option<QuantType>, out: &Path) -> Result<usize> {
    let src = model.path.as_path();
    let (content, mut file) = anymal_llm::loader::read_gguf(src)?;
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(content.tensor_infos.len());
    let mut merged = 0;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    for name in names {
        let t = match adapted(model, name) {
            Some(lin) => {
                merged += 1;
                merged_qtensor(lin, ty.unwrap_or(lin.quant_type()))
                    .with_context(|| format!("merging {name}"))?
            }
            None => content
                .tensor(&mut file, name, &Device::Cpu)
                .with_context(|| format!("{}: reading {name}", src.display()))?,
        };
        tensors.push((name.clone(), t));
    }
    let mut md: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    md.sort_by_key(|(k, _)| *k);
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    anymal_llm::loader::write_gguf(out, &md, &refs)
        .with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(merged)
}

/// Write every weight of `model` (adapters merged) as f16 safetensors with HF names.
pub fn write_merged_safetensors(model: &LoadedModel, out: &Path) -> Result<usize> {
    let llm = &model.llm;
    let arch = llm.cfg.arch;
    let gemma = arch == Arch::Gemma3;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let f16 = |x: &Tensor| -> Result<Tensor> { Ok(x.to_dtype(DType::F16)?.contiguous()?) };
    // Gemma's GGUF norms are stored as 1 + w (HF stores w).
    let norm = |w: &Tensor| -> Result<Tensor> {
        let w = w.to_dtype(DType::F32)?;
        f16(&if gemma { (w - 1.0)? } else { w })
    };
    t.insert(
        "model.embed_tokens.weight".into(),
        f16(&llm.embed_tokens.dequantize(&Device::Cpu)?)?,
    );
    t.insert("model.norm.weight".into(), norm(llm.norm.weight())?);
    if !llm.head_is_tied() {
        t.insert("lm_head.weight".into(), f16(&merged_dense(&llm.lm_head)?)?);
    }
    let mut merged = 0;
    for (i, b) in llm.layers.iter().enumerate() {
        for (name, lin) in b.linears() {
            merged += lin.lora().is_some() as usize;
            let mut w = merged_dense(lin)?;
            if llm.cfg.rope_interleaved {
                if name == "self_attn.q_proj" {
                    w = anymal_llm::lora::interleaved_to_hf_rows(&w, llm.cfg.num_heads)?;
                } else if name == "self_attn.k_proj" {
                    w = anymal_llm::lora::interleaved_to_hf_rows(&w, llm.cfg.num_kv_heads)?;
                }
            }
            t.insert(format!("model.layers.{i}.{name}.weight"), f16(&w)?);
            if let Some(bias) = lin.bias() {
                t.insert(format!("model.layers.{i}.{name}.bias"), f16(bias)?);
            }
        }
        let mut norms = vec![("input_layernorm", Some(&b.attn_norm))];
        if gemma {
            norms.push(("post_attention_layernorm", b.post_attn_norm.as_ref()));
            norms.push(("pre_feedforward_layernorm", Some(&b.ffn_norm)));
            norms.push(("post_feedforward_layernorm", b.post_ffn_norm.as_ref()));
        } else {
            norms.push(("post_attention_layernorm", Some(&b.ffn_norm)));
        }
        norms.push(("self_attn.q_norm", b.attn.q_norm.as_ref()));
        norms.push(("self_attn.k_norm", b.attn.k_norm.as_ref()));
        for (n, w) in norms {
            if let Some(w) = w {
                t.insert(format!("model.layers.{i}.{n}.weight"), norm(w.weight())?);
            }
        }
    }
    // Every name must be one the loader maps back (the file round-trips through anymal).
    for k in t.keys() {
        if hf_to_gguf_name(k, arch).is_none() {
            bail!("internal: '{k}' has no GGUF counterpart");
        }
    }
    anymal_util::fs::write_atomic_with(out, |tmp| {
        candle_core::safetensors::save(&t, tmp).map_err(anyhow::Error::from)
    })
    .with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(merged)
}

fn merged_dense(lin: &QLinear) -> Result<Tensor> {
    Ok(match lin.lora() {
        Some(l) => (lin.dequantize()? + l.delta_weight()?)?,
        None => lin.dequantize()?,
    })
}

/// How far the merged model's next-token logits are from the base model with its adapter.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub prompt: String,
    /// max |merged - adapter| over the vocabulary at the last position.
    pub max_abs: f64,
    /// Its mean.
    pub mean_abs: f64,
    /// Whether both pick the same next token.
    pub same_top1: bool,
}

/// Logits at the last position of each prompt, for the adapter model and the merged one.
pub fn logit_drift(
    adapter: &LoadedModel,
    merged: &LoadedModel,
    prompts: &[&str],
) -> Result<Vec<Drift>> {
    let last_logits = |m: &LoadedModel, p: &str| -> Result<Tensor> {
        let ids = m.tokenizer.encode(p, true, false)?;
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let h = m
            .llm
            .forward_embeds(&m.llm.embed_tokens(&ids)?, 0, None, None)?;
        let t = h.dim(1)?;
        Ok(m.llm.logits(&h.narrow(1, t - 1, 1)?)?.flatten_all()?)
    };
    prompts
        .iter()
        .map(|p| {
            let a = last_logits(adapter, p)?;
            let b = last_logits(merged, p)?;
            let d = (&a - &b)?.abs()?;
            Ok(Drift {
                prompt: p.to_string(),
                max_abs: d.max(0)?.to_scalar::<f32>()? as f64,
                mean_abs: d.mean_all()?.to_scalar::<f32>()? as f64,
                same_top1: a.argmax(0)?.to_scalar::<u32>()? == b.argmax(0)?.to_scalar::<u32>()?,
            })
        })
        .collect()
}

/// Refuse `out` when writing it would replace one of the merge's own inputs: a file that
/// `inputs` names, or a file in a folder it names (an HF model folder, the LoRA folder).
/// Paths are compared with links and `..` resolved; `out` need not exist yet, so its folder is
/// resolved and its name joined to it. The error names `out` and the input, by its flag.
pub fn refuse_writing_over_inputs(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let Some(target) = resolved_output(out) else {
        return Ok(());
    };
    for (flag, input) in inputs {
        // A model or LoRA folder's files sit at its top (HF and PEFT folders are flat).
        let files: Vec<std::path::PathBuf> = if input.is_dir() {
            std::fs::read_dir(input)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![input.to_path_buf()]
        };
        for f in files {
            if std::fs::canonicalize(&f).is_ok_and(|c| c == target) {
                let what = if f == *input {
                    String::new()
                } else {
                    format!(" (in {})", input.display())
                };
                bail!(
                    "--out {}: is {flag}'s own file {}{what}; merging would overwrite its input, write to another file",
                    out.display(),
                    f.display()
                );
            }
        }
    }
    Ok(())
}

/// The file `out` names with links resolved: the file itself where it exists, else its
/// (existing) folder resolved plus its name; None when its folder does not exist either, so
/// it cannot be anything's input.
fn resolved_output(out: &Path) -> Option<std::path::PathBuf> {
    if let Ok(c) = std::fs::canonicalize(out) {
        return Some(c);
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(out.file_name()?))
}

/// Where the merged file goes and in which form, from `--out`'s extension.
pub fn output_kind(out: &Path) -> Result<&'static str> {
    match out.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Ok("gguf"),
        Some("safetensors") => Ok("safetensors"),
        _ => bail!(
            "--out {}: name a .gguf or a .safetensors file",
            out.display()
        ),
    }
}

/// The adapter set's summary line.
pub fn describe(set: &LoraSet) -> String {
    format!(
        "LoRA r={} alpha={}{} on {} layers",
        set.spec.cfg.r,
        set.spec.cfg.alpha,
        if set.spec.cfg.use_rslora {
            " (rsLoRA)"
        } else {
            ""
        },
        set.modules.len()
    )
}

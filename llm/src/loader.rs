//! Finding and loading a model: a GGUF file, an HF folder, an HF hub id in the local HF cache,
//! or a short name of a model the project fetches (`smollm2`, `gemma3`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anymal_quant::{Compute, QuantType};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};

use crate::chat::ChatTemplate;
use crate::config::{Arch, LlmConfig};
use crate::decoder::Llm;
use crate::tokenizer::Tokenizer;
use crate::weights::{hf_to_gguf_name, RawWeight, WeightStore};
use crate::{Error, Result};

/// Models `scripts/fetch-assets.sh` puts in the cache, by short name.
pub const KNOWN_MODELS: &[(&str, &str, &str)] = &[
    (
        "smollm2",
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2",
    ),
    ("gemma3", "models/gemma-3-270m-q4_k_m.gguf", "gemma3"),
];

/// The project's cache folder (`$ANYMAL_CACHE`, else `~/.cache/anymal`), where fetched
/// models are looked for. Re-exported from anymal-util, which every crate shares.
pub use anymal_util::fs::cache_dir;

/// Path of a fetched model by short name; the error says how to fetch it.
pub fn known_model_path(name: &str) -> Result<PathBuf> {
    let (_, rel, asset) = KNOWN_MODELS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
        })?;
    let p = cache_dir().join(rel);
    if !p.exists() {
        return Err(Error::not_found(
            &p,
            format!("not found: fetch it with `scripts/fetch-assets.sh {asset}`"),
        ));
    }
    Ok(p)
}

/// Resolves a model reference to a local file or folder.
pub fn resolve_model_ref(reference: &str) -> Result<PathBuf> {
    let p = PathBuf::from(reference);
    if p.exists() {
        return Ok(p);
    }
    if KNOWN_MODELS.iter().any(|(n, _, _)| *n == reference) {
        return known_model_path(reference);
    }
    if let Some((org, name)) = reference.split_once('/') {
        if !org.is_empty() && !name.is_empty() && !name.contains('/') && !reference.starts_with('.')
        {
            // `models/x.gguf` is as likely a path with a typo as a hub id: say both.
            return resolve_hf_cache(org, name).map_err(|e| {
                Error::not_found(&p, format!("no such file or folder, and as a hub id: {e}"))
            });
        }
    }
    Err(Error::not_found(
        &p,
        "no such file or folder (and not a known model name or org/name hub id)",
    ))
}

/// `$HF_HUB_CACHE` or `$HF_HOME/hub` (default `~/.cache/huggingface/hub`).
fn hf_hub_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let h = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            h.join(".cache").join("huggingface")
        });
    home.join("hub")
}

/// The snapshot folder of `org/name` in the local HF cache: `refs/main`'s revision, else the
/// only (or newest) snapshot.
fn resolve_hf_cache(org: &str, name: &str) -> Result<PathBuf> {
    let repo = hf_hub_dir().join(format!("models--{org}--{name}"));
    let snaps = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let p = snaps.join(rev.trim());
        if p.is_dir() {
            return Ok(p);
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(&snaps)
        .map_err(|_| {
            Error::not_found(
                &repo,
                format!("'{org}/{name}' is not in the local HF cache (no hub is contacted)"),
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    entries
        .last()
        .map(|e| e.path())
        .ok_or_else(|| Error::not_found(&snaps, "no snapshot in the HF cache"))
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// GGUF: re-quantize every quantized linear to this type. HF: quantize dense weights to it
    /// (None: Q4K).
    pub quant: Option<QuantType>,
    pub device: Device,
    pub dtype: DType,
    /// The arithmetic of the linear layers' products over many rows (prompts, training
    /// batches): exact f32 by default, or int8 (`anymal_quant::Compute`).
    pub compute: Compute,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            quant: None,
            device: Device::Cpu,
            dtype: DType::F32,
            compute: Compute::default(),
        }
    }
}

impl LoadOptions {
    /// The defaults with the linear layers re-quantized to `requant` (a type name such as
    /// `q4k` or `f32`, as the `--requant` flag and recipes' `llm.requant` give it; None or empty
    /// keeps the file's types).
    pub fn requantized(requant: Option<&str>) -> Result<Self> {
        let quant = requant
            .filter(|r| !r.is_empty())
            .map(QuantType::parse)
            .transpose()?;
        Ok(Self {
            quant,
            ..Default::default()
        })
    }
}

/// A model ready to run: the decoder, its tokenizer, its chat template when it has one.
pub struct LoadedModel {
    pub llm: Llm,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub path: PathBuf,
    /// Extra ids that end a turn (`<end_of_turn>`, `<|eot_id|>`, `<|im_end|>`).
    pub stop_ids: Vec<u32>,
}

impl LoadedModel {
    /// EOS plus end-of-turn tokens.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut v = self.stop_ids.clone();
        if let Some(e) = self.tokenizer.eos_id {
            v.push(e);
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Loads a model by reference (see [`resolve_model_ref`]).
pub fn load_model(reference: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let path = resolve_model_ref(reference)?;
    if path.is_dir() {
        if path.join("config.json").exists() {
            return load_hf_dir(&path, opts);
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| Error::io(&path, "read", e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => load_gguf(one, opts),
            [] => Err(Error::not_found(
                &path,
                "folder has neither config.json nor a .gguf file",
            )),
            _ => Err(Error::format(
                &path,
                "folder has several .gguf files: name one",
            )),
        };
    }
    load_gguf(&path, opts)
}

/// Reads a GGUF file's header and metadata, with errors that name the file.
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, std::fs::File)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(Error::format(path, "not a GGUF file (bad magic)"));
    }
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| Error::io(path, "read", e))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| Error::format(path, format!("corrupt GGUF: {e}")))?;
    // The header of a cut-off download reads fine; its tensors would fail only when loaded
    // (and `inspect` would describe the file as whole).
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, "read", e))?
        .len();
    let end = content
        .tensor_infos
        .values()
        .map(|t| {
            let dt = t.ggml_dtype;
            let bytes = (t.shape.elem_count() / dt.block_size()) as u64 * dt.type_size() as u64;
            content.tensor_data_offset + t.offset + bytes
        })
        .max()
        .unwrap_or(0);
    if end > len {
        return Err(Error::format(
            path,
            format!(
                "truncated: its tensors end at byte {end} but the file has {len} (an interrupted download?)"
            ),
        ));
    }
    Ok((content, file))
}

/// Writes a GGUF file atomically (a sibling temporary file renamed into place, removed on
/// failure): `metadata` in the given order, then `tensors`.
pub fn write_gguf(
    path: &Path,
    metadata: &[(&str, &gguf_file::Value)],
    tensors: &[(&str, &candle_core::quantized::QTensor)],
) -> Result<()> {
    anymal_util::fs::write_atomic_with(path, |tmp| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        gguf_file::write(&mut w, metadata, tensors).map_err(std::io::Error::other)?;
        std::io::Write::flush(&mut w)
    })
    .map_err(|e| Error::io(path, "write", e))
}

pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let (content, mut file) = read_gguf(path)?;
    let md = &content.metadata;
    let cfg = LlmConfig::from_gguf(path, md)?;
    let tokenizer = Tokenizer::from_gguf(path, md)?;
    let store = WeightStore::from_gguf(path, &content, &mut file, opts.quant, &opts.device)?;
    let mut llm = store.build_llm(cfg, 0.0)?;
    llm.dtype = opts.dtype;
    llm.set_compute(opts.compute);
    let chat_template = match md.get("tokenizer.chat_template") {
        Some(gguf_file::Value::String(s)) => Some(template_for(&tokenizer, s.clone())),
        _ => None,
    };
    let stop_ids = stop_ids_of(&tokenizer);
    Ok(LoadedModel {
        llm,
        tokenizer,
        chat_template,
        path: path.to_path_buf(),
        stop_ids,
    })
}

fn template_for(tok: &Tokenizer, src: String) -> ChatTemplate {
    let name = |id: Option<u32>| {
        id.and_then(|i| tok.id_to_token(i))
            .unwrap_or("")
            .to_string()
    };
    ChatTemplate::new(src, name(tok.bos_id), name(tok.eos_id))
}

fn stop_ids_of(tok: &Tokenizer) -> Vec<u32> {
    ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>"]
        .iter()
        .filter_map(|s| tok.token_to_id(s))
        .collect()
}

/// Loads an HF folder: config.json, *.safetensors (sharded or not), tokenizer.json.
pub fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let cfg = LlmConfig::from_hf_json(&dir.join("config.json"))?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(Error::not_found(dir, "no tokenizer.json"));
    }
    let tokenizer = Tokenizer::from_hf_file(&tok_path)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, "read", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::not_found(dir, "no .safetensors weights"));
    }
    let mut tensors = HashMap::new();
    for f in &files {
        // SAFETY: the file is only read, and we copy every tensor out before returning.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }
            .map_err(|e| Error::format(f, format!("invalid safetensors: {e}")))?;
        for (name, _) in st.tensors() {
            let Some(gname) = hf_to_gguf_name(&name, cfg.arch) else {
                continue;
            };
            let t = st
                .load(&name, &Device::Cpu)
                .map_err(|e| Error::format(f, format!("tensor '{name}': {e}")))?;
            tensors.insert(gname, RawWeight::Dense(t));
        }
    }
    let store = WeightStore::new(dir, tensors, opts.quant, &opts.device);
    // HF Gemma stores w for x * (1 + w); GGUF (and our RmsNorm) hold 1 + w.
    let shift = if cfg.arch == Arch::Gemma3 { 1.0 } else { 0.0 };
    let mut llm = store.build_llm(cfg, shift)?;
    llm.dtype = opts.dtype;
    llm.set_compute(opts.compute);
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            v.get("chat_template")
                .and_then(|t| t.as_str())
                .map(|s| s.to_string())
        })
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok())
        .map(|s| template_for(&tokenizer, s));
    let stop_ids = stop_ids_of(&tokenizer);
    Ok(LoadedModel {
        llm,
        tokenizer,
        chat_template,
        path: dir.to_path_buf(),
        stop_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fetched_model_says_how_to_fetch_it() {
        let empty = std::env::temp_dir().join(format!("anymal-empty-cache-{}", std::process::id()));
        std::env::set_var("ANYMAL_CACHE", &empty);
        let err = resolve_model_ref("gemma3").unwrap_err().to_string();
        std::env::remove_var("ANYMAL_CACHE");
        assert!(err.contains("scripts/fetch-assets.sh gemma3"), "{err}");
        let err = resolve_model_ref("./nope.gguf").unwrap_err().to_string();
        assert!(
            err.contains("nope.gguf") && err.contains("no such file"),
            "{err}"
        );
    }
}

//! Frozen-encoder features for a list of files, through the on-disk cache when enabled.
//! The training loop, evaluation and generation only see `FeatureSource`; which encoder sits
//! behind it is decided by the modality.

use std::path::Path;

use anyhow::{bail, Context, Result};
use anymal_encoders::audio::{load_audio_16k, WhisperEncoder};
use candle_core::{Device, Tensor};

use crate::train::feature_cache::FeatureCache;

/// A frozen encoder: files in, `(n_i, d)` features out, one result per file so that a bad file
/// is reported and skipped without losing the others.
pub trait FrozenEncoder {
    /// Stable id (architecture + weights), used as the cache key.
    fn id(&self) -> &str;
    /// Feature width `d`.
    fn hidden_size(&self) -> usize;
    fn encode_files(&self, paths: &[&Path]) -> Vec<Result<Tensor>>;
}

/// Whisper's encoder over decoded, resampled audio.
pub struct AudioEncoder {
    whisper: WhisperEncoder,
}

impl FrozenEncoder for AudioEncoder {
    fn id(&self) -> &str {
        self.whisper.id()
    }

    fn hidden_size(&self) -> usize {
        self.whisper.hidden_size()
    }

    fn encode_files(&self, paths: &[&Path]) -> Vec<Result<Tensor>> {
        let decoded: Vec<Result<Vec<f32>>> = paths
            .iter()
            .map(|p| load_audio_16k(p).map_err(anyhow::Error::from))
            .collect();
        let ok: Vec<&[f32]> = decoded
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|v| v.as_slice()))
            .collect();
        let mut encoded = match self.whisper.encode_batch(&ok) {
            Ok(v) => v.into_iter(),
            Err(e) => {
                let msg = format!("{e}");
                return paths
                    .iter()
                    .map(|p| Err(anyhow::anyhow!("{}: encoder failed: {msg}", p.display())))
                    .collect();
            }
        };
        decoded
            .into_iter()
            .map(|r| match r {
                Ok(_) => encoded
                    .next()
                    .context("encoder returned fewer outputs than inputs"),
                Err(e) => Err(e),
            })
            .collect()
    }
}

/// Build the frozen encoder for a modality.
pub fn load_encoder(modality: &str, reference: &str) -> Result<Box<dyn FrozenEncoder>> {
    match modality {
        "audio" => {
            // The project's one cache rule (the encoders crate has its own for standalone use).
            let path = anymal_encoders::audio::whisper::resolve_encoder_ref_in(
                reference,
                &anymal_llm::loader::cache_dir(),
            )?;
            let whisper = WhisperEncoder::load(&path, &Device::Cpu)
                .with_context(|| format!("loading audio encoder '{reference}'"))?;
            Ok(Box::new(AudioEncoder { whisper }))
        }
        other => bail!("modality '{other}' has no encoder yet (known: audio)"),
    }
}

/// Features for files, from the cache when possible.
pub struct FeatureSource {
    pub encoder: Box<dyn FrozenEncoder>,
    pub cache: Option<FeatureCache>,
    /// Content hash of each file seen, so later epochs read the cache without re-reading and
    /// re-hashing the audio on every step.
    keys: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, String>>,
}

impl FeatureSource {
    pub fn new(encoder: Box<dyn FrozenEncoder>, use_cache: bool) -> Self {
        let cache =
            use_cache.then(|| FeatureCache::new(&anymal_llm::loader::cache_dir(), encoder.id()));
        Self {
            encoder,
            cache,
            keys: Default::default(),
        }
    }

    fn content_key(&self, path: &Path) -> Result<String> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = keys.get(path) {
            return Ok(k.clone());
        }
        let k = FeatureCache::content_key(path)?;
        keys.insert(path.to_path_buf(), k.clone());
        Ok(k)
    }

    /// One result per path; misses are encoded together (one batched encoder call) and stored.
    pub fn get(&self, paths: &[&Path]) -> Vec<Result<Tensor>> {
        let Some(cache) = &self.cache else {
            return self.encoder.encode_files(paths);
        };
        let mut out: Vec<Option<Result<Tensor>>> = Vec::with_capacity(paths.len());
        let mut miss_idx = Vec::new();
        let mut miss_keys = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            match self.content_key(p) {
                Ok(key) => match cache.get(&key) {
                    Some(t) => out.push(Some(Ok(t))),
                    None => {
                        out.push(None);
                        miss_idx.push(i);
                        miss_keys.push(key);
                    }
                },
                Err(e) => out.push(Some(Err(e))),
            }
        }
        if !miss_idx.is_empty() {
            let miss_paths: Vec<&Path> = miss_idx.iter().map(|&i| paths[i]).collect();
            let encoded = self.encoder.encode_files(&miss_paths);
            for ((i, key), r) in miss_idx.into_iter().zip(miss_keys).zip(encoded) {
                let r = r.and_then(|t| {
                    cache.put(&key, &t)?;
                    Ok(t)
                });
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(anyhow::anyhow!("internal: feature not computed"))))
            .collect()
    }

    /// "hits/lookups (rate)" of the cache, or "off".
    pub fn cache_report(&self) -> String {
        match &self.cache {
            None => "feature cache off".into(),
            Some(c) => {
                let (h, m) = c.stats();
                let n = h + m;
                format!(
                    "feature cache: {h} hits / {n} lookups ({:.0}%)",
                    if n == 0 {
                        0.0
                    } else {
                        100.0 * h as f64 / n as f64
                    }
                )
            }
        }
    }
}

//! Frozen-encoder features for a list of files, through the on-disk [`cache`] when enabled.
//! The training loops, evaluation and generation only see `FeatureSource`; which encoder sits
//! behind it is decided by the modality.

pub mod cache;

use std::path::Path;

use anyhow::{Context, Result};
use anymal_encoders::{EncoderContext, ModalityRegistry};
pub use anymal_encoders::{FileEncoder, MediaInput};
use candle_core::Tensor;

use cache::FeatureCache;

/// Build the frozen encoder `reference` of the registered modality `modality`, with the
/// recipe's `[encoder.options]`.
pub fn load_encoder(
    registry: &ModalityRegistry,
    modality: &str,
    reference: &str,
    options: &serde_json::Value,
) -> Result<Box<dyn FileEncoder>> {
    let m = registry.get(modality)?;
    let ctx = EncoderContext::new(anymal_util::fs::cache_dir()).with_options(options.clone());
    m.file_encoder(reference, &ctx)
        .with_context(|| format!("loading the {modality} encoder '{reference}'"))
}

/// Features for files, from the cache when possible.
pub struct FeatureSource {
    pub encoder: Box<dyn FileEncoder>,
    pub cache: Option<FeatureCache>,
    /// Content hash of each file seen, so later epochs read the cache without re-reading and
    /// re-hashing the media on every step.
    keys: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, String>>,
}

impl FeatureSource {
    pub fn new(encoder: Box<dyn FileEncoder>, use_cache: bool) -> Self {
        let cache =
            use_cache.then(|| FeatureCache::new(&anymal_util::fs::cache_dir(), encoder.id()));
        Self {
            encoder,
            cache,
            keys: Default::default(),
        }
    }

    /// The cache key of an input: the hash of its bytes, whether read from its file or
    /// embedded (so a clip in a Parquet shard and the same clip as a file share an entry).
    fn content_key(&self, input: &MediaInput) -> Result<String> {
        let name = input.name();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = keys.get(name) {
            return Ok(k.clone());
        }
        let k = match *input {
            MediaInput::File(path) => FeatureCache::content_key(path)?,
            MediaInput::Bytes { bytes, .. } => FeatureCache::bytes_key(bytes),
        };
        keys.insert(name.to_path_buf(), k.clone());
        Ok(k)
    }

    /// [`get`](Self::get) on files.
    pub fn get_files(&self, paths: &[&Path]) -> Vec<Result<Tensor>> {
        let inputs: Vec<MediaInput> = paths.iter().map(|p| MediaInput::File(p)).collect();
        self.get(&inputs)
    }

    /// One result per input; misses are encoded together (one batched encoder call) and
    /// stored.
    pub fn get(&self, inputs: &[MediaInput]) -> Vec<Result<Tensor>> {
        let Some(cache) = &self.cache else {
            return self
                .encoder
                .encode_inputs(inputs)
                .into_iter()
                .map(|r| r.map_err(anyhow::Error::from))
                .collect();
        };
        let mut out: Vec<Option<Result<Tensor>>> = Vec::with_capacity(inputs.len());
        let mut miss_idx = Vec::new();
        let mut miss_keys = Vec::new();
        for (i, m) in inputs.iter().enumerate() {
            match self.content_key(m) {
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
            let misses: Vec<MediaInput> = miss_idx.iter().map(|&i| inputs[i]).collect();
            let encoded = self.encoder.encode_inputs(&misses);
            for ((i, key), r) in miss_idx.into_iter().zip(miss_keys).zip(encoded) {
                let r = r.map_err(anyhow::Error::from).and_then(|t| {
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

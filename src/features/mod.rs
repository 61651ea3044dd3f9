//! Frozen-encoder features for a list of files, through the on-disk [`cache`] when enabled.
//! The training loops, evaluation and generation only see `FeatureSource`; which encoder sits
//! behind it is decided by the modality.

pub mod cache;

use std::path::Path;

use anyhow::{Context, Result};
pub use anymal_encoders::FileEncoder;
use anymal_encoders::{EncoderContext, ModalityRegistry};
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
            return self
                .encoder
                .encode_files(paths)
                .into_iter()
                .map(|r| r.map_err(anyhow::Error::from))
                .collect();
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

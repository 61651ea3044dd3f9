//! On-disk cache of frozen-encoder outputs, keyed by the input file's content hash and the
//! encoder's id: later epochs and later runs skip decoding and the encoder entirely.
//!
//! Layout: `<cache>/features/<encoder id>/<sha256 of file>.safetensors`, one tensor `features`
//! `(n, d)`. Entries are written atomically, so a killed run leaves no half entry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

pub struct FeatureCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl FeatureCache {
    /// The cache folder for one encoder (created on first write).
    pub fn new(root: &Path, encoder_id: &str) -> Self {
        let safe: String = encoder_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            dir: root.join("features").join(safe),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Hex sha256 of a file's bytes (read in pieces: checkpoints hash their optimizer state
    /// with it too).
    pub fn content_key(path: &Path) -> Result<String> {
        anymal_util::sha256::file_hex(path)
            .with_context(|| format!("{}: cannot read", path.display()))
    }

    /// Hex sha256 of bytes in memory (embedded media).
    pub fn bytes_key(bytes: &[u8]) -> String {
        anymal_util::sha256::hex(bytes)
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// The cached features for `key`, counting a hit or a miss. A damaged entry counts as a
    /// miss (it will be rewritten).
    pub fn get(&self, key: &str) -> Option<Tensor> {
        let path = self.entry(key);
        let got = candle_core::safetensors::load(&path, &Device::Cpu)
            .ok()
            .and_then(|mut m| m.remove("features"));
        match &got {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        got
    }

    pub fn put(&self, key: &str, features: &Tensor) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("{}: cannot create cache folder", self.dir.display()))?;
        let path = self.entry(key);
        let features = features.to_device(&Device::Cpu)?;
        anymal_util::fs::write_atomic_with(&path, |tmp| {
            features
                .save_safetensors("features", tmp)
                .map_err(anyhow::Error::from)
        })
        .with_context(|| format!("{}: cannot write", path.display()))
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_counts() -> Result<()> {
        let root = std::env::temp_dir().join(format!("anymal-fcache-{}", std::process::id()));
        let c = FeatureCache::new(&root, "enc/1");
        let f = root.join("clip.bin");
        std::fs::create_dir_all(&root)?;
        std::fs::write(&f, b"abc")?;
        let key = FeatureCache::content_key(&f)?;
        // sha256("abc")
        assert_eq!(
            key,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(c.get(&key).is_none());
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
        c.put(&key, &t)?;
        let back = c.get(&key).context("cached")?;
        assert_eq!(back.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        assert_eq!(c.stats(), (1, 1));
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}

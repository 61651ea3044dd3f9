//! Shared helpers for the integration tests: where the fetched assets and committed fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn cache_dir() -> PathBuf {
    anymal_util::fs::cache_dir()
}

/// A fetched asset; a missing one fails the test with the command that fetches it.
pub fn asset(rel: &str, target: &str) -> PathBuf {
    let p = cache_dir().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/fetch-assets.sh {target}` first",
        p.display()
    );
    p
}

pub fn speech_clip(name: &str) -> PathBuf {
    asset(
        &format!("data/asterisk-en/en_US_f_Allison/{name}"),
        "speech",
    )
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn reference() -> serde_json::Value {
    let p = fixture("whisper_reference.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with scripts/fixtures/make_whisper_fixtures.py",
            p.display()
        )
    });
    serde_json::from_str(&text).expect("whisper_reference.json parses")
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// The reference's 16 kHz input: the 8 kHz int16 WAV decoded (symphonia maps s16 to s/32768,
/// as the Python side does) with each sample repeated twice.
pub fn repeat_16k(name: &str) -> Vec<f32> {
    let d = anymal_encoders::audio::decode_file(&speech_clip(name)).expect("decode speech clip");
    assert_eq!(d.sample_rate, 8000);
    d.samples.iter().flat_map(|&s| [s, s]).collect()
}

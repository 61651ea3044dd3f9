//! `metrics.jsonl` of a run: one JSON object per step or evaluation, appended as training
//! goes, cut back to the resumed step when a run continues.

use std::path::Path;

use anyhow::Result;

/// Metrics lines of earlier runs up to `keep_until` (the resumed step): lines a killed run
/// wrote after its last checkpoint describe steps that will be redone, so they go.
pub fn read_history(path: &Path, keep_until: u64) -> Result<Vec<serde_json::Value>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v.get("step")
                .and_then(|s| s.as_u64())
                .is_some_and(|s| s <= keep_until)
        })
        .collect())
}

pub fn rewrite_metrics(path: &Path, history: &[serde_json::Value]) -> Result<()> {
    let mut text = String::new();
    for v in history {
        text.push_str(&v.to_string());
        text.push('\n');
    }
    anymal_adapters::projector::write_atomic(path, text.as_bytes())?;
    Ok(())
}

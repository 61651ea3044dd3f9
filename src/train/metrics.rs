//! `metrics.jsonl` of a run: one JSON object per step or evaluation, appended as training
//! goes, cut back to the resumed step when a run continues.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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

/// Start or continue a run in `out`: refuse a folder that holds checkpoints unless resuming,
/// create it, write the resolved recipe. Returns the checkpoint to resume from, if any.
pub fn prepare_run_dir(
    out: &Path,
    resume: bool,
    recipe_toml: &str,
) -> Result<Option<(u64, PathBuf)>> {
    let existing = super::checkpoint::latest(out);
    if existing.is_some() && !resume {
        bail!(
            "{}: holds checkpoints of an earlier run; pass --resume to continue it or choose another output_dir",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    anymal_adapters::projector::write_atomic(&out.join("recipe.toml"), recipe_toml.as_bytes())?;
    Ok(existing.filter(|_| resume))
}

/// `out/metrics.jsonl` cut back to `start_step` (see [`read_history`]), and the file opened
/// for appending.
pub fn open_metrics(
    out: &Path,
    start_step: u64,
) -> Result<(Vec<serde_json::Value>, std::fs::File)> {
    let path = out.join("metrics.jsonl");
    let history = read_history(&path, start_step)?;
    rewrite_metrics(&path, &history)?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    Ok((history, file))
}

/// `out/loss.png` from the history's `loss` and `eval_loss` points; a failure is a warning
/// (the run itself succeeded).
pub fn write_curves(out: &Path, history: &[serde_json::Value], title: &str) {
    let curve = |key: &str| -> Vec<(u64, f64)> {
        history
            .iter()
            .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get(key)?.as_f64()?)))
            .collect()
    };
    let png = out.join("loss.png");
    if let Err(e) = super::plot::write_loss_png(&png, &curve("loss"), &curve("eval_loss"), title) {
        eprintln!("warning: {}: cannot write loss curve: {e}", png.display());
    }
}

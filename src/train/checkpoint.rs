//! Run checkpoints: `<run>/checkpoint-<step>/` with the trainable parts (each loop writes its
//! own, as loadable as its final result), the optimizer's moments and the trainer state. A
//! checkpoint is written into a temporary folder and renamed into place, so a kill at any
//! moment leaves either the old set of checkpoints or the new one, never a half-written folder
//! that `--resume` would trust.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::run_dir::{RunDir, OPTIMIZER_FILE, STATE_FILE};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Training wall time so far, across resumes.
    pub elapsed_s: f64,
    pub seed: u64,
    /// The best validation loss so far and its step (`best/`), and the evaluations since it
    /// (early stopping); absent in checkpoints of older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<crate::run_dir::BestRecord>,
    #[serde(default)]
    pub evals_since_best: u64,
}

/// Write a checkpoint whose trainable parts `write` puts into the folder it is given, with the
/// optimizer and trainer state beside them, atomically; then remove the oldest beyond `keep`.
pub fn save(
    run: &RunDir,
    opt: &AdamW,
    state: &TrainerState,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = run.checkpoint(state.step);
    let tmp = run.checkpoint_in_progress(state.step);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("{}: cannot clear", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    write(&tmp)?;
    let opt_state: HashMap<String, candle_core::Tensor> = opt.state_tensors().into_iter().collect();
    candle_core::safetensors::save(&opt_state, tmp.join(OPTIMIZER_FILE))
        .with_context(|| format!("{}: cannot write optimizer state", tmp.display()))?;
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?)
        .with_context(|| format!("{}: cannot write trainer state", tmp.display()))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot write", dir.display()))?;
    prune(run, keep)?;
    Ok(dir)
}

fn prune(run: &RunDir, keep: usize) -> Result<()> {
    let all = run.checkpoints();
    if all.len() > keep.max(1) {
        for (_, p) in &all[..all.len() - keep.max(1)] {
            std::fs::remove_dir_all(p)
                .with_context(|| format!("{}: cannot remove", p.display()))?;
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid trainer state", p.display()))
}

/// Write the trainable parts (`write` fills the folder it is given) as the run's `best/`,
/// with `best.json`, replacing the earlier best only once the new one is complete.
pub fn save_best(
    run: &RunDir,
    record: &crate::run_dir::BestRecord,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let (dir, tmp) = (run.best(), run.best_in_progress());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("{}: cannot clear", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    write(&tmp)?;
    crate::run_dir::write_json(&tmp.join(crate::run_dir::BEST_FILE), record)?;
    // rename() cannot replace a non-empty folder: move the old one aside first, so that a
    // crash leaves either the old best or the new one in place (plus a folder to clear).
    let old = run.path().join(".best.old");
    if old.exists() {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("{}: cannot clear", old.display()))?;
    }
    if dir.exists() {
        std::fs::rename(&dir, &old)
            .with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot write", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("{}: cannot remove", old.display()))?;
    }
    Ok(dir)
}

//! Run checkpoints: `<run>/checkpoint-<step>/` with the projector (as loadable as the final
//! one), the optimizer's moments and the trainer state. A checkpoint is written into a
//! `.tmp` folder and renamed into place, so a kill at any moment leaves either the old set of
//! checkpoints or the new one, never a half-written folder that `--resume` would trust.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use anymal_adapters::{ParamStore, Projector};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Training wall time so far, across resumes.
    pub elapsed_s: f64,
    pub seed: u64,
}

pub fn checkpoint_dir(run: &Path, step: u64) -> PathBuf {
    run.join(format!("checkpoint-{step}"))
}

/// Write a checkpoint atomically and remove the oldest beyond `keep`.
pub fn save(
    run: &Path,
    projector: &Projector,
    store: &ParamStore,
    opt: &AdamW,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    save_with(run, opt, state, keep, |tmp| Ok(projector.save(tmp, store)?))
}

/// Write a checkpoint whose trainable parts `write` puts into the folder it is given, with the
/// optimizer and trainer state beside them; atomically, as [`save`].
pub fn save_with(
    run: &Path,
    opt: &AdamW,
    state: &TrainerState,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(run, state.step);
    let tmp = run.join(format!(".checkpoint-{}.tmp", state.step));
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

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse::<u64>().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

pub fn latest(run: &Path) -> Option<(u64, PathBuf)> {
    list(run).pop()
}

fn prune(run: &Path, keep: usize) -> Result<()> {
    let all = list(run);
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

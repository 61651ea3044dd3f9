//! Run checkpoints: `<run>/checkpoint-<step>/` with the trainable parts (each loop writes its
//! own, as loadable as its final result), the optimizer's moments and the trainer state. A
//! checkpoint is written into a temporary folder and renamed into place, so a kill at any
//! moment leaves either the old set of checkpoints or the new one, never a half-written folder
//! that `--resume` would trust.
//!
//! Each checkpoint carries `SHA256SUMS`, the sha256 of every other file in it, written last
//! before the rename: `--resume` takes the newest checkpoint whose files still match (a flipped
//! byte in the optimizer state would otherwise train into NaN), and an older checkpoint is
//! removed only once the new one has been read back intact. Removing one renames it to a
//! hidden name first, so a kill halfway never leaves a checkpoint that lacks a file.
//! Checkpoints written before checksums existed are resumed as they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::features::cache::FeatureCache;
use crate::run_dir::{RunDir, CHECKSUMS_FILE, OPTIMIZER_FILE, STATE_FILE};

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
/// optimizer and trainer state beside them and their checksums, atomically; then, once it
/// reads back intact, remove the oldest beyond `keep`. Weights or moments that are not finite
/// are refused before anything is written or removed: the run diverged, and the checkpoints it
/// has are the ones to go back to.
pub fn save(
    run: &RunDir,
    opt: &AdamW,
    state: &TrainerState,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    if let Some(name) = opt.first_non_finite()? {
        bail!(
            "the run diverged at step {}: {name} is not finite; no checkpoint written, none removed; the last good checkpoint is {}",
            state.step,
            newest_intact_quietly(run)
                .map_or("none (this run wrote none yet)".into(), |p| p.display().to_string())
        );
    }
    clear_leftovers(run)?;
    let dir = run.checkpoint(state.step);
    let tmp = run.checkpoint_in_progress(state.step);
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    write(&tmp)?;
    let opt_state: HashMap<String, candle_core::Tensor> = opt.state_tensors().into_iter().collect();
    candle_core::safetensors::save(&opt_state, tmp.join(OPTIMIZER_FILE))
        .with_context(|| format!("{}: cannot write optimizer state", tmp.display()))?;
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_string_pretty(state)?)
        .with_context(|| format!("{}: cannot write trainer state", tmp.display()))?;
    write_checksums(&tmp)?;
    // A checkpoint of this step already exists when the run went back to an older one (resumed
    // past a damaged checkpoint): it is moved away whole, like any checkpoint being removed.
    let replaced = run.checkpoint_being_removed(state.step);
    if dir.exists() {
        std::fs::rename(&dir, &replaced)
            .with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot write", dir.display()))?;
    if replaced.exists() {
        std::fs::remove_dir_all(&replaced)
            .with_context(|| format!("{}: cannot remove", replaced.display()))?;
    }
    // Read back before the older checkpoints go: a disk that returns something else than was
    // written must not cost the run its good checkpoints.
    if let Integrity::Damaged(why) = verify(&dir) {
        bail!(
            "{}: does not read back as written ({why}); older checkpoints kept",
            dir.display()
        );
    }
    prune(run, keep)?;
    Ok(dir)
}

/// Remove the oldest checkpoints beyond `keep` (at least one stays).
fn prune(run: &RunDir, keep: usize) -> Result<()> {
    let all = run.checkpoints();
    let keep = keep.max(1);
    if all.len() > keep {
        for (step, p) in &all[..all.len() - keep] {
            remove_checkpoint(run, *step, p)?;
        }
    }
    Ok(())
}

/// Rename the checkpoint out of [`RunDir::checkpoints`]' sight, then delete it: a kill during
/// the deletion leaves a hidden `.checkpoint-<step>.del`, never a listed checkpoint that lacks
/// some of its files.
fn remove_checkpoint(run: &RunDir, step: u64, dir: &Path) -> Result<()> {
    let gone = run.checkpoint_being_removed(step);
    if gone.exists() {
        std::fs::remove_dir_all(&gone)
            .with_context(|| format!("{}: cannot clear", gone.display()))?;
    }
    std::fs::rename(dir, &gone).with_context(|| format!("{}: cannot remove", dir.display()))?;
    std::fs::remove_dir_all(&gone).with_context(|| format!("{}: cannot remove", gone.display()))
}

/// Delete what a killed process left of checkpoints being written or removed.
pub fn clear_leftovers(run: &RunDir) -> Result<()> {
    for p in run.leftover_checkpoint_folders() {
        std::fs::remove_dir_all(&p).with_context(|| format!("{}: cannot clear", p.display()))?;
    }
    Ok(())
}

/// Whether a checkpoint's files are the ones that were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// Every file `SHA256SUMS` lists is there with its checksum.
    Intact,
    /// No `SHA256SUMS`: written before checkpoints had checksums; trusted as it is.
    Unverified,
    /// What is wrong, naming the file.
    Damaged(String),
}

/// `SHA256SUMS` in `dir`: the sha256 of every file below it, in `sha256sum`'s format.
fn write_checksums(dir: &Path) -> Result<()> {
    let mut lines = String::new();
    for rel in files_below(dir)? {
        let hex = FeatureCache::content_key(&dir.join(&rel))?;
        lines.push_str(&format!("{hex}  {rel}\n"));
    }
    let p = dir.join(CHECKSUMS_FILE);
    std::fs::write(&p, lines).with_context(|| format!("{}: cannot write", p.display()))
}

/// The files below `dir` (in subfolders too), as `/`-separated relative paths, sorted.
fn files_below(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for e in
            std::fs::read_dir(&here).with_context(|| format!("{}: cannot list", here.display()))?
        {
            let e = e.with_context(|| format!("{}: cannot list", here.display()))?;
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(r);
            } else {
                out.push(r.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Check a checkpoint's files against its `SHA256SUMS`. The list must name the trainer and
/// optimizer state (an emptied list proves nothing); a listed file that is missing or
/// differs makes the checkpoint damaged.
pub fn verify(dir: &Path) -> Integrity {
    let sums = dir.join(CHECKSUMS_FILE);
    let text = match std::fs::read_to_string(&sums) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Integrity::Unverified,
        Err(e) => return Integrity::Damaged(format!("{}: cannot read: {e}", sums.display())),
    };
    let mut listed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((hex, rel)) = line.split_once("  ") else {
            return Integrity::Damaged(format!(
                "{}:{}: not a checksum line",
                sums.display(),
                i + 1
            ));
        };
        // Only plain relative names: the list must not point outside its checkpoint.
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Integrity::Damaged(format!("{}:{}: bad file name", sums.display(), i + 1));
        }
        let file = dir.join(rel);
        match FeatureCache::content_key(&file) {
            Err(_) if !file.exists() => {
                return Integrity::Damaged(format!("{}: missing", file.display()))
            }
            Err(e) => return Integrity::Damaged(format!("{e:#}")),
            Ok(h) if h != hex => {
                return Integrity::Damaged(format!(
                    "{}: does not match its checksum in {CHECKSUMS_FILE}",
                    file.display()
                ))
            }
            Ok(_) => listed.push(rel),
        }
    }
    for needed in [STATE_FILE, OPTIMIZER_FILE] {
        if !listed.contains(&needed) {
            return Integrity::Damaged(format!("{}: does not list {needed}", sums.display()));
        }
    }
    Integrity::Intact
}

/// The checkpoint `--resume` continues from: the newest one that is intact (or has no
/// checksums, from an older version). Each newer damaged one gets a warning line naming its
/// bad file and the checkpoint used instead, and is moved aside to
/// `checkpoint-<step>.corrupt` (kept, out of the way of the checkpoints the run writes next).
/// Checkpoints that are all damaged are an error; no checkpoint at all is None.
pub fn newest_intact(run: &RunDir) -> Result<Option<(u64, PathBuf)>> {
    let mut damaged: Vec<(u64, PathBuf, String)> = Vec::new();
    for (step, dir) in run.checkpoints().into_iter().rev() {
        match verify(&dir) {
            Integrity::Damaged(why) => damaged.push((step, dir, why)),
            Integrity::Intact | Integrity::Unverified => {
                for (bad_step, bad, why) in damaged {
                    let aside = run.checkpoint_set_aside(bad_step);
                    if aside.exists() {
                        std::fs::remove_dir_all(&aside)
                            .with_context(|| format!("{}: cannot clear", aside.display()))?;
                    }
                    std::fs::rename(&bad, &aside)
                        .with_context(|| format!("{}: cannot move aside", bad.display()))?;
                    eprintln!(
                        "warning: {why}; resuming from {} instead (the damaged checkpoint is kept as {})",
                        dir.display(),
                        aside.display()
                    );
                }
                return Ok(Some((step, dir)));
            }
        }
    }
    if damaged.is_empty() {
        return Ok(None);
    }
    let whys: Vec<String> = damaged.into_iter().map(|(_, _, why)| why).collect();
    bail!(
        "--resume: no intact checkpoint in {}: {}",
        run.path().display(),
        whys.join("; ")
    )
}

/// The newest checkpoint that verifies, without moving or reporting anything.
fn newest_intact_quietly(run: &RunDir) -> Option<PathBuf> {
    run.checkpoints()
        .into_iter()
        .rev()
        .find(|(_, d)| !matches!(verify(d), Integrity::Damaged(_)))
        .map(|(_, d)| d)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::AdamWConfig;
    use candle_core::{Device, Tensor, Var};

    fn temp_run(name: &str) -> RunDir {
        let d = std::env::temp_dir().join(format!("anymal-ckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        RunDir::new(d)
    }

    fn optimizer(value: f32) -> (AdamW, Var) {
        let w = Var::from_tensor(&Tensor::full(value, (2, 3), &Device::Cpu).unwrap()).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        (AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap(), w)
    }

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            elapsed_s: 0.0,
            seed: 1,
            best: None,
            evals_since_best: 0,
        }
    }

    /// A checkpoint whose trainable part is a `projector.safetensors` of a few bytes.
    fn save_step(run: &RunDir, opt: &AdamW, step: u64, keep: usize) -> Result<PathBuf> {
        save(run, opt, &state(step), keep, |d| {
            Ok(std::fs::write(
                d.join("projector.safetensors"),
                [step as u8; 64],
            )?)
        })
    }

    #[test]
    fn checksums_tell_intact_damaged_and_older_checkpoints_apart() {
        let run = temp_run("verify");
        let (opt, _) = optimizer(0.5);
        let dir = save_step(&run, &opt, 1, 3).unwrap();
        assert_eq!(verify(&dir), Integrity::Intact);
        let sums = std::fs::read_to_string(dir.join(CHECKSUMS_FILE)).unwrap();
        assert!(sums.contains("  optimizer.safetensors\n"), "{sums}");

        // One flipped byte in the optimizer state.
        let opt_file = dir.join(OPTIMIZER_FILE);
        let mut bytes = std::fs::read(&opt_file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&opt_file, &bytes).unwrap();
        match verify(&dir) {
            Integrity::Damaged(why) => {
                assert!(
                    why.contains("optimizer.safetensors") && why.contains("checksum"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        bytes[last] ^= 0x40;
        std::fs::write(&opt_file, &bytes).unwrap();
        assert_eq!(verify(&dir), Integrity::Intact);

        // A missing file, and an emptied list.
        std::fs::rename(dir.join("projector.safetensors"), run.path().join("p")).unwrap();
        assert!(
            matches!(verify(&dir), Integrity::Damaged(w) if w.contains("projector.safetensors: missing"))
        );
        std::fs::rename(run.path().join("p"), dir.join("projector.safetensors")).unwrap();
        std::fs::write(dir.join(CHECKSUMS_FILE), "").unwrap();
        assert!(matches!(verify(&dir), Integrity::Damaged(w) if w.contains("does not list")));
        // Written before checksums existed: trusted as it is.
        std::fs::remove_file(dir.join(CHECKSUMS_FILE)).unwrap();
        assert_eq!(verify(&dir), Integrity::Unverified);
        std::fs::remove_dir_all(run.path()).unwrap();
    }

    #[test]
    fn resume_takes_the_newest_intact_checkpoint_and_sets_damaged_ones_aside() {
        let run = temp_run("newest");
        let (opt, _) = optimizer(0.5);
        for step in [2, 4] {
            save_step(&run, &opt, step, 3).unwrap();
        }
        std::fs::remove_file(run.checkpoint(4).join("projector.safetensors")).unwrap();
        let (step, dir) = newest_intact(&run).unwrap().unwrap();
        assert_eq!((step, dir), (2, run.checkpoint(2)));
        assert!(run.checkpoint_set_aside(4).is_dir());
        assert_eq!(run.checkpoints().len(), 1);
        // Nothing intact left: an error naming the damage, nothing moved.
        std::fs::write(run.checkpoint(2).join(STATE_FILE), "{}").unwrap();
        let err = newest_intact(&run).unwrap_err().to_string();
        assert!(
            err.contains("no intact checkpoint") && err.contains("trainer_state.json"),
            "{err}"
        );
        assert!(run.checkpoint(2).is_dir());
        std::fs::remove_dir_all(run.path()).unwrap();
    }

    #[test]
    fn pruning_leaves_no_half_removed_checkpoint_and_divergence_writes_and_prunes_nothing() {
        let run = temp_run("prune");
        let (opt, w) = optimizer(0.5);
        save_step(&run, &opt, 1, 1).unwrap();
        // What a kill during an earlier removal left behind is cleared at the next save.
        std::fs::create_dir_all(run.checkpoint_being_removed(7)).unwrap();
        save_step(&run, &opt, 2, 1).unwrap();
        let names: Vec<String> = std::fs::read_dir(run.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec!["checkpoint-2".to_string()]);

        w.set(&Tensor::full(f32::NAN, (2, 3), &Device::Cpu).unwrap())
            .unwrap();
        let err = save_step(&run, &opt, 3, 1).unwrap_err().to_string();
        assert!(
            err.contains("diverged at step 3")
                && err.contains("w is not finite")
                && err.contains(&run.checkpoint(2).display().to_string()),
            "{err}"
        );
        assert_eq!(run.checkpoints(), vec![(2, run.checkpoint(2))]);
        assert!(!run.checkpoint_in_progress(3).exists());
        std::fs::remove_dir_all(run.path()).unwrap();
    }
}

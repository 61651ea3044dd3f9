//! The run folder of `anymal align` and `anymal tune`: the one place that knows its layout.
//! Training writes it, inference and evaluation read it, `merge` finds the LoRA in it.
//!
//! ```text
//! <run>/recipe.toml                 the resolved recipe
//!       metrics.jsonl               a line per step and per evaluation
//!       loss.png  summary.json      the curves and the final report
//!       checkpoint-<step>/          written as .checkpoint-<step>.tmp, then renamed; removed
//!                                   by renaming it to .checkpoint-<step>.del first
//!           optimizer.safetensors  trainer_state.json   + the trainable parts, as below
//!           SHA256SUMS              sha256 of every other file in it, written last
//!       checkpoint-<step>.corrupt/  a checkpoint that failed its checksums on resume, kept
//!       best/                       the trainable parts at the lowest validation loss so far,
//!           best.json               with its step and loss (written as .best.tmp, then renamed);
//!                                   `--run <run>` loads it when present
//!       ctc-init/                   the CTC warm start of `align`, when the recipe has one
//!       projector.json  projector.safetensors        the result of `align`
//!       model.json                  the result of `tune`: what to load, relative to the run
//!       projector-<modality>/       tune's projectors (trained ones, and copies of frozen ones)
//!       lora/                       tune's LoRA, in PEFT's format
//!       predictions-<data>.jsonl  eval-<data>.json      what `anymal eval` wrote
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const RECIPE_FILE: &str = "recipe.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOSS_PLOT_FILE: &str = "loss.png";
pub const SUMMARY_FILE: &str = "summary.json";
pub const MODEL_FILE: &str = "model.json";
pub const LORA_DIR: &str = "lora";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
pub const BEST_DIR: &str = "best";
pub const BEST_FILE: &str = "best.json";
/// The CTC warm start of an alignment run (see `train::ctc_warmup`).
pub const CTC_INIT_DIR: &str = "ctc-init";
/// In a checkpoint: `sha256sum` lines (`<hex>  <relative path>`) of every other file in it, so
/// that `--resume` can tell an intact checkpoint from a damaged one (and `sha256sum -c` too).
pub const CHECKSUMS_FILE: &str = "SHA256SUMS";

/// What `best/best.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BestRecord {
    pub step: u64,
    pub eval_loss: f64,
}

/// A run folder (which need not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

/// What a folder holds, as far as loading a model from it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `model.json`: a tuning run (or one of its checkpoints).
    Tuned,
    /// `projector.json`: an alignment run, its checkpoint, or any projector folder.
    Projector,
    /// Neither.
    Other,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn kind(&self) -> RunKind {
        if self.0.join(MODEL_FILE).is_file() {
            RunKind::Tuned
        } else if self
            .0
            .join(anymal_adapters::projector::CONFIG_FILE)
            .is_file()
        {
            RunKind::Projector
        } else {
            RunKind::Other
        }
    }

    pub fn recipe(&self) -> PathBuf {
        self.0.join(RECIPE_FILE)
    }

    pub fn metrics(&self) -> PathBuf {
        self.0.join(METRICS_FILE)
    }

    pub fn loss_plot(&self) -> PathBuf {
        self.0.join(LOSS_PLOT_FILE)
    }

    pub fn summary(&self) -> PathBuf {
        self.0.join(SUMMARY_FILE)
    }

    pub fn model_manifest(&self) -> PathBuf {
        self.0.join(MODEL_FILE)
    }

    pub fn lora(&self) -> PathBuf {
        self.0.join(LORA_DIR)
    }

    /// Where a tuning run keeps the projector of `modality`.
    pub fn projector(&self, modality: &str) -> PathBuf {
        self.0.join(projector_dir_name(modality))
    }

    /// What `anymal eval` writes for the data file `data`: predictions and the report.
    pub fn eval_outputs(&self, data: &Path) -> (PathBuf, PathBuf) {
        // A glob of shards (`test-*.parquet`) names its files without the wildcards.
        let stem = data
            .file_stem()
            .map(|s| s.to_string_lossy().replace(['*', '?', '[', ']'], ""))
            .unwrap_or_else(|| "data".into());
        (
            self.0.join(format!("predictions-{stem}.jsonl")),
            self.0.join(format!("eval-{stem}.json")),
        )
    }

    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.0.join(format!("checkpoint-{step}"))
    }

    /// Where a checkpoint is written before it is renamed into place.
    pub fn checkpoint_in_progress(&self, step: u64) -> PathBuf {
        self.0.join(format!(".checkpoint-{step}.tmp"))
    }

    /// The name a checkpoint is renamed to before it is deleted: a kill during the deletion
    /// leaves a folder [`RunDir::checkpoints`] does not list, not a checkpoint missing files.
    pub fn checkpoint_being_removed(&self, step: u64) -> PathBuf {
        self.0.join(format!(".checkpoint-{step}.del"))
    }

    /// Where a checkpoint that failed its checksums is moved aside (kept for the user to look
    /// at, out of the way of the run that continues from an older one).
    pub fn checkpoint_set_aside(&self, step: u64) -> PathBuf {
        self.0.join(format!("checkpoint-{step}.corrupt"))
    }

    /// Checkpoint folders a killed process left half-written or half-deleted
    /// (`.checkpoint-<step>.tmp`, `.checkpoint-<step>.del`).
    pub fn leftover_checkpoint_folders(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with(".checkpoint-")
                    && (name.ends_with(".tmp") || name.ends_with(".del"))
            })
            .map(|e| e.path())
            .collect()
    }

    /// The files and folders in this folder that an earlier run of `align` or `tune` wrote
    /// (its results, recipe, metrics, checkpoints, best/), by name. Anything else
    /// in the folder is the user's and is never listed, so never removed by `--overwrite`.
    pub fn earlier_run_entries(&self) -> Vec<PathBuf> {
        let fixed = [
            RECIPE_FILE,
            METRICS_FILE,
            LOSS_PLOT_FILE,
            SUMMARY_FILE,
            MODEL_FILE,
            LORA_DIR,
            BEST_DIR,
            anymal_adapters::projector::CONFIG_FILE,
            anymal_adapters::projector::WEIGHTS_FILE,
        ];
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                fixed.contains(&name.as_str()) || is_run_made_name(&name, is_dir)
            })
            .map(|e| e.path())
            .collect();
        out.sort();
        out
    }

    /// Complete checkpoints (those with a trainer state), oldest first. Whether their files are
    /// intact is [`crate::train::checkpoint::verify`]'s question.
    pub fn checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.0)
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

    /// The weights at the best validation loss, and the folder they are written in first.
    pub fn best(&self) -> PathBuf {
        self.0.join(BEST_DIR)
    }

    pub fn best_in_progress(&self) -> PathBuf {
        self.0.join(".best.tmp")
    }

    /// The folder inference loads for this run: its `best/` when the run kept one (a
    /// checkpoint or `best/` itself is loaded as given), with what `best.json` says of it.
    pub fn for_inference(&self) -> (PathBuf, Option<BestRecord>) {
        let best = self.best();
        let record = std::fs::read_to_string(best.join(BEST_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<BestRecord>(&t).ok());
        match record {
            Some(r) if RunDir::new(&best).kind() != RunKind::Other => (best, Some(r)),
            _ => (self.0.clone(), None),
        }
    }

    pub fn latest_checkpoint(&self) -> Option<(u64, PathBuf)> {
        self.checkpoints().pop()
    }

    pub fn read_model_manifest(&self) -> Result<ModelManifest> {
        let path = self.model_manifest();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read (is {} a run folder of `anymal tune`?)",
                path.display(),
                self.0.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
    }

    pub fn write_model_manifest(&self, manifest: &ModelManifest) -> Result<()> {
        write_json(&self.model_manifest(), manifest)
    }
}

/// Whether a name in a run folder is one of the run's own beyond the fixed ones: checkpoints
/// (written, being written or removed, set aside), the warm start, tune's projector folders,
/// the temporary best/. What `anymal eval` wrote (`eval-<data>.json`, ...) is not among them:
/// those names could as well be a user's own files.
fn is_run_made_name(name: &str, is_dir: bool) -> bool {
    let step_suffix = |rest: &str| {
        let digits = rest
            .strip_suffix(".tmp")
            .or_else(|| rest.strip_suffix(".del"))
            .or_else(|| rest.strip_suffix(".corrupt"))
            .unwrap_or(rest);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    name.strip_prefix("checkpoint-").is_some_and(step_suffix)
        || name.strip_prefix(".checkpoint-").is_some_and(step_suffix)
        || matches!(name, CTC_INIT_DIR | ".best.tmp" | ".best.old")
        || (is_dir && name.starts_with("projector-"))
}

/// The folders no output of anymal may be or be written straight into: the file system's root
/// and the system's own top-level folders. A run there would mix its files with the system's,
/// and `--overwrite` would remove names like `lib` or `eval-*.json` from them.
const SYSTEM_FOLDERS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys",
    "/usr", "/var",
];

/// What `path` is when it is the root, a system folder or the home folder itself (`$HOME`),
/// compared as written (made absolute, `.` and `..` resolved) and with its links resolved
/// where it exists (`runs -> /`); None for any other path.
fn system_folder(path: &Path, home_counts: bool) -> Option<String> {
    let mut forms = Vec::new();
    if let Ok(p) = anymal_util::fs::absolute_normalized(path) {
        forms.push(p);
    }
    if let Ok(p) = std::fs::canonicalize(path) {
        forms.push(p);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    for p in &forms {
        if p == Path::new("/") {
            return Some("the file system's root".into());
        }
        if SYSTEM_FOLDERS.iter().any(|s| p == Path::new(s)) {
            return Some(format!("the system folder {}", p.display()));
        }
        if let Some(h) = home.as_ref().filter(|_| home_counts) {
            let h_forms = [
                Some(anymal_util::fs::normalize(h)),
                std::fs::canonicalize(h).ok(),
            ];
            if h_forms.iter().flatten().any(|h| h == p) {
                return Some(format!("your home folder {}", h.display()));
            }
        }
    }
    None
}

/// Refuse `folder` as an output folder (a run's) when it is the file system's root, a system
/// folder (`/usr`, `/etc`, ...) or the home folder itself. `what` names the setting
/// (`output_dir`).
pub fn refuse_system_folder(folder: &Path, what: &str) -> Result<()> {
    if let Some(is) = system_folder(folder, true) {
        anyhow::bail!(
            "{what} {}: is {is}; choose a folder of its own for the output",
            folder.display()
        );
    }
    Ok(())
}

/// Refuse `file` as an output file when it is, or lies straight in, the file system's root or
/// a system folder (a file straight in the home folder is fine). `what` names the flag (`--out`).
pub fn refuse_system_file(file: &Path, what: &str) -> Result<()> {
    if let Some(is) = system_folder(file, true) {
        anyhow::bail!("{what} {}: is {is}; name a file to write", file.display());
    }
    let parent = match file.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Ok(()),
    };
    if let Some(is) = system_folder(parent, false) {
        anyhow::bail!(
            "{what} {}: would be written into {is}; choose a folder of your own",
            file.display()
        );
    }
    Ok(())
}

/// The projector folder name of a modality inside a tuning run or checkpoint.
pub fn projector_dir_name(modality: &str) -> String {
    format!("projector-{modality}")
}

/// The PEFT folder that `path` names: the folder itself when it holds an adapter, else the
/// `lora/` of the tuning run (or checkpoint) it is.
pub fn lora_folder(path: &Path) -> PathBuf {
    if path.join(anymal_llm::lora::ADAPTER_CONFIG_FILE).is_file() {
        path.to_path_buf()
    } else {
        RunDir::new(path).lora()
    }
}

/// `model.json` of a tuning run: what to load, relative to the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelManifest {
    pub llm: String,
    /// Re-quantization applied on load (empty: the file's types).
    #[serde(default)]
    pub requant: String,
    /// Projector folders.
    pub projectors: Vec<String>,
    /// PEFT folder, if the run trained a LoRA.
    pub lora: Option<String>,
    pub chat_template: bool,
}

/// `value` as pretty JSON, written atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    Ok(anymal_util::fs::write_atomic(
        path,
        serde_json::to_string_pretty(value)?.as_bytes(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_stay_out_of_the_root_system_folders_and_home() {
        for p in ["/", "/usr", "/usr/", "/tmp/../etc", "/var/.", "/proc"] {
            let err = refuse_system_folder(Path::new(p), "output_dir").unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("output_dir {p}: is ")),
                "{err}"
            );
        }
        let err = refuse_system_folder(Path::new("/"), "output_dir").unwrap_err();
        assert!(err.to_string().contains("the file system's root"), "{err}");
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap();
        let err = refuse_system_folder(&home, "output_dir").unwrap_err();
        assert!(err.to_string().contains("your home folder"), "{err}");
        for p in ["/usr/local/runs", "/tmp/x", "runs/x"] {
            refuse_system_folder(Path::new(p), "output_dir").unwrap();
        }
        refuse_system_folder(&home.join("runs"), "output_dir").unwrap();

        for p in [
            "/merged.gguf",
            "/usr/merged.gguf",
            "/etc/../bin/x.gguf",
            "/",
        ] {
            let err = refuse_system_file(Path::new(p), "--out").unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("--out {p}: ")),
                "{err}"
            );
        }
        refuse_system_file(&home.join("merged.gguf"), "--out").unwrap();
        refuse_system_file(Path::new("merged.gguf"), "--out").unwrap();
        refuse_system_file(Path::new("/usr/local/merged.gguf"), "--out").unwrap();
        assert!(refuse_system_file(&home, "--out").is_err());
    }

    #[test]
    fn an_earlier_run_is_recognised_by_its_files_and_the_users_are_not_among_them() {
        let d = std::env::temp_dir().join(format!("anymal-run-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for f in [
            "checkpoint-2",
            "checkpoint-4.corrupt",
            ".checkpoint-6.del",
            "projector-audio",
            "lora",
            "ctc-init",
        ] {
            std::fs::create_dir_all(d.join(f)).unwrap();
        }
        for f in [
            "recipe.toml",
            "summary.json",
            "projector.json",
            "notes.txt",
            "train.jsonl",
            "eval-test.json",
            "projector-x.txt",
            "checkpoint-x",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let run = RunDir::new(&d);
        let names: Vec<String> = run
            .earlier_run_entries()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            names,
            [
                ".checkpoint-6.del",
                "checkpoint-2",
                "checkpoint-4.corrupt",
                "ctc-init",
                "lora",
                "projector-audio",
                "projector.json",
                "recipe.toml",
                "summary.json"
            ]
        );
        assert_eq!(
            run.leftover_checkpoint_folders(),
            vec![d.join(".checkpoint-6.del")]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! The run folder of `anymal align` and `anymal tune`: the one place that knows its layout.
//! Training writes it, inference and evaluation read it, `merge` finds the LoRA in it.
//!
//! ```text
//! <run>/recipe.toml                 the resolved recipe
//!       metrics.jsonl               a line per step and per evaluation
//!       loss.png  summary.json      the curves and the final report
//!       checkpoint-<step>/          written as .checkpoint-<step>.tmp, then renamed
//!           optimizer.safetensors  trainer_state.json   + the trainable parts, as below
//!       best/                       the trainable parts at the lowest validation loss so far,
//!           best.json               with its step and loss (written as .best.tmp, then renamed);
//!                                   `--run <run>` loads it when present
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

    /// Complete checkpoints (those with a trainer state), oldest first.
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

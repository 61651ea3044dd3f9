//! Alignment recipes: a TOML file, overridden by `--set a.b=value`, checked field by field.
//!
//! Every alignment recipe has the keys `llm.model`, `encoder.model`, `data.train`, `data.valid`,
//! `train.max_steps`, `train.seed`, `train.batch_size`, `train.lr`, `train.save_every` and
//! `output_dir`, so a run can be pointed elsewhere or shortened without editing the file.
//! Paths may start with `{cache}` (the anymal cache folder, `$ANYMAL_CACHE` or
//! `~/.cache/anymal`); other relative paths are relative to the current directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_adapters::front::deserialize_front;
use anymal_adapters::{FrontStageConfig, PerceiverConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignRecipe {
    /// Modality name (`audio`); its placeholder in prompts is `<audio>`.
    pub modality: String,
    /// Run folder: checkpoints, metrics, the trained projector.
    pub output_dir: String,
    /// Free text shown by `anymal recipes list`.
    #[serde(default)]
    pub description: String,
    pub llm: LlmSection,
    pub encoder: EncoderSection,
    pub projector: ProjectorSection,
    pub data: DataSection,
    pub train: TrainSection,
    /// Optional CTC warm start of the projector before the LLM stage (`[ctc]`).
    #[serde(default)]
    pub ctc: crate::train::ctc_warmup::CtcWarmupConfig,
    /// Bounds on one input file (`[limits]`); unset keys keep the defaults.
    #[serde(default, skip_serializing_if = "LimitsSection::is_empty")]
    pub limits: LimitsSection,
}

/// `[limits]`: the largest input files the decoders accept, over
/// [`MediaLimits`](anymal_encoders::MediaLimits)'s defaults; the `--max-...` flags win over
/// these.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Width x height of one image or video frame.
    pub max_image_pixels: Option<u64>,
    /// Length of one audio clip, in seconds.
    pub max_audio_seconds: Option<f64>,
    /// Rows of one IMU recording, as read and once resampled.
    pub max_imu_rows: Option<u64>,
}

impl LimitsSection {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with the keys this sets replaced.
    pub fn over(&self, base: anymal_encoders::MediaLimits) -> anymal_encoders::MediaLimits {
        anymal_encoders::MediaLimits {
            max_image_pixels: self.max_image_pixels.unwrap_or(base.max_image_pixels),
            max_audio_seconds: self.max_audio_seconds.unwrap_or(base.max_audio_seconds),
            max_imu_rows: self.max_imu_rows.unwrap_or(base.max_imu_rows),
        }
    }

    fn check(&self) -> Result<()> {
        if let Some((key, what)) = self.over(Default::default()).problem() {
            bail!("limits.{key} {what}");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    /// GGUF file, HF folder, hub id or short name (smollm2, gemma3).
    pub model: String,
    /// Re-quantize the frozen linear layers on load (e.g. `q8_0`, `q4k`); empty keeps the file's.
    #[serde(default)]
    pub requant: String,
    /// Recompute blocks in backward: less memory, about 2x slower.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Arithmetic of the frozen layers' products in the training step: `f32` (exact for the
    /// stored weights) or `int8` (Q4_1, Q5_0, Q4_K and Q8_0 layers through the int8 kernel, with
    /// activations and gradients rounded to int8; README, Performance).
    #[serde(default, with = "compute_name")]
    pub compute: anymal_quant::Compute,
}

/// `llm.compute` as its name in recipes.
mod compute_name {
    use anymal_quant::Compute;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Compute, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&c.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compute, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSection {
    /// Encoder folder/file or short name (whisper-tiny-en, whisper-base).
    pub model: String,
    /// Cache the frozen encoder's outputs on disk, keyed by file content and encoder id.
    #[serde(default = "yes")]
    pub feature_cache: bool,
    /// Modality-specific encoder settings (image size, video frames, IMU rate...), checked by
    /// the modality when it builds the encoder.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub options: toml::Table,
}

impl EncoderSection {
    /// `options` as JSON, the form modalities read.
    pub fn options_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(&self.options)?)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorSection {
    /// linear | mlp2x_gelu | perceiver | qwen2_audio | ultravox
    pub kind: String,
    /// LLM tokens per item (AnyMAL: 32 for audio) for `pool`, `concat` and the Perceiver.
    #[serde(default = "default_num_tokens")]
    pub num_tokens: usize,
    /// How frames become tokens (not the Perceiver): `pool` / `concat` give `num_tokens` per
    /// item; `stack` / `avg_pool` keep a rate of one token per `stride` frames. Default: the
    /// kind's own (`qwen2_audio`: avg_pool 2, `ultravox`: stack 8), else `pool`.
    #[serde(default)]
    pub reduce: String,
    /// Frames per token for `concat` (default 1), `stack` and `avg_pool` (default: the kind's,
    /// else required).
    #[serde(default)]
    pub stride: Option<usize>,
    /// Ultravox's hidden width (SwiGLU halves it); default 4 x the LLM's width.
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default)]
    pub perceiver: Option<PerceiverConfig>,
    /// A trainable stage in front of the projection, trained with it, e.g.
    /// `[projector.front.imu_encoder]` (1-D convolutions + transformer); its input width is the
    /// features' (`[projector.imu_encoder]` is read as well).
    #[serde(
        default,
        alias = "imu_encoder",
        deserialize_with = "deserialize_front",
        skip_serializing_if = "Option::is_none"
    )]
    pub front: Option<FrontStageConfig>,
    /// Start from these weights (a `projector.safetensors` of an earlier run, or any
    /// safetensors with the same parameter names, e.g. a pretrained `imu_encoder.*`): every
    /// parameter found there is loaded, the rest keep their fresh initialization.
    #[serde(default)]
    pub init_from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSONL manifests (one `{"<modality>": "path", "text": "..."}` per line), or Parquet
    /// shards: a `.parquet` file or a glob of them (`data/train-*.parquet`).
    pub train: String,
    pub valid: String,
    /// Which JSONL keys / Parquet columns hold the media and the text, when they are not the
    /// modality's name and `text`: `{ audio = "audio", text = "sentence" }`.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, String>,
    /// More training manifests, used with `train` (e.g. a synthesized corpus from
    /// `anymal data tts` beside the real recordings); each is checked on its own.
    #[serde(default)]
    pub train_extra: Vec<String>,
    /// User turn with the placeholder; the item's text is the answer.
    pub prompt: String,
    /// Wrap the prompt in the LLM's chat template (when it has one).
    #[serde(default = "yes")]
    pub chat_template: bool,
    /// Answers are cut to this many tokens.
    #[serde(default = "default_max_text_tokens")]
    pub max_text_tokens: usize,
    /// Stop with an error when more than this fraction of a manifest is bad.
    #[serde(default = "default_max_bad_fraction")]
    pub max_bad_fraction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub max_steps: u64,
    pub seed: u64,
    /// Items per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub adam_eps: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    /// Cosine decay ends at `lr * min_lr_ratio`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Global gradient-norm clipping; 0 disables.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Evaluate on `data.valid` every N steps (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Validation items used per evaluation (0: all).
    #[serde(default)]
    pub eval_items: usize,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: u64,
    /// Checkpoints kept on disk (oldest removed first).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Stop cleanly (with a checkpoint) after this many minutes; 0: no limit.
    #[serde(default)]
    pub max_minutes: f64,
    /// Stop (with a checkpoint) after this many evaluations in a row without a better
    /// validation loss; 0: never. `best/` keeps the weights of the best evaluation either way.
    #[serde(default)]
    pub early_stopping: u64,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_num_tokens() -> usize {
    32
}
fn default_max_text_tokens() -> usize {
    64
}
fn default_max_bad_fraction() -> f64 {
    0.05
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_keep() -> usize {
    2
}

impl AlignRecipe {
    /// Read `path`, apply `key=value` overrides, check.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        load_recipe(path, sets, Self::parse)
    }

    pub fn parse(text: &str, sets: &[String]) -> Result<Self> {
        let r: AlignRecipe = parse_with_sets(text, sets)?;
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<()> {
        self.train.check()?;
        self.ctc.check()?;
        self.limits.check()?;
        check_bad_fraction(self.data.max_bad_fraction)?;
        crate::data::manifest::Columns::with_overrides(&self.modality, &self.data.columns)?;
        if self.projector.num_tokens == 0 {
            bail!("projector.num_tokens must be >= 1");
        }
        Ok(())
    }

    /// `data.prompt` must hold the modality's placeholder (`<audio>`) exactly once.
    pub fn check_prompt(&self, placeholder: &str) -> Result<()> {
        let n = self.data.prompt.matches(placeholder).count();
        if n != 1 {
            bail!(
                "data.prompt must contain the placeholder {placeholder} exactly once (found {n})"
            );
        }
        Ok(())
    }

    pub fn output_dir(&self) -> PathBuf {
        expand_path(&self.output_dir)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// An instruction-tuning recipe (`anymal tune`): the frozen LLM, aligned projectors that go
/// on training (or stay frozen), an optional LoRA, conversations as data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneRecipe {
    pub output_dir: String,
    #[serde(default)]
    pub description: String,
    pub llm: LlmSection,
    /// Aligned projectors (run folders of `anymal align`), one per modality in the data.
    #[serde(default)]
    pub projectors: Vec<TuneProjectorSection>,
    /// Absent: only the projectors train.
    #[serde(default)]
    pub lora: Option<LoraSection>,
    pub data: TuneDataSection,
    pub train: TrainSection,
    /// Bounds on one input file (`[limits]`), as in an alignment recipe.
    #[serde(default, skip_serializing_if = "LimitsSection::is_empty")]
    pub limits: LimitsSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneProjectorSection {
    /// A projector folder (`projector.json` + `projector.safetensors`).
    pub from: String,
    /// Keep training it (AnyMAL's second stage does); false freezes it.
    #[serde(default = "yes")]
    pub train: bool,
    /// Its learning rate; 0 takes `train.lr`.
    #[serde(default)]
    pub lr: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub r: usize,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// A list of module names (`["q_proj", "v_proj"]`), a regex over full module paths, or
    /// "all-linear" (AnyMAL's choice), as PEFT reads `target_modules`.
    #[serde(default = "all_linear")]
    pub target_modules: toml::Value,
    #[serde(default)]
    pub use_rslora: bool,
    /// The adapters' learning rate; 0 takes `train.lr`. LoRA usually wants a different one
    /// from the projectors (AnyMAL: 1e-5 with a 70B LLM).
    #[serde(default)]
    pub lr: f64,
    /// Start from a PEFT folder (same rank and targets) instead of a fresh adapter.
    #[serde(default)]
    pub init_from: String,
}

impl LoraSection {
    pub fn spec(&self) -> Result<anymal_llm::LoraSpec> {
        if self.r == 0 {
            bail!("lora.r must be >= 1 (leave out [lora] to train the projectors only)");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("lora.dropout must be within [0, 1)");
        }
        let targets =
            anymal_llm::TargetModules::from_json(&serde_json::to_value(&self.target_modules)?)
                .context("lora.target_modules")?;
        Ok(anymal_llm::LoraSpec {
            cfg: anymal_quant::LoraConfig {
                r: self.r,
                alpha: self.alpha,
                dropout: self.dropout,
                use_rslora: self.use_rslora,
            },
            targets,
        })
    }
}

fn all_linear() -> toml::Value {
    toml::Value::String("all-linear".into())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneDataSection {
    /// LLaVA-style conversations (JSON array or JSONL), media paths relative to the file.
    pub train: String,
    pub valid: String,
    #[serde(default = "yes")]
    pub chat_template: bool,
    /// Each assistant turn is cut to this many tokens.
    #[serde(default = "default_max_answer_tokens")]
    pub max_answer_tokens: usize,
    /// Conversations longer than this (tokens, media slots included) are skipped.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default = "default_max_bad_fraction")]
    pub max_bad_fraction: f64,
}

fn default_max_answer_tokens() -> usize {
    128
}
fn default_max_seq_len() -> usize {
    512
}

impl TuneRecipe {
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        load_recipe(path, sets, Self::parse)
    }

    pub fn parse(text: &str, sets: &[String]) -> Result<Self> {
        let r: TuneRecipe = parse_with_sets(text, sets)?;
        r.train.check()?;
        r.limits.check()?;
        check_bad_fraction(r.data.max_bad_fraction)?;
        if let Some(l) = &r.lora {
            l.spec()?;
            if l.lr < 0.0 || !l.lr.is_finite() {
                bail!("lora.lr must be >= 0 (0 takes train.lr)");
            }
        }
        for (i, p) in r.projectors.iter().enumerate() {
            if p.lr < 0.0 || !p.lr.is_finite() {
                bail!("projectors[{i}].lr must be >= 0 (0 takes train.lr)");
            }
        }
        if r.lora.is_none() && !r.projectors.iter().any(|p| p.train) {
            bail!("nothing to train: no [lora] section and every projector has train = false");
        }
        Ok(r)
    }

    pub fn output_dir(&self) -> PathBuf {
        expand_path(&self.output_dir)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

impl TrainSection {
    /// Settings that would run but silently do something else than asked (an untrained
    /// projector saved as the result, clipping off, a learning rate that grows) are errors
    /// naming the key.
    fn check(&self) -> Result<()> {
        if self.batch_size == 0 || self.grad_accum == 0 {
            bail!("train.batch_size and train.grad_accum must be >= 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("train.lr must be a positive number, got {}", self.lr);
        }
        if self.max_steps == 0 {
            bail!(
                "train.max_steps must be >= 1 (0 would save the untrained projector as the result)"
            );
        }
        if self.keep_checkpoints == 0 {
            bail!("train.keep_checkpoints must be >= 1 (a run keeps at least its newest checkpoint to resume from)");
        }
        let in_range = |key: &str, v: f64, lo: f64, hi: f64, what: &str| -> Result<()> {
            if !(v >= lo && v <= hi) {
                bail!("train.{key} must be {what}, got {v}");
            }
            Ok(())
        };
        in_range(
            "max_grad_norm",
            self.max_grad_norm,
            0.0,
            f64::MAX,
            ">= 0 (0 turns clipping off)",
        )?;
        in_range("weight_decay", self.weight_decay, 0.0, f64::MAX, ">= 0")?;
        in_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, "within [0, 1]")?;
        in_range(
            "beta1",
            self.beta1,
            0.0,
            1.0 - f64::EPSILON,
            "within [0, 1)",
        )?;
        in_range(
            "beta2",
            self.beta2,
            0.0,
            1.0 - f64::EPSILON,
            "within [0, 1)",
        )?;
        in_range(
            "adam_eps",
            self.adam_eps,
            f64::MIN_POSITIVE,
            f64::MAX,
            "a positive number",
        )?;
        in_range(
            "max_minutes",
            self.max_minutes,
            0.0,
            f64::MAX,
            ">= 0 (0: no limit)",
        )?;
        Ok(())
    }
}

fn check_bad_fraction(f: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&f) {
        bail!("data.max_bad_fraction must be within [0, 1]");
    }
    Ok(())
}

/// Read a recipe file and parse it with `parse`, errors naming the file.
fn load_recipe<T>(
    path: &Path,
    sets: &[String],
    parse: impl FnOnce(&str, &[String]) -> Result<T>,
) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read recipe", path.display()))?;
    parse(&text, sets).with_context(|| format!("recipe {}", path.display()))
}

/// TOML text with `--set` overrides applied, deserialized (unknown fields are errors).
fn parse_with_sets<T: serde::de::DeserializeOwned>(text: &str, sets: &[String]) -> Result<T> {
    let mut table: toml::Table = toml::from_str(text).context("invalid TOML")?;
    for s in sets {
        apply_set(&mut table, s)?;
    }
    // Through serde_path_to_error, so that a type error names its key (`train.batch_size:
    // invalid type: string "eight", expected usize`), from the file or from --set alike.
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = inner.message().trim().to_string();
        if path == "." || what.contains(&format!("`{path}`")) {
            anyhow::anyhow!("{what}")
        } else {
            anyhow::anyhow!("{path}: {what}")
        }
    })
}

/// `a.b.c=value`: value parsed as a TOML literal (number, bool, quoted string, array), else
/// taken as a bare string, so `--set data.train=my.jsonl` works without quotes.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) = set
        .split_once('=')
        .with_context(|| format!("--set '{set}': expected key=value"))?;
    let key = key.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set '{set}': empty key");
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let res = set_path(&mut root, &parts, value, key);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    res
}

/// Put `value` at `parts` below `cur`, walking tables by name (creating missing ones) and
/// lists by index (`projectors.0.from`).
fn set_path(cur: &mut toml::Value, parts: &[&str], value: toml::Value, key: &str) -> Result<()> {
    let (p, rest) = parts.split_first().expect("non-empty key");
    let slot = match cur {
        toml::Value::Table(t) if rest.is_empty() => {
            t.insert(p.to_string(), value);
            return Ok(());
        }
        toml::Value::Table(t) => t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new())),
        toml::Value::Array(a) => {
            let i: usize = p
                .parse()
                .with_context(|| format!("--set {key}: '{p}' indexes a list; expected a number"))?;
            let n = a.len();
            let slot = a.get_mut(i).with_context(|| {
                format!("--set {key}: index {i} is past the list's {n} entries")
            })?;
            if rest.is_empty() {
                *slot = value;
                return Ok(());
            }
            slot
        }
        _ => bail!("--set {key}: '{p}' is below a value that is not a table"),
    };
    set_path(slot, rest, value, key)
}

/// Expand a leading `{cache}` and `~/`.
pub fn expand_path(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("{cache}") {
        return anymal_util::fs::cache_dir().join(rest.trim_start_matches('/'));
    }
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
modality = "audio"
output_dir = "runs/x"
[llm]
model = "smollm2"
[encoder]
model = "whisper-tiny-en"
[projector]
kind = "linear"
num_tokens = 32
[data]
train = "a.jsonl"
valid = "b.jsonl"
prompt = "<audio>\nTranscribe."
[train]
max_steps = 100
seed = 1
batch_size = 4
lr = 1e-4
save_every = 50
"#;

    #[test]
    fn overrides_apply_with_and_without_quotes() -> Result<()> {
        let r = AlignRecipe::parse(
            MINIMAL,
            &[
                "train.max_steps=20".into(),
                "data.train=my.jsonl".into(),
                "train.lr=3e-4".into(),
                "llm.gradient_checkpointing=true".into(),
                "output_dir=\"out dir\"".into(),
            ],
        )?;
        assert_eq!(r.train.max_steps, 20);
        assert_eq!(r.data.train, "my.jsonl");
        assert_eq!(r.train.lr, 3e-4);
        assert!(r.llm.gradient_checkpointing);
        assert_eq!(r.output_dir, "out dir");
        Ok(())
    }

    #[test]
    fn bad_fields_are_named() {
        let e = AlignRecipe::parse(MINIMAL, &["train.max_stepz=3".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("max_stepz"), "{e:#}");
        let e = AlignRecipe::parse(MINIMAL, &["train.batch_size=\"four\"".into()]).unwrap_err();
        assert!(
            format!("{e:#}").contains("train.batch_size: invalid type"),
            "{e:#}"
        );
        for (set, want) in [
            ("train.batch_size=-1", "train.batch_size: invalid value"),
            ("train.batch_size=2.5", "train.batch_size: invalid type"),
            ("train.max_steps=abc", "train.max_steps: invalid type"),
            ("train.lr=1e-3 extra", "train.lr: invalid type"),
            ("train={max_steps=1}", "train: missing field `seed`"),
        ] {
            let e = AlignRecipe::parse(MINIMAL, &[set.into()]).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{set}: {e:#}");
        }
        let r = AlignRecipe::parse(MINIMAL, &["data.prompt=Transcribe.".into()]).unwrap();
        let e = r.check_prompt("<audio>").unwrap_err();
        assert!(format!("{e:#}").contains("<audio>"), "{e:#}");
        let e = AlignRecipe::parse(MINIMAL, &["train.max_steps".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("key=value"), "{e:#}");
    }

    #[test]
    fn settings_that_would_silently_misbehave_are_refused_by_key() {
        for (set, want) in [
            ("train.max_steps=0", "train.max_steps must be >= 1"),
            (
                "train.keep_checkpoints=0",
                "train.keep_checkpoints must be >= 1",
            ),
            (
                "train.max_grad_norm=nan",
                "train.max_grad_norm must be >= 0",
            ),
            (
                "train.max_grad_norm=-1.0",
                "train.max_grad_norm must be >= 0",
            ),
            ("train.weight_decay=-0.1", "train.weight_decay must be >= 0"),
            (
                "train.min_lr_ratio=2.0",
                "train.min_lr_ratio must be within [0, 1]",
            ),
            ("train.beta2=1.0", "train.beta2 must be within [0, 1)"),
            (
                "train.adam_eps=0.0",
                "train.adam_eps must be a positive number",
            ),
            ("train.max_minutes=-5.0", "train.max_minutes must be >= 0"),
        ] {
            let e = AlignRecipe::parse(MINIMAL, &[set.into()]).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{set}: {e:#}");
        }
        // The documented zeros stay accepted.
        for set in [
            "train.save_every=0",
            "train.eval_every=0",
            "train.max_grad_norm=0.0",
        ] {
            AlignRecipe::parse(MINIMAL, &[set.into()]).unwrap_or_else(|e| panic!("{set}: {e:#}"));
        }
    }

    #[test]
    fn overrides_reach_into_lists() -> Result<()> {
        let text = r#"
output_dir = "runs/t"
[llm]
model = "smollm2"
[[projectors]]
from = "runs/a"
[lora]
r = 8
alpha = 16
[data]
train = "a.json"
valid = "b.json"
[train]
max_steps = 10
seed = 1
batch_size = 2
lr = 1e-4
save_every = 5
"#;
        let r = TuneRecipe::parse(
            text,
            &[
                "projectors.0.from=runs/b".into(),
                "lora.target_modules=[\"q_proj\"]".into(),
            ],
        )?;
        assert_eq!(r.projectors[0].from, "runs/b");
        assert!(
            matches!(r.lora.as_ref().unwrap().spec()?.targets, anymal_llm::TargetModules::Names(ref n) if n == &["q_proj"])
        );
        let e = TuneRecipe::parse(text, &["projectors.3.from=x".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("past the list"), "{e:#}");
        let e = TuneRecipe::parse(text, &["lora.r=0".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("lora.r"), "{e:#}");
        Ok(())
    }

    #[test]
    fn cache_paths_expand() {
        let p = expand_path("{cache}/data/x.jsonl");
        assert!(p.ends_with("data/x.jsonl"));
        assert!(!p.to_string_lossy().contains("{cache}"));
    }
}

//! `anymal eval`: score a model on held-out data. A manifest (`--manifest`) scores
//! transcriptions or captions (WER, CIDEr-D, attribute accuracy); instruction data (`--data`)
//! scores answers per task. Either kind of run folder works with either kind of data.

use std::path::PathBuf;

use anyhow::{Context, Result};
use anymal_encoders::ModalityRegistry;

use super::model_args::load_model;
use crate::multimodal::ModelSpec;
use crate::run_dir::{write_json, RunDir};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Run folder of `anymal align` (projector.json + projector.safetensors) or of
    /// `anymal tune` (model.json).
    #[arg(long)]
    pub run: PathBuf,
    /// JSONL manifest with the references (`text`), or Parquet shards (a `.parquet` file or
    /// a quoted glob): scores an aligned projector.
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub manifest: Option<PathBuf>,
    /// The manifest's key or Parquet column holding the media or the text when it is not the
    /// modality's name or `text`, as `KEY=NAME` (repeatable): `--column text=sentence`.
    #[arg(long = "column", value_name = "KEY=NAME")]
    pub columns: Vec<String>,
    /// Instruction data (LLaVA-style JSON/JSONL): the last answer of each conversation is the
    /// reference; scores are grouped by `--group-by`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Record field that groups instruction scores.
    #[arg(long, default_value = "task")]
    pub group_by: String,
    /// LLM override (default: the one the run names).
    #[arg(long)]
    pub llm: Option<String>,
    #[arg(long)]
    pub requant: Option<String>,
    /// Arithmetic of prompt processing (128+ tokens at once): int8 or f32 (as `generate`).
    #[arg(long, default_value = "int8")]
    pub compute: anymal_quant::Compute,
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    /// Items generated at once (continuous batching: one joins as another finishes). The
    /// generations are the same as one at a time; more items at once is faster up to a point
    /// (README, Performance).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub batch: u64,
    /// Evaluate only the first N items (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Also score whether each generation names the item's value of this manifest field
    /// (repeatable; default: `label` when every item has one).
    #[arg(long = "attribute")]
    pub attributes: Vec<String>,
}

pub fn run(a: EvalArgs, registry: &ModalityRegistry) -> Result<()> {
    let model = load_model(
        registry,
        &ModelSpec {
            run: Some(a.run.clone()),
            llm: a.llm.clone(),
            requant: a.requant.clone(),
            compute: a.compute,
            ..Default::default()
        },
    )?;
    let run = RunDir::new(&a.run);
    let (report_json, markdown, predictions) = match (&a.data, &a.manifest) {
        (Some(data), _) => {
            let (preds, report_path) = run.eval_outputs(data);
            let r = crate::eval::instruct::evaluate_instruct(
                &model,
                registry,
                data,
                &a.group_by,
                a.max_tokens,
                a.batch as usize,
                a.limit,
                &preds,
            )?;
            write_json(&report_path, &r)?;
            (serde_json::to_string_pretty(&r)?, r.markdown(), preds)
        }
        (None, manifest) => {
            let manifest = manifest.clone().unwrap_or_default();
            let (preds, report_path) = run.eval_outputs(&manifest);
            let mut columns = std::collections::BTreeMap::new();
            for c in &a.columns {
                let (k, v) = c
                    .split_once('=')
                    .with_context(|| format!("--column {c}: expected KEY=NAME"))?;
                columns.insert(k.trim().to_string(), v.trim().to_string());
            }
            let r = crate::eval::run::evaluate(
                &model,
                &manifest,
                &columns,
                a.max_tokens,
                a.batch as usize,
                a.limit,
                &a.attributes,
                &preds,
            )?;
            write_json(&report_path, &r)?;
            (serde_json::to_string_pretty(&r)?, r.markdown(), preds)
        }
    };
    eprintln!("predictions in {}", predictions.display());
    println!("{report_json}");
    print!("{markdown}");
    Ok(())
}

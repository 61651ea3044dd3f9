//! `anymal eval`: score a trained projector on a manifest (WER, CIDEr-D).

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::run::evaluate;
use crate::infer::AlignedModel;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Run folder of `anymal align` (or any folder with projector.json + projector.safetensors).
    #[arg(long)]
    pub run: PathBuf,
    /// JSONL manifest with the references (`text`).
    #[arg(long)]
    pub manifest: PathBuf,
    /// LLM override (default: the one in projector.json).
    #[arg(long)]
    pub llm: Option<String>,
    #[arg(long)]
    pub requant: Option<String>,
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    /// Evaluate only the first N items (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Also score whether each generation names the item's value of this manifest field
    /// (repeatable; default: `label` when every item has one).
    #[arg(long = "attribute")]
    pub attributes: Vec<String>,
}

pub fn run(a: EvalArgs, registry: &anymal_encoders::ModalityRegistry) -> Result<()> {
    let m = AlignedModel::load(registry, &a.run, a.llm.as_deref(), a.requant.as_deref())?;
    let stem = a
        .manifest
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "manifest".into());
    let preds = a.run.join(format!("predictions-{stem}.jsonl"));
    let report = evaluate(
        &m,
        &a.manifest,
        a.max_tokens,
        a.limit,
        &a.attributes,
        &preds,
    )?;
    let json = serde_json::to_string_pretty(&report)?;
    anymal_adapters::projector::write_atomic(
        &a.run.join(format!("eval-{stem}.json")),
        json.as_bytes(),
    )?;
    eprintln!("predictions in {}", preds.display());
    println!("{json}");
    print!("{}", report.markdown());
    Ok(())
}

//! `anymal eval`: score a trained projector on a manifest (WER, CIDEr-D), or an
//! instruction-tuned model on held-out conversations (accuracy per task).

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::run::evaluate;
use crate::infer::AlignedModel;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Run folder of `anymal align` (projector.json + projector.safetensors) or of
    /// `anymal tune` (model.json).
    #[arg(long)]
    pub run: PathBuf,
    /// JSONL manifest with the references (`text`): scores an aligned projector.
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub manifest: Option<PathBuf>,
    /// Instruction data (LLaVA-style JSON/JSONL): the last answer of each conversation is the
    /// reference; scores are grouped by `--group-by`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Record field that groups instruction scores.
    #[arg(long, default_value = "task")]
    pub group_by: String,
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
    if let Some(data) = &a.data {
        return run_instruct(&a, data, registry);
    }
    let manifest = a.manifest.clone().unwrap_or_default();
    let m = AlignedModel::load(registry, &a.run, a.llm.as_deref(), a.requant.as_deref())?;
    let stem = manifest
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "manifest".into());
    let preds = a.run.join(format!("predictions-{stem}.jsonl"));
    let report = evaluate(&m, &manifest, a.max_tokens, a.limit, &a.attributes, &preds)?;
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

/// `--data`: an instruction-tuned run (or an aligned projector used as a chat model).
fn run_instruct(
    a: &EvalArgs,
    data: &std::path::Path,
    registry: &anymal_encoders::ModalityRegistry,
) -> Result<()> {
    let tuned = a.run.join(crate::assistant::MODEL_FILE).is_file();
    let spec = crate::assistant::AssistantSpec {
        run: tuned.then(|| a.run.clone()),
        projectors: if tuned { vec![] } else { vec![a.run.clone()] },
        llm: a.llm.clone(),
        requant: a.requant.clone(),
        ..Default::default()
    };
    let m = crate::assistant::Assistant::load(registry, &spec)?;
    let stem = data
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "data".into());
    let preds = a.run.join(format!("predictions-{stem}.jsonl"));
    let report = crate::eval::instruct::evaluate_instruct(
        &m,
        registry,
        data,
        &a.group_by,
        a.max_tokens,
        a.limit,
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

//! `anymal tune`: instruction tuning (LoRA on the frozen LLM + the aligned projectors).

use std::path::PathBuf;

use anyhow::Result;

use crate::recipe::TuneRecipe;
use crate::train::tune::{run as run_tune, TuneOptions};

#[derive(clap::Args)]
pub struct TuneArgs {
    /// Recipe TOML file, or a recipe name from `anymal recipes list`.
    #[arg(long)]
    pub recipe: String,
    /// Override a recipe key, e.g. `--set lora.r=8 --set projectors.0.from=runs/align-audio`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run folder (overrides the recipe's `output_dir`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Continue from the latest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: TuneArgs, registry: &anymal_encoders::ModalityRegistry) -> Result<()> {
    let path = super::recipes::resolve(&a.recipe)?;
    let mut sets = a.sets.clone();
    if let Some(o) = &a.output {
        sets.push(format!(
            "output_dir={}",
            toml::Value::String(o.to_string_lossy().to_string())
        ));
    }
    let recipe = TuneRecipe::load(&path, &sets)?;
    let summary = run_tune(
        &recipe,
        &TuneOptions {
            resume: a.resume,
            registry: registry.clone(),
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

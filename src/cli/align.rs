//! `anymal align`: train a projector that aligns a modality to the frozen LLM.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::recipe::AlignRecipe;
use crate::train::align::{run as run_align, AlignOptions};

#[derive(clap::Args)]
pub struct AlignArgs {
    /// Modality to align (must match the recipe's `modality`).
    #[arg(long)]
    pub modality: String,
    /// Recipe TOML file, or a recipe name from `anymal recipes list`.
    #[arg(long)]
    pub recipe: String,
    /// Override a recipe key, e.g. `--set train.max_steps=20 --set data.train=my.jsonl`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run folder (overrides the recipe's `output_dir`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Continue from the latest checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: AlignArgs, registry: &anymal_encoders::ModalityRegistry) -> Result<()> {
    let path = super::recipes::resolve(&a.recipe)?;
    let mut sets = a.sets.clone();
    if let Some(o) = &a.output {
        sets.push(format!("output_dir={}", toml_string(&o.to_string_lossy())));
    }
    let recipe = AlignRecipe::load(&path, &sets)?;
    if recipe.modality != a.modality {
        bail!(
            "{}: is a recipe for modality '{}', not '{}'",
            path.display(),
            recipe.modality,
            a.modality
        );
    }
    let summary = run_align(
        &recipe,
        &AlignOptions {
            resume: a.resume,
            registry: registry.clone(),
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// A TOML basic string literal for `--set`.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

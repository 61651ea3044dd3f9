//! `anymal tune`: instruction tuning (LoRA on the frozen LLM + the aligned projectors).

use anyhow::Result;
use anymal_encoders::ModalityRegistry;

use super::recipes::RecipeArgs;
use crate::recipe::TuneRecipe;
use crate::train::tune::{run as run_tune, TuneOptions};

#[derive(clap::Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
}

pub fn run(a: TuneArgs, registry: &ModalityRegistry) -> Result<()> {
    let (path, sets) = a.recipe.resolve()?;
    let recipe = TuneRecipe::load(&path, &sets)?;
    super::apply_limits(Some(&recipe.limits));
    let opts = TuneOptions {
        resume: a.recipe.resume,
        overwrite: a.recipe.overwrite,
        registry: registry.clone(),
    };
    let summary = run_tune(&recipe, &opts)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

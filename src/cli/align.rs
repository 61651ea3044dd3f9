//! `anymal align`: train a projector that aligns a modality to the frozen LLM.

use anyhow::{bail, Result};
use anymal_encoders::ModalityRegistry;

use super::recipes::RecipeArgs;
use crate::recipe::AlignRecipe;
use crate::train::align::{run as run_align, AlignOptions};

#[derive(clap::Args)]
pub struct AlignArgs {
    /// Modality to align (must match the recipe's `modality`).
    #[arg(long)]
    pub modality: String,
    #[command(flatten)]
    pub recipe: RecipeArgs,
}

pub fn run(a: AlignArgs, registry: &ModalityRegistry) -> Result<()> {
    let (path, sets) = a.recipe.resolve()?;
    let recipe = AlignRecipe::load(&path, &sets)?;
    super::apply_limits(Some(&recipe.limits));
    if recipe.modality != a.modality {
        bail!(
            "{}: is a recipe for modality '{}', not '{}'",
            path.display(),
            recipe.modality,
            a.modality
        );
    }
    let opts = AlignOptions {
        resume: a.recipe.resume,
        overwrite: a.recipe.overwrite,
        registry: registry.clone(),
    };
    let summary = run_align(&recipe, &opts)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

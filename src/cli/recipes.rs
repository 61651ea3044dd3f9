//! `anymal recipes list|show`: the recipes that ship in `recipes/`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct RecipesArgs {
    #[command(subcommand)]
    pub command: RecipesCommand,
}

#[derive(clap::Subcommand)]
pub enum RecipesCommand {
    /// Every recipe with its modality, models and description.
    List,
    /// Print a recipe (by name or path).
    Show { name: String },
}

/// Where shipped recipes live: `$ANYMAL_RECIPES`, else `recipes/` in the current directory,
/// else the source tree this binary was built from.
pub fn recipes_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ANYMAL_RECIPES") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("recipes");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

fn all() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![recipes_dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A recipe's name: its path below the recipes folder without `.toml` (`align/audio_...`).
fn name_of(p: &Path) -> String {
    let base = recipes_dir();
    p.strip_prefix(&base)
        .unwrap_or(p)
        .with_extension("")
        .to_string_lossy()
        .to_string()
}

/// A path that exists, or a recipe name (with or without its `align/` folder).
pub fn resolve(name: &str) -> Result<PathBuf> {
    let p = PathBuf::from(name);
    if p.is_file() {
        return Ok(p);
    }
    let found: Vec<PathBuf> = all()
        .into_iter()
        .filter(|r| {
            let n = name_of(r);
            n == name || n.rsplit('/').next() == Some(name)
        })
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 if p.is_dir() => bail!(
            "{name}: is a folder, not a recipe (a .toml file or a shipped recipe's name; see `anymal recipes list`)"
        ),
        0 => bail!("{name}: no such recipe file or name (see `anymal recipes list`)"),
        _ => bail!("{name}: ambiguous recipe name: {found:?}"),
    }
}

pub fn run(a: RecipesArgs) -> Result<()> {
    match a.command {
        RecipesCommand::List => {
            let list = all();
            if list.is_empty() {
                bail!("{}: no recipes found", recipes_dir().display());
            }
            for p in list {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("{}: cannot read", p.display()))?;
                let v: toml::Table = toml::from_str(&text)
                    .with_context(|| format!("{}: invalid TOML", p.display()))?;
                let get = |sec: &str, key: &str| -> String {
                    v.get(sec)
                        .and_then(|s| s.get(key))
                        .and_then(|x| x.as_str())
                        .unwrap_or("-")
                        .to_string()
                };
                let top = |key: &str| {
                    v.get(key)
                        .and_then(|x| x.as_str())
                        .unwrap_or("-")
                        .to_string()
                };
                println!(
                    "{:<48} {:<6} encoder={:<16} llm={:<10} {}",
                    name_of(&p),
                    top("modality"),
                    get("encoder", "model"),
                    get("llm", "model"),
                    top("description")
                );
            }
        }
        RecipesCommand::Show { name } => {
            let p = resolve(&name)?;
            print!(
                "{}",
                std::fs::read_to_string(&p)
                    .with_context(|| format!("{}: cannot read", p.display()))?
            );
        }
    }
    Ok(())
}

/// The flags of the training commands: which recipe, what to override, where to write.
#[derive(clap::Args)]
pub struct RecipeArgs {
    /// Recipe TOML file, or a recipe name from `anymal recipes list`.
    #[arg(long)]
    pub recipe: String,
    /// Override a recipe key, e.g. `--set train.max_steps=20 --set data.train=my.jsonl`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run folder (overrides the recipe's `output_dir`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Continue from the latest intact checkpoint in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// Replace the earlier run in the run folder (its results, recipe, metrics, checkpoints);
    /// without it such a folder is refused. Other files in the folder are left alone.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
}

impl RecipeArgs {
    /// The recipe file and the `--set` overrides, `--output` among them.
    pub fn resolve(&self) -> Result<(PathBuf, Vec<String>)> {
        let path = resolve(&self.recipe)?;
        let mut sets = self.sets.clone();
        if let Some(o) = &self.output {
            let literal = toml::Value::String(o.to_string_lossy().to_string());
            sets.push(format!("output_dir={literal}"));
        }
        Ok((path, sets))
    }
}

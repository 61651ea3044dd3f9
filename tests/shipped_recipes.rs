//! Every recipe that ships parses and passes the recipe checks, so a typo in a key (recipes
//! refuse unknown keys) is caught here rather than by a user's first run.

use std::path::Path;

use anymal::recipe::{AlignRecipe, TuneRecipe};

fn recipes(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_recipe_parses() {
    let align = recipes("align");
    assert!(align.len() >= 6, "{align:?}");
    for p in align {
        let r = AlignRecipe::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        // The run folder is named after the recipe file.
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            r.output_dir.ends_with(&stem),
            "{}: output_dir {}",
            p.display(),
            r.output_dir
        );
    }
    let tune = recipes("tune");
    assert!(!tune.is_empty());
    for p in tune {
        TuneRecipe::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
    }
}

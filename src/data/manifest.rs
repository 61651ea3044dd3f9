//! Alignment manifests: JSONL, one `{"<modality>": "path", "text": "caption"}` per line, paths
//! relative to the manifest, or Parquet shards ([`super::parquet`]). Reading checks each line
//! and reports problems with line numbers; bad lines are skipped and counted rather than
//! stopping a long run, unless too many are bad.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::conversation::MediaRef;

/// Which JSONL keys or Parquet columns hold an item's media and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub modality: String,
    /// Default: the modality's name (`audio`).
    pub media: String,
    /// Default: `text`.
    pub text: String,
}

impl Columns {
    /// The defaults: `{"<modality>": ..., "text": ...}`.
    pub fn of(modality: &str) -> Self {
        Self {
            modality: modality.to_string(),
            media: modality.to_string(),
            text: "text".to_string(),
        }
    }

    /// The defaults with a recipe's `data.columns` (`{audio = "audio", text = "sentence"}`)
    /// laid over them; a key other than the modality and `text` is an error.
    pub fn with_overrides(
        modality: &str,
        overrides: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut c = Self::of(modality);
        for (k, v) in overrides {
            if v.trim().is_empty() {
                bail!("data.columns.{k}: empty column name");
            }
            if k == modality {
                c.media = v.clone();
            } else if k == "text" {
                c.text = v.clone();
            } else {
                bail!("data.columns: unknown key '{k}' (the keys are '{modality}' and 'text')");
            }
        }
        Ok(c)
    }
}

/// One usable line of a manifest.
#[derive(Debug, Clone)]
pub struct ManifestItem {
    /// 1-based line number in a JSONL manifest, 0-based row number in a Parquet shard.
    pub line: usize,
    /// Where the item came from, for messages: `<manifest>:<line>` or `<shard>#row <i>`.
    pub at: String,
    /// The media file, or the name embedded bytes go by.
    pub path: PathBuf,
    pub text: String,
    /// The line's other string fields (`label`, `motion`...), for attribute scores.
    pub fields: std::collections::BTreeMap<String, String>,
    /// The media's bytes when the data file embeds them (Parquet).
    pub embedded: Option<Arc<[u8]>>,
}

impl ManifestItem {
    /// The item's media for the encoder.
    pub fn media(&self, modality: &str) -> MediaRef {
        MediaRef {
            modality: modality.to_string(),
            path: self.path.clone(),
            embedded: self.embedded.clone(),
        }
    }
}

/// A manifest after validation.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub items: Vec<ManifestItem>,
    /// `"<manifest>:<line>: <problem>"` for every skipped line.
    pub problems: Vec<String>,
    /// What an item is called in messages: `lines` (JSONL), `rows` (Parquet).
    pub unit: &'static str,
}

impl Manifest {
    /// Read the JSONL manifest `path` with the default keys; see [`Manifest::read_jsonl`].
    pub fn read(path: &Path, modality: &str) -> Result<Self> {
        Self::read_jsonl(path, &Columns::of(modality))
    }

    /// Read the JSONL manifest `path`, keeping lines whose JSON has a non-empty text and a
    /// media key naming a readable file. Blank lines are ignored. (Parquet shards:
    /// [`super::read_manifest`].)
    pub fn read_jsonl(path: &Path, columns: &Columns) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read manifest", path.display()))?;
        // Windows editors start UTF-8 files with a byte-order mark, which JSON does not allow.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let base = path.parent().unwrap_or(Path::new("."));
        let mut items = Vec::new();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line, base, columns) {
                Ok(item) => items.push(ManifestItem {
                    line: line_no,
                    at: format!("{}:{line_no}", path.display()),
                    ..item
                }),
                Err(e) => problems.push(format!("{}:{line_no}: {e}", path.display())),
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            items,
            problems,
            unit: "lines",
        })
    }

    /// Lines read in total (usable + skipped).
    pub fn total(&self) -> usize {
        self.items.len() + self.problems.len()
    }

    /// Mark an item bad after the fact (e.g. its audio failed to decode).
    pub fn reject(&mut self, index: usize, why: &str) {
        let item = self.items.remove(index);
        let file = item.path.display().to_string();
        // Decoder errors already name the file; say it once.
        let what = if why.contains(&file) {
            why.to_string()
        } else {
            format!("{file}: {why}")
        };
        // Embedded media is named after its row (`<shard>#row 5/clip.wav`): the row once.
        if file.starts_with(&item.at) {
            self.problems.push(what);
        } else {
            self.problems.push(format!("{}: {what}", item.at));
        }
    }

    /// Error when nothing is usable or more than `max_bad` of the lines are bad; the message
    /// lists the first problems.
    pub fn check_bad_fraction(&self, max_bad: f64) -> Result<()> {
        let total = self.total();
        let bad = self.problems.len();
        if self.items.is_empty() || (total > 0 && bad as f64 / total as f64 > max_bad) {
            let first: Vec<&str> = self.problems.iter().take(5).map(|s| s.as_str()).collect();
            bail!(
                "{}: {bad} of {total} {} are bad (limit {:.0}%): {}",
                self.path.display(),
                self.unit,
                max_bad * 100.0,
                if first.is_empty() {
                    "no usable lines".to_string()
                } else {
                    first.join("; ")
                }
            );
        }
        Ok(())
    }
}

/// Lines of the `train`, `valid` and `test` manifests a corpus builder writes, kept in memory
/// and written at the end, each file atomically (a killed build never leaves half a manifest).
#[derive(Debug, Default)]
pub struct SplitManifests {
    lines: std::collections::BTreeMap<&'static str, String>,
}

impl SplitManifests {
    /// Append one JSON line to `split`'s manifest.
    pub fn push(&mut self, split: &'static str, line: &serde_json::Value) {
        let f = self.lines.entry(split).or_default();
        f.push_str(&line.to_string());
        f.push('\n');
    }

    /// Lines pushed to `split` so far.
    pub fn count(&self, split: &str) -> usize {
        self.lines.get(split).map_or(0, |f| f.lines().count())
    }

    /// Write `out/{train,valid,test}.jsonl` (empty ones included).
    pub fn write(&self, out: &Path) -> Result<()> {
        for split in ["train", "valid", "test"] {
            let text = self.lines.get(split).map(|s| s.as_str()).unwrap_or("");
            anymal_util::fs::write_atomic(&out.join(format!("{split}.jsonl")), text.as_bytes())?;
        }
        Ok(())
    }
}

fn parse_line(line: &str, base: &Path, columns: &Columns) -> Result<ManifestItem> {
    let (modality, text_key) = (columns.media.as_str(), columns.text.as_str());
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON ({e})"))?;
    let obj = v.as_object().context("not a JSON object")?;
    let rel = obj
        .get(modality)
        .with_context(|| format!("no \"{modality}\" field"))?
        .as_str()
        .with_context(|| format!("\"{modality}\" is not a string"))?;
    let text = obj
        .get(text_key)
        .with_context(|| format!("no \"{text_key}\" field"))?
        .as_str()
        .with_context(|| format!("\"{text_key}\" is not a string"))?
        .trim();
    if text.is_empty() {
        bail!("empty text");
    }
    let path = base.join(rel);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => bail!("{}: not a file", path.display()),
        Err(e) => bail!("{}: {e}", path.display()),
    }
    if let Err(e) = std::fs::File::open(&path) {
        bail!("{}: cannot open: {e}", path.display());
    }
    let fields = obj
        .iter()
        .filter(|(k, _)| k.as_str() != modality && k.as_str() != text_key)
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect();
    Ok(ManifestItem {
        line: 0,
        at: String::new(),
        path,
        text: text.to_string(),
        fields,
        embedded: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_reported_with_numbers() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("anymal-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("a.wav"), b"x")?;
        let m = dir.join("m.jsonl");
        std::fs::write(
            &m,
            concat!(
                "{\"audio\": \"a.wav\", \"text\": \"hello\"}\n",
                "not json\n",
                "\n",
                "{\"audio\": \"missing.wav\", \"text\": \"x\"}\n",
                "{\"audio\": \"a.wav\", \"text\": \"  \"}\n",
                "{\"image\": \"a.wav\", \"text\": \"x\"}\n",
                "[1, 2]\n"
            ),
        )?;
        let man = Manifest::read(&m, "audio")?;
        assert_eq!(man.items.len(), 1);
        assert_eq!(man.items[0].line, 1);
        assert_eq!(man.problems.len(), 5);
        assert!(
            man.problems[0].contains(":2: not JSON"),
            "{:?}",
            man.problems
        );
        assert!(man.problems[1].contains(":4:") && man.problems[1].contains("missing.wav"));
        assert!(man.problems[2].contains(":5: empty text"));
        assert!(man.problems[3].contains(":6: no \"audio\" field"));
        assert!(man.problems[4].contains(":7: not a JSON object"));
        let err = man.check_bad_fraction(0.5).unwrap_err().to_string();
        assert!(err.contains("5 of 6 lines are bad"), "{err}");
        assert!(man.check_bad_fraction(0.9).is_ok());
        // A byte-order mark before the first line (Windows editors write one).
        std::fs::write(&m, "\u{feff}{\"audio\": \"a.wav\", \"text\": \"hello\"}\n")?;
        let man = Manifest::read(&m, "audio")?;
        assert_eq!(
            (man.items.len(), man.problems.len()),
            (1, 0),
            "{:?}",
            man.problems
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}

//! The speech corpus that ships in Debian: Asterisk's English prompts (voice "Allison", 568
//! clips, 8 kHz WAV) with their exact transcripts (`core-sounds-en.txt.gz`, lines
//! `name: text`). `anymal data speech` turns it into train / valid / test manifests.
//!
//! The split is by clip and fixed: a clip's split is decided by a hash of its name, so it
//! never changes with the order of files, the machine or the number of clips. Descriptions
//! rather than transcripts (`[this is a simple beep tone]`, `(1 second of silence)`) are left
//! out: there is nothing to transcribe.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_util::rng::fnv1a;

/// One clip of the corpus.
#[derive(Debug, Clone)]
pub struct Clip {
    pub name: String,
    pub wav: PathBuf,
    pub text: String,
}

/// Sizes of what was written.
#[derive(Debug, Default, Clone)]
pub struct SpeechSplits {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Transcript lines without a WAV, WAVs without a transcript, descriptions.
    pub skipped: Vec<String>,
}

/// Parse `name: text` lines (comments start with `;`).
pub fn parse_transcripts(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .filter_map(|l| {
            let (name, t) = l.split_once(':')?;
            let (name, t) = (name.trim(), t.trim());
            (!name.is_empty() && !t.is_empty() && !name.contains(' '))
                .then(|| (name.to_string(), t.to_string()))
        })
        .collect()
}

/// Whether a transcript describes a sound instead of words.
pub fn is_description(text: &str) -> bool {
    let t = text.trim();
    (t.starts_with('[') && t.ends_with(']')) || (t.starts_with('(') && t.ends_with(')'))
}

/// `train` (80%), `valid` (10%) or `test` (10%) for a clip name.
pub fn split_of(name: &str) -> &'static str {
    match fnv1a(name.as_bytes()) % 10 {
        0 => "test",
        1 => "valid",
        _ => "train",
    }
}

/// Find the corpus under `root` (as fetched by `scripts/fetch-assets.sh speech`): the
/// `en_US_f_Allison` folder and the transcript file, anywhere below `root`.
pub fn locate(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let hint = "fetch it with: scripts/fetch-assets.sh speech";
    if !root.is_dir() {
        bail!("{}: no speech corpus here ({hint})", root.display());
    }
    let mut voice = None;
    let mut transcripts = None;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .with_context(|| format!("{}: cannot list", d.display()))?
            .flatten()
        {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                if name == "en_US_f_Allison" && voice.is_none() {
                    voice = Some(p.clone());
                }
                stack.push(p);
            } else if name == "core-sounds-en.txt.gz" || name == "core-sounds-en.txt" {
                transcripts = Some(p);
            }
        }
    }
    match (voice, transcripts) {
        (Some(v), Some(t)) => Ok((v, t)),
        (None, _) => bail!(
            "{}: no en_US_f_Allison folder of WAVs below it ({hint})",
            root.display()
        ),
        (_, None) => bail!(
            "{}: no core-sounds-en.txt(.gz) below it ({hint})",
            root.display()
        ),
    }
}

fn read_transcripts(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .with_context(|| format!("{}: not a readable gzip text", path.display()))?;
        Ok(s)
    } else {
        String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", path.display()))
    }
}

/// Clips with a transcript and a WAV, sorted by name, plus what was skipped and why.
pub fn clips(root: &Path) -> Result<(Vec<Clip>, Vec<String>)> {
    let (voice, tr) = locate(root)?;
    let transcripts = parse_transcripts(&read_transcripts(&tr)?);
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (name, text) in &transcripts {
        let wav = voice.join(format!("{name}.wav"));
        if is_description(text) {
            skipped.push(format!("{name}: a description, not speech: {text}"));
        } else if !wav.is_file() {
            skipped.push(format!("{name}: no {}", wav.display()));
        } else {
            out.push(Clip {
                name: name.clone(),
                wav,
                text: text.clone(),
            });
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no clip has both a WAV and a transcript",
            root.display()
        );
    }
    Ok((out, skipped))
}

/// Write `train.jsonl`, `valid.jsonl`, `test.jsonl` into `out` (paths relative to `out`).
pub fn write_manifests(root: &Path, out: &Path) -> Result<SpeechSplits> {
    let (clips, skipped) = clips(root)?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let out_abs = anymal_util::fs::absolute_normalized(out)?;
    let mut files = super::manifest::SplitManifests::default();
    for c in &clips {
        let split = split_of(&c.name);
        let rel =
            anymal_util::fs::relative_to(&anymal_util::fs::absolute_normalized(&c.wav)?, &out_abs);
        let line =
            serde_json::json!({"audio": rel.to_string_lossy(), "text": c.text, "id": c.name});
        files.push(split, &line);
    }
    files.write(out)?;
    Ok(SpeechSplits {
        train: files.count("train"),
        valid: files.count("valid"),
        test: files.count("test"),
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_parse_and_descriptions_are_recognised() {
        let t = parse_transcripts("; header\n\ndigits/1: one\nbeep: [this is a simple beep tone]\nsilence/1: (1 second of silence)\nat-tone: At the sound of the tone: now.\n");
        assert_eq!(t.len(), 4);
        assert_eq!(t["digits/1"], "one");
        assert_eq!(t["at-tone"], "At the sound of the tone: now.");
        assert!(is_description(&t["beep"]) && is_description(&t["silence/1"]));
        assert!(!is_description(&t["digits/1"]));
    }

    #[test]
    fn split_is_fixed_and_roughly_80_10_10() {
        let names: Vec<String> = (0..2000).map(|i| format!("clip-{i}")).collect();
        let test = names.iter().filter(|n| split_of(n) == "test").count();
        let valid = names.iter().filter(|n| split_of(n) == "valid").count();
        assert!(
            (150..250).contains(&test) && (150..250).contains(&valid),
            "{test} {valid}"
        );
        assert_eq!(split_of("digits/1"), split_of("digits/1"));
    }
}

//! Alignment data as Parquet shards in the layout Hugging Face `datasets` writes, read from
//! shards `pyarrow` wrote (scripts/fixtures/make_parquet_fixtures.py, committed under
//! tests/fixtures/parquet/) out of real clips of the speech corpus (scripts/fetch-assets.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anymal::data::manifest::{Columns, Manifest};
use anymal::data::read_manifest;
use anymal::features::cache::FeatureCache;
use anymal_encoders::audio::{load_audio_16k, load_audio_16k_bytes};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

/// The corpus clip a fixture row was made from.
fn clip(id: &str) -> PathBuf {
    let rel = expected()["clips"][id].as_str().unwrap().to_string();
    anymal::recipe::expand_path("{cache}").join(rel)
}

fn sentence_columns() -> Columns {
    let mut o = BTreeMap::new();
    o.insert("text".to_string(), "sentence".to_string());
    Columns::with_overrides("audio", &o).unwrap()
}

fn train_shards() -> Manifest {
    read_manifest(
        &fixtures().join("train-*-of-00002.parquet"),
        &sentence_columns(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn a_glob_of_shards_reads_every_good_row_and_reports_bad_ones_by_shard_and_row() {
    let m = train_shards();
    let exp = expected();
    let rows = exp["rows"].as_array().unwrap();
    // The six good rows, plus the row whose bytes are not audio: only decoding finds that.
    assert_eq!(m.items.len(), rows.len() + 1, "{:?}", m.problems);
    for (item, row) in m.items.iter().zip(rows) {
        let shard = row["shard"].as_str().unwrap();
        assert_eq!(item.text, row["text"].as_str().unwrap());
        assert_eq!(item.line as u64, row["row"].as_u64().unwrap());
        assert!(
            item.at.ends_with(&format!("{shard}#row {}", row["row"])),
            "{}",
            item.at
        );
        assert!(item.embedded.is_some(), "{}: bytes not embedded", item.at);
        // The original file name rides along, so its extension hints the decoder.
        let ext = row["format"].as_str().unwrap();
        assert_eq!(
            item.path.extension().unwrap(),
            ext,
            "{}",
            item.path.display()
        );
    }
    assert_eq!(m.problems.len(), 2, "{:?}", m.problems);
    assert!(
        m.problems[0].contains("train-00001-of-00002.parquet#row 1: no media"),
        "{:?}",
        m.problems
    );
    assert!(
        m.problems[1].contains("train-00001-of-00002.parquet#row 3: empty text"),
        "{:?}",
        m.problems
    );
}

#[test]
fn embedded_bytes_decode_to_the_samples_of_the_original_files() {
    let m = train_shards();
    for (item, row) in m.items.iter().zip(expected()["rows"].as_array().unwrap()) {
        let file = clip(row["clip"].as_str().unwrap());
        let from_file = load_audio_16k(&file).unwrap();
        let from_row = load_audio_16k_bytes(item.embedded.as_deref().unwrap(), &item.path).unwrap();
        // WAV rows are the file's bytes; FLAC rows are lossless: the same samples either way.
        assert_eq!(from_row, from_file, "{}", item.at);
        if row["format"] == "wav" {
            // The feature cache keys by the bytes' hash: the row and the file share an entry.
            assert_eq!(
                FeatureCache::bytes_key(item.embedded.as_deref().unwrap()),
                FeatureCache::content_key(&file).unwrap()
            );
        }
    }
    let bad = m.items.last().unwrap();
    let err = load_audio_16k_bytes(bad.embedded.as_deref().unwrap(), &bad.path).unwrap_err();
    assert!(
        err.to_string()
            .contains("train-00001-of-00002.parquet#row 5/noise.wav"),
        "{err}"
    );
}

#[test]
fn a_binary_column_with_the_default_names_reads_too() {
    let m = read_manifest(&fixtures().join("binary.parquet"), &Columns::of("audio")).unwrap();
    assert_eq!(m.items.len(), 2);
    assert!(m.problems.is_empty());
    let first = &expected()["rows"][0];
    assert_eq!(m.items[0].text, first["text"].as_str().unwrap());
    assert_eq!(
        load_audio_16k_bytes(m.items[0].embedded.as_deref().unwrap(), &m.items[0].path).unwrap(),
        load_audio_16k(&clip(first["clip"].as_str().unwrap())).unwrap()
    );
}

#[test]
fn broken_shards_and_wrong_columns_are_errors_naming_shard_and_column() {
    let err = |path: &Path, columns: &Columns| {
        format!("{:#}", read_manifest(path, columns).expect_err("must fail"))
    };
    let truncated = err(&fixtures().join("truncated.parquet"), &sentence_columns());
    assert!(
        truncated.contains("truncated.parquet: not a readable Parquet file"),
        "{truncated}"
    );
    let wrong = err(&fixtures().join("wrong-type.parquet"), &sentence_columns());
    assert!(
        wrong.contains("wrong-type.parquet: column 'sentence' is INT64, expected a string column"),
        "{wrong}"
    );
    // The default text column does not exist in the `datasets`-style shards: the error lists
    // what the shard has and how to name the columns.
    let missing = err(
        &fixtures().join("train-00000-of-00002.parquet"),
        &Columns::of("audio"),
    );
    assert!(
        missing.contains("no column 'text' (the shard has client_id, audio, sentence)")
            && missing.contains("data.columns"),
        "{missing}"
    );
    let media_as_text = {
        let mut o = BTreeMap::new();
        o.insert("audio".to_string(), "sentence".to_string());
        o.insert("text".to_string(), "client_id".to_string());
        Columns::with_overrides("audio", &o).unwrap()
    };
    // A string media column is a path; these are not files: every row is bad, by row.
    let m = read_manifest(
        &fixtures().join("train-00000-of-00002.parquet"),
        &media_as_text,
    )
    .unwrap();
    assert!(m.items.is_empty());
    assert_eq!(m.problems.len(), 3);
    assert!(
        m.problems[0].contains("#row 0: 'sentence' names"),
        "{:?}",
        m.problems
    );
    let none = err(&fixtures().join("nothing-*.parquet"), &sentence_columns());
    assert!(
        none.contains("nothing-*.parquet: no file matches"),
        "{none}"
    );
    let mut o = BTreeMap::new();
    o.insert("image".to_string(), "x".to_string());
    let key = format!("{:#}", Columns::with_overrides("audio", &o).unwrap_err());
    assert!(key.contains("data.columns: unknown key 'image'"), "{key}");
}

#[test]
fn align_trains_from_parquet_shards() {
    let dir = std::env::temp_dir().join(format!("anymal-parquet-align-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("run");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes/align/audio_whisper-tiny-en_smollm2-135m.toml");
    let mut args: Vec<String> = vec![
        "align".into(),
        "--modality".into(),
        "audio".into(),
        "--recipe".into(),
        recipe.display().to_string(),
        "--output".into(),
        out.display().to_string(),
    ];
    for s in [
        format!(
            "data.train={}",
            fixtures().join("train-*-of-00002.parquet").display()
        ),
        format!(
            "data.valid={}",
            fixtures().join("train-00000-of-00002.parquet").display()
        ),
        "data.columns={audio = \"audio\", text = \"sentence\"}".into(),
        "data.max_bad_fraction=0.4".into(),
        "train.max_steps=2".into(),
        "train.batch_size=2".into(),
        "train.eval_every=2".into(),
        "train.save_every=2".into(),
        "train.warmup_steps=1".into(),
        "train.max_minutes=0".into(),
        "data.max_text_tokens=16".into(),
    ] {
        args.push("--set".into());
        args.push(s);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_anymal"))
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // The bad rows are reported by shard and row (the last one when its bytes fail to decode).
    for bad in [
        "skipped {shard}#row 1: no media",
        "skipped {shard}#row 3: empty text",
        "skipped {shard}#row 5/noise.wav: unsupported codec",
    ] {
        let bad = bad.replace(
            "{shard}",
            &fixtures()
                .join("train-00001-of-00002.parquet")
                .display()
                .to_string(),
        );
        assert!(stderr.contains(&bad), "{bad} not reported:\n{stderr}");
    }
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["train_items"], 6, "{summary}");
    assert_eq!(summary["train_skipped"], 3, "{summary}");
    assert!(out.join("projector.safetensors").is_file());

    // `eval` reads a shard with the same column names.
    let shard = fixtures().join("train-00000-of-00002.parquet");
    let o = Command::new(env!("CARGO_BIN_EXE_anymal"))
        .args(["eval", "--run"])
        .arg(&out)
        .arg("--manifest")
        .arg(&shard)
        .args(["--column", "text=sentence", "--max-tokens", "4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let preds =
        std::fs::read_to_string(out.join("predictions-train-00000-of-00002.jsonl")).unwrap();
    let texts: Vec<String> = preds
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let exp = expected();
    let want: Vec<&str> = exp["rows"].as_array().unwrap()[..3]
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, want);
    let _ = std::fs::remove_dir_all(&dir);
}

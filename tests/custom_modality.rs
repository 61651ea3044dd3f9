//! The plug-in API from outside the toolkit: `examples/custom_modality.rs` registers a
//! "precomputed embeddings" modality and runs the whole CLI with it. Here it aligns the real
//! SmolLM2 to features read from `.npy` and `.safetensors` files -- the rows of
//! scikit-learn's handwritten digits, 8 tokens of 8 pixels each -- for a few steps, skipping
//! and counting the bad files, and then evaluates and generates from the run.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

/// The example binary: cargo builds examples next to the test binaries' `deps/` folder.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir
        .join("examples")
        .join(format!("custom_modality{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} missing: `cargo test` builds examples; run `cargo build --release --example custom_modality`",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anymal-custom-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("feats")).unwrap();
    d
}

/// Features of real digits as files; half `.npy`, half `.safetensors`. Returns manifest lines.
fn write_items(dir: &Path, digits: &[anymal::data::digits::Digit]) -> Vec<String> {
    digits
        .iter()
        .map(|d| {
            let px: Vec<f32> = d.pixels.iter().map(|&v| v as f32 / 16.0).collect();
            let t = Tensor::from_vec(px, (8, 8), &Device::Cpu).unwrap();
            let rel = if d.index % 2 == 0 {
                let rel = format!("feats/{:04}.npy", d.index);
                t.write_npy(dir.join(&rel)).unwrap();
                rel
            } else {
                let rel = format!("feats/{:04}.safetensors", d.index);
                candle_core::safetensors::save(
                    &std::collections::HashMap::from([("x".to_string(), t)]),
                    dir.join(&rel),
                )
                .unwrap();
                rel
            };
            serde_json::json!({
                "embedding": rel,
                "text": anymal::data::digits::caption(d.label),
                "label": anymal::data::digits::DIGIT_WORDS[d.label as usize],
            })
            .to_string()
        })
        .collect()
}

const RECIPE: &str = r#"
modality = "embedding"
output_dir = "run"
[llm]
model = "smollm2"
[encoder]
model = "precomputed"
feature_cache = false
[encoder.options]
dim = 8
[projector]
kind = "linear"
num_tokens = 8
reduce = "pool"
[data]
train = "train.jsonl"
valid = "valid.jsonl"
prompt = "<embedding>\nCaption:"
chat_template = false
max_bad_fraction = 0.2
[train]
max_steps = 3
seed = 1
batch_size = 4
lr = 2e-3
eval_every = 0
save_every = 3
"#;

#[test]
fn a_modality_added_outside_the_crates_aligns_evaluates_and_generates() {
    let csv = anymal::recipe::expand_path("{cache}/data/digits/digits.csv.gz");
    let digits = anymal::data::digits::read(&csv).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = workdir("align");
    let mut train = write_items(&dir, &digits[..20]);
    let valid = write_items(&dir, &digits[20..24]);
    // Bad files: the wrong width, a NaN, an unknown extension. Skipped and counted.
    Tensor::zeros((8, 5), candle_core::DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(dir.join("feats/narrow.npy"))
        .unwrap();
    Tensor::from_vec(vec![f32::NAN; 64], (8, 8), &Device::Cpu)
        .unwrap()
        .write_npy(dir.join("feats/nan.npy"))
        .unwrap();
    std::fs::write(dir.join("feats/notes.txt"), "not features").unwrap();
    for f in ["narrow.npy", "nan.npy", "notes.txt"] {
        train.push(serde_json::json!({"embedding": format!("feats/{f}"), "text": "x"}).to_string());
    }
    std::fs::write(dir.join("train.jsonl"), train.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("valid.jsonl"), valid.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("recipe.toml"), RECIPE).unwrap();

    // The stock binary does not know the modality and says which ones it knows.
    let (code, _, err) = run(Command::new(env!("CARGO_BIN_EXE_anymal"))
        .current_dir(&dir)
        .args([
            "align",
            "--modality",
            "embedding",
            "--recipe",
            "recipe.toml",
        ]));
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown modality 'embedding'") && err.contains("audio"),
        "{err}"
    );

    let (code, out, err) = run(Command::new(example_bin()).current_dir(&dir).args([
        "align",
        "--modality",
        "embedding",
        "--recipe",
        "recipe.toml",
    ]));
    assert_eq!(code, 0, "align failed:\n{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["steps"], 3, "{out}");
    assert_eq!(summary["train_items"], 20, "{out}");
    assert_eq!(summary["train_skipped"], 3, "{out}");
    assert!(summary["final_train_loss"].as_f64().unwrap().is_finite());
    for bad in ["narrow.npy", "nan.npy", "notes.txt"] {
        assert!(err.contains(bad), "no message names {bad}:\n{err}");
    }
    assert!(err.contains("width 5"), "{err}");
    assert!(err.contains("NaN"), "{err}");

    let run_dir = dir.join("run");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("projector.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["modality"], "embedding");
    assert_eq!(cfg["d_enc"], 8);
    assert_eq!(cfg["encoder_options"]["dim"], 8);

    // Eval scores the `label` field by default; generate takes the file for <embedding>.
    let (code, out, err) = run(Command::new(example_bin()).current_dir(&dir).args([
        "eval",
        "--run",
        "run",
        "--manifest",
        "valid.jsonl",
        "--max-tokens",
        "8",
    ]));
    assert_eq!(code, 0, "eval failed:\n{err}");
    let report: serde_json::Value = serde_json::from_str(out.split("\n|").next().unwrap()).unwrap();
    assert_eq!(report["items"], 4, "{out}");
    let acc = report["attributes"]["label"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{out}");

    let (code, out, err) = run(Command::new(example_bin()).current_dir(&dir).args([
        "generate",
        "--projector",
        "run",
        "--prompt",
        "<embedding>\nCaption:",
        "--input",
        "feats/0020.npy",
        "--max-tokens",
        "6",
    ]));
    assert_eq!(code, 0, "generate failed:\n{err}");
    assert!(!out.trim().is_empty(), "no text generated");
}

//! The plug-in API from outside the toolkit: `examples/custom_modality.rs` registers a
//! "precomputed embeddings" modality and runs the whole CLI with it. Here it aligns the real
//! SmolLM2 to features read from `.npy` and `.safetensors` files -- the rows of
//! scikit-learn's handwritten digits, 8 tokens of 8 pixels each -- for a few steps, skipping
//! and counting the bad files, and then evaluates, generates and serves from the run (an
//! `input_embedding` content part over the OpenAI API).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
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

    // Served: the modality's content part is `input_embedding`, its format defaults to the
    // modality's own (npy).
    let server = Served::start(&dir, &["--projector", "run", "--max-tokens", "6"]);
    let npy = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("feats/0020.npy")).unwrap());
    for part in [
        serde_json::json!({"type": "input_embedding", "input_embedding": {"data": npy, "format": "npy"}}),
        serde_json::json!({"type": "input_embedding", "input_embedding": {"data": npy}}),
    ] {
        let body = serde_json::json!({"model": "run", "messages": [{"role": "user", "content": [
            part, {"type": "text", "text": "Caption:"}]}]});
        let (status, reply) = server.post(&body.to_string());
        assert_eq!(status, 200, "{reply}\n{}", server.log());
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(!text.trim().is_empty(), "{reply}");
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 8, "{reply}");
    }
    // A modality the model has no projector for is named.
    let audio = serde_json::json!({"model": "run", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": npy}}]}]});
    let (status, reply) = server.post(&audio.to_string());
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply.contains("audio") && reply.contains("embedding"),
        "{reply}"
    );
}

/// The example binary serving on a free port; killed on drop.
struct Served {
    child: std::process::Child,
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    fn start(dir: &Path, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(example_bin())
            .current_dir(dir)
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let Ok(addr) = rx.recv_timeout(std::time::Duration::from_secs(180)) else {
            let _ = child.kill();
            panic!("serve did not start:\n{}", log.lock().unwrap());
        };
        Self { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POST a chat completion: (status, body).
    fn post(&self, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

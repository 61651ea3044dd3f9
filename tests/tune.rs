//! `anymal tune` end to end on real assets (SmolLM2, Whisper tiny.en, the Asterisk corpus): a
//! projector aligned for two steps, then LoRA instruction tuning on a few conversations with
//! gradient checkpointing on (the adapters' gradients cross the checkpointing op through their
//! side store). What is checked is the machinery: bad records skipped and named, the run
//! folder, a kill and `--resume` giving exactly the uninterrupted result, evaluation and
//! merging from the run folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anymal::data::speech;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anymal"))
}

fn run(args: &[String]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn short_clips(n: usize) -> Vec<speech::Clip> {
    let root = anymal::recipe::expand_path("{cache}/data/asterisk-en");
    let (clips, _) =
        speech::clips(&root).unwrap_or_else(|e| panic!("{e:#} (run scripts/fetch-assets.sh)"));
    let short: Vec<speech::Clip> = clips
        .into_iter()
        .filter(|c| {
            std::fs::metadata(&c.wav)
                .map(|m| m.len() < 30_000)
                .unwrap_or(false)
        })
        .take(n)
        .collect();
    assert_eq!(short.len(), n, "corpus too small");
    short
}

/// A two-step aligned audio projector.
fn align(dir: &Path, clips: &[speech::Clip]) -> PathBuf {
    let line = |c: &speech::Clip| serde_json::json!({"audio": c.wav, "text": c.text}).to_string();
    let m = dir.join("align.jsonl");
    std::fs::write(&m, clips.iter().map(line).collect::<Vec<_>>().join("\n")).unwrap();
    let out = dir.join("aligned");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes/align/audio_whisper-tiny-en_smollm2-135m.toml");
    let mut a = s(&["align", "--modality", "audio", "--recipe"]);
    a.push(recipe.display().to_string());
    a.push("--output".into());
    a.push(out.display().to_string());
    for kv in [
        format!("data.train={}", m.display()),
        format!("data.valid={}", m.display()),
        "train.max_steps=2".into(),
        "train.batch_size=4".into(),
        "train.save_every=0".into(),
        "train.max_minutes=0".into(),
    ] {
        a.push("--set".into());
        a.push(kv);
    }
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
    out
}

fn conv(c: &speech::Clip, q: &str, a: &str) -> serde_json::Value {
    serde_json::json!({"id": c.name, "task": q.split_whitespace().next().unwrap().to_lowercase(), "audio": c.wav,
        "conversations": [{"from": "human", "value": format!("<audio>\n{q}")}, {"from": "gpt", "value": a}]})
}

fn tune_args(
    recipe: &Path,
    projector: &Path,
    train: &Path,
    valid: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a = s(&["tune", "--recipe"]);
    a.push(recipe.display().to_string());
    a.push("--output".into());
    a.push(out.display().to_string());
    for kv in [
        format!("projectors.0.from={}", projector.display()),
        format!("data.train={}", train.display()),
        format!("data.valid={}", valid.display()),
        "lora.r=4".into(),
        "lora.alpha=8".into(),
        "lora.target_modules=[\"q_proj\", \"v_proj\"]".into(),
        // Dropout on: its masks must follow the step for the resumed run to repeat.
        "lora.dropout=0.1".into(),
        "llm.gradient_checkpointing=true".into(),
        "train.max_steps=4".into(),
        "train.batch_size=2".into(),
        "train.save_every=2".into(),
        "train.eval_every=2".into(),
        "train.eval_items=0".into(),
        "train.warmup_steps=1".into(),
        "train.keep_checkpoints=3".into(),
        "train.max_minutes=0".into(),
        "data.max_bad_fraction=0.3".into(),
    ] {
        a.push("--set".into());
        a.push(kv);
    }
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {}", v["step"], v["loss"], v["eval_loss"])
        })
        .collect()
}

#[test]
fn tune_runs_resumes_exactly_evaluates_and_merges() {
    let dir = std::env::temp_dir().join(format!("anymal-tune-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let clips = short_clips(8);
    let projector = align(&dir, &clips);

    let mut train: Vec<serde_json::Value> = clips[..6]
        .iter()
        .map(|c| conv(c, "Repeat what was said.", &c.text))
        .collect();
    train.push(serde_json::json!({"id": "two-turn", "audio": clips[0].wav, "conversations": [
        {"from": "human", "value": "<audio>\nRepeat what was said."}, {"from": "gpt", "value": clips[0].text},
        {"from": "human", "value": "Does the speaker ask for a password? Answer yes or no."}, {"from": "gpt", "value": "No"}]}));
    // Bad records: a missing file, and an image the recipe has no projector for.
    train.push(
        serde_json::json!({"id": "missing", "audio": "nope.wav", "conversations": [
        {"from": "human", "value": "<audio> hi"}, {"from": "gpt", "value": "x"}]}),
    );
    train.push(
        serde_json::json!({"id": "image", "image": clips[0].wav, "conversations": [
        {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]}),
    );
    let valid: Vec<serde_json::Value> = clips[6..]
        .iter()
        .map(|c| conv(c, "Repeat what was said.", &c.text))
        .collect();
    let (tp, vp) = (dir.join("train.json"), dir.join("valid.json"));
    std::fs::write(&tp, serde_json::to_string_pretty(&train).unwrap()).unwrap();
    std::fs::write(&vp, serde_json::to_string_pretty(&valid).unwrap()).unwrap();
    let recipe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/tune/audio-instruct_smollm2-135m.toml");

    // Uninterrupted.
    let a = dir.join("a");
    let (code, out, err) = run(&tune_args(&recipe, &projector, &tp, &vp, &a, &[]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("record 8") && err.contains("nope.wav"),
        "the missing file is named: {err}"
    );
    assert!(
        err.contains("record 9") && err.contains("no image projector"),
        "{err}"
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["train_items"], 7);
    assert_eq!(summary["train_skipped"], 2);
    assert_eq!(
        summary["lora_params"],
        30 * 4 * (576 + 576) + 30 * 4 * (576 + 192)
    );
    for f in [
        "model.json",
        "lora/adapter_config.json",
        "lora/adapter_model.safetensors",
        "projector-audio/projector.json",
        "projector-audio/projector.safetensors",
        "metrics.jsonl",
        "loss.png",
        "summary.json",
        "recipe.toml",
        "checkpoint-4/optimizer.safetensors",
    ] {
        assert!(a.join(f).is_file(), "{f} missing in the run folder");
    }
    let ma = metrics(&a);
    assert_eq!(ma.len(), 4 + 2, "{ma:?}");

    // Killed after its step-2 checkpoint, refused without --resume, then resumed.
    let b = dir.join("b");
    let mut child = bin()
        .args(tune_args(&recipe, &projector, &tp, &vp, &b, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !b.join("checkpoint-2/trainer_state.json").is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no checkpoint-2 after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("model.json").exists(),
        "the run finished before it could be killed"
    );
    let (code, _, err) = run(&tune_args(&recipe, &projector, &tp, &vp, &b, &[]));
    assert_eq!(code, 1);
    assert!(err.contains("--resume"), "{err}");
    let (code, _, err) = run(&tune_args(&recipe, &projector, &tp, &vp, &b, &["--resume"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(
        metrics(&b),
        ma,
        "a resumed run must repeat the uninterrupted one"
    );
    for f in [
        "lora/adapter_model.safetensors",
        "projector-audio/projector.safetensors",
    ] {
        let ta = candle_core::safetensors::load(a.join(f), &candle_core::Device::Cpu).unwrap();
        let tb = candle_core::safetensors::load(b.join(f), &candle_core::Device::Cpu).unwrap();
        assert_eq!(ta.len(), tb.len());
        for (k, x) in &ta {
            let d = anymal_util::testing::max_abs_diff(x, &tb[k]);
            assert_eq!(d, 0.0, "{f} {k} differs after resume");
        }
    }

    // Evaluation from the run folder, grouped by task.
    let mut e = s(&["eval", "--run"]);
    e.push(a.display().to_string());
    e.push("--data".into());
    e.push(vp.display().to_string());
    e.extend(s(&["--max-tokens", "8"]));
    let (code, out, err) = run(&e);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(out.split("\n| task").next().unwrap()).unwrap();
    assert_eq!(report["items"], 2);
    assert!(report["groups"]["repeat"]["accuracy"].is_number(), "{out}");
    assert!(a.join("predictions-valid.jsonl").is_file());

    // Merging the run's LoRA into the GGUF; the drift report has one row per prompt.
    let mut m = s(&["merge", "--llm", "smollm2", "--lora"]);
    m.push(a.display().to_string());
    m.push("--out".into());
    m.push(dir.join("merged.gguf").display().to_string());
    m.extend(s(&["--type", "q8_0"]));
    let (code, out, err) = run(&m);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| prompt"))
            .count(),
        3,
        "{out}"
    );
    let (code, _, err) = run(&s(&[
        "merge",
        "--llm",
        "smollm2",
        "--lora",
        "/nonexistent",
        "--out",
        "x.bin",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains(".gguf or a .safetensors"), "{err}");

    // A finished run whose checkpoints were pruned away is not trained over without
    // --overwrite: its LoRA, model.json and metrics stay as they were.
    for e in std::fs::read_dir(&a).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("checkpoint-") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let kept = [
        "lora/adapter_model.safetensors",
        "model.json",
        "metrics.jsonl",
        "recipe.toml",
    ]
    .map(|f| std::fs::read(a.join(f)).unwrap());
    let (code, _, err) = run(&tune_args(&recipe, &projector, &tp, &vp, &a, &[]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("holds an earlier run") && err.contains("--overwrite"),
        "{err}"
    );
    let now = [
        "lora/adapter_model.safetensors",
        "model.json",
        "metrics.jsonl",
        "recipe.toml",
    ]
    .map(|f| std::fs::read(a.join(f)).unwrap());
    assert!(now == kept, "a refused tune changed the run folder");
    std::fs::remove_dir_all(&dir).ok();
}

//! `anymal align` end to end on real assets: the fetched SmolLM2, Whisper tiny.en and the
//! Asterisk speech corpus (scripts/fetch-assets.sh). Small runs (a dozen clips, a few steps):
//! what is checked is the machinery -- skipped bad items, a kill and `--resume` giving exactly
//! the uninterrupted result, the run folder's files, generation and evaluation from it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anymal::data::speech;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anymal"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anymal-align-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("encoders/tests/fixtures/audio")
        .join(name)
}

/// Manifests from the first clips of the real corpus (short ones, to keep the test quick),
/// plus the given extra lines in train.
fn manifests(dir: &Path, n_train: usize, extra_train: &[String]) -> (PathBuf, PathBuf) {
    let root = anymal::recipe::expand_path("{cache}/data/asterisk-en");
    let (clips, _) = speech::clips(&root).unwrap_or_else(|e| panic!("{e:#}"));
    let short: Vec<&speech::Clip> = clips
        .iter()
        .filter(|c| {
            std::fs::metadata(&c.wav)
                .map(|m| m.len() < 40_000)
                .unwrap_or(false)
        })
        .collect();
    assert!(short.len() >= n_train + 2, "corpus too small");
    let line = |c: &speech::Clip| serde_json::json!({"audio": c.wav, "text": c.text}).to_string();
    let mut train: Vec<String> = short[..n_train].iter().map(|c| line(c)).collect();
    train.extend(extra_train.iter().cloned());
    let valid: Vec<String> = short[n_train..n_train + 2]
        .iter()
        .map(|c| line(c))
        .collect();
    let (t, v) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    std::fs::write(&t, train.join("\n") + "\n").unwrap();
    std::fs::write(&v, valid.join("\n") + "\n").unwrap();
    (t, v)
}

/// `anymal generate` with the projector folder `projector` on a 440 Hz tone.
fn generate_on_tone(projector: &Path, max_tokens: usize) -> (i32, String, String) {
    run(&[
        "generate",
        "--projector",
        &projector.display().to_string(),
        "--audio",
        &fixture("tone440.mp3").display().to_string(),
        "--prompt",
        "Transcript:",
        "--max-tokens",
        &max_tokens.to_string(),
    ])
}

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes/align/audio_whisper-tiny-en_smollm2-135m.toml")
}

/// `run` with owned arguments, as `align_args` builds them.
fn run_owned(args: &[String]) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run(&args)
}

/// `--set` flags for each `key=value`.
fn set_flags(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

/// Copy a folder and everything under it.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn align_args(train: &Path, valid: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "align".into(),
        "--modality".into(),
        "audio".into(),
        "--recipe".into(),
        recipe().display().to_string(),
        "--output".into(),
        out.display().to_string(),
    ];
    for s in [
        format!("data.train={}", train.display()),
        format!("data.valid={}", valid.display()),
        "train.max_steps=4".into(),
        "train.batch_size=4".into(),
        "train.save_every=2".into(),
        "train.eval_every=2".into(),
        "train.warmup_steps=1".into(),
        "train.keep_checkpoints=3".into(),
        "train.max_minutes=0".into(),
        "data.max_text_tokens=16".into(),
    ] {
        a.push("--set".into());
        a.push(s);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let key = if v.get("loss").is_some() {
                "loss"
            } else {
                "eval_loss"
            };
            Some((v["step"].as_u64()?, format!("{key}={}", v[key])))
        })
        .collect()
}

#[test]
fn kill_and_resume_gives_the_uninterrupted_result_and_bad_items_are_skipped() {
    let dir = workdir("resume");
    let extra = vec![
        format!(
            "{{\"audio\": \"{}\", \"text\": \"corrupt\"}}",
            fixture("bad_not_audio.wav").display()
        ),
        "this line is not json".to_string(),
    ];
    let (train, valid) = manifests(&dir, 8, &extra);

    // Uninterrupted.
    let a = dir.join("a");
    let args = align_args(&train, &valid, &a, &["--set", "data.max_bad_fraction=0.25"]);
    let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, stdout, stderr) = run(&args_ref);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Both bad lines are reported with their line numbers and counted.
    assert!(
        stderr.contains("train.jsonl:9:") && stderr.contains("train.jsonl:10: not JSON"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["train_items"], 8);
    assert_eq!(summary["train_skipped"], 2);
    assert_eq!(summary["steps"], 4);
    for f in [
        "projector.safetensors",
        "projector.json",
        "metrics.jsonl",
        "recipe.toml",
        "loss.png",
        "summary.json",
    ] {
        assert!(a.join(f).is_file(), "{f} missing in the run folder");
    }
    assert!(a.join("checkpoint-4/optimizer.safetensors").is_file());
    let la = losses(&a);
    assert_eq!(
        la.iter().filter(|(_, l)| l.starts_with("loss=")).count(),
        4,
        "{la:?}"
    );

    // Killed after its step-2 checkpoint appears, then resumed.
    let b = dir.join("b");
    let args = align_args(&train, &valid, &b, &["--set", "data.max_bad_fraction=0.25"]);
    let mut child = bin()
        .args(&args)
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
        !b.join("projector.safetensors").exists(),
        "the run finished before it could be killed; the test proves nothing"
    );
    // Without --resume an existing run is refused rather than overwritten.
    let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, stderr) = run(&args_ref);
    assert_eq!(code, 1);
    assert!(stderr.contains("--resume"), "{stderr}");
    let args = align_args(
        &train,
        &valid,
        &b,
        &["--set", "data.max_bad_fraction=0.25", "--resume"],
    );
    let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, stderr) = run(&args_ref);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert_eq!(
        losses(&b),
        la,
        "resumed run's losses differ from the uninterrupted run's"
    );
    let wa = std::fs::read(a.join("projector.safetensors")).unwrap();
    let wb = std::fs::read(b.join("projector.safetensors")).unwrap();
    assert!(
        wa == wb,
        "resumed run's projector differs from the uninterrupted run's"
    );

    // The trained projector runs: generate and eval.
    let (code, stdout, stderr) = generate_on_tone(&a, 8);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("prompt:"), "{stderr}");
    let _ = stdout;
    let bad = fixture("bad_truncated.flac");
    let (code, stdout, stderr) = run(&[
        "generate",
        "--projector",
        &a.display().to_string(),
        "--audio",
        &bad.display().to_string(),
        "--prompt",
        "Transcript:",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.is_empty() && !stderr.contains("panicked"),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(&bad.display().to_string()),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&[
        "eval",
        "--run",
        &a.display().to_string(),
        "--manifest",
        &valid.display().to_string(),
        "--max-tokens",
        "8",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.split("\n|").next().unwrap()).unwrap();
    assert_eq!(report["items"], 2);
    assert!(report["wer"].as_f64().unwrap() >= 0.0);
    assert!(stdout.contains("| manifest | items | WER"), "{stdout}");
    assert!(a.join("predictions-valid.jsonl").is_file());
    // best/ holds the projector of the lowest validation loss, and --run loads it.
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("best/best.json")).unwrap()).unwrap();
    let evals: Vec<(u64, f64)> = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["step"].as_u64()?, v.get("eval_loss")?.as_f64()?))
        })
        .collect();
    let min = evals
        .iter()
        .copied()
        .fold((0, f64::INFINITY), |m, e| if e.1 < m.1 { e } else { m });
    assert_eq!(
        (
            best["step"].as_u64().unwrap(),
            best["eval_loss"].as_f64().unwrap()
        ),
        min
    );
    assert!(a.join("best/projector.safetensors").is_file());
    assert!(stderr.contains("best"), "{stderr}");
    // The resumed run kept the same best.
    assert_eq!(
        std::fs::read(a.join("best/projector.safetensors")).unwrap(),
        std::fs::read(b.join("best/projector.safetensors")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rate_projector_trains_on_clip_length_features_and_runs() {
    let dir = workdir("rate");
    let (train, valid) = manifests(&dir, 8, &[]);
    let out = dir.join("run");
    let args = align_args(
        &train,
        &valid,
        &out,
        &[
            "--set",
            "projector.kind=ultravox",
            "--set",
            "projector.reduce=stack",
            "--set",
            "projector.hidden=256",
            "--set",
            "encoder.options.context=clip",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.early_stopping=1",
        ],
    );
    let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, stderr) = run(&args_ref);
    assert_eq!(code, 0, "{stderr}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("projector.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["kind"], "ultravox");
    assert_eq!(cfg["reduce"]["method"], "stack");
    assert_eq!(cfg["reduce"]["n"], 8);
    assert_eq!(cfg["encoder_options"]["context"], "clip");
    let (code, _, stderr) = generate_on_tone(&out, 4);
    assert_eq!(code, 0, "{stderr}");
    // A misspelt option names its key.
    let args = align_args(
        &train,
        &valid,
        &dir.join("bad"),
        &["--set", "encoder.options.contxt=clip"],
    );
    let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, stderr) = run(&args_ref);
    assert_eq!(code, 1);
    assert!(stderr.contains("contxt"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ctc_warm_start_lowers_its_loss_and_is_kept_for_a_restart() {
    let dir = workdir("ctc");
    let (train, valid) = manifests(&dir, 8, &[]);
    let out = dir.join("run");
    let sets = [
        "projector.reduce=stack",
        "projector.stride=5",
        "encoder.options.context=clip",
        "train.max_steps=1",
        "ctc.steps=40",
        "ctc.batch_size=8",
        "ctc.eval_every=0",
    ];
    let extra = set_flags(&sets);
    let extra_ref: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let args = align_args(&train, &valid, &out, &extra_ref);
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let ctc = &summary["ctc"];
    let (first, last) = (
        ctc["first_train_loss"].as_f64().unwrap(),
        ctc["last_train_loss"].as_f64().unwrap(),
    );
    // 40 steps over the same 8 clips: the head fits them.
    assert!(last < 0.5 * first, "ctc loss {first} -> {last}");
    assert!(
        ctc["valid_greedy_wer"].as_f64().unwrap().is_finite(),
        "{ctc}"
    );
    let init = out.join("ctc-init/projector.safetensors");
    assert!(init.is_file());

    // A run restarted before its first checkpoint takes the warm start from the folder.
    let again = dir.join("again");
    std::fs::create_dir_all(again.join("ctc-init")).unwrap();
    std::fs::copy(&init, again.join("ctc-init/projector.safetensors")).unwrap();
    let mut args = align_args(&train, &valid, &again, &extra_ref);
    args.push("--resume".into());
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("warm start loaded"), "{stderr}");
    assert!(!stderr.contains("ctc warm start:"), "{stderr}");
    // Without --resume a warm start left in the folder (maybe another recipe's) is not reused.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(fresh.join("ctc-init")).unwrap();
    std::fs::copy(&init, fresh.join("ctc-init/projector.safetensors")).unwrap();
    let args = align_args(&train, &valid, &fresh, &extra_ref);
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("ctc warm start:") && !stderr.contains("warm start loaded"),
        "{stderr}"
    );

    // A fixed token count has no time axis to align: a clear error.
    let args = align_args(
        &train,
        &valid,
        &dir.join("fixed"),
        &["--set", "ctc.steps=5"],
    );
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 1);
    assert!(stderr.contains("ctc.steps needs a rate-based"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ctc_compressed_projector_trains_resumes_and_generates() {
    let dir = workdir("ctc-compress");
    let (train, valid) = manifests(&dir, 8, &[]);
    let out = dir.join("run");
    let sets = [
        "projector.reduce=stack",
        "projector.stride=5",
        "encoder.options.context=clip",
        "train.max_steps=2",
        "train.save_every=1",
        "ctc.steps=40",
        "ctc.batch_size=8",
        "ctc.eval_every=0",
        "ctc.compress=nearest",
    ];
    let extra = set_flags(&sets);
    let extra_ref: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let args = align_args(&train, &valid, &out, &extra_ref);
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("ctc compression"), "{stderr}");
    // The result and the warm start both carry the table and say so in projector.json.
    for folder in [out.clone(), out.join("ctc-init")] {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("projector.json")).unwrap())
                .unwrap();
        let classes = cfg["ctc_compress"]["classes"].as_u64().unwrap_or(0);
        assert!(classes > 1, "{}: {cfg}", folder.display());
    }
    let weights = std::fs::read(out.join("projector.safetensors")).unwrap();

    // Resumed from its checkpoint after step 1, the run ends where the uninterrupted one did.
    let again = dir.join("again");
    copy_tree(&out, &again);
    std::fs::remove_dir_all(again.join("checkpoint-2")).unwrap();
    for f in ["projector.safetensors", "projector.json", "summary.json"] {
        std::fs::remove_file(again.join(f)).unwrap();
    }
    let mut args = align_args(&train, &valid, &again, &extra_ref);
    args.push("--resume".into());
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("ctc warm start:"), "{stderr}");
    assert!(
        std::fs::read(again.join("projector.safetensors")).unwrap() == weights,
        "the resumed compressing run's projector differs"
    );

    // The compressing projector runs outside the run that made it.
    let (code, _, stderr) = generate_on_tone(&out, 4);
    assert_eq!(code, 0, "{stderr}");

    // Compression without a warm start to learn its table is refused before anything loads.
    let args = align_args(
        &train,
        &valid,
        &dir.join("no-table"),
        &[
            "--set",
            "projector.reduce=stack",
            "--set",
            "ctc.compress=mean",
        ],
    );
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 1);
    assert!(stderr.contains("ctc.compress needs"), "{stderr}");
    let args = align_args(
        &train,
        &valid,
        &dir.join("bad-dropout"),
        &["--set", "ctc.feature_dropout=1.5"],
    );
    let (code, _, stderr) = run_owned(&args);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("ctc.feature_dropout must be in [0, 1)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_audio_and_too_many_bad_lines_are_clear_errors() {
    let dir = workdir("bad");
    // Half the lines bad: over the recipe's 5% limit, the run stops before training.
    let extra: Vec<String> = [
        "bad_truncated.flac",
        "bad_wrong_header.wav",
        "bad_not_audio.wav",
        "bad_zero_length.wav",
    ]
    .iter()
    .map(|f| {
        format!(
            "{{\"audio\": \"{}\", \"text\": \"x\"}}",
            fixture(f).display()
        )
    })
    .collect();
    let (train, valid) = manifests(&dir, 4, &extra);
    let args = align_args(&train, &valid, &dir.join("run"), &[]);
    let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (code, _, stderr) = run(&args_ref);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("4 of 8 lines are bad"),
        "{stderr}"
    );
    assert!(
        stderr.contains("train.jsonl:7:") && stderr.contains("bad_not_audio.wav"),
        "{stderr}"
    );
    // Stopped before its first step, the run left nothing that would refuse the rerun with
    // the manifest fixed.
    let left = anymal::run_dir::RunDir::new(dir.join("run")).earlier_run_entries();
    assert!(left.is_empty(), "{left:?}");

    // Generation with an undecodable file: one line naming the file, exit 1.
    let (code, _, stderr) = run(&[
        "generate",
        "--projector",
        &dir.join("nope").display().to_string(),
        "--audio",
        &fixture("bad_not_audio.wav").display().to_string(),
        "--prompt",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("projector.json") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // A recipe key that does not exist is named.
    let (code, _, stderr) = run(&[
        "align",
        "--modality",
        "audio",
        "--recipe",
        &recipe().display().to_string(),
        "--set",
        "train.max_stepz=3",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("max_stepz"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn splice_fills_slots_labels_answers_and_checks_placeholder_counts() {
    use anymal::conversation::{ConversationFormat, Role, Turn};
    use anymal::splice::{answer_loss_sum, build_batch, IGNORE_INDEX};
    use candle_core::{Device, Tensor};
    let model =
        anymal_llm::load_model("smollm2", &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    let d = model.llm.cfg.hidden_size;
    let format = ConversationFormat::new(&model, false, vec![("<audio>".into(), 3)]);
    let turns = [
        Turn::new(Role::User, "<audio> then <audio>\nTranscript:"),
        Turn::new(Role::Assistant, "hello there"),
    ];
    let rendered = format.render(&turns).unwrap();
    assert_eq!(rendered.slot_placeholders.len(), 2);
    let answer = model
        .tokenizer
        .encode(" hello there", false, false)
        .unwrap();
    let ex = rendered.example;
    let end_id = model.tokenizer.eos_id.unwrap();
    // Labels: the answer and the end token, nothing else.
    let labelled: Vec<i64> = ex
        .labels
        .iter()
        .copied()
        .filter(|&l| l != IGNORE_INDEX)
        .collect();
    let mut want: Vec<i64> = answer.iter().map(|&t| t as i64).collect();
    want.push(end_id as i64);
    assert_eq!(labelled, want);
    assert_eq!(ex.slots.len(), 2);
    // Slot contents land exactly where the slots are.
    let toks = Tensor::arange(0f32, (2 * 3 * d) as f32, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, d))
        .unwrap();
    let groups = vec![toks.get(0).unwrap(), toks.get(1).unwrap()];
    let batch = build_batch(&model.llm, std::slice::from_ref(&ex), &[groups]).unwrap();
    let row = batch.inputs_embeds.get(0).unwrap();
    let got = row.narrow(0, ex.slots[1], 3).unwrap();
    let diff = anymal_util::testing::max_abs_diff(&got, &toks.get(1).unwrap());
    assert_eq!(diff, 0.0);
    let (nll, m) = answer_loss_sum(&model.llm, &batch).unwrap();
    assert_eq!(m, want.len());
    assert!(nll.to_scalar::<f32>().unwrap().is_finite());
    // One group of tokens for two placeholders: an error, not a shifted prompt.
    let err = build_batch(&model.llm, &[ex], &[vec![toks.get(0).unwrap()]])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("2 placeholder(s) but 1"), "{err}");
}

#[test]
fn speech_manifests_have_a_fixed_split_and_recipes_are_listed() {
    let dir = workdir("speech");
    let (code, stdout, stderr) = run(&["data", "speech", "--out", &dir.display().to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("450 / 53 / 50"), "{stdout}");
    let count = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(
        (
            count("train.jsonl"),
            count("valid.jsonl"),
            count("test.jsonl")
        ),
        (450, 53, 50)
    );
    // Every manifest line is usable as written (paths relative to the manifest).
    let m = anymal::data::manifest::Manifest::read(&dir.join("test.jsonl"), "audio").unwrap();
    assert_eq!((m.items.len(), m.problems.len()), (50, 0));
    // No clip is in two splits.
    let ids = |f: &str| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert!(ids("train.jsonl").is_disjoint(&ids("test.jsonl")));
    assert!(ids("valid.jsonl").is_disjoint(&ids("test.jsonl")));

    let (code, stdout, _) = run(&["recipes", "list"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("align/audio_whisper-tiny-en_smollm2-135m") && stdout.contains("gemma3"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["recipes", "show", "audio_whisper-tiny-en_gemma3-270m"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("model = \"gemma3\""), "{stdout}");
    let (code, _, stderr) = run(&["recipes", "show", "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nope: no such recipe"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file below `dir` with its bytes, by relative path.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn damaged_checkpoints_are_skipped_and_a_finished_run_is_replaced_only_with_overwrite() {
    let dir = workdir("safety");
    let (train, valid) = manifests(&dir, 8, &[]);
    let quick = ["--set", "train.batch_size=2", "--set", "train.eval_every=0"];
    let args_for = |out: &Path, more: &[&str]| {
        let extra: Vec<&str> = quick.iter().chain(more).copied().collect();
        align_args(&train, &valid, out, &extra)
    };
    // Uninterrupted: checkpoints after steps 2 and 4.
    let a = dir.join("a");
    let (code, _, stderr) = run_owned(&args_for(&a, &[]));
    assert_eq!(code, 0, "{stderr}");
    let result = std::fs::read(a.join("projector.safetensors")).unwrap();
    assert!(a.join("checkpoint-2/SHA256SUMS").is_file());

    // Flipped bytes in the newest optimizer state: resumed from the older checkpoint, with a
    // warning naming the file, to the uninterrupted result.
    let b = dir.join("b");
    copy_tree(&a, &b);
    let opt = b.join("checkpoint-4/optimizer.safetensors");
    let mut bytes = std::fs::read(&opt).unwrap();
    let n = bytes.len();
    for x in &mut bytes[n - 64..n - 32] {
        *x ^= 0x7f;
    }
    std::fs::write(&opt, bytes).unwrap();
    let (code, _, stderr) = run_owned(&args_for(&b, &["--resume"]));
    assert_eq!(code, 0, "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains(&opt.display().to_string())
            && warning.contains(&format!(
                "resuming from {}",
                b.join("checkpoint-2").display()
            )),
        "{warning}"
    );
    assert!(stderr.contains("(step 2)"), "{stderr}");
    assert!(std::fs::read(b.join("projector.safetensors")).unwrap() == result);
    assert_eq!(losses(&b), losses(&a));
    assert!(b.join("checkpoint-4.corrupt").is_dir());

    // A checkpoint missing its projector is not resumed from either.
    let c = dir.join("c");
    copy_tree(&a, &c);
    std::fs::remove_file(c.join("checkpoint-4/projector.safetensors")).unwrap();
    let (code, _, stderr) = run_owned(&args_for(&c, &["--resume"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("checkpoint-4/projector.safetensors: missing")
            && stderr.contains("(step 2)"),
        "{stderr}"
    );
    assert!(std::fs::read(c.join("projector.safetensors")).unwrap() == result);

    // Checkpoints of older versions, without checksums, still resume.
    let e = dir.join("e");
    copy_tree(&a, &e);
    for s in [2, 4] {
        std::fs::remove_file(e.join(format!("checkpoint-{s}/SHA256SUMS"))).unwrap();
    }
    let (code, _, stderr) = run_owned(&args_for(&e, &["--resume"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("(step 4)") && !stderr.contains("warning"),
        "{stderr}"
    );

    // A finished run whose checkpoints are gone: refused, every file as it was; replaced with
    // --overwrite, which leaves the user's own files alone.
    let d = dir.join("d");
    copy_tree(&a, &d);
    for s in [2, 4] {
        std::fs::remove_dir_all(d.join(format!("checkpoint-{s}"))).unwrap();
    }
    std::fs::write(d.join("notes.txt"), "mine").unwrap();
    let before = snapshot(&d);
    let (code, _, stderr) = run_owned(&args_for(&d, &[]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("holds an earlier run") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert!(snapshot(&d) == before, "a refused run changed the folder");
    let (code, _, stderr) = run_owned(&args_for(&d, &["--overwrite"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(std::fs::read(d.join("projector.safetensors")).unwrap() == result);
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        losses(&d),
        losses(&a),
        "metrics.jsonl holds the new run only"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_needs_a_run_and_a_run_stays_out_of_system_folders() {
    let dir = workdir("resume-nothing");
    let (train, valid) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, stderr) = run_owned(&align_args(&train, &valid, &empty, &["--resume"]));
    assert_eq!(code, 1, "{stderr}");
    let want = format!(
        "error: --resume: {} holds no run (no checkpoint-* folder); drop --resume to start one",
        empty.display()
    );
    assert_eq!(stderr.trim(), want);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    let missing = dir.join("missing");
    let (code, _, stderr) = run_owned(&align_args(&train, &valid, &missing, &["--resume"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{} does not exist", missing.display())),
        "{stderr}"
    );
    assert!(!missing.exists());

    // output_dir = "/" (or --output /) is refused before anything is written.
    let had_recipe = Path::new("/recipe.toml").exists();
    let (code, _, stderr) = run_owned(&align_args(&train, &valid, Path::new("/"), &[]));
    if !had_recipe {
        let _ = std::fs::remove_file("/recipe.toml");
    }
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("output_dir /: is the file system's root"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

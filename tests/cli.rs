//! The `anymal` binary: chat answers, inspect, and one-line errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn anymal(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_anymal"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anymal-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn smollm2() -> PathBuf {
    anymal_llm::loader::known_model_path("smollm2").unwrap_or_else(|e| panic!("{e}"))
}

/// A bad model must give exit code 1 and one line on stderr naming the file, never a panic.
fn assert_clean_error(args: &[&str], file: &Path, what: &str) {
    let (code, stdout, stderr) = anymal(args);
    assert_eq!(code, 1, "{what}: exit code {code}, stderr: {stderr}");
    assert!(stdout.is_empty(), "{what}: stdout not empty: {stdout}");
    assert!(!stderr.contains("panicked"), "{what}: panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {stderr}");
    assert!(lines[0].starts_with("error: "), "{what}: {stderr}");
    assert!(
        lines[0].contains(&file.display().to_string()),
        "{what}: error does not name {}: {stderr}",
        file.display()
    );
}

fn write_gguf(path: &Path, md: &[(&str, Value)], tensors: &[(&str, QTensor)]) {
    let mut f = std::fs::File::create(path).unwrap();
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

#[test]
fn smollm2_answers_paris_through_its_chat_template() {
    let m = smollm2();
    let (code, stdout, stderr) = anymal(&[
        "generate",
        "--llm",
        m.to_str().unwrap(),
        "--system",
        "You are a helpful AI assistant.",
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "24",
        "--temperature",
        "0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Paris"), "answer: {stdout:?}");
    // Only the answer goes to stdout; timings go to stderr.
    assert!(!stdout.contains("tokens"), "{stdout:?}");
    assert!(stderr.contains("t/s"), "{stderr}");
}

#[test]
fn inspect_describes_the_model() {
    let (code, stdout, stderr) = anymal(&["inspect", "smollm2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("architecture llama"), "{stdout}");
    assert!(stdout.contains("Q4_1 x210"), "{stdout}");
    assert!(stdout.contains("30 layers, hidden 576"), "{stdout}");
    assert!(stdout.contains("total"), "{stdout}");
}

/// The memory model for a named shape (no file) and from an alignment recipe.
#[test]
fn inspect_plans_training_memory() {
    let (code, stdout, stderr) = anymal(&[
        "inspect",
        "llama2-70b",
        "--batch",
        "4",
        "--seq",
        "256",
        "--cuda",
        "--bits",
        "4.13",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("68.7 B parameters"), "{stdout}");
    assert!(stdout.contains("with --gradient-checkpointing"), "{stdout}");
    let recipe = format!(
        "{}/recipes/align/audio_whisper-tiny-en_smollm2-135m.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let (code, stdout, stderr) = anymal(&["inspect", "--recipe", &recipe]);
    assert_eq!(code, 0, "{stderr}");
    // The recipe's batch 8, 32 audio tokens + 64 text tokens.
    assert!(
        stdout.contains("batch 8 x 96 tokens, 64 labelled"),
        "{stdout}"
    );
    let (code, _, stderr) = anymal(&[
        "inspect",
        "smollm2",
        "--lora-r",
        "8",
        "--lora-targets",
        "qkv",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--lora-targets: 'qkv'"), "{stderr}");
}

#[test]
fn bad_models_give_one_line_errors() {
    let missing = tmp("does-not-exist.gguf");
    assert_clean_error(
        &[
            "generate",
            "--llm",
            missing.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &missing,
        "missing file",
    );

    let text = tmp("not-a-model.gguf");
    std::fs::write(&text, "hello, I am not a model").unwrap();
    assert_clean_error(
        &[
            "generate",
            "--llm",
            text.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &text,
        "not GGUF",
    );

    // The real model cut short: the header reads, the tensor data does not.
    let truncated = tmp("truncated.gguf");
    let bytes = std::fs::read(smollm2()).unwrap();
    std::fs::write(&truncated, &bytes[..4 << 20]).unwrap();
    assert_clean_error(
        &[
            "generate",
            "--llm",
            truncated.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &truncated,
        "truncated",
    );
    let header_cut = tmp("header-cut.gguf");
    std::fs::write(&header_cut, &bytes[..100_000]).unwrap();
    assert_clean_error(
        &["inspect", header_cut.to_str().unwrap()],
        &header_cut,
        "header cut",
    );

    // Garbage after a valid magic.
    let corrupt = tmp("corrupt.gguf");
    let mut junk = b"GGUF".to_vec();
    junk.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::write(&corrupt, &junk).unwrap();
    assert_clean_error(
        &[
            "generate",
            "--llm",
            corrupt.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &corrupt,
        "corrupt",
    );

    let w = QTensor::quantize(
        &Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let unsupported = tmp("mamba.gguf");
    write_gguf(
        &unsupported,
        &[("general.architecture", Value::String("mamba".into()))],
        &[("token_embd.weight", w)],
    );
    let (_, _, stderr) = anymal(&[
        "generate",
        "--llm",
        unsupported.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(
        stderr.contains("unsupported architecture 'mamba'"),
        "{stderr}"
    );
    assert_clean_error(
        &[
            "generate",
            "--llm",
            unsupported.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &unsupported,
        "unsupported arch",
    );

    let w = QTensor::quantize(
        &Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let no_tok = tmp("no-tokenizer.gguf");
    write_gguf(
        &no_tok,
        &[
            ("general.architecture", Value::String("llama".into())),
            ("llama.embedding_length", Value::U32(256)),
            ("llama.feed_forward_length", Value::U32(512)),
            ("llama.block_count", Value::U32(1)),
            ("llama.attention.head_count", Value::U32(4)),
            ("llama.vocab_size", Value::U32(4)),
        ],
        &[("token_embd.weight", w)],
    );
    let (_, _, stderr) = anymal(&[
        "generate",
        "--llm",
        no_tok.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(stderr.contains("no tokenizer"), "{stderr}");
    assert_clean_error(
        &[
            "generate",
            "--llm",
            no_tok.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &no_tok,
        "no tokenizer",
    );

    let (code, _, stderr) = anymal(&[
        "generate",
        "--llm",
        "smollm2",
        "--prompt",
        "hi",
        "--requant",
        "q9",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("'q9'"), "{stderr}");
}

#[test]
fn merge_refuses_to_write_over_its_inputs_and_outputs_stay_out_of_system_folders() {
    // A copy of the base, so that a merge that did write over it harms nothing else.
    let dir = tmp("merge-inputs");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let base = dir.join("base.gguf");
    std::fs::copy(smollm2(), &base).unwrap();
    let lora = dir.join("lora");
    std::fs::create_dir_all(&lora).unwrap();
    std::fs::write(lora.join("adapter_config.json"), "{}").unwrap();
    std::fs::write(lora.join("adapter_model.safetensors"), "not read").unwrap();
    let link = dir.join("link.gguf");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&base, &link).unwrap();
    let merge = |out: &Path| {
        let (b, l, o) = (
            base.to_str().unwrap(),
            lora.to_str().unwrap(),
            out.to_str().unwrap(),
        );
        let (code, stdout, stderr) = anymal(&["merge", "--llm", b, "--lora", l, "--out", o]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stdout.is_empty() && stderr.lines().count() == 1, "{stderr}");
        stderr
    };
    // The same file as written, through `..`, and through a link.
    for out in [base.clone(), dir.join("sub/../base.gguf"), link.clone()] {
        let stderr = merge(&out);
        assert!(
            stderr.contains(&format!(
                "--out {}: is --llm's own file {}",
                out.display(),
                base.display()
            )),
            "{stderr}"
        );
    }
    let stderr = merge(&lora.join("adapter_model.safetensors"));
    assert!(stderr.contains("is --lora's own file"), "{stderr}");
    assert!(
        std::fs::read(&base).unwrap() == std::fs::read(smollm2()).unwrap(),
        "the base model changed"
    );

    // Outputs straight into the root or a system folder.
    let stderr = merge(Path::new("/merged.gguf"));
    assert!(
        stderr.contains("--out /merged.gguf: would be written into the file system's root"),
        "{stderr}"
    );
    assert_clean_error(
        &[
            "export",
            "--run",
            dir.to_str().unwrap(),
            "--out",
            "/usr/x.mmproj.gguf",
        ],
        Path::new("/usr/x.mmproj.gguf"),
        "export into /usr",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! `anymal chat` with stdin piped: answers stream to stdout, history is kept (the prompt grows)
//! until `/reset`, a bad command is an error line and the session goes on, `/quit` ends it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

fn chat(args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anymal"))
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Prompt lengths from the `(prompt N tokens; ...)` lines, one per answer.
fn prompt_lengths(stderr: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("(prompt ")?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn piped_session_keeps_history_until_reset_and_survives_errors() {
    anymal_llm::loader::known_model_path("smollm2")
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-assets.sh to fetch the test models)"));
    let t0 = Instant::now();
    let (code, stdout, stderr) = chat(
        &["--llm", "smollm2", "--max-tokens", "8"],
        "hello\nhello\n/reset\n/image missing.png\n/nonsense\nhello\n/quit\n/help\n",
    );
    eprintln!("session took {:.1}s\n{stderr}", t0.elapsed().as_secs_f64());
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Three answers, each on its own line of stdout; nothing else there.
    let answers: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(answers.len() >= 3, "{stdout:?}");
    assert!(!stdout.contains("error"), "{stdout:?}");
    // The second prompt holds the first exchange; /reset starts over.
    let p = prompt_lengths(&stderr);
    assert_eq!(p.len(), 3, "{stderr}");
    assert!(p[1] > p[0], "history not kept: {p:?}");
    assert_eq!(p[2], p[0], "history not cleared by /reset: {p:?}");
    // The same first message after /reset gets the same (greedy) answer.
    assert_eq!(answers.first(), answers.last(), "{stdout:?}");
    assert!(stderr.contains("(conversation cleared)"), "{stderr}");
    assert!(
        stderr.contains("error: /image: this model has no image projector"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: unknown command /nonsense"),
        "{stderr}"
    );
    // Nothing after /quit is read.
    assert!(!stderr.contains("forget the conversation"), "{stderr}");
}

#[test]
fn end_of_input_ends_the_session_and_a_bad_model_is_one_error_line() {
    let (code, stdout, stderr) = chat(
        &["--llm", "smollm2", "--max-tokens", "2"],
        "/help\n/image\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(
        stderr.contains("/reset") && stderr.contains("/quit"),
        "{stderr}"
    );
    assert!(stderr.contains("text only"), "{stderr}");
    // A model that fails to load is one error line and exit code 1.
    let (code, _, stderr) = chat(&["--llm", "/nonexistent/model.gguf"], "hello\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.trim().starts_with("error: ") && stderr.contains("/nonexistent/model.gguf"),
        "{stderr}"
    );
}

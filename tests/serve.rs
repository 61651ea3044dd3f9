//! `anymal serve` end to end: the binary on a free port with the fetched SmolLM2 (and, for
//! audio, a projector trained here in two steps on the Asterisk corpus), spoken to over raw
//! HTTP/1.1 the way any OpenAI client would: answers, streaming, usage, stop strings, the
//! queue, a client leaving mid-stream, and every kind of bad request answered with a 4xx JSON
//! error while the server keeps serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod crafted;

fn smollm2() -> PathBuf {
    anymal_llm::loader::known_model_path("smollm2")
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-assets.sh to fetch the test models)"))
}

/// A running `anymal serve`; stopped with SIGTERM on drop.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_anymal"))
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Drain stderr for the whole run: a full pipe would block the server.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.trim().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(addr) => Self { child, addr, log },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`anymal serve {}` did not start:\n{}",
                    args.join(" "),
                    log.lock().unwrap()
                );
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server exited:\n{}",
            self.log()
        );
    }

    fn get(&self, path: &str) -> Resp {
        request(&self.addr, "GET", path, None)
    }

    fn post(&self, body: &Value) -> Resp {
        request(
            &self.addr,
            "POST",
            "/v1/chat/completions",
            Some(body.to_string().as_bytes()),
        )
    }

    fn model_id(&self) -> String {
        let r = self.get("/v1/models");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["data"][0]["id"].as_str().unwrap().to_string()
    }
}

impl Server {
    /// SIGTERM; the exit status if the server stopped within 20 s (else it is killed).
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An OpenAI error with this status: `{"error": {"message", "type", "code"}}`.
    fn assert_error(&self, status: u16, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        let v = self.json();
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error.message: {v}"));
        assert!(
            !msg.is_empty() && v["error"]["type"].is_string(),
            "{what}: {v}"
        );
        msg.to_string()
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
fn request(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_line = String::from_utf8_lossy(&b[..eol]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Content, finish reason and usage of a streamed answer, checking the chunk sequence.
fn streamed(r: &Resp) -> (String, String, Option<Value>) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let events = sse_data(&r.text());
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "{:?}",
        chunks[0]
    );
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert!(c.get("error").is_none(), "{c}");
        if let Some(u) = c.get("usage") {
            usage = Some(u.clone());
            continue;
        }
        assert!(finish.is_none(), "content after the finish chunk: {c}");
        let ch = &c["choices"][0];
        text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish.expect("a chunk with finish_reason"), usage)
}

fn check_usage(u: &Value) -> (u64, u64) {
    let (p, c, t) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0, "{u}");
    assert_eq!(p + c, t, "{u}");
    (p, c)
}

#[test]
fn openai_chat_completions_on_smollm2_and_bad_requests_are_4xx() {
    smollm2();
    let t0 = Instant::now();
    let mut srv = Server::start(&["--llm", "smollm2"]);
    eprintln!("server up in {:.1}s", t0.elapsed().as_secs_f64());

    let r = srv.get("/health");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = srv.get("/v1/models");
    assert_eq!(r.json()["object"], "list");
    let model = srv.model_id();
    assert!(!model.is_empty());

    // Greedy, whole answer.
    let req = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful AI assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "max_tokens": 12,
        "temperature": 0,
    });
    let r = srv.post(&req);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], model.as_str());
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    let answer = msg["content"].as_str().unwrap().to_string();
    assert!(!answer.trim().is_empty(), "{v}");
    let finish = v["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_string();
    let (prompt_tokens, completion_tokens) = check_usage(&v["usage"]);
    assert!((1..=12).contains(&completion_tokens), "{v}");
    match finish.as_str() {
        "length" => assert_eq!(completion_tokens, 12),
        "stop" => {}
        other => panic!("finish_reason {other}"),
    }
    eprintln!(
        "answer {answer:?} ({finish}) at {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // The same request streamed: the same text, finish reason and usage.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (text, sfinish, usage) = streamed(&srv.post(&sreq));
    assert_eq!(text, answer);
    assert_eq!(sfinish, finish);
    assert_eq!(
        check_usage(&usage.expect("a usage chunk")),
        (prompt_tokens, completion_tokens)
    );

    // max_tokens: cut, finish_reason length.
    let mut short = req.clone();
    short["max_tokens"] = json!(3);
    let v = srv.post(&short).json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(check_usage(&v["usage"]), (prompt_tokens, 3));

    // A stop string cuts the answer before it, streamed or not.
    let stop = answer
        .split_whitespace()
        .nth(1)
        .map(|w| format!(" {w}"))
        .unwrap_or_else(|| answer.chars().last().unwrap().to_string());
    let expected = &answer[..answer.find(&stop).unwrap()];
    let mut sreq = req.clone();
    sreq["stop"] = json!([stop]);
    let v = srv.post(&sreq).json();
    assert_eq!(
        v["choices"][0]["message"]["content"], expected,
        "stop {stop:?}: {v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    sreq["stream"] = json!(true);
    let (text, sfinish, _) = streamed(&srv.post(&sreq));
    assert_eq!((text.as_str(), sfinish.as_str()), (expected, "stop"));

    // Two at once: both answered (one after the other by the worker), identically.
    let addr = srv.addr.clone();
    let both: Vec<_> = (0..2)
        .map(|_| {
            let (addr, body) = (addr.clone(), short.to_string());
            std::thread::spawn(move || {
                request(&addr, "POST", "/v1/chat/completions", Some(body.as_bytes()))
            })
        })
        .collect();
    let answers: Vec<Value> = both.into_iter().map(|h| h.join().unwrap().json()).collect();
    for a in &answers {
        assert_eq!(a["object"], "chat.completion", "{a}");
    }
    assert_eq!(answers[0]["choices"], answers[1]["choices"]);
    eprintln!("answers checked at {:.1}s", t0.elapsed().as_secs_f64());

    // Bad requests: OpenAI-shaped 4xx, and the server goes on.
    let r = request(
        &srv.addr,
        "POST",
        "/v1/chat/completions",
        Some(b"{\"model\": "),
    );
    r.assert_error(400, "malformed JSON");
    assert_eq!(r.json()["error"]["code"], "invalid_json");
    let user = json!([{"role": "user", "content": "hi"}]);
    let m = srv
        .post(&json!({"model": "gpt-4o", "messages": user}))
        .assert_error(404, "unknown model");
    assert!(m.contains("gpt-4o") && m.contains(&model), "{m}");
    srv.post(&json!({"model": model}))
        .assert_error(400, "no messages");
    srv.post(&json!({"model": model, "messages": []}))
        .assert_error(400, "empty messages");
    srv.post(&json!({"model": model, "messages": [{"role": "assistant", "content": "hi"}]}))
        .assert_error(400, "last message not from the user");
    srv.post(&json!({"model": model, "messages": user, "temperature": -1}))
        .assert_error(400, "temperature");
    let audio =
        json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}});
    let m = srv
        .post(&json!({"model": model, "messages": [{"role": "user", "content": [audio]}]}))
        .assert_error(400, "audio on a text-only model");
    assert!(
        m.contains("messages[0].content[0]") && m.contains("audio"),
        "{m}"
    );
    let remote = json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}});
    let m = srv
        .post(&json!({"model": model, "messages": [{"role": "user", "content": [remote]}]}))
        .assert_error(400, "remote image URL");
    assert!(m.contains("image"), "{m}");
    let bad64 = json!({"type": "input_audio", "input_audio": {"data": "%%% not base64 %%%"}});
    srv.post(&json!({"model": model, "messages": [{"role": "user", "content": [bad64]}]}))
        .assert_error(400, "undecodable base64");
    let part = json!({"type": "file", "file": {}});
    let m = srv
        .post(&json!({"model": model, "messages": [{"role": "user", "content": [part]}]}))
        .assert_error(400, "unknown part type");
    assert!(m.contains("'file'"), "{m}");
    // Over --max-body-mb (32): refused from the declared length, before reading the body.
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        40 << 20
    )
    .unwrap();
    read_response(&mut s).assert_error(413, "oversized body");
    request(&srv.addr, "GET", "/v1/chat/completions", None).assert_error(405, "wrong method");
    request(&srv.addr, "DELETE", "/health", None).assert_error(405, "wrong method");
    srv.get("/v2/nothing").assert_error(404, "unknown path");

    srv.assert_running();
    let r = srv.get("/health");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let v = srv.post(&short).json();
    assert_eq!(v["choices"], answers[0]["choices"]);

    // SIGTERM: a clean exit.
    let status = srv.stop().expect("the server did not stop on SIGTERM");
    assert!(status.success(), "{status:?}:\n{}", srv.log());
    std::thread::sleep(Duration::from_millis(200));
    assert!(srv.log().contains("shut down"), "{}", srv.log());
    eprintln!("done in {:.1}s", t0.elapsed().as_secs_f64());
}

/// With `--batch 1 --queue 0` a request that arrives while one is answered gets a 503; a client that
/// leaves mid-stream stops its generation, and the next request is answered.
#[test]
fn full_queue_is_503_and_a_client_leaving_stops_generation() {
    smollm2();
    let t0 = Instant::now();
    let srv = Server::start(&["--llm", "smollm2", "--queue", "0", "--batch", "1"]);
    let model = srv.model_id();
    let long = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Count from 1 to 500, separated by commas."}],
        "max_tokens": 500,
        "stream": true,
    })
    .to_string();
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{long}",
        long.len()
    )
    .unwrap();
    // Wait for the first content chunk: the worker is now generating.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"content\":\"")
        || String::from_utf8_lossy(&got).matches("data: ").count() < 2
    {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        // A refusal (the connection then stays open) fails here, not after the read timeout.
        assert!(
            got.len() < 12 || got.starts_with(b"HTTP/1.1 200"),
            "the first request was not accepted: {}",
            String::from_utf8_lossy(&got)
        );
    }
    let short =
        json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let r = srv.post(&short);
    let m = r.assert_error(503, "queue full");
    assert_eq!(r.json()["error"]["code"], "server_busy", "{m}");
    assert!(r.header("retry-after").is_some());

    drop(s);
    assert!(
        srv.wait_for_log("client went away", Duration::from_secs(120)),
        "generation did not stop after the client left:\n{}",
        srv.log()
    );
    // The worker is free again (a moment after its log line).
    let t1 = Instant::now();
    let v = loop {
        let r = srv.post(&short);
        if r.status != 503 || t1.elapsed() > Duration::from_secs(10) {
            break r.json();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    eprintln!("done in {:.1}s", t0.elapsed().as_secs_f64());
}

/// Requests that arrive together are answered together (continuous batching), each with the
/// answer it gets alone: greedy and sampled, streamed and not, cut by a stop string or by
/// max_tokens, joining the batch as others leave it.
#[test]
fn concurrent_requests_are_batched_and_answered_as_alone() {
    smollm2();
    let srv = Server::start(&["--llm", "smollm2", "--batch", "4"]);
    let model = srv.model_id();
    let ask = |content: &str, extra: Value| {
        let mut r = json!({
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 24,
        });
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let requests = vec![
        ask("Name three fruits.", json!({})),
        ask(
            "Count from 1 to 30, separated by commas.",
            json!({"max_tokens": 40}),
        ),
        ask("What is the capital of France?", json!({"max_tokens": 6})),
        ask(
            "Write a haiku about rain.",
            json!({"temperature": 0.9, "seed": 5}),
        ),
        ask("Say hello.", json!({"stream": true})),
        ask(
            "List the days of the week.",
            json!({"stop": ["Wednesday"], "max_tokens": 40}),
        ),
    ];
    // What each gets alone.
    let answer = |r: &Resp, streaming: bool| -> (String, String, Value) {
        if streaming {
            let (text, finish, usage) = streamed(r);
            (text, finish, usage.unwrap_or(Value::Null))
        } else {
            let v = r.json();
            let c = &v["choices"][0];
            (
                c["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                c["finish_reason"].as_str().unwrap_or_default().to_string(),
                v["usage"].clone(),
            )
        }
    };
    let streaming = |r: &Value| r["stream"] == json!(true);
    let alone: Vec<_> = requests
        .iter()
        .map(|r| answer(&srv.post(r), streaming(r)))
        .collect();
    // All at once: six requests for four places, so two wait and join as others finish.
    let addr = srv.addr.clone();
    let together: Vec<_> = requests
        .iter()
        .map(|r| {
            let (addr, body) = (addr.clone(), r.to_string());
            std::thread::spawn(move || {
                request(&addr, "POST", "/v1/chat/completions", Some(body.as_bytes()))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .zip(&requests)
        .map(|(resp, r)| answer(&resp, streaming(r)))
        .collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(!a.0.is_empty(), "request {i}: empty answer {a:?}");
        assert_eq!(a, t, "request {i}: answered differently in company");
    }
    assert_eq!(alone[5].1, "stop", "{:?}", alone[5]);
    assert_eq!(alone[2].1, "length", "{:?}", alone[2]);
    // The log says answers were generated alongside others.
    let log = srv.log();
    let most = log
        .lines()
        .filter_map(|l| l.split("alongside up to ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse::<usize>().ok())
        .max();
    assert_eq!(most, Some(3), "no step ran four answers together:\n{log}");
}

/// A long prompt is read a chunk per step, between the tokens of the answers in progress: a
/// short request that arrives while a ~6000-token prompt is being read is answered before it.
#[test]
fn a_long_prompt_does_not_stall_the_answers_in_progress() {
    smollm2();
    let srv = Server::start(&["--llm", "smollm2", "--batch", "4"]);
    let model = srv.model_id();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(600);
    let body =
        json!({"model": model, "messages": [{"role": "user", "content": long}], "max_tokens": 1})
            .to_string();
    let addr = srv.addr.clone();
    let reader = std::thread::spawn(move || {
        request(&addr, "POST", "/v1/chat/completions", Some(body.as_bytes()))
    });
    assert!(
        srv.wait_for_log("reading a prompt of", Duration::from_secs(60)),
        "the long request did not start:\n{}",
        srv.log()
    );
    let short = json!({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8});
    let v = srv.post(&short).json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    let still_reading = !srv.log().contains("+ 1 completion tokens");
    let r = reader.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
    assert!(
        still_reading,
        "the short request waited for the long prompt:\n{}",
        srv.log()
    );
}

/// Train a tiny audio projector (two steps on real clips) like tests/align.rs does.
fn tiny_audio_projector(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let root = anymal::recipe::expand_path("{cache}/data/asterisk-en");
    let (clips, _) = anymal::data::speech::clips(&root).unwrap_or_else(|e| {
        panic!("{e:#} (run scripts/fetch-assets.sh to fetch the speech corpus)")
    });
    let short: Vec<_> = clips
        .iter()
        .filter(|c| std::fs::metadata(&c.wav).is_ok_and(|m| m.len() < 40_000))
        .take(10)
        .collect();
    assert!(short.len() == 10, "speech corpus too small");
    let line =
        |c: &anymal::data::speech::Clip| json!({"audio": c.wav, "text": c.text}).to_string() + "\n";
    let (train, valid) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    std::fs::write(
        &train,
        short[..8].iter().map(|c| line(c)).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        &valid,
        short[8..].iter().map(|c| line(c)).collect::<String>(),
    )
    .unwrap();
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
        format!("data.train={}", train.display()),
        format!("data.valid={}", valid.display()),
        "train.max_steps=2".into(),
        "train.batch_size=4".into(),
        "train.save_every=2".into(),
        "train.eval_every=2".into(),
        "train.warmup_steps=1".into(),
        "train.max_minutes=0".into(),
        "data.max_text_tokens=16".into(),
    ] {
        args.extend(["--set".to_string(), s]);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_anymal"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "align failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (out, short.iter().map(|c| c.wav.clone()).collect())
}

#[test]
fn input_audio_through_a_trained_projector() {
    smollm2();
    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!("anymal-serve-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (run, wavs) = tiny_audio_projector(&dir);
    eprintln!("projector trained in {:.1}s", t0.elapsed().as_secs_f64());
    let mut srv = Server::start(&["--projector", run.to_str().unwrap()]);
    let model = srv.model_id();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let audio = |data: String| json!({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}});
    let ask = |part: Value, stream: bool| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": [part, {"type": "text", "text": "Transcript:"}]}],
            "max_tokens": 4,
            "stream": stream,
        })
    };
    let wav = std::fs::read(&wavs[9]).unwrap();
    let r = srv.post(&ask(audio(b64(&wav)), false));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let (prompt_tokens, _) = check_usage(&v["usage"]);
    // The projector's 32 audio tokens are part of the prompt.
    assert!(prompt_tokens > 32, "{v}");
    let (text, _, _) = streamed(&srv.post(&ask(audio(b64(&wav)), true)));
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // Bad media name their part; an unloaded modality is named.
    let m = srv
        .post(&ask(audio("@@ not base64 @@".into()), false))
        .assert_error(400, "undecodable base64");
    assert!(m.contains("messages[0].content[0] (input_audio)"), "{m}");
    let m = srv
        .post(&ask(audio(b64(b"RIFF but not a wave file at all")), false))
        .assert_error(400, "not audio");
    assert!(
        m.contains("messages[0].content[0] (input_audio)")
            && !m.contains(&std::env::temp_dir().display().to_string()),
        "{m}"
    );
    let r = srv.post(&ask(audio(b64(b"x")), true));
    r.assert_error(400, "not audio, streamed");
    let image =
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}});
    let m = srv
        .post(&ask(image, false))
        .assert_error(400, "no image projector");
    assert!(m.contains("image") && m.contains("audio"), "{m}");
    let m = srv
        .post(&json!({"model": model, "messages": [{"role": "user", "content": "<audio> hi"}]}))
        .assert_error(400, "placeholder in text");
    assert!(m.contains("<audio>"), "{m}");
    srv.assert_running();
    assert_eq!(srv.get("/health").status, 200);
    let v = srv.post(&ask(audio(b64(&wav)), false)).json();
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str(),
        Some(text.as_str())
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("done in {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn crafted_media_huge_prompts_and_clients_that_leave_do_not_take_the_server_down() {
    smollm2();
    let t0 = Instant::now();
    // The server's temporary media folder goes under a folder of this test's own.
    let tmp = std::env::temp_dir().join(format!("anymal-serve-battery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let mut srv = Server::start_env(
        &[
            "--projector",
            "tests/fixtures/mmproj-image/projector-siglip",
        ],
        &[("TMPDIR", &tmp)],
    );
    let model = srv.model_id();
    use base64::Engine;
    let image = |bytes: &[u8]| {
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        json!({"type": "image_url", "image_url": {"url": url}})
    };
    let ask = |part: Value| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": [part, {"type": "text", "text": "Caption:"}]}],
            "max_tokens": 2,
        })
    };
    // Headers claiming 10 and 4 gigapixels (a 30 GB allocation aborted the process before).
    for (what, bytes) in [
        (
            "PNG claiming 100000 x 100000",
            crafted::png_claiming(100_000, 100_000),
        ),
        (
            "JPEG claiming 65500 x 65500",
            crafted::jpeg_claiming(65_500, 65_500),
        ),
        ("random bytes", crafted::noise(3000, 5)),
    ] {
        let m = srv.post(&ask(image(&bytes))).assert_error(400, what);
        assert!(m.contains("messages[0].content[0]"), "{what}: {m}");
    }
    let m = srv
        .post(&ask(image(&crafted::png_claiming(100_000, 100_000))))
        .assert_error(400, "gigapixel PNG");
    assert!(m.contains("over the limit"), "{m}");
    // An 8000 x 1 strip is a picture like any other.
    let r = srv.post(&ask(image(&crafted::png(8000, 1))));
    assert_eq!(r.status, 200, "{}", r.text());

    // 4 MB of text is over the context however it tokenizes: refused before tokenizing.
    let huge = "lorem ipsum ".repeat(350_000);
    let r = srv.post(&json!({"model": model, "messages": [{"role": "user", "content": huge}]}));
    let m = r.assert_error(400, "4 MB prompt");
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded", "{m}");

    // A client that sends a long prompt and leaves is noticed during the prefill.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(600);
    let body = json!({"model": model, "messages": [{"role": "user", "content": long}], "max_tokens": 50, "stream": true}).to_string();
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert!(
        srv.wait_for_log("reading a prompt of", Duration::from_secs(60)),
        "the long request did not start:\n{}",
        srv.log()
    );
    drop(s);
    assert!(
        srv.wait_for_log(
            "client went away during the prefill",
            Duration::from_secs(120)
        ),
        "the prefill went on after the client left:\n{}",
        srv.log()
    );

    // Still serving, and every request's media file is gone.
    srv.assert_running();
    assert_eq!(srv.get("/health").status, 200);
    let r = srv.post(&ask(image(&crafted::png(64, 64))));
    assert_eq!(r.status, 200, "{}", r.text());
    let left: Vec<PathBuf> = walk_files(&tmp);
    assert!(left.is_empty(), "request media left behind: {left:?}");
    assert!(srv.stop().is_some_and(|s| s.success()), "{}", srv.log());
    assert!(walk_files(&tmp).is_empty() && std::fs::read_dir(&tmp).unwrap().count() == 0);
    let _ = std::fs::remove_dir_all(&tmp);

    // A request over its time is stopped inside its prefill, with a 503 saying so.
    let srv = Server::start(&["--llm", "smollm2", "--max-request-seconds", "0.05"]);
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(300);
    let r = srv
        .post(&json!({"model": srv.model_id(), "messages": [{"role": "user", "content": long}]}));
    let m = r.assert_error(503, "out of time");
    assert!(m.contains("--max-request-seconds"), "{m}");
    eprintln!("done in {:.1}s", t0.elapsed().as_secs_f64());
}

/// Every file under `dir`, recursively.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

//! A hostile but fair user's inputs, crafted here at test time (headers that claim huge sizes,
//! impossible sample rates, cut-off data, random bytes): every one is a one-line error naming
//! the file, or a normal answer, within 60 s and 2 GB, never a panic, an abort or a hang.
//! The media go through the real decoders, the fixture projectors and SmolLM2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod crafted;
use crafted::{jpeg_claiming, noise, png, png_claiming, wav};

const AUDIO_PROJECTOR: &str = "tests/fixtures/mmproj/projector";
const SIGLIP_PROJECTOR: &str = "tests/fixtures/mmproj-image/projector-siglip";
const CLIP_PROJECTOR: &str = "tests/fixtures/mmproj-image/projector-clip";

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("anymal-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `anymal args`, killed (and failed) after 60 s.
fn anymal(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anymal"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`anymal {}` ran past 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn generate(projector: &str, flag: &str, file: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "generate",
        "--llm",
        "smollm2",
        "--projector",
        projector,
        flag,
        file.to_str().unwrap(),
        "--prompt",
        "x",
        "--max-tokens",
        "1",
    ];
    args.extend_from_slice(extra);
    anymal(&args, &[])
}

/// Exit 1 and one `error:` line that names `file` and contains `want`.
fn assert_error(o: &Outcome, file: &Path, want: &str) {
    let what = file.display().to_string();
    assert_eq!(o.code, 1, "{what}: exit {} ({})", o.code, o.stderr);
    assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: {}", o.stderr);
    assert!(
        errors[0].contains(&what) && errors[0].contains(want),
        "{what}: expected '{want}' in: {}",
        errors[0]
    );
    assert!(
        !o.stderr.contains("stack backtrace") && !o.stderr.contains("   0: "),
        "{what}: a backtrace in the error: {}",
        o.stderr
    );
}

fn assert_answered(o: &Outcome, what: &str) {
    assert_eq!(o.code, 0, "{what}: {}", o.stderr);
    assert!(
        !o.stdout.trim().is_empty() || o.stderr.contains("t/s"),
        "{what}"
    );
}

/// The largest resident set of any child process this test binary has waited for, in bytes.
fn children_peak_rss() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    ru.ru_maxrss as u64 * 1024
}

const TWO_GB: u64 = 2 << 30;

#[test]
fn crafted_images_are_bounded_before_decoding() {
    // 100000 x 100000 in 70 bytes: refused from the header, not allocated (30 GB).
    let f = write("claims_10gpx.png", &png_claiming(100_000, 100_000));
    assert_error(
        &generate(SIGLIP_PROJECTOR, "--image", &f, &[]),
        &f,
        "over the limit of 64.0 MP",
    );
    let f = write("claims_4gpx.jpg", &jpeg_claiming(65_500, 65_500));
    assert_error(
        &generate(SIGLIP_PROJECTOR, "--image", &f, &[]),
        &f,
        "max-image-pixels",
    );
    // The bound is a flag.
    let f = write("small.png", &png(64, 48));
    assert_error(
        &generate(
            SIGLIP_PROJECTOR,
            "--image",
            &f,
            &["--max-image-pixels", "1000"],
        ),
        &f,
        "64x48",
    );
    // Extreme aspect ratios under the bound are answered, through the centre-crop resize of
    // CLIP (whose short side goes to the tower's size) and SigLIP's stretch.
    for (w, h) in [(8000, 1), (1, 20000)] {
        let f = write(&format!("strip_{w}x{h}.png"), &png(w, h));
        assert_answered(
            &generate(CLIP_PROJECTOR, "--image", &f, &[]),
            &f.display().to_string(),
        );
        assert_answered(
            &generate(SIGLIP_PROJECTOR, "--image", &f, &[]),
            &f.display().to_string(),
        );
    }
    // A projector.json asking for preprocessing beyond the bounds is refused at load.
    let p = dir().join("projector-huge-resize");
    std::fs::create_dir_all(&p).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(CLIP_PROJECTOR).join("projector.json")).unwrap(),
    )
    .unwrap();
    cfg["encoder_options"] = serde_json::json!({"resize_to": 16384});
    std::fs::write(p.join("projector.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        Path::new(CLIP_PROJECTOR).join("projector.safetensors"),
        p.join("projector.safetensors"),
    )
    .unwrap();
    let o = generate(p.to_str().unwrap(), "--image", &f, &[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("resize_to") && o.stderr.contains("8192"),
        "{}",
        o.stderr
    );
    assert!(
        children_peak_rss() < TWO_GB,
        "peak {} MB",
        children_peak_rss() >> 20
    );
}

#[test]
fn crafted_audio_is_an_error_naming_what_is_wrong() {
    let data = noise(32_000, 7);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // 32 KB at 1 Hz would be 9 hours of audio once resampled.
        (
            "rate_1hz.wav",
            wav(1, 1, &data, None),
            "a sample rate of 1 Hz",
        ),
        (
            "rate_10mhz.wav",
            wav(10_000_000, 1, &noise(32_000, 8), None),
            "10000000 Hz",
        ),
        // The header states 10 s; the data holds 1 s.
        (
            "short_data.wav",
            wav(16_000, 1, &noise(32_000, 9), Some(320_000)),
            "truncated",
        ),
        (
            "claims_4gb.wav",
            wav(16_000, 1, &noise(32_000, 20), Some(0xFFFF_FFF0)),
            "truncated",
        ),
        (
            "format_tag.wav",
            wav(16_000, 0x1234, &noise(32_000, 11), None),
            "codec",
        ),
        ("random.mp3", noise(5000, 12), "not a media file"),
    ];
    for (name, bytes, want) in cases {
        let f = write(name, &bytes);
        assert_error(&generate(AUDIO_PROJECTOR, "--audio", &f, &[]), &f, want);
    }
    // A clip over the length bound stops decoding there.
    let f = write("one_second.wav", &wav(16_000, 1, &noise(32_000, 13), None));
    assert_error(
        &generate(
            AUDIO_PROJECTOR,
            "--audio",
            &f,
            &["--max-audio-seconds", "0.5"],
        ),
        &f,
        "max-audio-seconds",
    );
    // Half an MP3 (cut mid-frame), made by FFmpeg, which the fetch script installs.
    let full = dir().join("tone.mp3");
    let st = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=4",
        ])
        .arg(&full)
        .status()
        .expect("ffmpeg on PATH (scripts/fetch-assets.sh installs it)");
    assert!(st.success());
    let bytes = std::fs::read(&full).unwrap();
    let f = write("half.mp3", &bytes[..bytes.len() / 2 + 7]);
    assert_error(
        &generate(AUDIO_PROJECTOR, "--audio", &f, &[]),
        &f,
        "truncated",
    );
    // The whole file is fine.
    assert_answered(
        &generate(AUDIO_PROJECTOR, "--audio", &full, &[]),
        "tone.mp3",
    );
    assert!(
        children_peak_rss() < TWO_GB,
        "peak {} MB",
        children_peak_rss() >> 20
    );
}

#[test]
fn imu_time_spans_are_bounded_before_resampling() {
    let cfg = anymal_encoders::imu::ImuPreprocessConfig::default();
    // Irregular steps whose median is 0.1 s but whose last is 1e15 s: 1e16 grid rows.
    let mut csv = String::from("t,ax,ay,az,gx,gy,gz\n");
    for t in ["0", "0.1", "0.2", "0.3", "1e15"] {
        csv.push_str(&format!("{t},0,0,1,0,0,0\n"));
    }
    let f = write("huge_step.csv", csv.as_bytes());
    let e = anymal_encoders::imu::load_imu(&f, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("huge_step.csv") && e.contains("max-imu-rows"),
        "{e}"
    );
    // Regular steps of 1e9 s (1e18 read as nanoseconds), resampled to 10 Hz: 2e11 rows.
    let mut csv = String::from("t,ax,ay,az,gx,gy,gz\n");
    for i in 0..20 {
        csv.push_str(&format!("{i}e18,0,0,1,0,0,0\n"));
    }
    let f = write("slow_clock.csv", csv.as_bytes());
    let e = anymal_encoders::imu::load_imu(&f, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("slow_clock.csv") && e.contains("max_imu_rows"),
        "{e}"
    );
}

#[test]
fn errors_stay_one_line_with_rust_backtrace_set() {
    // A projector whose weights are cut short: the error comes up through candle, which
    // attaches a backtrace when RUST_BACKTRACE is set.
    let p = dir().join("projector-cut");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::copy(
        Path::new(AUDIO_PROJECTOR).join("projector.json"),
        p.join("projector.json"),
    )
    .unwrap();
    let w = std::fs::read(Path::new(AUDIO_PROJECTOR).join("projector.safetensors")).unwrap();
    std::fs::File::create(p.join("projector.safetensors"))
        .unwrap()
        .write_all(&w[..w.len() / 2])
        .unwrap();
    let clip = Path::new("tests/fixtures/mmproj/clips/added.wav");
    let args = [
        "generate",
        "--llm",
        "smollm2",
        "--projector",
        p.to_str().unwrap(),
        "--audio",
        clip.to_str().unwrap(),
        "--prompt",
        "x",
    ];
    let o = anymal(&args, &[("RUST_BACKTRACE", "1")]);
    assert_error(&o, &p, "projector");
    // -v shows the whole chain, backtrace included.
    let mut verbose = args.to_vec();
    verbose.push("-v");
    let o = anymal(&verbose, &[("RUST_BACKTRACE", "1")]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.lines().count() > 1, "{}", o.stderr);
}

#[test]
fn settings_and_files_that_cannot_work_are_named() {
    // A recipe path that is a folder.
    let d = dir().join("a-folder");
    std::fs::create_dir_all(&d).unwrap();
    let o = anymal(
        &[
            "align",
            "--modality",
            "audio",
            "--recipe",
            d.to_str().unwrap(),
        ],
        &[],
    );
    assert_error(&o, &d, "is a folder");
    // --audio to a model that takes images.
    let f = write("tone.wav", &wav(16_000, 1, &noise(3200, 30), None));
    let o = generate(SIGLIP_PROJECTOR, "--audio", &f, &[]);
    assert_error(&o, &f, "no audio projector (it takes image)");
    // A missing relative path that looks like a hub id (org/name): both readings are named.
    let o = anymal(&["inspect", "models/not-here.gguf"], &[]);
    assert_error(
        &o,
        Path::new("models/not-here.gguf"),
        "no such file or folder",
    );
    // A GGUF cut off in the middle of its tensors.
    let model = anymal_llm::loader::known_model_path("smollm2").unwrap();
    let bytes = std::fs::read(&model).unwrap();
    let cut = write("cut.gguf", &bytes[..bytes.len() / 2]);
    assert_error(
        &anymal(&["inspect", cut.to_str().unwrap()], &[]),
        &cut,
        "truncated",
    );
    // LoRA targets with one name that matches no layer: an error naming it and the layers.
    let o = anymal(
        &[
            "tune",
            "--recipe",
            "tune/audio-instruct_smollm2-135m",
            "--set",
            "lora.target_modules=[\"q_proj\", \"v_porj\"]",
            "--output",
            dir().join("tune-typo").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("\"v_porj\"") && o.stderr.contains("self_attn.v_proj"),
        "{}",
        o.stderr
    );
}

//! The built-in modalities through the plug-in API, as the toolkit sees them: the registry, the
//! recipe options, and files in -> one result per file out, where a bad file is an error that
//! names it and costs only itself.

mod common;

use std::path::{Path, PathBuf};

use anymal_encoders::{EncoderContext, FileEncoder, ModalityRegistry};

fn encoder(modality: &str, reference: &str, options: serde_json::Value) -> Box<dyn FileEncoder> {
    let reg = ModalityRegistry::with_builtins();
    let ctx = EncoderContext::new(common::cache_dir()).with_options(options);
    reg.get(modality)
        .unwrap()
        .file_encoder(reference, &ctx)
        .unwrap_or_else(|e| panic!("{modality}/{reference}: {e}"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anymal-modalities-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Each bad path's error names it; the good ones give `(n, d)` features.
fn check(enc: &dyn FileEncoder, good: &[&Path], bad: &[&Path], n: usize) {
    let mut paths: Vec<&Path> = Vec::new();
    // Interleave so a bad file sits between good ones in the same batch.
    for (i, g) in good.iter().enumerate() {
        paths.push(g);
        if let Some(b) = bad.get(i) {
            paths.push(b);
        }
    }
    paths.extend(bad.iter().skip(good.len()));
    let out = enc.encode_files(&paths);
    assert_eq!(out.len(), paths.len());
    for (p, r) in paths.iter().zip(out) {
        if good.contains(p) {
            let t = r.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(t.dims(), &[n, enc.hidden_size()], "{}", p.display());
        } else {
            let e = r
                .err()
                .unwrap_or_else(|| panic!("{} was accepted", p.display()))
                .to_string();
            let name = p.file_name().unwrap().to_string_lossy();
            assert!(e.contains(&*name), "error does not name {name}: {e}");
        }
    }
}

#[test]
fn registry_holds_the_builtins_and_rejects_duplicates() {
    let mut reg = ModalityRegistry::with_builtins();
    let names = reg.names();
    for m in ["audio", "image", "video", "imu"] {
        assert!(names.iter().any(|n| n == m), "{names:?}");
        assert_eq!(reg.get(m).unwrap().placeholder(), format!("<{m}>"));
    }
    let e = reg.get("smell").err().unwrap().to_string();
    assert!(e.contains("smell") && e.contains("imu"), "{e}");
    let e = reg
        .register(anymal_encoders::imu::ImuModality::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already registered"), "{e}");
}

#[test]
fn options_are_checked_by_the_modality() {
    let reg = ModalityRegistry::with_builtins();
    let ctx = |o| EncoderContext::new(common::cache_dir()).with_options(o);
    for (m, r, o, want) in [
        (
            "image",
            "mobilenet_v2",
            serde_json::json!({"sise": 96}),
            "sise",
        ),
        (
            "imu",
            "raw",
            serde_json::json!({"window": "long"}),
            "window",
        ),
        (
            "audio",
            "whisper-tiny-en",
            serde_json::json!({"frames": 8}),
            "unknown field `frames`",
        ),
        (
            "video",
            "mobilenet_v2",
            serde_json::json!({"sampling": {"kind": "uniform", "frames": 0}}),
            "frames",
        ),
        ("imu", "whisper", serde_json::json!({}), "raw"),
        ("image", "no-such-net", serde_json::json!({}), "no-such-net"),
    ] {
        let e = reg.get(m).unwrap().file_encoder(r, &ctx(o)).err();
        let e = e.unwrap_or_else(|| panic!("{m}/{r} accepted")).to_string();
        assert!(e.contains(want), "{m}/{r}: {e}");
    }
}

#[test]
fn images_encode_and_bad_images_are_named() {
    let enc = encoder(
        "image",
        "mobilenet_v2",
        serde_json::json!({"size": 96, "resize_to": 96}),
    );
    let cat = common::asset("data/photos/chelsea.png", "photos");
    let coffee = common::asset("data/photos/coffee.png", "photos");
    let truncated = tmp("truncated.png");
    let bytes = std::fs::read(&cat).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let noise = tmp("noise.jpg");
    std::fs::write(
        &noise,
        (0..4000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // 96 px -> a 3x3 grid of 1280-d tokens.
    check(
        &*enc,
        &[&cat, &coffee],
        &[&truncated, &noise, Path::new("/nonexistent/x.png")],
        9,
    );
}

#[test]
fn imu_windows_encode_and_bad_recordings_are_named() {
    let enc = encoder(
        "imu",
        "raw",
        serde_json::json!({"rate_hz": 10.0, "window": 20, "channels": 3}),
    );
    let good = tmp("good.csv");
    let mut s = String::from("t,ax,ay,az\n");
    for i in 0..30 {
        s += &format!("{},{},{},{}\n", i as f32 * 0.1, i, (i as f32).sin(), 1.0);
    }
    std::fs::write(&good, &s).unwrap();
    let nan = tmp("nan.csv");
    std::fs::write(&nan, s.replace("\n5,", "\nNaN,").replace(",5,", ",NaN,")).unwrap();
    let short = tmp("short.csv");
    std::fs::write(&short, "t,ax,ay,az\n0,1,2,3\n").unwrap();
    let wide = tmp("wide.csv");
    std::fs::write(
        &wide,
        s.replace(",1\n", ",1,0\n").replace("az\n", "az,gx\n"),
    )
    .unwrap();
    check(&*enc, &[&good], &[&nan, &short, &wide], 20);
}

#[cfg(feature = "video")]
#[test]
fn videos_encode_and_a_file_without_video_is_named() {
    let enc = encoder(
        "video",
        "mobilenet_v2",
        serde_json::json!({"sampling": {"kind": "uniform", "frames": 3}, "size": 96, "resize_to": 96, "grid": 2, "max_side": 160}),
    );
    let clip = common::asset("data/videos/carphone_pristine.mp4", "videos");
    let audio_only = common::fixture("audio/bad_truncated.wav");
    let wav = common::speech_clip("vm-goodbye.wav");
    // 3 frames x 2x2 tokens.
    check(&*enc, &[&clip], &[&audio_only, &wav], 12);
}

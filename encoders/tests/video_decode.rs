//! Decoding real clips and clips made here with the ffmpeg tool in every container the video
//! path promises (MP4, MOV, MKV, WebM with VP8 and VP9); errors, not panics, for broken files.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anymal_encoders::video::{
    decode_audio_16k_mono, decode_frames, decode_frames_with, has_audio_stream, DecodeOptions,
    FrameSampling, RgbImage, Video,
};
use anymal_encoders::Error;
use anymal_util::rng::SplitMix64;

fn clip(name: &str) -> PathBuf {
    common::asset(&format!("data/videos/{name}"), "videos")
}

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("anymal-video-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the ffmpeg tool quietly; a missing tool fails with the command that installs it.
fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run ffmpeg ({e}): install it with `scripts/fetch-assets.sh system`")
        });
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn uniform(n: usize) -> FrameSampling {
    FrameSampling::Uniform { frames: n }
}

fn decode(path: &Path, s: &FrameSampling) -> Video {
    decode_frames(path, s).unwrap_or_else(|e| panic!("{e}"))
}

/// Mean absolute difference of two same-size images, in 0..=255.
fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| x.abs_diff(y) as u64)
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

fn mean_rgb(img: &RgbImage) -> [f64; 3] {
    let mut s = [0f64; 3];
    for p in img.pixels() {
        for (acc, &v) in s.iter_mut().zip(&p.0) {
            *acc += v as f64;
        }
    }
    let n = (img.width() * img.height()) as f64;
    s.map(|v| v / n)
}

/// The checks every uniformly sampled clip must pass.
fn check_uniform(v: &Video, n: usize, w: u32, h: u32, name: &str) {
    assert_eq!(v.frames.len(), n, "{name}");
    assert_eq!(v.timestamps_s.len(), n, "{name}");
    assert_eq!((v.width, v.height), (w, h), "{name}");
    for f in &v.frames {
        assert_eq!(f.dimensions(), (w, h), "{name}");
    }
    assert!(
        v.timestamps_s.windows(2).all(|p| p[1] > p[0]),
        "{name}: {:?}",
        v.timestamps_s
    );
    // Spread over the clip: each frame within a frame or so of the middle of its slice.
    let slack = 1.5 / v.fps.max(1.0);
    for (i, &t) in v.timestamps_s.iter().enumerate() {
        let target = (i as f64 + 0.5) * v.duration_s / n as f64;
        assert!(
            (t - target).abs() <= slack,
            "{name}: frame {i} at {t:.3} s, target {target:.3} s"
        );
    }
    let differs = v
        .frames
        .windows(2)
        .any(|p| mean_abs_diff(&p[0], &p[1]) > 1.0);
    assert!(differs, "{name}: all frames look the same");
}

#[test]
fn real_clips_uniform_8() {
    for (name, w, h, fps, dur, audio, pixel_aspect) in [
        ("bigbuckbunny.mp4", 1280, 720, 25.0, 5.28, true, 1.0),
        ("bikes.mp4", 640, 272, 25.0, 10.0, false, 1.0),
        // QCIF with the non-square pixels of its PAL origin: frames stay at the coded size.
        (
            "carphone_pristine.mp4",
            176,
            144,
            30000.0 / 1001.0,
            4.004,
            false,
            128.0 / 117.0,
        ),
    ] {
        let v = decode(&clip(name), &uniform(8));
        check_uniform(&v, 8, w, h, name);
        assert!((v.fps - fps).abs() < 1e-3, "{name}: {} fps", v.fps);
        assert!(
            (v.duration_s - dur).abs() < 0.05,
            "{name}: {} s",
            v.duration_s
        );
        assert_eq!((v.source_width, v.source_height), (w, h), "{name}");
        assert_eq!(v.has_audio, audio, "{name}");
        assert!(
            (v.pixel_aspect - pixel_aspect).abs() < 1e-9,
            "{name}: {}",
            v.pixel_aspect
        );
        // Real pictures, not a grey or black screen.
        let m = mean_rgb(&v.frames[4]);
        assert!(
            m.iter().all(|&c| c > 10.0 && c < 245.0),
            "{name}: mean {m:?}"
        );
    }
}

#[test]
fn max_side_downscales_keeping_aspect() {
    let opts = DecodeOptions {
        max_side: Some(320),
        ..Default::default()
    };
    let v = decode_frames_with(&clip("bigbuckbunny.mp4"), &uniform(4), &opts).unwrap();
    check_uniform(&v, 4, 320, 180, "bigbuckbunny 320");
    assert_eq!((v.source_width, v.source_height), (1280, 720));
    // The same picture as the full-size decode, shrunk.
    let full = decode(&clip("bigbuckbunny.mp4"), &uniform(4));
    assert_eq!(full.timestamps_s, v.timestamps_s);
    let (a, b) = (mean_rgb(&full.frames[1]), mean_rgb(&v.frames[1]));
    for c in 0..3 {
        assert!((a[c] - b[c]).abs() < 2.0, "{a:?} vs {b:?}");
    }
}

#[test]
fn rate_sampling_follows_the_clock() {
    // 4.004 s at 29.97 fps, 2 frames a second: t = 0, 0.5, ..., 4.0 (4.0 < 4.004; its
    // nearest frame is the last one, at 3.97).
    let s = FrameSampling::Rate {
        fps: 2.0,
        max_frames: 100,
    };
    let v = decode(&clip("carphone_pristine.mp4"), &s);
    assert_eq!(v.frames.len(), 9, "{:?}", v.timestamps_s);
    let half_frame = 0.5 / v.fps + 1e-6;
    for (k, &t) in v.timestamps_s.iter().enumerate().take(8) {
        assert!((t - 0.5 * k as f64).abs() <= half_frame, "frame {k} at {t}");
    }
    assert!((v.timestamps_s[8] - 119.0 / v.fps).abs() < 1e-6);
    let capped = FrameSampling::Rate {
        fps: 2.0,
        max_frames: 3,
    };
    assert_eq!(
        decode(&clip("carphone_pristine.mp4"), &capped).frames.len(),
        3
    );
}

#[test]
fn more_frames_than_the_clip_has_repeat_frames() {
    let t = TempDir::new("short");
    let p = t.join("three.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=64x48:r=10:d=0.3",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        p.to_str().unwrap(),
    ]);
    let v = decode(&p, &uniform(8));
    assert_eq!(v.frames.len(), 8);
    assert!(v.timestamps_s.windows(2).all(|p| p[1] >= p[0]));
    let distinct: std::collections::BTreeSet<u64> = v
        .timestamps_s
        .iter()
        .map(|t| (t * 1000.0).round() as u64)
        .collect();
    assert_eq!(distinct.len(), 3, "{:?}", v.timestamps_s);
}

#[test]
fn seeking_picks_the_same_frames_as_decoding_through() {
    // 60 s, a keyframe every 2 s, B-frames: five targets 12 s apart are reached by seeking.
    let t = TempDir::new("seek");
    let p = t.join("long.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=96x64:r=10:d=60",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-bf",
        "3",
        "-g",
        "20",
        "-pix_fmt",
        "yuv420p",
        p.to_str().unwrap(),
    ]);
    for n in [5, 8, 13] {
        let s = uniform(n);
        let seek = decode(&p, &s);
        let through = decode_frames_with(
            &p,
            &s,
            &DecodeOptions {
                seek: false,
                ..Default::default()
            },
        )
        .unwrap();
        check_uniform(&seek, n, 96, 64, "long.mp4");
        assert_eq!(seek.timestamps_s, through.timestamps_s, "{n} frames");
        for (a, b) in seek.frames.iter().zip(&through.frames) {
            assert!(a.as_raw() == b.as_raw(), "{n} frames: pixels differ");
        }
    }
}

#[test]
fn webm_mkv_mov_decode() {
    let t = TempDir::new("formats");
    let src = "testsrc2=s=160x120:r=10:d=2";
    let cases: [(&str, &[&str]); 5] = [
        ("vp8.webm", &["-c:v", "libvpx", "-b:v", "300k"]),
        (
            "vp9.webm",
            &[
                "-c:v",
                "libvpx-vp9",
                "-b:v",
                "300k",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
            ],
        ),
        ("h264.mkv", &["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
        ("h264.mov", &["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
        ("mpeg4.mkv", &["-c:v", "mpeg4", "-q:v", "3"]),
    ];
    for (name, codec) in cases {
        let p = t.join(name);
        let mut args = vec!["-f", "lavfi", "-i", src];
        args.extend_from_slice(codec);
        args.push(p.to_str().unwrap());
        ffmpeg(&args);
        let v = decode(&p, &uniform(4));
        check_uniform(&v, 4, 160, 120, name);
        assert!(
            (v.duration_s - 2.0).abs() < 0.15,
            "{name}: {} s",
            v.duration_s
        );
        assert!(!v.has_audio, "{name}");
    }
}

/// RGB of one Y'CbCr sample: `kr`, `kb` of the matrix, limited (16-235) or full range.
fn yuv_to_rgb(yuv: [u8; 3], kr: f64, kb: f64, full: bool) -> [f64; 3] {
    let (y, u, v) = (yuv[0] as f64, yuv[1] as f64 - 128.0, yuv[2] as f64 - 128.0);
    let (y, u, v) = if full {
        (y, u, v)
    } else {
        (
            (y - 16.0) * 255.0 / 219.0,
            u * 255.0 / 224.0,
            v * 255.0 / 224.0,
        )
    };
    let r = y + 2.0 * (1.0 - kr) * v;
    let b = y + 2.0 * (1.0 - kb) * u;
    let g = (y - kr * r - kb * b) / (1.0 - kr - kb);
    [r, g, b].map(|c| c.clamp(0.0, 255.0))
}

#[test]
fn colours_follow_the_stream_matrix_and_range() {
    // One flat Y'CbCr colour, encoded losslessly (x264 at qp 0) and tagged by a bitstream
    // filter (so nothing converts the samples): decoded with the matrix and range each tag
    // declares, it must give that colour's RGB.
    let t = TempDir::new("colour");
    let (w, h) = (64usize, 48usize);
    let stored = [100u8, 180, 98];
    let mut frame = vec![stored[0]; w * h];
    frame.extend(std::iter::repeat_n(stored[1], w * h / 4));
    frame.extend(std::iter::repeat_n(stored[2], w * h / 4));
    let raw = t.join("flat.yuv");
    std::fs::write(&raw, frame.repeat(5)).unwrap();
    // (name, h264_metadata options, kr, kb, full range)
    let cases = [
        ("untagged.mp4", None, 0.299, 0.114, false),
        (
            "bt709.mp4",
            Some("matrix_coefficients=1"),
            0.2126,
            0.0722,
            false,
        ),
        (
            "bt601.mp4",
            Some("matrix_coefficients=6"),
            0.299,
            0.114,
            false,
        ),
        (
            "full.mp4",
            Some("video_full_range_flag=1"),
            0.299,
            0.114,
            true,
        ),
        (
            "bt709-full.mp4",
            Some("matrix_coefficients=1:video_full_range_flag=1"),
            0.2126,
            0.0722,
            true,
        ),
    ];
    for (name, tags, kr, kb, full) in cases {
        let p = t.join(name);
        let bsf = tags.map(|t| format!("h264_metadata={t}"));
        let mut args = vec![
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-s",
            "64x48",
            "-r",
            "10",
            "-i",
            raw.to_str().unwrap(),
            "-c:v",
            "libx264",
            "-qp",
            "0",
        ];
        if let Some(b) = &bsf {
            args.extend_from_slice(&["-bsf:v", b]);
        }
        args.push(p.to_str().unwrap());
        ffmpeg(&args);
        let want = yuv_to_rgb(stored, kr, kb, full);
        let got = mean_rgb(&decode(&p, &uniform(1)).frames[0]);
        for c in 0..3 {
            assert!(
                (got[c] - want[c]).abs() < 1.5,
                "{name}: decoded {got:?}, {stored:?} means {want:?}"
            );
        }
        // The other matrix or the other range would be visibly off: the check can tell.
        let other_matrix = yuv_to_rgb(stored, 0.2126 + 0.299 - kr, 0.0722 + 0.114 - kb, full);
        let other_range = yuv_to_rgb(stored, kr, kb, !full);
        for wrong in [other_matrix, other_range] {
            assert!((0..3).any(|c| (want[c] - wrong[c]).abs() > 4.0), "{name}");
        }
    }
}

#[test]
fn soundtrack_decodes_to_16k_mono() {
    let p = clip("bigbuckbunny.mp4");
    assert!(has_audio_stream(&p).unwrap());
    assert!(!has_audio_stream(&clip("bikes.mp4")).unwrap());
    // 5.1 AAC at 48 kHz, 5.31 s: symphonia's AAC decoder takes only mono and stereo, FFmpeg
    // takes it all.
    assert!(matches!(
        anymal_encoders::audio::load_audio_16k(&p),
        Err(Error::UnsupportedCodec { .. })
    ));
    let samples = decode_audio_16k_mono(&p).unwrap_or_else(|e| panic!("{e}"));
    let secs = samples.len() as f64 / 16_000.0;
    assert!((secs - 5.31).abs() < 0.05, "{secs} s");
    assert!(
        rms(&samples) > 1e-3,
        "silent soundtrack? rms {}",
        rms(&samples)
    );
    assert!(samples.iter().all(|s| s.abs() <= 1.0));
    // A file without sound: an error naming it.
    let err = decode_audio_16k_mono(&clip("bikes.mp4"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bikes.mp4") && err.contains("no audio track"),
        "{err}"
    );
}

#[test]
fn stereo_aac_in_mp4_agrees_with_the_audio_module() {
    // Both paths must give the same signal where both can read the file: a 440 Hz tone on
    // the left (lavfi's sine is 1/8 of full scale), silence on the right: their mean is a
    // 1/16 tone.
    let t = TempDir::new("stereo-aac");
    let p = t.join("tone.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=2:sample_rate=44100",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=64x48:r=10:d=2",
        "-filter_complex",
        "[0:a]pan=stereo|c0=c0|c1=0*c0[a]",
        "-map",
        "[a]",
        "-map",
        "1:v",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-c:v",
        "libx264",
        p.to_str().unwrap(),
    ]);
    let ff = decode_audio_16k_mono(&p).unwrap_or_else(|e| panic!("{e}"));
    let sym = anymal_encoders::audio::load_audio_16k(&p).unwrap_or_else(|e| panic!("{e}"));
    // symphonia keeps AAC's 1024 priming samples (no edit lists), FFmpeg drops them.
    let lead = (1024.0 * 16_000.0 / 44_100.0) as usize;
    assert!(
        sym.len().abs_diff(ff.len() + lead) < 40,
        "{} vs {}",
        sym.len(),
        ff.len()
    );
    let (a, b) = (rms(&ff[8000..24000]), rms(&sym[8000 + lead..24000 + lead]));
    assert!(
        (a * 2f64.sqrt() - 0.0625).abs() < 0.003,
        "ffmpeg level {}",
        a * 2f64.sqrt()
    );
    assert!(
        (a - b).abs() / a < 0.01,
        "ffmpeg rms {a}, symphonia rms {b}"
    );
    let v = decode(&p, &uniform(2));
    assert!(v.has_audio);
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// The error for `path` names the file and is the expected kind.
fn expect_err(path: &Path, what: &str, ok: impl Fn(&Error) -> bool) {
    let err = decode_frames(path, &uniform(8)).expect_err(what);
    let msg = err.to_string();
    assert!(ok(&err), "{what}: unexpected error {err:?}");
    assert!(
        msg.contains(&path.display().to_string()),
        "{what}: the message does not name the file: {msg}"
    );
}

#[test]
fn audio_only_file_has_no_video_stream() {
    let t = TempDir::new("audio-only");
    for name in ["sine.m4a", "sine.mkv"] {
        let p = t.join(name);
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            "-c:a",
            "aac",
            p.to_str().unwrap(),
        ]);
        expect_err(&p, name, |e| matches!(e, Error::NoVideoStream { .. }));
        let msg = decode_frames(&p, &uniform(8)).unwrap_err().to_string();
        assert!(msg.ends_with(": has no video stream"), "{msg}");
        assert!(has_audio_stream(&p).unwrap());
    }
}

#[test]
fn truncated_files_are_errors() {
    let t = TempDir::new("truncated");
    let bikes = std::fs::read(clip("bikes.mp4")).unwrap();
    // The index (moov) of this file is at its end: the first 20 KB have none.
    let head = t.join("bikes-20k.mp4");
    std::fs::write(&head, &bikes[..20 * 1024]).unwrap();
    expect_err(&head, "first 20 KB", |e| matches!(e, Error::Corrupt { .. }));

    // Index first (faststart): the file opens, then the stream breaks off.
    let fast = t.join("bikes-faststart.mp4");
    ffmpeg(&[
        "-i",
        clip("bikes.mp4").to_str().unwrap(),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        fast.to_str().unwrap(),
    ]);
    decode(&fast, &uniform(8));
    let bytes = std::fs::read(&fast).unwrap();
    let cut = t.join("bikes-faststart-40pc.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 4 / 10]).unwrap();
    expect_err(
        &cut,
        "faststart cut at 40%",
        |e| matches!(e, Error::Corrupt { what, .. } if what.contains("truncated")),
    );
    // WebM: no index to contradict, but the demuxer notices the cluster that breaks off.
    let webm = t.join("vp8.webm");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=160x120:r=10:d=4",
        "-c:v",
        "libvpx",
        "-b:v",
        "300k",
        webm.to_str().unwrap(),
    ]);
    decode(&webm, &uniform(8));
    let bytes = std::fs::read(&webm).unwrap();
    let webm_cut = t.join("vp8-half.webm");
    std::fs::write(&webm_cut, &bytes[..bytes.len() / 2]).unwrap();
    expect_err(
        &webm_cut,
        "webm cut in half",
        |e| matches!(e, Error::Corrupt { what, .. } if what.contains("truncated")),
    );

    // The frames before the cut are still there for whoever asks only for them.
    let early = FrameSampling::Rate {
        fps: 1.0,
        max_frames: 2,
    };
    assert_eq!(decode(&cut, &early).frames.len(), 2);
}

#[test]
fn garbage_empty_missing_and_directories_are_errors() {
    let t = TempDir::new("garbage");
    // The same "random" bytes on every run.
    let mut rng = SplitMix64::new(0x9e37_79b9_7f4a_7c15);
    let bytes: Vec<u8> = (0..64 * 1024).map(|_| rng.next_u64() as u8).collect();
    let random = t.join("random.mp4");
    std::fs::write(&random, &bytes).unwrap();
    expect_err(&random, "random bytes", |_| true);

    let empty = t.join("empty.webm");
    std::fs::write(&empty, b"").unwrap();
    expect_err(&empty, "empty file", |e| {
        matches!(e, Error::NotMedia { .. })
    });

    let text = t.join("notes.mkv");
    std::fs::write(
        &text,
        "these are not the frames you are looking for\n".repeat(50),
    )
    .unwrap();
    expect_err(&text, "text file", |e| matches!(e, Error::NotMedia { .. }));

    let missing = t.join("missing.mp4");
    expect_err(&missing, "missing file", |e| matches!(e, Error::Io { .. }));
    assert!(matches!(has_audio_stream(&missing), Err(Error::Io { .. })));

    expect_err(&t.0, "a directory", |e| matches!(e, Error::Io { .. }));

    let bad = FrameSampling::Uniform { frames: 0 };
    assert!(matches!(
        decode_frames(&clip("bikes.mp4"), &bad),
        Err(Error::InvalidArgument(_))
    ));
}

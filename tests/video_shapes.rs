//! The generated video-shapes set: manifests, clips that decode, and pictures that show what
//! the captions say (the square has the captioned colour and moves the captioned way).
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};

use anymal::data::video_shapes::{build, VideoShapesOptions, COLOURS};
use anymal_encoders::video::{decode_frames, FrameSampling, RgbImage};

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("anymal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small() -> VideoShapesOptions {
    VideoShapesOptions {
        train: 8,
        valid: 2,
        test: 2,
        ..Default::default()
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("manifest line is JSON"))
        .collect()
}

/// Per-channel median: the background, since the square covers a few percent of the frame.
fn background(img: &RgbImage) -> [i32; 3] {
    let mut out = [0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut v: Vec<u8> = img.pixels().map(|p| p.0[c]).collect();
        v.sort_unstable();
        *o = v[v.len() / 2] as i32;
    }
    out
}

/// Centroid (x, y) and mean colour of the pixels far from the background.
fn square(img: &RgbImage) -> ([f64; 2], [f64; 3], usize) {
    let bg = background(img);
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0usize);
    let mut rgb = [0.0; 3];
    for (x, y, p) in img.enumerate_pixels() {
        let d: i32 = (0..3).map(|c| (p.0[c] as i32 - bg[c]).abs()).sum();
        if d > 90 {
            sx += x as f64;
            sy += y as f64;
            n += 1;
            for (acc, &v) in rgb.iter_mut().zip(&p.0) {
                *acc += v as f64;
            }
        }
    }
    assert!(n > 0, "no square in the frame");
    let k = n as f64;
    ([sx / k, sy / k], rgb.map(|v| v / k), n)
}

fn nearest_colour(rgb: [f64; 3]) -> &'static str {
    COLOURS
        .iter()
        .min_by(|a, b| {
            let d = |c: &[u8; 3]| (0..3).map(|i| (rgb[i] - c[i] as f64).powi(2)).sum::<f64>();
            d(&a.1).total_cmp(&d(&b.1))
        })
        .map(|c| c.0)
        .unwrap_or("none")
}

#[test]
fn clips_show_what_their_captions_say() {
    let dir = TempDir::new("video-shapes");
    let out = dir.0.join("set");
    let opts = small();
    let summary = build(&out, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((summary.train, summary.valid, summary.test), (8, 2, 2));
    assert_eq!((summary.generated, summary.reused), (12, 0));

    let mut n = 0;
    for (split, count) in [("train", 8), ("valid", 2), ("test", 2)] {
        let items = lines(&out.join(format!("{split}.jsonl")));
        assert_eq!(items.len(), count, "{split}");
        for it in items {
            n += 1;
            let rel = it["video"].as_str().unwrap();
            let colour = it["colour"].as_str().unwrap();
            let motion = it["motion"].as_str().unwrap();
            let text = it["text"].as_str().unwrap();
            assert!(rel.starts_with("clips/") && rel.ends_with(".mp4"), "{rel}");
            assert!(
                text.starts_with(&format!("A {colour} square moves ")),
                "{text}"
            );
            assert!(text.contains(motion), "{text}");

            let v = decode_frames(&out.join(rel), &FrameSampling::Uniform { frames: 8 })
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(v.frames.len(), 8, "{rel}");
            assert_eq!((v.width, v.height), (96, 96), "{rel}");
            assert!(
                (v.fps - 10.0).abs() < 1e-6 && (v.duration_s - 2.0).abs() < 0.05,
                "{v:?}"
            );

            // Where the square should be: its corner moves linearly from `start` to `end`.
            let side = it["side"].as_f64().unwrap();
            let point = |k: &str| -> Vec<f64> {
                let a = it[k].as_array().unwrap();
                a.iter().map(|x| x.as_f64().unwrap()).collect()
            };
            let (start, end) = (point("start"), point("end"));
            let (first, last) = (square(&v.frames[0]), square(&v.frames[7]));
            // overlay puts a yuv420p square on even coordinates (floor), hence the slack.
            for (sq, i) in [(&first, 0), (&last, 7)] {
                let (c, t) = (sq.0, v.timestamps_s[i]);
                for a in 0..2 {
                    let want = start[a] + (end[a] - start[a]) * t / 2.0 + (side - 1.0) / 2.0;
                    assert!(
                        (c[a] - want).abs() < 2.5,
                        "{rel}: centroid {c:?} at {t} s, want {want} on axis {a}"
                    );
                }
            }
            let (dx, dy) = (last.0[0] - first.0[0], last.0[1] - first.0[1]);
            let (along, across) = match motion {
                "left" => (-dx, dy),
                "right" => (dx, dy),
                "up" => (-dy, dx),
                "down" => (dy, dx),
                other => panic!("unknown motion {other}"),
            };
            assert!(
                along > 25.0 && across.abs() < 1.5,
                "{rel} ({motion}): moved ({dx}, {dy})"
            );
            // Its colour, from the whole square (edges blend a little with the background).
            for (_, rgb, px) in [first, last] {
                assert_eq!(nearest_colour(rgb), colour, "{rel}: mean {rgb:?}");
                assert!(
                    (px as f64 - side * side).abs() < 2.5 * side,
                    "{rel}: {px} px"
                );
            }
        }
    }
    assert_eq!(n, 12);

    // Complete: a second build writes nothing.
    let clip0 = out.join("clips/train_0000.mp4");
    let bytes0 = std::fs::read(&clip0).unwrap();
    let mtime = std::fs::metadata(&clip0).unwrap().modified().unwrap();
    let again = build(&out, &opts).unwrap();
    assert_eq!((again.generated, again.reused), (0, 12));
    assert_eq!(
        std::fs::metadata(&clip0).unwrap().modified().unwrap(),
        mtime
    );

    // A lost clip is redrawn alone, byte for byte the same.
    std::fs::remove_file(&clip0).unwrap();
    let fixed = build(&out, &opts).unwrap();
    assert_eq!((fixed.generated, fixed.reused), (1, 11));
    assert!(
        std::fs::read(&clip0).unwrap() == bytes0,
        "the redrawn clip differs"
    );
}

#[test]
fn missing_ffmpeg_says_how_to_install_it() {
    let dir = TempDir::new("video-shapes-noffmpeg");
    let opts = VideoShapesOptions {
        ffmpeg: PathBuf::from("/nonexistent/ffmpeg"),
        ..small()
    };
    let err = format!("{:#}", build(&dir.0.join("set"), &opts).unwrap_err());
    assert!(err.contains("scripts/fetch-assets.sh system"), "{err}");
}

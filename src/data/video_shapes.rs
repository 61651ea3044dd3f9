//! Video shapes: short generated clips of a coloured square moving left, right, up or down over
//! a dark background, captioned with its colour and direction ("A red square moves to the
//! left."). Made with the ffmpeg tool's lavfi sources (a `color` background, a `color`
//! square, `overlay` with a position linear in `t`), encoded as H.264 (libx264, yuv420p) MP4.
//! `anymal data video-shapes` writes:
//!
//! ```text
//! out/clips/train_0000.mp4 ... test_0099.mp4   96x96, 10 fps, 2 s
//! out/train.jsonl (400)   {"video": "clips/train_0000.mp4", "text": "A red square moves to the left.",
//! out/valid.jsonl (50)     "colour": "red", "motion": "left", "id": "train_0000", "side": 18,
//! out/test.jsonl  (100)    "start": [70, 31], "end": [22, 31], "background": "#2a2a2a"}
//! out/video_shapes.json   what was asked for; marks the set complete
//! ```
//!
//! Deterministic: clip `<split>_<i>` depends only on the seed, its split and `i` (SplitMix64),
//! so a larger set starts with the clips of a smaller one. Colours and directions are balanced:
//! each block of 20 clips of a split holds every (colour, direction) pair once, in a shuffled
//! order. The square travels 36-60 px along its direction and keeps its place across it;
//! side, start, distance and background shade vary per clip.
//!
//! Building again with the same options returns at once; after an interruption, clips already
//! written are kept (each is written to a temporary name and renamed when complete).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use anymal_util::rng::{fnv1a, SplitMix64};
use serde::{Deserialize, Serialize};

/// Colour names and their RGB, in the order of the balanced blocks. Saturated and bright so
/// each stays distinct from the others and from the dark background after yuv420p's halved
/// chroma resolution and H.264.
pub const COLOURS: [(&str, [u8; 3]); 5] = [
    ("red", [230, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [40, 70, 240]),
    ("yellow", [240, 225, 30]),
    ("white", [245, 245, 245]),
];
/// Directions of motion, as named in captions and manifests.
pub const MOTIONS: [&str; 4] = ["left", "right", "up", "down"];

/// Version of the generator; bumped when the same options would draw different clips.
const GENERATOR: u32 = 1;
const MARKER: &str = "video_shapes.json";
const NEEDS_FFMPEG: &str = "needs the ffmpeg tool: scripts/fetch-assets.sh system";

/// What to generate. Defaults: 400 / 50 / 100 clips of 96x96 pixels, 2 s at 10 fps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoShapesOptions {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    pub seed: u64,
    /// Frame side in pixels (square frames); at least 48 so a square has room to travel.
    pub size: u32,
    pub fps: u32,
    pub seconds: f32,
    /// ffmpeg processes run at once (each single-threaded).
    pub jobs: usize,
    /// The ffmpeg program to run.
    pub ffmpeg: PathBuf,
}

impl Default for VideoShapesOptions {
    fn default() -> Self {
        Self {
            train: 400,
            valid: 50,
            test: 100,
            seed: 0x5eed_0f5a_a9e5,
            size: 96,
            fps: 10,
            seconds: 2.0,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 8),
            ffmpeg: PathBuf::from("ffmpeg"),
        }
    }
}

impl VideoShapesOptions {
    fn check(&self) -> Result<()> {
        if self.size < 48 || self.size > 4096 {
            bail!(
                "video-shapes: size must be 48..=4096 pixels, got {}",
                self.size
            );
        }
        if self.fps == 0 || self.fps > 120 {
            bail!("video-shapes: fps must be 1..=120, got {}", self.fps);
        }
        if !(self.seconds.is_finite() && self.seconds >= 0.5 && self.seconds <= 60.0) {
            bail!(
                "video-shapes: seconds must be 0.5..=60, got {}",
                self.seconds
            );
        }
        if self.train + self.valid + self.test == 0 {
            bail!("video-shapes: no clips asked for (train, valid and test are all 0)");
        }
        Ok(())
    }

    /// The options that decide the clips' content (not how they are made).
    fn content(&self) -> Content {
        Content {
            generator: GENERATOR,
            train: self.train,
            valid: self.valid,
            test: self.test,
            seed: self.seed,
            size: self.size,
            fps: self.fps,
            seconds: self.seconds,
        }
    }
}

/// The marker file's content: the set is complete when `complete` and it matches the options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Content {
    generator: u32,
    train: usize,
    valid: usize,
    test: usize,
    seed: u64,
    size: u32,
    fps: u32,
    seconds: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    content: Content,
    complete: bool,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Clips encoded by this call; the rest were already there.
    pub generated: usize,
    pub reused: usize,
    /// Clips per caption label, `"<colour> <motion>"`, over all splits.
    pub per_label: BTreeMap<String, usize>,
}

/// One clip to draw: everything ffmpeg needs and the manifest records.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipSpec {
    pub id: String,
    pub split: &'static str,
    pub colour: &'static str,
    pub rgb: [u8; 3],
    pub motion: &'static str,
    /// Side of the square in pixels.
    pub side: u32,
    /// Top-left corner of the square at t = 0 and at the end of the clip.
    pub start: [u32; 2],
    pub end: [u32; 2],
    /// Background grey, slightly tinted.
    pub background: [u8; 3],
}

impl ClipSpec {
    /// The caption: "A red square moves to the left." / "... moves up."
    pub fn caption(&self) -> String {
        let way = match self.motion {
            "left" => "to the left",
            "right" => "to the right",
            other => other,
        };
        format!("A {} square moves {way}.", self.colour)
    }

    /// Relative path of the clip below the output folder.
    pub fn rel_path(&self) -> String {
        format!("clips/{}.mp4", self.id)
    }

    fn manifest_line(&self) -> String {
        serde_json::json!({
            "video": self.rel_path(),
            "text": self.caption(),
            "colour": self.colour,
            "motion": self.motion,
            "id": self.id,
            "side": self.side,
            "start": self.start,
            "end": self.end,
            "background": hex(self.background, "#"),
        })
        .to_string()
    }
}

fn hex(c: [u8; 3], prefix: &str) -> String {
    format!("{prefix}{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// A stream for (seed, split, index), independent of every other clip's.
fn rng_for(seed: u64, split: &str, index: u64) -> SplitMix64 {
    let split_key = fnv1a(split.as_bytes());
    let mut mix = SplitMix64::new(seed ^ split_key.rotate_left(17) ^ index.wrapping_mul(0x9e37));
    // Discard one draw so nearby seeds do not start alike.
    mix.next_u64();
    mix
}

/// The clips of one split, in order.
pub fn specs(split: &'static str, count: usize, opts: &VideoShapesOptions) -> Vec<ClipSpec> {
    let n_pairs = COLOURS.len() * MOTIONS.len();
    let mut out = Vec::with_capacity(count);
    let mut order: Vec<usize> = Vec::new();
    for i in 0..count {
        let block = i / n_pairs;
        if i % n_pairs == 0 {
            // Fisher-Yates over the (colour, motion) pairs of this block.
            let mut rng = rng_for(opts.seed, split, u64::MAX - block as u64);
            order = (0..n_pairs).collect();
            for k in (1..n_pairs).rev() {
                let j = rng.range(0, k as u32) as usize;
                order.swap(k, j);
            }
        }
        let pair = order[i % n_pairs];
        let (colour, rgb) = COLOURS[pair % COLOURS.len()];
        let motion = MOTIONS[pair / COLOURS.len()];
        let mut rng = rng_for(opts.seed, split, i as u64);
        let s = opts.size;
        // Proportions of a 96 px frame: side 14-22, travel 36-60.
        let side = rng.range(s * 14 / 96, s * 22 / 96);
        let room = s - side;
        let travel = rng.range(s * 36 / 96, (s * 60 / 96).min(room));
        let across = rng.range(0, room);
        let from = rng.range(0, room - travel);
        let (start, end) = match motion {
            "right" => ([from, across], [from + travel, across]),
            "left" => ([from + travel, across], [from, across]),
            "down" => ([across, from], [across, from + travel]),
            _ => ([across, from + travel], [across, from]),
        };
        let grey = rng.range(24, 72) as i32;
        let tint = |r: &mut SplitMix64| (grey + r.range(0, 12) as i32 - 6).clamp(0, 255) as u8;
        let background = [tint(&mut rng), tint(&mut rng), tint(&mut rng)];
        out.push(ClipSpec {
            id: format!("{split}_{i:04}"),
            split,
            colour,
            rgb,
            motion,
            side,
            start,
            end,
            background,
        });
    }
    out
}

/// The ffmpeg arguments that draw `spec` into `out`.
fn ffmpeg_args(spec: &ClipSpec, opts: &VideoShapesOptions, out: &Path) -> Vec<String> {
    let d = opts.seconds;
    let size = opts.size;
    let (r, side) = (opts.fps, spec.side);
    // The square's corner moves linearly from start to end over the clip.
    let coord = |a: u32, b: u32| format!("{a}+({}*t/{d})", b as i64 - a as i64);
    let filter = format!(
        "[0:v][1:v]overlay=x='{}':y='{}':shortest=1,format=yuv420p[v]",
        coord(spec.start[0], spec.end[0]),
        coord(spec.start[1], spec.end[1]),
    );
    [
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!(
        "color=c={}:s={size}x{size}:r={r}:d={d}",
        hex(spec.background, "0x")
    )])
    .chain(["-f".into(), "lavfi".into(), "-i".into()])
    .chain([format!(
        "color=c={}:s={side}x{side}:r={r}:d={d}",
        hex(spec.rgb, "0x")
    )])
    .chain(
        [
            "-filter_complex",
            &filter,
            "-map",
            "[v]",
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-crf",
            "18",
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            "-an",
            "-map_metadata",
            "-1",
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            "-movflags",
            "+faststart",
        ]
        .iter()
        .map(|s| s.to_string()),
    )
    .chain([out.to_string_lossy().into_owned()])
    .collect()
}

/// Fails with the install hint when the ffmpeg tool is missing or lacks what we use.
fn check_ffmpeg(ffmpeg: &Path) -> Result<()> {
    let out = Command::new(ffmpeg)
        .args(["-hide_banner", "-encoders"])
        .output()
        .with_context(|| {
            format!(
                "cannot run `{}`: video-shapes {NEEDS_FFMPEG}",
                ffmpeg.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{} -encoders` failed ({}): video-shapes {NEEDS_FFMPEG}",
            ffmpeg.display(),
            out.status
        );
    }
    if !String::from_utf8_lossy(&out.stdout).contains("libx264") {
        bail!(
            "`{}` has no libx264 encoder: video-shapes {NEEDS_FFMPEG}",
            ffmpeg.display()
        );
    }
    Ok(())
}

fn read_marker(out_dir: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(out_dir.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_marker(out_dir: &Path, marker: &Marker) -> Result<()> {
    let text = serde_json::to_string_pretty(marker)?;
    anymal_util::fs::write_atomic(&out_dir.join(MARKER), text.as_bytes())?;
    Ok(())
}

/// Generates the clips and manifests into `out_dir` (see the module docs); returns at once
/// when a complete set with the same options is already there.
pub fn build(out_dir: &Path, opts: &VideoShapesOptions) -> Result<Summary> {
    opts.check()?;
    let all: Vec<ClipSpec> = [
        ("train", opts.train),
        ("valid", opts.valid),
        ("test", opts.test),
    ]
    .into_iter()
    .flat_map(|(split, n)| specs(split, n, opts))
    .collect();
    let mut summary = Summary {
        train: opts.train,
        valid: opts.valid,
        test: opts.test,
        ..Default::default()
    };
    for c in &all {
        *summary
            .per_label
            .entry(format!("{} {}", c.colour, c.motion))
            .or_default() += 1;
    }

    let content = opts.content();
    let previous = read_marker(out_dir);
    let same = previous.as_ref().is_some_and(|m| m.content == content);
    let exists = |c: &ClipSpec| {
        std::fs::metadata(out_dir.join(c.rel_path())).is_ok_and(|m| m.is_file() && m.len() > 0)
    };
    if same
        && previous.as_ref().is_some_and(|m| m.complete)
        && ["train", "valid", "test"]
            .iter()
            .all(|s| out_dir.join(format!("{s}.jsonl")).is_file())
        && all.iter().all(exists)
    {
        summary.reused = all.len();
        return Ok(summary);
    }

    check_ffmpeg(&opts.ffmpeg)?;
    let clips_dir = out_dir.join("clips");
    std::fs::create_dir_all(&clips_dir)
        .with_context(|| format!("{}: cannot create", clips_dir.display()))?;
    // Clips on disk are reused only when they were drawn with these very options.
    write_marker(
        out_dir,
        &Marker {
            content: content.clone(),
            complete: false,
        },
    )?;
    let todo: Vec<&ClipSpec> = all.iter().filter(|c| !same || !exists(c)).collect();
    summary.reused = all.len() - todo.len();
    summary.generated = todo.len();
    encode_all(&todo, opts, out_dir)?;

    for (split, _) in [("train", 0), ("valid", 0), ("test", 0)] {
        let mut text = String::new();
        for c in all.iter().filter(|c| c.split == split) {
            text.push_str(&c.manifest_line());
            text.push('\n');
        }
        let p = out_dir.join(format!("{split}.jsonl"));
        anymal_util::fs::write_atomic(&p, text.as_bytes())
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    write_marker(
        out_dir,
        &Marker {
            content,
            complete: true,
        },
    )?;
    Ok(summary)
}

/// Runs ffmpeg for every clip, `opts.jobs` at a time; the first failure stops the others
/// from starting and is returned.
fn encode_all(todo: &[&ClipSpec], opts: &VideoShapesOptions, out_dir: &Path) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let jobs = opts.jobs.clamp(1, todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = todo.get(i) else { break };
                    if let Err(e) = encode_one(spec, opts, out_dir) {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => bail!("video-shapes: a worker thread panicked"),
    }
}

/// Encodes one clip to a temporary name, then renames it: a clip on disk is always whole.
fn encode_one(spec: &ClipSpec, opts: &VideoShapesOptions, out_dir: &Path) -> Result<()> {
    let dst = out_dir.join(spec.rel_path());
    let tmp = out_dir.join(format!("clips/{}.part.mp4", spec.id));
    let args = ffmpeg_args(spec, opts, &tmp);
    let out = Command::new(&opts.ffmpeg)
        .args(&args)
        .output()
        .with_context(|| format!("cannot run `{}`: {NEEDS_FFMPEG}", opts.ffmpeg.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{}: ffmpeg failed ({}): {}\n  command: {} {}",
            dst.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            opts.ffmpeg.display(),
            args.join(" ")
        );
    }
    std::fs::rename(&tmp, &dst).with_context(|| {
        format!(
            "{}: cannot move {} into place",
            dst.display(),
            tmp.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_deterministic_balanced_and_inside_the_frame() {
        let opts = VideoShapesOptions::default();
        let a = specs("train", 400, &opts);
        assert_eq!(a, specs("train", 400, &opts));
        // A smaller set is a prefix of a larger one.
        assert_eq!(&a[..30], &specs("train", 30, &opts)[..]);
        assert_ne!(a[..20], specs("test", 20, &opts)[..]);
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for c in &a {
            *counts.entry((c.colour, c.motion)).or_default() += 1;
            for p in [c.start, c.end] {
                assert!(
                    p[0] + c.side <= opts.size && p[1] + c.side <= opts.size,
                    "{c:?}"
                );
            }
            let (dx, dy) = (
                c.end[0] as i64 - c.start[0] as i64,
                c.end[1] as i64 - c.start[1] as i64,
            );
            let (along, across) = match c.motion {
                "left" => (-dx, dy),
                "right" => (dx, dy),
                "up" => (-dy, dx),
                _ => (dy, dx),
            };
            assert!((36..=60).contains(&along) && across == 0, "{c:?}");
        }
        assert_eq!(counts.len(), 20);
        assert!(counts.values().all(|&n| n == 20), "{counts:?}");
    }

    #[test]
    fn captions() {
        let opts = VideoShapesOptions::default();
        let mut c = specs("valid", 1, &opts).remove(0);
        c.colour = "red";
        c.motion = "left";
        assert_eq!(c.caption(), "A red square moves to the left.");
        c.motion = "up";
        assert_eq!(c.caption(), "A red square moves up.");
        let line: serde_json::Value = serde_json::from_str(&c.manifest_line()).unwrap();
        assert_eq!(line["video"], "clips/valid_0000.mp4");
        assert_eq!(line["colour"], "red");
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = VideoShapesOptions {
            size: 20,
            ..Default::default()
        };
        assert!(o.check().is_err());
        o.size = 96;
        o.train = 0;
        o.valid = 0;
        o.test = 0;
        assert!(o.check().is_err());
    }
}

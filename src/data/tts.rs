//! A synthesized speech corpus (`anymal data tts`): every line of a text file read aloud by an
//! open speech synthesizer (espeak-ng, flite, festival when installed), with a voice, rate and
//! pitch drawn per line, then augmented ([`crate::data::augment`]), as
//! `DIR/clips/NNNNNN.wav` (16 kHz mono 16-bit) and a manifest `DIR/tts.jsonl`.
//!
//! Why: the audio projector trained on 450 real clips of one voice does not generalize; hours
//! of varied synthetic speech with exact transcripts teach the alignment itself.
//!
//! The engines are external programs found on PATH (`scripts/fetch-assets.sh tts`), run one
//! per line with the text as an argument (no shell). Every draw (engine, voice, rate, pitch,
//! augmentation) is seeded by the seed and the line index alone, so a rerun redraws the same
//! for each line whatever order the threads take, and a clip already on disk (written
//! atomically) is not synthesized again: a killed build resumes losing nothing. The manifest
//! is written, atomically, at the end, from every line whose clip exists.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use anymal_util::rng::{fnv1a, SplitMix64};
use wait_timeout::ChildExt;

use crate::data::augment::{self, SR};
use crate::eval::wer::normalize_text;

/// Lines longer than this many words are skipped: engines read them fine, but the clips would
/// be longer than the projector's training windows.
pub const MAX_WORDS: usize = 40;
/// Clips quieter than this peak (full scale 1.0) or shorter than [`MIN_SECONDS`] are skipped.
pub const MIN_PEAK: f32 = 0.01;
pub const MIN_SECONDS: f64 = 0.2;

/// A speech synthesizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    Espeak,
    Flite,
    Festival,
}

impl Engine {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "espeak-ng" | "espeak" => Engine::Espeak,
            "flite" => Engine::Flite,
            "festival" | "text2wave" => Engine::Festival,
            o => bail!("unknown engine '{o}' (known: espeak-ng, flite, festival)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Espeak => "espeak-ng",
            Engine::Flite => "flite",
            Engine::Festival => "festival",
        }
    }

    /// The program run.
    pub fn program(self) -> &'static str {
        match self {
            Engine::Espeak => "espeak-ng",
            Engine::Flite => "flite",
            Engine::Festival => "text2wave",
        }
    }
}

/// `program` found on PATH.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    find_in(program, &path)
}

/// `program` found in the folders of the PATH-style list `path`.
fn find_in(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Ok when `engine`'s program is in `path` (a PATH-style list); else the one-line error.
pub fn require_engine(engine: Engine, path: &std::ffi::OsStr) -> Result<()> {
    if find_in(engine.program(), path).is_none() {
        bail!(
            "{} not found on PATH (engine {}): install it with scripts/fetch-assets.sh tts",
            engine.program(),
            engine.name()
        );
    }
    Ok(())
}

/// espeak-ng's English voices and variants (`-v voice+variant`); all ship with Debian's
/// espeak-ng-data.
const ESPEAK_VOICES: &[&str] = &[
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
];
const ESPEAK_VARIANTS: &[&str] = &[
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
];

/// Voices an engine offers here: flite's from `flite -lv` (the build decides which are
/// compiled in), festival's from what is installed (text2wave's default voice only).
pub fn voices(engine: Engine) -> Result<Vec<String>> {
    Ok(match engine {
        Engine::Espeak => {
            let mut v = Vec::new();
            for voice in ESPEAK_VOICES {
                for var in ESPEAK_VARIANTS {
                    v.push(if var.is_empty() {
                        voice.to_string()
                    } else {
                        format!("{voice}+{var}")
                    });
                }
            }
            v
        }
        Engine::Flite => {
            let out = Command::new("flite")
                .arg("-lv")
                .output()
                .context("flite -lv: cannot run")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let list: Vec<String> = text
                .trim()
                .trim_start_matches("Voices available:")
                .split_whitespace()
                // awb_time speaks only clock times.
                .filter(|v| *v != "awb_time")
                .map(str::to_string)
                .collect();
            if list.is_empty() {
                bail!("flite -lv lists no voices");
            }
            list
        }
        Engine::Festival => vec!["default".into()],
    })
}

/// What is drawn for one line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub engine: Engine,
    pub voice: String,
    /// espeak-ng words per minute; flite's duration stretch and festival's are derived from it.
    pub rate_wpm: u32,
    pub pitch: u32,
    pub chain: Vec<augment::Step>,
    /// Seeds the noise and the room of the chain.
    pub dsp_seed: u64,
}

impl Plan {
    /// The draw for line `index` (0-based) from `engines` and their voices.
    pub fn draw(seed: u64, index: usize, engines: &[(Engine, Vec<String>)], augment: bool) -> Self {
        let mut rng = SplitMix64::new(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next_u64();
        let (engine, vs) = &engines[(rng.next_u64() % engines.len() as u64) as usize];
        let voice = vs[(rng.next_u64() % vs.len() as u64) as usize].clone();
        let rate_wpm = rng.range(120, 200);
        let pitch = rng.range(30, 70);
        let chain = if augment {
            augment::draw_chain(&mut rng)
        } else {
            Vec::new()
        };
        Self {
            engine: *engine,
            voice,
            rate_wpm,
            pitch,
            chain,
            dsp_seed: rng.next_u64(),
        }
    }

    /// flite's duration_stretch for the drawn rate: 160 wpm is 1.0, so 120..200 wpm maps to
    /// about 1.25..0.8.
    fn stretch(&self) -> f64 {
        160.0 / self.rate_wpm as f64
    }

    /// Synthesize `text` to the WAV file `wav`.
    fn synthesize(&self, text: &str, wav: &Path) -> Result<()> {
        let mut cmd = match self.engine {
            Engine::Espeak => {
                let mut c = Command::new("espeak-ng");
                c.arg("-v").arg(&self.voice);
                c.arg("-s").arg(self.rate_wpm.to_string());
                c.arg("-p").arg(self.pitch.to_string());
                c.arg("-w").arg(wav);
                // "--" so a line starting with "-" is text, not an option.
                c.arg("--").arg(text);
                c
            }
            Engine::Flite => {
                let mut c = Command::new("flite");
                c.arg("-voice").arg(&self.voice);
                c.arg("--setf")
                    .arg(format!("duration_stretch={:.3}", self.stretch()));
                c.arg("-t").arg(text).arg("-o").arg(wav);
                c
            }
            Engine::Festival => {
                // text2wave reads the text from a file.
                let txt = wav.with_extension("txt");
                std::fs::write(&txt, text)
                    .with_context(|| format!("{}: cannot write", txt.display()))?;
                let mut c = Command::new("text2wave");
                c.arg("-eval").arg(format!(
                    "(Parameter.set 'Duration_Stretch {:.3})",
                    self.stretch()
                ));
                c.arg("-o").arg(wav).arg(txt);
                c
            }
        };
        let ran = run_with_timeout(&mut cmd, self.engine.program(), ENGINE_TIMEOUT);
        if self.engine == Engine::Festival {
            let _ = std::fs::remove_file(wav.with_extension("txt"));
        }
        ran
    }
}

/// Longest one line may take an engine (a line is at most 40 words; engines take well under a
/// second for it on the 2-core machine). A hung engine is killed and the line counted as
/// failed, so a build never stalls.
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `cmd` (named `program` in errors) to completion: an error when it cannot start, exits
/// with failure (its first stderr line quoted) or runs past `timeout` (then it is killed).
fn run_with_timeout(cmd: &mut Command, program: &str, timeout: Duration) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{program}: cannot run"))?;
    // Drained on a thread, so an engine that writes much to stderr never blocks on the pipe.
    let stderr = child.stderr.take();
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let status = match child
        .wait_timeout(timeout)
        .with_context(|| format!("{program}: cannot wait for it"))?
    {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{program} did not finish within {} s (killed)",
                timeout.as_secs_f64()
            );
        }
    };
    let err = drain.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{program} failed ({status}): {}",
            err.lines().next().unwrap_or("").trim()
        );
    }
    Ok(())
}

/// Options for [`build`].
#[derive(Debug, Clone)]
pub struct TtsOptions {
    pub text: PathBuf,
    pub out: PathBuf,
    pub engines: Vec<Engine>,
    pub seed: u64,
    pub jobs: usize,
    pub augment: bool,
    /// Manifests whose transcripts must not be synthesized.
    pub exclude: Vec<PathBuf>,
    /// Draw a progress bar (stderr) while building.
    pub progress: bool,
}

/// What [`build`] did.
#[derive(Debug, Clone, Default)]
pub struct TtsReport {
    pub lines: usize,
    /// Clips in the manifest (synthesized now + already there).
    pub clips: usize,
    pub synthesized: usize,
    pub reused: usize,
    pub seconds_of_audio: f64,
    /// Skip reason -> count.
    pub skipped: BTreeMap<&'static str, usize>,
    /// The first few engine failures, "line N: message".
    pub failures: Vec<String>,
    pub elapsed_s: f64,
    pub manifest: PathBuf,
}

impl TtsReport {
    /// The final summary line.
    pub fn summary(&self) -> String {
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!(
            "wrote {}: {} clips ({} synthesized, {} already there), {:.2} h of audio, skipped: {}; {:.0} s",
            self.manifest.display(),
            self.clips,
            self.synthesized,
            self.reused,
            self.seconds_of_audio / 3600.0,
            if skipped.is_empty() {
                "none".into()
            } else {
                skipped.join(", ")
            },
            self.elapsed_s
        )
    }
}

/// Result of one line.
enum Outcome {
    Clip { seconds: f64, fresh: bool },
    Skip(&'static str),
    Failed(String),
}

/// The clip's path relative to the output folder.
pub fn clip_name(index: usize) -> String {
    format!("clips/{:06}.wav", index + 1)
}

/// A stamp of what decides the clips' content; a folder built with other text or settings is
/// refused rather than mixed.
fn stamp(text: &str, o: &TtsOptions) -> String {
    let engines: Vec<&str> = o.engines.iter().map(|e| e.name()).collect();
    format!(
        "text {:016x} seed {} engines {} augment {}\n",
        fnv1a(text.as_bytes()),
        o.seed,
        engines.join(","),
        o.augment
    )
}

/// Synthesize every line of `o.text` into `o.out`.
pub fn build(o: &TtsOptions) -> Result<TtsReport> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&o.text)
        .with_context(|| format!("{}: cannot read the text file", o.text.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.iter().all(|l| l.trim().is_empty()) {
        bail!(
            "{}: the text file has no lines to synthesize",
            o.text.display()
        );
    }
    if o.engines.is_empty() {
        bail!("no engine given (--engines espeak-ng,flite)");
    }
    let mut engines = Vec::new();
    for &e in &o.engines {
        require_engine(e, &std::env::var_os("PATH").unwrap_or_default())?;
        engines.push((e, voices(e)?));
    }
    let mut excluded = HashSet::new();
    for m in &o.exclude {
        for t in crate::data::tts_text::manifest_texts(m)? {
            excluded.insert(normalize_text(&t));
        }
    }

    let clips = o.out.join("clips");
    std::fs::create_dir_all(&clips)
        .with_context(|| format!("{}: cannot create folder", clips.display()))?;
    let stamp_path = o.out.join("tts.stamp");
    let want = stamp(&text, o);
    match std::fs::read_to_string(&stamp_path) {
        Ok(have) if have != want => bail!(
            "{}: built from another text file or other settings ({}); use another --out or remove the folder",
            o.out.display(),
            have.trim()
        ),
        Ok(_) => {}
        Err(_) => anymal_util::fs::write_atomic(&stamp_path, want.as_bytes())?,
    }

    let bar = o.progress.then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(lines.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:20}] {pos}/{len} lines {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("#>-"),
        );
        bar
    });
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..lines.len()).map(|_| None).collect());
    let jobs = o.jobs.max(1);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= lines.len() {
                    break;
                }
                let outcome = one_line(o, &engines, &excluded, i, lines[i]);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(outcome);
                }
            });
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a synthesis thread panicked"))?;

    let mut r = TtsReport {
        lines: lines.len(),
        manifest: o.out.join("tts.jsonl"),
        ..Default::default()
    };
    let mut manifest = String::new();
    for (i, outcome) in results.into_iter().enumerate() {
        match outcome {
            Some(Outcome::Clip { seconds, fresh }) => {
                let plan = Plan::draw(o.seed, i, &engines, o.augment);
                let rec = serde_json::json!({
                    "audio": clip_name(i),
                    "text": lines[i].trim(),
                    "id": format!("tts-{:06}", i + 1),
                    "engine": plan.engine.name(),
                    "voice": plan.voice,
                    "augment": augment::chain_name(&plan.chain),
                });
                manifest.push_str(&rec.to_string());
                manifest.push('\n');
                r.clips += 1;
                r.seconds_of_audio += seconds;
                if fresh {
                    r.synthesized += 1;
                } else {
                    r.reused += 1;
                }
            }
            Some(Outcome::Skip(why)) => *r.skipped.entry(why).or_default() += 1,
            Some(Outcome::Failed(msg)) => {
                *r.skipped.entry("engine failures").or_default() += 1;
                if r.failures.len() < 5 {
                    r.failures
                        .push(format!("{}:{}: {msg}", o.text.display(), i + 1));
                }
            }
            None => bail!("line {} was not processed (a thread stopped)", i + 1),
        }
    }
    anymal_util::fs::write_atomic(&r.manifest, manifest.as_bytes())?;
    r.elapsed_s = started.elapsed().as_secs_f64();
    Ok(r)
}

/// Synthesize, check, augment and write line `i`, unless its clip is already there.
fn one_line(
    o: &TtsOptions,
    engines: &[(Engine, Vec<String>)],
    excluded: &HashSet<String>,
    i: usize,
    line: &str,
) -> Outcome {
    let line = line.trim();
    if line.is_empty() {
        return Outcome::Skip("empty lines");
    }
    if line.split_whitespace().count() > MAX_WORDS {
        return Outcome::Skip("lines over 40 words");
    }
    if excluded.contains(&normalize_text(line)) {
        return Outcome::Skip("held-out lines (--exclude)");
    }
    let wav = o.out.join(clip_name(i));
    if wav.exists() {
        return match hound::WavReader::open(&wav) {
            Ok(r) => Outcome::Clip {
                seconds: r.duration() as f64 / r.spec().sample_rate as f64,
                fresh: false,
            },
            // A damaged clip (cannot happen through the atomic write, but a disk can): redo it.
            Err(_) => match make_clip(o, engines, i, line, &wav) {
                Ok(o) => o,
                Err(e) => Outcome::Failed(format!("{e:#}")),
            },
        };
    }
    match make_clip(o, engines, i, line, &wav) {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

fn make_clip(
    o: &TtsOptions,
    engines: &[(Engine, Vec<String>)],
    i: usize,
    line: &str,
    wav: &Path,
) -> Result<Outcome> {
    let plan = Plan::draw(o.seed, i, engines, o.augment);
    let raw = o
        .out
        .join("clips")
        .join(format!(".{:06}.{}.raw.wav", i + 1, std::process::id()));
    let synth = plan.synthesize(line, &raw);
    let decoded = synth.and_then(|()| {
        anymal_encoders::audio::decode_file(&raw)
            .with_context(|| format!("{}: engine output unreadable", raw.display()))
    });
    let _ = std::fs::remove_file(&raw);
    let decoded = decoded?;
    let xs = anymal_encoders::audio::resample(&decoded.samples, decoded.sample_rate, SR)
        .with_context(|| format!("line {}: resampling", i + 1))?;
    if augment::peak(&xs) < MIN_PEAK || (xs.len() as f64) < MIN_SECONDS * SR as f64 {
        return Ok(Outcome::Skip("silent or too short clips"));
    }
    let mut rng = SplitMix64::new(plan.dsp_seed);
    let mut ys = augment::apply(&xs, &plan.chain, &mut rng)?;
    // Leave headroom: never clip, and keep the level near the engine's own.
    let p = augment::peak(&ys);
    if p > 0.95 {
        ys.iter_mut().for_each(|y| *y *= 0.95 / p);
    }
    write_wav(wav, &ys)?;
    Ok(Outcome::Clip {
        seconds: ys.len() as f64 / SR as f64,
        fresh: true,
    })
}

/// 16 kHz mono 16-bit PCM, written atomically.
pub fn write_wav(path: &Path, xs: &[f32]) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SR,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    anymal_util::fs::write_atomic_with(path, |tmp| -> Result<()> {
        let mut w = hound::WavWriter::create(tmp, spec)?;
        for &x in xs {
            w.write_sample((x.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16)?;
        }
        w.finalize()?;
        Ok(())
    })
    .with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, text: &Path) -> TtsOptions {
        TtsOptions {
            text: text.to_path_buf(),
            out: dir.join("out"),
            engines: vec![Engine::Espeak],
            seed: 3,
            jobs: 2,
            augment: true,
            exclude: vec![],
            progress: false,
        }
    }

    #[test]
    fn a_hung_or_failing_engine_is_an_error_naming_it() {
        let e = run_with_timeout(
            Command::new("sleep").arg("30"),
            "sleep",
            Duration::from_millis(200),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sleep did not finish within 0.2 s"), "{e}");
        let e = run_with_timeout(
            Command::new("sh").args(["-c", "echo bad voice >&2; exit 3"]),
            "sh",
            Duration::from_secs(30),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sh failed") && e.contains("bad voice"), "{e}");
        assert!(
            run_with_timeout(&mut Command::new("true"), "true", Duration::from_secs(30)).is_ok()
        );
    }

    #[test]
    fn plans_are_seeded_by_line() {
        let engines = vec![
            (Engine::Espeak, voices(Engine::Espeak).unwrap_or_default()),
            (Engine::Flite, vec!["kal".into(), "slt".into()]),
        ];
        let a = Plan::draw(1, 7, &engines, true);
        let b = Plan::draw(1, 7, &engines, true);
        assert_eq!(
            (a.engine, &a.voice, a.rate_wpm),
            (b.engine, &b.voice, b.rate_wpm)
        );
        let mut seen = HashSet::new();
        for i in 0..200 {
            let p = Plan::draw(1, i, &engines, true);
            assert!((120..=200).contains(&p.rate_wpm) && (30..=70).contains(&p.pitch));
            seen.insert((p.engine, p.voice));
        }
        assert!(seen.len() > 40, "{} voices in 200 lines", seen.len());
        assert!(seen.iter().any(|(e, _)| *e == Engine::Flite));
    }

    /// End to end with espeak-ng (`scripts/fetch-assets.sh tts`): clips, the manifest, a rerun
    /// that synthesizes nothing, the skips, and the errors.
    #[test]
    fn espeak_corpus_builds_resumes_and_fails_clearly() -> Result<()> {
        assert!(
            on_path("espeak-ng").is_some(),
            "espeak-ng missing: scripts/fetch-assets.sh tts"
        );
        let dir = tempfile::tempdir()?;
        let text = dir.path().join("text.txt");
        let long = vec!["word"; 45].join(" ");
        std::fs::write(
            &text,
            format!(
                "Press 3 to hear your messages.\nYour balance is twelve dollars.\n{long}\nGoodbye.\nPlease hold.\nThe number you entered was 4 0 7.\n"
            ),
        )?;
        let excl = dir.path().join("test.jsonl");
        std::fs::write(&excl, "{\"audio\": \"a.wav\", \"text\": \"please HOLD\"}\n")?;
        let mut o = opts(dir.path(), &text);
        o.exclude = vec![excl];
        let r = build(&o)?;
        assert_eq!(r.clips, 4, "{}", r.summary());
        assert_eq!(r.synthesized, 4);
        assert_eq!(r.skipped.get("lines over 40 words"), Some(&1));
        assert_eq!(r.skipped.get("held-out lines (--exclude)"), Some(&1));
        let manifest = std::fs::read_to_string(o.out.join("tts.jsonl"))?;
        let recs: Vec<serde_json::Value> = manifest
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0]["text"], "Press 3 to hear your messages.");
        assert_eq!(recs[0]["engine"], "espeak-ng");
        for rec in &recs {
            let wav = o.out.join(rec["audio"].as_str().unwrap_or(""));
            let rd = hound::WavReader::open(&wav)?;
            assert_eq!(rd.spec().sample_rate, 16_000);
            assert_eq!(rd.spec().channels, 1);
            assert!(
                rd.duration() > 8000,
                "{} is {} samples",
                wav.display(),
                rd.duration()
            );
        }
        // Rerun: nothing synthesized again, same manifest.
        let first = std::fs::metadata(o.out.join("clips/000001.wav"))?.modified()?;
        let r2 = build(&o)?;
        assert_eq!((r2.synthesized, r2.reused), (0, 4));
        assert_eq!(std::fs::read_to_string(o.out.join("tts.jsonl"))?, manifest);
        assert_eq!(
            std::fs::metadata(o.out.join("clips/000001.wav"))?.modified()?,
            first
        );
        // A removed clip (a killed run) is made again, identically.
        let before = std::fs::read(o.out.join("clips/000002.wav"))?;
        std::fs::remove_file(o.out.join("clips/000002.wav"))?;
        let r3 = build(&o)?;
        assert_eq!(r3.synthesized, 1);
        assert_eq!(std::fs::read(o.out.join("clips/000002.wav"))?, before);
        // Another seed into the same folder is refused.
        let mut other = o.clone();
        other.seed = 4;
        let e = build(&other).unwrap_err().to_string();
        assert!(e.contains("another text file or other settings"), "{e}");

        // Errors: an empty text file names the file; a missing engine names it and the script.
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n\n")?;
        let e = build(&opts(dir.path(), &empty)).unwrap_err().to_string();
        assert!(e.contains("empty.txt") && e.contains("no lines"), "{e}");
        let e = require_engine(Engine::Flite, dir.path().as_os_str())
            .unwrap_err()
            .to_string();
        assert!(require_engine(
            Engine::Espeak,
            &std::env::var_os("PATH").unwrap_or_default()
        )
        .is_ok());
        assert!(
            e.contains("flite") && e.contains("scripts/fetch-assets.sh tts"),
            "{e}"
        );
        Ok(())
    }
}

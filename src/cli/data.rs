//! `anymal data`: build manifests for the corpora the project ships with.

use std::path::PathBuf;

use anyhow::Result;

use crate::data::{basic_motions, digits, speech, speech_instruct, tts, tts_text, video_shapes};
use crate::recipe::expand_path;

#[derive(clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Asterisk's English prompts (568 clips with transcripts) -> train/valid/test manifests,
    /// split by clip (fixed, by a hash of the clip name).
    Speech {
        /// Where `scripts/fetch-assets.sh speech` put the corpus.
        #[arg(long, default_value = "{cache}/data/asterisk-en")]
        root: String,
        /// Folder for train.jsonl, valid.jsonl, test.jsonl.
        #[arg(long, default_value = "{cache}/data/speech")]
        out: String,
    },
    /// Instruction data from the speech corpus: for every clip, LLaVA-style records asking to
    /// repeat it, whether it asks for a password, how many digits it mentions and whether it
    /// says press/dial (answers from the transcript), plus a few two-turn records in train ->
    /// instruct-{train,valid,test}.json, keeping the corpus's split.
    SpeechInstruct {
        /// Where `scripts/fetch-assets.sh speech` put the corpus (used when the speech
        /// manifests are not built yet).
        #[arg(long, default_value = "{cache}/data/asterisk-en")]
        root: String,
        /// Folder of the speech manifests (train.jsonl, ...), built there first if missing.
        #[arg(long, default_value = "{cache}/data/speech")]
        speech: String,
        /// Folder for instruct-train.json, instruct-valid.json, instruct-test.json.
        #[arg(long, default_value = "{cache}/data/speech")]
        out: String,
    },
    /// scikit-learn's 1,797 handwritten digits -> 8x8 PNGs + captions ("A handwritten digit
    /// seven."), fixed split by image (about 70/10/20).
    Digits {
        /// Where `scripts/fetch-assets.sh digits` put digits.csv.gz.
        #[arg(long, default_value = "{cache}/data/digits/digits.csv.gz")]
        csv: String,
        /// Folder for images/ and train.jsonl, valid.jsonl, test.jsonl.
        #[arg(long, default_value = "{cache}/data/digits")]
        out: String,
    },
    /// BasicMotions smartwatch recordings (accelerometer + gyroscope, 10 Hz; 40 train, 40
    /// test) -> one CSV per recording + captions ("The person is running."); their own
    /// TRAIN/TEST split, 8 of TRAIN held out for validation.
    BasicMotions {
        /// Where `scripts/fetch-assets.sh basic-motions` put BasicMotions_{TRAIN,TEST}.ts.
        #[arg(long, default_value = "{cache}/data/basic-motions")]
        root: String,
        /// Folder for recordings/ and train.jsonl, valid.jsonl, test.jsonl.
        #[arg(long, default_value = "{cache}/data/imu")]
        out: String,
        /// Augmented variants of each train recording (rotation, time warp, gains, noise),
        /// listed in train-augmented.jsonl; 0 for none.
        #[arg(long, default_value_t = 8)]
        augment: usize,
    },
    /// Generate short clips with FFmpeg's lavfi sources -- a coloured square moving left,
    /// right, up or down -- with captions naming colour and motion ("A red square moves to
    /// the left."); fixed split. Needs the `ffmpeg` tool (scripts/fetch-assets.sh system).
    VideoShapes {
        /// Folder for clips/ and train.jsonl, valid.jsonl, test.jsonl.
        #[arg(long, default_value = "{cache}/data/video-shapes")]
        out: String,
        #[arg(long, default_value_t = 400)]
        train: usize,
        #[arg(long, default_value_t = 50)]
        valid: usize,
        #[arg(long, default_value_t = 100)]
        test: usize,
    },
    /// Text for the synthesized speech corpus, one utterance a line: generated phone-menu
    /// prompts (~50%), sentences from Debian's fortune files (~35%) and the speech corpus's
    /// train transcripts; never a valid or test transcript.
    TtsText {
        #[arg(long, default_value = "{cache}/data/tts/text.txt")]
        out: String,
        #[arg(long, default_value_t = 6000)]
        lines: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Folder of the speech manifests (train.jsonl, valid.jsonl, test.jsonl).
        #[arg(long, default_value = "{cache}/data/speech")]
        speech: String,
    },
    /// Synthesize every line of a text file with espeak-ng / flite (festival) in drawn voices,
    /// rates and pitches, augment (speed, room, phone line, noise) -> DIR/clips/*.wav (16 kHz)
    /// and DIR/tts.jsonl. Resumable: clips already there are kept. Needs the engines
    /// (scripts/fetch-assets.sh tts).
    Tts {
        /// One utterance a line; built with `tts-text`'s defaults when it is the default and
        /// missing.
        #[arg(long, default_value = "{cache}/data/tts/text.txt")]
        text: String,
        #[arg(long, default_value = "{cache}/data/tts")]
        out: String,
        /// Comma-separated: espeak-ng, flite, festival.
        #[arg(long, default_value = "espeak-ng,flite")]
        engines: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// `default`: a random chain per clip (about a quarter clean); `none`: clean clips.
        #[arg(long, default_value = "default")]
        augment: String,
        /// Manifests whose transcripts are never synthesized (default: the speech corpus's
        /// valid.jsonl and test.jsonl, when they exist).
        #[arg(long)]
        exclude: Vec<String>,
    },
}

pub fn run(a: DataArgs) -> Result<()> {
    match a.command {
        DataCommand::Speech { root, out } => {
            let out: PathBuf = expand_path(&out);
            let r = speech::write_manifests(&expand_path(&root), &out)?;
            eprintln!(
                "{} clips skipped (descriptions of sounds, missing files)",
                r.skipped.len()
            );
            println!(
                "wrote {}/{{train,valid,test}}.jsonl: {} / {} / {} clips",
                out.display(),
                r.train,
                r.valid,
                r.test
            );
        }
        DataCommand::SpeechInstruct { root, speech, out } => {
            let out: PathBuf = expand_path(&out);
            let speech = expand_path(&speech);
            let r = speech_instruct::build(&expand_path(&root), &speech, &out)?;
            if r.built_manifests {
                eprintln!("built the speech manifests in {} first", speech.display());
            }
            if !r.skipped.is_empty() {
                eprintln!("{} clips skipped:", r.skipped.len());
                for s in &r.skipped {
                    eprintln!("  {s}");
                }
            }
            let n: Vec<String> = r
                .splits
                .iter()
                .map(|(_, s)| s.samples.to_string())
                .collect();
            println!(
                "wrote {}/instruct-{{train,valid,test}}.json: {} samples",
                out.display(),
                n.join(" / ")
            );
            for l in r.summary() {
                println!("{l}");
            }
        }
        DataCommand::BasicMotions { root, out, augment } => {
            let out: PathBuf = expand_path(&out);
            let r = basic_motions::build(&expand_path(&root), &out, augment)?;
            println!(
                "wrote {}/{{train,valid,test}}.jsonl: {} / {} / {} recordings; {}: {} augmented variants",
                out.display(),
                r.train,
                r.valid,
                r.test,
                basic_motions::AUGMENTED_MANIFEST,
                r.augmented
            );
        }
        DataCommand::VideoShapes {
            out,
            train,
            valid,
            test,
        } => {
            let out: PathBuf = expand_path(&out);
            let opts = video_shapes::VideoShapesOptions {
                train,
                valid,
                test,
                ..Default::default()
            };
            let r = video_shapes::build(&out, &opts)?;
            println!(
                "wrote {}/{{train,valid,test}}.jsonl: {} / {} / {} clips ({} generated, {} reused)",
                out.display(),
                r.train,
                r.valid,
                r.test,
                r.generated,
                r.reused
            );
        }
        DataCommand::Digits { csv, out } => {
            let out: PathBuf = expand_path(&out);
            let r = digits::write_dataset(&expand_path(&csv), &out)?;
            println!(
                "wrote {}/{{train,valid,test}}.jsonl: {} / {} / {} images",
                out.display(),
                r.train,
                r.valid,
                r.test
            );
        }
        DataCommand::TtsText {
            out,
            lines,
            seed,
            speech,
        } => {
            let out = expand_path(&out);
            let opts = tts_text::TextOptions {
                lines,
                seed,
                speech: expand_path(&speech),
                fortunes: tts_text::FORTUNE_DIR.into(),
            };
            let r = tts_text::write(&opts, &out)?;
            print_text_report(&r, &out);
        }
        DataCommand::Tts {
            text,
            out,
            engines,
            seed,
            jobs,
            augment,
            exclude,
        } => {
            let default_text = text == "{cache}/data/tts/text.txt";
            let text = expand_path(&text);
            if !text.exists() && default_text {
                let opts = tts_text::TextOptions {
                    lines: 6000,
                    seed,
                    speech: expand_path("{cache}/data/speech"),
                    fortunes: tts_text::FORTUNE_DIR.into(),
                };
                let r = tts_text::write(&opts, &text)?;
                eprintln!("no text file yet: built one");
                print_text_report(&r, &text);
            }
            let augment = match augment.as_str() {
                "default" => true,
                "none" => false,
                o => anyhow::bail!("--augment {o}: expected default or none"),
            };
            let engines = engines
                .split(',')
                .filter(|e| !e.trim().is_empty())
                .map(tts::Engine::parse)
                .collect::<Result<Vec<_>>>()?;
            let exclude: Vec<PathBuf> = if exclude.is_empty() {
                ["valid.jsonl", "test.jsonl"]
                    .iter()
                    .map(|f| expand_path("{cache}/data/speech").join(f))
                    .filter(|p| p.exists())
                    .collect()
            } else {
                exclude.iter().map(|e| expand_path(e)).collect()
            };
            let opts = tts::TtsOptions {
                text,
                out: expand_path(&out),
                engines,
                seed,
                jobs,
                augment,
                exclude,
                progress: true,
            };
            let r = tts::build(&opts)?;
            for f in &r.failures {
                eprintln!("  {f}");
            }
            println!("{}", r.summary());
        }
    }
    Ok(())
}

fn print_text_report(r: &tts_text::TextReport, out: &std::path::Path) {
    if let Some(why) = &r.fortunes_missing {
        eprintln!("no fortune sentences ({why}); the generator filled their share");
    }
    println!(
        "wrote {}: {} lines ({} generated prompts, {} fortune sentences of {} found, {} train transcripts; {} candidates dropped as valid/test transcripts)",
        out.display(),
        r.lines.len(),
        r.generated,
        r.fortunes,
        r.fortunes_available,
        r.train,
        r.held_out_dropped
    );
}

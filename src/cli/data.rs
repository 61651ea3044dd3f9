//! `anymal data`: build manifests for the corpora the project ships with.

use std::path::PathBuf;

use anyhow::Result;

use crate::data::{basic_motions, digits, speech, speech_instruct, video_shapes};
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
        DataCommand::BasicMotions { root, out } => {
            let out: PathBuf = expand_path(&out);
            let r = basic_motions::build(&expand_path(&root), &out)?;
            println!(
                "wrote {}/{{train,valid,test}}.jsonl: {} / {} / {} recordings",
                out.display(),
                r.train,
                r.valid,
                r.test
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
    }
    Ok(())
}

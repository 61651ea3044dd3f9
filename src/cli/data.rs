//! `anymal data`: build manifests for the corpora the project ships with.

use std::path::PathBuf;

use anyhow::Result;

use crate::data::{digits, speech};
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

//! Training data: manifests and builders for the corpora the project ships with.

use std::path::Path;

use anyhow::Result;

use manifest::{Columns, Manifest};

pub mod augment;
pub mod basic_motions;
pub mod digits;
pub mod imu_augment;
pub mod instruct;
pub mod manifest;
pub mod parquet;
pub mod speech;
pub mod speech_instruct;
pub mod tts;
pub mod tts_text;
pub mod video_shapes;

/// Alignment data from `path`: Parquet shards (a `.parquet` file or a glob of them) or a JSONL
/// manifest, its media and text under `columns`.
pub fn read_manifest(path: &Path, columns: &Columns) -> Result<Manifest> {
    if parquet::is_parquet(path) {
        parquet::read(path, columns)
    } else {
        Manifest::read_jsonl(path, columns)
    }
}

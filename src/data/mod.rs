//! Training data: manifests and builders for the corpora the project ships with.

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

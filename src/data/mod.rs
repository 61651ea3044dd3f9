//! Training data: manifests and builders for the corpora the project ships with.

pub mod basic_motions;
pub mod digits;
pub mod instruct;
pub mod manifest;
pub mod speech;
pub mod speech_instruct;
pub mod video_shapes;

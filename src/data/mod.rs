//! Training data: manifests and builders for the corpora the project ships with.

pub mod manifest;
pub mod speech;
pub mod digits;
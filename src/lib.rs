//! anymal: teach a frozen 4-bit LLM to take in any modality.
//!
//! The binary's commands are thin wrappers over these modules: `recipe` (TOML recipes with
//! `--set` overrides), `data` (manifests, corpus builders), `features` (frozen encoders and
//! their on-disk cache), `splice` (placeholders -> modality tokens, answer-only loss),
//! `train` (the alignment loop, AdamW, schedule, checkpoints), `eval` (WER, CIDEr-D).

pub mod assistant;
pub mod cli;
pub mod conversation;
pub mod data;
pub mod eval;
pub mod features;
pub mod infer;
pub mod memory_model;
pub mod merge;
pub mod recipe;
pub mod serve;
pub mod splice;
pub mod train;

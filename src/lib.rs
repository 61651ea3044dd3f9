//! anymal: teach a frozen 4-bit LLM to take in any modality.
//!
//! Data reads one way, each stage in one module:
//!
//! ```text
//! data (manifests, instruction records, corpus builders)
//!   -> features (frozen encoders of anymal-encoders, on-disk cache)
//!   -> multimodal (projectors of anymal-adapters per modality, the frozen LLM of anymal-llm, LoRA)
//!        conversation (the one prompt renderer) -> splice (slots filled, batch, answer loss)
//!   -> train (align and tune loops)  |  eval (WER, CIDEr-D, instruction scores)  |  merge
//! ```
//!
//! `recipe` reads the TOML recipes, `run_dir` owns the run folder's layout, `memory_model`
//! predicts training memory, `system` holds the process settings. The command line (`cli`) and
//! the OpenAI-compatible server (`serve`) sit on top; nothing below them imports them.

pub mod cli;
pub mod conversation;
pub mod data;
pub mod eval;
pub mod export;
pub mod features;
pub mod memory_model;
pub mod merge;
pub mod multimodal;
pub mod recipe;
pub mod run_dir;
pub mod serve;
pub mod splice;
pub mod system;
pub mod train;

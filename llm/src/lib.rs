//! anymal-llm: decoder LLMs that take input embeddings, return logits for every position, and
//! pass exact gradients back to those embeddings while their own 4-bit weights stay frozen.
//!
//! ```text
//! input_ids --embed_tokens--> inputs_embeds (b, t, d)  <- modality tokens spliced in here
//!           --forward_embeds--> hidden (b, t, d) --logits--> (b, t, vocab)
//! ```

pub mod attention;
pub mod chat;
mod checkpoint;
pub mod config;
pub mod decoder;
mod error;
pub mod fused_ops;
pub mod generate;
pub mod head_loss;
pub mod kv_cache;
pub mod loader;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod sampling;
pub mod spm;
pub mod tokenizer;
pub mod weights;

pub use chat::{ChatTemplate, Message};
pub use config::{Arch, LlmConfig};
pub use decoder::Llm;
pub use error::{Error, Result};
pub use generate::{generate, GenerationStats};
pub use kv_cache::KvCache;
pub use loader::{load_model, LoadOptions, LoadedModel};
pub use lora::{LoraSet, LoraSpec, PeftAdapter, TargetModules};
pub use sampling::{Sampler, SamplingConfig};
pub use tokenizer::Tokenizer;

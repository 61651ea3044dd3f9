//! anymal-llm: decoder LLMs that take input embeddings, return logits for every position, and
//! pass exact gradients back to those embeddings while their own 4-bit weights stay frozen.
//!
//! ```text
//! input_ids --embed_tokens--> inputs_embeds (b, t, d)  <- modality tokens spliced in here
//!           --forward_embeds--> hidden (b, t, d) --logits--> (b, t, vocab)
//! ```
//!
//! - Loading: [`loader`] resolves a model reference (GGUF file, HF folder, hub id in the local
//!   HF cache, short name of a fetched model) and builds the model from [`config`] and
//!   [`weights`] (frozen tensors by GGUF name); [`tokenizer`] (with [`spm`]) and [`chat`] give
//!   its tokenizer and chat template.
//! - The model: [`decoder`] ([`Llm`], blocks of [`attention`] and [`mlp`] with [`norm`] and
//!   [`rope`]); the training path runs the ops of [`fused_ops`] (the gated activation's
//!   one-pass CPU kernels in `gated_cpu`, their `exp` in `vec_math`), attention over whole
//!   sequences as one op (`attention_cpu`), the output head fused with the loss
//!   ([`head_loss`]) and, when asked, gradient checkpointing.
//! - Adapters: [`lora`] chooses the layers that get one, attaches them, holds them during
//!   training, and reads and writes PEFT's folders.
//! - Inference: [`generate()`] with a [`KvCache`] and a [`Sampler`], or several sequences at
//!   once with a [`BatchGenerator`]; decoding runs attention through [`decode_attention`].
//! - Errors: [`Error`], one variant per condition a caller may act on.
//!
//! The frozen quantized layers and the math of one adapter come from anymal-quant; shared
//! helpers (cache folder, atomic writes) from anymal-util.

pub mod attention;
mod attention_cpu;
pub mod block;
pub mod chat;
mod checkpoint;
pub mod config;
pub mod decode_attention;
pub mod decoder;
mod error;
pub mod fused_ops;
mod gated_cpu;
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
mod vec_math;
pub mod weights;

pub use chat::{ChatTemplate, Message};
pub use config::{Arch, LlmConfig};
pub use decoder::Llm;
pub use error::{Error, Result};
pub use generate::{generate, generate_with, BatchEvent, BatchGenerator, GenerationStats, Prefill};
pub use kv_cache::KvCache;
pub use loader::{load_model, LoadOptions, LoadedModel};
pub use lora::{LoraSet, LoraSpec, PeftAdapter, TargetModules};
pub use sampling::{Sampler, SamplingConfig};
pub use tokenizer::Tokenizer;

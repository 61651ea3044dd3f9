//! anymal-adapters: trainable projectors that map frozen encoder features `(b, n, d_enc)` to
//! LLM input embeddings `(b, k, d_llm)`: linear, two-layer MLP (`mlp2x_gelu`) and the Perceiver
//! resampler, each optionally behind a trainable front stage ([`front`]: the IMU encoder), plus
//! the seeded parameter store they train in.
//!
//! ```text
//! features (b, n, d_enc) [--front stage-->] --reduce (pool | concat)--> (b, k, d') --linear | mlp--> (b, k, d_llm)
//! features (b, n, d_enc) [--front stage-->] --reduce (stack n | avg_pool n)--> (b, ceil(len/n), d') --linear | mlp | ultravox--> (b, t, d_llm)
//! features (b, n, d_enc) [--front stage-->] --perceiver (k latents, depth layers)------------------> (b, k, d_llm)
//! ```
//!
//! One component per file with its config beside it: [`projector`] (the kinds by name, saving
//! and loading `projector.json` + `projector.safetensors`), [`pool`] (the reductions),
//! [`perceiver`], [`ctc_compress`] (dropping a CTC-trained rate projector's blank tokens),
//! [`imu_encoder`], [`layer_norm`], [`rms_norm`], [`params`] (the seeded store). Errors are
//! [`Error`]: a bad config names its field, a shape mismatch says what it expected.

pub mod ctc_compress;
mod error;
pub mod front;
pub mod imu_encoder;
pub mod layer_norm;
pub mod params;
pub mod perceiver;
pub mod pool;
pub mod projector;
pub mod rms_norm;

pub use error::{Error, Result};
pub use front::{FrontStage, FrontStageConfig};
pub use params::ParamStore;
pub use perceiver::{PerceiverConfig, PerceiverResampler};
pub use pool::Reduce;
pub use projector::{Projector, ProjectorConfig, ProjectorKind};

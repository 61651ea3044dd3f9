//! anymal-adapters: trainable projectors that map frozen encoder features `(b, n, d_enc)` to
//! LLM input embeddings `(b, k, d_llm)`: linear, two-layer MLP (`mlp2x_gelu`) and the Perceiver
//! resampler, plus the seeded parameter store they train in.
//!
//! ```text
//! features (b, n, d_enc) --reduce (pool | concat)--> (b, k, d') --linear | mlp--> (b, k, d_llm)
//! features (b, n, d_enc) --perceiver (k latents, depth layers)------------------> (b, k, d_llm)
//! ```

mod error;
pub mod imu_encoder;
pub mod layer_norm;
pub mod params;
pub mod perceiver;
pub mod pool;
pub mod projector;

pub use error::{Error, Result};
pub use params::ParamStore;
pub use perceiver::{PerceiverConfig, PerceiverResampler};
pub use pool::Reduce;
pub use projector::{Projector, ProjectorConfig, ProjectorKind};

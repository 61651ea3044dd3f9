//! anymal-quant: frozen quantized linear layers that still pass exact gradients to their input.
//!
//! candle's `QMatMul` runs its kernel through `apply_op1_no_bwd`, so a gradient never reaches the
//! layer's input and no error says so. [`QLinear`] wraps the same kernels in a custom op whose
//! backward is `grad @ dequant(W)`: the weights stay frozen and 4-bit, and only one layer's weight
//! is ever held dequantized (inside that backward call).
//!
//! Two 4-bit families: the GGUF block types (Q4_0, Q4_1, Q4K, ...) run on candle's kernels, and
//! [`Nf4Tensor`], QLoRA's NormalFloat-4 with optional double quantization of the scales.
//!
//! - [`QLinear`] (over a [`QWeight`]) is the layer; [`QuantType`] names and parses the types.
//! - [`cpu_kernels`]: SIMD matmuls for GGUF types candle runs with scalar code;
//!   [`dequant_rows`]: a range of a weight's rows dequantized (the fused head loss);
//!   [`custom_op`]: turning a custom op's storage into tensors and back.
//! - [`Lora`]: one trainable adapter beside a layer, with the side store its gradients go to
//!   under gradient checkpointing; which layers get one is anymal-llm's business. In training
//!   the frozen product and the update run as one op (`lora_matmul`), which keeps only its
//!   output for backward.
//! - [`Error`]: what failed, by kind; `From<Error> for candle_core::Error` for code that runs
//!   inside candle.

pub mod cpu_kernels;
pub mod custom_op;
pub mod dequant_rows;
mod error;
pub mod int8_gemm;
mod lora;
mod lora_matmul;
mod nf4;
mod qlinear;
mod quant_type;

pub use error::{Error, Result};
pub use int8_gemm::Compute;
pub use lora::{DropoutDraw, Lora, LoraConfig};
pub use nf4::{Nf4Tensor, NF4_CODE};
pub use qlinear::{QLinear, QWeight, EXACT_ROWS};
pub use quant_type::QuantType;

/// Re-exported so users name GGUF block types without depending on candle directly.
pub use candle_core::quantized::GgmlDType;

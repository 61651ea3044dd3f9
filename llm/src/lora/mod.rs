//! LoRA adapters on the decoder's linear layers, addressed by their HF module paths
//! (`model.layers.3.self_attn.q_proj`), and PEFT's on-disk format.
//!
//! The math of one adapter (`A`, `B`, scaling, dropout, the gradients kept aside under
//! gradient checkpointing) lives in [`anymal_quant::Lora`]; this module decides which layers
//! get one and how a set of them is trained, saved and loaded. One component per file:
//!
//! - `targets`: which layers an adapter goes on ([`TargetModules`], PEFT's matching rules);
//! - `attach`: addressing the model's linear layers by HF path, and attaching adapters to them
//!   fresh, from PEFT tensors or from a PEFT folder (methods of [`Llm`](crate::Llm));
//! - `set`: the adapters attached to a model ([`LoraSet`]) as training sees them: their
//!   variables, their gradients (merged with what checkpointed blocks kept aside), training
//!   mode, and their tensors under PEFT's names for checkpoints;
//! - `peft`: PEFT's folder, `adapter_config.json` + `adapter_model.safetensors`, read
//!   ([`PeftAdapter`]) and written ([`LoraSet::save_peft`]);
//! - `permute`: the q/k row order of GGUF Llama files, which adapters are converted to and
//!   from so that files always hold HF's layout.
//!
//! They are separate because they change for different reasons: PEFT's format follows PEFT,
//! attaching follows the model's layout, and the training-time state follows the trainer.

mod attach;
mod peft;
mod permute;
mod set;
mod targets;

pub use peft::{peft_key, PeftAdapter, PeftConfig, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use permute::{hf_to_interleaved_rows, interleaved_to_hf_rows};
pub use set::{LoraModule, LoraSet};
pub use targets::TargetModules;

use anymal_quant::LoraConfig;

/// A LoRA set-up: rank, scaling, dropout and where.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub cfg: LoraConfig,
    pub targets: TargetModules,
}

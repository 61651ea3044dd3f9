//! The adapters attached to a model, as training sees them: trainable variables and their
//! gradients by PEFT key, training mode on or off, and their values under PEFT's names and
//! layout (what checkpoints store and restore).
//!
//! Gradients come from two places: the backward graph, and the side store of each adapter
//! that checkpointed blocks fill (their backward runs inside a custom op, which can return the
//! input's gradient only; see [`anymal_quant::Lora`]). [`LoraSet::grads`] merges both.

use std::collections::HashMap;
use std::sync::Arc;

use anymal_quant::Lora;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::peft::{peft_key, ADAPTER_WEIGHTS_FILE};
use super::permute::{hf_to_interleaved_rows, interleaved_to_hf_rows};
use super::LoraSpec;
use crate::{Error, Result};

/// One adapted layer.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// HF module path (`model.layers.0.self_attn.q_proj`).
    pub path: String,
    pub lora: Arc<Lora>,
    /// Heads whose rows are permuted between HF's layout and the model's (GGUF Llama q/k).
    pub permute_heads: Option<usize>,
}

/// The adapters attached to a model.
#[derive(Debug, Clone)]
pub struct LoraSet {
    pub spec: LoraSpec,
    pub modules: Vec<LoraModule>,
}

impl LoraSet {
    pub fn num_params(&self) -> usize {
        self.modules.iter().map(|m| m.lora.num_params()).sum()
    }

    /// Trainable variables, named by their PEFT keys.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for m in &self.modules {
            out.push((peft_key(&m.path, 'A'), m.lora.a.clone()));
            out.push((peft_key(&m.path, 'B'), m.lora.b.clone()));
        }
        out
    }

    /// Gradients of one backward pass by PEFT key (see [`Lora::grads`]).
    pub fn grads(&self, store: &GradStore) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for m in &self.modules {
            if let Some((ga, gb)) = m.lora.grads(store)? {
                out.insert(peft_key(&m.path, 'A'), ga);
                out.insert(peft_key(&m.path, 'B'), gb);
            }
        }
        Ok(out)
    }

    /// Training on (graph to A and B, dropout) or off (constants, no dropout).
    pub fn set_training(&self, on: bool) {
        for m in &self.modules {
            m.lora.set_training(on);
            if !on {
                m.lora.clear_pending();
            }
        }
    }

    /// Places every adapter's dropout masks for training step `step`: module `j` draws from
    /// stream `j`, starting at `step << 32`, so the masks depend on the step and not on how
    /// many steps this process has run (a resumed run repeats the uninterrupted one).
    pub fn seek_dropout(&self, step: u64) {
        for (j, m) in self.modules.iter().enumerate() {
            m.lora.seek_dropout(j as u64, step << 32);
        }
    }

    /// The tensors in PEFT's layout and names (`B` back in HF row order).
    pub fn peft_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for m in &self.modules {
            let b = m.lora.b.as_tensor().detach();
            let b = match m.permute_heads {
                Some(h) => interleaved_to_hf_rows(&b, h)?,
                None => b,
            };
            out.insert(peft_key(&m.path, 'A'), m.lora.a.as_tensor().detach());
            out.insert(peft_key(&m.path, 'B'), b.contiguous()?);
        }
        Ok(out)
    }

    /// Overwrite `A` and `B` from tensors in PEFT's layout and names (a checkpoint).
    pub fn set_peft_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for m in &self.modules {
            let get = |w| {
                let name = peft_key(&m.path, w);
                tensors.get(&name).ok_or(Error::MissingTensor {
                    path: ADAPTER_WEIGHTS_FILE.into(),
                    name,
                })
            };
            let (a, b) = (get('A')?, get('B')?);
            let b = match m.permute_heads {
                Some(h) => hf_to_interleaved_rows(b, h)?,
                None => b.clone(),
            };
            if a.dims() != m.lora.a.dims() || b.dims() != m.lora.b.dims() {
                return Err(Error::ShapeMismatch {
                    what: format!("'{}'", m.path),
                    got: format!("stored shapes {:?} / {:?}", a.dims(), b.dims()),
                    expected: format!(
                        "the adapter's {:?} / {:?}",
                        m.lora.a.dims(),
                        m.lora.b.dims()
                    ),
                });
            }
            m.lora.a.set(&a.to_dtype(DType::F32)?)?;
            m.lora.b.set(&b.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

//! Attaching adapters to the model: its linear layers addressed by HF module path, adapters
//! put beside the layers a [`TargetModules`] selects (fresh, from PEFT tensors, or from a PEFT
//! folder), and removed again.
//!
//! Layers are shared between clones of a model (`Arc` blocks); attaching copies only the
//! blocks it changes, so a model and its adapted clone share every untouched block.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anymal_quant::Lora;
use candle_core::Tensor;

use super::peft::{parse_peft_key, peft_key, PeftAdapter, ADAPTER_WEIGHTS_FILE};
use super::permute::hf_to_interleaved_rows;
use super::{LoraModule, LoraSet, LoraSpec, TargetModules};
use crate::decoder::Llm;
use crate::{Error, Result};

impl Llm {
    /// HF paths of the linear layers LoRA can adapt, in model order (the output head last).
    pub fn linear_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, b) in self.layers.iter().enumerate() {
            for (name, _) in b.linears() {
                out.push(format!("model.layers.{i}.{name}"));
            }
        }
        out.push("lm_head".to_string());
        out
    }

    /// Rows of `path`'s weight that the model stores permuted (see `lora::permute`).
    fn permute_heads(&self, path: &str) -> Option<usize> {
        if !self.cfg.rope_interleaved {
            return None;
        }
        if path.ends_with("self_attn.q_proj") {
            Some(self.cfg.num_heads)
        } else if path.ends_with("self_attn.k_proj") {
            Some(self.cfg.num_kv_heads)
        } else {
            None
        }
    }

    /// The linear layer at an HF module path (`model.layers.3.mlp.up_proj`, `lm_head`).
    pub fn linear(&self, path: &str) -> Option<&anymal_quant::QLinear> {
        if path == "lm_head" {
            return Some(&self.lm_head);
        }
        let rest = path.strip_prefix("model.layers.")?;
        let (idx, name) = rest.split_once('.')?;
        let block = self.layers.get(idx.parse::<usize>().ok()?)?;
        block
            .linears()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, l)| l)
    }

    /// Mutable access; clones the block when it is shared (copy-on-write).
    pub(crate) fn linear_mut(&mut self, path: &str) -> Option<&mut anymal_quant::QLinear> {
        if path == "lm_head" {
            return Some(&mut self.lm_head);
        }
        let rest = path.strip_prefix("model.layers.")?;
        let (idx, name) = rest.split_once('.')?;
        let block = self.layers.get_mut(idx.parse::<usize>().ok()?)?;
        Arc::make_mut(block).linear_mut(name)
    }

    fn linear_shape(&self, path: &str) -> Option<(usize, usize)> {
        self.linear(path).map(|l| l.shape())
    }

    /// Paths `targets` selects: every block linear layer it matches, and the output head only
    /// when named explicitly (as PEFT does). Selecting nothing is an error.
    pub fn lora_targets(&self, targets: &TargetModules) -> Result<Vec<String>> {
        let m = targets.matcher()?;
        let picked: Vec<String> = self
            .linear_paths()
            .into_iter()
            .filter(|p| {
                if p == "lm_head" {
                    !matches!(targets, TargetModules::AllLinear) && m(p)
                } else {
                    m(p)
                }
            })
            .collect();
        let none_matched = |targets: String| {
            let mut examples = self.linear_paths();
            examples.truncate(7);
            Error::NoLoraTargets { targets, examples }
        };
        if picked.is_empty() {
            return Err(none_matched(targets.to_json().to_string()));
        }
        // A list with a typo in one name would otherwise train fewer layers than asked,
        // silently.
        if let TargetModules::Names(names) = targets {
            let paths = self.linear_paths();
            for n in names {
                let one = TargetModules::Names(vec![n.clone()]).matcher()?;
                if !paths.iter().any(|p| one(p)) {
                    return Err(none_matched(format!(
                        "{} (its entry \"{n}\")",
                        targets.to_json()
                    )));
                }
            }
        }
        Ok(picked)
    }

    /// Attach fresh adapters (`B = 0`: the model's outputs do not change) to the layers
    /// `spec` selects; `seed` fixes `A`. Replaces any adapters attached before.
    pub fn attach_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<LoraSet> {
        if spec.cfg.r == 0 {
            return Err(Error::Config {
                field: "lora.r".into(),
                what: "must be >= 1".into(),
            });
        }
        self.detach_lora();
        let mut modules = Vec::new();
        for (k, path) in self.lora_targets(&spec.targets)?.into_iter().enumerate() {
            let (out, inp) = self.linear_shape(&path).expect("path from linear_paths");
            let seed = seed ^ (k as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let lora = Arc::new(Lora::init(&spec.cfg, inp, out, seed)?);
            modules.push(self.set_lora(&path, lora)?);
        }
        Ok(LoraSet {
            spec: spec.clone(),
            modules,
        })
    }

    /// Attach the adapters of a PEFT folder (as written by PEFT or by [`LoraSet::save_peft`]).
    pub fn load_lora(&mut self, dir: &Path) -> Result<LoraSet> {
        let adapter = PeftAdapter::read(dir)?;
        self.attach_peft(&adapter)
            .map_err(|e| Error::in_file(dir, e))
    }

    /// Attach adapters from PEFT tensors. Every module the config targets must have both
    /// matrices with matching shapes, and no tensor may be left over.
    pub fn attach_peft(&mut self, adapter: &PeftAdapter) -> Result<LoraSet> {
        self.detach_lora();
        let spec = adapter.spec()?;
        let mut by_module: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (key, t) in &adapter.tensors {
            let (path, which) = parse_peft_key(key).ok_or_else(|| {
                Error::format(
                    ADAPTER_WEIGHTS_FILE,
                    format!("'{key}' is not a LoRA tensor name"),
                )
            })?;
            let e = by_module.entry(path).or_default();
            if which == 'A' {
                e.0 = Some(t.clone());
            } else {
                e.1 = Some(t.clone());
            }
        }
        let mut modules = Vec::new();
        for (path, (a, b)) in by_module {
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (a, _) => {
                    return Err(Error::MissingTensor {
                        path: ADAPTER_WEIGHTS_FILE.into(),
                        name: peft_key(&path, if a.is_some() { 'B' } else { 'A' }),
                    })
                }
            };
            let Some((out, inp)) = self.linear_shape(&path) else {
                return Err(Error::in_file(
                    ADAPTER_WEIGHTS_FILE,
                    self.unknown_module(&path),
                ));
            };
            let (ra, ia) = a.dims2()?;
            let (ob, rb) = b.dims2()?;
            let r = spec.cfg.r;
            if ia != inp || ob != out || ra != r || rb != r {
                return Err(Error::in_file(
                    ADAPTER_WEIGHTS_FILE,
                    Error::ShapeMismatch {
                        what: format!("'{path}'"),
                        got: format!("lora_A ({ra}, {ia}) and lora_B ({ob}, {rb})"),
                        expected: format!(
                            "lora_A ({r}, {inp}) and lora_B ({out}, {r}): the layer is ({out}, {inp}) and r is {r}"
                        ),
                    },
                ));
            }
            let b = match self.permute_heads(&path) {
                Some(h) => hf_to_interleaved_rows(&b, h)?,
                None => b,
            };
            let lora = Arc::new(Lora::from_tensors(&spec.cfg, &a, &b)?);
            modules.push(self.set_lora(&path, lora)?);
        }
        if modules.is_empty() {
            return Err(Error::format(ADAPTER_WEIGHTS_FILE, "holds no LoRA tensors"));
        }
        Ok(LoraSet { spec, modules })
    }

    fn set_lora(&mut self, path: &str, lora: Arc<Lora>) -> Result<LoraModule> {
        let permute_heads = self.permute_heads(path);
        let Some(lin) = self.linear_mut(path) else {
            return Err(self.unknown_module(path));
        };
        *lin = lin.with_lora(Some(lora.clone()))?;
        Ok(LoraModule {
            path: path.to_string(),
            lora,
            permute_heads,
        })
    }

    fn unknown_module(&self, path: &str) -> Error {
        Error::UnknownModule {
            module: path.to_string(),
            example: self.linear_paths().into_iter().next().unwrap_or_default(),
        }
    }

    /// Remove every adapter.
    pub fn detach_lora(&mut self) {
        // Only adapted layers are touched, so unadapted (shared) blocks are not copied.
        for p in self.linear_paths() {
            if self.linear(&p).is_some_and(|l| l.lora().is_some()) {
                if let Some(l) = self.linear_mut(&p) {
                    *l = l.with_lora(None).expect("removing an adapter always fits");
                }
            }
        }
    }
}

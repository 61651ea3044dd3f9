//! LoRA adapters on the decoder's linear layers, addressed by their HF module paths
//! (`model.layers.3.self_attn.q_proj`), and PEFT's on-disk format.
//!
//! PEFT writes `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.<module path>.lora_A.weight` `(r, in)` and `.lora_B.weight` `(out, r)`.
//! Module matching follows PEFT: a list of names matches a module whose path equals a name or
//! ends in `.<name>`; a single string is a regex that must match the whole path;
//! `"all-linear"` means every linear layer but the output head.
//!
//! GGUF files of the Llama family store `q_proj` and `k_proj` with their rows permuted for
//! interleaved RoPE (llama.cpp's converter). An adapter's `B` lives in the output space, so it
//! is permuted the same way on load and back on save: the files always hold HF's layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anymal_quant::{Lora, LoraConfig};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::decoder::Llm;
use crate::{Error, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

/// Which linear layers get an adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Paths equal to a name or ending in `.<name>` (`q_proj`, `mlp.down_proj`).
    Names(Vec<String>),
    /// A regex matched against the whole path.
    Regex(String),
    /// Every linear layer of the blocks (PEFT's `"all-linear"`: not the output head).
    AllLinear,
}

impl TargetModules {
    fn matcher(&self) -> Result<Box<dyn Fn(&str) -> bool>> {
        Ok(match self {
            TargetModules::AllLinear => Box::new(|_| true),
            TargetModules::Names(names) => {
                let names = names.clone();
                Box::new(move |p: &str| {
                    names
                        .iter()
                        .any(|n| p == n || p.ends_with(&format!(".{n}")))
                })
            }
            TargetModules::Regex(r) => {
                let re = regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| Error::Msg(format!("target_modules regex '{r}': {e}")))?;
                Box::new(move |p: &str| re.is_match(p))
            }
        })
    }

    /// As PEFT writes it: a list of names, a regex string, or "all-linear".
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            TargetModules::Names(n) => serde_json::json!(n),
            TargetModules::Regex(r) => serde_json::json!(r),
            TargetModules::AllLinear => serde_json::json!("all-linear"),
        }
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        match v {
            serde_json::Value::String(s) if s == "all-linear" => Ok(TargetModules::AllLinear),
            serde_json::Value::String(s) => Ok(TargetModules::Regex(s.clone())),
            serde_json::Value::Array(a) => Ok(TargetModules::Names(
                a.iter()
                    .map(|x| {
                        x.as_str().map(str::to_string).ok_or_else(|| {
                            Error::Msg(format!("target_modules: {x} is not a string"))
                        })
                    })
                    .collect::<Result<_>>()?,
            )),
            other => Err(Error::Msg(format!(
                "target_modules: expected a list of names or a regex string, got {other}"
            ))),
        }
    }
}

/// A LoRA set-up: rank, scaling, dropout and where.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub cfg: LoraConfig,
    pub targets: TargetModules,
}

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

    /// Rows of `path`'s weight that the model stores permuted (see the module docs).
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
    fn linear_mut(&mut self, path: &str) -> Option<&mut anymal_quant::QLinear> {
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
        if picked.is_empty() {
            return Err(Error::Msg(format!(
                "target_modules {} matches none of the model's linear layers (they are named like {})",
                targets.to_json(),
                self.linear_paths()[..7.min(self.linear_paths().len())].join(", ")
            )));
        }
        Ok(picked)
    }

    /// Attach fresh adapters (`B = 0`: the model's outputs do not change) to the layers
    /// `spec` selects; `seed` fixes `A`. Replaces any adapters attached before.
    pub fn attach_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<LoraSet> {
        if spec.cfg.r == 0 {
            return Err(Error::Msg("lora.r must be >= 1".into()));
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
        self.attach_peft(&adapter).map_err(|e| Error::file(dir, e))
    }

    /// Attach adapters from PEFT tensors. Every module the config targets must have both
    /// matrices with matching shapes, and no tensor may be left over.
    pub fn attach_peft(&mut self, adapter: &PeftAdapter) -> Result<LoraSet> {
        self.detach_lora();
        let spec = adapter.spec()?;
        let mut by_module: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (key, t) in &adapter.tensors {
            let (path, which) = parse_peft_key(key).ok_or_else(|| {
                Error::Msg(format!(
                    "{ADAPTER_WEIGHTS_FILE}: '{key}' is not a LoRA tensor name"
                ))
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
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::Msg(format!(
                    "{ADAPTER_WEIGHTS_FILE}: '{path}' has only one of lora_A / lora_B"
                )));
            };
            let Some((out, inp)) = self.linear_shape(&path) else {
                return Err(Error::Msg(format!(
                    "{ADAPTER_WEIGHTS_FILE}: adapts '{path}', which this model does not have (its layers are named like {})",
                    self.linear_paths()[0]
                )));
            };
            let (ra, ia) = a.dims2()?;
            let (ob, rb) = b.dims2()?;
            if ia != inp || ob != out || ra != spec.cfg.r || rb != spec.cfg.r {
                return Err(Error::Msg(format!(
                    "{ADAPTER_WEIGHTS_FILE}: '{path}' has lora_A ({ra}, {ia}) and lora_B ({ob}, {rb}); \
                     the layer is ({out}, {inp}) and r is {}",
                    spec.cfg.r
                )));
            }
            let b = match self.permute_heads(&path) {
                Some(h) => hf_to_interleaved_rows(&b, h)?,
                None => b,
            };
            let lora = Arc::new(Lora::from_tensors(&spec.cfg, &a, &b)?);
            modules.push(self.set_lora(&path, lora)?);
        }
        if modules.is_empty() {
            return Err(Error::Msg(format!(
                "{ADAPTER_WEIGHTS_FILE}: holds no LoRA tensors"
            )));
        }
        Ok(LoraSet { spec, modules })
    }

    fn set_lora(&mut self, path: &str, lora: Arc<Lora>) -> Result<LoraModule> {
        let permute_heads = self.permute_heads(path);
        let lin = self
            .linear_mut(path)
            .ok_or_else(|| Error::Msg(format!("no linear layer '{path}'")))?;
        *lin = lin.with_lora(Some(lora.clone()))?;
        Ok(LoraModule {
            path: path.to_string(),
            lora,
            permute_heads,
        })
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
                tensors
                    .get(&peft_key(&m.path, w))
                    .ok_or_else(|| Error::Msg(format!("missing '{}'", peft_key(&m.path, w))))
            };
            let (a, b) = (get('A')?, get('B')?);
            let b = match m.permute_heads {
                Some(h) => hf_to_interleaved_rows(b, h)?,
                None => b.clone(),
            };
            if a.dims() != m.lora.a.dims() || b.dims() != m.lora.b.dims() {
                return Err(Error::Msg(format!(
                    "'{}': stored shapes {:?} / {:?} differ from the adapter's {:?} / {:?}",
                    m.path,
                    a.dims(),
                    b.dims(),
                    m.lora.a.dims(),
                    m.lora.b.dims()
                )));
            }
            m.lora.a.set(&a.to_dtype(DType::F32)?)?;
            m.lora.b.set(&b.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// PEFT's `adapter_config.json` for this set.
    pub fn peft_config(&self, base_model_name_or_path: &str) -> serde_json::Value {
        let c = &self.spec.cfg;
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": c.r,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "use_rslora": c.use_rslora,
            "target_modules": self.spec.targets.to_json(),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_dora": false,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": null,
            "layers_pattern": null,
            "revision": null,
        })
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir` (created), each
    /// through a temporary file and a rename.
    pub fn save_peft(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
        let w = dir.join(ADAPTER_WEIGHTS_FILE);
        let tmp = dir.join(format!(".{ADAPTER_WEIGHTS_FILE}.tmp"));
        candle_core::safetensors::save(&self.peft_tensors()?, &tmp)?;
        std::fs::rename(&tmp, &w).map_err(|e| Error::file(&w, format!("cannot write: {e}")))?;
        let c = dir.join(ADAPTER_CONFIG_FILE);
        let tmp = dir.join(format!(".{ADAPTER_CONFIG_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&self.peft_config(base_model_name_or_path))
            .map_err(|e| Error::Msg(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| Error::file(&tmp, format!("cannot write: {e}")))?;
        std::fs::rename(&tmp, &c).map_err(|e| Error::file(&c, format!("cannot write: {e}")))?;
        Ok(())
    }
}

/// A PEFT LoRA folder read from disk.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: PeftConfig,
    /// Keys as stored (`base_model.model.<path>.lora_A.weight`).
    pub tensors: HashMap<String, Tensor>,
}

/// The fields of `adapter_config.json` anymal reads. Others are ignored; ones that would
/// change the math and that anymal does not implement are rejected by [`PeftAdapter::spec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub use_rslora: bool,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
}

impl PeftAdapter {
    pub fn read(dir: &Path) -> Result<Self> {
        let cpath = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&cpath)
            .map_err(|e| Error::file(&cpath, format!("cannot read: {e}")))?;
        let config: PeftConfig = serde_json::from_str(&text).map_err(|e| Error::file(&cpath, e))?;
        let wpath = dir.join(ADAPTER_WEIGHTS_FILE);
        if !wpath.exists() {
            let bin = dir.join("adapter_model.bin");
            return Err(Error::file(
                &wpath,
                if bin.exists() {
                    "missing; the folder has adapter_model.bin (a pickle), which anymal does not read: re-save it with PEFT's safe_serialization=True"
                } else {
                    "missing"
                },
            ));
        }
        let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
            .map_err(|e| Error::file(&wpath, e))?;
        let adapter = Self { config, tensors };
        adapter.spec().map_err(|e| Error::file(&cpath, e))?;
        Ok(adapter)
    }

    /// The spec the config describes; errors for settings anymal does not implement.
    pub fn spec(&self) -> Result<LoraSpec> {
        let c = &self.config;
        if let Some(t) = &c.peft_type {
            if t != "LORA" {
                return Err(Error::Msg(format!(
                    "peft_type '{t}': only LORA adapters are supported"
                )));
            }
        }
        if c.r == 0 {
            return Err(Error::Msg("r: must be >= 1".into()));
        }
        if c.use_dora {
            return Err(Error::Msg(
                "use_dora: DoRA adapters are not supported".into(),
            ));
        }
        if c.fan_in_fan_out {
            return Err(Error::Msg(
                "fan_in_fan_out: only (out, in) linear layers are supported".into(),
            ));
        }
        if c.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(Error::Msg(format!(
                "bias '{}': adapters that train biases are not supported",
                c.bias.as_deref().unwrap_or_default()
            )));
        }
        for (name, p) in [
            ("rank_pattern", &c.rank_pattern),
            ("alpha_pattern", &c.alpha_pattern),
        ] {
            if p.as_ref().is_some_and(|m| !m.is_empty()) {
                return Err(Error::Msg(format!(
                    "{name}: per-module ranks/alphas are not supported"
                )));
            }
        }
        if c.modules_to_save.as_ref().is_some_and(|m| !m.is_null()) {
            return Err(Error::Msg(
                "modules_to_save: fully trained extra modules are not supported".into(),
            ));
        }
        Ok(LoraSpec {
            cfg: LoraConfig {
                r: c.r,
                alpha: c.lora_alpha,
                dropout: c.lora_dropout,
                use_rslora: c.use_rslora,
            },
            targets: TargetModules::from_json(&c.target_modules)?,
        })
    }
}

/// `base_model.model.<path>.lora_A.weight`
pub fn peft_key(path: &str, which: char) -> String {
    format!("{KEY_PREFIX}{path}.lora_{which}.weight")
}

/// `(module path, 'A' | 'B')` of a PEFT key; also accepts the adapter-named form
/// `.lora_A.default.weight` that some PEFT versions write.
fn parse_peft_key(key: &str) -> Option<(String, char)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    for which in ['A', 'B'] {
        let tag = format!(".lora_{which}.");
        if let Some(i) = rest.find(&tag) {
            let tail = &rest[i + tag.len()..];
            if tail == "weight"
                || (tail.ends_with(".weight") && !tail[..tail.len() - 7].contains('.'))
            {
                return Some((rest[..i].to_string(), which));
            }
        }
    }
    None
}

/// HF row order -> llama.cpp's interleaved order: `(heads, 2, hd/2, c) -> (heads, hd/2, 2, c)`.
pub fn hf_to_interleaved_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, c) = w.dims2()?;
    check_heads(out, heads)?;
    Ok(w.reshape((heads, 2, out / heads / 2, c))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, c))?)
}

/// The inverse of [`hf_to_interleaved_rows`].
pub fn interleaved_to_hf_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, c) = w.dims2()?;
    check_heads(out, heads)?;
    Ok(w.reshape((heads, out / heads / 2, 2, c))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, c))?)
}

fn check_heads(out: usize, heads: usize) -> Result<()> {
    if heads == 0 || out % (2 * heads) != 0 {
        return Err(Error::Msg(format!(
            "cannot split {out} rows into {heads} heads of even size"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_round_trip() {
        let k = peft_key("model.layers.0.self_attn.q_proj", 'A');
        assert_eq!(
            k,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            parse_peft_key(&k),
            Some(("model.layers.0.self_attn.q_proj".into(), 'A'))
        );
        assert_eq!(
            parse_peft_key("base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight"),
            Some(("model.layers.1.mlp.up_proj".into(), 'B'))
        );
        assert_eq!(parse_peft_key("model.layers.1.mlp.up_proj.weight"), None);
    }

    #[test]
    fn row_permutation_inverts() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((16, 3))
            .unwrap();
        let p = hf_to_interleaved_rows(&w, 2).unwrap();
        // Head 0 (rows 0..8) interleaves its halves: rows 0, 4, 1, 5, ...
        let first: Vec<f32> = p
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&first[..4], &[0.0, 12.0, 3.0, 15.0]);
        let back = interleaved_to_hf_rows(&p, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(hf_to_interleaved_rows(&w, 3).is_err());
    }

    #[test]
    fn target_matching_follows_peft() {
        let m = TargetModules::Names(vec!["q_proj".into(), "mlp.down_proj".into()])
            .matcher()
            .unwrap();
        assert!(m("model.layers.0.self_attn.q_proj"));
        assert!(m("model.layers.3.mlp.down_proj"));
        assert!(!m("model.layers.0.self_attn.k_proj"));
        assert!(!m("model.layers.0.self_attn.xq_proj"));
        let r = TargetModules::Regex(r"model\.layers\.[01]\.self_attn\.(q|v)_proj".into())
            .matcher()
            .unwrap();
        assert!(r("model.layers.1.self_attn.v_proj"));
        assert!(!r("model.layers.2.self_attn.v_proj"));
        assert!(TargetModules::Regex("(".into()).matcher().is_err());
    }
}

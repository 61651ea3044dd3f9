//! PEFT's LoRA folder: `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.<module path>.lora_A.weight` `(r, in)` and `.lora_B.weight` `(out, r)`.
//!
//! Reading checks every setting that would change the math: ones anymal does not implement
//! (DoRA, transposed layers, trained biases, per-module ranks, ...) are refused rather than
//! silently applied as plain LoRA. Writing produces what PEFT itself loads.

use std::collections::HashMap;
use std::path::Path;

use anymal_quant::LoraConfig;
use anymal_util::fs::{write_atomic, write_atomic_with};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{LoraSet, LoraSpec, TargetModules};
use crate::{Error, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

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
        let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, "read", e))?;
        let config: PeftConfig =
            serde_json::from_str(&text).map_err(|e| Error::format(&cpath, e))?;
        let wpath = dir.join(ADAPTER_WEIGHTS_FILE);
        if !wpath.exists() {
            let bin = dir.join("adapter_model.bin");
            return Err(Error::not_found(
                &wpath,
                if bin.exists() {
                    "missing; the folder has adapter_model.bin (a pickle), which anymal does not read: re-save it with PEFT's safe_serialization=True"
                } else {
                    "missing"
                },
            ));
        }
        let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
            .map_err(|e| Error::in_file(&wpath, e))?;
        let adapter = Self { config, tensors };
        adapter.spec().map_err(|e| Error::in_file(&cpath, e))?;
        Ok(adapter)
    }

    /// The spec the config describes; errors for settings anymal does not implement.
    pub fn spec(&self) -> Result<LoraSpec> {
        let c = &self.config;
        let bad = |field: &str, what: String| {
            Err(Error::Config {
                field: field.into(),
                what,
            })
        };
        if let Some(t) = c.peft_type.as_deref().filter(|t| *t != "LORA") {
            return bad(
                "peft_type",
                format!("only LORA adapters are supported, not '{t}'"),
            );
        }
        if c.r == 0 {
            return bad("r", "must be >= 1".into());
        }
        if c.use_dora {
            return bad("use_dora", "DoRA adapters are not supported".into());
        }
        if c.fan_in_fan_out {
            return bad(
                "fan_in_fan_out",
                "only (out, in) linear layers are supported".into(),
            );
        }
        if let Some(b) = c.bias.as_deref().filter(|b| *b != "none") {
            return bad(
                "bias",
                format!("adapters that train biases are not supported ('{b}')"),
            );
        }
        for (name, p) in [
            ("rank_pattern", &c.rank_pattern),
            ("alpha_pattern", &c.alpha_pattern),
        ] {
            if p.as_ref().is_some_and(|m| !m.is_empty()) {
                return bad(name, "per-module ranks/alphas are not supported".into());
            }
        }
        if c.modules_to_save.as_ref().is_some_and(|m| !m.is_null()) {
            return bad(
                "modules_to_save",
                "fully trained extra modules are not supported".into(),
            );
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

impl LoraSet {
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
    /// atomically (a reader sees the old file or the new one, never half of one).
    pub fn save_peft(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        let tensors = self.peft_tensors()?;
        let w = dir.join(ADAPTER_WEIGHTS_FILE);
        write_atomic_with(&w, |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(std::io::Error::other)
        })
        .map_err(|e| Error::io(&w, "write", e))?;
        let c = dir.join(ADAPTER_CONFIG_FILE);
        let text = serde_json::to_string_pretty(&self.peft_config(base_model_name_or_path))
            .map_err(|e| Error::format(&c, e))?;
        write_atomic(&c, text.as_bytes()).map_err(|e| Error::io(&c, "write", e))
    }
}

/// `base_model.model.<path>.lora_A.weight`
pub fn peft_key(path: &str, which: char) -> String {
    format!("{KEY_PREFIX}{path}.lora_{which}.weight")
}

/// `(module path, 'A' | 'B')` of a PEFT key; also accepts the adapter-named form
/// `.lora_A.default.weight` that some PEFT versions write.
pub(super) fn parse_peft_key(key: &str) -> Option<(String, char)> {
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

    /// Each setting anymal does not implement is refused as a config error naming its field.
    #[test]
    fn unsupported_settings_name_their_field() {
        let adapter = |extra: serde_json::Value| {
            let mut cfg = serde_json::json!({
                "r": 4, "lora_alpha": 8.0, "target_modules": ["q_proj"],
            });
            for (k, v) in extra.as_object().into_iter().flatten() {
                cfg[k] = v.clone();
            }
            PeftAdapter {
                config: serde_json::from_value(cfg).unwrap(),
                tensors: HashMap::new(),
            }
        };
        assert!(adapter(serde_json::json!({})).spec().is_ok());
        for (field, value) in [
            ("peft_type", serde_json::json!("LOHA")),
            ("r", serde_json::json!(0)),
            ("use_dora", serde_json::json!(true)),
            ("fan_in_fan_out", serde_json::json!(true)),
            ("bias", serde_json::json!("all")),
            ("rank_pattern", serde_json::json!({"q_proj": 8})),
            ("alpha_pattern", serde_json::json!({"q_proj": 8})),
            ("modules_to_save", serde_json::json!(["lm_head"])),
            ("target_modules", serde_json::json!(3)),
        ] {
            let e = adapter(serde_json::json!({ field: value }))
                .spec()
                .unwrap_err();
            assert!(
                matches!(&e, Error::Config { field: f, .. } if f == field),
                "{field}: {e:?}"
            );
            assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
            let wrapped = Error::in_file(ADAPTER_CONFIG_FILE, e);
            assert!(matches!(wrapped.innermost(), Error::Config { .. }));
            assert!(wrapped.to_string().starts_with("adapter_config.json: "));
        }
    }
}

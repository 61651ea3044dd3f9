//! Which linear layers get an adapter, with PEFT's rules: a list of names matches a module
//! whose path equals a name or ends in `.<name>`; a single string is a regex that must match
//! the whole path; `"all-linear"` means every linear layer but the output head.
//!
//! Kept apart from the model so that a recipe or a command line can parse and check targets
//! (and print them as PEFT writes them) without a model at hand.

use crate::{Error, Result};

/// A predicate on HF module paths.
pub(super) type PathMatcher = Box<dyn Fn(&str) -> bool>;

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
    /// A predicate on HF module paths; errors for an invalid regex.
    pub(super) fn matcher(&self) -> Result<PathMatcher> {
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
                let re = regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| Error::Config {
                    field: "target_modules".into(),
                    what: format!("invalid regex '{r}': {e}"),
                })?;
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
                        x.as_str().map(str::to_string).ok_or_else(|| Error::Config {
                            field: "target_modules".into(),
                            what: format!("{x} is not a string"),
                        })
                    })
                    .collect::<Result<_>>()?,
            )),
            other => Err(Error::Config {
                field: "target_modules".into(),
                what: format!("expected a list of names or a regex string, got {other}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

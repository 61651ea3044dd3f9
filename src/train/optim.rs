//! AdamW (decoupled weight decay, Loshchilov & Hutter) whose moment buffers can be saved and
//! restored, so that a resumed run continues exactly where the killed one stopped.
//! candle's own `AdamW` keeps its moments private.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Var)>,
    /// Per-parameter multiplier on the step's learning rate (parameter groups).
    lr_scale: Vec<f64>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let m = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            cfg,
            lr_scale: vec![1.0; params.len()],
            params,
            m,
            v,
            step: 0,
        })
    }

    /// Parameter groups: each group's parameters step with `lr * scale` (e.g. projector and
    /// LoRA with their own learning rates under one schedule).
    pub fn grouped(groups: Vec<(Vec<(String, Var)>, f64)>, cfg: AdamWConfig) -> Result<Self> {
        let scales: Vec<f64> = groups
            .iter()
            .flat_map(|(p, s)| std::iter::repeat_n(*s, p.len()))
            .collect();
        let params = groups.into_iter().flat_map(|(p, _)| p).collect();
        let mut opt = Self::new(params, cfg)?;
        opt.lr_scale = scales;
        Ok(opt)
    }

    /// One update with learning rate `lr` from the gradients in `grads`, already scaled (by
    /// accumulation and clipping) as the caller wants. A parameter without a gradient is an
    /// error: it would mean the graph does not reach it.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (name, p)) in self.params.iter().enumerate() {
            let lr = lr * self.lr_scale[i];
            let g = grads
                .get(name)
                .with_context(|| format!("no gradient reached parameter '{name}'"))?;
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * c.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments as tensors `m.<name>` / `v.<name>`.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// The first of the parameters and their moments (`m.<name>`, `v.<name>`) that holds a NaN
    /// or an infinity, by name: a checkpoint of it could only be resumed into NaN.
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (label, t) in [
                (name.clone(), p.as_tensor()),
                (format!("m.{name}"), &self.m[i]),
                (format!("v.{name}"), &self.v[i]),
            ] {
                if !all_finite(t)? {
                    return Ok(Some(label));
                }
            }
        }
        Ok(None)
    }

    /// Restore moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, path: &Path, step: u64) -> Result<()> {
        let dev = self
            .params
            .first()
            .map(|(_, p)| p.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let t = candle_core::safetensors::load(path, &dev)
            .with_context(|| format!("{}: cannot read optimizer state", path.display()))?;
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (buf, key) in [
                (&mut self.m[i], format!("m.{name}")),
                (&mut self.v[i], format!("v.{name}")),
            ] {
                let x = t
                    .get(&key)
                    .with_context(|| format!("{}: no '{key}'", path.display()))?;
                if x.shape() != p.shape() {
                    bail!(
                        "{}: '{key}' has shape {:?}, parameter has {:?}",
                        path.display(),
                        x.shape(),
                        p.shape()
                    );
                }
                *buf = x.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Whether every element of `t` is finite: `x - x` is 0 for a finite `x` and NaN for NaN and
/// the infinities, and a sum of zeros cannot overflow (a sum of `t` itself could).
#[allow(clippy::eq_op)] // `t - t` on purpose: see above
fn all_finite(t: &Tensor) -> Result<bool> {
    let s = (t - t)?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok(s == 0.0)
}

/// Gradients of the named parameters from a backward pass, or an error naming any parameter
/// that received none (a silently frozen projector is the failure this guards against).
pub fn collect_grads(
    params: &[(String, Var)],
    grads: &GradStore,
) -> Result<HashMap<String, Tensor>> {
    params
        .iter()
        .map(|(n, v)| {
            grads
                .get(v.as_tensor())
                .cloned()
                .map(|g| (n.clone(), g))
                .with_context(|| format!("no gradient reached parameter '{n}'"))
        })
        .collect()
}

/// Add one micro-batch's gradients into the running sum of an accumulated step.
pub fn accumulate(
    acc: &mut Option<HashMap<String, Tensor>>,
    grads: HashMap<String, Tensor>,
) -> Result<()> {
    match acc {
        None => *acc = Some(grads),
        Some(a) => {
            for (k, g) in grads {
                if let Some(x) = a.get_mut(&k) {
                    *x = (&*x + g)?;
                }
            }
        }
    }
    Ok(())
}

/// Scale all gradients so their global L2 norm is at most `max_norm` (0: no clipping).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    // Summed in name order: a HashMap's order changes from process to process, and with it
    // the last bits of the norm, the clipping scale and so the weights of a resumed run.
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let mut sq = 0f64;
    for n in names {
        sq += grads[n].sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reference values from torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8,
    /// weight_decay=0.01) on p = [1.0, -2.0] with the fixed gradients g1 = [0.5, -1.0],
    /// g2 = [0.1, 0.3] (computed by hand from the published update rule; torch gives the same):
    /// step 1: m = [0.05, -0.1], v = [2.5e-4, 1e-3], update = [1, -1]
    ///         p = p*(1-0.001) - 0.1*update = [0.899, -1.898]
    #[test]
    fn first_step_matches_the_update_rule() -> Result<()> {
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut opt = AdamW::new(
            vec![("p".into(), p.clone())],
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
        )?;
        let mut g = HashMap::new();
        g.insert("p".to_string(), Tensor::new(&[0.5f32, -1.0], &Device::Cpu)?);
        opt.step(&g, 0.1)?;
        let v = p.as_tensor().to_vec1::<f32>()?;
        assert!(
            (v[0] - 0.899).abs() < 1e-5 && (v[1] + 1.898).abs() < 1e-5,
            "{v:?}"
        );
        Ok(())
    }

    #[test]
    fn saved_state_resumes_identically() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("anymal-adamw-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let grads: Vec<HashMap<String, Tensor>> = (0..6)
            .map(|i| {
                let mut g = HashMap::new();
                g.insert(
                    "p".to_string(),
                    Tensor::new(&[0.3f32 * i as f32 - 0.7, 0.2], &Device::Cpu).unwrap(),
                );
                g
            })
            .collect();
        // Uninterrupted.
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg)?;
        for g in &grads {
            opt.step(g, 0.05)?;
        }
        // Stopped after 3, saved, restored into a fresh optimizer.
        let q = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut a = AdamW::new(vec![("p".into(), q.clone())], cfg)?;
        for g in &grads[..3] {
            a.step(g, 0.05)?;
        }
        let path = dir.join("opt.safetensors");
        let st: HashMap<String, Tensor> = a.state_tensors().into_iter().collect();
        candle_core::safetensors::save(&st, &path)?;
        let saved_q = q.as_tensor().copy()?;
        let r = Var::from_tensor(&saved_q)?;
        let mut b = AdamW::new(vec![("p".into(), r.clone())], cfg)?;
        b.load_state(&path, a.step)?;
        for g in &grads[3..] {
            b.step(g, 0.05)?;
        }
        assert_eq!(
            p.as_tensor().to_vec1::<f32>()?,
            r.as_tensor().to_vec1::<f32>()?
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn clipping_bounds_the_norm() -> Result<()> {
        let mut g = HashMap::new();
        g.insert("a".to_string(), Tensor::new(&[3.0f32, 4.0], &Device::Cpu)?);
        let n = clip_grad_norm(&mut g, 1.0)?;
        assert!((n - 5.0).abs() < 1e-6);
        let v = g["a"].to_vec1::<f32>()?;
        assert!(((v[0] * v[0] + v[1] * v[1]).sqrt() - 1.0).abs() < 1e-4);
        Ok(())
    }
}

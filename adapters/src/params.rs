//! The trainable parameters of a run: a named set of `Var`s that modules pull from through a
//! `VarBuilder`, initialised deterministically from a seed.
//!
//! candle's `VarMap` draws its initial values from an unseeded generator, so two runs with the
//! same seed would start from different weights. Here each tensor is drawn from a generator
//! seeded by `(seed, name)`: the values depend neither on the order in which modules are built
//! nor on the thread, which is what makes a run (and its resume) reproducible.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use anymal_util::rng::{fnv1a, SplitMix64};

use crate::{Error, Result};

/// Named trainable tensors. Cloning shares the same storage.
#[derive(Clone, Debug)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
    device: Device,
}

impl ParamStore {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            seed,
            device: device.clone(),
        }
    }

    /// A builder whose `get` returns the stored tensor of that name, creating it with the
    /// requested initialisation on first use.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, self.device.clone())
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.lock().values().map(|v| v.elem_count()).sum()
    }

    /// Plain tensors (no gradient tracking) of every parameter, for saving.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Put values in before the modules are built (loading) or overwrite existing ones
    /// (resuming). Shapes of existing parameters must match.
    pub fn set_tensors(&self, tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let mut vars = self.lock();
        for (name, t) in tensors {
            let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
            match vars.get(&name) {
                Some(v) => {
                    if v.shape() != t.shape() {
                        return Err(Error::Parameter(format!(
                            "parameter '{name}' has shape {:?}, the stored value has {:?}",
                            v.shape(),
                            t.shape()
                        )));
                    }
                    v.set(&t)?;
                }
                None => {
                    vars.insert(name, Var::from_tensor(&t)?);
                }
            }
        }
        Ok(())
    }

    /// Load a safetensors file into the store (see [`ParamStore::set_tensors`]).
    pub fn load_safetensors(&self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| Error::file(path, format!("cannot read parameters: {e}")))?;
        self.set_tensors(tensors.into_iter().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still
        // usable, and refusing would turn one panic into two.
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn init_tensor(&self, shape: &Shape, name: &str, init: Init) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = SplitMix64::new(self.seed ^ fnv1a(name.as_bytes()));
        let data: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| rng.uniform(lo, up) as f32).collect(),
            Init::Randn { mean, stdev } => (0..n).map(|_| rng.normal(mean, stdev) as f32).collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = match fan {
                    FanInOut::FanIn => fan.for_shape(shape),
                    FanInOut::FanOut => fan.for_shape(shape),
                };
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        (0..n).map(|_| rng.uniform(-b, b) as f32).collect()
                    }
                    NormalOrUniform::Normal => {
                        (0..n).map(|_| rng.normal(0.0, std) as f32).collect()
                    }
                }
            }
        };
        Ok(Tensor::from_vec(data, shape.clone(), &self.device)?)
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(v) = self.lock().get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter '{name}' has shape {:?}, the projector needs {s:?}",
                    v.shape()
                );
            }
            return v.as_tensor().to_dtype(dtype)?.to_device(dev);
        }
        let t = self
            .init_tensor(&s, name, h)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let v = Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        self.lock().insert(name.to_string(), v);
        out.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("no parameter named '{name}'"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_regardless_of_order() -> Result<()> {
        let a = ParamStore::new(7, &Device::Cpu);
        let b = ParamStore::new(7, &Device::Cpu);
        let vb_a = a.var_builder();
        let vb_b = b.var_builder();
        let x1 = vb_a.get_with_hints((4, 3), "x", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let _ = vb_a.get_with_hints(5, "y", Init::Uniform { lo: -1., up: 1. })?;
        // Opposite order in the second store.
        let _ = vb_b.get_with_hints(5, "y", Init::Uniform { lo: -1., up: 1. })?;
        let x2 = vb_b.get_with_hints((4, 3), "x", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let d = (x1 - x2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        let c = ParamStore::new(8, &Device::Cpu);
        let x3 =
            c.var_builder()
                .get_with_hints((4, 3), "x", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let x1 = a.var_builder().get((4, 3), "x")?;
        assert!((x1 - x3)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = ParamStore::new(1, &Device::Cpu);
        let vb = a.var_builder();
        assert!(vb.get_with_hints((2, 2), "w", Init::Const(0.)).is_ok());
        assert!(vb.get_with_hints((3, 2), "w", Init::Const(0.)).is_err());
    }
}

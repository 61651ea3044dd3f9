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
                        return Err(Error::Msg(format!(
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

/// 64-bit FNV-1a, a stable hash (std's `DefaultHasher` may change between Rust releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A small, fast, well-mixed generator; enough for weight initialisation.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform(&mut self, lo: f64, up: f64) -> f64 {
        lo + (up - lo) * self.next_f64()
    }

    /// Box-Muller; draws two uniforms per value for simplicity.
    pub fn normal(&mut self, mean: f64, std: f64) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
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
    fn normal_draws_have_the_requested_moments() {
        let mut r = SplitMix64::new(1);
        let xs: Vec<f64> = (0..20000).map(|_| r.normal(0.5, 2.0)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = ParamStore::new(1, &Device::Cpu);
        let vb = a.var_builder();
        assert!(vb.get_with_hints((2, 2), "w", Init::Const(0.)).is_ok());
        assert!(vb.get_with_hints((3, 2), "w", Init::Const(0.)).is_err());
    }
}

//! LoRA: a trainable low-rank update beside a frozen (quantized) linear layer.
//!
//! `y = x W^T + scale * dropout(x) A^T B^T` with `A (r, in)` and `B (out, r)` trained and `W`
//! frozen. `scale` is `alpha / r`, or `alpha / sqrt(r)` with rsLoRA (Kalajdzievski 2023), the
//! convention PEFT stores in `adapter_config.json`. `B` starts at zero, so a fresh adapter does
//! not change the model; `A` starts as PEFT's default (Kaiming-uniform, bound `1/sqrt(in)`).
//!
//! Gradient checkpointing re-runs a block inside a custom op's backward, and candle's custom
//! ops return a gradient for their input only: gradients of `A` and `B` computed there would
//! be dropped without a word. The checkpointing op therefore hands them to
//! [`Lora::add_pending_grads`], and [`Lora::grads`] merges them with the ones the outer graph
//! produced.
//!
//! Dropout's keep mask is never stored: each training forward takes the next [`DropoutDraw`] of
//! the adapter's own stream, and the mask is a seeded sequence that the fused op's backward and
//! a checkpointed block's re-run (which rewinds the stream, [`Lora::rewind_dropout`]) compute
//! again, identical to the forward's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use anymal_util::rng::SplitMix64;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::Result;

/// Rank, scaling and dropout of a LoRA update (the target modules are the model's business).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input during training (PEFT's `lora_dropout`).
    pub dropout: f64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// The trainable pair of one layer.
#[derive(Debug)]
pub struct Lora {
    /// `(r, in)`
    pub a: Var,
    /// `(out, r)`
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    /// Gradients computed inside checkpointed backward passes, not yet collected.
    pending: Mutex<Option<(Tensor, Tensor)>>,
    /// Whether forward passes build a graph to `A` and `B` and apply dropout. Off for
    /// inference, so generation keeps no graph and runs its fused kernels.
    training: AtomicBool,
    /// This adapter's dropout stream (adapters are numbered as created, so each layer drops
    /// different elements, until a trainer places them: [`Lora::seek_dropout`]) and how many
    /// masks it has drawn.
    dropout_stream: AtomicU64,
    dropout_draws: AtomicU64,
}

/// One dropout mask: element `i` of the adapter's `(rows, in)` input survives where the `i`-th
/// value of a SplitMix64 sequence seeded by `seed` is at least `p`, and is then scaled by
/// `1 / (1 - p)` (inverted dropout, as PEFT's `nn.Dropout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutDraw {
    pub p: f64,
    pub seed: u64,
}

impl DropoutDraw {
    /// The `n` multipliers of the mask: `0` or `1 / (1 - p)`.
    pub fn multipliers(&self, n: usize) -> Vec<f32> {
        let mut m = vec![1f32; n];
        self.apply_in_place(&mut m);
        m
    }

    /// `x` times the mask, element `i` of `x`'s row-major order taking multiplier `i`; a
    /// product in `x`'s graph when it has one.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 && x.device().is_cpu() && !x.track_op() {
            // Inside the fused op: one pass over a copy of x, on every core. A step draws a
            // mask for every adapted layer twice (forward and backward), and a separate mask
            // tensor and product cost ~15% of a SmolLM2 LoRA step.
            let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            self.apply_in_place(&mut v);
            return Ok(Tensor::from_vec(v, x.shape(), x.device())?);
        }
        Ok((x * self.mask_like(x)?)?)
    }

    /// The mask as a tensor of `x`'s shape, dtype and device: for a product in a graph, or for
    /// several tensors of one shape through the same mask.
    pub fn mask_like(&self, x: &Tensor) -> Result<Tensor> {
        let mask = Tensor::from_vec(self.multipliers(x.elem_count()), x.shape(), x.device())?;
        Ok(mask.to_dtype(x.dtype())?)
    }

    /// Multiplies element `i` of `v` by multiplier `i`, in chunks on all cores (each chunk
    /// skips the stream ahead to its first element).
    pub fn apply_in_place(&self, v: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        let kept = (1.0 / (1.0 - self.p)) as f32;
        anymal_util::par::fill_pieces([v], [CHUNK], |c, [chunk]| {
            let mut rng = SplitMix64::new(self.seed);
            rng.skip((c * CHUNK) as u64);
            for x in chunk {
                *x = if rng.next_f64() >= self.p {
                    *x * kept
                } else {
                    0.0
                };
            }
        });
    }
}

/// Numbers the adapters of a process in creation order: their dropout streams.
static NEXT_DROPOUT_STREAM: AtomicU64 = AtomicU64::new(0);

impl Lora {
    /// A fresh adapter: `A` Kaiming-uniform from `seed` (bound `1/sqrt(in)`), `B` zero.
    pub fn init(
        cfg: &LoraConfig,
        in_features: usize,
        out_features: usize,
        seed: u64,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        // SplitMix64: cheap, seeded, identical on every machine. The seed is offset by the
        // generator's own increment, which fixes the stream adapters have always been given.
        let mut rng = SplitMix64::new(seed ^ 0x9E37_79B9_7F4A_7C15);
        let a: Vec<f32> = (0..cfg.r * in_features)
            .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (cfg.r, in_features), &Device::Cpu)?;
        let b = Tensor::zeros((out_features, cfg.r), DType::F32, &Device::Cpu)?;
        Self::from_tensors(cfg, &a, &b)
    }

    /// An adapter from stored `A (r, in)` and `B (out, r)`.
    pub fn from_tensors(cfg: &LoraConfig, a: &Tensor, b: &Tensor) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != cfg.r || rb != cfg.r {
            return Err(crate::Error::ShapeMismatch {
                what: "LoRA A / B".into(),
                got: format!("{r} rows / {rb} columns"),
                expected: format!("{} (the rank)", cfg.r),
            });
        }
        Ok(Self {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            pending: Mutex::new(None),
            training: AtomicBool::new(true),
            dropout_stream: AtomicU64::new(NEXT_DROPOUT_STREAM.fetch_add(1, Ordering::Relaxed)),
            dropout_draws: AtomicU64::new(0),
        })
    }

    /// Training (the default): forward passes reach `A` and `B`. Off: they see constants.
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn num_params(&self) -> usize {
        self.a.elem_count() + self.b.elem_count()
    }

    /// The next dropout mask of this adapter while training with dropout; None otherwise.
    pub fn draw_dropout(&self) -> Option<DropoutDraw> {
        if self.dropout == 0.0 || !self.is_training() {
            return None;
        }
        let draw = self.dropout_draws.fetch_add(1, Ordering::Relaxed);
        let stream = self.dropout_stream.load(Ordering::Relaxed);
        let seed = SplitMix64::new(stream.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ draw).next_u64();
        Some(DropoutDraw {
            p: self.dropout,
            seed,
        })
    }

    /// How many dropout masks this adapter has drawn: where its stream stands.
    pub fn dropout_position(&self) -> u64 {
        self.dropout_draws.load(Ordering::Relaxed)
    }

    /// Puts the dropout stream back to `position`, so a re-run forward draws the masks the
    /// first run drew (gradient checkpointing).
    pub fn rewind_dropout(&self, position: u64) {
        self.dropout_draws.store(position, Ordering::Relaxed);
    }

    /// Places the adapter on dropout stream `stream` at `position`: a trainer that does so from
    /// the module's index and the step draws the same masks in a resumed run as in an
    /// uninterrupted one.
    pub fn seek_dropout(&self, stream: u64, position: u64) {
        self.dropout_stream.store(stream, Ordering::Relaxed);
        self.dropout_draws.store(position, Ordering::Relaxed);
    }

    /// The update `scale * dropout(x) A^T B^T` for `x (rows, in)`; dropout only while
    /// training.
    pub fn forward_2d(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.draw_dropout() {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        let (a, b) = if self.is_training() {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        } else {
            (self.a.as_tensor().detach(), self.b.as_tensor().detach())
        };
        let (a, b) = (a.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
        Ok((x.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?)
    }

    /// `scale * B A`, the `(out, in)` change this adapter makes to the weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }

    /// Gradients of `A` and `B` computed inside a checkpointed backward (added up).
    pub fn add_pending_grads(&self, ga: Option<&Tensor>, gb: Option<&Tensor>) -> Result<()> {
        let (Some(ga), Some(gb)) = (ga, gb) else {
            return Ok(());
        };
        let mut p = self.pending.lock().expect("LoRA gradient lock poisoned");
        *p = Some(match p.take() {
            Some((a, b)) => ((a + ga)?, (b + gb)?),
            None => (ga.clone(), gb.clone()),
        });
        Ok(())
    }

    /// This adapter's gradients from one backward pass: what `grads` holds for `A` and `B`
    /// plus what checkpointed blocks computed on the side (which this call takes). None when
    /// the pass did not reach the adapter.
    pub fn grads(&self, grads: &GradStore) -> Result<Option<(Tensor, Tensor)>> {
        let pending = self
            .pending
            .lock()
            .expect("LoRA gradient lock poisoned")
            .take();
        let direct = match (grads.get(self.a.as_tensor()), grads.get(self.b.as_tensor())) {
            (Some(a), Some(b)) => Some((a.clone(), b.clone())),
            _ => None,
        };
        Ok(match (direct, pending) {
            (Some((a, b)), Some((pa, pb))) => Some(((a + pa)?, (b + pb)?)),
            (d, p) => d.or(p),
        })
    }

    /// Drops gradients a checkpointed backward left behind (after a failed step).
    pub fn clear_pending(&self) {
        *self.pending.lock().expect("LoRA gradient lock poisoned") = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask drops a fraction `p` of the elements and scales the rest by `1 / (1 - p)`, so
    /// its mean is 1; successive draws of one adapter, and two adapters, drop different ones.
    #[test]
    fn dropout_masks_drop_p_and_differ_per_draw() {
        let cfg = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.25,
            use_rslora: false,
        };
        let (l1, l2) = (
            Lora::init(&cfg, 8, 8, 1).unwrap(),
            Lora::init(&cfg, 8, 8, 1).unwrap(),
        );
        let n = 200_000;
        let m = l1.draw_dropout().unwrap().multipliers(n);
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.25).abs() < 0.005, "dropped {dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || v == (1.0f64 / 0.75) as f32));
        let mean = m.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        let next = l1.draw_dropout().unwrap().multipliers(n);
        let other = l2.draw_dropout().unwrap().multipliers(n);
        assert_ne!(m, next);
        assert_ne!(next, other);
        l1.rewind_dropout(0);
        assert_eq!(l1.draw_dropout().unwrap().multipliers(n), m);
        l1.set_training(false);
        assert_eq!(l1.draw_dropout(), None);
    }

    /// `A` depends on nothing but the seed: saved runs, resumed runs and the tests that compare
    /// against them rely on the exact stream (values recorded from the original generator).
    #[test]
    fn init_stream_is_fixed() {
        let cfg = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
        };
        let l = Lora::init(&cfg, 576, 32, 7).unwrap();
        let a: Vec<f32> = l.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let bits: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
        assert_eq!(&bits[..3], &[1024499579, 1026106004, 3148787197]);
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        assert_eq!(anymal_util::rng::fnv1a(&bytes), 0xaf3d_81f7_d9bd_0bf8);
        assert_eq!(
            l.b.as_tensor()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}

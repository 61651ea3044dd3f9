//! Training-time versions of the fused inference kernels (RMSNorm, attention softmax, RoPE, the
//! gated activation): candle's fused kernels forward, a hand-written backward. The gated
//! activation has no kernel in candle; on f32 CPU tensors both of its directions run the
//! one-pass kernels of [`crate::gated_cpu`].
//!
//! Written as chains of elementwise ops, autograd keeps every intermediate for the backward
//! pass: an RMSNorm kept six `(t, d)` tensors, a softmax four `(h, t, t)` ones. Each op here
//! keeps only its input (or output), so an alignment step without gradient checkpointing holds
//! a fraction of the activations, and skips the passes over memory that made them.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};

use anymal_quant::custom_op::{
    contiguous_f32, contiguous_off_cpu, cpu_tensor, cuda_tensor, into_cpu_storage,
    into_cuda_storage, with_cpu_f32,
};

use crate::gated_cpu::{self, Activation};

/// Runs `f` on a graph-free view of a custom op's CPU input and returns its storage.
fn on_cpu(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    into_cpu_storage(f(&cpu_tensor(storage, layout)?)?)
}

fn on_cuda(
    storage: &candle_core::CudaStorage,
    layout: &Layout,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    into_cuda_storage(f(&cuda_tensor(storage, layout)?)?)
}

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension, `w` frozen. Keeps only `x`.
pub fn rms_norm(xs: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    xs.contiguous()?.apply_op1(RmsNormOp {
        w: w.to_dtype(xs.dtype())?,
        eps,
    })
}

struct RmsNormOp {
    w: Tensor,
    eps: f32,
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        on_cpu(s, l, |x| candle_nn::ops::rms_norm(x, &self.w, self.eps))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        on_cuda(s, l, |x| candle_nn::ops::rms_norm(x, &self.w, self.eps))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // y = w x r, r = (mean x^2 + eps)^-1/2:
        // dx = r (g w - x r^2 mean(g w x)), accumulated in f32.
        let dtype = x.dtype();
        let x = x.detach().to_dtype(DType::F32)?;
        let gw = g
            .detach()
            .to_dtype(DType::F32)?
            .broadcast_mul(&self.w.to_dtype(DType::F32)?)?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?
            .sqrt()?
            .recip()?;
        let m = (&gw * &x)?.mean_keepdim(D::Minus1)?;
        let dx = (gw - x.broadcast_mul(&(r.sqr()? * m)?)?)?.broadcast_mul(&r)?;
        Ok(Some(dx.to_dtype(dtype)?))
    }
}

/// `softmax(scale * s + mask)` over the last dimension of attention scores `s (b, kv, n * t,
/// T)`, with `mask (b, 1, 1, t, T)` broadcast over the kv heads and the `n` query heads of each.
/// Keeps its input and output only (the scaled and masked copies are transient).
pub fn scaled_masked_softmax(
    s: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    n: usize,
) -> candle_core::Result<Tensor> {
    s.contiguous()?.apply_op1(ScaledMaskedSoftmax {
        scale,
        mask: mask.cloned(),
        n,
    })
}

struct ScaledMaskedSoftmax {
    scale: f64,
    mask: Option<Tensor>,
    n: usize,
}

impl ScaledMaskedSoftmax {
    fn fwd(&self, s: &Tensor) -> candle_core::Result<Tensor> {
        let x = (s * self.scale)?;
        let x = match &self.mask {
            Some(m) => {
                let (b, kv, nt, tt) = x.dims4()?;
                x.reshape((b, kv, self.n, nt / self.n, tt))?
                    .broadcast_add(&m.to_dtype(x.dtype())?)?
                    .reshape((b, kv, nt, tt))?
            }
            None => x,
        };
        candle_nn::ops::softmax_last_dim(&x)
    }
}

impl CustomOp1 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "scaled-masked-softmax-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        on_cpu(s, l, |x| self.fwd(x))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        on_cuda(s, l, |x| self.fwd(x))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The mask is a constant; dx = scale * y (g - sum(g y)).
        let y = y.detach();
        let g = g.detach();
        let s = (&g * &y)?.sum_keepdim(D::Minus1)?;
        Ok(Some(((y * g.broadcast_sub(&s)?)? * self.scale)?))
    }
}

/// `act(gate) * up`, the gated MLP's middle. Keeps its two inputs (which the projections that
/// made them do not need), not the activation's output. Also the inference path's op: outside
/// training it records nothing.
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Gated(act))
}

struct Gated(Activation);

impl Gated {
    fn act(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.0 {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::GeluTanh => x.gelu(),
        }
    }

    /// d act / dx, in f32.
    fn act_grad(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.0 {
            // silu'(x) = s (1 + x (1 - s)), s = sigmoid(x)
            Activation::Silu => {
                let s = candle_nn::ops::sigmoid(x)?;
                s.clone() * ((x * (1.0 - &s)?)? + 1.0)?
            }
            // gelu(x) = x/2 (1 + tanh u), u = c (x + 0.044715 x^3):
            // gelu'(x) = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2)
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let x2 = x.sqr()?;
                let th = ((x * c)? * ((&x2 * 0.044715)? + 1.0)?)?.tanh()?;
                let du = ((&x2 * (3.0 * 0.044715 * c))? + c)?;
                let a = ((&th + 1.0)? * 0.5)?;
                let b = ((x * 0.5)? * (1.0 - th.sqr()?)?)?;
                a + (b * du)?
            }
        }
    }

    fn fwd(&self, g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
        self.act(g)? * u
    }

    /// Both gradients through [`gated_cpu::backward`], for f32 CPU tensors; `None` for others.
    fn cpu_bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !(f32_cpu(gate) && f32_cpu(up) && f32_cpu(grad)) {
            return Ok(None);
        }
        let grad = grad.contiguous()?;
        let n = gate.elem_count();
        let (mut d_gate, mut d_up) = (vec![0f32; n], vec![0f32; n]);
        let done = with_cpu_f32(gate, |x| {
            with_cpu_f32(up, |u| {
                with_cpu_f32(&grad, |g| {
                    gated_cpu::backward(self.0, x, u, g, &mut d_gate, &mut d_up)
                })
            })
        });
        if done.flatten().flatten().is_none() {
            return Ok(None);
        }
        let shape = gate.shape();
        Ok(Some((
            Tensor::from_vec(d_gate, shape, gate.device())?,
            Tensor::from_vec(d_up, shape, gate.device())?,
        )))
    }
}

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated-act-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if let (Some(g), Some(u)) = (contiguous_f32(s1, l1), contiguous_f32(s2, l2)) {
            if l1.shape() == l2.shape() {
                let mut out = vec![0f32; g.len()];
                gated_cpu::forward(self.0, g, u, &mut out);
                return Ok((CpuStorage::F32(out), l1.shape().clone()));
            }
        }
        into_cpu_storage(self.fwd(&cpu_tensor(s1, l1)?, &cpu_tensor(s2, l2)?)?)
    }

    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        into_cuda_storage(self.fwd(&cuda_tensor(s1, l1)?, &cuda_tensor(s2, l2)?)?)
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if let Some((d_gate, d_up)) = self.cpu_bwd(gate, up, g)? {
            return Ok((Some(d_gate), Some(d_up)));
        }
        let dtype = gate.dtype();
        let x = gate.detach().to_dtype(DType::F32)?;
        let u = up.detach().to_dtype(DType::F32)?;
        let g = g.detach().to_dtype(DType::F32)?;
        let d_gate = ((&g * &u)? * self.act_grad(&x)?)?.to_dtype(dtype)?;
        let d_up = (&g * self.act(&x)?)?.to_dtype(dtype)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// Rotary embedding of `(b, h, t, d)` with tables `(t, d / 2)`; interleaved (GPT-J) or halves
/// (NeoX) layout. Keeps nothing: the backward is the inverse rotation of the gradient.
pub fn rope(
    xs: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> candle_core::Result<Tensor> {
    contiguous_off_cpu(xs)?.apply_op1(RopeOp {
        cos: cos.clone(),
        sin: sin.clone(),
        interleaved,
    })
}

struct RopeOp {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl RopeOp {
    fn rotate(&self, x: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(x, &self.cos, sin)
        } else {
            candle_nn::rotary_emb::rope(x, &self.cos, sin)
        }
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        on_cpu(s, l, |x| self.rotate(x, &self.sin))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        on_cuda(s, l, |x| self.rotate(x, &self.sin))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // Each pair is rotated by an orthogonal 2x2 matrix: its transpose, the rotation by
        // -angle (cos, -sin), maps the gradient back.
        Ok(Some(
            self.rotate(&g.detach().contiguous()?, &self.sin.neg()?)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anymal_util::testing::max_abs_diff;
    use candle_core::{Device, Var};

    /// Value and gradient (for a random upstream gradient) of `fused` against `slow`, which is
    /// the same function through candle's autograd.
    fn check(shape: &[usize], fused: impl Fn(&Tensor) -> Tensor, slow: impl Fn(&Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = f(x.as_tensor());
            let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(x.as_tensor()).unwrap().clone())
        };
        let (yf, gf) = run(&fused);
        let (ys, gs) = run(&slow);
        assert!(
            max_abs_diff(&yf, &ys) < 1e-5,
            "values differ by {}",
            max_abs_diff(&yf, &ys)
        );
        assert!(
            max_abs_diff(&gf, &gs) < 1e-4,
            "gradients differ by {}",
            max_abs_diff(&gf, &gs)
        );
    }

    #[test]
    fn rms_norm_matches_autograd() {
        let w = Tensor::randn(1f32, 0.2, 48, &Device::Cpu).unwrap();
        check(
            &[2, 5, 48],
            |x| rms_norm(x, &w, 1e-6).unwrap(),
            |x| {
                let r = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6).unwrap();
                x.broadcast_div(&r.sqrt().unwrap())
                    .unwrap()
                    .broadcast_mul(&w)
                    .unwrap()
            },
        );
    }

    #[test]
    fn scaled_masked_softmax_matches_autograd() {
        let (b, kv, n, t, tt) = (2, 2, 3, 4, 5);
        let m = Tensor::randn(0f32, 3.0, (b, 1, 1, t, tt), &Device::Cpu).unwrap();
        check(
            &[b, kv, n * t, tt],
            |x| scaled_masked_softmax(x, 0.3, Some(&m), n).unwrap(),
            |x| {
                let s = (x * 0.3).unwrap().reshape((b, kv, n, t, tt)).unwrap();
                let s = s
                    .broadcast_add(&m)
                    .unwrap()
                    .reshape((b, kv, n * t, tt))
                    .unwrap();
                candle_nn::ops::softmax(&s, D::Minus1).unwrap()
            },
        );
    }

    /// Both inputs' gradients, for both activations.
    #[test]
    fn gated_matches_autograd() {
        let dev = Device::Cpu;
        let shape = (3, 5, 8);
        let u0 = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let g0 = (Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * 2.0).unwrap();
        let up = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let run = |fused: bool| {
                let (g, u) = (
                    Var::from_tensor(&g0).unwrap(),
                    Var::from_tensor(&u0).unwrap(),
                );
                let y = if fused {
                    gated(g.as_tensor(), u.as_tensor(), act).unwrap()
                } else {
                    let a = match act {
                        Activation::Silu => candle_nn::ops::silu(g.as_tensor()).unwrap(),
                        Activation::GeluTanh => g.as_tensor().gelu().unwrap(),
                    };
                    (a * u.as_tensor()).unwrap()
                };
                let gr = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let dg = gr.get(g.as_tensor()).unwrap().clone();
                let du = gr.get(u.as_tensor()).unwrap().clone();
                (y, dg, du)
            };
            let (yf, gf, uf) = run(true);
            let (ys, gs, us) = run(false);
            assert!(max_abs_diff(&yf, &ys) < 1e-5, "{act:?} values");
            assert!(
                max_abs_diff(&gf, &gs) < 1e-4,
                "{act:?} gate grad {}",
                max_abs_diff(&gf, &gs)
            );
            assert!(max_abs_diff(&uf, &us) < 1e-5, "{act:?} up grad");
        }
    }

    #[test]
    fn rope_matches_autograd() {
        let (t, d) = (6, 16);
        let ang = Tensor::randn(0f32, 2.0, (t, d / 2), &Device::Cpu).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        for inter in [false, true] {
            check(
                &[2, 3, t, d],
                |x| rope(x, &cos, &sin, inter).unwrap(),
                |x| {
                    if inter {
                        candle_nn::rotary_emb::rope_i_slow(x, &cos, &sin).unwrap()
                    } else {
                        candle_nn::rotary_emb::rope_slow(x, &cos, &sin).unwrap()
                    }
                },
            );
        }
    }
}

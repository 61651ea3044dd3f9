//! Attention over whole sequences (training, and forward passes without a KV cache) on f32 CPU
//! buffers: rotary embedding, scaled masked softmax and the value sum of every head as one
//! differentiable op, forward and backward.
//!
//! Written by hand because, through candle's ops, one layer's attention was ~17 graph nodes
//! (reshapes, transposes, two RoPEs, a copy, two matmuls, the softmax) and candle's backward
//! zero-fills and adds one gradient buffer per edge of them; its f32 matmuls also run on
//! rayon's threads, which then compete for the cores with the barrier pool every other op runs
//! on. Here the graph holds one node with three inputs, each (sequence, KV head) is one task on
//! the barrier pool, and its products are the gemm crate's kernels on one thread. Nothing is
//! kept for the backward but the inputs (the graph keeps them anyway): it recomputes the
//! rotations and probabilities, a few percent of the work, instead of holding `(b, h, t, t)`.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use anymal_quant::custom_op::{contiguous_f32, cpu_tensor, with_cpu_f32};
use anymal_util::matmul::{matmul, Operand};

use crate::decode_attention::{rotate, rotate_back, DecodeRow, Heads};
use crate::rope::RopeTables;
use crate::vec_math;

/// `softmax(scale q_rot k_rot^T + mask) v` for `q (b, t, heads.q * dim)` and
/// `k, v (b, t, heads.kv * dim)` (each row the projections' output, q and k normed where the
/// model norms them, not yet rotated), with the rotary tables of positions `0..t` and an
/// additive mask `(b, 1, t, t)`. Returns `(b, t, heads.q * dim)`, the output projection's input.
/// For f32 CPU tensors only (the caller checks).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads,
    rope: &RopeTables,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    // The decoder builds one mask (f32, contiguous) for all its layers: each layer's op holds
    // that tensor, not a copy, until its backward.
    let mask = match mask {
        Some(m) => Some(
            m.to_device(&candle_core::Device::Cpu)?
                .to_dtype(candle_core::DType::F32)?
                .contiguous()?,
        ),
        None => None,
    };
    if let Some(m) = &mask {
        if m.elem_count() != b * t * t {
            candle_core::bail!(
                "attention: a mask of {} values for ({b}, 1, {t}, {t})",
                m.elem_count()
            )
        }
    }
    // (`RopeTables` builds its cos and sin tables over the same positions.)
    if rope.cos_values.len() < t * heads.dim / 2 {
        candle_core::bail!("attention: rotary tables for fewer than {t} positions")
    }
    let op = SequenceAttention {
        heads,
        b,
        t,
        cos: rope.cos_values.clone(),
        sin: rope.sin_values.clone(),
        interleaved: rope.interleaved,
        mask,
    };
    q.apply_op3(k, v, op)
}

struct SequenceAttention {
    heads: Heads,
    b: usize,
    t: usize,
    /// Rotary tables `(positions, dim / 2)` from position 0, at least `t` of them; shared with
    /// the decoder's other layers.
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
    interleaved: bool,
    /// Additive `(b, 1, t, t)`, f32, contiguous, on the CPU; shared with the other layers.
    mask: Option<Tensor>,
}

/// One task's operands, rows of `dim`: the group's `n` query heads `(n, t, dim)` and its key
/// and value head `(t, dim)`, rotated where they are rotated.
struct Group {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Probabilities `(n * t, t)`.
    p: Vec<f32>,
}

impl SequenceAttention {
    fn n(&self) -> usize {
        self.heads.q / self.heads.kv
    }

    /// Position `s`'s angles, for rotating one head's `dim` values.
    fn angles(&self, s: usize) -> DecodeRow<'_> {
        let half = self.heads.dim / 2;
        let at = s * half..(s + 1) * half;
        DecodeRow {
            cos: &self.cos[at.clone()],
            sin: &self.sin[at],
            interleaved: self.interleaved,
            window: None,
        }
    }

    /// Runs `f` on the mask's values, in place in the decoder's tensor.
    fn with_mask<R>(&self, f: impl FnOnce(Option<&[f32]>) -> R) -> candle_core::Result<R> {
        match &self.mask {
            None => Ok(f(None)),
            Some(m) => with_cpu_f32(m, |m| f(Some(m))).ok_or_else(|| {
                candle_core::Error::Msg(
                    "attention: the mask is not contiguous f32 on the CPU".into(),
                )
            }),
        }
    }

    /// Gathers and rotates task `(bi, g)`'s heads out of the `(b, t, heads * dim)` inputs, and
    /// computes its probabilities under the `(b, t, t)` mask.
    fn group(&self, bi: usize, g: usize, [q, k, v]: [&[f32]; 3], mask: Option<&[f32]>) -> Group {
        let (t, d, n) = (self.t, self.heads.dim, self.n());
        let (qw, kw) = (self.heads.q * d, self.heads.kv * d);
        let mut gq = vec![0f32; n * t * d];
        let mut gk = vec![0f32; t * d];
        let mut gv = vec![0f32; t * d];
        for s in 0..t {
            let row = (bi * t + s) * kw + g * d;
            gk[s * d..(s + 1) * d].copy_from_slice(&k[row..row + d]);
            rotate(&mut gk[s * d..(s + 1) * d], &self.angles(s));
            gv[s * d..(s + 1) * d].copy_from_slice(&v[row..row + d]);
            for i in 0..n {
                let src = (bi * t + s) * qw + (g * n + i) * d;
                let dst = &mut gq[(i * t + s) * d..(i * t + s + 1) * d];
                dst.copy_from_slice(&q[src..src + d]);
                rotate(dst, &self.angles(s));
            }
        }
        // Scores (n t, t) = q k^T, then scale, mask and softmax row by row.
        let mut p = vec![0f32; n * t * t];
        matmul(
            &mut p,
            (n * t, t, d),
            Operand::rows(&gq, d),
            Operand::transposed(&gk, d),
            1.0,
            false,
        );
        let mask = mask.map(|m| &m[bi * t * t..(bi + 1) * t * t]);
        let scale = self.heads.scale;
        for (r, row) in p.chunks_exact_mut(t).enumerate() {
            let s = r % t;
            vec_math::wide(|| {
                for x in row.iter_mut() {
                    *x *= scale;
                }
                if let Some(m) = mask {
                    for (x, m) in row.iter_mut().zip(&m[s * t..(s + 1) * t]) {
                        *x += m;
                    }
                }
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = vec_math::exp(*x - max);
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
            });
        }
        Group {
            q: gq,
            k: gk,
            v: gv,
            p,
        }
    }

    /// One per (sequence, KV head).
    fn tasks(&self) -> usize {
        self.b * self.heads.kv
    }

    fn forward(&self, qkv: [&[f32]; 3], mask: Option<&[f32]>) -> Vec<f32> {
        let (t, d, n) = (self.t, self.heads.dim, self.n());
        // Task (bi, g) writes its heads as `(n, t, d)` into its own piece; the output's
        // `(b, t, heads * d)` rows interleave the groups, so a transpose follows.
        let mut grouped = vec![0f32; self.b * self.heads.q * t * d];
        anymal_util::par::fill_pieces([&mut grouped], [n * t * d], |task, [out]| {
            let (bi, g) = (task / self.heads.kv, task % self.heads.kv);
            let grp = self.group(bi, g, qkv, mask);
            matmul(
                out,
                (n * t, d, t),
                Operand::rows(&grp.p, t),
                Operand::rows(&grp.v, d),
                1.0,
                false,
            );
        });
        self.ungroup(&grouped, self.heads.q, n)
    }

    /// `(b, kv, n, t, d)` to `(b, t, kv * n * d)`.
    fn ungroup(&self, grouped: &[f32], heads: usize, n: usize) -> Vec<f32> {
        let (t, d) = (self.t, self.heads.dim);
        let mut out = vec![0f32; grouped.len()];
        for bi in 0..self.b {
            for j in 0..heads {
                let (g, i) = (j / n, j % n);
                for s in 0..t {
                    let src = (((bi * self.heads.kv + g) * n + i) * t + s) * d;
                    let dst = (bi * t + s) * heads * d + j * d;
                    out[dst..dst + d].copy_from_slice(&grouped[src..src + d]);
                }
            }
        }
        out
    }

    /// Gradients for `q`, `k` and `v` from the output's gradient `dout`.
    fn backward(&self, qkv: [&[f32]; 3], dout: &[f32], mask: Option<&[f32]>) -> [Vec<f32>; 3] {
        let (t, d, n) = (self.t, self.heads.dim, self.n());
        let qw = self.heads.q * d;
        let tasks = self.tasks();
        let mut dq = vec![0f32; tasks * n * t * d];
        let mut dk = vec![0f32; tasks * t * d];
        let mut dv = vec![0f32; tasks * t * d];
        anymal_util::par::fill_pieces(
            [&mut dq, &mut dk, &mut dv],
            [n * t * d, t * d, t * d],
            |task, [dq, dk, dv]| {
                let (bi, g) = (task / self.heads.kv, task % self.heads.kv);
                let grp = self.group(bi, g, qkv, mask);
                // The output gradient of the group's heads, (n t, d).
                let mut dout_g = vec![0f32; n * t * d];
                for i in 0..n {
                    for s in 0..t {
                        let src = (bi * t + s) * qw + (g * n + i) * d;
                        dout_g[(i * t + s) * d..(i * t + s + 1) * d]
                            .copy_from_slice(&dout[src..src + d]);
                    }
                }
                // dv = p^T dout; dp = dout v^T.
                matmul(
                    dv,
                    (t, d, n * t),
                    Operand::transposed(&grp.p, t),
                    Operand::rows(&dout_g, d),
                    1.0,
                    false,
                );
                let mut ds = vec![0f32; n * t * t];
                matmul(
                    &mut ds,
                    (n * t, t, d),
                    Operand::rows(&dout_g, d),
                    Operand::transposed(&grp.v, d),
                    1.0,
                    false,
                );
                // Through the softmax and the scale: ds = scale p (dp - sum(dp p)).
                let scale = self.heads.scale;
                for (dsr, pr) in ds.chunks_exact_mut(t).zip(grp.p.chunks_exact(t)) {
                    vec_math::wide(|| {
                        let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                        for (x, p) in dsr.iter_mut().zip(pr) {
                            *x = scale * p * (*x - dot);
                        }
                    });
                }
                // dq = ds k; dk = ds^T q (summed over the group's heads).
                matmul(
                    dq,
                    (n * t, d, t),
                    Operand::rows(&ds, t),
                    Operand::rows(&grp.k, d),
                    1.0,
                    false,
                );
                matmul(
                    dk,
                    (t, d, n * t),
                    Operand::transposed(&ds, t),
                    Operand::rows(&grp.q, d),
                    1.0,
                    false,
                );
                // Back through the rotations.
                for (r, x) in dq.chunks_exact_mut(d).enumerate() {
                    rotate_back(x, &self.angles(r % t));
                }
                for (s, x) in dk.chunks_exact_mut(d).enumerate() {
                    rotate_back(x, &self.angles(s));
                }
            },
        );
        [
            self.ungroup(&dq, self.heads.q, n),
            self.ungroup(&dk, self.heads.kv, 1),
            self.ungroup(&dv, self.heads.kv, 1),
        ]
    }

    fn shape(&self, heads: usize) -> Shape {
        Shape::from((self.b, self.t, heads * self.heads.dim))
    }
}

/// The f32 elements of an op input: borrowed where contiguous, gathered where strided.
fn input<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<Cow<'a, [f32]>> {
    if let Some(v) = contiguous_f32(s, l) {
        return Ok(Cow::Borrowed(v));
    }
    match s {
        CpuStorage::F32(_) => Ok(Cow::Owned(
            cpu_tensor(s, l)?.flatten_all()?.to_vec1::<f32>()?,
        )),
        _ => candle_core::bail!("attention: f32 inputs only, got {:?}", s.dtype()),
    }
}

impl CustomOp3 for SequenceAttention {
    fn name(&self) -> &'static str {
        "sequence-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qw, kw) = (
            self.heads.q * self.heads.dim,
            self.heads.kv * self.heads.dim,
        );
        for (l, w, what) in [(l1, qw, "q"), (l2, kw, "k"), (l3, kw, "v")] {
            if l.shape().dims() != [self.b, self.t, w] {
                candle_core::bail!(
                    "attention: {what} of shape {:?}, expected ({}, {}, {w})",
                    l.shape(),
                    self.b,
                    self.t
                )
            }
        }
        let (q, k, v) = (input(s1, l1)?, input(s2, l2)?, input(s3, l3)?);
        let out = self.with_mask(|mask| self.forward([&q, &k, &v], mask))?;
        Ok((CpuStorage::F32(out), self.shape(self.heads.q)))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, grad) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            grad.contiguous()?,
        );
        let grads = with_cpu_f32(&q, |q| {
            with_cpu_f32(&k, |k| {
                with_cpu_f32(&v, |v| {
                    with_cpu_f32(&grad, |g| {
                        self.with_mask(|m| self.backward([q, k, v], g, m))
                    })
                })
            })
        });
        let Some(Some(Some(Some(grads)))) = grads else {
            candle_core::bail!("attention: backward of f32 CPU tensors only")
        };
        let [dq, dk, dv] = grads?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, self.shape(self.heads.q), dev)?),
            Some(Tensor::from_vec(dk, self.shape(self.heads.kv), dev)?),
            Some(Tensor::from_vec(dv, self.shape(self.heads.kv), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anymal_util::testing::max_abs_diff;
    use candle_core::{DType, Device, Var, D};

    /// The same attention through candle's ops and autograd: rotations, heads repeated for
    /// each KV head's group, masked softmax, value sum.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: Heads,
        rope: &RopeTables,
        mask: &Tensor,
    ) -> Tensor {
        let (b, t, _) = q.dims3().unwrap();
        let (h, kv, d) = (heads.q, heads.kv, heads.dim);
        let split = |x: &Tensor, n: usize| {
            let x = x
                .reshape((b, t, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            if rope.interleaved {
                candle_nn::rotary_emb::rope_i_slow(&x, &rope.cos, &rope.sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope_slow(&x, &rope.cos, &rope.sin).unwrap()
            }
        };
        let repeat = |x: Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, kv, h / kv, t, d))
                .unwrap()
                .reshape((b, h, t, d))
                .unwrap()
        };
        let q = split(q, h);
        let k = repeat(split(k, kv));
        let v = repeat(v.reshape((b, t, kv, d)).unwrap().transpose(1, 2).unwrap());
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * heads.scale as f64)
            .unwrap()
            .broadcast_add(mask)
            .unwrap();
        let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        p.matmul(&v.contiguous().unwrap())
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, h * d))
            .unwrap()
    }

    /// Values and the three input gradients against [`reference`]: grouped and plain heads,
    /// both rotary layouts, a causal mask with one sequence left-padded (its first row fully
    /// masked), a length that fills no SIMD register evenly.
    #[test]
    fn matches_candle_autograd() {
        let dev = Device::Cpu;
        for (b, t, h, kv, d, interleaved) in [
            (2, 37, 4, 2, 16, false),
            (2, 37, 4, 2, 16, true),
            (1, 9, 3, 3, 8, false),
            (2, 1, 2, 1, 8, false),
        ] {
            let heads = Heads {
                q: h,
                kv,
                dim: d,
                scale: 1.0 / (d as f32).sqrt(),
            };
            let rope = RopeTables::new(d, 10_000.0, 1.0, None, 0, t, interleaved, DType::F32, &dev)
                .unwrap();
            let attention_mask = Tensor::from_vec(
                (0..b * t)
                    .map(|i| u32::from(!(i / t == 1 && i % t < 3)))
                    .collect::<Vec<_>>(),
                (b, t),
                &dev,
            )
            .unwrap();
            let mask = crate::decoder::build_mask(b, t, 0, None, Some(&attention_mask), &dev)
                .unwrap()
                .unwrap_or_else(|| Tensor::zeros((b, 1, t, t), DType::F32, &dev).unwrap());
            let rand = |w: usize| Tensor::randn(0f32, 1.0, (b, t, w), &dev).unwrap();
            let (q0, k0, v0, up) = (rand(h * d), rand(kv * d), rand(kv * d), rand(h * d));
            let run = |fused: bool| {
                let (q, k, v) = (
                    Var::from_tensor(&q0).unwrap(),
                    Var::from_tensor(&k0).unwrap(),
                    Var::from_tensor(&v0).unwrap(),
                );
                let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
                let out = if fused {
                    attention(q, k, v, heads, &rope, Some(&mask)).unwrap()
                } else {
                    reference(q, k, v, heads, &rope, &mask)
                };
                let g = (&out * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let grad = |x: &Tensor| g.get(x).unwrap().clone();
                (out.clone(), [grad(q), grad(k), grad(v)])
            };
            let (out, grads) = run(true);
            let (want, want_grads) = run(false);
            let case = format!("b {b} t {t} heads {h}/{kv} d {d} interleaved {interleaved}");
            assert!(
                max_abs_diff(&out, &want) < 1e-5,
                "{case}: values differ by {}",
                max_abs_diff(&out, &want)
            );
            for (name, (g, w)) in ["q", "k", "v"].iter().zip(grads.iter().zip(&want_grads)) {
                let diff = max_abs_diff(g, w);
                assert!(diff < 1e-4, "{case}: d{name} differs by {diff}");
            }
        }
    }
}

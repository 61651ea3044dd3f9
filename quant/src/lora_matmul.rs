//! The frozen quantized product and a LoRA update as one op, for training:
//! `y = x W^T + scale * (dropout(x) A^T) B^T`.
//!
//! Written as separate candle ops, the update keeps three `(rows, out)` tensors per adapted
//! layer alive in the graph until backward (`(x A^T) B^T`, its scaled copy and the sum with
//! the frozen product), on top of the product itself: with all seven linear layers of every
//! block adapted, LoRA training held several times the activations of alignment. As one op
//! only its output is kept; backward recomputes the small `(rows, r)` product `x A^T` and
//! returns the gradients of `x`, `A` and `B` together. Dropout's mask is recomputed from its
//! seed there too ([`DropoutDraw`]), so no mask, nor the masked input, is kept either.
//!
//! On f32 CPU operands the update's products run in place over pieces of rows on the barrier
//! pool ([`anymal_util::par`], [`anymal_util::matmul`]): added straight into the frozen
//! product's output, with no copy of it or of `x`, and without candle's matmul, whose rayon
//! threads would compete with the barrier pool for the cores.

use std::borrow::Cow;

use anymal_util::matmul::{matmul, Operand};
use anymal_util::par::fill_pieces;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use crate::custom_op::{contiguous_f32, cpu_tensor, into_cpu_storage, with_cpu_f32};
use crate::DropoutDraw;

/// Rows per task of the CPU path's products.
const ROWS_PER_TASK: usize = 64;

/// The dimensions of one adapted layer: rank, input and output features.
#[derive(Clone, Copy)]
struct Dims {
    r: usize,
    inp: usize,
    out: usize,
}

/// `x (.., in)`, `A (r, in)`, `B (out, r)` -> `(.., out)`, around `frozen`, the frozen layer's
/// own op (its forward and input gradient; `QLinear`'s quantized matmul).
pub(crate) struct QLoraMatMul<F: CustomOp1> {
    pub frozen: F,
    pub scale: f64,
    /// This forward's mask on the adapter's input, if any.
    pub dropout: Option<DropoutDraw>,
}

impl<F: CustomOp1> QLoraMatMul<F> {
    /// The adapter's input, `x (rows, in)` through the dropout mask.
    fn dropped(&self, x: Tensor) -> candle_core::Result<Tensor> {
        match &self.dropout {
            Some(d) => d.apply(&x).map_err(Into::into),
            None => Ok(x),
        }
    }
}

impl<F: CustomOp1> QLoraMatMul<F> {
    /// `x` through this forward's dropout mask: a masked copy, or `x` itself.
    fn dropped_rows<'a>(&self, x: &'a [f32]) -> Cow<'a, [f32]> {
        match &self.dropout {
            Some(d) => {
                let mut v = x.to_vec();
                d.apply_in_place(&mut v);
                Cow::Owned(v)
            }
            None => Cow::Borrowed(x),
        }
    }

    /// `y += scale * (dropout(x) A^T) B^T` over pieces of rows in parallel.
    fn add_update(&self, y: &mut [f32], x: &[f32], a: &[f32], b: &[f32], dims: Dims) {
        let Dims { r, inp, out } = dims;
        let x = self.dropped_rows(x);
        let scale = self.scale as f32;
        fill_pieces([y], [ROWS_PER_TASK * out], |i, [y]| {
            let rows = y.len() / out;
            let x = &x[i * ROWS_PER_TASK * inp..][..rows * inp];
            let mut xa = vec![0f32; rows * r];
            let (x, a) = (Operand::rows(x, inp), Operand::transposed(a, inp));
            matmul(&mut xa, (rows, r, inp), x, a, 1.0, false);
            let (xa, b) = (Operand::rows(&xa, r), Operand::transposed(b, r));
            matmul(y, (rows, out, r), xa, b, scale, true);
        });
    }

    /// The update's gradients for `x` (to add to the frozen product's), `A` and `B`, from the
    /// output's gradient `g`; row pieces, and pieces of `A`'s columns and `B`'s rows, in
    /// parallel.
    fn update_grads(
        &self,
        x: &[f32],
        a: &[f32],
        b: &[f32],
        g: &[f32],
        dims: Dims,
    ) -> [Vec<f32>; 3] {
        let Dims { r, inp, out } = dims;
        let rows = g.len() / out;
        let x = self.dropped_rows(x);
        let scale = self.scale as f32;
        // Per row: gb = scale g B (the gradient at the bottleneck), gx = gb A through the
        // mask, xa = dropout(x) A^T.
        let (mut gb, mut gx, mut xa) = (
            vec![0f32; rows * r],
            vec![0f32; rows * inp],
            vec![0f32; rows * r],
        );
        let piece = [ROWS_PER_TASK * r, ROWS_PER_TASK * inp, ROWS_PER_TASK * r];
        fill_pieces([&mut gb, &mut gx, &mut xa], piece, |i, [gb, gx, xa]| {
            let n = gb.len() / r;
            let g = Operand::rows(&g[i * ROWS_PER_TASK * out..][..n * out], out);
            matmul(gb, (n, r, out), g, Operand::rows(b, r), scale, false);
            matmul(
                gx,
                (n, inp, r),
                Operand::rows(gb, r),
                Operand::rows(a, inp),
                1.0,
                false,
            );
            let xp = Operand::rows(&x[i * ROWS_PER_TASK * inp..][..n * inp], inp);
            matmul(xa, (n, r, inp), xp, Operand::transposed(a, inp), 1.0, false);
        });
        if let Some(d) = &self.dropout {
            d.apply_in_place(&mut gx);
        }
        // dA^T = dropout(x)^T gb by pieces of A's columns; dB = scale g^T xa by pieces of B's rows.
        let (mut ga_t, mut gb_w) = (vec![0f32; inp * r], vec![0f32; out * r]);
        fill_pieces([&mut ga_t], [ROWS_PER_TASK * r], |i, [ga_t]| {
            let n = ga_t.len() / r;
            let xt = Operand {
                values: &x[i * ROWS_PER_TASK..],
                row_stride: 1,
                col_stride: inp,
            };
            matmul(ga_t, (n, r, rows), xt, Operand::rows(&gb, r), 1.0, false);
        });
        fill_pieces([&mut gb_w], [ROWS_PER_TASK * r], |i, [gb_w]| {
            let n = gb_w.len() / r;
            let gt = Operand {
                values: &g[i * ROWS_PER_TASK..],
                row_stride: 1,
                col_stride: out,
            };
            matmul(gb_w, (n, r, rows), gt, Operand::rows(&xa, r), scale, false);
        });
        let mut ga = vec![0f32; r * inp];
        for (j, row) in ga_t.chunks_exact(r).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                ga[k * inp + j] = v;
            }
        }
        [gx, ga, gb_w]
    }
}

/// Rank, input and output features from `A (r, in)` and `B (out, r)`, checked against the
/// element counts of `x (rows, in)` and of `y` or its gradient `(rows, out)`.
fn adapter_dims(a: &Layout, b: &Layout, x_len: usize, y_len: usize) -> candle_core::Result<Dims> {
    let ((r, inp), (out, rb)) = (a.shape().dims2()?, b.shape().dims2()?);
    let rows = x_len / inp.max(1);
    if rb != r || rows * inp != x_len || rows * out != y_len {
        candle_core::bail!(
            "qlinear-lora: A ({r}, {inp}), B ({out}, {rb}) for {x_len} input and {y_len} output values"
        )
    }
    Ok(Dims { r, inp, out })
}

/// `t` as `(rows, last)`.
fn rows_of(t: &Tensor) -> candle_core::Result<Tensor> {
    let last = t.dims().last().copied().unwrap_or(1);
    t.reshape(((), last))
}

impl<F: CustomOp1> CustomOp3 for QLoraMatMul<F> {
    fn name(&self) -> &'static str {
        "qlinear-lora"
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
        let (frozen, shape) = self.frozen.cpu_fwd(s1, l1)?;
        let inputs = (
            contiguous_f32(s1, l1),
            contiguous_f32(s2, l2),
            contiguous_f32(s3, l3),
        );
        let frozen = match (frozen, inputs) {
            (CpuStorage::F32(mut y), (Some(x), Some(a), Some(b))) => {
                let dims = adapter_dims(l2, l3, x.len(), y.len())?;
                self.add_update(&mut y, x, a, b, dims);
                return Ok((CpuStorage::F32(y), shape));
            }
            (frozen, _) => frozen,
        };
        let y = cpu_tensor(&frozen, &Layout::contiguous(shape.clone()))?;
        let x = self.dropped(rows_of(&cpu_tensor(s1, l1)?)?)?;
        let (a, b) = (cpu_tensor(s2, l2)?, cpu_tensor(s3, l3)?);
        let delta = (x.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?;
        into_cpu_storage((y + delta.reshape(shape)?)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, grad) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let gx_frozen = self
            .frozen
            .bwd(&x, res, &grad)?
            .ok_or_else(|| candle_core::Error::Msg("qlinear: no input gradient".into()))?;
        let (xc, grad) = (x.contiguous()?, grad.contiguous()?);
        let fast = with_cpu_f32(&xc, |xv| {
            with_cpu_f32(&a, |av| {
                with_cpu_f32(&b, |bv| {
                    with_cpu_f32(&grad, |gv| {
                        let dims = adapter_dims(a.layout(), b.layout(), xv.len(), gv.len())?;
                        candle_core::Result::Ok(self.update_grads(xv, av, bv, gv, dims))
                    })
                })
            })
        });
        if let Some(Some(Some(Some(grads)))) = fast {
            let [gx, ga, gb] = grads?;
            let gx = (gx_frozen + Tensor::from_vec(gx, x.dims(), x.device())?)?;
            let ga = Tensor::from_vec(ga, a.dims(), a.device())?;
            let gb = Tensor::from_vec(gb, b.dims(), b.device())?;
            return Ok((Some(gx), Some(ga), Some(gb)));
        }
        let g = rows_of(&grad)?;
        // The mask is drawn once here for the input and the input's gradient (same shape).
        let x2 = rows_of(&x)?;
        let mask = match &self.dropout {
            Some(d) => Some(d.mask_like(&x2)?),
            None => None,
        };
        let masked = |t: Tensor| match &mask {
            Some(m) => t * m,
            None => Ok(t),
        };
        let x2 = masked(x2)?;
        // (rows, r): the gradient at the low-rank bottleneck.
        let gb = (g.matmul(&b)? * self.scale)?;
        // Through the mask back to x: d(x m)/dx = m.
        let gx_lora = masked(gb.matmul(&a)?)?;
        let gx = (gx_frozen + gx_lora.reshape(x.dims())?)?;
        let ga = gb.t()?.matmul(&x2)?;
        let gb_w = (g.t()?.matmul(&x2.matmul(&a.t()?)?)? * self.scale)?;
        Ok((Some(gx), Some(ga), Some(gb_w)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{Device, Tensor, Var};

    use crate::{Lora, LoraConfig, QLinear, QuantType};

    fn randn(shape: (usize, usize), seed: u64) -> Tensor {
        let mut rng = anymal_util::rng::SplitMix64::new(seed);
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap()
    }

    /// The fused op against the same layer written as separate candle ops (the frozen product
    /// plus `Lora::forward_2d`, the dropout mask a tensor in the graph): outputs and the
    /// gradients of `x`, `A` and `B`, on the types the fused path takes, with few rows
    /// (quantized kernel) and many (dequantized GEMM), with and without dropout. Both draw the
    /// same mask (the stream is rewound between them); a further draw gives another output.
    #[test]
    fn fused_lora_matches_the_composed_ops() {
        for (ty, dropout) in [("q4k", 0.0), ("q4_0", 0.0), ("nf4", 0.0), ("q4k", 0.3)] {
            for rows in [5, 160] {
                let (k, n, r) = (256, 96, 8);
                let base =
                    QLinear::quantize(&randn((n, k), 1), None, QuantType::parse(ty).unwrap())
                        .unwrap();
                let cfg = LoraConfig {
                    r,
                    alpha: 16.0,
                    dropout,
                    use_rslora: false,
                };
                let lora = Arc::new(
                    Lora::from_tensors(
                        &cfg,
                        &(randn((r, k), 2) * 0.1).unwrap(),
                        &(randn((n, r), 3) * 0.1).unwrap(),
                    )
                    .unwrap(),
                );
                let layer = base.with_lora(Some(lora.clone())).unwrap();
                let x =
                    Var::from_tensor(&randn((rows, k), 4).reshape((1, rows, k)).unwrap()).unwrap();
                let w = randn((rows, n), 5).reshape((1, rows, n)).unwrap();
                let run = |fused: bool| {
                    let y = if fused {
                        layer.forward(x.as_tensor()).unwrap()
                    } else {
                        let ys = base.forward(x.as_tensor()).unwrap();
                        let d = lora
                            .forward_2d(&x.as_tensor().reshape((rows, k)).unwrap())
                            .unwrap();
                        (ys + d.reshape((1, rows, n)).unwrap()).unwrap()
                    };
                    let loss = (&y * &w).unwrap().sum_all().unwrap();
                    let g = loss.backward().unwrap();
                    let pick = |t: &Tensor| g.get(t).unwrap().clone();
                    (
                        y,
                        pick(x.as_tensor()),
                        pick(lora.a.as_tensor()),
                        pick(lora.b.as_tensor()),
                    )
                };
                let stream = lora.dropout_position();
                let (yf, gxf, gaf, gbf) = run(true);
                lora.rewind_dropout(stream);
                let (yc, gxc, gac, gbc) = run(false);
                if dropout > 0.0 {
                    let (again, ..) = run(true);
                    let rel = max_rel(&again, &yf);
                    assert!(rel > 1e-3, "{ty}: another dropout draw changed nothing");
                }
                for (what, f, c) in [
                    ("y", &yf, &yc),
                    ("dx", &gxf, &gxc),
                    ("dA", &gaf, &gac),
                    ("dB", &gbf, &gbc),
                ] {
                    let rel = max_rel(f, c);
                    assert!(rel < 1e-5, "{ty}, {rows} rows: {what} differs by {rel}");
                }
            }
        }
    }
}

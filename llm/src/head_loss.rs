//! The output head and cross-entropy in one pass over vocabulary slices, with the gradient
//! for the hidden states computed on the way.
//!
//! Unfused, a training step materialises the logits, their softmax and several same-sized
//! temporaries of the backward, plus the whole head dequantized to f32 (Gemma 3's 262k x 640 head
//! is 671 MB as f32, and the logits of 256 label positions another 268 MB each). Here the head is
//! dequantized a slice of rows at a time; a running max and sum (the online softmax) give each
//! row's log-normaliser, and the same slice's probabilities are folded into
//! `A = sum_v p_v W_v`, rescaled whenever the running max moves. At the end
//! `d nll / d h = A / Z - W_target` exactly, so backward is one multiply by the incoming
//! gradient. Memory: one slice of weights and logits, and two `(n, d)` matrices.

use std::sync::Mutex;

use anymal_quant::{int8_gemm, Compute, QLinear, QWeight};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::{vec_math, Error, Result};

/// Bytes of f32 weights dequantized per slice.
const SLICE_BYTES: usize = 8 << 20;

/// Per-row negative log-likelihood of `targets (n,)` under `head` applied to `hidden (n, d)`:
/// `logsumexp(h W^T + b) - (h W^T + b)[target]`, shape `(n,)`, f32. Differentiable in `hidden`
/// (not in the head, which is frozen here; a head with a LoRA uses the unfused path).
pub fn head_nll(head: &QLinear, hidden: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let d = hidden.dim(1)?;
    // A multiple of 32 rows: the int8 kernel takes whole blocks of output columns.
    let slice = (SLICE_BYTES / (4 * d.max(1))).max(256) / 32 * 32;
    head_nll_sliced(head, hidden, targets, slice)
}

/// [`head_nll`] with `slice` vocabulary rows per slice.
fn head_nll_sliced(
    head: &QLinear,
    hidden: &Tensor,
    targets: &[u32],
    slice: usize,
) -> Result<Tensor> {
    let (n, d) = hidden.dims2()?;
    let (vocab, din) = head.shape();
    if d != din || targets.len() != n {
        return Err(Error::ShapeMismatch {
            what: "head_nll's input".into(),
            got: format!("hidden ({n}, {d}) and {} targets", targets.len()),
            expected: format!("hidden (n, {din}) and n targets for a ({vocab}, {din}) head"),
        });
    }
    if let Some(&id) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::TargetOutOfVocab { id, vocab });
    }
    let fused = hidden.device().is_cpu() && hidden.dtype() == DType::F32 && head.lora().is_none();
    if !fused {
        let logits = head.forward(hidden)?.to_dtype(DType::F32)?;
        let t = Tensor::new(targets, hidden.device())?.unsqueeze(1)?;
        let logp = candle_nn::ops::log_softmax(&logits, 1)?;
        return Ok(logp.gather(&t, 1)?.squeeze(1)?.neg()?);
    }
    Ok(hidden.contiguous()?.apply_op1(HeadNll {
        head: head.clone(),
        targets: targets.to_vec(),
        slice,
        want_grad: hidden.track_op(),
        grad: Mutex::new(None),
    })?)
}

struct HeadNll {
    head: QLinear,
    targets: Vec<u32>,
    /// Vocabulary rows per slice.
    slice: usize,
    /// False when nothing upstream trains (evaluation): the `A` accumulation is skipped.
    want_grad: bool,
    /// `d nll_i / d h_i`, filled by the forward for the backward.
    grad: Mutex<Option<Tensor>>,
}

impl HeadNll {
    fn run(&self, h: &Tensor) -> candle_core::Result<(Vec<f32>, Option<Tensor>)> {
        let (n, _) = h.dims2()?;
        let (vocab, _) = self.head.shape();
        let slice = self.slice.max(1);
        let mut max = vec![f32::NEG_INFINITY; n];
        let mut sum = vec![0f32; n];
        let mut target_logit = vec![0f32; n];
        let mut acc: Option<Tensor> = None;
        // W[target_i], copied out of whichever slice holds it (a row-sized copy: `copy()` would
        // clone the whole slice's storage).
        let mut target_rows: Vec<Option<Tensor>> = vec![None; if self.want_grad { n } else { 0 }];
        // With `Compute::Int8`, both products of a slice go through the int8 kernel on the
        // stored rows (no f32 slice; the target rows are dequantized one by one).
        let int8 = match self.head.weight() {
            QWeight::Ggml(w) if self.head.compute() == Compute::Int8 && w.device().is_cpu() => {
                Some((w, h.flatten_all()?.to_vec1::<f32>()?))
            }
            _ => None,
        };
        let mut r0 = 0;
        while r0 < vocab {
            let r1 = (r0 + slice).min(vocab);
            let cols = r1 - r0;
            let int8_logits = match &int8 {
                Some((w, hv)) => int8_gemm::forward_rows(w, r0..r1, hv, n)?,
                None => None,
            };
            // The slice's logits `(n, cols)`, and its f32 weights where the int8 kernel did not
            // take it.
            let (w, mut p) = match int8_logits {
                Some(l) => (None, l),
                None => {
                    let w = self.head.dequantize_rows(r0..r1)?;
                    let logits = h.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
                    (Some(w), logits)
                }
            };
            let bias = match self.head.bias() {
                Some(b) => Some(
                    b.narrow(0, r0, cols)?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?,
                ),
                None => None,
            };
            // Per row: new running max, rescale factor of what was summed before, and the
            // slice's exp(logit - max) in place (the probabilities up to 1/Z).
            let mut rescale = vec![0f32; n];
            let targets = &self.targets;
            anymal_util::par::fill_pieces(
                [&mut p, &mut max, &mut sum, &mut target_logit, &mut rescale],
                [cols, 1, 1, 1, 1],
                |i, [row, m, s, tl, alpha]| {
                    if let Some(b) = &bias {
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                    let t = targets[i] as usize;
                    if (r0..r1).contains(&t) {
                        tl[0] = row[t - r0];
                    }
                    let new_m = m[0].max(vec_math::wide(|| max_of(row)));
                    // libm's exp here: e^-inf must be 0 on the first slice.
                    alpha[0] = (m[0] - new_m).exp();
                    s[0] = s[0] * alpha[0] + vec_math::wide(|| exp_in_place(row, new_m));
                    m[0] = new_m;
                },
            );
            if self.want_grad {
                let contrib = match (&w, &int8) {
                    (None, Some((q, _))) => {
                        let c = int8_gemm::input_grad_rows(q, r0..r1, &p, n)?
                            .expect("the kernel took these rows forward");
                        Tensor::from_vec(c, (n, h.dim(1)?), h.device())?
                    }
                    (w, _) => {
                        let w = w.as_ref().expect("an f32 slice where int8 did not run");
                        Tensor::from_vec(p, (n, cols), h.device())?.matmul(w)?
                    }
                };
                acc = Some(match acc {
                    None => contrib,
                    Some(a) => {
                        let alpha = Tensor::from_vec(rescale, (n, 1), h.device())?;
                        (a.broadcast_mul(&alpha)? + contrib)?
                    }
                });
                for (i, &t) in self.targets.iter().enumerate() {
                    let t = t as usize;
                    if (r0..r1).contains(&t) {
                        target_rows[i] = Some(match &w {
                            Some(w) => w.get(t - r0)?.force_contiguous()?,
                            None => self.head.dequantize_rows(t..t + 1)?.squeeze(0)?,
                        });
                    }
                }
            }
            r0 = r1;
        }
        let nll: Vec<f32> = (0..n)
            .map(|i| max[i] + sum[i].ln() - target_logit[i])
            .collect();
        let grad = match acc {
            Some(a) if self.want_grad => {
                let inv_z: Vec<f32> = sum.iter().map(|s| 1.0 / s).collect();
                let inv_z = Tensor::from_vec(inv_z, (n, 1), h.device())?;
                let wt = target_rows
                    .into_iter()
                    .map(|r| r.expect("every target id is below the vocabulary size (checked)"))
                    .collect::<Vec<_>>();
                let wt = Tensor::stack(&wt, 0)?;
                Some((a.broadcast_mul(&inv_z)? - wt)?)
            }
            _ => None,
        };
        Ok((nll, grad))
    }
}

/// The largest element (8 running maxima, so that the loop vectorizes).
#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
}

/// `row[j] = e^(row[j] - m)` in place; returns their sum (8 running sums, as in [`max_of`]).
#[inline(always)]
fn exp_in_place(row: &mut [f32], m: f32) -> f32 {
    for v in row.iter_mut() {
        *v = vec_math::exp(*v - m);
    }
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl CustomOp1 for HeadNll {
    fn name(&self) -> &'static str {
        "head-nll"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = anymal_quant::custom_op::cpu_tensor(storage, layout)?;
        let (nll, grad) = self.run(&h)?;
        let n = nll.len();
        *self.grad.lock().expect("head-nll gradient lock") = grad;
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = self.grad.lock().expect("head-nll gradient lock").clone();
        let Some(g) = g else {
            candle_core::bail!("head-nll: backward without a gradient computed in forward")
        };
        Ok(Some(g.broadcast_mul(&grad_res.unsqueeze(1)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anymal_quant::{GgmlDType, QuantType};
    use anymal_util::testing::max_abs_diff;
    use candle_core::{Device, Var};

    /// Fused (several slices, so the running max is rescaled) against logits + log-softmax +
    /// gather through candle's autograd: losses and gradients.
    #[test]
    fn matches_unfused_loss_and_gradient() {
        let dev = Device::Cpu;
        let (n, d, vocab) = (7, 64, 1000);
        let w = (Tensor::randn(0f32, 1.0, (vocab, d), &dev).unwrap() * 0.3).unwrap();
        let b = Tensor::randn(0f32, 1.0, vocab, &dev).unwrap();
        let targets: Vec<u32> = (0..n as u32)
            .map(|i| (i * 337 + 5) % vocab as u32)
            .collect();
        for (ty, bias) in [
            (QuantType::Ggml(GgmlDType::Q8_0), None),
            (QuantType::Ggml(GgmlDType::F32), Some(b.clone())),
        ] {
            let head = QLinear::quantize(&w, bias, ty).unwrap();
            let h0 = (Tensor::randn(0f32, 1.0, (n, d), &dev).unwrap() * 2.0).unwrap();
            let x = Var::from_tensor(&h0).unwrap();
            let nll = head_nll_sliced(&head, x.as_tensor(), &targets, 96).unwrap();
            let weights = Tensor::new(&[1f32, 2., 3., 4., 5., 6., 7.], &dev).unwrap();
            let g = (&nll * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let got_g = g.get(x.as_tensor()).unwrap();

            let y = Var::from_tensor(&h0).unwrap();
            // The reference multiplies by the dequantized weights in f32 (the quantized kernel
            // for few rows would also round the input to int8).
            let wd = head.dequantize().unwrap();
            let mut logits = y.as_tensor().matmul(&wd.t().unwrap()).unwrap();
            if let Some(b) = head.bias() {
                logits = logits.broadcast_add(b).unwrap();
            }
            let t = Tensor::new(targets.as_slice(), &dev)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let want = candle_nn::ops::log_softmax(&logits, 1)
                .unwrap()
                .gather(&t, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .neg()
                .unwrap();
            let wg = (&want * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let want_g = wg.get(y.as_tensor()).unwrap();

            let (dl, dg) = (max_abs_diff(&nll, &want), max_abs_diff(got_g, want_g));
            assert!(dl < 1e-4, "{ty:?}: loss differs by {dl}");
            assert!(dg < 1e-4, "{ty:?}: gradient differs by {dg}");
        }
    }

    /// With `Compute::Int8` (slices of 160 rows through the int8 kernel, the last 40 in f32):
    /// losses and gradients near the f32 path's, and not equal to them (the kernel ran).
    #[test]
    fn int8_head_is_near_f32() {
        if !anymal_quant::int8_gemm::available() {
            return;
        }
        let dev = Device::Cpu;
        let (n, d, vocab) = (5, 64, 1000);
        let w = (Tensor::randn(0f32, 1.0, (vocab, d), &dev).unwrap() * 0.3).unwrap();
        let targets: Vec<u32> = (0..n as u32)
            .map(|i| (i * 211 + 3) % vocab as u32)
            .collect();
        let h0 = (Tensor::randn(0f32, 1.0, (n, d), &dev).unwrap() * 2.0).unwrap();
        for ty in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let mut head = QLinear::quantize(&w, None, QuantType::Ggml(ty)).unwrap();
            let run = |head: &QLinear| {
                let x = Var::from_tensor(&h0).unwrap();
                let nll = head_nll_sliced(head, x.as_tensor(), &targets, 160).unwrap();
                let g = nll.sum_all().unwrap().backward().unwrap();
                (nll, g.get(x.as_tensor()).unwrap().clone())
            };
            let (l32, g32) = run(&head);
            head.set_compute(Compute::Int8);
            let (l8, g8) = run(&head);
            let (dl, dg) = (max_abs_diff(&l8, &l32), max_abs_diff(&g8, &g32));
            let largest = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>();
            let (lmax, gmax) = (largest(&l32).unwrap(), largest(&g32).unwrap());
            eprintln!("{ty:?}: loss {dl} of {lmax}, gradient {dg} of {gmax}");
            assert!(
                dl > 0.0 && dl < 0.02 * lmax,
                "{ty:?}: loss differs by {dl} (largest {lmax})"
            );
            assert!(
                dg < 0.05 * gmax,
                "{ty:?}: gradient differs by {dg} (largest {gmax})"
            );
        }
    }

    #[test]
    fn bad_target_is_an_error() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (10, 32), &dev).unwrap();
        let head = QLinear::quantize(&w, None, QuantType::Ggml(GgmlDType::F32)).unwrap();
        let h = Tensor::randn(0f32, 1.0, (2, 32), &dev).unwrap();
        let e = head_nll(&head, &h, &[1, 10]).unwrap_err().to_string();
        assert!(e.contains("target id 10"), "{e}");
    }
}

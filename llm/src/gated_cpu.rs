//! The gated MLP's middle on f32 CPU buffers: `act(gate) * up` forward, and both input
//! gradients backward, each in one pass over memory on all cores.
//!
//! Written by hand because candle has no fused kernel for it. Through candle's elementwise ops
//! the forward took two passes (the activation's `exp` one element at a time) and the backward
//! nine, with an allocation each: 17% of an alignment step on SmolLM2 (2 cores, perf). Here
//! each element is read once, through the vectorized `exp` of [`crate::vec_math`].

use crate::vec_math::{sigmoid, tanh, wide};

/// The activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Llama family.
    Silu,
    /// Gemma: GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Elements per parallel piece: 16 KiB of each buffer, enough to amortize a piece's dispatch.
const PIECE: usize = 4096;

/// `out = act(gate) * up`.
pub fn forward(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len());
    anymal_util::par::fill_pieces([out], [PIECE], |i, [out]| {
        let r = i * PIECE..i * PIECE + out.len();
        wide(|| forward_piece(act, &gate[r.clone()], &up[r], out))
    });
}

/// Gradients of `act(gate) * up` for the upstream gradient `grad`:
/// `d_gate = grad * up * act'(gate)`, `d_up = grad * act(gate)`.
pub fn backward(
    act: Activation,
    gate: &[f32],
    up: &[f32],
    grad: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    let n = gate.len();
    assert!(up.len() == n && grad.len() == n && d_gate.len() == n && d_up.len() == n);
    anymal_util::par::fill_pieces([d_gate, d_up], [PIECE; 2], |i, [dg, du]| {
        let r = i * PIECE..i * PIECE + dg.len();
        let (g, u, gr) = (&gate[r.clone()], &up[r.clone()], &grad[r]);
        wide(|| backward_piece(act, g, u, gr, dg, du))
    });
}

#[inline(always)]
fn forward_piece(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    // One loop per activation, so that each is a straight line the compiler vectorizes.
    match act {
        Activation::Silu => {
            for ((o, &x), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = x * sigmoid(x) * u;
            }
        }
        Activation::GeluTanh => {
            for ((o, &x), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = 0.5 * x * (1.0 + tanh(gelu_arg(x))) * u;
            }
        }
    }
}

#[inline(always)]
fn backward_piece(
    act: Activation,
    gate: &[f32],
    up: &[f32],
    grad: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    let items = d_gate
        .iter_mut()
        .zip(d_up.iter_mut())
        .zip(gate.iter().zip(up).zip(grad));
    match act {
        Activation::Silu => {
            // silu'(x) = s (1 + x (1 - s)), s = sigmoid(x)
            for ((dg, du), ((&x, &u), &g)) in items {
                let s = sigmoid(x);
                *dg = g * u * (s * (1.0 + x * (1.0 - s)));
                *du = g * x * s;
            }
        }
        Activation::GeluTanh => {
            // gelu(x) = x/2 (1 + tanh v), v = c (x + 0.044715 x^3):
            // gelu'(x) = (1 + tanh v)/2 + x/2 (1 - tanh^2 v) c (1 + 3 * 0.044715 x^2)
            for ((dg, du), ((&x, &u), &g)) in items {
                let th = tanh(gelu_arg(x));
                let dv = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                let d_act = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * dv;
                *dg = g * u * d_act;
                *du = g * 0.5 * x * (1.0 + th);
            }
        }
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// `sqrt(2/pi) (x + 0.044715 x^3)`, the argument of GELU's tanh (as candle and PyTorch's
/// `gelu_pytorch_tanh` write it).
#[inline(always)]
fn gelu_arg(x: f32) -> f32 {
    SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs over the range activations take, and past it.
    fn inputs() -> Vec<f32> {
        let mut rng = anymal_util::rng::SplitMix64::new(7);
        let mut xs: Vec<f32> = (0..20_000)
            .map(|_| rng.uniform(-90.0, 90.0) as f32)
            .collect();
        xs.extend((0..5_000).map(|_| rng.normal(0.0, 2.0) as f32));
        xs.extend([0.0, -0.0, 1e-8, -1e-8, 88.5, -88.5, 100.0, -100.0]);
        xs
    }

    /// The kernels against the formulas in f64 with libm's `exp` and `tanh`, through the
    /// dispatch both CPUs take, and through the parallel pieces (lengths not a multiple of
    /// one).
    #[test]
    fn forward_and_backward_match_f64() {
        let xs = inputs();
        let n = xs.len();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let grad: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0)
            .collect();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let mut out = vec![0.0; n];
            let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
            forward(act, &xs, &up, &mut out);
            backward(act, &xs, &up, &grad, &mut dg, &mut du);
            for i in 0..n {
                let (x, u, g) = (xs[i] as f64, up[i] as f64, grad[i] as f64);
                let (a, da) = match act {
                    Activation::Silu => {
                        let s = 1.0 / (1.0 + (-x).exp());
                        (x * s, s * (1.0 + x * (1.0 - s)))
                    }
                    Activation::GeluTanh => {
                        let c = (2.0 / std::f64::consts::PI).sqrt();
                        let th = (c * (x + 0.044715 * x * x * x)).tanh();
                        let dv = c * (1.0 + 3.0 * 0.044715 * x * x);
                        (
                            0.5 * x * (1.0 + th),
                            0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * dv,
                        )
                    }
                };
                // Relative to the size of the terms: f32 rounding of x and u alone gives ~1e-7.
                let close = |got: f32, want: f64, scale: f64| {
                    (got as f64 - want).abs() <= 1e-6 * scale.max(1.0)
                };
                let tag = format!("{act:?} at x = {x}, u = {u}, g = {g}");
                assert!(
                    close(out[i], a * u, (x * u).abs()),
                    "forward {tag}: {}",
                    out[i]
                );
                assert!(close(du[i], g * a, (g * x).abs()), "d_up {tag}: {}", du[i]);
                assert!(
                    close(dg[i], g * u * da, (g * u * (1.0 + x.abs())).abs()),
                    "d_gate {tag}: {} vs {}",
                    dg[i],
                    g * u * da
                );
            }
        }
    }
}

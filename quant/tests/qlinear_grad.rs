//! QLinear against a dense f32 reference, for every supported weight type.
//!
//! Reference: the same input through `x @ dequant(W)^T` with candle's ordinary (differentiable)
//! f32 matmul. The backward of QLinear is `grad @ dequant(W)` in f32, so the input gradient must
//! agree to f32 rounding (we allow 1e-4 relative to the gradient's max magnitude). The forward
//! of the block types quantizes the activations to 8 bits inside candle's kernel (as llama.cpp
//! does), so outputs agree only to about 1% of their scale; we allow 3%. `Compute::Int8` is
//! checked against `int8_gemm` itself (and against f32 within 2%).

use anymal_quant::{GgmlDType, QLinear, QWeight, QuantType};
use anymal_util::testing::max_abs_diff;
use candle_core::{DType, Device, Tensor, Var};

const TYPES: &[&str] = &[
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2k", "q3k", "q4k", "q5k",
    "q6k", "nf4", "nf4-dq",
];

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// sqrt(mean((a - b)^2) / mean(b^2)).
fn rel_rms(a: &Tensor, b: &Tensor) -> f32 {
    let ms = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    (ms(&(a - b).unwrap()) / ms(b)).sqrt()
}

/// Relative RMS round-trip error bound per type (weights ~ N(0, 0.02)).
fn round_trip_bound(ty: &str) -> f32 {
    match ty {
        "f32" => 1e-7,
        "f16" => 1e-3,
        "bf16" => 5e-3,
        "q8_0" => 1e-2,
        "q6k" => 2e-2,
        "q5_0" | "q5_1" | "q5k" => 5e-2,
        "q4_0" | "q4_1" | "q4k" | "nf4" | "nf4-dq" => 0.12,
        "q3k" => 0.25,
        "q2k" => 0.45,
        _ => unreachable!(),
    }
}

#[test]
fn input_gradient_matches_dense_reference_for_every_type() {
    let dev = Device::Cpu;
    let (out_f, in_f) = (256, 512);
    let w = (Tensor::randn(0f32, 0.02, (out_f, in_f), &dev).unwrap())
        .contiguous()
        .unwrap();
    let bias = Tensor::randn(0f32, 0.1, out_f, &dev).unwrap();
    let x0 = Tensor::randn(0f32, 1.0, (2, 5, in_f), &dev).unwrap();
    let r = Tensor::randn(0f32, 1.0, (2, 5, out_f), &dev).unwrap();
    for ty in TYPES {
        let qt = QuantType::parse(ty).unwrap();
        let layer = QLinear::quantize(&w, Some(bias.clone()), qt).unwrap();
        assert_eq!(layer.quant_type(), qt, "{ty}");

        // Round trip of the stored weight.
        let wd = layer.dequantize().unwrap();
        let rel = rel_rms(&wd, &w);
        assert!(
            rel <= round_trip_bound(ty),
            "{ty}: round-trip relative RMS error {rel}"
        );

        // Forward + backward through QLinear.
        let x = Var::from_tensor(&x0).unwrap();
        let y = layer.forward(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[2, 5, out_f]);
        let loss = (&y * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gx = grads
            .get(x.as_tensor())
            .expect("QLinear must pass a gradient to its input");

        // Dense reference on the dequantized weight.
        let xr = Var::from_tensor(&x0).unwrap();
        let yr = xr
            .as_tensor()
            .broadcast_matmul(&wd.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let lr = (&yr * &r).unwrap().sum_all().unwrap();
        let gr = lr.backward().unwrap();
        let gx_ref = gr.get(xr.as_tensor()).unwrap();

        let gerr = max_abs_diff(gx, gx_ref) / max_abs(gx_ref);
        assert!(gerr < 1e-4, "{ty}: input gradient relative error {gerr}");
        let yerr = max_abs_diff(&y, &yr) / max_abs(&yr);
        assert!(yerr < 0.03, "{ty}: forward relative error {yerr}");

        // Frozen: neither the bias nor a dense weight gets a gradient.
        assert!(grads.get(&bias).is_none(), "{ty}: bias received a gradient");
        if let QWeight::Dense(wt) = layer.weight() {
            assert!(grads.get(wt).is_none(), "{ty}: weight received a gradient");
        }
    }
}

#[test]
fn requantize_moves_slow_types_to_fast_ones() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.02, (256, 512), &dev).unwrap();
    let q41 = QLinear::quantize(&w, None, QuantType::parse("q4_1").unwrap()).unwrap();
    let q4k = q41.requantize(QuantType::parse("q4k").unwrap()).unwrap();
    assert_eq!(q4k.quant_type(), QuantType::Ggml(GgmlDType::Q4K));
    // Requantizing stacks two roundings: still a 4-bit-sized error against the original.
    let wd = q4k.dequantize().unwrap();
    let rel = rel_rms(&wd, &w);
    assert!(rel < 0.2, "{rel}");
    // Rows the K-quants cannot tile keep a 4-bit type of block 32.
    let narrow = Tensor::randn(0f32, 0.02, (64, 576), &dev).unwrap();
    let l = QLinear::quantize(&narrow, None, QuantType::parse("q4k").unwrap()).unwrap();
    assert_eq!(l.quant_type(), QuantType::Ggml(GgmlDType::Q4_0));
}

#[test]
fn works_in_bf16_activations() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.02, (256, 256), &dev).unwrap();
    let layer = QLinear::quantize(&w, None, QuantType::parse("q4k").unwrap()).unwrap();
    let x = Var::from_tensor(
        &Tensor::randn(0f32, 1.0, (3, 256), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap(),
    )
    .unwrap();
    let y = layer.forward(x.as_tensor()).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let g = y
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g.get(x.as_tensor()).unwrap();
    assert_eq!(gx.dtype(), DType::BF16);
    assert_eq!(gx.dims(), &[3, 256]);
}

/// Calls with many rows (training batches) take the dequantize-and-GEMM forward: its output is
/// the dense reference on the dequantized weights to f32 rounding, and it agrees with the
/// quantized kernel (few rows, 8-bit activations) to within that kernel's rounding.
#[test]
fn many_row_forward_is_the_dense_product_on_dequantized_weights() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.02, (256, 512), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 150, 512), &dev).unwrap();
    for ty in ["q4_1", "q8_0", "q4k", "q6k"] {
        let layer = QLinear::quantize(&w, None, QuantType::parse(ty).unwrap()).unwrap();
        let wd = match layer.weight() {
            QWeight::Ggml(q) => q.dequantize(&dev).unwrap(),
            _ => unreachable!(),
        };
        let y = layer.forward(&x).unwrap();
        let reference = x.broadcast_matmul(&wd.t().unwrap()).unwrap();
        let err = rel_rms(&y, &reference);
        assert!(
            err < 1e-5,
            "{ty}: many-row forward differs from the dense product by {err}"
        );
        // The same rows one sequence position at a time go through the quantized kernel.
        let few = layer.forward(&x.narrow(1, 0, 4).unwrap()).unwrap();
        let err = rel_rms(&few, &reference.narrow(1, 0, 4).unwrap());
        assert!(err < 3e-2, "{ty}: quantized kernel vs dense {err}");
    }
}

/// With `Compute::Int8`, a layer's many-row forward and its input gradient are `int8_gemm`'s
/// products exactly (the op takes the kernel both ways), and stay near the f32 ones.
#[test]
fn int8_compute_takes_the_kernel_both_ways() {
    if !anymal_quant::int8_gemm::available() {
        return;
    }
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.02, (256, 512), &dev).unwrap();
    let x0 = Tensor::randn(0f32, 1.0, (2, 150, 512), &dev).unwrap();
    let g0 = Tensor::randn(0f32, 1.0, (2, 150, 256), &dev).unwrap();
    for ty in ["q4_1", "q5_0", "q8_0", "q4k"] {
        let mut layer = QLinear::quantize(&w, None, QuantType::parse(ty).unwrap()).unwrap();
        let run = |layer: &QLinear| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = layer.forward(x.as_tensor()).unwrap();
            let grads = (&y * &g0).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let (y32, dx32) = run(&layer);
        layer.set_compute(anymal_quant::Compute::Int8);
        let (y8, dx8) = run(&layer);
        let QWeight::Ggml(q) = layer.weight() else {
            unreachable!()
        };
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want_y = anymal_quant::int8_gemm::forward(q, &flat(&x0), 300)
            .unwrap()
            .unwrap();
        let want_dx = anymal_quant::int8_gemm::input_grad(q, &flat(&g0), 300)
            .unwrap()
            .unwrap();
        assert_eq!(flat(&y8), want_y, "{ty}: forward");
        assert_eq!(flat(&dx8), want_dx, "{ty}: input gradient");
        let (ey, edx) = (rel_rms(&y8, &y32), rel_rms(&dx8, &dx32));
        assert!(ey < 0.02 && edx < 0.02, "{ty}: int8 vs f32 {ey} / {edx}");
    }
}

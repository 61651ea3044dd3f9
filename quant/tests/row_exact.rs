//! A few rows multiplied together give each row exactly (bit for bit) what it gets alone, for
//! every weight type, with and without a LoRA: batched generation relies on it to give every
//! sequence the tokens it gets alone (candle picks some kernels by row count, e.g. Q6_K's
//! single-row GEMV against its tiled kernel, so QLinear runs such rows one by one).

use std::sync::Arc;

use anymal_quant::{Lora, LoraConfig, QLinear, QuantType, EXACT_ROWS};
use candle_core::{Device, Tensor};

const TYPES: &[&str] = &[
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2k", "q3k", "q4k", "q5k",
    "q6k", "nf4", "nf4-dq",
];

fn rows_alone(l: &QLinear, x: &Tensor) -> Vec<Vec<f32>> {
    (0..x.dim(0).unwrap())
        .map(|i| {
            let row = x.narrow(0, i, 1).unwrap();
            l.forward(&row)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

#[test]
fn rows_multiplied_together_equal_rows_alone_for_every_type() {
    let dev = Device::Cpu;
    let (out, inp) = (288, 512);
    let w = (Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap() * 0.02).unwrap();
    let bias = Tensor::randn(0f32, 0.1, out, &dev).unwrap();
    for ty in TYPES {
        let base = QLinear::quantize(&w, None, QuantType::parse(ty).unwrap()).unwrap();
        let cfg = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
        };
        let a = Tensor::randn(0f32, 0.05, (4, inp), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.05, (out, 4), &dev).unwrap();
        let lora = Lora::from_tensors(&cfg, &a, &b).unwrap();
        lora.set_training(false);
        let layers = [
            ("plain", base.clone()),
            (
                "bias",
                QLinear::quantize(&w, Some(bias.clone()), QuantType::parse(ty).unwrap()).unwrap(),
            ),
            ("lora", base.with_lora(Some(Arc::new(lora))).unwrap()),
        ];
        for (what, l) in &layers {
            for m in [2, 3, 5, 8, EXACT_ROWS] {
                let x = Tensor::randn(0f32, 1.0, (m, inp), &dev).unwrap();
                let together: Vec<Vec<f32>> = l.forward(&x).unwrap().to_vec2().unwrap();
                let alone = rows_alone(l, &x);
                let differ = together
                    .iter()
                    .flatten()
                    .zip(alone.iter().flatten())
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "{ty} ({what}): {m} rows together differ from each row alone in {differ} \
                     of {} values",
                    m * out
                );
            }
        }
    }
}

/// `QLinear::forward_many` (a block's q/k/v or gate/up in one call of the kernels) gives each
/// layer exactly what its own forward gives: for every type (those without a SIMD kernel run
/// layer by layer), layers of different widths, with a bias on one, from one row up to more
/// than the decoding path takes.
#[test]
fn layers_multiplied_together_equal_each_layer_alone() {
    let dev = Device::Cpu;
    let inp = 320;
    for ty in TYPES {
        let qt = QuantType::parse(ty).unwrap();
        let layer = |out: usize, bias: bool| {
            let w = (Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap() * 0.02).unwrap();
            let b = bias.then(|| Tensor::randn(0f32, 0.1, out, &dev).unwrap());
            QLinear::quantize(&w, b, qt).unwrap()
        };
        let layers = [layer(320, false), layer(96, true), layer(72, false)];
        let refs: Vec<&QLinear> = layers.iter().collect();
        for m in [1, 2, 5, 16, 130] {
            let x = Tensor::randn(0f32, 1.0, (1, m, inp), &dev).unwrap();
            let together = QLinear::forward_many(&refs, &x).unwrap();
            assert_eq!(together.len(), layers.len());
            for (i, (l, t)) in layers.iter().zip(&together).enumerate() {
                let alone = l.forward(&x).unwrap();
                assert_eq!(t.dims(), alone.dims(), "{ty}: layer {i}, {m} rows");
                let bits = |t: &Tensor| -> Vec<u32> {
                    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                };
                assert!(
                    bits(t) == bits(&alone),
                    "{ty}: layer {i} with {m} rows differs from its own forward"
                );
            }
        }
    }
}

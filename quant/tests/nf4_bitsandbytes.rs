//! NF4 against bitsandbytes, the QLoRA reference implementation.
//!
//! `quant/tests/fixtures/nf4_bnb.safetensors` was made by `scripts/fixtures/make_nf4_fixture.py`
//! with bitsandbytes 0.50.2 (`quantize_4bit(blocksize=64, quant_type="nf4")`, with and without
//! `compress_statistics`, i.e. double quantization) on a N(0, 0.02) matrix and a Student-t(3)
//! matrix. Round-trip errors it measured (relative RMS): 0.0920 / 0.0921 (dq) on the normal data,
//! 0.1158 / 0.1157 on the heavy-tailed data.

use anymal_quant::{Nf4Tensor, NF4_CODE};
use candle_core::{Device, Tensor};

fn fixture() -> std::collections::HashMap<String, Tensor> {
    let p = format!(
        "{}/tests/fixtures/nf4_bnb.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

#[test]
fn code_table_is_bitsandbytes_table() {
    let fx = fixture();
    let code = fx["nf4_code"].to_vec1::<f32>().unwrap();
    assert_eq!(code.as_slice(), NF4_CODE.as_slice());
}

#[test]
fn dequantized_weights_match_bitsandbytes() {
    let fx = fixture();
    for name in ["w", "w2"] {
        for dq in [false, true] {
            let w = &fx[name];
            let ours = Nf4Tensor::quantize(w, dq).unwrap().dequantize_vec();
            let key = if dq {
                format!("{name}_deq_dq")
            } else {
                format!("{name}_deq")
            };
            let reference = fx[&key].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if dq {
                // The second-level (8-bit) scale table can differ from bitsandbytes' by one f32
                // ulp in some entries (see nf4.rs), so scales agree to a few ulps.
                let worst = ours
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (a - b).abs() / b.abs().max(1e-12))
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-5,
                    "{key}: relative difference {worst} from bitsandbytes"
                );
            } else {
                let mismatches = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
                assert_eq!(
                    mismatches,
                    0,
                    "{key}: {mismatches} of {} values differ from bitsandbytes",
                    ours.len()
                );
            }
            // The round-trip error bitsandbytes reports, reproduced.
            let orig = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let num: f64 = orig
                .iter()
                .zip(&ours)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = orig.iter().map(|a| (*a as f64).powi(2)).sum();
            let rel = (num / den).sqrt();
            let expected = match (name, dq) {
                ("w", false) => 0.092_037_85,
                ("w", true) => 0.092_084_47,
                ("w2", false) => 0.115_767_2,
                _ => 0.115_748_3,
            };
            assert!(
                (rel - expected).abs() < 1e-5,
                "{key}: relative RMS error {rel}, bitsandbytes {expected}"
            );
        }
    }
}

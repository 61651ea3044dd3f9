//! Comparing tensors in tests.

use candle_core::{DType, Tensor};

/// Largest absolute element-wise difference of two tensors of one shape, in f32.
///
/// Panics on a shape mismatch or a failing op: it is for tests, where that is the failure.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).expect("to f32");
    let b = b.to_dtype(DType::F32).expect("to f32");
    assert_eq!(a.dims(), b.dims(), "compared tensors differ in shape");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference of two tensors")
}

//! Dequantizing a range of rows of a GGUF tensor, for work that walks a large frozen matrix in
//! slices (the output head of a 262k-token vocabulary is 671 MB as f32; a slice is a few MB).

use std::ops::Range;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use half::{bf16, f16};

/// Rows `rows` of a 2-D `(n, k)` quantized tensor as f32, row-major `(rows.len(), k)`.
pub fn dequantize_rows(w: &QTensor, rows: Range<usize>) -> candle_core::Result<Vec<f32>> {
    let (n, k) = w.shape().dims2()?;
    if rows.start > rows.end || rows.end > n {
        candle_core::bail!("rows {rows:?} out of range for a ({n}, {k}) tensor");
    }
    let ty = w.dtype();
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if k % bs != 0 {
        candle_core::bail!("row length {k} is not a multiple of {ty:?}'s block of {bs}");
    }
    let row_bytes = k / bs * ts;
    let data = w.data()?;
    let bytes = &data[rows.start * row_bytes..rows.end * row_bytes];
    let mut out = vec![0f32; rows.len() * k];
    match ty {
        GgmlDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlDType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlDType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlDType::Q4_0 => to_float::<k_quants::BlockQ4_0>(bytes, &mut out),
        GgmlDType::Q4_1 => to_float::<k_quants::BlockQ4_1>(bytes, &mut out),
        GgmlDType::Q5_0 => to_float::<k_quants::BlockQ5_0>(bytes, &mut out),
        GgmlDType::Q5_1 => to_float::<k_quants::BlockQ5_1>(bytes, &mut out),
        GgmlDType::Q8_0 => to_float::<k_quants::BlockQ8_0>(bytes, &mut out),
        GgmlDType::Q8_1 => to_float::<k_quants::BlockQ8_1>(bytes, &mut out),
        GgmlDType::Q2K => to_float::<k_quants::BlockQ2K>(bytes, &mut out),
        GgmlDType::Q3K => to_float::<k_quants::BlockQ3K>(bytes, &mut out),
        GgmlDType::Q4K => to_float::<k_quants::BlockQ4K>(bytes, &mut out),
        GgmlDType::Q5K => to_float::<k_quants::BlockQ5K>(bytes, &mut out),
        GgmlDType::Q6K => to_float::<k_quants::BlockQ6K>(bytes, &mut out),
        GgmlDType::Q8K => to_float::<k_quants::BlockQ8K>(bytes, &mut out),
    }
    Ok(out)
}

/// candle's own dequantization of whole blocks, on the bytes of the wanted rows.
fn to_float<B: GgmlType>(bytes: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    debug_assert_eq!(bytes.len() % size, 0);
    let n = bytes.len() / size;
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>()) {
        let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, n) };
        B::to_float(blocks, out);
    } else {
        // Storage is allocated as blocks, so this does not happen; copy to be safe if it does.
        let mut v: Vec<B> = Vec::with_capacity(n);
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len());
            v.set_len(n);
        }
        B::to_float(&v, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn rows_match_whole_dequantization() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (10, 512), &dev).unwrap();
        for ty in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, ty).unwrap();
            let all = q.dequantize(&dev).unwrap();
            let want = all.narrow(0, 3, 4).unwrap().flatten_all().unwrap();
            let got = dequantize_rows(&q, 3..7).unwrap();
            assert_eq!(got, want.to_vec1::<f32>().unwrap(), "{ty:?}");
        }
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(dequantize_rows(&q, 8..11).is_err());
    }
}

//! NF4, the 4-bit NormalFloat of QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of
//! Quantized LLMs", section 3 and appendix E), stored the way bitsandbytes stores it:
//! blocks of 64 weights share one absmax scale, two 4-bit codes per byte with the first weight in
//! the high nibble. With double quantization the f32 absmax scales are themselves quantized to
//! 8 bits in blocks of 256 after subtracting their mean, on bitsandbytes' signed dynamic map.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::{Error, Result};

/// Weights per absmax scale.
pub const NF4_BLOCK: usize = 64;
/// Scales per second-level scale when double quantizing.
pub const NF4_DQ_BLOCK: usize = 256;

/// The 16 NF4 values: quantiles of N(0, 1) rescaled to [-1, 1] with an exact zero. These are
/// the values of the QLoRA paper's appendix E and of bitsandbytes' `csrc/kernels.cu`
/// (`nf4_dequantization_lut`).
// The digits are the paper's; f32 rounds them to the values bitsandbytes stores.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_5,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// bitsandbytes' `create_dynamic_map(signed=True)`: 8-bit "dynamic tree" values used for the
/// second-level quantization of the absmax scales. Sorted ascending, 256 entries. Computed in f32
/// as torch's scalar `linspace` does; torch's vectorized linspace rounds some entries
/// differently (it depends on the CPU's vector width), so entries can differ from bitsandbytes'
/// by one f32 ulp.
fn dynamic_map() -> [f32; 256] {
    let max_exponent_bits = 7i32;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..max_exponent_bits {
        let n = (1usize << i) + 1;
        let bounds = linspace_f32(0.1, 1.0, n);
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i) as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(|a, b| a.total_cmp(b));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// torch.linspace on f32: the first half counts up from `start`, the second down from `end`.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// Index of the nearest value in a sorted table, as bitsandbytes assigns it: bucketize against
/// the f32 midpoints of neighbouring values, a value on a midpoint going to the lower index.
fn nearest(table: &[f32], x: f32) -> u8 {
    table
        .windows(2)
        .take_while(|w| (w[0] + w[1]) / 2.0 < x)
        .count() as u8
}

/// The per-block scales of an NF4 tensor.
#[derive(Debug, Clone)]
enum Nf4Scales {
    F32(Vec<f32>),
    /// `absmax[i] = dyn_map[q[i]] * absmax2[i / 256] + offset`.
    DoubleQuant {
        q: Vec<u8>,
        absmax2: Vec<f32>,
        offset: f32,
    },
}

/// A frozen weight of shape (rows, cols) in NF4.
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    rows: usize,
    cols: usize,
    codes: Vec<u8>,
    scales: Nf4Scales,
}

impl Nf4Tensor {
    /// Quantizes a 2-D weight (out, in). The element count must be a multiple of 64.
    pub fn quantize(w: &Tensor, double_quant: bool) -> Result<Self> {
        let (rows, cols) = crate::error::matrix_dims(w.dims())?;
        if !cols.is_multiple_of(NF4_BLOCK) {
            return Err(Error::BlockMismatch {
                rows,
                cols,
                ty: "NF4".into(),
                block: NF4_BLOCK,
            });
        }
        let xs = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let n_blocks = xs.len() / NF4_BLOCK;
        let mut absmax = Vec::with_capacity(n_blocks);
        let mut codes = vec![0u8; xs.len() / 2];
        for (b, block) in xs.chunks_exact(NF4_BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax.push(amax);
            let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
            let norm = |v: f32| (v * inv).clamp(-1.0, 1.0);
            for (j, pair) in block.chunks_exact(2).enumerate() {
                let hi = nearest(&NF4_CODE, norm(pair[0]));
                let lo = nearest(&NF4_CODE, norm(pair[1]));
                codes[b * NF4_BLOCK / 2 + j] = (hi << 4) | lo;
            }
        }
        let scales = if double_quant {
            Self::double_quantize(&absmax)
        } else {
            Nf4Scales::F32(absmax)
        };
        Ok(Self {
            rows,
            cols,
            codes,
            scales,
        })
    }

    fn double_quantize(absmax: &[f32]) -> Nf4Scales {
        let map = dynamic_map();
        let offset = (absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len() as f64) as f32;
        let mut q = Vec::with_capacity(absmax.len());
        let mut absmax2 = Vec::with_capacity(absmax.len().div_ceil(NF4_DQ_BLOCK));
        for block in absmax.chunks(NF4_DQ_BLOCK) {
            let centred: Vec<f32> = block.iter().map(|v| v - offset).collect();
            let m = centred.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax2.push(m);
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            q.extend(
                centred
                    .iter()
                    .map(|v| nearest(&map, (v * inv).clamp(-1.0, 1.0))),
            );
        }
        Nf4Scales::DoubleQuant { q, absmax2, offset }
    }

    fn absmax(&self) -> Vec<f32> {
        match &self.scales {
            Nf4Scales::F32(a) => a.clone(),
            Nf4Scales::DoubleQuant { q, absmax2, offset } => {
                let map = dynamic_map();
                q.iter()
                    .enumerate()
                    .map(|(i, &c)| map[c as usize] * absmax2[i / NF4_DQ_BLOCK] + offset)
                    .collect()
            }
        }
    }

    /// The dequantized weights, row-major (rows * cols).
    pub fn dequantize_vec(&self) -> Vec<f32> {
        let absmax = self.absmax();
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, block) in self.codes.chunks_exact(NF4_BLOCK / 2).enumerate() {
            let s = absmax[b];
            for &byte in block {
                out.push(NF4_CODE[(byte >> 4) as usize] * s);
                out.push(NF4_CODE[(byte & 0x0f) as usize] * s);
            }
        }
        out
    }

    /// The dequantized weight as an f32 tensor (rows, cols) on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.dequantize_vec(),
            (self.rows, self.cols),
            device,
        )?)
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn double_quant(&self) -> bool {
        matches!(self.scales, Nf4Scales::DoubleQuant { .. })
    }

    /// Bytes held: packed codes plus scales.
    pub fn storage_size_in_bytes(&self) -> usize {
        self.codes.len()
            + match &self.scales {
                Nf4Scales::F32(a) => a.len() * 4,
                Nf4Scales::DoubleQuant { q, absmax2, .. } => q.len() + absmax2.len() * 4 + 4,
            }
    }
}

/// `xs @ dequant(W)^T` with the dequantized weight alive only inside this call. Forward only:
/// the backward lives in `QLinear`'s op, which calls this.
pub(crate) struct Nf4MatMul<'a>(pub &'a Nf4Tensor);

impl CustomOp1 for Nf4MatMul<'_> {
    fn name(&self) -> &'static str {
        "nf4-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = crate::custom_op::cpu_tensor(storage, layout)?;
        let (rows, cols) = self.0.shape();
        let w = Tensor::from_vec(self.0.dequantize_vec(), (rows, cols), &Device::Cpu)?
            .to_dtype(xs.dtype())?;
        let mut out_dims = xs.dims().to_vec();
        let last = out_dims.pop().unwrap_or(0);
        if last != cols {
            candle_core::bail!("nf4 matmul: input {:?} does not end in {cols}", xs.dims());
        }
        out_dims.push(rows);
        let ys = xs.reshape(((), cols))?.matmul(&w.t()?)?;
        let ys = ys.reshape(out_dims.as_slice())?;
        crate::custom_op::into_cpu_storage(ys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table_is_sorted_symmetric_and_has_exact_zero() {
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(NF4_CODE[0], -1.0);
        assert_eq!(NF4_CODE[7], 0.0);
        assert_eq!(NF4_CODE[15], 1.0);
        // 8 positive and 7 negative non-zero values: asymmetric by design (exact zero).
        assert_eq!(NF4_CODE.iter().filter(|v| **v > 0.0).count(), 8);
    }

    #[test]
    fn dynamic_map_matches_bitsandbytes_layout() {
        let m = dynamic_map();
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m[255], 1.0);
        assert!(m.contains(&0.0));
        // The largest negative magnitude is the mean of the last two linspace(0.1, 1, 65) bounds.
        assert!((m[0] + 0.99296875).abs() < 1e-6, "{}", m[0]);
    }

    #[test]
    fn dynamic_map_is_bitsandbytes_map() {
        let p = format!(
            "{}/tests/fixtures/nf4_bnb.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        let fx = candle_core::safetensors::load(p, &Device::Cpu).unwrap();
        let reference = fx["dynamic_map"].to_vec1::<f32>().unwrap();
        for (a, b) in dynamic_map().iter().zip(&reference) {
            assert!((a - b).abs() <= b.abs() * 2.0 * f32::EPSILON, "{a} vs {b}");
        }
    }

    #[test]
    fn quantize_exact_codes_round_trip_exactly() {
        // A block whose values are code values times a scale survives unchanged.
        let scale = 0.37f32;
        let vals: Vec<f32> = (0..128).map(|i| NF4_CODE[i % 16] * scale).collect();
        let w = Tensor::from_vec(vals.clone(), (2, 64), &Device::Cpu).unwrap();
        let q = Nf4Tensor::quantize(&w, false).unwrap();
        let back = q.dequantize_vec();
        for (a, b) in vals.iter().zip(&back) {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn rejects_rows_not_multiple_of_block() {
        let w = Tensor::zeros((3, 48), DType::F32, &Device::Cpu).unwrap();
        let err = Nf4Tensor::quantize(&w, false).unwrap_err().to_string();
        assert!(err.contains("48") && err.contains("64"), "{err}");
    }
}

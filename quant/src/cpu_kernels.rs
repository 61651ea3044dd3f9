//! SIMD kernels for the GGUF block types candle 0.11 multiplies with scalar code (Q4_1, Q5_0),
//! with their own matmul on candle's thread pool: tiles of weight rows by activation rows, so
//! that several activation rows (a batch of sequences decoding together) share each weight
//! block's unpacking instead of repeating it per row as candle's row-at-a-time matmul would.
//!
//! SmolLM2's GGUF is Q4_1 and Gemma 3 270M's Q4_K_M file stores 81 of its tensors as Q5_0
//! (rows of 576 / 640 do not tile Q4K's 256-wide super-blocks); with candle's scalar dot products
//! decoding ran at a fifth of llama.cpp's speed. The weight blocks here mirror candle's layouts
//! byte for byte, so the stored tensor is multiplied in place: no re-quantization, no copy.
//!
//! The activation row is quantized to [`BlockQ8s`] (32 int8 values, an f32 scale and their sum),
//! as llama.cpp does for these types; the sum makes the offset terms (Q4_1's minimum, Q5_0's -16)
//! one multiply per block.

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

const QK: usize = 32;

/// Q4_1 weights: `x = d * q + m`, q in 0..16; elements 0..16 in the low nibbles, 16..32 high.
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    d: f16,
    m: f16,
    qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// Q5_0 weights: `x = d * (q - 16)`, q in 0..32; bit j of `qh` is the fifth bit of element j.
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct BlockQ5_0 {
    d: f16,
    qh: [u8; 4],
    qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Q8_0 weights: `x = d * q`, q in -127..=127. candle has an int8 tile kernel for them only
/// with VNNI; elsewhere it multiplies row by row, and [`matmul`] takes them (see
/// [`has_kernel`]).
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    d: f16,
    qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// A quantized activation block: `x ~ d * q`, with `sum = sum(q)`.
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct BlockQ8s {
    pub(crate) d: f32,
    pub(crate) sum: i32,
    pub(crate) qs: [i8; QK],
}

impl BlockQ8s {
    pub(crate) const ZERO: Self = Self {
        d: 0.0,
        sum: 0,
        qs: [0; QK],
    };
}

impl GgmlType for BlockQ8s {
    // Only used by candle's matmul to pick a special case for Q6K; no candle type has this layout.
    const DTYPE: GgmlDType = GgmlDType::Q8_1;
    const BLCK_SIZE: usize = QK;
    type VecDotType = BlockQ8s;

    fn to_float(xs: &[Self], ys: &mut [f32]) {
        for (b, out) in xs.iter().zip(ys.chunks_exact_mut(QK)) {
            for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
                *o = b.d * q as f32;
            }
        }
    }

    fn from_float(xs: &[f32], ys: &mut [Self]) {
        for (b, x) in ys.iter_mut().zip(xs.chunks_exact(QK)) {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in b.qs.iter_mut().zip(x.iter()) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            b.d = d;
            b.sum = sum;
        }
    }

    fn vec_dot(n: usize, xs: &[Self], ys: &[Self]) -> f32 {
        Self::vec_dot_unopt(n, xs, ys)
    }

    fn vec_dot_unopt(n: usize, xs: &[Self], ys: &[Self]) -> f32 {
        xs.iter()
            .zip(ys.iter())
            .take(n / QK)
            .map(|(x, y)| {
                let s: i32 =
                    x.qs.iter()
                        .zip(y.qs.iter())
                        .map(|(&a, &b)| a as i32 * b as i32)
                        .sum();
                s as f32 * x.d * y.d
            })
            .sum()
    }
}

/// Reinterprets a slice of one `repr(C)` block type as another of identical size (our mirror of
/// a candle block and candle's own), to reuse candle's (de)quantization of the same bytes.
fn mirror<A, B>(xs: &[A]) -> &[B] {
    assert_eq!(std::mem::size_of::<A>(), std::mem::size_of::<B>());
    assert_eq!(xs.as_ptr() as usize % std::mem::align_of::<B>(), 0);
    unsafe { std::slice::from_raw_parts(xs.as_ptr() as *const B, xs.len()) }
}

fn mirror_mut<A, B>(xs: &mut [A]) -> &mut [B] {
    assert_eq!(std::mem::size_of::<A>(), std::mem::size_of::<B>());
    assert_eq!(xs.as_ptr() as usize % std::mem::align_of::<B>(), 0);
    unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr() as *mut B, xs.len()) }
}

/// The trait candle's matmul drives, for one of our weight blocks: (de)quantization is
/// candle's own on the mirrored layout, the dot products ours (SIMD where the CPU has it).
macro_rules! weight_block {
    ($block:ident, $candle:ident, $dtype:ident, $avx2:ident, $vnni:ident) => {
        impl GgmlType for $block {
            const DTYPE: GgmlDType = GgmlDType::$dtype;
            const BLCK_SIZE: usize = QK;
            type VecDotType = BlockQ8s;

            fn to_float(xs: &[Self], ys: &mut [f32]) {
                k_quants::$candle::to_float(mirror(xs), ys)
            }

            fn from_float(xs: &[f32], ys: &mut [Self]) {
                k_quants::$candle::from_float(xs, mirror_mut(ys))
            }

            fn vec_dot(n: usize, xs: &[Self], ys: &[BlockQ8s]) -> f32 {
                #[cfg(target_arch = "x86_64")]
                if avx2() {
                    let [[d]] = unsafe {
                        if vnni() {
                            $vnni(n / QK, [xs], [ys])
                        } else {
                            $avx2(n / QK, [xs], [ys])
                        }
                    };
                    return d;
                }
                Self::dot_scalar(n, xs, ys)
            }

            fn vec_dot_4(
                n: usize,
                x0: &[Self],
                x1: &[Self],
                x2: &[Self],
                x3: &[Self],
                ys: &[BlockQ8s],
            ) -> (f32, f32, f32, f32) {
                #[cfg(target_arch = "x86_64")]
                if avx2() {
                    let xs = [x0, x1, x2, x3];
                    let [[a, b, c, d]] = unsafe {
                        if vnni() {
                            $vnni(n / QK, xs, [ys])
                        } else {
                            $avx2(n / QK, xs, [ys])
                        }
                    };
                    return (a, b, c, d);
                }
                let f = |x| Self::dot_scalar(n, x, ys);
                (f(x0), f(x1), f(x2), f(x3))
            }

            fn vec_dot_unopt(n: usize, xs: &[Self], ys: &[BlockQ8s]) -> f32 {
                Self::dot_scalar(n, xs, ys)
            }
        }
    };
}
weight_block!(BlockQ4_1, BlockQ4_1, Q4_1, avx2_q4_1, vnni_q4_1);
weight_block!(BlockQ5_0, BlockQ5_0, Q5_0, avx2_q5_0, vnni_q5_0);

impl BlockQ4_1 {
    /// The reference the SIMD kernels are tested against.
    fn dot_scalar(n: usize, xs: &[Self], ys: &[BlockQ8s]) -> f32 {
        let mut sum = 0f32;
        for (x, y) in xs.iter().zip(ys.iter()).take(n / QK) {
            let mut s = 0i32;
            for j in 0..QK / 2 {
                s += (x.qs[j] & 0x0F) as i32 * y.qs[j] as i32;
                s += (x.qs[j] >> 4) as i32 * y.qs[j + QK / 2] as i32;
            }
            sum += x.d.to_f32() * y.d * s as f32 + x.m.to_f32() * (y.d * y.sum as f32);
        }
        sum
    }
}

impl BlockQ5_0 {
    /// The reference the SIMD kernels are tested against.
    fn dot_scalar(n: usize, xs: &[Self], ys: &[BlockQ8s]) -> f32 {
        let mut sum = 0f32;
        for (x, y) in xs.iter().zip(ys.iter()).take(n / QK) {
            let qh = u32::from_le_bytes(x.qh);
            let mut s = 0i32;
            for j in 0..QK / 2 {
                let lo = (x.qs[j] & 0x0F) as i32 | (((qh >> j) & 1) << 4) as i32;
                let hi = (x.qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
                s += lo * y.qs[j] as i32 + hi * y.qs[j + QK / 2] as i32;
            }
            sum += x.d.to_f32() * y.d * (s - 16 * y.sum) as f32;
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// AVX-512 VNNI's `vpdpbusd` does the u8 x i8 multiply-add in one instruction.
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Sum over 32 unsigned (0..32) times signed bytes, as 8 f32 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_u8_i8<const VNNI: bool>(x: __m256i, y: __m256i) -> __m256 {
    let p32 = if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
    } else {
        // u8 * i8 pairs summed to i16: at most 2 * 127 * 127 (Q8_0's |x|), no saturation.
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    };
    _mm256_cvtepi32_ps(p32)
}

/// The 32 nibbles of a block as bytes, elements 0..16 (low nibbles) then 16..32 (high).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn nibbles(qs: &[u8; QK / 2]) -> __m256i {
    let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
    _mm256_set_m128i(hi, lo)
}

/// The fifth bits of a Q5_0 block as 0x10 bytes: byte j tests bit j of `qh`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let spread = _mm256_and_si256(
        _mm256_shuffle_epi8(_mm256_set1_epi32(i32::from_le_bytes(qh)), pick),
        bit,
    );
    _mm256_and_si256(_mm256_cmpeq_epi8(spread, bit), _mm256_set1_epi8(0x10))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(f16_splat(h))
}

/// `h` in every lane. Used for the scales in the tile kernel's loop: converting one lane
/// there lets LLVM emit a `vpinsrw` that merges into whatever register it picks, which was
/// an accumulator, chaining each block's scale to the previous block's multiply-add (Q8_0's
/// single-row head ran at half speed).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn f16_splat(h: f16) -> __m128 {
    _mm_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// What the tile kernel needs of a weight block: its 32 values as unsigned bytes, its scale,
/// and the factor of the constant part of its dot product with an activation block (Q4_1's
/// minimum, Q5_0's -16 times its scale), which the activation's scaled sum turns into one
/// multiply.
#[cfg(target_arch = "x86_64")]
trait SimdBlock {
    /// Whether `quants` are signed bytes (multiplied as |x| times y with x's sign).
    const SIGNED: bool = false;
    /// Whether the dot product has a constant part (`offset_factor`).
    const OFFSET: bool = true;
    /// Whether the activation blocks' scales are rounded to f16 first, as llama.cpp's Q8_0
    /// activations (the vec_dot type of Q8_0 weights) store them.
    const F16_ACTIVATION_SCALE: bool = false;
    unsafe fn quants(&self) -> __m256i;
    fn scale(&self) -> f16;
    unsafe fn offset_factor(&self) -> f32;
}

#[cfg(target_arch = "x86_64")]
impl SimdBlock for BlockQ4_1 {
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        nibbles(&self.qs)
    }
    #[inline(always)]
    fn scale(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    unsafe fn offset_factor(&self) -> f32 {
        f16_to_f32(self.m)
    }
}

#[cfg(target_arch = "x86_64")]
impl SimdBlock for BlockQ8_0 {
    const SIGNED: bool = true;
    const OFFSET: bool = false;
    const F16_ACTIVATION_SCALE: bool = true;
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        _mm256_loadu_si256(self.qs.as_ptr() as *const __m256i)
    }
    #[inline(always)]
    fn scale(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    unsafe fn offset_factor(&self) -> f32 {
        0.0
    }
}

#[cfg(target_arch = "x86_64")]
impl SimdBlock for BlockQ5_0 {
    #[inline(always)]
    unsafe fn quants(&self) -> __m256i {
        _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh))
    }
    #[inline(always)]
    fn scale(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    unsafe fn offset_factor(&self) -> f32 {
        -16.0 * f16_to_f32(self.d)
    }
}

/// How far ahead of the block being multiplied the kernel asks for weight bytes. Decoding one
/// row streams every weight from memory once per token; left to the hardware prefetcher the
/// kernel waited on memory for half its time (Gemma 3's 178 MB Q8_0 head took 12.9 ms a token
/// on two Zen 3 cores, 7.6 ms with this; 2 KiB to 4 KiB all land there). Weight rows are
/// contiguous, so the address runs on into the rows the next tiles multiply.
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 3072;

/// Dot products of `R` weight rows with `A` activation rows: each weight block is unpacked
/// once for the `A` rows and each activation block loaded once for the `R` weight rows.
/// Every (activation, weight) pair goes through the same operations in the same order
/// whatever `R` and `A` are, so a row's results do not depend on how many rows were
/// multiplied with it (batched decoding relies on it; `tests/row_exact.rs`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<B: SimdBlock, const VNNI: bool, const R: usize, const A: usize>(
    blocks: usize,
    xs: [&[B]; R],
    ys: [&[BlockQ8s]; A],
) -> [[f32; R]; A] {
    // Plain loops rather than `std::array::from_fn`: its closures do not inherit the caller's
    // target features, so the intrinsics inside them became calls.
    let mut acc = [[_mm256_setzero_ps(); R]; A];
    let mut offset = [[0f32; R]; A];
    let mut yq = [_mm256_setzero_si256(); A];
    let mut yd = [_mm256_setzero_ps(); A];
    let mut ysum = [0f32; A];
    for b in 0..blocks {
        for a in 0..A {
            let y = &ys[a][b];
            yq[a] = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
            yd[a] = _mm256_set1_ps(y.d);
            ysum[a] = y.d * y.sum as f32;
        }
        for r in 0..R {
            let x = &xs[r][b];
            // `wrapping_add`: past the last rows the address is only a hint, never read.
            let ahead = (x as *const B as *const i8).wrapping_add(PREFETCH_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            let xq = x.quants();
            let xd = _mm256_broadcastss_ps(f16_splat(x.scale()));
            let xo = if B::OFFSET { x.offset_factor() } else { 0.0 };
            for a in 0..A {
                // Signed weights: |x| times y carrying x's sign (at most 2 * 127 * 127 per
                // byte pair, inside maddubs' i16).
                let p = if B::SIGNED {
                    dot_u8_i8::<VNNI>(_mm256_sign_epi8(xq, xq), _mm256_sign_epi8(yq[a], xq))
                } else {
                    dot_u8_i8::<VNNI>(xq, yq[a])
                };
                acc[a][r] = _mm256_fmadd_ps(_mm256_mul_ps(xd, yd[a]), p, acc[a][r]);
                if B::OFFSET {
                    offset[a][r] += xo * ysum[a];
                }
            }
        }
    }
    let mut out = [[0f32; R]; A];
    for a in 0..A {
        for r in 0..R {
            out[a][r] = hsum(acc[a][r]) + offset[a][r];
        }
    }
    out
}

/// Instantiates the tile kernel for one block type and instruction set:
/// `$name::<R, A>(...)`.
macro_rules! simd_entry {
    ($name:ident, $block:ty, $vnni:literal, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize, const A: usize>(
            blocks: usize,
            xs: [&[$block]; R],
            ys: [&[BlockQ8s]; A],
        ) -> [[f32; R]; A] {
            tile::<$block, $vnni, R, A>(blocks, xs, ys)
        }
    };
}
simd_entry!(avx2_q4_1, BlockQ4_1, false, "avx2,fma,f16c");
simd_entry!(
    vnni_q4_1,
    BlockQ4_1,
    true,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);
simd_entry!(avx2_q5_0, BlockQ5_0, false, "avx2,fma,f16c");
simd_entry!(avx2_q8_0, BlockQ8_0, false, "avx2,fma,f16c");
simd_entry!(
    vnni_q5_0,
    BlockQ5_0,
    true,
    "avx2,fma,f16c,avx512vnni,avx512vl"
);

/// `x (m, k) @ W^T` for a Q4_1, Q5_0 or Q8_0 weight `(n, k)` with the SIMD kernels above, on
/// candle's thread pool. `None` for other types (candle's own kernels are used for those) or
/// where the CPU lacks AVX2 (candle's matmul then drives our scalar dot products).
pub fn matmul(w: &QTensor, x: &[f32], m: usize) -> candle_core::Result<Option<Vec<f32>>> {
    Ok(matmul_many(&[w], x, m)?.and_then(|mut ys| ys.pop()))
}

/// `x (m, k) @ W_i^T` for several weights of one type with `k` columns each (a layer's q, k
/// and v, or its gate and up): the activation rows are quantized once and one dispatch of the
/// pool covers every weight's columns, where a call per weight pays both per weight. Each
/// (row, column) goes through the same arithmetic as in [`matmul`]. `None` where `matmul`
/// would be, or when the weights differ in type or width.
pub fn matmul_many(
    ws: &[&QTensor],
    x: &[f32],
    m: usize,
) -> candle_core::Result<Option<Vec<Vec<f32>>>> {
    let Some(first) = ws.first() else {
        return Ok(Some(Vec::new()));
    };
    let (ty, k) = (first.dtype(), first.shape().dims2()?.1);
    let mut ns = Vec::with_capacity(ws.len());
    for w in ws {
        let (n, kw) = w.shape().dims2()?;
        if w.dtype() != ty || kw != k {
            return Ok(None);
        }
        ns.push(n);
    }
    if k % QK != 0 || x.len() != m * k {
        return Ok(None);
    }
    let data = ws
        .iter()
        .map(|w| w.data())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut dsts: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0f32; m * n]).collect();
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        let vnni = vnni();
        let mk = (m, k);
        match ty {
            GgmlDType::Q4_1 if vnni => drive::<_, VnniQ4_1>(mk, x, &all_blocks(&data), &mut dsts),
            GgmlDType::Q4_1 => drive::<_, Avx2Q4_1>(mk, x, &all_blocks(&data), &mut dsts),
            GgmlDType::Q5_0 if vnni => drive::<_, VnniQ5_0>(mk, x, &all_blocks(&data), &mut dsts),
            GgmlDType::Q5_0 => drive::<_, Avx2Q5_0>(mk, x, &all_blocks(&data), &mut dsts),
            GgmlDType::Q8_0 if !candle_has_int8_tiles() => {
                drive::<_, Avx2Q8_0>(mk, x, &all_blocks(&data), &mut dsts)
            }
            _ => return Ok(None),
        }
        return Ok(Some(dsts));
    }
    for ((bytes, &n), dst) in data.iter().zip(&ns).zip(dsts.iter_mut()) {
        match ty {
            GgmlDType::Q4_1 => k_quants::matmul((m, k, n), x, blocks::<BlockQ4_1>(bytes), dst)?,
            GgmlDType::Q5_0 => k_quants::matmul((m, k, n), x, blocks::<BlockQ5_0>(bytes), dst)?,
            _ => return Ok(None),
        }
    }
    Ok(Some(dsts))
}

/// One tile kernel instantiation, named by type so the driver is written once.
#[cfg(target_arch = "x86_64")]
trait TileKernel<B> {
    unsafe fn tile<const R: usize, const A: usize>(
        blocks: usize,
        xs: [&[B]; R],
        ys: [&[BlockQ8s]; A],
    ) -> [[f32; R]; A];
}

macro_rules! tile_kernel {
    ($kernel:ident, $block:ty, $entry:ident) => {
        #[cfg(target_arch = "x86_64")]
        struct $kernel;
        #[cfg(target_arch = "x86_64")]
        impl TileKernel<$block> for $kernel {
            unsafe fn tile<const R: usize, const A: usize>(
                blocks: usize,
                xs: [&[$block]; R],
                ys: [&[BlockQ8s]; A],
            ) -> [[f32; R]; A] {
                $entry::<R, A>(blocks, xs, ys)
            }
        }
    };
}
tile_kernel!(Avx2Q4_1, BlockQ4_1, avx2_q4_1);
tile_kernel!(VnniQ4_1, BlockQ4_1, vnni_q4_1);
tile_kernel!(Avx2Q5_0, BlockQ5_0, avx2_q5_0);
tile_kernel!(VnniQ5_0, BlockQ5_0, vnni_q5_0);
tile_kernel!(Avx2Q8_0, BlockQ8_0, avx2_q8_0);

/// Output columns per work item of the pool.
const COLUMNS_PER_ITEM: usize = 8;

/// The matmul around a tile kernel, for one or more weights `ws[i] (n_i, k)` into `dsts[i]
/// (m, n_i)`: the activation rows are quantized once, then the pool splits every weight's
/// output columns into items of [`COLUMNS_PER_ITEM`]; an item runs its columns against groups
/// of four activation rows (two weight rows per tile, each weight block unpacked once per
/// group), then a pair, then single rows against four weight rows.
#[cfg(target_arch = "x86_64")]
fn drive<B: SimdBlock + Sync, K: TileKernel<B>>(
    (m, k): (usize, usize),
    x: &[f32],
    ws: &[&[B]],
    dsts: &mut [Vec<f32>],
) {
    let nb = k / QK;
    let mut xq = vec![BlockQ8s::ZERO; m * nb];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(nb)) {
        BlockQ8s::from_float(row, q);
        if B::F16_ACTIVATION_SCALE {
            // Rounded as llama.cpp stores them, the products are llama.cpp's (Gemma 3's
            // greedy tokens follow it through near-ties, tests/llama_cpp_reference.rs).
            for b in q.iter_mut() {
                b.d = f16::from_f32(b.d).to_f32();
            }
        }
    }
    let row_of = |i: usize| &xq[i * nb..(i + 1) * nb];
    // Each (row, column) of each dst is written by exactly one item.
    let outs: Vec<SharedOut> = dsts.iter_mut().map(|d| SharedOut(d.as_mut_ptr())).collect();
    // Item `i` of the pool is item `i - first_item[p]` of the weight `p` it falls in.
    let mut first_item = vec![0];
    let mut items = 0;
    for w in ws {
        items += (w.len() / nb).div_ceil(COLUMNS_PER_ITEM);
        first_item.push(items);
    }
    candle_core::utils::barrier_pool().execute_chunked(items, |range| {
        for item in range {
            let p = first_item.partition_point(|&f| f <= item) - 1;
            let (w, out) = (ws[p], &outs[p]);
            let n = w.len() / nb;
            let col_of = |j: usize| &w[j * nb..(j + 1) * nb];
            let item = item - first_item[p];
            let (c0, c1) = (
                item * COLUMNS_PER_ITEM,
                ((item + 1) * COLUMNS_PER_ITEM).min(n),
            );
            let mut r = 0;
            while r + 4 <= m {
                let ys = std::array::from_fn(|a| row_of(r + a));
                let mut c = c0;
                while c + 2 <= c1 {
                    let t = unsafe { K::tile::<2, 4>(nb, [col_of(c), col_of(c + 1)], ys) };
                    for (a, vals) in t.iter().enumerate() {
                        out.put(n, r + a, c, vals);
                    }
                    c += 2;
                }
                if c < c1 {
                    let t = unsafe { K::tile::<1, 4>(nb, [col_of(c)], ys) };
                    for (a, vals) in t.iter().enumerate() {
                        out.put(n, r + a, c, vals);
                    }
                }
                r += 4;
            }
            if r + 2 <= m {
                let ys = [row_of(r), row_of(r + 1)];
                for c in c0..c1 {
                    let t = unsafe { K::tile::<1, 2>(nb, [col_of(c)], ys) };
                    for (a, vals) in t.iter().enumerate() {
                        out.put(n, r + a, c, vals);
                    }
                }
                r += 2;
            }
            for r in r..m {
                let ys = [row_of(r)];
                let mut c = c0;
                while c + 4 <= c1 {
                    let cols = [col_of(c), col_of(c + 1), col_of(c + 2), col_of(c + 3)];
                    let [vals] = unsafe { K::tile::<4, 1>(nb, cols, ys) };
                    out.put(n, r, c, &vals);
                    c += 4;
                }
                for c in c..c1 {
                    let [vals] = unsafe { K::tile::<1, 1>(nb, [col_of(c)], ys) };
                    out.put(n, r, c, &vals);
                }
            }
        }
    });
}

/// The output matrix, written by the pool's items at disjoint (row, column) positions.
#[cfg(target_arch = "x86_64")]
pub(crate) struct SharedOut(pub(crate) *mut f32);

#[cfg(target_arch = "x86_64")]
unsafe impl Sync for SharedOut {}

#[cfg(target_arch = "x86_64")]
impl SharedOut {
    /// `vals` into row `r` from column `c` of an `(m, n)` matrix.
    #[inline(always)]
    pub(crate) fn put(&self, n: usize, r: usize, c: usize, vals: &[f32]) {
        // SAFETY: the caller's items cover disjoint columns, and r, c + vals.len() are within
        // the (m, n) matrix the pointer was taken from.
        unsafe {
            std::ptr::copy_nonoverlapping(vals.as_ptr(), self.0.add(r * n + c), vals.len());
        }
    }
}

/// Whether [`matmul`] has a kernel for this type on this CPU. Q8_0 only where candle has no
/// int8 tile kernel for it: with AVX2 but neither AVX-512 VNNI nor AVX-VNNI (candle's repacked
/// Q8_0 kernel needs `vpdpbusd`), where candle multiplies it one row at a time.
pub fn has_kernel(t: GgmlDType) -> bool {
    match t {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 => true,
        #[cfg(target_arch = "x86_64")]
        GgmlDType::Q8_0 => avx2() && !candle_has_int8_tiles(),
        _ => false,
    }
}

/// Whether candle 0.11 runs Q8_0 through its repacked int8 tiles on this CPU.
#[cfg(target_arch = "x86_64")]
fn candle_has_int8_tiles() -> bool {
    vnni() || is_x86_feature_detected!("avxvnni")
}

fn all_blocks<'a, B>(weights: &'a [std::borrow::Cow<'a, [u8]>]) -> Vec<&'a [B]> {
    weights.iter().map(|w| blocks(w)).collect()
}

fn blocks<B>(bytes: &[u8]) -> &[B] {
    let size = std::mem::size_of::<B>();
    assert_eq!(bytes.len() % size, 0);
    assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<B>(), 0);
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, bytes.len() / size) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Against candle's dequantized weights times the exact f32 input: the only difference is
    /// the int8 quantization of the input (~1% of a dot product's scale).
    #[test]
    fn kernels_match_dequantized_matmul() {
        let dev = Device::Cpu;
        for ty in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            for m in [1usize, 3, 6] {
                let (n, k) = (37, 576);
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let q = QTensor::quantize(&w, ty).unwrap();
                let wd = q.dequantize(&dev).unwrap();
                let want = x.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap();
                let want = want.to_vec1::<f32>().unwrap();
                let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let got = matmul(&q, &xv, m).unwrap();
                assert_eq!(got.is_some(), has_kernel(ty), "{ty:?}");
                let Some(got) = got else { continue };
                let scale = (k as f32).sqrt();
                for (g, w) in got.iter().zip(want.iter()) {
                    assert!((g - w).abs() < 0.03 * scale, "{ty:?} m={m}: {g} vs {w}");
                }
                let err: f32 = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .sum::<f32>()
                    / got.len() as f32;
                assert!(err < 0.01 * scale, "{ty:?}: mean error {err}");
            }
        }
    }

    /// Every SIMD variant this CPU runs (AVX2, and VNNI where present; one row and four)
    /// against the scalar code on the same quantized input.
    #[test]
    fn simd_equals_scalar() {
        let dev = Device::Cpu;
        let k = 640;
        let w = Tensor::randn(0f32, 1.0, (4, k), &dev).unwrap();
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let mut y = vec![
            BlockQ8s {
                d: 0.0,
                sum: 0,
                qs: [0; QK]
            };
            k / QK
        ];
        BlockQ8s::from_float(&x, &mut y);
        let nb = k / QK;

        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let data = q.data().unwrap();
        let r: Vec<&[BlockQ4_1]> = blocks::<BlockQ4_1>(&data).chunks(nb).collect();
        #[allow(unused_mut)]
        let mut extra = vec![];
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            extra.push(unsafe { avx2_q4_1(nb, [r[0], r[1], r[2], r[3]], [&y]) }[0].to_vec());
        }
        check_variants(&r, k, &y, extra);

        let q = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
        let data = q.data().unwrap();
        let r: Vec<&[BlockQ5_0]> = blocks::<BlockQ5_0>(&data).chunks(nb).collect();
        #[allow(unused_mut)]
        let mut extra = vec![];
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            extra.push(unsafe { avx2_q5_0(nb, [r[0], r[1], r[2], r[3]], [&y]) }[0].to_vec());
        }
        check_variants(&r, k, &y, extra);
    }

    /// `vec_dot`, `vec_dot_4` and the `extra` results for four rows each equal the scalar
    /// reference.
    fn check_variants<B: GgmlType<VecDotType = BlockQ8s>>(
        r: &[&[B]],
        k: usize,
        y: &[BlockQ8s],
        extra: Vec<Vec<f32>>,
    ) {
        let scalar: Vec<f32> = r.iter().map(|x| B::vec_dot_unopt(k, x, y)).collect();
        let (a, b, c, d) = B::vec_dot_4(k, r[0], r[1], r[2], r[3], y);
        let mut variants = vec![
            vec![a, b, c, d],
            r.iter().map(|x| B::vec_dot(k, x, y)).collect(),
        ];
        variants.extend(extra);
        for got in &variants {
            for (g, w) in got.iter().zip(&scalar) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{:?}: {got:?} vs {scalar:?}",
                    B::DTYPE
                );
            }
        }
    }
}

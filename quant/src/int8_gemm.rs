//! An int8 GEMM for many activation rows (training steps, long prompts, the output head over
//! label positions) on the CPU's integer multiply-add (AVX2 `vpmaddubsw`): the forward `x W^T`
//! and the input gradient `g W` of a Q4_1, Q5_0, Q4_K or Q8_0 weight, both through one kernel
//! ([`x86`]'s `tile`).
//!
//! Why not the decode tiles of `cpu_kernels`: those reduce each (row, column) dot product
//! inside one register and sum it across lanes at the end, which at 64+ rows is no faster than
//! the f32 GEMM on the dequantized layer. Here the 8 lanes of a register are 8 output columns
//! and each lane takes 4 k at a time (the layout of a GEMM microkernel): per 32 multiply-adds
//! one `vpmaddubsw` and one `vpaddw`, where f32 needs four FMAs. candle has no such kernel for
//! these types (its int8 tiles are Q8_0 and Q4_K with VNNI only), hence this one.
//!
//! **Forward.** Every 32-wide block of these types is `d q + m` with `q` an integer (Q4_1:
//! 4 bits, `m` its minimum; Q5_0: 5 bits, `m = -16 d`; Q4_K: 4 bits, `d` and `m` its sub-block's
//! scale and minimum times the super-block's; Q8_0: signed 8 bits, `m = 0`, multiplied as |q|
//! times the activation carrying q's sign). The weights are multiplied as stored, exactly; the
//! activations are quantized to int8 per 32 values, as llama.cpp's prompt path does. That is the
//! forward's only rounding.
//!
//! **Input gradient.** `dx = g W` sums over the output index `o`, along which the weight's
//! block scales change from row to row. Each 32 x 32 tile of `W^T` is therefore re-quantized
//! per input column to 7-bit unsigned values with its own scale and minimum (7 bits keep
//! `vpmaddubsw`'s i16 pair sums from saturating against int8 gradients), and `g` is quantized
//! to int8 per 32. Both roundings are finer than the weights' own 4-bit step; tests bound the
//! result against the f32 product.

use std::borrow::Cow;
use std::ops::Range;

use candle_core::quantized::{GgmlDType, QTensor};

const QK: usize = 32;
/// Output columns in one register.
const LANES: usize = 8;
/// Output columns per work item: two registers per activation row.
const PANEL: usize = 2 * LANES;

/// The arithmetic of a QLinear's frozen product on the CPU when many rows go through it
/// (training, prompts of 128+ tokens); fewer rows (decoding) always take the int8 decode
/// kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compute {
    /// Dequantize the layer and run the f32 GEMM: exact for the stored weights.
    #[default]
    F32,
    /// This module's int8 kernel where the weight type and CPU have it (Q4_1, Q5_0, Q4_K and
    /// Q8_0 with AVX2), f32 elsewhere.
    Int8,
}

impl std::str::FromStr for Compute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            _ => Err(format!(
                "unknown compute {s:?}: expected \"f32\" or \"int8\""
            )),
        }
    }
}

impl std::fmt::Display for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        })
    }
}

/// The stored block layouts this module reads.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Q4_1,
    Q5_0,
    Q4K,
    Q8_0,
}

impl Layout {
    fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Whether the stored integers are signed (Q8_0's -127..=127).
    fn signed(self) -> bool {
        matches!(self, Self::Q8_0)
    }
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu_kernels::avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`forward`] and [`input_grad`] take a weight of this type and `(n, k)` shape on this
/// CPU: Q4_1, Q5_0, Q4_K or Q8_0, `n` a multiple of 32, with AVX2.
pub fn supports(t: GgmlDType, (n, k): (usize, usize)) -> bool {
    Layout::of(t).is_some() && k % t.block_size() == 0 && n % QK == 0 && available()
}

/// `x (m, k) @ W^T` for a weight `(n, k)`; `None` where [`supports`] says no.
pub fn forward(w: &QTensor, x: &[f32], m: usize) -> candle_core::Result<Option<Vec<f32>>> {
    forward_rows(w, 0..w.shape().dims2()?.0, x, m)
}

/// [`forward`] with weight rows `rows` only: `x (m, k) @ W[rows]^T`, `(m, rows.len())`.
pub fn forward_rows(
    w: &QTensor,
    rows: Range<usize>,
    x: &[f32],
    m: usize,
) -> candle_core::Result<Option<Vec<f32>>> {
    product(w, rows, x, m, Direction::Forward)
}

/// `g (m, n) @ W` for a weight `(n, k)`: the input gradient of [`forward`]'s product. `None`
/// where [`supports`] says no.
pub fn input_grad(w: &QTensor, g: &[f32], m: usize) -> candle_core::Result<Option<Vec<f32>>> {
    input_grad_rows(w, 0..w.shape().dims2()?.0, g, m)
}

/// [`input_grad`] with weight rows `rows` only: `g (m, rows.len()) @ W[rows]`, `(m, k)`.
pub fn input_grad_rows(
    w: &QTensor,
    rows: Range<usize>,
    g: &[f32],
    m: usize,
) -> candle_core::Result<Option<Vec<f32>>> {
    product(w, rows, g, m, Direction::InputGrad)
}

#[derive(Clone, Copy)]
enum Direction {
    /// `x W^T`: the input has the weight's `k` columns.
    Forward,
    /// `g W`: the input has one column per weight row.
    InputGrad,
}

/// Either product of `m` input rows with rows `rows` of `w`; `None` where [`supports`] says no
/// or the input is not `m` rows of the width the direction needs.
fn product(
    w: &QTensor,
    rows: Range<usize>,
    input: &[f32],
    m: usize,
    dir: Direction,
) -> candle_core::Result<Option<Vec<f32>>> {
    let Some((layout, bytes, (n, k))) = weight_rows(w, rows)? else {
        return Ok(None);
    };
    let width = match dir {
        Direction::Forward => k,
        Direction::InputGrad => n,
    };
    if input.len() != m * width {
        return Ok(None);
    }
    #[cfg(target_arch = "x86_64")]
    return Ok(Some(match dir {
        Direction::Forward => x86::forward(layout, &bytes, (n, k), input),
        Direction::InputGrad => x86::input_grad(layout, &bytes, (n, k), input),
    }));
    #[cfg(not(target_arch = "x86_64"))]
    Ok(None)
}

/// Rows of a weight: their layout, bytes and `(rows, k)` shape.
type WeightRows<'a> = (Layout, Cow<'a, [u8]>, (usize, usize));

/// Rows `rows` of `w` when [`supports`] takes them.
fn weight_rows(w: &QTensor, rows: Range<usize>) -> candle_core::Result<Option<WeightRows<'_>>> {
    let (n, k) = w.shape().dims2()?;
    let (Some(layout), true) = (
        Layout::of(w.dtype()),
        rows.end <= n && rows.start <= rows.end,
    ) else {
        return Ok(None);
    };
    if !supports(w.dtype(), (rows.len(), k)) {
        return Ok(None);
    }
    let rb = k / w.dtype().block_size() * w.dtype().type_size();
    let bytes = match w.data()? {
        Cow::Borrowed(b) => Cow::Borrowed(&b[rows.start * rb..rows.end * rb]),
        Cow::Owned(b) => Cow::Owned(b[rows.start * rb..rows.end * rb].to_vec()),
    };
    Ok(Some((layout, bytes, (rows.len(), k))))
}

/// The kernel, the packing of weights into its panels and the quantization of its rows.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{Layout, LANES, PANEL, QK};
    use crate::cpu_kernels::{fifth_bits, nibbles, BlockQ8s, SharedOut};

    /// 8 columns over one 32-wide k block, laid out for `vpmaddubsw`: bytes `32 j .. 32 j + 32`
    /// hold k = `4 j .. 4 j + 4` of the 8 columns, 4 bytes per column; each column's value is
    /// `d q + m`.
    #[derive(Clone, Copy)]
    #[repr(C, align(32))]
    struct PanelBlock {
        q: [u8; LANES * QK],
        d: [f32; LANES],
        m: [f32; LANES],
    }

    impl PanelBlock {
        const ZERO: Self = Self {
            q: [0; LANES * QK],
            d: [0.0; LANES],
            m: [0.0; LANES],
        };
    }

    /// The output, written by the pool's items at disjoint columns.
    fn shared(v: &mut [f32]) -> SharedOut {
        SharedOut(v.as_mut_ptr())
    }

    pub(super) fn forward(
        layout: Layout,
        data: &[u8],
        (n, k): (usize, usize),
        x: &[f32],
    ) -> Vec<f32> {
        let row_bytes = data.len() / n;
        let nb = k / QK;
        let xq = quantize_rows(x, k);
        let m = x.len() / k;
        let mut y = vec![0f32; m * n];
        let out = shared(&mut y);
        candle_core::utils::barrier_pool().execute_chunked(n / PANEL, |items| {
            let mut panel = vec![PanelBlock::ZERO; 2 * nb];
            for item in items {
                let c0 = item * PANEL;
                let rows = &data[c0 * row_bytes..(c0 + PANEL) * row_bytes];
                // SAFETY: `supports` checked AVX2; this item alone writes columns
                // c0 .. c0 + PANEL of y.
                unsafe {
                    pack_rows(layout, rows, row_bytes, &mut panel);
                    let panels = [&panel[..nb], &panel[nb..]];
                    match layout {
                        // 8 x 2 x 15 x 127 = 30480: eight steps of 4-bit values fit in i16.
                        Layout::Q4_1 | Layout::Q4K => {
                            rows_through::<8, false>(panels, &xq, &out, n, c0)
                        }
                        // 4 x 2 x 31 x 127 = 31496 for 5-bit values.
                        Layout::Q5_0 => rows_through::<4, false>(panels, &xq, &out, n, c0),
                        // 2 x 127 x 127 = 32258: one step of |8-bit| values.
                        Layout::Q8_0 => rows_through::<1, true>(panels, &xq, &out, n, c0),
                    }
                }
            }
        });
        y
    }

    pub(super) fn input_grad(
        layout: Layout,
        data: &[u8],
        (n, k): (usize, usize),
        g: &[f32],
    ) -> Vec<f32> {
        let row_bytes = data.len() / n;
        // The kernel's k is the weight's n here.
        let nb = n / QK;
        let gq = quantize_rows(g, n);
        let m = g.len() / n;
        let mut dx = vec![0f32; m * k];
        let out = shared(&mut dx);
        // One item per 32 input columns (one weight block of every row): two panel pairs.
        candle_core::utils::barrier_pool().execute_chunked(k / QK, |items| {
            let mut panel = vec![PanelBlock::ZERO; 4 * nb];
            for kb in items {
                // SAFETY: `supports` checked AVX2; this item alone writes columns
                // kb * 32 .. kb * 32 + 32 of dx.
                unsafe {
                    pack_transposed(layout, data, row_bytes, kb, &mut panel);
                    for half in 0..2 {
                        let p = &panel[2 * half * nb..];
                        let panels = [&p[..nb], &p[nb..2 * nb]];
                        // 2 x 127 x 127 = 32258: one step of 7-bit values fits in i16.
                        rows_through::<1, false>(panels, &gq, &out, k, kb * QK + half * PANEL);
                    }
                }
            }
        });
        dx
    }

    fn half(b: &[u8]) -> f32 {
        f16::from_le_bytes([b[0], b[1]]).to_f32()
    }

    /// Block `kb` (32 values) of a weight row: the values as bytes in element order (unsigned,
    /// but signed for Q8_0), and `(d, m)` with value = `d q + m`.
    #[inline(always)]
    unsafe fn unpack(layout: Layout, row: &[u8], kb: usize) -> (__m256i, f32, f32) {
        match layout {
            Layout::Q4_1 => {
                let b = &row[kb * 20..(kb + 1) * 20];
                let qs: &[u8; QK / 2] = b[4..20].try_into().expect("16 bytes");
                (nibbles(qs), half(&b[0..2]), half(&b[2..4]))
            }
            Layout::Q5_0 => {
                let b = &row[kb * 22..(kb + 1) * 22];
                let qs: &[u8; QK / 2] = b[6..22].try_into().expect("16 bytes");
                let q = _mm256_or_si256(nibbles(qs), fifth_bits([b[2], b[3], b[4], b[5]]));
                let d = half(&b[0..2]);
                (q, d, -16.0 * d)
            }
            Layout::Q4K => {
                let (sup, sub) = (kb / 8, kb % 8);
                let b = &row[sup * 144..(sup + 1) * 144];
                // Sub-blocks 2c and 2c + 1 are the low and high nibbles of bytes 32c .. 32c + 32.
                let qs = &b[16 + 32 * (sub / 2)..16 + 32 * (sub / 2) + 32];
                let bytes = _mm256_loadu_si256(qs.as_ptr() as *const __m256i);
                let bytes = if sub % 2 == 1 {
                    _mm256_srli_epi16(bytes, 4)
                } else {
                    bytes
                };
                let q = _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F));
                let scales: &[u8; 12] = b[4..16].try_into().expect("12 scale bytes");
                let (sc, mn) = q4k_scale_min(sub, scales);
                (q, half(&b[0..2]) * sc as f32, -half(&b[2..4]) * mn as f32)
            }
            Layout::Q8_0 => {
                let b = &row[kb * 34..(kb + 1) * 34];
                let q = _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i);
                (q, half(&b[0..2]), 0.0)
            }
        }
    }

    /// Q4_K's 6-bit scale and minimum of sub-block `j`, packed into 12 bytes for 8 sub-blocks.
    fn q4k_scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        }
    }

    /// The 16 weight rows of `rows` (one item's output columns) as two panel groups over every
    /// k block: 8 rows' blocks unpacked, then transposed as 8 x 8 words of 4 bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_rows(layout: Layout, rows: &[u8], row_bytes: usize, panel: &mut [PanelBlock]) {
        let nb = panel.len() / 2;
        for g in 0..2 {
            for kb in 0..nb {
                let mut q = [_mm256_setzero_si256(); LANES];
                let p = &mut panel[g * nb + kb];
                for (c, qc) in q.iter_mut().enumerate() {
                    let r = g * LANES + c;
                    let (v, d, m) = unpack(layout, &rows[r * row_bytes..(r + 1) * row_bytes], kb);
                    *qc = v;
                    p.d[c] = d;
                    p.m[c] = m;
                }
                let t = transpose_words(q);
                for (j, v) in t.iter().enumerate() {
                    _mm256_store_si256(p.q.as_mut_ptr().add(32 * j) as *mut __m256i, *v);
                }
            }
        }
    }

    /// `rows[c]`'s 4-byte word `j` to word `c` of result `j`.
    #[inline(always)]
    unsafe fn transpose_words(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        // Words j and j + 4 of rows 0..4 (u0..u3) and 4..8 (u4..u7), j = 0..4.
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256(u0, u4, 0x20),
            _mm256_permute2x128_si256(u1, u5, 0x20),
            _mm256_permute2x128_si256(u2, u6, 0x20),
            _mm256_permute2x128_si256(u3, u7, 0x20),
            _mm256_permute2x128_si256(u0, u4, 0x31),
            _mm256_permute2x128_si256(u1, u5, 0x31),
            _mm256_permute2x128_si256(u2, u6, 0x31),
            _mm256_permute2x128_si256(u3, u7, 0x31),
        ]
    }

    /// The largest 7-bit value: `vpmaddubsw` of two 127 x 127 byte pairs stays inside i16.
    const U7_MAX: f32 = 127.0;

    /// Input columns `32 kb .. 32 kb + 32` of W as the k-major panels of `g W`: four groups of
    /// 8 columns over every block of 32 rows (k = o). Each (32 o, 32 i) tile is dequantized,
    /// and each of its columns re-quantized to 7-bit unsigned values over its own range.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_transposed(
        layout: Layout,
        data: &[u8],
        row_bytes: usize,
        kb: usize,
        panel: &mut [PanelBlock],
    ) {
        let nb = panel.len() / 4;
        let mut vals = [[_mm256_setzero_ps(); 4]; QK];
        for ob in 0..nb {
            let mut lo = [_mm256_set1_ps(f32::INFINITY); 4];
            let mut hi = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
            for (r, v) in vals.iter_mut().enumerate() {
                let o = ob * QK + r;
                let (q, d, m) = unpack(layout, &data[o * row_bytes..(o + 1) * row_bytes], kb);
                let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
                let halves = [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)];
                for e in 0..4 {
                    let h = halves[e / 2];
                    let eight = if e % 2 == 0 { h } else { _mm_srli_si128(h, 8) };
                    let ints = if layout.signed() {
                        _mm256_cvtepi8_epi32(eight)
                    } else {
                        _mm256_cvtepu8_epi32(eight)
                    };
                    let f = _mm256_cvtepi32_ps(ints);
                    v[e] = _mm256_fmadd_ps(f, d, m);
                    lo[e] = _mm256_min_ps(lo[e], v[e]);
                    hi[e] = _mm256_max_ps(hi[e], v[e]);
                }
            }
            let mut inv = [_mm256_setzero_ps(); 4];
            for e in 0..4 {
                let scale =
                    _mm256_mul_ps(_mm256_sub_ps(hi[e], lo[e]), _mm256_set1_ps(1.0 / U7_MAX));
                let nonzero = _mm256_cmp_ps(scale, _mm256_setzero_ps(), _CMP_GT_OQ);
                inv[e] = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), scale), nonzero);
                let g = &mut panel[e * nb + ob];
                _mm256_storeu_ps(g.d.as_mut_ptr(), scale);
                _mm256_storeu_ps(g.m.as_mut_ptr(), lo[e]);
            }
            // Row r of the tile as 32 bytes in column order.
            let mut u = [_mm256_setzero_si256(); QK];
            for (r, v) in vals.iter().enumerate() {
                let mut w = [_mm256_setzero_si256(); 4];
                for e in 0..4 {
                    let x = _mm256_mul_ps(_mm256_sub_ps(v[e], lo[e]), inv[e]);
                    w[e] = _mm256_cvtps_epi32(_mm256_min_ps(x, _mm256_set1_ps(U7_MAX)));
                }
                let a = _mm256_packs_epi32(w[0], w[1]);
                let b = _mm256_packs_epi32(w[2], w[3]);
                let bytes = _mm256_packus_epi16(a, b);
                u[r] =
                    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            }
            // Rows 4j .. 4j + 4 interleaved byte by byte: 4 bytes per column, columns 0..32.
            for j in 0..QK / 4 {
                let a = _mm256_unpacklo_epi8(u[4 * j], u[4 * j + 1]);
                let b = _mm256_unpackhi_epi8(u[4 * j], u[4 * j + 1]);
                let c = _mm256_unpacklo_epi8(u[4 * j + 2], u[4 * j + 3]);
                let d = _mm256_unpackhi_epi8(u[4 * j + 2], u[4 * j + 3]);
                // Columns 0..4 | 16..20, 4..8 | 20..24, 8..12 | 24..28, 12..16 | 28..32.
                let e = _mm256_unpacklo_epi16(a, c);
                let f = _mm256_unpackhi_epi16(a, c);
                let g = _mm256_unpacklo_epi16(b, d);
                let h = _mm256_unpackhi_epi16(b, d);
                let groups = [
                    _mm256_permute2x128_si256(e, f, 0x20),
                    _mm256_permute2x128_si256(g, h, 0x20),
                    _mm256_permute2x128_si256(e, f, 0x31),
                    _mm256_permute2x128_si256(g, h, 0x31),
                ];
                for (gi, v) in groups.iter().enumerate() {
                    let dst = panel[gi * nb + ob].q.as_mut_ptr().add(32 * j);
                    _mm256_store_si256(dst as *mut __m256i, *v);
                }
            }
        }
    }

    /// Rows of `(rows, k)` quantized to int8 blocks of 32 (`x ~ d q`, round to nearest), on
    /// the pool.
    pub(super) fn quantize_rows(x: &[f32], k: usize) -> Vec<BlockQ8s> {
        let nb = k / QK;
        let mut xq = vec![BlockQ8s::ZERO; x.len() / QK];
        let dst = SharedBlocks(xq.as_mut_ptr());
        candle_core::utils::barrier_pool().execute_chunked(x.len() / k, |range| {
            for r in range {
                // SAFETY: row r's blocks are written by this item only; AVX2 is checked by
                // the callers (`supports`).
                unsafe {
                    let q = dst.row(r, nb);
                    quantize_row(&x[r * k..(r + 1) * k], q);
                }
            }
        });
        xq
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantize_row(x: &[f32], q: &mut [BlockQ8s]) {
        let sign = _mm256_set1_ps(-0.0);
        for (b, xs) in q.iter_mut().zip(x.chunks_exact(QK)) {
            let mut v = [_mm256_setzero_ps(); 4];
            let mut amax = _mm256_setzero_ps();
            for (e, ve) in v.iter_mut().enumerate() {
                *ve = _mm256_loadu_ps(xs.as_ptr().add(8 * e));
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, *ve));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut w = [_mm256_setzero_si256(); 4];
            for e in 0..4 {
                w[e] = _mm256_cvtps_epi32(_mm256_mul_ps(v[e], id));
            }
            let s = _mm256_add_epi32(_mm256_add_epi32(w[0], w[1]), _mm256_add_epi32(w[2], w[3]));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)));
            let a = _mm256_packs_epi32(w[0], w[1]);
            let c = _mm256_packs_epi32(w[2], w[3]);
            let bytes = _mm256_packs_epi16(a, c);
            let bytes =
                _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, bytes);
            b.d = d;
            b.sum = sum;
        }
    }

    /// Quantized rows written by the pool's items at disjoint rows.
    struct SharedBlocks(*mut BlockQ8s);
    unsafe impl Sync for SharedBlocks {}

    impl SharedBlocks {
        /// Row `r` of `nb` blocks. The caller writes each row from one item only, within the
        /// buffer the pointer was taken from.
        #[allow(clippy::mut_from_ref)]
        unsafe fn row(&self, r: usize, nb: usize) -> &mut [BlockQ8s] {
            std::slice::from_raw_parts_mut(self.0.add(r * nb), nb)
        }
    }

    /// Every row of `xq` through one panel pair, two rows per kernel call, into columns
    /// `c0 .. c0 + 16` of the `(rows, n)` output.
    unsafe fn rows_through<const WIDEN: usize, const SIGNED: bool>(
        panels: [&[PanelBlock]; 2],
        xq: &[BlockQ8s],
        out: &SharedOut,
        n: usize,
        c0: usize,
    ) {
        let nb = panels[0].len();
        let rows = xq.len() / nb;
        let row = |r: usize| &xq[r * nb..(r + 1) * nb];
        let mut r = 0;
        while r + 2 <= rows {
            let t = tile::<2, WIDEN, SIGNED>(panels, [row(r), row(r + 1)]);
            for (a, vals) in t.iter().enumerate() {
                out.put(n, r + a, c0, vals);
            }
            r += 2;
        }
        if r < rows {
            let [vals] = tile::<1, WIDEN, SIGNED>(panels, [row(r)]);
            out.put(n, r, c0, &vals);
        }
    }

    /// `R` activation rows times the 16 columns of a panel pair over all k blocks. Per 4 k,
    /// one `vpmaddubsw` per (row, 8 columns) into i16 sums, widened to i32 every `WIDEN` steps
    /// (before they could overflow) and scaled to f32 once per block. Two rows: the 4 i16 and
    /// 4 f32 sums, two weight vectors and a broadcast fit the 16 registers without spilling.
    /// `SIGNED` weights (Q8_0) are multiplied as |w| times x carrying w's sign.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const WIDEN: usize, const SIGNED: bool>(
        panels: [&[PanelBlock]; 2],
        xs: [&[BlockQ8s]; R],
    ) -> [[f32; PANEL]; R] {
        let nb = panels[0].len().min(panels[1].len());
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kb in 0..nb {
            let p = [&panels[0][kb], &panels[1][kb]];
            let mut wide = [[_mm256_setzero_si256(); 2]; R];
            let mut narrow = [[_mm256_setzero_si256(); 2]; R];
            for j in 0..QK / 4 {
                let w = [
                    _mm256_load_si256(p[0].q.as_ptr().add(32 * j) as *const __m256i),
                    _mm256_load_si256(p[1].q.as_ptr().add(32 * j) as *const __m256i),
                ];
                let wu = if SIGNED {
                    [_mm256_abs_epi8(w[0]), _mm256_abs_epi8(w[1])]
                } else {
                    w
                };
                for r in 0..R {
                    let four = (xs[r][kb].qs.as_ptr().add(4 * j) as *const i32).read_unaligned();
                    let xb = _mm256_set1_epi32(four);
                    for g in 0..2 {
                        let x = if SIGNED {
                            _mm256_sign_epi8(xb, w[g])
                        } else {
                            xb
                        };
                        narrow[r][g] =
                            _mm256_add_epi16(narrow[r][g], _mm256_maddubs_epi16(wu[g], x));
                    }
                }
                if (j + 1) % WIDEN == 0 {
                    for r in 0..R {
                        for g in 0..2 {
                            let s = _mm256_madd_epi16(narrow[r][g], ones);
                            wide[r][g] = _mm256_add_epi32(wide[r][g], s);
                            narrow[r][g] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            let d = [
                _mm256_load_ps(p[0].d.as_ptr()),
                _mm256_load_ps(p[1].d.as_ptr()),
            ];
            let mm = [
                _mm256_load_ps(p[0].m.as_ptr()),
                _mm256_load_ps(p[1].m.as_ptr()),
            ];
            for r in 0..R {
                let x = &xs[r][kb];
                let xd = _mm256_set1_ps(x.d);
                let xo = _mm256_set1_ps(x.d * x.sum as f32);
                for g in 0..2 {
                    let s = _mm256_cvtepi32_ps(wide[r][g]);
                    acc[r][g] = _mm256_fmadd_ps(s, _mm256_mul_ps(d[g], xd), acc[r][g]);
                    acc[r][g] = _mm256_fmadd_ps(mm[g], xo, acc[r][g]);
                }
            }
        }
        let mut out = [[0f32; PANEL]; R];
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
            _mm256_storeu_ps(out[r].as_mut_ptr().add(LANES), acc[r][1]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn randn(shape: (usize, usize), seed: u64) -> Tensor {
        let dev = Device::Cpu;
        // Deterministic, varied rows: a few larger columns, as activations have.
        let (r, c) = shape;
        let v: Vec<f32> = (0..r * c)
            .map(|i| {
                let h = (i as u64 ^ seed)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(17);
                let u = (h >> 11) as f32 / (1u64 << 53) as f32 - 0.5;
                u * if i % c % 37 == 0 { 8.0 } else { 2.0 }
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    }

    /// The largest difference over the largest reference value.
    fn rel(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()))
            / scale
    }

    /// The forward equals the dequantized weight times the input quantized to int8 per 32
    /// (computed here in f64): the weights are exact, so only summation order differs. And it
    /// is within 1% of the f32 product.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn forward_is_the_stored_weights_times_int8_rows() {
        if !available() {
            return;
        }
        for ty in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q8_0,
        ] {
            for m in [1usize, 2, 4, 7] {
                let (n, k) = (64, 512);
                let q = QTensor::quantize(&randn((n, k), 1), ty).unwrap();
                let wd = q.dequantize(&Device::Cpu).unwrap();
                let wv: Vec<f32> = wd.flatten_all().unwrap().to_vec1().unwrap();
                let x = randn((m, k), 2);
                let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let got = forward(&q, &xv, m).unwrap().expect("supported");
                let xq = x86::quantize_rows(&xv, k);
                let mut exact = vec![0f32; m * n];
                for t in 0..m {
                    for o in 0..n {
                        let mut s = 0f64;
                        for i in 0..k {
                            let b = &xq[t * k / QK + i / QK];
                            s += b.d as f64 * b.qs[i % QK] as f64 * wv[o * k + i] as f64;
                        }
                        exact[t * n + o] = s as f32;
                    }
                }
                let e = rel(&got, &exact);
                assert!(e < 1e-5, "{ty:?} m={m}: {e} from the int8-input product");
                let f32_ref: Vec<f32> = x
                    .matmul(&wd.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let e = rel(&got, &f32_ref);
                assert!(e < 0.01, "{ty:?} m={m}: {e} from the f32 product");
            }
        }
    }

    /// The input gradient within 1.5% of `g @ dequant(W)` in f32, for every type.
    #[test]
    fn input_gradient_is_near_the_f32_product() {
        if !available() {
            return;
        }
        for ty in [
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q8_0,
        ] {
            for m in [1usize, 5] {
                let (n, k) = (96, 512);
                let q = QTensor::quantize(&randn((n, k), 3), ty).unwrap();
                let wd = q.dequantize(&Device::Cpu).unwrap();
                let g = randn((m, n), 4);
                let gv: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                let got = input_grad(&q, &gv, m).unwrap().expect("supported");
                let want: Vec<f32> = g
                    .matmul(&wd)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let e = rel(&got, &want);
                assert!(e < 0.015, "{ty:?} m={m}: {e}");
            }
        }
    }

    /// A range of weight rows gives those columns of the whole product, bit for bit, both ways.
    #[test]
    fn row_ranges_are_slices_of_the_whole_product() {
        if !available() {
            return;
        }
        let (n, k, m) = (128, 256, 3);
        for ty in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&randn((n, k), 6), ty).unwrap();
            let xv: Vec<f32> = randn((m, k), 7).flatten_all().unwrap().to_vec1().unwrap();
            let all = forward(&q, &xv, m).unwrap().unwrap();
            let part = forward_rows(&q, 32..96, &xv, m).unwrap().unwrap();
            for t in 0..m {
                assert_eq!(
                    &part[t * 64..(t + 1) * 64],
                    &all[t * n + 32..t * n + 96],
                    "{ty:?}"
                );
            }
            // The gradient through rows 32..96 alone: g zero outside them gives the same sum.
            let g: Vec<f32> = randn((m, 64), 8).flatten_all().unwrap().to_vec1().unwrap();
            let part = input_grad_rows(&q, 32..96, &g, m).unwrap().unwrap();
            let mut gz = vec![0f32; m * n];
            for t in 0..m {
                gz[t * n + 32..t * n + 96].copy_from_slice(&g[t * 64..(t + 1) * 64]);
            }
            let whole = input_grad(&q, &gz, m).unwrap().unwrap();
            let e = rel(&part, &whole);
            assert!(e < 0.01, "{ty:?}: {e}");
        }
    }

    #[test]
    fn other_types_and_shapes_are_declined() {
        let w = randn((48, 64), 5);
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        // 48 rows: not a multiple of 32 output columns.
        assert!(forward(&q, &[0.0; 64], 1).unwrap().is_none());
        assert!(forward_rows(&q, 0..33, &[0.0; 64], 1).unwrap().is_none());
        let q = QTensor::quantize(&randn((64, 256), 5), GgmlDType::Q6K).unwrap();
        assert!(forward(&q, &[0.0; 256], 1).unwrap().is_none());
        assert!(input_grad(&q, &[0.0; 64], 1).unwrap().is_none());
    }
}

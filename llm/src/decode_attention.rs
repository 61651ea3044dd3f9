//! Attention for one new position of each sequence of a decoding batch, on the CPU in f32:
//! rotary embedding, the write into the KV cache and attention over the cached positions, for
//! every sequence and head, in one pass of plain loops.
//!
//! Written by hand because at one position the work is a few thousand multiply-adds per head
//! while the candle ops it replaces (narrow, reshape, transpose, RoPE, two cache writes, the
//! score product, scale, softmax, the value product: ~20 per sequence and layer) each cost
//! microseconds of dispatch and allocation; a batch of eight sequences paid them eight times
//! per layer. One-at-a-time decoding takes this path too (as a batch of one), so a sequence's
//! arithmetic is the same alone and in any batch: each (sequence, head) is computed by the
//! same sequential code whichever thread runs it.

use candle_core::Tensor;

use crate::kv_cache::KvCache;
use crate::Result;

/// The head layout of the layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
    /// Scale of the scores (1/sqrt(d), or Gemma's query_pre_attn_scalar).
    pub scale: f32,
}

/// Where one sequence is: the rotary cos/sin of its new position (`dim / 2` each) and the
/// sliding window of this layer, if any (keys more than `window - 1` positions back are not
/// attended).
#[derive(Debug, Clone, Copy)]
pub struct DecodeRow<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub interleaved: bool,
    pub window: Option<usize>,
}

/// Below this many multiply-adds of attention in a call, one thread does it all (a thread
/// pool dispatch costs more than it saves).
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// `q (b, 1, heads.q * dim)`, `k, v (b, 1, heads.kv * dim)` (q and k normed, not yet
/// rotated): rotates q and k, appends k and v to `caches[i]` at its next position, and
/// returns each sequence's attention output `(b, 1, heads.q * dim)` before the output
/// projection.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads,
    rows: &[DecodeRow<'_>],
    caches: &mut [KvCache],
    layer: usize,
) -> Result<Tensor> {
    let b = rows.len();
    let d = heads.dim;
    let (qw, kw) = (heads.q * d, heads.kv * d);
    let mut qs = q.flatten_all()?.to_vec1::<f32>()?;
    let mut ks = k.flatten_all()?.to_vec1::<f32>()?;
    let vs = v.flatten_all()?.to_vec1::<f32>()?;
    if qs.len() != b * qw || ks.len() != b * kw || vs.len() != b * kw || caches.len() != b {
        return Err(candle_core::Error::Msg(format!(
            "decode attention: {b} rows, q {:?}, k {:?}, {} caches",
            q.dims(),
            k.dims(),
            caches.len()
        ))
        .into());
    }
    for (i, row) in rows.iter().enumerate() {
        let (qi, ki) = (&mut qs[i * qw..(i + 1) * qw], &mut ks[i * kw..(i + 1) * kw]);
        for head in qi.chunks_exact_mut(d).chain(ki.chunks_exact_mut(d)) {
            rotate(head, row);
        }
        caches[i].append_position(
            layer,
            (heads.kv, d),
            &ks[i * kw..(i + 1) * kw],
            &vs[i * kw..(i + 1) * kw],
        )?;
    }
    let mut out = vec![0f32; b * qw];
    let group = heads.q / heads.kv.max(1);
    let work: usize = caches.iter().map(|c| c.seq_len()).sum::<usize>() * qw;
    // One (sequence, query head) per task, each writing its own `dim` outputs.
    let attend_head = |task: usize, o: &mut [f32]| -> Result<()> {
        let (i, h) = (task / heads.q, task % heads.q);
        let query = &qs[i * qw + h * d..i * qw + (h + 1) * d];
        caches[i].read_layer(layer, |c| {
            let first = rows[i].window.map_or(0, |w| c.len.saturating_sub(w));
            attend_one(query, &c, h / group, first, heads, o)
        })
    };
    if work >= PARALLEL_MIN_WORK {
        let failed = std::sync::Mutex::new(None);
        anymal_util::par::fill_pieces([&mut out], [d], |task, [o]| {
            if let Err(e) = attend_head(task, o) {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
    } else {
        for (task, o) in out.chunks_mut(d).enumerate() {
            attend_head(task, o)?;
        }
    }
    Ok(Tensor::from_vec(out, (b, 1, qw), q.device())?)
}

/// Rotates one head's `(d,)` vector by the row's angles, as candle's `rope` (halves) or
/// `rope_i` (adjacent pairs) does.
pub(crate) fn rotate(x: &mut [f32], row: &DecodeRow<'_>) {
    rotate_by(x, row, 1.0)
}

/// The inverse of [`rotate`] (by the negated angles): how a gradient goes back through it.
pub(crate) fn rotate_back(x: &mut [f32], row: &DecodeRow<'_>) {
    rotate_by(x, row, -1.0)
}

/// Rotates each pair of `x` by the row's angles, their sines multiplied by `sin_sign`.
fn rotate_by(x: &mut [f32], row: &DecodeRow<'_>, sin_sign: f32) {
    let half = x.len() / 2;
    for j in 0..half {
        let (a, b) = if row.interleaved {
            (2 * j, 2 * j + 1)
        } else {
            (j, j + half)
        };
        let (x1, x2) = (x[a], x[b]);
        let (cos, sin) = (row.cos[j], sin_sign * row.sin[j]);
        x[a] = x1 * cos - x2 * sin;
        x[b] = x1 * sin + x2 * cos;
    }
}

/// Softmax-weighted sum of the values of positions `first..len` of `kv_head` for one query.
fn attend_one(
    query: &[f32],
    c: &crate::kv_cache::CachedLayer<'_>,
    kv_head: usize,
    first: usize,
    heads: Heads,
    out: &mut [f32],
) {
    let d = heads.dim;
    let scores: Vec<f32> = (first..c.len)
        .map(|p| dot(query, c.key(kv_head, p, d)) * heads.scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    out.fill(0.0);
    for (w, p) in weights.iter().zip(first..c.len) {
        let w = w / total;
        for (o, x) in out.iter_mut().zip(c.value(kv_head, p, d)) {
            *o += w * x;
        }
    }
}

/// A dot product in eight independent partial sums (vectorizable, and the same order on
/// every call).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

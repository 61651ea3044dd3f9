//! Reduce a variable number of encoder frames to tokens, either to a fixed count or at a rate.
//!
//! Fixed count: a clip of 2 s and one of 20 s both become `k` LLM tokens. `Pool` averages
//! contiguous windows (adaptive average pooling, as `torch.nn.AdaptiveAvgPool1d`); `Concat`
//! pools to `k * stride` frames and concatenates each `stride` neighbours into one wider vector.
//!
//! Fixed rate: every `n` frames become one token, so an item of `L` frames gives `ceil(L / n)`
//! tokens and a long sentence gets more tokens than a short word -- what LLM-ASR systems do.
//! `Stack` concatenates `n` consecutive frames (SLAM-ASR, Ultravox: the last group is padded
//! with zero frames, as Ultravox's frame stacker pads), `AvgPool` averages them (Qwen2-Audio's
//! pooling by 2; the last window averages the frames it has). Items of one batch then hold
//! different token counts: the output is right-padded with zeros and the counts are returned,
//! and frames past an item's length never reach its tokens.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Result;

/// How frames become tokens before the projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Reduce {
    /// Average pooling to `k` tokens; projector input width `d_enc`.
    Pool,
    /// Pool to `k * stride` frames, concatenate groups of `stride`; input width `stride * d_enc`.
    Concat { stride: usize },
    /// Concatenate every `n` consecutive frames into one token; input width `n * d_enc`.
    Stack { n: usize },
    /// Average every `n` consecutive frames into one token; input width `d_enc`.
    AvgPool { n: usize },
}

impl Reduce {
    /// Width of one reduced token given the encoder width.
    pub fn out_dim(&self, d_enc: usize) -> usize {
        match self {
            Reduce::Pool | Reduce::AvgPool { .. } => d_enc,
            Reduce::Concat { stride } => stride * d_enc,
            Reduce::Stack { n } => n * d_enc,
        }
    }

    /// Whether the token count follows the item's length (`Stack`, `AvgPool`).
    pub fn is_rate(&self) -> bool {
        matches!(self, Reduce::Stack { .. } | Reduce::AvgPool { .. })
    }

    /// Frames per token of a rate reduction, or the stride of `Concat`: must be at least 1.
    pub fn factor(&self) -> Option<usize> {
        match self {
            Reduce::Pool => None,
            Reduce::Concat { stride } => Some(*stride),
            Reduce::Stack { n } | Reduce::AvgPool { n } => Some(*n),
        }
    }

    /// Tokens an item of `frames` frames becomes: `k` for the fixed-count reductions,
    /// `ceil(frames / n)` (at least 1) for the rate ones.
    pub fn tokens_for(&self, frames: usize, k: usize) -> usize {
        match self {
            Reduce::Pool | Reduce::Concat { .. } => k,
            Reduce::Stack { n } | Reduce::AvgPool { n } => frames.div_ceil((*n).max(1)).max(1),
        }
    }

    /// `(b, n, d)` with the real lengths of each row -> `(b, t, out_dim(d))` and each row's
    /// token count (`t` is the largest; rows with fewer tokens are zero after theirs).
    /// Padding frames beyond `lengths[i]` never contribute.
    pub fn apply(&self, xs: &Tensor, lengths: &[usize], k: usize) -> Result<(Tensor, Vec<usize>)> {
        let (b, n, d) = xs.dims3()?;
        if lengths.len() != b {
            return Err(crate::Error::Shape(format!(
                "{} lengths for a batch of {b}",
                lengths.len()
            )));
        }
        let lengths: Vec<usize> = lengths.iter().map(|&l| l.clamp(1, n)).collect();
        let counts: Vec<usize> = lengths.iter().map(|&l| self.tokens_for(l, k)).collect();
        let out = match *self {
            Reduce::Pool => {
                pooling_matrix(&lengths, b, n, k, xs.device())?.matmul(&xs.contiguous()?)?
            }
            Reduce::Concat { stride } => {
                let p = pooling_matrix(&lengths, b, n, k * stride, xs.device())?;
                p.matmul(&xs.contiguous()?)?.reshape((b, k, stride * d))?
            }
            Reduce::AvgPool { n: f } => {
                let t = counts.iter().copied().max().unwrap_or(1);
                rate_pooling_matrix(&lengths, n, f, t, xs.device())?.matmul(&xs.contiguous()?)?
            }
            Reduce::Stack { n: f } => {
                let t = counts.iter().copied().max().unwrap_or(1);
                // Zero every frame past its row's length, pad the frame axis to `t * f`, and
                // read groups of `f` frames as one row.
                let mask = frame_mask(&lengths, n, xs.device())?.to_dtype(xs.dtype())?;
                let masked = xs.broadcast_mul(&mask)?;
                let masked = if t * f > n {
                    masked.pad_with_zeros(1, 0, t * f - n)?
                } else {
                    masked.narrow(1, 0, t * f)?
                };
                masked.contiguous()?.reshape((b, t, f * d))?
            }
        };
        Ok((out, counts))
    }
}

/// `(b, n, 1)`: 1 for frames within their row's length, 0 after.
fn frame_mask(lengths: &[usize], n: usize, dev: &Device) -> Result<Tensor> {
    let b = lengths.len();
    let w: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..n).map(move |f| if f < l { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(w, (b, n, 1), dev)?)
}

/// `(b, t, n)` averaging weights of a rate reduction: token `i` of a row of `L` real frames
/// averages frames `[i*f, min((i+1)*f, L))`; tokens past `ceil(L / f)` are all zero.
fn rate_pooling_matrix(
    lengths: &[usize],
    n: usize,
    f: usize,
    t: usize,
    dev: &Device,
) -> Result<Tensor> {
    averaging_matrix(lengths, n, t, dev, |len, i| {
        (i < len.div_ceil(f)).then(|| (i * f, ((i + 1) * f).min(len)))
    })
}

/// `(b, m, n)` weights whose row `i` of item `j` averages the frames `window(len_j, i)` gives
/// (`[lo, hi)`, non-empty), or is zero when it gives none.
fn averaging_matrix(
    lengths: &[usize],
    n: usize,
    m: usize,
    dev: &Device,
    window: impl Fn(usize, usize) -> Option<(usize, usize)>,
) -> Result<Tensor> {
    let b = lengths.len();
    let mut w = vec![0f32; b * m * n];
    for (j, &len) in lengths.iter().enumerate() {
        for i in 0..m {
            if let Some((lo, hi)) = window(len, i) {
                let row = (j * m + i) * n;
                w[row + lo..row + hi].fill(1.0 / (hi - lo) as f32);
            }
        }
    }
    Ok(Tensor::from_vec(w, (b, m, n), dev)?)
}

/// `(b, m, n)` averaging weights: output row `i` of item `j` averages frames
/// `[floor(i*L/m), ceil((i+1)*L/m))` of its `L = lengths[j]` real frames. When `L < m`, windows
/// hold one frame each and repeat, so short clips still give `m` rows.
pub fn pooling_matrix(
    lengths: &[usize],
    b: usize,
    n: usize,
    m: usize,
    dev: &Device,
) -> Result<Tensor> {
    if lengths.len() != b {
        return Err(crate::Error::Shape(format!(
            "{} lengths for a batch of {b}",
            lengths.len()
        )));
    }
    averaging_matrix(lengths, n, m, dev, |len, i| {
        let len = len.clamp(1, n);
        let lo = i * len / m;
        Some((lo, ((i + 1) * len).div_ceil(m).max(lo + 1).min(len)))
    })
}

/// Stack `(n_i, d)` items into `(b, max n, d)` with zero padding, and their lengths.
pub fn pad_items(items: &[Tensor]) -> Result<(Tensor, Vec<usize>)> {
    if items.is_empty() {
        return Err(crate::Error::Shape("no items to project".into()));
    }
    let lengths: Vec<usize> = items
        .iter()
        .map(|t| t.dim(0))
        .collect::<candle_core::Result<_>>()?;
    let n = lengths.iter().copied().max().unwrap_or(1);
    let padded = items
        .iter()
        .zip(&lengths)
        .map(|(t, &len)| {
            if len == n {
                Ok(t.clone())
            } else {
                Ok(t.pad_with_zeros(0, 0, n - len)?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((Tensor::stack(&padded, 0)?, lengths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_like_adaptive_avg_pool() -> Result<()> {
        // torch.nn.AdaptiveAvgPool1d(3)(torch.arange(7.).view(1,1,7)) = [1.0, 3.0, 5.0]
        let xs = Tensor::arange(0f32, 7., &Device::Cpu)?.reshape((1, 7, 1))?;
        let y = Reduce::Pool
            .apply(&xs, &[7], 3)?
            .0
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(y, vec![1.0, 3.0, 5.0]);
        Ok(())
    }

    #[test]
    fn padding_is_ignored_and_short_inputs_repeat() -> Result<()> {
        // Second item has 2 real frames then padding of 100s.
        let xs = Tensor::new(
            &[[[0f32], [2.], [4.], [6.]], [[1.], [3.], [100.], [100.]]],
            &Device::Cpu,
        )?;
        let y = Reduce::Pool
            .apply(&xs, &[4, 2], 4)?
            .0
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(y, vec![0., 2., 4., 6., 1., 1., 3., 3.]);
        Ok(())
    }

    #[test]
    fn concat_groups_neighbours() -> Result<()> {
        let xs = Tensor::arange(0f32, 8., &Device::Cpu)?.reshape((1, 4, 2))?;
        let r = Reduce::Concat { stride: 2 };
        assert_eq!(r.out_dim(2), 4);
        let (y, counts) = r.apply(&xs, &[4], 2)?;
        assert_eq!(counts, vec![2]);
        assert_eq!(y.dims(), &[1, 2, 4]);
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            (0..8).map(|v| v as f32).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn stack_keeps_a_rate_and_zero_pads_the_last_group() -> Result<()> {
        // Row 0: 5 real frames of 1..=5; row 1: 2 real frames then padding of 100s.
        let xs = Tensor::new(
            &[
                [[1f32], [2.], [3.], [4.], [5.]],
                [[7.], [8.], [100.], [100.], [100.]],
            ],
            &Device::Cpu,
        )?;
        let r = Reduce::Stack { n: 2 };
        let (y, counts) = r.apply(&xs, &[5, 2], 0)?;
        assert_eq!(counts, vec![3, 1]);
        assert_eq!(y.dims(), &[2, 3, 2]);
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            vec![1., 2., 3., 4., 5., 0., 7., 8., 0., 0., 0., 0.]
        );
        Ok(())
    }

    #[test]
    fn avg_pool_averages_each_window_and_the_partial_last_one() -> Result<()> {
        let xs = Tensor::new(
            &[
                [[1f32], [3.], [5.], [7.], [9.]],
                [[2.], [4.], [100.], [100.], [100.]],
            ],
            &Device::Cpu,
        )?;
        let r = Reduce::AvgPool { n: 2 };
        let (y, counts) = r.apply(&xs, &[5, 2], 0)?;
        assert_eq!(counts, vec![3, 1]);
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            vec![2., 6., 9., 3., 0., 0.]
        );
        assert_eq!(r.tokens_for(0, 7), 1);
        assert_eq!(r.tokens_for(4, 7), 2);
        Ok(())
    }
}

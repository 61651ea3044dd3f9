//! Reduce a variable number of encoder frames to a fixed number of tokens.
//!
//! A clip of 2 s and one of 20 s must both become `k` LLM tokens. `Pool` averages contiguous
//! windows (adaptive average pooling, as `torch.nn.AdaptiveAvgPool1d`); `Concat` pools to
//! `k * stride` frames and concatenates each `stride` neighbours into one wider vector, which
//! keeps finer timing at the cost of a wider projector input (Qwen2-Audio and MiniGPT-4 style).

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
}

impl Reduce {
    /// Width of one reduced token given the encoder width.
    pub fn out_dim(&self, d_enc: usize) -> usize {
        match self {
            Reduce::Pool => d_enc,
            Reduce::Concat { stride } => stride * d_enc,
        }
    }

    /// `(b, n, d)` with the real lengths of each row -> `(b, k, out_dim(d))`.
    /// Padding frames beyond `lengths[i]` never contribute.
    pub fn apply(&self, xs: &Tensor, lengths: &[usize], k: usize) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let m = match self {
            Reduce::Pool => k,
            Reduce::Concat { stride } => k * stride,
        };
        let p = pooling_matrix(lengths, b, n, m, xs.device())?;
        let pooled = p.matmul(&xs.contiguous()?)?; // (b, m, d)
        Ok(match self {
            Reduce::Pool => pooled,
            Reduce::Concat { stride } => pooled.reshape((b, k, stride * d))?,
        })
    }
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
    let mut w = vec![0f32; b * m * n];
    for (j, &len) in lengths.iter().enumerate() {
        let len = len.clamp(1, n);
        for i in 0..m {
            let lo = i * len / m;
            let hi = ((i + 1) * len).div_ceil(m).max(lo + 1).min(len);
            let inv = 1.0 / (hi - lo) as f32;
            for f in lo..hi {
                w[(j * m + i) * n + f] = inv;
            }
        }
    }
    Ok(Tensor::from_vec(w, (b, m, n), dev)?)
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
        let y = r.apply(&xs, &[4], 2)?;
        assert_eq!(y.dims(), &[1, 2, 4]);
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            (0..8).map(|v| v as f32).collect::<Vec<_>>()
        );
        Ok(())
    }
}

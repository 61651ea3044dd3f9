//! Rotary position embeddings, computed for just the positions of a forward call.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// cos/sin tables `(t, head_dim / 2)` for positions `offset .. offset + t`, as tensors and as
/// host values (which the fused decoding attention reads).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    /// The same tables on the host, shared (not copied) by every layer's sequence attention op.
    pub cos_values: Arc<[f32]>,
    pub sin_values: Arc<[f32]>,
    pub interleaved: bool,
}

impl RopeTables {
    /// `scale` > 1 stretches positions (linear RoPE scaling); `freq_factors` divides individual
    /// frequencies (Llama 3.1's `rope_freqs`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        head_dim: usize,
        theta: f64,
        scale: f64,
        freq_factors: Option<&[f32]>,
        offset: usize,
        t: usize,
        interleaved: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
                let f = f / freq_factors
                    .and_then(|ff| ff.get(i))
                    .copied()
                    .unwrap_or(1.0) as f64;
                (f / scale) as f32
            })
            .collect();
        let mut angles = Vec::with_capacity(t * half);
        for p in offset..offset + t {
            angles.extend(inv_freq.iter().map(|f| p as f32 * f));
        }
        // f32 cos and sin as candle's own ops compute them (`f32::cos`), here on the host.
        let cos_values: Arc<[f32]> = angles.iter().map(|a| a.cos()).collect();
        let sin_values: Arc<[f32]> = angles.iter().map(|a| a.sin()).collect();
        let table = |v: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, (t, half), device)?.to_dtype(dtype)?)
        };
        Ok(Self {
            cos: table(&cos_values)?,
            sin: table(&sin_values)?,
            cos_values,
            sin_values,
            interleaved,
        })
    }

    /// Rotates `(b, h, t, d)`.
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        let train = xs.track_op();
        if train && xs.dtype() != DType::F64 {
            // Training: fused forward, backward by the inverse rotation; a strided input is
            // gathered inside the op rather than copied into a tensor the graph keeps.
            return Ok(crate::fused_ops::rope(
                xs,
                &self.cos,
                &self.sin,
                self.interleaved,
            )?);
        }
        let xs = xs.contiguous()?;
        // The fused kernels have no backward: use them only when nothing upstream trains.
        Ok(match (self.interleaved, train) {
            (true, true) => candle_nn::rotary_emb::rope_i_slow(&xs, &self.cos, &self.sin)?,
            (true, false) => candle_nn::rotary_emb::rope_i(&xs, &self.cos, &self.sin)?,
            (false, true) => candle_nn::rotary_emb::rope_slow(&xs, &self.cos, &self.sin)?,
            (false, false) => candle_nn::rotary_emb::rope(&xs, &self.cos, &self.sin)?,
        })
    }
}

//! One transformer layer of the decoder: attention and the gated MLP, each behind its norm
//! with a residual; Gemma 3 adds norms after each. The decoder stacks them, gradient
//! checkpointing wraps them.

use anymal_quant::QLinear;
use candle_core::Tensor;

use crate::attention::{Attention, RowContext};
use crate::kv_cache::KvCache;
use crate::mlp::Mlp;
use crate::norm::{maybe_norm, RmsNorm};
use crate::rope::RopeTables;
use crate::Result;

/// One transformer layer. Gemma 3 adds the norms after attention and after the MLP.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub post_attn_norm: Option<RmsNorm>,
    pub ffn_norm: RmsNorm,
    pub mlp: Mlp,
    pub post_ffn_norm: Option<RmsNorm>,
    pub sliding: bool,
}

impl Block {
    /// The block's linear layers with their HF module names (relative to the block).
    pub fn linears(&self) -> [(&'static str, &QLinear); 7] {
        [
            ("self_attn.q_proj", &self.attn.q_proj),
            ("self_attn.k_proj", &self.attn.k_proj),
            ("self_attn.v_proj", &self.attn.v_proj),
            ("self_attn.o_proj", &self.attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }

    /// Mutable access to the layer named as in [`Block::linears`].
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut QLinear> {
        Some(match name {
            "self_attn.q_proj" => &mut self.attn.q_proj,
            "self_attn.k_proj" => &mut self.attn.k_proj,
            "self_attn.v_proj" => &mut self.attn.v_proj,
            "self_attn.o_proj" => &mut self.attn.o_proj,
            "mlp.gate_proj" => &mut self.mlp.gate_proj,
            "mlp.up_proj" => &mut self.mlp.up_proj,
            "mlp.down_proj" => &mut self.mlp.down_proj,
            _ => return None,
        })
    }

    pub fn loras(&self) -> Vec<&std::sync::Arc<anymal_quant::Lora>> {
        self.linears()
            .into_iter()
            .filter_map(|(_, l)| l.lora())
            .collect()
    }

    pub fn forward(
        &self,
        xs: &Tensor,
        rope: &RopeTables,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        self.forward_with(xs, |attn, h| attn.forward(h, rope, mask, cache))
    }

    /// One new position for each of the `(b, 1, d)` rows, row `i` in its own cache: see
    /// [`Attention::forward_rows`]. The norms, residuals and MLP run over all rows at once.
    pub fn forward_rows(
        &self,
        xs: &Tensor,
        rows: &[RowContext<'_>],
        caches: &mut [KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        self.forward_with(xs, |attn, h| attn.forward_rows(h, rows, caches, layer))
    }

    /// The layer around its attention, which `attend` runs on the normed input.
    fn forward_with(
        &self,
        xs: &Tensor,
        attend: impl FnOnce(&Attention, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let h = attend(&self.attn, &self.attn_norm.forward(xs)?)?;
        let h = maybe_norm(self.post_attn_norm.as_ref(), h)?;
        let xs = (xs + h)?;
        let h = self.mlp.forward(&self.ffn_norm.forward(&xs)?)?;
        let h = maybe_norm(self.post_ffn_norm.as_ref(), h)?;
        Ok((xs + h)?)
    }
}

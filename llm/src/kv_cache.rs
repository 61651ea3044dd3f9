//! Keys and values of past positions, per layer, for incremental decoding.

use candle_core::Tensor;

use crate::Result;

/// Positions added to a layer's buffers each time they fill up.
const GROW_BY: usize = 512;

/// Per layer, key and value buffers `(b, kv_heads, capacity, d)` of which the first `len`
/// positions are filled. A decoding step writes its one position in place instead of copying
/// the whole cache into a new tensor (which made each token cost O(length)).
/// Not `Clone`: the buffers are written in place, so a copy would share and corrupt them.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Positions already cached.
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|c| c.len)
            .unwrap_or(0)
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Appends `k, v` of shape `(b, kv_heads, t, d)` for `layer`, returns everything cached
    /// (views into the buffers).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let slot = &mut self.layers[layer];
        let need = slot.as_ref().map_or(0, |c| c.len) + t;
        let grow = slot.as_ref().is_none_or(|c| c.k.dim(2).unwrap_or(0) < need);
        if grow {
            let cap = need.div_ceil(GROW_BY) * GROW_BY;
            let (b, h, _, d) = k.dims4()?;
            let kb = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
            let vb = Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?;
            let len = match slot.take() {
                Some(c) => {
                    kb.slice_set(&c.k.narrow(2, 0, c.len)?.contiguous()?, 2, 0)?;
                    vb.slice_set(&c.v.narrow(2, 0, c.len)?.contiguous()?, 2, 0)?;
                    c.len
                }
                None => 0,
            };
            *slot = Some(LayerCache { k: kb, v: vb, len });
        }
        let c = slot.as_mut().expect("allocated above");
        c.k.slice_set(&k.contiguous()?, 2, c.len)?;
        c.v.slice_set(&v.contiguous()?, 2, c.len)?;
        c.len += t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

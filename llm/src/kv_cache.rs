//! Keys and values of past positions, per layer, for incremental decoding.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Storage, Tensor};

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
        let (b, h, t, d) = k.dims4()?;
        let c = self.reserve(layer, (b, h, t, d), k.dtype(), k.device())?;
        c.k.slice_set(&k.contiguous()?, 2, c.len)?;
        c.v.slice_set(&v.contiguous()?, 2, c.len)?;
        c.len += t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }

    /// Appends one position of one sequence, `k` and `v` given as `kv_heads * d` f32 values
    /// (head-major), to a CPU f32 cache, writing them into the buffers in place.
    pub fn append_position(
        &mut self,
        layer: usize,
        (kv_heads, d): (usize, usize),
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let c = self.reserve(layer, (1, kv_heads, 1, d), DType::F32, &Device::Cpu)?;
        let pos = c.len;
        c.k.inplace_op1(&WritePosition { pos, d, values: k })?;
        c.v.inplace_op1(&WritePosition { pos, d, values: v })?;
        c.len += 1;
        Ok(())
    }

    /// The filled positions of `layer` as f32 values: keys and values laid out
    /// `[kv_head][capacity][d]`, of which positions `0..len` of each head are filled. For a
    /// CPU f32 cache with one sequence (what [`Self::append_position`] writes).
    pub fn read_layer<R>(&self, layer: usize, f: impl FnOnce(CachedLayer<'_>) -> R) -> Result<R> {
        let Some(c) = self.layers.get(layer).and_then(|l| l.as_ref()) else {
            return Err(candle_core::Error::Msg(format!("layer {layer} has no cache")).into());
        };
        let (ks, kl) = c.k.storage_and_layout();
        let (vs, vl) = c.v.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) = (&*ks, &*vs)
        else {
            return Err(candle_core::Error::Msg("the cache is not CPU f32".into()).into());
        };
        let capacity = c.k.dim(2)?;
        let (k0, v0) = (kl.start_offset(), vl.start_offset());
        Ok(f(CachedLayer {
            k: &k[k0..k0 + c.k.elem_count()],
            v: &v[v0..v0 + c.v.elem_count()],
            capacity,
            len: c.len,
        }))
    }

    /// The layer's cache, with room for `t` more positions of shape `(b, h, _, d)`.
    fn reserve(
        &mut self,
        layer: usize,
        (b, h, t, d): (usize, usize, usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<&mut LayerCache> {
        let slot = &mut self.layers[layer];
        let need = slot.as_ref().map_or(0, |c| c.len) + t;
        let grow = slot.as_ref().is_none_or(|c| c.k.dim(2).unwrap_or(0) < need);
        if grow {
            let cap = need.div_ceil(GROW_BY) * GROW_BY;
            let kb = Tensor::zeros((b, h, cap, d), dtype, device)?;
            let vb = Tensor::zeros((b, h, cap, d), dtype, device)?;
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
        Ok(slot.as_mut().expect("allocated above"))
    }
}

/// One layer's cached keys and values, borrowed (see [`KvCache::read_layer`]).
pub struct CachedLayer<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub capacity: usize,
    pub len: usize,
}

impl CachedLayer<'_> {
    /// Key `(d,)` of `head` at position `pos`.
    pub fn key(&self, head: usize, pos: usize, d: usize) -> &[f32] {
        let at = (head * self.capacity + pos) * d;
        &self.k[at..at + d]
    }

    pub fn value(&self, head: usize, pos: usize, d: usize) -> &[f32] {
        let at = (head * self.capacity + pos) * d;
        &self.v[at..at + d]
    }
}

/// Writes one position (`values`: `d` floats per head) into a `(1, heads, capacity, d)`
/// buffer in place.
struct WritePosition<'a> {
    pos: usize,
    d: usize,
    values: &'a [f32],
}

impl InplaceOp1 for WritePosition<'_> {
    fn name(&self) -> &'static str {
        "kv-write-position"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(buf) = storage else {
            candle_core::bail!("kv cache: expected f32 storage")
        };
        let (_, heads, capacity, d) = layout.shape().dims4()?;
        if d != self.d || self.values.len() != heads * d || self.pos >= capacity {
            candle_core::bail!("kv cache: position {} does not fit {:?}", self.pos, layout)
        }
        let base = layout.start_offset();
        for (h, head) in self.values.chunks_exact(d).enumerate() {
            let at = base + (h * capacity + self.pos) * d;
            buf[at..at + d].copy_from_slice(head);
        }
        Ok(())
    }
}

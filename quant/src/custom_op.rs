//! Helpers for custom ops that run candle code inside their forward: turning the raw storage an
//! op receives into a (graph-free) tensor and a computed tensor back into storage.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, Device, Layout, Shape, Storage, Tensor};

/// A contiguous CPU tensor (no graph) over the bytes a custom op receives. A strided input
/// (a transposed view) is gathered into a fresh buffer here, inside the op, so that the caller
/// need not make a contiguous copy first, which the graph would keep alive until backward.
pub fn cpu_tensor(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let dims = layout.shape().dims().to_vec();
    macro_rules! build {
        ($v:expr) => {
            match layout.contiguous_offsets() {
                Some((start, end)) => Tensor::from_slice(&$v[start..end], dims, &Device::Cpu)?,
                None => Tensor::from_vec(gather($v, layout), dims, &Device::Cpu)?,
            }
        };
    }
    let t = match storage {
        CpuStorage::F32(v) => build!(v),
        CpuStorage::F16(v) => build!(v),
        CpuStorage::BF16(v) => build!(v),
        CpuStorage::F64(v) => build!(v),
        s => candle_core::bail!("custom op: unsupported input dtype {:?}", s.dtype()),
    };
    Ok(t)
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor, in row-major order; `None` (and
/// `f` not run) for any other tensor: another dtype or device, or a strided view.
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Some(f(&v[start..end])),
        _ => None,
    }
}

/// The f32 elements a custom op receives, where they are contiguous; `None` for another dtype
/// or a strided view (the op then takes its general path, e.g. through [`cpu_tensor`]).
pub fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Some(&v[start..end]),
        _ => None,
    }
}

/// The tensor itself on the CPU ([`cpu_tensor`] gathers strided input inside the op), a
/// contiguous copy elsewhere (the CUDA helpers need offset-0 contiguous storage).
pub fn contiguous_off_cpu(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() {
        Ok(xs.clone())
    } else {
        xs.contiguous()
    }
}

/// The elements of a strided view in row-major order.
fn gather<T: Copy>(v: &[T], layout: &Layout) -> Vec<T> {
    let dims = layout.shape().dims();
    let stride = layout.stride();
    let n = layout.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let rank = dims.len();
    let (last, last_stride) = (dims[rank - 1], stride[rank - 1]);
    let mut idx = vec![0usize; rank.saturating_sub(1)];
    loop {
        let base =
            layout.start_offset() + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        if last_stride == 1 {
            out.extend_from_slice(&v[base..base + last]);
        } else {
            out.extend((0..last).map(|j| v[base + j * last_stride]));
        }
        // Odometer over all but the last dimension.
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Moves a freshly computed CPU tensor's storage out as a custom op's result.
pub fn into_cpu_storage(t: Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let t = t.contiguous()?;
    let shape = t.shape().clone();
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor")
    };
    let (start, end) = layout
        .contiguous_offsets()
        .unwrap_or((0, shape.elem_count()));
    let out = match cpu {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
        CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
        CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
        s => candle_core::bail!("custom op: unsupported output dtype {:?}", s.dtype()),
    };
    Ok((out, shape))
}

/// A graph-free tensor over the CUDA storage a custom op receives (contiguous, offset 0).
pub fn cuda_tensor(storage: &CudaStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    if !layout.is_contiguous() || layout.start_offset() != 0 {
        candle_core::bail!("custom op input must be contiguous from offset 0, got {layout:?}")
    }
    let s = storage.try_clone(layout)?;
    Ok(Tensor::from_storage(
        Storage::Cuda(s),
        layout.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}

/// The CUDA storage of a freshly computed tensor, as a custom op's result.
pub fn into_cuda_storage(t: Tensor) -> candle_core::Result<(CudaStorage, Shape)> {
    let t = t.contiguous()?;
    let shape = t.shape().clone();
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("expected a CUDA tensor")
    };
    if layout.start_offset() != 0 {
        candle_core::bail!("custom op output must start at offset 0")
    }
    Ok((s.try_clone(layout)?, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_input_is_gathered_in_order() {
        let t = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        for v in [
            t.transpose(1, 2).unwrap(),
            t.transpose(0, 2).unwrap(),
            t.narrow(2, 1, 2).unwrap(),
            t.clone(),
        ] {
            let (s, l) = v.storage_and_layout();
            let Storage::Cpu(cpu) = &*s else { panic!() };
            let got = cpu_tensor(cpu, l).unwrap();
            let want = v.contiguous().unwrap();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }
}

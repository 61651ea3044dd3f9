//! Helpers for custom ops that run candle code inside their forward: turning the raw storage an
//! op receives into a (graph-free) tensor and a computed tensor back into storage.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, Device, Layout, Shape, Storage, Tensor};

/// A contiguous CPU tensor (no graph) over the bytes a custom op receives.
pub fn cpu_tensor(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let dims = layout.shape().dims().to_vec();
    let n = layout.shape().elem_count();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("custom op input must be contiguous, got {layout:?}")
    };
    debug_assert_eq!(end - start, n);
    let t = match storage {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
        CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
        CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
        s => candle_core::bail!("custom op: unsupported input dtype {:?}", s.dtype()),
    };
    Ok(t)
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

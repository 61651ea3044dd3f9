//! A frozen linear layer over quantized weights whose backward reaches its input.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::custom_op::contiguous_f32;
use crate::error::matrix_dims;
use crate::int8_gemm::Compute;
use crate::lora::Lora;
use crate::nf4::{Nf4MatMul, Nf4Tensor};
use crate::{Error, QuantType, Result};

/// Up to this many rows multiplied together for inference on the CPU give each row exactly,
/// bit for bit, what it gets alone, so that a batch of sequences decoded together
/// (`anymal_llm::BatchGenerator`) produces each sequence's own tokens. Below every row count
/// at which candle switches kernels (AMX tiles from 32 rows, QLinear's dense GEMM from 128).
pub const EXACT_ROWS: usize = 16;

/// Where a frozen weight (out, in) lives.
#[derive(Clone, Debug)]
pub enum QWeight {
    /// A GGUF block type, multiplied by candle's quantized kernels.
    Ggml(Arc<QTensor>),
    /// QLoRA NF4.
    Nf4(Arc<Nf4Tensor>),
    /// Unquantized (F32/F16/BF16 weights): a plain constant tensor, so autograd handles it, and
    /// it never becomes a `Var`, so it never gets a gradient.
    Dense(Tensor),
}

/// `y = x W^T (+ b)` with W frozen and quantized, plus an optional trainable LoRA update.
///
/// Input `(.., in)`, output `(.., out)`. The gradient with respect to the input is exact for the
/// stored (quantized) weights: `dx = dy @ dequant(W)` (with [`Compute::F32`], the default;
/// [`Compute::Int8`] rounds it as `int8_gemm` says). Weights and bias never receive a gradient;
/// a LoRA's `A` and `B` do.
#[derive(Clone, Debug)]
pub struct QLinear {
    weight: QWeight,
    bias: Option<Tensor>,
    out_features: usize,
    in_features: usize,
    lora: Option<Arc<Lora>>,
    compute: Compute,
}

impl QLinear {
    /// Wraps a GGUF tensor of shape (out, in). F32/F16/BF16 tensors are kept dense.
    pub fn from_qtensor(w: QTensor, bias: Option<Tensor>) -> Result<Self> {
        Self::from_arc(Arc::new(w), bias)
    }

    pub fn from_arc(w: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let shape = matrix_dims(w.shape().dims())?;
        let weight = match w.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => QWeight::Dense(
                w.dequantize(&w.device())?
                    .to_dtype(dense_dtype(w.dtype()))?,
            ),
            _ => QWeight::Ggml(w),
        };
        Ok(Self::frozen(weight, bias, shape))
    }

    /// Quantizes a dense weight (out, in) to `ty`. Rows that `ty`'s block does not tile fall back
    /// to a smaller block of the same family (see [`QuantType::fallback_for_row`]).
    pub fn quantize(w: &Tensor, bias: Option<Tensor>, ty: QuantType) -> Result<Self> {
        let shape = matrix_dims(w.dims())?;
        let ty = ty.fallback_for_row(shape.1);
        let weight = match ty {
            QuantType::Nf4 { double_quant } => {
                QWeight::Nf4(Arc::new(Nf4Tensor::quantize(w, double_quant)?))
            }
            QuantType::Ggml(t @ (GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)) => {
                QWeight::Dense(w.to_dtype(dense_dtype(t))?)
            }
            QuantType::Ggml(t) => {
                let w32 = w.to_dtype(DType::F32)?.contiguous()?;
                QWeight::Ggml(Arc::new(QTensor::quantize(&w32, t)?))
            }
        };
        Ok(Self::frozen(weight, bias, shape))
    }

    /// A layer of `(out, in)` `shape` without an adapter.
    fn frozen(weight: QWeight, bias: Option<Tensor>, shape: (usize, usize)) -> Self {
        let (out_features, in_features) = shape;
        Self {
            weight,
            bias,
            out_features,
            in_features,
            lora: None,
            compute: Compute::default(),
        }
    }

    /// Re-quantizes to `ty` (no-op when already of that type). Used to move GGUF types without a
    /// fast CPU kernel (Q4_1, Q5_0, ...) to one that has it.
    pub fn requantize(&self, ty: QuantType) -> Result<Self> {
        if self.quant_type() == ty.fallback_for_row(self.in_features) {
            return Ok(self.clone());
        }
        let w = self.dequantize()?;
        Self::quantize(&w, self.bias.clone(), ty)
    }

    /// `dequant(W) + scale * B A` quantized to `ty`, without the adapter: the layer LoRA
    /// merging produces. Without an adapter, the weight re-quantized to `ty`.
    pub fn merge_lora(&self, ty: QuantType) -> Result<Self> {
        let w = match &self.lora {
            Some(l) => (self.dequantize()? + l.delta_weight()?)?,
            None => self.dequantize()?,
        };
        Self::quantize(&w, self.bias.clone(), ty)
    }

    pub fn weight(&self) -> &QWeight {
        &self.weight
    }

    /// The same frozen layer with `lora` beside it (None removes one). Shapes must match.
    pub fn with_lora(&self, lora: Option<Arc<Lora>>) -> Result<Self> {
        if let Some(l) = &lora {
            let (r, i) = l.a.dims2()?;
            let (o, rb) = l.b.dims2()?;
            if i != self.in_features || o != self.out_features || r != rb {
                let (out, inp) = self.shape();
                return Err(Error::ShapeMismatch {
                    what: "LoRA A / B".into(),
                    got: format!("({r}, {i}) / ({o}, {rb})"),
                    expected: format!("(r, {inp}) / ({out}, r) to fit a ({out}, {inp}) layer"),
                });
            }
        }
        Ok(Self {
            lora,
            ..self.clone()
        })
    }

    /// The arithmetic of the frozen product for many rows on the CPU (see [`Compute`]).
    pub fn compute(&self) -> Compute {
        self.compute
    }

    pub fn set_compute(&mut self, compute: Compute) {
        self.compute = compute;
    }

    pub fn lora(&self) -> Option<&Arc<Lora>> {
        self.lora.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// (out, in)
    pub fn shape(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }

    pub fn quant_type(&self) -> QuantType {
        match &self.weight {
            QWeight::Ggml(w) => QuantType::Ggml(w.dtype()),
            QWeight::Nf4(w) => QuantType::Nf4 {
                double_quant: w.double_quant(),
            },
            QWeight::Dense(w) => QuantType::Ggml(match w.dtype() {
                DType::F16 => GgmlDType::F16,
                DType::BF16 => GgmlDType::BF16,
                _ => GgmlDType::F32,
            }),
        }
    }

    /// Bytes the weight occupies (bias excluded).
    pub fn storage_size_in_bytes(&self) -> usize {
        match &self.weight {
            QWeight::Ggml(w) => w.storage_size_in_bytes(),
            QWeight::Nf4(w) => w.storage_size_in_bytes(),
            QWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
        }
    }

    pub fn device(&self) -> Device {
        match &self.weight {
            QWeight::Ggml(w) => w.device(),
            QWeight::Nf4(_) => Device::Cpu,
            QWeight::Dense(w) => w.device().clone(),
        }
    }

    /// The weight as an f32 tensor (out, in). Allocates: meant for backward, merging and tests.
    pub fn dequantize(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            QWeight::Ggml(w) => w.dequantize(&w.device())?,
            QWeight::Nf4(w) => w.dequantize(&Device::Cpu)?,
            QWeight::Dense(w) => w.to_dtype(DType::F32)?,
        })
    }

    /// Output rows `rows` of the weight as an f32 tensor `(rows.len(), in)`, dequantizing only
    /// those (CPU GGUF and dense weights; NF4 dequantizes the whole layer first).
    pub fn dequantize_rows(&self, rows: std::ops::Range<usize>) -> Result<Tensor> {
        let (r0, len) = (rows.start, rows.len());
        Ok(match &self.weight {
            QWeight::Ggml(w) if w.device().is_cpu() => {
                let v = crate::dequant_rows::dequantize_rows(w, rows)?;
                Tensor::from_vec(v, (len, self.in_features), &Device::Cpu)?
            }
            QWeight::Dense(w) => w.narrow(0, r0, len)?.to_dtype(DType::F32)?,
            _ => self.dequantize()?.narrow(0, r0, len)?,
        })
    }

    /// `(.., in) -> (.., out)`. For inference on the CPU, up to [`EXACT_ROWS`] rows give each
    /// row exactly the result it gets alone (see there).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(rows) = self.rows_to_run_alone(xs) {
            let (lead, k) = split_last(xs.dims());
            let x2 = xs.reshape(((), k))?;
            let ys = (0..rows)
                .map(|i| self.forward(&x2.narrow(0, i, 1)?))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&ys, 0)?.reshape(with_last(&lead, self.out_features))?);
        }
        if let Some(l) = self.fused_lora(xs) {
            return Ok(xs.apply_op3(
                l.a.as_tensor(),
                l.b.as_tensor(),
                crate::lora_matmul::QLoraMatMul {
                    frozen: self.frozen_op(),
                    scale: l.scale,
                    dropout: l.draw_dropout(),
                },
            )?);
        }
        let ys = match &self.weight {
            QWeight::Dense(w) => {
                let w = w.to_dtype(xs.dtype())?;
                let (lead, k) = split_last(xs.dims());
                let ys = xs.reshape(((), k))?.matmul(&w.t()?)?;
                ys.reshape(with_last(&lead, self.out_features))?
            }
            // On the CPU a strided input (attention's transposed output) is gathered inside
            // the op, so no contiguous copy is made for the graph to keep until backward.
            _ => crate::custom_op::contiguous_off_cpu(xs)?.apply_op1(self.frozen_op())?,
        };
        let ys = self.add_bias(ys)?;
        Ok(match &self.lora {
            Some(l) => {
                let (lead, k) = split_last(xs.dims());
                let delta = l.forward_2d(&xs.reshape(((), k))?)?;
                (ys + delta.reshape(with_last(&lead, self.out_features))?)?
            }
            None => ys,
        })
    }

    fn frozen_op(&self) -> QMatMulWithGrad {
        QMatMulWithGrad {
            weight: self.weight.clone(),
            compute: self.compute,
        }
    }

    fn add_bias(&self, ys: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(b) => ys.broadcast_add(&b.to_dtype(ys.dtype())?)?,
            None => ys,
        })
    }

    /// Several layers of one input (a block's q, k and v; its gate and up), each output
    /// exactly what that layer's [`Self::forward`] gives. For inference on the CPU with fewer
    /// rows than the dense path takes (decoding), layers of one GGUF type with a SIMD kernel
    /// and no adapter run in one call of the kernels (`cpu_kernels::matmul_many`: the input
    /// quantized once, one dispatch of the thread pool); anything else runs layer by layer.
    pub fn forward_many(layers: &[&QLinear], xs: &Tensor) -> Result<Vec<Tensor>> {
        let (lead, k) = split_last(xs.dims());
        let rows = xs.elem_count() / k.max(1);
        let weights: Option<Vec<&QTensor>> = layers
            .iter()
            .map(|l| match &l.weight {
                QWeight::Ggml(w) if l.lora.is_none() => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        let together = weights.filter(|ws| {
            ws.len() > 1
                && ws
                    .iter()
                    .all(|w| crate::cpu_kernels::has_kernel(w.dtype()) && w.device().is_cpu())
                && (1..DENSE_FORWARD_MIN_ROWS).contains(&rows)
                && !xs.track_op()
                && xs.dtype() == DType::F32
                && xs.device().is_cpu()
        });
        let Some(ws) = together else {
            return layers.iter().map(|l| l.forward(xs)).collect();
        };
        let x: Vec<f32> = xs.flatten_all()?.to_vec1()?;
        let Some(ys) = crate::cpu_kernels::matmul_many(&ws, &x, rows)? else {
            return layers.iter().map(|l| l.forward(xs)).collect();
        };
        layers
            .iter()
            .zip(ys)
            .map(|(l, y)| {
                let y = Tensor::from_vec(y, with_last(&lead, l.out_features), xs.device())?;
                l.add_bias(y)
            })
            .collect()
    }

    /// The number of rows of `xs` when [`Self::forward`] must run them one by one to keep
    /// [`EXACT_ROWS`]' promise: a few inference rows on the CPU through a product whose
    /// arithmetic may depend on the row count. candle's Q6_K kernel is a GEMV for one row and
    /// a tiled kernel for more; dense and NF4 weights and a LoRA's update go through the f32
    /// GEMM, whose blocking depends on the shape. The other GGUF types run every row through
    /// the same dot product whatever the count (checked for every type by
    /// `tests/row_exact.rs`).
    fn rows_to_run_alone(&self, xs: &Tensor) -> Option<usize> {
        let (_, k) = split_last(xs.dims());
        let rows = xs.elem_count() / k.max(1);
        let exact_together = match &self.weight {
            QWeight::Ggml(w) => !matches!(
                w.dtype(),
                GgmlDType::Q6K | GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            ),
            QWeight::Nf4(_) | QWeight::Dense(_) => false,
        } && self.lora.is_none();
        let few = (2..=EXACT_ROWS).contains(&rows);
        // A checkpointed block's forward runs on an input that tracks nothing, yet it trains:
        // a training adapter's rows stay together (one dropout mask, as in the re-run).
        let inference = !xs.track_op() && !self.lora.as_ref().is_some_and(|l| l.is_training());
        (few && !exact_together && inference && xs.device().is_cpu()).then_some(rows)
    }

    /// Whether [`Self::forward`] takes the fused frozen + LoRA op: while training an adapter
    /// on a quantized CPU layer with f32 activations (what `anymal tune` does); anything else
    /// composes the update from candle ops.
    fn fused_lora(&self, xs: &Tensor) -> Option<&Arc<Lora>> {
        let l = self.lora.as_ref()?;
        let fits = l.is_training()
            && self.bias.is_none()
            && xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && l.a.as_tensor().dtype() == DType::F32
            && !matches!(self.weight, QWeight::Dense(_));
        fits.then_some(l)
    }
}

impl candle_core::Module for QLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(QLinear::forward(self, xs)?)
    }
}

fn dense_dtype(t: GgmlDType) -> DType {
    match t {
        GgmlDType::F16 => DType::F16,
        GgmlDType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

fn split_last(dims: &[usize]) -> (Vec<usize>, usize) {
    let (last, lead) = dims
        .split_last()
        .map(|(l, r)| (*l, r.to_vec()))
        .unwrap_or((0, vec![]));
    (lead, last)
}

fn with_last(lead: &[usize], last: usize) -> Vec<usize> {
    let mut d = lead.to_vec();
    d.push(last);
    d
}

/// Rows of a `(.., k)` input: every dimension but the last.
fn rows(layout: &Layout) -> usize {
    let dims = layout.shape().dims();
    dims[..dims.len().saturating_sub(1)].iter().product()
}

/// Rows from which the CPU forward dequantizes the layer and runs an f32 GEMM.
const DENSE_FORWARD_MIN_ROWS: usize = 128;

/// The quantized matmul as a custom op with a backward. Forward: candle's quantized kernel (or
/// NF4's dequantize-and-multiply). Backward: `grad @ dequant(W)`, dequantizing this one layer
/// just for this call. With [`Compute::Int8`], many rows of a type `int8_gemm` takes go
/// through its int8 kernel both ways.
struct QMatMulWithGrad {
    weight: QWeight,
    compute: Compute,
}

impl QMatMulWithGrad {
    /// The GGUF weight when this op's products go through `int8_gemm`.
    fn int8_weight(&self) -> Option<&QTensor> {
        match &self.weight {
            QWeight::Ggml(w)
                if self.compute == Compute::Int8
                    && w.device().is_cpu()
                    && crate::int8_gemm::supports(w.dtype(), w.shape().dims2().ok()?) =>
            {
                Some(w)
            }
            _ => None,
        }
    }
}

impl CustomOp1 for QMatMulWithGrad {
    fn name(&self) -> &'static str {
        "qlinear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if !layout.is_contiguous() {
            let x = crate::custom_op::cpu_tensor(storage, layout)?;
            let (s, l) = x.storage_and_layout();
            let candle_core::Storage::Cpu(c) = &*s else {
                candle_core::bail!("qlinear: expected CPU storage")
            };
            return self.cpu_fwd(c, l);
        }
        if let (Some(w), Some(x)) = (self.int8_weight(), contiguous_f32(storage, layout)) {
            if rows(layout) >= DENSE_FORWARD_MIN_ROWS {
                let (lead, _) = split_last(layout.shape().dims());
                if let Some(y) = crate::int8_gemm::forward(w, x, rows(layout))? {
                    return Ok((
                        CpuStorage::F32(y),
                        with_last(&lead, w.shape().dims2()?.0).into(),
                    ));
                }
            }
        }
        match &self.weight {
            // Many rows (training batches, long prompts): candle's quantized CPU kernels take
            // one dot product per (row, column), while dequantizing this one layer and running
            // the blocked f32 GEMM amortizes over the rows. Measured on the 2-core AVX2 machine:
            // SmolLM2 Q8_0 alignment step forward 3.0 s -> 1.25 s; few rows (generation)
            // keep the quantized kernel, which wins there.
            QWeight::Ggml(w) if rows(layout) >= DENSE_FORWARD_MIN_ROWS => {
                let x = crate::custom_op::cpu_tensor(storage, layout)?;
                let wd = w.dequantize(&candle_core::Device::Cpu)?;
                let (n, k) = wd.dims2()?;
                let (lead, _) = split_last(x.dims());
                let y = x.reshape(((), k))?.matmul(&wd.t()?)?;
                crate::custom_op::into_cpu_storage(y.reshape(with_last(&lead, n))?)
            }
            // Few rows on a type candle multiplies with scalar code: our SIMD kernels.
            // The input is contiguous here (see above): its f32 slice is read in place.
            QWeight::Ggml(w) if crate::cpu_kernels::has_kernel(w.dtype()) => {
                let Some(x) = contiguous_f32(storage, layout) else {
                    return w.as_ref().cpu_fwd(storage, layout);
                };
                let (lead, _) = split_last(layout.shape().dims());
                match crate::cpu_kernels::matmul(w, x, rows(layout))? {
                    Some(y) => Ok((
                        CpuStorage::F32(y),
                        with_last(&lead, w.shape().dims2()?.0).into(),
                    )),
                    None => w.as_ref().cpu_fwd(storage, layout),
                }
            }
            QWeight::Ggml(w) => w.as_ref().cpu_fwd(storage, layout),
            QWeight::Nf4(w) => Nf4MatMul(w).cpu_fwd(storage, layout),
            QWeight::Dense(_) => candle_core::bail!("dense weights do not use the qlinear op"),
        }
    }

    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match &self.weight {
            QWeight::Ggml(w) => w.as_ref().cuda_fwd(storage, layout),
            _ => candle_core::bail!("qlinear: NF4 weights run on the CPU only for now"),
        }
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if let Some(w) = self
            .int8_weight()
            .filter(|_| grad_res.dtype() == DType::F32)
        {
            let (n, k) = w.shape().dims2()?;
            let (lead, _) = split_last(grad_res.dims());
            let g: Vec<f32> = grad_res.flatten_all()?.to_vec1()?;
            if let Some(dx) = crate::int8_gemm::input_grad(w, &g, g.len() / n)? {
                let dx = Tensor::from_vec(dx, with_last(&lead, k), arg.device())?;
                return Ok(Some(dx.to_dtype(arg.dtype())?));
            }
        }
        let w = match &self.weight {
            QWeight::Ggml(w) => w.dequantize(arg.device())?,
            QWeight::Nf4(w) => w.dequantize(arg.device())?,
            QWeight::Dense(w) => w.clone(),
        };
        let w = w.to_dtype(grad_res.dtype())?;
        let (n, k) = w.dims2()?;
        let (lead, _) = split_last(grad_res.dims());
        let g = grad_res.contiguous()?.reshape(((), n))?.matmul(&w)?;
        Ok(Some(g.reshape(with_last(&lead, k))?.to_dtype(arg.dtype())?))
    }
}

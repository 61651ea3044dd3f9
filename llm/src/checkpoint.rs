//! Gradient checkpointing: a block whose activations are recomputed during backward.
//!
//! candle keeps every intermediate of the forward graph until backward. Wrapped in this op, a
//! block's forward runs on a detached copy of its input, so none of its intermediates are kept;
//! its backward re-runs the block with a fresh graph and back-propagates through that. Memory
//! drops from all layers' activations to one layer's (plus each layer's input), for one extra
//! forward.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var};

use crate::block::Block;
use crate::rope::RopeTables;

pub(crate) struct CheckpointedBlock {
    block: Arc<Block>,
    rope: RopeTables,
    mask: Option<Tensor>,
}

impl CheckpointedBlock {
    pub fn new(block: Arc<Block>, rope: RopeTables, mask: Option<Tensor>) -> Self {
        Self { block, rope, mask }
    }

    fn run(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self
            .block
            .forward(xs, &self.rope, self.mask.as_ref(), None)?)
    }
}

impl CustomOp1 for CheckpointedBlock {
    fn name(&self) -> &'static str {
        "checkpointed-block"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // A tensor built from raw storage tracks no graph: the block's intermediates are freed
        // as soon as it returns.
        let xs = anymal_quant::custom_op::cpu_tensor(storage, layout)?;
        anymal_quant::custom_op::into_cpu_storage(self.run(&xs)?)
    }

    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let xs = anymal_quant::custom_op::cuda_tensor(storage, layout)?;
        anymal_quant::custom_op::into_cuda_storage(self.run(&xs)?)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let x = Var::from_tensor(&arg.detach())?;
        let y = self.run(x.as_tensor())?;
        // d/dx sum(y * g) = J^T g: the vector-Jacobian product autograd computes for us.
        let grads = (y * grad_res.detach())?.sum_all()?.backward()?;
        // The same pass computed the block's LoRA gradients; this op can only return the
        // input's, so they go to the adapters' side store (see anymal_quant::Lora).
        for lora in self.block.loras() {
            lora.add_pending_grads(grads.get(lora.a.as_tensor()), grads.get(lora.b.as_tensor()))?;
        }
        Ok(grads.get(x.as_tensor()).cloned())
    }
}

//! Gradient checkpointing: a block whose activations are recomputed during backward.
//!
//! candle keeps every intermediate of the forward graph until backward. Wrapped in this op, a
//! block's forward runs on a detached copy of its input, so none of its intermediates are kept;
//! its backward re-runs the block with a fresh graph and back-propagates through that. Memory
//! drops from all layers' activations to one layer's (plus each layer's input), for one extra
//! forward. The re-run draws the LoRA dropout masks the first run drew: the op notes where
//! each adapter's dropout stream stood and rewinds it for the re-run.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var};

use crate::block::Block;
use crate::rope::RopeTables;

pub(crate) struct CheckpointedBlock {
    block: Arc<Block>,
    rope: RopeTables,
    mask: Option<Tensor>,
    /// Where each of the block's adapters' dropout streams stood before the forward.
    dropout_positions: Mutex<Vec<u64>>,
}

impl CheckpointedBlock {
    pub fn new(block: Arc<Block>, rope: RopeTables, mask: Option<Tensor>) -> Self {
        Self {
            block,
            rope,
            mask,
            dropout_positions: Mutex::new(Vec::new()),
        }
    }

    /// The block's forward; notes the dropout streams' positions first.
    fn run_first(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        *self.positions() = self
            .block
            .loras()
            .iter()
            .map(|l| l.dropout_position())
            .collect();
        self.run(xs)
    }

    /// The forward again, with the dropout masks of [`Self::run_first`]; the streams go on from
    /// where they were.
    fn rerun(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let loras = self.block.loras();
        let now: Vec<u64> = loras.iter().map(|l| l.dropout_position()).collect();
        for (l, &p) in loras.iter().zip(self.positions().iter()) {
            l.rewind_dropout(p);
        }
        let y = self.run(xs);
        for (l, p) in loras.iter().zip(now) {
            l.rewind_dropout(p);
        }
        y
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.dropout_positions
            .lock()
            .expect("checkpoint dropout positions poisoned")
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
        anymal_quant::custom_op::into_cpu_storage(self.run_first(&xs)?)
    }

    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let xs = anymal_quant::custom_op::cuda_tensor(storage, layout)?;
        anymal_quant::custom_op::into_cuda_storage(self.run_first(&xs)?)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let x = Var::from_tensor(&arg.detach())?;
        let y = self.rerun(x.as_tensor())?;
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

use std::collections::BTreeMap;

use anyhow::Context;
use anymal_llm::config::LlmConfig;
use anymal_llm::loader::{read_gguf, resolve_model_ref};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A GGUF file, an HF folder, a hub id in the local HF cache, or a fetched model name.
    pub model: String,
    /// Batch size for the training-memory estimate.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Sequence length (projected modality tokens + text) for the training-memory estimate.
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
}

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let path = resolve_model_ref(&a.model)?;
    let (cfg, types, params, bytes) = if path.is_dir() {
        let cfg = LlmConfig::from_hf_json(&path.join("config.json"))?;
        let (types, params, bytes) = safetensors_summary(&path)?;
        (cfg, types, params, bytes)
    } else {
        let (content, _) = read_gguf(&path)?;
        let cfg = LlmConfig::from_gguf(&path, &content.metadata)?;
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        let (mut params, mut bytes) = (0usize, 0usize);
        for info in content.tensor_infos.values() {
            *types.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
            let n = info.shape.elem_count();
            params += n;
            bytes += n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        }
        (cfg, types, params, bytes)
    };
    println!("model        {}", path.display());
    println!("architecture {}", cfg.arch.name());
    println!(
        "shape        {} layers, hidden {}, ffn {}, {} heads ({} kv) x {}, vocab {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    if let Some(w) = cfg.sliding_window {
        println!(
            "attention    sliding window {w} on 5 of every {} layers",
            cfg.sliding_window_pattern
        );
    }
    println!(
        "rope         base {} (local {}), interleaved: {}",
        cfg.rope_theta, cfg.rope_local_theta, cfg.rope_interleaved
    );
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
    println!("tensors      {}", types.join(", "));
    println!("parameters   {:.1} M", params as f64 / 1e6);
    println!(
        "size         {:.1} MiB ({:.2} bits/param)",
        mib(bytes),
        bytes as f64 * 8.0 / params.max(1) as f64
    );
    let m = TrainMemory::estimate(&cfg, bytes, a.batch, a.seq);
    println!(
        "adapter training estimate (batch {}, {} tokens each, f32 activations):",
        a.batch, a.seq
    );
    println!("  frozen weights          {:8.1} MiB", mib(m.weights));
    println!(
        "  activations kept        {:8.1} MiB  ({:.1} MiB with --gradient-checkpointing)",
        mib(m.activations),
        mib(m.activations_checkpointed)
    );
    println!(
        "  logits + their grads    {:8.1} MiB  (all positions)",
        mib(m.logits)
    );
    println!(
        "  backward scratch        {:8.1} MiB  (one dequantized layer)",
        mib(m.dequant_scratch)
    );
    println!("  total                   {:8.1} MiB", mib(m.total()));
    Ok(())
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A first-order model of what adapter training holds at its peak: the frozen weights, every
/// intermediate autograd keeps for backward, the logits and their gradient, and one weight
/// dequantized during backward. Optimizer state of an adapter is small and not counted here.
pub struct TrainMemory {
    pub weights: usize,
    pub activations: usize,
    pub activations_checkpointed: usize,
    pub logits: usize,
    pub dequant_scratch: usize,
}

impl TrainMemory {
    pub fn estimate(cfg: &LlmConfig, weight_bytes: usize, batch: usize, seq: usize) -> Self {
        let bt = batch * seq;
        let (d, f, h, kv, hd) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        // Per layer, in f32 elements: norms and residuals (~4d), q/k/v/o and rotations
        // (~3 h*hd + 4 kv*hd), attention scores and probabilities (2 h*t per token), the MLP's
        // gate, up, activation and product (4f).
        let per_token = 4 * d + 3 * h * hd + 4 * kv * hd + 2 * h * seq + 4 * f;
        let activations = cfg.num_layers * bt * per_token * 4;
        let activations_checkpointed = (cfg.num_layers * bt * d + bt * per_token) * 4;
        let logits = 2 * bt * cfg.vocab_size * 4;
        let dequant_scratch = cfg.vocab_size.max(f).max(h * hd) * d * 4;
        Self {
            weights: weight_bytes,
            activations,
            activations_checkpointed,
            logits,
            dequant_scratch,
        }
    }

    pub fn total(&self) -> usize {
        self.weights + self.activations + self.logits + self.dequant_scratch
    }
}

fn safetensors_summary(
    dir: &std::path::Path,
) -> anyhow::Result<(BTreeMap<String, usize>, usize, usize)> {
    let mut types = BTreeMap::new();
    let (mut params, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&p) }
            .with_context(|| format!("{}: invalid safetensors", p.display()))?;
        for (_, view) in st.tensors() {
            let n: usize = view.shape().iter().product();
            *types.entry(format!("{:?}", view.dtype())).or_default() += 1;
            params += n;
            bytes += view.data().len();
        }
    }
    Ok((types, params, bytes))
}

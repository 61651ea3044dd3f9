use std::collections::BTreeMap;

use anyhow::Context;
use anymal_llm::config::LlmConfig;
use anymal_llm::loader::{read_gguf, resolve_model_ref};

use crate::memory_model::{estimate, LoraTargets, ModelShape, TrainSetup};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A GGUF file, an HF folder, a hub id in the local HF cache, a fetched model name, or a
    /// named shape for planning (llama2-7b, llama2-13b, llama2-70b; weights at --bits).
    pub model: Option<String>,
    /// Take the training set-up (model, batch, tokens, labels, checkpointing) from an
    /// alignment recipe; flags given as well override it.
    #[arg(long)]
    pub recipe: Option<std::path::PathBuf>,
    /// Batch size for the training-memory estimate [default: 8].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sample (projected modality tokens + text) [default: 64].
    #[arg(long)]
    pub seq: Option<usize>,
    /// Label positions per sample, where the head runs [default: half of --seq].
    #[arg(long)]
    pub labels: Option<usize>,
    /// Recompute each block in backward instead of keeping its activations.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// LoRA rank trained alongside the projector (0: none).
    #[arg(long, default_value_t = 0)]
    pub lora_r: usize,
    /// LoRA targets: qv or all-linear.
    #[arg(long, default_value = "qv")]
    pub lora_targets: String,
    /// Width of the encoder features the Linear projector takes.
    #[arg(long, default_value_t = 1024)]
    pub projector_in: usize,
    /// Estimate for a CUDA GPU: bf16 activations and a CUDA context instead of the CPU's f32
    /// and process baseline.
    #[arg(long)]
    pub cuda: bool,
    /// Bits per weight for a named shape (4.5: Q4K; 4.13: NF4 with double quantization).
    #[arg(long, default_value_t = 4.5)]
    pub bits: f64,
}

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let recipe = match &a.recipe {
        Some(p) => Some(crate::recipe::AlignRecipe::load(p, &[])?),
        None => None,
    };
    let model_ref = match (&a.model, &recipe) {
        (Some(m), _) => m.clone(),
        (None, Some(r)) => r.llm.model.clone(),
        (None, None) => anyhow::bail!("give a MODEL or --recipe"),
    };
    let shape = match ModelShape::named(&model_ref, a.bits) {
        Some(s) => {
            println!(
                "model        {} (named shape: {} layers, hidden {}, ffn {}, {} heads ({} kv), vocab {}; {:.1} B parameters at {} bits)",
                s.name, s.layers, s.hidden, s.ffn, s.heads, s.kv_heads, s.vocab,
                s.params() as f64 / 1e9, a.bits
            );
            s
        }
        None => describe_file(&model_ref)?,
    };
    // Recipe first, flags over it, then defaults.
    let (r_batch, r_seq, r_labels, r_ckpt) = match &recipe {
        Some(r) => (
            Some(r.train.batch_size),
            Some(r.projector.num_tokens + r.data.max_text_tokens),
            Some(r.data.max_text_tokens),
            r.llm.gradient_checkpointing,
        ),
        None => (None, None, None, false),
    };
    let batch = a.batch.or(r_batch).unwrap_or(8);
    let seq = a.seq.or(r_seq).unwrap_or(64);
    let labels = a.labels.or(r_labels).unwrap_or(seq / 2).min(seq);
    let lora = match a.lora_r {
        0 => None,
        r => Some((
            r,
            match a.lora_targets.as_str() {
                "qv" => LoraTargets::QV,
                "all-linear" => LoraTargets::AllLinear,
                t => anyhow::bail!("--lora-targets: '{t}' is not qv or all-linear"),
            },
        )),
    };
    let setup = TrainSetup {
        batch,
        seq,
        labels,
        gradient_checkpointing: a.gradient_checkpointing || r_ckpt,
        act_bytes: if a.cuda { 2 } else { 4 },
        projector_params: a.projector_in * shape.hidden + shape.hidden,
        lora,
        cuda: a.cuda,
    };
    let m = estimate(&shape, &setup);
    println!(
        "adapter training estimate ({}; batch {batch} x {seq} tokens, {labels} labelled; {} activations{}{}):",
        if a.cuda { "CUDA" } else { "CPU" },
        if a.cuda { "bf16" } else { "f32" },
        if setup.gradient_checkpointing { ", gradient checkpointing" } else { "" },
        match lora {
            Some((r, t)) => format!(", LoRA r={r} on {}", if t == LoraTargets::QV { "q,v" } else { "all linear layers" }),
            None => String::new(),
        }
    );
    println!("  frozen weights          {:9.1} MiB", mib(m.weights));
    println!(
        "  adapters + AdamW        {:9.1} MiB  ({:.2} M trainable parameters: value, grad, 2 moments)",
        mib(m.adapter_state),
        m.trainable_params as f64 / 1e6
    );
    println!("  activations kept        {:9.1} MiB", mib(m.activations));
    println!("  fused head + loss       {:9.1} MiB", mib(m.head));
    println!(
        "  backward scratch        {:9.1} MiB  (one layer's gradients, one dequantized weight)",
        mib(m.backward_scratch)
    );
    println!(
        "  runtime                 {:9.1} MiB  ({})",
        mib(m.runtime),
        if a.cuda {
            "CUDA context, cuBLAS workspace"
        } else {
            "process, tokenizer"
        }
    );
    println!(
        "  total                   {:9.1} MiB  ({:.1} GiB)",
        mib(m.total()),
        m.total() as f64 / (1u64 << 30) as f64
    );
    if !setup.gradient_checkpointing {
        let mut c = setup.clone();
        c.gradient_checkpointing = true;
        let mc = estimate(&shape, &c);
        println!(
            "  with --gradient-checkpointing: activations {:.1} MiB, total {:.1} MiB ({:.1} GiB)",
            mib(mc.activations),
            mib(mc.total()),
            mc.total() as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}

/// Prints what the file holds; returns its shape.
fn describe_file(model: &str) -> anyhow::Result<ModelShape> {
    let path = resolve_model_ref(model)?;
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
    Ok(ModelShape {
        name: model.to_string(),
        layers: cfg.num_layers,
        hidden: cfg.hidden_size,
        ffn: cfg.intermediate_size,
        heads: cfg.num_heads,
        kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
        vocab: cfg.vocab_size,
        post_norms: cfg.arch == anymal_llm::Arch::Gemma3,
        qk_norms: cfg.arch == anymal_llm::Arch::Gemma3,
        sliding_window: cfg.sliding_window.is_some(),
        weight_bytes: bytes,
    })
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
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

//! `anymal merge`: fold a LoRA into the LLM's weights and write a GGUF or f16 safetensors,
//! then report the logit drift that merging (re-quantizing) causes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use anymal_quant::QuantType;

use crate::merge::{
    describe, logit_drift, output_kind, refuse_writing_over_inputs, write_merged_gguf,
    write_merged_safetensors,
};
use crate::run_dir::lora_folder;

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The base LLM (GGUF file, HF folder or short name) the LoRA was trained on.
    #[arg(long)]
    pub llm: String,
    /// A PEFT LoRA folder, or a run folder of `anymal tune` (its `lora/`).
    #[arg(long)]
    pub lora: PathBuf,
    /// Output file: `.gguf` (needs a GGUF base; other tensors and metadata are copied) or
    /// `.safetensors` (f16, HF names).
    #[arg(long)]
    pub out: PathBuf,
    /// GGUF type of the merged layers (q8_0, q4k, q4_0, f16, ...); default: each layer's own.
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Prompts for the drift report (repeatable; default: three short ones).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let kind = output_kind(&a.out)?;
    crate::run_dir::refuse_system_file(&a.out, "--out")?;
    // Checked before anything loads: the base model or the LoRA is the one file a merge
    // must never replace.
    let base = anymal_llm::loader::resolve_model_ref(&a.llm)
        .with_context(|| format!("--llm '{}'", a.llm))?;
    let dir = lora_folder(&a.lora);
    refuse_writing_over_inputs(&a.out, &[("--llm", &base), ("--lora", &dir)])?;
    let ty =
        a.ty.as_deref()
            .map(QuantType::parse)
            .transpose()
            .context("--type")?;
    let mut model = anymal_llm::load_model(&a.llm, &Default::default())
        .with_context(|| format!("--llm '{}'", a.llm))?;
    let set = model
        .llm
        .load_lora(&dir)
        .with_context(|| format!("--lora {}", dir.display()))?;
    set.set_training(false);
    eprintln!("{} from {}", describe(&set), dir.display());
    let merged = match kind {
        "gguf" => {
            if model.path.extension().is_none_or(|e| e != "gguf") {
                anyhow::bail!(
                    "--out {}: a GGUF output copies the base GGUF's other tensors and metadata; '{}' is not a GGUF (write .safetensors instead)",
                    a.out.display(),
                    model.path.display()
                );
            }
            write_merged_gguf(&model, ty, &a.out)?
        }
        _ => write_merged_safetensors(&model, &a.out)?,
    };
    eprintln!("merged {merged} layers into {}", a.out.display());
    let prompts: Vec<String> = if a.prompts.is_empty() {
        vec![
            "The capital of France is".into(),
            "Please enter your password after the tone.".into(),
            "One, two, three, four,".into(),
        ]
    } else {
        a.prompts.clone()
    };
    if kind == "gguf" {
        // Both sides with their stored weights dequantized to f32 (exactly representable), so
        // the drift is what re-quantizing the merged weights costs, not the difference
        // between candle's quantized kernels and a dense GEMM.
        drop(model);
        let f32_opts = anymal_llm::LoadOptions::requantized(Some("f32"))?;
        let mut exact = anymal_llm::load_model(&a.llm, &f32_opts)?;
        exact.llm.load_lora(&dir)?.set_training(false);
        let reloaded = anymal_llm::load_model(&a.out.to_string_lossy(), &f32_opts)
            .with_context(|| format!("reloading {}", a.out.display()))?;
        let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
        let drift = logit_drift(&exact, &reloaded, &refs)?;
        println!(
            "| prompt | max abs logit drift | mean abs | same next token |\n|---|---|---|---|"
        );
        for d in &drift {
            println!(
                "| {} | {:.4} | {:.4} | {} |",
                d.prompt,
                d.max_abs,
                d.mean_abs,
                if d.same_top1 { "yes" } else { "no" }
            );
        }
    } else {
        eprintln!("(f16 safetensors: load it as an HF folder's model.safetensors; drift is f16 rounding only)");
    }
    Ok(())
}

//! The flags `generate`, `chat` and `serve` share: which model to load (a run, or its parts)
//! and how to answer by default.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use anymal_encoders::ModalityRegistry;
use anymal_llm::SamplingConfig;

use crate::multimodal::{ModelSpec, MultimodalModel};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A run folder: of `anymal tune` (its model.json names the LLM, projectors and LoRA) or of
    /// `anymal align` (a projector); the flags below override its parts.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The LLM: a GGUF file, an HF folder, an HF hub id in the local HF cache, or a fetched
    /// model name (smollm2, gemma3). Default: the run's, the LLM a --projector was trained
    /// with, else smollm2.
    #[arg(long)]
    pub llm: Option<String>,
    /// A projector folder from `anymal align` (projector.json + projector.safetensors), one per
    /// modality; repeat for several.
    #[arg(long = "projector")]
    pub projectors: Vec<PathBuf>,
    /// A LoRA folder (PEFT format, from `anymal tune` or PEFT).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Re-quantize the LLM's linear layers on load (e.g. q4k).
    #[arg(long)]
    pub requant: Option<String>,
    /// Arithmetic of prompt processing (128+ tokens at once): int8 (llama.cpp's: activations
    /// rounded to int8 for Q4_1, Q5_0, Q4_K and Q8_0 layers) or f32.
    #[arg(long, default_value = "int8")]
    pub compute: anymal_quant::Compute,
}

impl ModelArgs {
    pub fn spec(&self) -> ModelSpec {
        let mut llm = self.llm.clone();
        if llm.is_none() && self.run.is_none() && self.projectors.is_empty() {
            llm = Some("smollm2".into());
        }
        ModelSpec {
            run: self.run.clone(),
            llm,
            projectors: self.projectors.clone(),
            lora: self.lora.clone(),
            requant: self.requant.clone(),
            compute: self.compute,
            chat_template: None,
            feature_cache: None,
        }
    }

    /// Load, saying on stderr what was loaded. `feature_cache` false keeps uploads out of the
    /// on-disk feature cache (the server's case).
    pub fn load(
        &self,
        registry: &ModalityRegistry,
        feature_cache: bool,
    ) -> Result<MultimodalModel> {
        load_model(
            registry,
            &ModelSpec {
                feature_cache: Some(feature_cache),
                ..self.spec()
            },
        )
    }
}

/// Load `spec`, saying on stderr what was loaded.
pub fn load_model(registry: &ModalityRegistry, spec: &ModelSpec) -> Result<MultimodalModel> {
    {
        let t0 = Instant::now();
        let a = MultimodalModel::load(registry, spec)?;
        eprintln!(
            "loaded {} ({}{}{}) in {:.2}s",
            a.name,
            a.model.path.display(),
            a.adapters
                .iter()
                .map(|p| format!(" + {} projector", p.modality))
                .collect::<String>(),
            if a.lora.is_some() { " + LoRA" } else { "" },
            t0.elapsed().as_secs_f64()
        );
        Ok(a)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct AnswerArgs {
    /// A system message (in `serve`: for requests that bring none).
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per answer (in `serve`: when a request does not say).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Keep only the k most likely tokens when sampling (0: no top-k truncation).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 299792458)]
    pub seed: u64,
}

impl AnswerArgs {
    pub fn sampling(&self) -> Result<SamplingConfig> {
        if self.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be 0 (greedy) or more, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        })
    }
}

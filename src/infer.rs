//! Running an aligned model: a trained projector folder, its frozen encoder and frozen LLM,
//! a prompt with placeholders and the files that fill them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use anymal_adapters::Projector;
use anymal_encoders::ModalityRegistry;
use anymal_llm::{generate, GenerationStats, LoadedModel, Sampler};
use candle_core::{Device, Tensor};

use crate::assistant::ModalityAdapter;
use crate::features::FeatureSource;
use crate::splice::{build_batch, Example, PromptTemplate};

pub struct AlignedModel {
    pub model: LoadedModel,
    pub projector: Projector,
    pub source: FeatureSource,
    /// The modality's prompt placeholder (`<audio>`).
    placeholder: String,
}

impl AlignedModel {
    /// Load the projector in `run_dir` with the LLM and encoder it names (`llm` overrides the
    /// LLM; it must have the width the projector was trained for).
    pub fn load(
        registry: &ModalityRegistry,
        run_dir: &Path,
        llm: Option<&str>,
        requant: Option<&str>,
    ) -> Result<Self> {
        let cfg = anymal_adapters::projector::load_config(run_dir)
            .with_context(|| format!("loading projector from {}", run_dir.display()))?;
        let llm_ref = llm.unwrap_or(&cfg.llm);
        if llm_ref.is_empty() {
            bail!("{}: names no LLM; pass --llm", run_dir.display());
        }
        let model = anymal_llm::load_model(llm_ref, &crate::cli::load_options(requant)?)
            .with_context(|| format!("loading model '{llm_ref}'"))?;
        // Inference reads features through the cache too: a clip seen before is not re-encoded.
        let a = ModalityAdapter::load(registry, run_dir, model.llm.cfg.hidden_size, true)?;
        Ok(Self {
            model,
            projector: a.projector,
            source: a.source,
            placeholder: a.placeholder,
        })
    }

    pub fn placeholder(&self) -> String {
        self.placeholder.clone()
    }

    /// The training prompt when `prompt` is None; a prompt without the placeholder gets it
    /// put in front (`<audio>\n<prompt>`), the way the projector saw it in training.
    pub fn user_prompt(&self, prompt: Option<&str>, n_items: usize) -> String {
        let ph = self.placeholder();
        match prompt {
            None => self.projector.cfg.prompt.clone(),
            Some(p) if p.contains(&ph) => p.to_string(),
            Some(p) => format!("{}\n{p}", vec![ph; n_items].join("\n")),
        }
    }

    /// `(1, t, d)` prompt embeddings with the files' tokens spliced in.
    pub fn prompt_embeds(&self, prompt: &str, files: &[&Path]) -> Result<Tensor> {
        let cfg = &self.projector.cfg;
        let tpl = PromptTemplate::new(&self.model, prompt, &self.placeholder(), cfg.chat_template)?;
        if tpl.num_placeholders() != files.len() {
            bail!(
                "the prompt has {} {} placeholder(s) but {} file(s) were given",
                tpl.num_placeholders(),
                self.placeholder(),
                files.len()
            );
        }
        let feats = self
            .source
            .get(files)
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let toks = if feats.is_empty() {
            Tensor::zeros(
                (0, cfg.num_tokens, cfg.d_llm),
                candle_core::DType::F32,
                &Device::Cpu,
            )?
        } else {
            self.projector.forward_items(&feats)?.detach()
        };
        let ex = Example::new(&tpl, cfg.num_tokens, None);
        let batch = build_batch(&self.model.llm, &[ex], &[toks])?;
        Ok(batch.inputs_embeds)
    }

    /// Generate an answer; `on_token` sees each new token id.
    pub fn generate(
        &self,
        prompt: &str,
        files: &[&Path],
        max_tokens: usize,
        sampler: &mut Sampler,
        on_token: impl FnMut(u32) -> anymal_llm::Result<()>,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        let embeds = self.prompt_embeds(prompt, files)?;
        Ok(generate(
            &self.model.llm,
            &[],
            Some(&embeds),
            max_tokens,
            sampler,
            &self.model.eos_ids(),
            on_token,
        )?)
    }
}

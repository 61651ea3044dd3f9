//! A multimodal model: the frozen LLM, optionally a LoRA on it, and one trained projector
//! (with its frozen encoder) per modality. A projector alone is such a model with one adapter
//! and no LoRA; a prompt is a one-turn conversation. `generate`, `eval`, `chat`, `serve` and
//! both training loops go through it, so media become tokens and conversations become token
//! sequences the same way everywhere:
//!
//! ```text
//! turns + media --ConversationFormat--> ids with slots --adapters--> (k, d) per slot
//!   --splice--> (b, t, d) embeddings --frozen LLM (+ LoRA)--> answer loss | generated tokens
//! ```
//!
//! What to load is a [`ModelSpec`]: a run folder (`anymal tune`'s `model.json`, or a projector
//! folder of `anymal align`) and/or its parts given on their own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_adapters::{ParamStore, Projector};
use anymal_encoders::ModalityRegistry;
use anymal_llm::{
    generate_with, GenerationStats, LoadOptions, LoadedModel, LoraSet, Prefill, Sampler,
};
use candle_core::{Device, Tensor};

use crate::conversation::{ConversationFormat, MediaRef, Rendered, Role, Turn};
use crate::features::{load_encoder, FeatureSource, MediaInput};
use crate::run_dir::{RunDir, RunKind};
use crate::splice::{answer_loss_sum, build_batch};

/// One modality's trained projector and its frozen encoder.
pub struct ModalityAdapter {
    pub modality: String,
    pub placeholder: String,
    /// The extension an inline file of this modality gets when its sender names none.
    pub default_extension: Option<String>,
    pub projector: Projector,
    pub store: ParamStore,
    pub source: FeatureSource,
    /// Where it was loaded from (a fresh projector: where it will be saved).
    pub dir: PathBuf,
    /// Whether training passes keep the graph to its parameters.
    pub trainable: bool,
}

impl ModalityAdapter {
    /// Load a projector folder with the encoder its `projector.json` names.
    pub fn load(
        registry: &ModalityRegistry,
        dir: &Path,
        d_llm: usize,
        use_cache: bool,
    ) -> Result<Self> {
        let (projector, store) = Projector::load(dir, &Device::Cpu)
            .with_context(|| format!("loading projector from {}", dir.display()))?;
        let cfg = &projector.cfg;
        if cfg.d_llm != d_llm {
            bail!(
                "{}: the projector was trained for an LLM of width {}, this LLM has {d_llm}",
                dir.display(),
                cfg.d_llm
            );
        }
        let modality = registry
            .get(&cfg.modality)
            .with_context(|| format!("{}: projector.json", dir.display()))?;
        let encoder = load_encoder(registry, &cfg.modality, &cfg.encoder, &cfg.encoder_options)?;
        if !cfg.encoder_id.is_empty() && encoder.id() != cfg.encoder_id {
            eprintln!(
                "warning: encoder '{}' has id {}, the projector was trained on {}",
                cfg.encoder,
                encoder.id(),
                cfg.encoder_id
            );
        }
        Ok(Self {
            modality: cfg.modality.clone(),
            placeholder: modality.placeholder(),
            default_extension: modality.default_extension().map(str::to_string),
            source: FeatureSource::new(encoder, use_cache),
            projector,
            store,
            dir: dir.to_path_buf(),
            trainable: false,
        })
    }
}

/// "text only", or "text, audio, image": what a model with these modalities takes.
pub fn describe_inputs<'a>(modalities: impl IntoIterator<Item = &'a str>) -> String {
    let mut names = modalities.into_iter().peekable();
    if names.peek().is_none() {
        return "text only".into();
    }
    std::iter::once("text")
        .chain(names)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct ModelSpec {
    /// A run folder: `anymal tune`'s (with `model.json`), or a projector folder of
    /// `anymal align`. The fields below override its parts.
    pub run: Option<PathBuf>,
    pub llm: Option<String>,
    pub projectors: Vec<PathBuf>,
    pub lora: Option<PathBuf>,
    pub requant: Option<String>,
    /// The arithmetic of the LLM's products over many rows (see `anymal_quant::Compute`).
    pub compute: anymal_quant::Compute,
    /// Wrap conversations in the chat template (None: the run's setting, else the first
    /// projector's training setting, else yes).
    pub chat_template: Option<bool>,
    /// Cache encoder features on disk (None: yes). A server turns it off: every upload is a
    /// new file, and the cache would grow without bound.
    pub feature_cache: Option<bool>,
}

impl ModelSpec {
    /// The parts a run folder names filled in where the spec leaves them open, and the run's
    /// chat-template setting.
    fn resolve_run(mut self) -> Result<(Self, Option<bool>)> {
        let Some(run) = self.run.clone() else {
            return Ok((self, None));
        };
        let (run, best) = RunDir::new(&run).for_inference();
        if let Some(b) = best {
            eprintln!(
                "using {} (step {}, validation loss {:.4}); pass a checkpoint folder for other weights",
                run.display(),
                b.step,
                b.eval_loss
            );
        }
        let dir = RunDir::new(&run);
        match dir.kind() {
            RunKind::Tuned => {
                let m = dir.read_model_manifest()?;
                self.llm.get_or_insert(m.llm);
                if self.requant.is_none() && !m.requant.is_empty() {
                    self.requant = Some(m.requant);
                }
                if self.projectors.is_empty() {
                    self.projectors = m.projectors.iter().map(|p| run.join(p)).collect();
                }
                if self.lora.is_none() {
                    self.lora = m.lora.map(|l| run.join(l));
                }
                Ok((self, Some(m.chat_template)))
            }
            // A projector folder (or anything else: loading it says what is missing).
            RunKind::Projector | RunKind::Other => {
                if self.projectors.is_empty() {
                    self.projectors = vec![run];
                }
                Ok((self, None))
            }
        }
    }
}

/// A prompt ready for the LLM: token ids for text alone, or the embeddings `(1, t, d)` with
/// the media's tokens spliced in (then `ids` is empty).
pub struct Prompt {
    pub ids: Vec<u32>,
    pub embeds: Option<Tensor>,
}

pub struct MultimodalModel {
    /// The frozen LLM.
    pub model: LoadedModel,
    pub adapters: Vec<ModalityAdapter>,
    pub lora: Option<LoraSet>,
    pub chat_template: bool,
    /// Model name for reports and the server (`/v1/models`).
    pub name: String,
}

impl MultimodalModel {
    /// Load what `spec` names, for inference (a LoRA in inference mode, projectors frozen).
    pub fn load(registry: &ModalityRegistry, spec: &ModelSpec) -> Result<Self> {
        let (spec, run_chat) = spec.clone().resolve_run()?;
        let first_projector = spec
            .projectors
            .first()
            .map(|p| {
                anymal_adapters::projector::load_config(p)
                    .with_context(|| format!("loading projector from {}", p.display()))
            })
            .transpose()?;
        // Without --llm, the first projector names the LLM it was trained with.
        let llm_ref = spec
            .llm
            .clone()
            .or_else(|| {
                first_projector
                    .as_ref()
                    .map(|c| c.llm.clone())
                    .filter(|l| !l.is_empty())
            })
            .context("no LLM given: pass --llm (or a run / projector that names one)")?;
        let chat_template = spec
            .chat_template
            .or(run_chat)
            .or(first_projector.as_ref().map(|c| c.chat_template))
            .unwrap_or(true);
        let mut model = anymal_llm::load_model(
            &llm_ref,
            &LoadOptions {
                compute: spec.compute,
                ..LoadOptions::requantized(spec.requant.as_deref())?
            },
        )
        .with_context(|| format!("loading model '{llm_ref}'"))?;
        let lora = match &spec.lora {
            Some(dir) => {
                let set = model
                    .llm
                    .load_lora(dir)
                    .with_context(|| format!("loading LoRA from {}", dir.display()))?;
                set.set_training(false);
                Some(set)
            }
            None => None,
        };
        let mut adapters = Vec::new();
        for dir in &spec.projectors {
            let a = ModalityAdapter::load(
                registry,
                dir,
                model.llm.cfg.hidden_size,
                spec.feature_cache.unwrap_or(true),
            )?;
            adapters.push(a);
        }
        let name = spec
            .run
            .as_ref()
            .or(spec.lora.as_ref())
            .or(spec.projectors.first())
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| {
                model
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or(llm_ref.clone())
            });
        Self::new(model, adapters, lora, chat_template, name)
    }

    /// A model from parts already built (the training loops build theirs); at most one adapter
    /// per modality.
    pub fn new(
        model: LoadedModel,
        adapters: Vec<ModalityAdapter>,
        lora: Option<LoraSet>,
        chat_template: bool,
        name: String,
    ) -> Result<Self> {
        for (i, a) in adapters.iter().enumerate() {
            if let Some(prev) = adapters[..i].iter().find(|p| p.modality == a.modality) {
                bail!(
                    "two projectors for modality '{}': {} and {}",
                    a.modality,
                    prev.dir.display(),
                    a.dir.display()
                );
            }
        }
        Ok(Self {
            model,
            adapters,
            lora,
            chat_template,
            name,
        })
    }

    /// `(modality, placeholder)` of every modality this model takes.
    pub fn modalities(&self) -> Vec<(String, String)> {
        self.adapters
            .iter()
            .map(|a| (a.modality.clone(), a.placeholder.clone()))
            .collect()
    }

    /// "text only", or "text, audio, image".
    pub fn takes(&self) -> String {
        describe_inputs(self.adapters.iter().map(|a| a.modality.as_str()))
    }

    /// The user turn a projector of `modality` was trained with (what evaluation asks).
    pub fn training_prompt(&self, modality: &str) -> Result<String> {
        let trained = &self.adapter(modality)?.projector.cfg.prompt;
        if trained.is_empty() {
            bail!("the {modality} projector records no training prompt; give one");
        }
        Ok(trained.clone())
    }

    pub fn adapter(&self, modality: &str) -> Result<&ModalityAdapter> {
        self.adapters
            .iter()
            .find(|a| a.modality == modality)
            .with_context(|| {
                format!(
                    "this model has no {modality} projector (it takes {})",
                    self.takes()
                )
            })
    }

    /// How conversations become tokens for this model's projectors.
    pub fn format(&self) -> ConversationFormat<'_> {
        ConversationFormat::new(
            &self.model,
            self.chat_template,
            self.adapters
                .iter()
                .map(|a| (a.placeholder.clone(), a.projector.cfg.num_tokens))
                .collect(),
        )
    }

    /// The user turn for `prompt` and `media`: the training prompt of the media's projector when
    /// `prompt` is None; a prompt without placeholders gets one per file put in front
    /// (`<audio>\n<prompt>`), the way projectors see them in training; a prompt with
    /// placeholders must have one per file.
    pub fn user_prompt(&self, prompt: Option<&str>, media: &[MediaRef]) -> Result<String> {
        let Some(prompt) = prompt else {
            let m = media
                .first()
                .context("no prompt given and no media file whose projector has one")?;
            return self.training_prompt(&m.modality);
        };
        let used: usize = self
            .adapters
            .iter()
            .map(|a| prompt.matches(a.placeholder.as_str()).count())
            .sum();
        if used > 0 {
            if used != media.len() {
                bail!(
                    "the prompt has {used} media placeholder(s) but {} file(s) were given",
                    media.len()
                );
            }
            return Ok(prompt.to_string());
        }
        if media.is_empty() {
            return Ok(prompt.to_string());
        }
        let phs = media
            .iter()
            .map(|f| self.adapter(&f.modality).map(|a| a.placeholder.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(format!("{}\n{prompt}", phs.join("\n")))
    }

    /// One `(k_i, d)` tensor per slot of each rendered conversation (`k_i` follows the file's
    /// length for a projector with a rate reduction), from its media in slot
    /// order. The files of one modality go through its projector together; `train` keeps the
    /// graph to the projectors marked `trainable`.
    pub fn media_tokens(
        &self,
        items: &[(&Rendered, &[MediaRef])],
        train: bool,
    ) -> Result<Vec<Vec<Tensor>>> {
        let adapters = &self.adapters;
        // (item, slot) of every file, grouped by adapter.
        let mut by_adapter: Vec<Vec<(usize, usize, MediaInput)>> = vec![Vec::new(); adapters.len()];
        let mut out: Vec<Vec<Option<Tensor>>> = Vec::with_capacity(items.len());
        for (i, (r, media)) in items.iter().enumerate() {
            if r.slot_placeholders.len() != media.len() {
                bail!(
                    "the conversation has {} media placeholder(s) but {} file(s) were given",
                    r.slot_placeholders.len(),
                    media.len()
                );
            }
            for (s, (ph, m)) in r.slot_placeholders.iter().zip(media.iter()).enumerate() {
                let a = adapters
                    .iter()
                    .position(|a| &a.placeholder == ph)
                    .with_context(|| format!("no projector for {ph}"))?;
                if adapters[a].modality != m.modality {
                    bail!(
                        "placeholder {} number {} stands for a {} file but {} is {}",
                        ph,
                        s + 1,
                        adapters[a].modality,
                        m.path.display(),
                        m.modality
                    );
                }
                by_adapter[a].push((i, s, m.input()));
            }
            out.push(vec![None; media.len()]);
        }
        for (a, files) in by_adapter.iter().enumerate() {
            if files.is_empty() {
                continue;
            }
            let inputs: Vec<MediaInput> = files.iter().map(|f| f.2).collect();
            let feats = adapters[a]
                .source
                .get(&inputs)
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            let toks = adapters[a].projector.forward_items(&feats)?;
            let keep_graph = train && adapters[a].trainable;
            for (t, &(i, s, _)) in toks.into_iter().zip(files) {
                out[i][s] = Some(if keep_graph { t } else { t.detach() });
            }
        }
        out.into_iter()
            .map(|v| {
                v.into_iter()
                    .map(|t| t.context("internal: a media slot was not filled"))
                    .collect()
            })
            .collect()
    }

    /// Summed answer NLL of a batch of rendered conversations with their media, and the label
    /// count. `train = false` cuts the graph at the projectors, so the LLM runs its inference
    /// kernels.
    pub fn answer_loss(
        &self,
        items: &[(&Rendered, &[MediaRef])],
        train: bool,
    ) -> Result<(Tensor, usize)> {
        let toks = self.media_tokens(items, train)?;
        let examples: Vec<_> = items.iter().map(|(r, _)| r.example.clone()).collect();
        let batch = build_batch(&self.model.llm, &examples, &toks)?;
        answer_loss_sum(&self.model.llm, &batch)
    }

    /// Generate the next assistant turn; `on_token` sees each new token id.
    pub fn generate(
        &self,
        turns: &[Turn],
        media: &[MediaRef],
        max_tokens: usize,
        sampler: &mut Sampler,
        on_token: impl FnMut(u32) -> anymal_llm::Result<()>,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        let mut prefill = Prefill::whole();
        self.generate_with(turns, media, max_tokens, sampler, &mut prefill, on_token)
    }

    /// [`Self::generate`] with the prompt fed as `prefill` says (in chunks that can be
    /// stopped, for a server).
    pub fn generate_with(
        &self,
        turns: &[Turn],
        media: &[MediaRef],
        max_tokens: usize,
        sampler: &mut Sampler,
        prefill: &mut Prefill<'_>,
        on_token: impl FnMut(u32) -> anymal_llm::Result<()>,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        let p = self.prompt(turns, media)?;
        self.generate_prompt(&p, max_tokens, sampler, prefill, on_token)
    }

    /// [`Self::generate`] with the media slots' tokens given, one `(k_i, d)` tensor per slot
    /// (from elsewhere: another runtime's projector output, precomputed features).
    pub fn generate_with_media_tokens(
        &self,
        turns: &[Turn],
        media_tokens: &[Tensor],
        max_tokens: usize,
        sampler: &mut Sampler,
        on_token: impl FnMut(u32) -> anymal_llm::Result<()>,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        let r = self.render_question(turns)?;
        if r.slot_placeholders.len() != media_tokens.len() {
            bail!(
                "the conversation has {} media placeholder(s) but {} token tensor(s) were given",
                r.slot_placeholders.len(),
                media_tokens.len()
            );
        }
        let p = self.rendered_prompt(&r, media_tokens)?;
        self.generate_prompt(&p, max_tokens, sampler, &mut Prefill::whole(), on_token)
    }

    fn render_question(&self, turns: &[Turn]) -> Result<Rendered> {
        if turns.last().is_none_or(|t| t.role == Role::Assistant) {
            bail!("the conversation must end with a user turn to be answered");
        }
        self.format().render(turns)
    }

    fn generate_prompt(
        &self,
        p: &Prompt,
        max_tokens: usize,
        sampler: &mut Sampler,
        prefill: &mut Prefill<'_>,
        on_token: impl FnMut(u32) -> anymal_llm::Result<()>,
    ) -> Result<(Vec<u32>, GenerationStats)> {
        Ok(generate_with(
            &self.model.llm,
            &p.ids,
            p.embeds.as_ref(),
            max_tokens,
            sampler,
            &self.model.eos_ids(),
            prefill,
            on_token,
        )?)
    }

    /// The next assistant turn's prompt as the LLM takes it, media encoded and spliced in,
    /// for callers that run generation themselves ([`anymal_llm::BatchGenerator`]).
    pub fn prompt(&self, turns: &[Turn], media: &[MediaRef]) -> Result<Prompt> {
        let r = self.render_question(turns)?;
        let toks = if r.slot_placeholders.is_empty() && media.is_empty() {
            Vec::new()
        } else {
            self.media_tokens(&[(&r, media)], false)?.remove(0)
        };
        self.rendered_prompt(&r, &toks)
    }

    fn rendered_prompt(&self, r: &Rendered, toks: &[Tensor]) -> Result<Prompt> {
        // Text alone goes in as token ids; media slots need the spliced embeddings.
        let embeds = if toks.is_empty() {
            None
        } else {
            let batch = build_batch(
                &self.model.llm,
                std::slice::from_ref(&r.example),
                &[toks.to_vec()],
            )?;
            Some(batch.inputs_embeds)
        };
        Ok(Prompt {
            ids: if embeds.is_none() {
                r.example.input_ids.clone()
            } else {
                Vec::new()
            },
            embeds,
        })
    }
}

//! A model ready to talk: the frozen LLM, optionally a LoRA on it, and one trained projector
//! (with its frozen encoder) per modality. Used by `generate`, `chat`, `serve` and the
//! instruction-tuning loop, which share how media become tokens and conversations become
//! token sequences.
//!
//! A tuning run folder (`anymal tune`) holds `model.json` naming its parts; any part can also
//! be given on its own (`--llm`, `--projector DIR` per modality, `--lora DIR`, a PEFT folder
//! made by anymal or by PEFT).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_adapters::{ParamStore, Projector};
use anymal_encoders::ModalityRegistry;
use anymal_llm::{generate, GenerationStats, LoadedModel, LoraSet, Sampler};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::conversation::{ConversationFormat, Rendered};
use crate::data::instruct::{MediaRef, Turn};
use crate::features::{load_encoder, FeatureSource};
use crate::splice::build_batch_groups;

/// `model.json` of a tuning run: what to load, relative to the run folder.
pub const MODEL_FILE: &str = "model.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelManifest {
    pub llm: String,
    /// Re-quantization applied on load (empty: the file's types).
    #[serde(default)]
    pub requant: String,
    /// Projector folders.
    pub projectors: Vec<String>,
    /// PEFT folder, if the run trained a LoRA.
    pub lora: Option<String>,
    pub chat_template: bool,
}

/// One modality's trained projector and its frozen encoder.
pub struct ModalityAdapter {
    pub modality: String,
    pub placeholder: String,
    pub projector: Projector,
    pub store: ParamStore,
    pub source: FeatureSource,
    /// Where it was loaded from.
    pub dir: PathBuf,
    /// Whether training passes keep the graph to its parameters (instruction tuning).
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
            source: FeatureSource::new(encoder, use_cache),
            projector,
            store,
            dir: dir.to_path_buf(),
            trainable: false,
        })
    }
}

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct AssistantSpec {
    /// A tuning run folder with `model.json` (its parts can be overridden below).
    pub run: Option<PathBuf>,
    pub llm: Option<String>,
    pub projectors: Vec<PathBuf>,
    pub lora: Option<PathBuf>,
    pub requant: Option<String>,
    /// Wrap conversations in the chat template (None: the run's setting, else yes).
    pub chat_template: Option<bool>,
    /// Cache encoder features on disk (None: yes). A server turns it off: every upload is a
    /// new file, and the cache would grow without bound.
    pub feature_cache: Option<bool>,
}

pub struct Assistant {
    pub model: LoadedModel,
    pub adapters: Vec<ModalityAdapter>,
    pub lora: Option<LoraSet>,
    pub chat_template: bool,
    /// Model name for reports and the server (`/v1/models`).
    pub name: String,
}

impl Assistant {
    pub fn load(registry: &ModalityRegistry, spec: &AssistantSpec) -> Result<Self> {
        let mut spec = spec.clone();
        let mut manifest_chat = None;
        if let Some(run) = &spec.run {
            let path = run.join(MODEL_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "{}: cannot read (is {} a run folder of `anymal tune`?)",
                    path.display(),
                    run.display()
                )
            })?;
            let m: ModelManifest = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid", path.display()))?;
            spec.llm.get_or_insert(m.llm);
            if spec.requant.is_none() && !m.requant.is_empty() {
                spec.requant = Some(m.requant);
            }
            if spec.projectors.is_empty() {
                spec.projectors = m.projectors.iter().map(|p| run.join(p)).collect();
            }
            if spec.lora.is_none() {
                spec.lora = m.lora.map(|l| run.join(l));
            }
            manifest_chat = Some(m.chat_template);
        }
        // Without --llm, the first projector names the LLM it was trained with.
        if spec.llm.is_none() {
            if let Some(p) = spec.projectors.first() {
                let cfg = anymal_adapters::projector::load_config(p)
                    .with_context(|| format!("loading projector from {}", p.display()))?;
                if !cfg.llm.is_empty() {
                    manifest_chat.get_or_insert(cfg.chat_template);
                    spec.llm = Some(cfg.llm);
                }
            }
        }
        let llm_ref = spec
            .llm
            .clone()
            .context("no LLM given: pass --llm (or a run / projector that names one)")?;
        let mut model = anymal_llm::load_model(
            &llm_ref,
            &crate::cli::load_options(spec.requant.as_deref())?,
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
        let mut adapters: Vec<ModalityAdapter> = Vec::new();
        for dir in &spec.projectors {
            let a = ModalityAdapter::load(
                registry,
                dir,
                model.llm.cfg.hidden_size,
                spec.feature_cache.unwrap_or(true),
            )?;
            if let Some(prev) = adapters.iter().find(|p| p.modality == a.modality) {
                bail!(
                    "two projectors for modality '{}': {} and {}",
                    a.modality,
                    prev.dir.display(),
                    dir.display()
                );
            }
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
        Ok(Self {
            model,
            adapters,
            lora,
            chat_template: spec.chat_template.or(manifest_chat).unwrap_or(true),
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

    pub fn adapter(&self, modality: &str) -> Result<&ModalityAdapter> {
        self.adapters
            .iter()
            .find(|a| a.modality == modality)
            .with_context(|| {
                format!(
                    "this model has no {modality} projector (it takes: {})",
                    if self.adapters.is_empty() {
                        "text only".to_string()
                    } else {
                        self.adapters
                            .iter()
                            .map(|a| a.modality.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )
            })
    }

    /// A prompt that holds placeholders must hold one per file, in the files' modalities.
    pub fn adapter_placeholders_check(&self, prompt: &str, media: &[MediaRef]) -> Result<()> {
        let used: usize = self
            .adapters
            .iter()
            .map(|a| prompt.matches(a.placeholder.as_str()).count())
            .sum();
        if used > 0 && used != media.len() {
            bail!(
                "the prompt has {used} media placeholder(s) but {} file(s) were given",
                media.len()
            );
        }
        Ok(())
    }

    pub fn format(&self) -> ConversationFormat<'_> {
        conversation_format(&self.model, self.chat_template, &self.adapters)
    }

    /// `(1, t, d)` embeddings of a conversation ending with a user turn, media spliced in.
    pub fn prompt_embeds(&self, turns: &[Turn], media: &[MediaRef]) -> Result<Tensor> {
        let r = self.format().render(turns)?;
        let toks = media_tokens(&self.adapters, &r, media, false)?;
        Ok(build_batch_groups(&self.model.llm, &[r.example], &[toks])?.inputs_embeds)
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
        if turns
            .last()
            .is_none_or(|t| t.role == crate::data::instruct::Role::Assistant)
        {
            bail!("the conversation must end with a user turn to be answered");
        }
        let embeds = self.prompt_embeds(turns, media)?;
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

/// The conversation format for these projectors (their placeholders and token counts).
pub fn conversation_format<'a>(
    model: &'a LoadedModel,
    chat: bool,
    adapters: &[ModalityAdapter],
) -> ConversationFormat<'a> {
    ConversationFormat::new(
        model,
        chat,
        adapters
            .iter()
            .map(|a| (a.placeholder.clone(), a.projector.cfg.num_tokens))
            .collect(),
    )
}

/// One `(k, d)` tensor per slot of `rendered`, from `media` in slot order. The files of one
/// modality go through its projector together; `train` keeps the graph to the projectors
/// marked `trainable`.
pub fn media_tokens(
    adapters: &[ModalityAdapter],
    rendered: &Rendered,
    media: &[MediaRef],
    train: bool,
) -> Result<Vec<Tensor>> {
    Ok(media_tokens_batch(adapters, &[(rendered, media)], train)?
        .pop()
        .unwrap_or_default())
}

/// [`media_tokens`] for several conversations at once (one projector call per modality).
pub fn media_tokens_batch(
    adapters: &[ModalityAdapter],
    items: &[(&Rendered, &[MediaRef])],
    train: bool,
) -> Result<Vec<Vec<Tensor>>> {
    // (item, slot) of every file, grouped by adapter.
    let mut by_adapter: Vec<Vec<(usize, usize, &Path)>> = vec![Vec::new(); adapters.len()];
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
            by_adapter[a].push((i, s, m.path.as_path()));
        }
        out.push(vec![None; media.len()]);
    }
    for (a, files) in by_adapter.iter().enumerate() {
        if files.is_empty() {
            continue;
        }
        let paths: Vec<&Path> = files.iter().map(|f| f.2).collect();
        let feats = adapters[a]
            .source
            .get(&paths)
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let mut toks = adapters[a].projector.forward_items(&feats)?;
        if !(train && adapters[a].trainable) {
            toks = toks.detach();
        }
        for (j, &(i, s, _)) in files.iter().enumerate() {
            out[i][s] = Some(toks.get(j)?);
        }
    }
    Ok(out
        .into_iter()
        .map(|v| {
            v.into_iter()
                .map(|t| t.expect("every slot filled"))
                .collect()
        })
        .collect())
}

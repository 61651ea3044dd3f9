//! The instruction-tuning loop (`anymal tune`), AnyMAL's second stage: conversations with
//! media, loss on the assistant turns, a LoRA on the frozen 4-bit LLM trained together with
//! the aligned projectors, each group with its own learning rate under one schedule.
//!
//! Same guarantees as alignment (the run's life is [`super::run`]'s): a seeded item order
//! where step `s` depends only on `s`, atomic checkpoints holding every trainable tensor and
//! AdamW's moments, `--resume` that continues exactly, metrics, a loss curve and progress on
//! stderr. The run folder ends with `lora/` (PEFT's format), `projector-<modality>/` per
//! projector and `model.json`, which `generate`, `chat`, `serve`, `eval` and `merge` read.

use std::path::Path;

use anyhow::{bail, Context, Result};
use anymal_encoders::ModalityRegistry;
use anymal_llm::{LoraSet, PeftAdapter};
use candle_core::Var;
use serde::Serialize;

use super::data_order::DataOrder;
use super::optim::clip_grad_norm;
use super::run::{load_llm, optimizer, RunSummary, SplitCounts, StepLoop, TrainingRun};
use super::step::{encode_all, eval_loss, step_gradients, TrainItem, Trainables};
use crate::conversation::MediaRef;
use crate::data::instruct::{InstructData, Placeholders};
use crate::multimodal::{ModalityAdapter, MultimodalModel};
use crate::recipe::{expand_path, LoraSection, TuneRecipe};
use crate::run_dir::{projector_dir_name, ModelManifest, RunDir, LORA_DIR};

/// What instruction tuning reports beyond every run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct TuneExtra {
    pub lora_params: usize,
    pub projector_params: usize,
}

pub type TuneSummary = RunSummary<TuneExtra>;

pub struct TuneOptions {
    pub resume: bool,
    /// Replace an earlier run in the run folder (see [`TrainingRun::prepare`]).
    pub overwrite: bool,
    pub registry: ModalityRegistry,
}

pub fn run(recipe: &TuneRecipe, opts: &TuneOptions) -> Result<TuneSummary> {
    let run = TrainingRun::prepare(
        recipe.output_dir(),
        opts.resume,
        opts.overwrite,
        &recipe.to_toml()?,
    )?;
    let t = &recipe.train;

    // The frozen LLM, its LoRA and the projectors.
    let mut llm = load_llm(&recipe.llm)?;
    let lora = match &recipe.lora {
        Some(l) => Some(attach_lora(&mut llm, l, t.seed)?),
        None => None,
    };
    let mut adapters: Vec<ModalityAdapter> = Vec::new();
    for (i, p) in recipe.projectors.iter().enumerate() {
        let dir = expand_path(&p.from);
        let mut a = ModalityAdapter::load(&opts.registry, &dir, llm.llm.cfg.hidden_size, true)
            .with_context(|| format!("projectors[{i}].from"))?;
        a.trainable = p.train;
        adapters.push(a);
    }
    eprintln!(
        "llm {} ({} layers, d={}); projectors: {}",
        llm.path.display(),
        llm.llm.cfg.num_layers,
        llm.llm.cfg.hidden_size,
        if adapters.is_empty() {
            "none (text only)".to_string()
        } else {
            adapters
                .iter()
                .map(|a| {
                    let how = if a.trainable { "trains" } else { "frozen" };
                    format!("{} ({how})", a.modality)
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let name = recipe.output_dir.clone();
    let model = MultimodalModel::new(llm, adapters, lora, recipe.data.chat_template, name)
        .context("[[projectors]]")?;
    let lora = model.lora.as_ref();

    let (train, train_counts) = load_split(
        &expand_path(&recipe.data.train),
        recipe,
        &model,
        &opts.registry,
        "train",
    )?;
    let (valid, valid_counts) = load_split(
        &expand_path(&recipe.data.valid),
        recipe,
        &model,
        &opts.registry,
        "valid",
    )?;

    // Parameter groups: each trainable projector and the LoRA, with their learning rates.
    let lr_scale = |lr: f64| if lr > 0.0 { lr / t.lr } else { 1.0 };
    let mut groups: Vec<(Vec<(String, Var)>, f64)> = Vec::new();
    let mut proj_params: Vec<(String, Var)> = Vec::new();
    for (a, p) in model.adapters.iter().zip(&recipe.projectors) {
        if a.trainable {
            let vars: Vec<(String, Var)> = a
                .projector
                .trainable_vars(&a.store)
                .into_iter()
                .map(|(n, v)| (format!("{}/{n}", a.modality), v))
                .collect();
            proj_params.extend(vars.iter().cloned());
            groups.push((vars, lr_scale(p.lr)));
        }
    }
    if let (Some(set), Some(l)) = (lora, &recipe.lora) {
        groups.push((set.vars(), lr_scale(l.lr)));
    }
    let mut opt = optimizer(groups, t)?;
    let projector_params: usize = model
        .adapters
        .iter()
        .filter(|a| a.trainable)
        .map(|a| a.projector.trainable_params(&a.store))
        .sum();

    let resumed = run.resume(t.seed, &mut opt, |ckpt| {
        for a in model.adapters.iter().filter(|a| a.trainable) {
            let p = RunDir::new(ckpt)
                .projector(&a.modality)
                .join(anymal_adapters::projector::WEIGHTS_FILE);
            a.store
                .load_safetensors(&p)
                .with_context(|| format!("{}", p.display()))?;
        }
        if let Some(set) = lora {
            let dir = RunDir::new(ckpt).lora();
            let a = PeftAdapter::read(&dir)?;
            set.set_peft_tensors(&a.tensors)
                .with_context(|| format!("{}", dir.display()))?;
        }
        Ok(())
    })?;

    let trainables = Trainables {
        projector: proj_params,
        lora,
    };
    let order = DataOrder::new(train.len(), t.seed);
    let mut steps = StepLoop::new(&run, t, &resumed)?;
    while let Some(step) = steps.next_step() {
        let items: Vec<&TrainItem> = steps.items(&order).iter().map(|&i| &train[i]).collect();
        if let Some(set) = lora {
            set.set_training(true);
            set.seek_dropout(step);
        }
        let (loss, mut grads) = step_gradients(&model, &trainables, &items, t.batch_size)?;
        let grad_norm = clip_grad_norm(&mut grads, t.max_grad_norm)?;
        steps.check_finite(loss, grad_norm, "train.lr or lora.lr")?;
        opt.step(&grads, steps.lr())?;
        steps.record(loss, grad_norm)?;
        if steps.eval_due() {
            if let Some(set) = lora {
                set.set_training(false);
            }
            if steps.record_eval(eval_loss(&model, &valid, t.batch_size, t.eval_items)?)? {
                steps.save_best(&run, |dir| save_trainables(dir, &model, recipe, false))?;
            }
        }
        if steps.save_due() {
            steps.save(&run, &opt, |dir| {
                save_trainables(dir, &model, recipe, false)
            })?;
        }
    }
    let finished = steps.finish(
        &run,
        &format!("instruction tuning: {}", run.dir.path().display()),
    );

    // The result: the trained parts and model.json naming them; frozen projectors are copied
    // so that the run folder stands on its own.
    for a in model.adapters.iter().filter(|a| !a.trainable) {
        a.projector
            .save(&run.dir.projector(&a.modality), &a.store)?;
    }
    save_trainables(run.dir.path(), &model, recipe, true)?;
    let extra = TuneExtra {
        lora_params: lora.map_or(0, |s| s.num_params()),
        projector_params,
    };
    let detail = format!("run in {}", run.dir.path().display());
    RunSummary::report(&finished, train_counts, valid_counts, extra, &run, &detail)
}

/// A fresh LoRA on the LLM as `[lora]` says, or the one `lora.init_from` names.
fn attach_lora(llm: &mut anymal_llm::LoadedModel, l: &LoraSection, seed: u64) -> Result<LoraSet> {
    let set = llm.llm.attach_lora(&l.spec()?, seed).context("[lora]")?;
    if !l.init_from.is_empty() {
        let dir = expand_path(&l.init_from);
        let a = PeftAdapter::read(&dir).context("lora.init_from")?;
        if a.spec()? != set.spec {
            bail!(
                "lora.init_from {}: has r={} alpha={} targets {}, the recipe asks for r={} alpha={} targets {}",
                dir.display(),
                a.config.r,
                a.config.lora_alpha,
                a.config.target_modules,
                set.spec.cfg.r,
                set.spec.cfg.alpha,
                set.spec.targets.to_json()
            );
        }
        set.set_peft_tensors(&a.tensors)
            .with_context(|| format!("lora.init_from {}", dir.display()))?;
    }
    eprintln!(
        "lora r={} alpha={} on {} layers: {} parameters",
        set.spec.cfg.r,
        set.spec.cfg.alpha,
        set.modules.len(),
        set.num_params()
    );
    Ok(set)
}

/// The trainable projectors, the LoRA and a `model.json` naming them into `dir` (a checkpoint
/// or the run folder), so that `--run DIR` loads either. Frozen projectors are named where
/// they are (`frozen_copied`: they were copied into `dir`).
fn save_trainables(
    dir: &Path,
    model: &MultimodalModel,
    recipe: &TuneRecipe,
    frozen_copied: bool,
) -> Result<()> {
    let dir = RunDir::new(dir);
    let mut projectors = Vec::new();
    for a in &model.adapters {
        let name = projector_dir_name(&a.modality);
        if a.trainable {
            a.projector.save(&dir.projector(&a.modality), &a.store)?;
            projectors.push(name);
        } else if frozen_copied {
            projectors.push(name);
        } else {
            let abs = std::fs::canonicalize(&a.dir).unwrap_or_else(|_| a.dir.clone());
            projectors.push(abs.to_string_lossy().to_string());
        }
    }
    if let Some(set) = &model.lora {
        set.save_peft(&dir.lora(), &recipe.llm.model)?;
    }
    dir.write_model_manifest(&ModelManifest {
        llm: recipe.llm.model.clone(),
        requant: recipe.llm.requant.clone(),
        projectors,
        lora: model.lora.as_ref().map(|_| LORA_DIR.to_string()),
        chat_template: recipe.data.chat_template,
    })
}

/// Read, validate and render one data file; run every file through its encoder once (filling
/// the feature cache and finding the ones that fail to decode).
fn load_split(
    path: &Path,
    recipe: &TuneRecipe,
    model: &MultimodalModel,
    registry: &ModalityRegistry,
    what: &str,
) -> Result<(Vec<TrainItem>, SplitCounts)> {
    let t0 = std::time::Instant::now();
    let mut data = InstructData::read(path, &Placeholders::from_registry(registry))
        .with_context(|| format!("data.{what}"))?;
    let mut format = model.format();
    format.max_answer_tokens = recipe.data.max_answer_tokens;
    let mut items: Vec<Option<TrainItem>> = Vec::with_capacity(data.samples.len());
    let mut bad: Vec<(usize, String)> = Vec::new();
    for (i, s) in data.samples.iter().enumerate() {
        let rendered = s
            .media
            .iter()
            .find(|m| !model.adapters.iter().any(|a| a.modality == m.modality))
            .map_or(Ok(()), |m| {
                Err(anyhow::anyhow!(
                    "has {} input but the recipe has no {} projector ([[projectors]])",
                    m.modality,
                    m.modality
                ))
            })
            .and_then(|()| format.render(&s.turns))
            .and_then(|r| {
                let n = r.example.input_ids.len();
                let max = recipe.data.max_seq_len;
                if max > 0 && n > max {
                    bail!("is {n} tokens long (media slots included); data.max_seq_len is {max}");
                }
                if r.example.num_labels() == 0 {
                    bail!("has no answer tokens");
                }
                Ok(r)
            });
        match rendered {
            Ok(r) => items.push(Some(TrainItem {
                rendered: r,
                media: s.media.clone(),
            })),
            Err(e) => {
                items.push(None);
                bad.push((i, format!("{e:#}")));
            }
        }
    }
    // Features of the conversations still good.
    let media: Vec<&[MediaRef]> = items
        .iter()
        .map(|it| it.as_ref().map_or(&[][..], |it| it.media.as_slice()))
        .collect();
    for (i, why) in encode_all(model, &media, what).into_iter().enumerate() {
        if let Some(why) = why {
            items[i] = None;
            bad.push((i, why));
        }
    }
    bad.sort();
    let items: Vec<TrainItem> = items.into_iter().flatten().collect();
    for (i, why) in bad.into_iter().rev() {
        data.reject(i, &why);
    }
    for p in &data.problems {
        eprintln!("skipped {p}");
    }
    data.check_bad_fraction(recipe.data.max_bad_fraction)?;
    if items.is_empty() {
        bail!("data.{what} {}: no usable conversations", path.display());
    }
    eprintln!(
        "{what}: {} conversations ({} skipped) from {} in {:.1}s",
        items.len(),
        data.problems.len(),
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    let counts = SplitCounts {
        items: items.len(),
        skipped: data.problems.len(),
    };
    Ok((items, counts))
}

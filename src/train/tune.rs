//! The instruction-tuning loop (`anymal tune`), AnyMAL's second stage: conversations with
//! media, loss on the assistant turns, a LoRA on the frozen 4-bit LLM trained together with
//! the aligned projectors, each group with its own learning rate under one schedule.
//!
//! Same guarantees as alignment: a seeded item order where step `s` depends only on `s`,
//! atomic checkpoints holding every trainable tensor and AdamW's moments, `--resume` that
//! continues exactly, metrics, a loss curve and progress on stderr. The run folder ends with
//! `lora/` (PEFT's format), `projector-<modality>/` per projector and `model.json`, which
//! `generate`, `chat`, `serve`, `eval` and `merge` read.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use anymal_encoders::ModalityRegistry;
use anymal_llm::{LoadedModel, LoraSet, PeftAdapter};
use candle_core::{Tensor, Var};
use serde::Serialize;

use super::checkpoint::{self, TrainerState};
use super::data_order::DataOrder;
use super::metrics::{open_metrics, prepare_run_dir, write_curves};
use super::optim::{accumulate, clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use super::progress::Progress;
use super::schedule::lr_at;
use crate::assistant::{
    conversation_format, media_tokens_batch, ModalityAdapter, ModelManifest, MODEL_FILE,
};
use crate::conversation::Rendered;
use crate::data::instruct::{InstructData, InstructSample, MediaRef, Placeholders};
use crate::recipe::{expand_path, TuneRecipe};
use crate::splice::{answer_loss_sum, build_batch_groups};

pub const LORA_DIR: &str = "lora";

/// What `anymal tune` reports at the end (also `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct TuneSummary {
    pub steps: u64,
    pub minutes: f64,
    pub train_items: usize,
    pub train_skipped: usize,
    pub valid_items: usize,
    pub valid_skipped: usize,
    pub final_train_loss: f64,
    pub final_eval_loss: Option<f64>,
    pub samples_per_s: f64,
    pub peak_rss_mib: f64,
    pub lora_params: usize,
    pub projector_params: usize,
}

pub struct TuneOptions {
    pub resume: bool,
    pub registry: ModalityRegistry,
}

/// A conversation ready for batching.
struct Item {
    rendered: Rendered,
    media: Vec<MediaRef>,
}

struct Split {
    data: InstructData,
    items: Vec<Item>,
}

/// The projector folder name of a modality inside a run or checkpoint.
pub fn projector_dir_name(modality: &str) -> String {
    format!("projector-{modality}")
}

pub fn run(recipe: &TuneRecipe, opts: &TuneOptions) -> Result<TuneSummary> {
    let t_start = Instant::now();
    let out = recipe.output_dir();
    let existing = prepare_run_dir(&out, opts.resume, &recipe.to_toml()?)?;
    let t = &recipe.train;

    // The frozen LLM, its LoRA and the projectors.
    let load_opts = crate::cli::load_options(
        (!recipe.llm.requant.is_empty()).then_some(recipe.llm.requant.as_str()),
    )?;
    let mut model = anymal_llm::load_model(&recipe.llm.model, &load_opts)
        .with_context(|| format!("llm.model '{}'", recipe.llm.model))?;
    model.llm.gradient_checkpointing = recipe.llm.gradient_checkpointing;
    let lora = match &recipe.lora {
        Some(l) => {
            let set = model
                .llm
                .attach_lora(&l.spec()?, t.seed)
                .context("[lora]")?;
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
            Some(set)
        }
        None => None,
    };
    let mut adapters: Vec<ModalityAdapter> = Vec::new();
    for (i, p) in recipe.projectors.iter().enumerate() {
        let dir = expand_path(&p.from);
        let mut a = ModalityAdapter::load(&opts.registry, &dir, model.llm.cfg.hidden_size, true)
            .with_context(|| format!("projectors[{i}].from"))?;
        if adapters.iter().any(|b| b.modality == a.modality) {
            bail!(
                "projectors[{i}]: a second projector for modality '{}'",
                a.modality
            );
        }
        a.trainable = p.train;
        adapters.push(a);
    }
    eprintln!(
        "llm {} ({} layers, d={}); projectors: {}",
        model.path.display(),
        model.llm.cfg.num_layers,
        model.llm.cfg.hidden_size,
        if adapters.is_empty() {
            "none (text only)".to_string()
        } else {
            adapters
                .iter()
                .map(|a| {
                    format!(
                        "{} ({})",
                        a.modality,
                        if a.trainable { "trains" } else { "frozen" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    );

    let train = load_split(
        &expand_path(&recipe.data.train),
        recipe,
        &model,
        &adapters,
        &opts.registry,
        "train",
    )?;
    let valid = load_split(
        &expand_path(&recipe.data.valid),
        recipe,
        &model,
        &adapters,
        &opts.registry,
        "valid",
    )?;

    // Parameter groups: each trainable projector and the LoRA, with their learning rates as
    // multiples of train.lr (so one schedule drives them all).
    let mut groups: Vec<(Vec<(String, Var)>, f64)> = Vec::new();
    let mut proj_params: Vec<(String, Var)> = Vec::new();
    for (a, p) in adapters.iter().zip(&recipe.projectors) {
        if !a.trainable {
            continue;
        }
        let vars: Vec<(String, Var)> = a
            .store
            .vars()
            .into_iter()
            .map(|(n, v)| (format!("{}/{n}", a.modality), v))
            .collect();
        proj_params.extend(vars.iter().cloned());
        groups.push((vars, if p.lr > 0.0 { p.lr / t.lr } else { 1.0 }));
    }
    if let (Some(set), Some(l)) = (&lora, &recipe.lora) {
        groups.push((set.vars(), if l.lr > 0.0 { l.lr / t.lr } else { 1.0 }));
    }
    let mut opt = AdamW::grouped(
        groups,
        AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.adam_eps,
            weight_decay: t.weight_decay,
        },
    )?;
    let projector_params: usize = adapters
        .iter()
        .filter(|a| a.trainable)
        .map(|a| a.store.num_params())
        .sum();

    let mut elapsed_before = 0.0;
    let mut start_step = 0;
    if let Some((step, dir)) = existing {
        let state = checkpoint::read_state(&dir)?;
        if state.seed != t.seed {
            bail!(
                "{}: was trained with train.seed {}, the recipe says {}",
                dir.display(),
                state.seed,
                t.seed
            );
        }
        for a in adapters.iter().filter(|a| a.trainable) {
            let p = dir
                .join(projector_dir_name(&a.modality))
                .join(anymal_adapters::projector::WEIGHTS_FILE);
            a.store
                .load_safetensors(&p)
                .with_context(|| format!("{}", p.display()))?;
        }
        if let Some(set) = &lora {
            let a = PeftAdapter::read(&dir.join(LORA_DIR))?;
            set.set_peft_tensors(&a.tensors)
                .with_context(|| format!("{}", dir.join(LORA_DIR).display()))?;
        }
        opt.load_state(&dir.join(checkpoint::OPTIMIZER_FILE), step)?;
        start_step = step;
        elapsed_before = state.elapsed_s;
        eprintln!("resuming from {} (step {step})", dir.display());
    }

    let (mut history, mut metrics) = open_metrics(&out, start_step)?;

    let per_step = t.batch_size * t.grad_accum;
    let order = DataOrder::new(train.items.len(), t.seed);
    let mut progress = Progress::new(t.max_steps, start_step);
    let t_loop = Instant::now();
    let (mut last_loss, mut last_eval) = (f64::NAN, None);
    let mut step = start_step;
    let mut samples_done = 0usize;
    let mut stopped_early = false;
    let all_params: Vec<String> = opt_param_names(&proj_params, lora.as_ref());
    while step < t.max_steps {
        let t_step = Instant::now();
        let lr = lr_at(step, t.max_steps, t.lr, t.warmup_steps, t.min_lr_ratio);
        let idx: Vec<usize> = (step as usize * per_step..(step as usize + 1) * per_step)
            .map(|j| order.item(j))
            .collect();
        let total_labels: usize = idx
            .iter()
            .map(|&i| train.items[i].rendered.example.num_labels())
            .sum();
        let mut acc: Option<HashMap<String, Tensor>> = None;
        let mut loss_value = 0.0;
        if let Some(set) = &lora {
            set.set_training(true);
        }
        for chunk in idx.chunks(t.batch_size) {
            let items: Vec<&Item> = chunk.iter().map(|&i| &train.items[i]).collect();
            let (nll, _) = batch_nll(&model, &adapters, &items, true)?;
            let loss = (nll / total_labels as f64)?;
            loss_value += loss.to_scalar::<f32>()? as f64;
            let store = loss.backward()?;
            let mut grads = collect_grads(&proj_params, &store)?;
            if let Some(set) = &lora {
                grads.extend(set.grads(&store)?);
            }
            if let Some(missing) = all_params.iter().find(|n| !grads.contains_key(*n)) {
                bail!("no gradient reached parameter '{missing}'");
            }
            accumulate(&mut acc, grads)?;
        }
        let mut grads = acc.context("no micro-batches")?;
        let grad_norm = clip_grad_norm(&mut grads, t.max_grad_norm)?;
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            bail!(
                "step {}: loss {loss_value} / gradient norm {grad_norm} is not finite; lower train.lr or lora.lr",
                step + 1
            );
        }
        opt.step(&grads, lr)?;
        step += 1;
        samples_done += per_step;
        last_loss = loss_value;
        let sps = per_step as f64 / t_step.elapsed().as_secs_f64();
        let line = serde_json::json!({
            "step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
            "samples_per_s": sps, "elapsed_s": elapsed_before + t_loop.elapsed().as_secs_f64(),
        });
        writeln!(metrics, "{line}")?;
        history.push(line);
        progress.update(step, loss_value, lr, sps);

        let out_of_time = t.max_minutes > 0.0
            && (elapsed_before + t_loop.elapsed().as_secs_f64()) / 60.0 >= t.max_minutes;
        let last = step == t.max_steps || out_of_time;
        if (t.eval_every > 0 && step % t.eval_every == 0) || last {
            if let Some(set) = &lora {
                set.set_training(false);
            }
            let ev = eval_loss(&model, &adapters, &valid, t.batch_size, t.eval_items)?;
            let line = serde_json::json!({"step": step, "eval_loss": ev});
            writeln!(metrics, "{line}")?;
            history.push(line);
            progress.message(&format!("step {step}: eval loss {ev:.4}"));
            last_eval = Some(ev);
        }
        if (t.save_every > 0 && step % t.save_every == 0) || last {
            let state = TrainerState {
                step,
                elapsed_s: elapsed_before + t_loop.elapsed().as_secs_f64(),
                seed: t.seed,
            };
            let dir = checkpoint::save_with(&out, &opt, &state, t.keep_checkpoints, |tmp| {
                save_trainables(tmp, &adapters, lora.as_ref(), recipe, false)
            })?;
            progress.message(&format!("saved {}", dir.display()));
        }
        if out_of_time && step < t.max_steps {
            progress.message(&format!(
                "stopping at step {step}: train.max_minutes ({}) reached; --resume continues",
                t.max_minutes
            ));
            stopped_early = true;
            break;
        }
    }
    progress.finish();

    // The result: the trained parts and model.json naming them; frozen projectors are copied
    // so that the run folder stands on its own.
    for a in adapters.iter().filter(|a| !a.trainable) {
        a.projector
            .save(&out.join(projector_dir_name(&a.modality)), &a.store)?;
    }
    save_trainables(&out, &adapters, lora.as_ref(), recipe, true)?;
    write_curves(
        &out,
        &history,
        &format!("instruction tuning: {}", out.display()),
    );
    let loop_s = t_loop.elapsed().as_secs_f64();
    let summary = TuneSummary {
        steps: step,
        minutes: (elapsed_before + loop_s) / 60.0,
        train_items: train.items.len(),
        train_skipped: train.data.problems.len(),
        valid_items: valid.items.len(),
        valid_skipped: valid.data.problems.len(),
        final_train_loss: last_loss,
        final_eval_loss: last_eval,
        samples_per_s: if loop_s > 0.0 {
            samples_done as f64 / loop_s
        } else {
            0.0
        },
        peak_rss_mib: crate::cli::bench::peak_rss_mib(),
        lora_params: lora.as_ref().map_or(0, |s| s.num_params()),
        projector_params,
    };
    anymal_adapters::projector::write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    eprintln!(
        "{} {} steps in {:.1} min ({:.2} samples/s); run in {}; total {:.1} min",
        if stopped_early {
            "stopped after"
        } else {
            "done:"
        },
        step,
        summary.minutes,
        summary.samples_per_s,
        out.display(),
        t_start.elapsed().as_secs_f64() / 60.0
    );
    Ok(summary)
}

fn opt_param_names(proj: &[(String, Var)], lora: Option<&LoraSet>) -> Vec<String> {
    let mut names: Vec<String> = proj.iter().map(|(n, _)| n.clone()).collect();
    if let Some(set) = lora {
        names.extend(set.vars().into_iter().map(|(n, _)| n));
    }
    names
}

/// The trainable projectors, the LoRA and a `model.json` naming them into `dir` (a checkpoint
/// or the run folder), so that `--run DIR` loads either. Frozen projectors are named where
/// they are (`frozen_copied`: they were copied into `dir`).
fn save_trainables(
    dir: &Path,
    adapters: &[ModalityAdapter],
    lora: Option<&LoraSet>,
    recipe: &TuneRecipe,
    frozen_copied: bool,
) -> Result<()> {
    let mut projectors = Vec::new();
    for a in adapters {
        let name = projector_dir_name(&a.modality);
        if a.trainable {
            a.projector.save(&dir.join(&name), &a.store)?;
            projectors.push(name);
        } else if frozen_copied {
            projectors.push(name);
        } else {
            let abs = std::fs::canonicalize(&a.dir).unwrap_or_else(|_| a.dir.clone());
            projectors.push(abs.to_string_lossy().to_string());
        }
    }
    if let Some(set) = lora {
        set.save_peft(&dir.join(LORA_DIR), &recipe.llm.model)?;
    }
    let manifest = ModelManifest {
        llm: recipe.llm.model.clone(),
        requant: recipe.llm.requant.clone(),
        projectors,
        lora: lora.map(|_| LORA_DIR.to_string()),
        chat_template: recipe.data.chat_template,
    };
    anymal_adapters::projector::write_atomic(
        &dir.join(MODEL_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    Ok(())
}

/// Read, validate and render one data file; run every file through its encoder once (filling
/// the feature cache and finding the ones that fail to decode).
fn load_split(
    path: &Path,
    recipe: &TuneRecipe,
    model: &LoadedModel,
    adapters: &[ModalityAdapter],
    registry: &ModalityRegistry,
    what: &str,
) -> Result<Split> {
    let t0 = Instant::now();
    let mut data = InstructData::read(path, &Placeholders::from_registry(registry))
        .with_context(|| format!("data.{what}"))?;
    let mut fmt = conversation_format(model, recipe.data.chat_template, adapters);
    fmt.max_answer_tokens = recipe.data.max_answer_tokens;
    let mut rendered: Vec<Option<Rendered>> = Vec::with_capacity(data.samples.len());
    let mut bad: Vec<(usize, String)> = Vec::new();
    for (i, s) in data.samples.iter().enumerate() {
        match render_sample(&fmt, s, adapters, recipe.data.max_seq_len) {
            Ok(r) => rendered.push(Some(r)),
            Err(e) => {
                rendered.push(None);
                bad.push((i, format!("{e:#}")));
            }
        }
    }
    // Features: per adapter, every file of the samples still good, in groups.
    for a in adapters {
        let files: Vec<(usize, &Path)> = data
            .samples
            .iter()
            .enumerate()
            .filter(|(i, _)| rendered[*i].is_some())
            .flat_map(|(i, s)| {
                s.media
                    .iter()
                    .filter(|m| m.modality == a.modality)
                    .map(move |m| (i, m.path.as_path()))
            })
            .collect();
        for (g, group) in files.chunks(16).enumerate() {
            let paths: Vec<&Path> = group.iter().map(|f| f.1).collect();
            for (j, r) in a.source.get(&paths).into_iter().enumerate() {
                if let Err(e) = r {
                    let i = group[j].0;
                    if rendered[i].take().is_some() {
                        bad.push((i, format!("{e:#}")));
                    }
                }
            }
            if t0.elapsed().as_secs() >= 5 && g % 8 == 0 {
                eprintln!(
                    "{what}: {} features {}/{}",
                    a.modality,
                    (g + 1) * 16,
                    files.len()
                );
            }
        }
    }
    bad.sort();
    let mut items = Vec::new();
    for (s, r) in data.samples.iter().zip(rendered) {
        if let Some(r) = r {
            items.push(Item {
                rendered: r,
                media: s.media.clone(),
            });
        }
    }
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
    Ok(Split { data, items })
}

fn render_sample(
    fmt: &crate::conversation::ConversationFormat,
    s: &InstructSample,
    adapters: &[ModalityAdapter],
    max_seq_len: usize,
) -> Result<Rendered> {
    for m in &s.media {
        if !adapters.iter().any(|a| a.modality == m.modality) {
            bail!(
                "has {} input but the recipe has no {} projector ([[projectors]])",
                m.modality,
                m.modality
            );
        }
    }
    let r = fmt.render(&s.turns)?;
    let n = r.example.input_ids.len();
    if max_seq_len > 0 && n > max_seq_len {
        bail!("is {n} tokens long (media slots included); data.max_seq_len is {max_seq_len}");
    }
    if r.example.num_labels() == 0 {
        bail!("has no answer tokens");
    }
    Ok(r)
}

/// Summed answer NLL of a micro-batch and its label count.
fn batch_nll(
    model: &LoadedModel,
    adapters: &[ModalityAdapter],
    items: &[&Item],
    train: bool,
) -> Result<(Tensor, usize)> {
    let pairs: Vec<(&Rendered, &[MediaRef])> = items
        .iter()
        .map(|i| (&i.rendered, i.media.as_slice()))
        .collect();
    let toks = media_tokens_batch(adapters, &pairs, train).context("encoding a training batch")?;
    let examples: Vec<_> = items.iter().map(|i| i.rendered.example.clone()).collect();
    let batch = build_batch_groups(&model.llm, &examples, &toks)?;
    answer_loss_sum(&model.llm, &batch)
}

/// Mean answer-token loss over (the first `limit` of) a split.
fn eval_loss(
    model: &LoadedModel,
    adapters: &[ModalityAdapter],
    split: &Split,
    batch_size: usize,
    limit: usize,
) -> Result<f64> {
    let n = if limit == 0 {
        split.items.len()
    } else {
        limit.min(split.items.len())
    };
    let (mut sum, mut count) = (0.0, 0);
    let all: Vec<&Item> = split.items[..n].iter().collect();
    for chunk in all.chunks(batch_size) {
        let (nll, m) = batch_nll(model, adapters, chunk, false)?;
        sum += nll.to_scalar::<f32>()? as f64;
        count += m;
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    })
}

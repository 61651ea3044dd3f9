//! The alignment loop (`anymal align`): a frozen encoder and a frozen 4-bit LLM, a projector
//! between them that alone trains. One readable loop, as torchtune keeps one per recipe.
//!
//! Determinism: the projector starts from `train.seed`; the item order of every epoch is a
//! seeded shuffle; the items of optimizer step `s` depend only on `s`. A checkpoint holds the
//! parameters, AdamW's moments and the step, so `--resume` continues exactly as an
//! uninterrupted run would (same losses, same final weights).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use anymal_adapters::{Projector, ProjectorConfig, ProjectorKind, Reduce};
use anymal_llm::LoadedModel;
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::checkpoint::{self, TrainerState};
use super::data_order::DataOrder;
use super::metrics::{open_metrics, prepare_run_dir, write_curves};
use super::optim::{accumulate, clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use super::progress::Progress;
use super::schedule::lr_at;
use crate::data::manifest::Manifest;
use crate::features::{load_encoder, FeatureSource};
use crate::recipe::{expand_path, AlignRecipe};
use crate::splice::{answer_loss_sum, build_batch, Example, PromptTemplate};

/// What `anymal align` reports at the end (also written as `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct AlignSummary {
    pub steps: u64,
    pub minutes: f64,
    pub train_items: usize,
    pub train_skipped: usize,
    pub valid_items: usize,
    pub valid_skipped: usize,
    pub final_train_loss: f64,
    pub final_eval_loss: Option<f64>,
    pub samples_per_s: f64,
    pub feature_cache: String,
    pub peak_rss_mib: f64,
    pub projector_params: usize,
}

/// An item ready for batching: its features and its example (prompt + answer tokens).
struct Item {
    path: PathBuf,
    example: Example,
}

/// Items of one manifest that passed validation, with their answer tokens.
struct Split {
    manifest: Manifest,
    items: Vec<Item>,
}

pub struct AlignOptions {
    /// Continue from the latest checkpoint in the run folder.
    pub resume: bool,
    /// The modalities the recipe's `modality` is looked up in.
    pub registry: anymal_encoders::ModalityRegistry,
}

pub fn run(recipe: &AlignRecipe, opts: &AlignOptions) -> Result<AlignSummary> {
    let t_start = Instant::now();
    let out = recipe.output_dir();
    let existing = prepare_run_dir(&out, opts.resume, &recipe.to_toml()?)?;

    // The frozen parts.
    let load_opts = crate::cli::load_options(
        (!recipe.llm.requant.is_empty()).then_some(recipe.llm.requant.as_str()),
    )?;
    let mut model = anymal_llm::load_model(&recipe.llm.model, &load_opts)
        .with_context(|| format!("llm.model '{}'", recipe.llm.model))?;
    model.llm.gradient_checkpointing = recipe.llm.gradient_checkpointing;
    let modality = opts.registry.get(&recipe.modality).context("modality")?;
    recipe.check_prompt(&modality.placeholder())?;
    let encoder = load_encoder(
        &opts.registry,
        &recipe.modality,
        &recipe.encoder.model,
        &recipe.encoder.options_json()?,
    )
    .with_context(|| format!("encoder.model '{}'", recipe.encoder.model))?;
    let source = FeatureSource::new(encoder, recipe.encoder.feature_cache);
    eprintln!(
        "llm {} ({} layers, d={}); encoder {} (d={})",
        model.path.display(),
        model.llm.cfg.num_layers,
        model.llm.cfg.hidden_size,
        source.encoder.id(),
        source.encoder.hidden_size()
    );

    // Data: validate, run every file through the encoder once (this fills the cache and finds
    // the files that fail to decode), tokenize answers.
    let tpl = PromptTemplate::new(
        &model,
        &recipe.data.prompt,
        &modality.placeholder(),
        recipe.data.chat_template,
    )?;
    let train = load_split(
        &expand_path(&recipe.data.train),
        recipe,
        &model,
        &tpl,
        &source,
        "train",
    )?;
    let valid = load_split(
        &expand_path(&recipe.data.valid),
        recipe,
        &model,
        &tpl,
        &source,
        "valid",
    )?;

    // The projector.
    let pcfg = projector_config(
        recipe,
        &model,
        source.encoder.hidden_size(),
        source.encoder.id(),
    )?;
    let (projector, store) = Projector::init(&pcfg, recipe.train.seed, &Device::Cpu)?;
    let params = store.vars();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            beta1: recipe.train.beta1,
            beta2: recipe.train.beta2,
            eps: recipe.train.adam_eps,
            weight_decay: recipe.train.weight_decay,
        },
    )?;
    let mut elapsed_before = 0.0;
    let mut start_step = 0;
    if let Some((step, dir)) = existing {
        let state = checkpoint::read_state(&dir)?;
        if state.seed != recipe.train.seed {
            bail!(
                "{}: was trained with train.seed {}, the recipe says {}",
                dir.display(),
                state.seed,
                recipe.train.seed
            );
        }
        store.load_safetensors(&dir.join(anymal_adapters::projector::WEIGHTS_FILE))?;
        opt.load_state(&dir.join(checkpoint::OPTIMIZER_FILE), step)?;
        start_step = step;
        elapsed_before = state.elapsed_s;
        eprintln!("resuming from {} (step {step})", dir.display());
    } else {
        match_embedding_scale(&model, &projector, &store, &source, &train)?;
        if !recipe.projector.init_from.is_empty() {
            let n = init_from(&store, &expand_path(&recipe.projector.init_from))
                .context("projector.init_from")?;
            eprintln!(
                "projector: {n} parameters from {}",
                recipe.projector.init_from
            );
        }
    }
    eprintln!(
        "projector {:?} {} -> {} x {} tokens: {} parameters",
        pcfg.kind,
        pcfg.d_enc,
        pcfg.d_llm,
        pcfg.num_tokens,
        store.num_params()
    );

    let (mut history, mut metrics) = open_metrics(&out, start_step)?;

    let t = &recipe.train;
    let per_step = t.batch_size * t.grad_accum;
    let order = DataOrder::new(train.items.len(), t.seed);
    let mut progress = Progress::new(t.max_steps, start_step);
    let t_loop = Instant::now();
    let mut last_loss = f64::NAN;
    let mut last_eval = None;
    let mut step = start_step;
    let mut samples_done = 0usize;
    let mut stopped_early = false;
    while step < t.max_steps {
        let t_step = Instant::now();
        let lr = lr_at(step, t.max_steps, t.lr, t.warmup_steps, t.min_lr_ratio);
        let idx: Vec<usize> = (step as usize * per_step..(step as usize + 1) * per_step)
            .map(|j| order.item(j))
            .collect();
        let total_labels: usize = idx
            .iter()
            .map(|&i| train.items[i].example.num_labels())
            .sum();
        let mut acc: Option<std::collections::HashMap<String, Tensor>> = None;
        let mut loss_value = 0.0;
        for chunk in idx.chunks(t.batch_size) {
            let items: Vec<&Item> = chunk.iter().map(|&i| &train.items[i]).collect();
            let (nll, _) = batch_nll(&model, &projector, &source, &items, true)?;
            let loss = (nll / total_labels as f64)?;
            loss_value += loss.to_scalar::<f32>()? as f64;
            let grads = collect_grads(&params, &loss.backward()?)?;
            accumulate(&mut acc, grads)?;
        }
        let mut grads = acc.context("no micro-batches")?;
        let grad_norm = clip_grad_norm(&mut grads, t.max_grad_norm)?;
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            bail!("step {}: loss {loss_value} / gradient norm {grad_norm} is not finite; lower train.lr", step + 1);
        }
        opt.step(&grads, lr)?;
        step += 1;
        samples_done += per_step;
        last_loss = loss_value;
        let dt = t_step.elapsed().as_secs_f64();
        let sps = per_step as f64 / dt;
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
            let ev = eval_loss(
                &model,
                &projector,
                &source,
                &valid,
                t.batch_size,
                t.eval_items,
            )?;
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
            let dir = checkpoint::save(&out, &projector, &store, &opt, &state, t.keep_checkpoints)?;
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

    // The result.
    projector.save(&out, &store)?;
    write_curves(
        &out,
        &history,
        &format!("{} alignment: {}", recipe.modality, out.display()),
    );
    let loop_s = t_loop.elapsed().as_secs_f64();
    let summary = AlignSummary {
        steps: step,
        minutes: (elapsed_before + loop_s) / 60.0,
        train_items: train.items.len(),
        train_skipped: train.manifest.problems.len(),
        valid_items: valid.items.len(),
        valid_skipped: valid.manifest.problems.len(),
        final_train_loss: last_loss,
        final_eval_loss: last_eval,
        samples_per_s: if loop_s > 0.0 {
            samples_done as f64 / loop_s
        } else {
            0.0
        },
        feature_cache: source.cache_report(),
        peak_rss_mib: crate::cli::bench::peak_rss_mib(),
        projector_params: store.num_params(),
    };
    anymal_adapters::projector::write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    eprintln!(
        "{} {} steps in {:.1} min ({:.2} samples/s); {}; projector in {}; total {:.1} min",
        if stopped_early {
            "stopped after"
        } else {
            "done:"
        },
        step,
        summary.minutes,
        summary.samples_per_s,
        summary.feature_cache,
        out.display(),
        t_start.elapsed().as_secs_f64() / 60.0
    );
    Ok(summary)
}

/// The projector's shape from the recipe and the two frozen models.
pub fn projector_config(
    recipe: &AlignRecipe,
    model: &LoadedModel,
    d_enc: usize,
    encoder_id: &str,
) -> Result<ProjectorConfig> {
    let p = &recipe.projector;
    let reduce = match p.reduce.as_str() {
        "pool" => Reduce::Pool,
        "concat" => {
            if p.stride == 0 {
                bail!("projector.stride must be >= 1");
            }
            Reduce::Concat { stride: p.stride }
        }
        other => bail!("projector.reduce '{other}' is not one of: pool, concat"),
    };
    Ok(ProjectorConfig {
        kind: ProjectorKind::parse(&p.kind).context("projector.kind")?,
        d_enc,
        d_llm: model.llm.cfg.hidden_size,
        num_tokens: p.num_tokens,
        reduce,
        perceiver: p.perceiver.clone(),
        imu_encoder: p.imu_encoder.clone().map(|mut c| {
            c.channels = d_enc;
            c
        }),
        modality: recipe.modality.clone(),
        encoder: recipe.encoder.model.clone(),
        encoder_options: recipe.encoder.options_json()?,
        encoder_id: encoder_id.to_string(),
        llm: recipe.llm.model.clone(),
        prompt: recipe.data.prompt.clone(),
        chat_template: recipe.data.chat_template,
    })
}

/// Overwrite the parameters that `path` also holds (same names; shapes must match). Returns
/// how many were loaded; none is an error (the file is surely not what was meant).
fn init_from(store: &anymal_adapters::ParamStore, path: &Path) -> Result<usize> {
    let loaded = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    let names: std::collections::HashSet<String> =
        store.vars().into_iter().map(|(n, _)| n).collect();
    let picked: std::collections::BTreeMap<String, Tensor> = loaded
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .collect();
    if picked.is_empty() {
        bail!(
            "{}: holds none of the projector's parameters",
            path.display()
        );
    }
    let n = picked.len();
    store
        .set_tensors(picked)
        .with_context(|| format!("{}", path.display()))?;
    Ok(n)
}

/// Answer tokens for `text`, cut to `max_tokens`. Without a chat template the answer follows
/// the prompt directly, so it gets a separating space unless the prompt ends in whitespace.
pub fn answer_ids(
    model: &LoadedModel,
    tpl_chat: bool,
    prompt: &str,
    text: &str,
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let sep = if !tpl_chat && !prompt.ends_with(char::is_whitespace) {
        " "
    } else {
        ""
    };
    let mut ids = model
        .tokenizer
        .encode(&format!("{sep}{text}"), false, false)?;
    ids.truncate(max_tokens);
    Ok(ids)
}

fn load_split(
    path: &Path,
    recipe: &AlignRecipe,
    model: &LoadedModel,
    tpl: &PromptTemplate,
    source: &FeatureSource,
    what: &str,
) -> Result<Split> {
    let mut manifest =
        Manifest::read(path, &recipe.modality).with_context(|| format!("data.{what}"))?;
    // Encode in groups: a bad file is rejected with its line number, the others go on.
    let t0 = Instant::now();
    let mut bad: Vec<(usize, String)> = Vec::new();
    let n = manifest.items.len();
    for start in (0..n).step_by(16) {
        let paths: Vec<&Path> = manifest.items[start..(start + 16).min(n)]
            .iter()
            .map(|i| i.path.as_path())
            .collect();
        for (j, r) in source.get(&paths).into_iter().enumerate() {
            if let Err(e) = r {
                bad.push((start + j, format!("{e:#}")));
            }
        }
        if t0.elapsed().as_secs() >= 5 && (start / 16) % 8 == 0 {
            eprintln!("{what}: features {}/{n}", (start + 16).min(n));
        }
    }
    for (i, why) in bad.into_iter().rev() {
        manifest.reject(i, &why);
    }
    for p in &manifest.problems {
        eprintln!("skipped {p}");
    }
    manifest.check_bad_fraction(recipe.data.max_bad_fraction)?;
    let chat = recipe.data.chat_template && model.chat_template.is_some();
    let mut items = Vec::with_capacity(manifest.items.len());
    for it in &manifest.items {
        let ans = answer_ids(
            model,
            chat,
            &recipe.data.prompt,
            &it.text,
            recipe.data.max_text_tokens,
        )?;
        items.push(Item {
            path: it.path.clone(),
            example: Example::new(tpl, recipe.projector.num_tokens, Some(&ans)),
        });
    }
    eprintln!(
        "{what}: {} items ({} skipped) from {} in {:.1}s; {}",
        items.len(),
        manifest.problems.len(),
        path.display(),
        t0.elapsed().as_secs_f64(),
        source.cache_report()
    );
    Ok(Split { manifest, items })
}

/// Summed answer NLL of a micro-batch and its label count. `train = false` cuts the graph at
/// the projector's output so the LLM runs its inference kernels.
fn batch_nll(
    model: &LoadedModel,
    projector: &Projector,
    source: &FeatureSource,
    items: &[&Item],
    train: bool,
) -> Result<(Tensor, usize)> {
    let paths: Vec<&Path> = items.iter().map(|i| i.path.as_path()).collect();
    let feats = source
        .get(&paths)
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .context("encoding a training batch")?;
    let mut toks = projector.forward_items(&feats)?;
    if !train {
        toks = toks.detach();
    }
    let groups: Vec<Tensor> = (0..items.len())
        .map(|i| toks.narrow(0, i, 1))
        .collect::<candle_core::Result<_>>()?;
    let examples: Vec<Example> = items.iter().map(|i| i.example.clone()).collect();
    let batch = build_batch(&model.llm, &examples, &groups)?;
    answer_loss_sum(&model.llm, &batch)
}

/// Scale the fresh projector so its tokens have the RMS of the LLM's embeddings of the
/// answers they should lead to (measured on up to 16 training items).
fn match_embedding_scale(
    model: &LoadedModel,
    projector: &Projector,
    store: &anymal_adapters::ParamStore,
    source: &FeatureSource,
    train: &Split,
) -> Result<()> {
    let items: Vec<&Item> = train.items.iter().take(16).collect();
    let paths: Vec<&Path> = items.iter().map(|i| i.path.as_path()).collect();
    let feats = source.get(&paths).into_iter().collect::<Result<Vec<_>>>()?;
    let out_rms = projector
        .forward_items(&feats)?
        .detach()
        .sqr()?
        .mean_all()?
        .sqrt()?
        .to_scalar::<f32>()? as f64;
    let ids: Vec<u32> = items
        .iter()
        .flat_map(|i| {
            i.example
                .labels
                .iter()
                .filter(|&&l| l >= 0)
                .map(|&l| l as u32)
                .collect::<Vec<_>>()
        })
        .collect();
    let ids = Tensor::new(ids.as_slice(), &model.llm.device)?.unsqueeze(0)?;
    let emb_rms = model
        .llm
        .embed_tokens(&ids)?
        .sqr()?
        .mean_all()?
        .sqrt()?
        .to_scalar::<f32>()? as f64;
    if out_rms > 0.0 && emb_rms > 0.0 {
        projector.scale_output(store, emb_rms / out_rms)?;
        eprintln!("projector init: output RMS {out_rms:.3} scaled to the embeddings' {emb_rms:.3}");
    }
    Ok(())
}

/// Mean answer-token loss over (the first `limit` of) a split.
fn eval_loss(
    model: &LoadedModel,
    projector: &Projector,
    source: &FeatureSource,
    split: &Split,
    batch_size: usize,
    limit: usize,
) -> Result<f64> {
    let n = if limit == 0 {
        split.items.len()
    } else {
        limit.min(split.items.len())
    };
    let mut sum = 0.0;
    let mut count = 0;
    let all: Vec<&Item> = split.items[..n].iter().collect();
    for chunk in all.chunks(batch_size) {
        let (nll, m) = batch_nll(model, projector, source, chunk, false)?;
        sum += nll.to_scalar::<f32>()? as f64;
        count += m;
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    })
}

//! The alignment loop (`anymal align`): a frozen encoder and a frozen 4-bit LLM, a projector
//! between them that alone trains. One readable loop, as torchtune keeps one per recipe; the
//! run's life around it (folder, resume, cadence, report) is [`super::run`]'s.
//!
//! Each manifest item becomes a one-turn conversation, the recipe's prompt (with the
//! placeholder) and the item's text as the answer, rendered the way inference renders it.
//!
//! Determinism: the projector starts from `train.seed`; the item order of every epoch is a
//! seeded shuffle; the items of optimizer step `s` depend only on `s`. A checkpoint holds the
//! parameters, AdamW's moments and the step, so `--resume` continues exactly as an
//! uninterrupted run would (same losses, same final weights).

use std::path::Path;

use anyhow::{bail, Context, Result};
use anymal_adapters::{ParamStore, Projector, ProjectorConfig, ProjectorKind, Reduce};
use anymal_encoders::ModalityRegistry;
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::ctc_warmup;
use super::data_order::DataOrder;
use super::embedding_scale::match_embedding_scale;
use super::optim::clip_grad_norm;
use super::run::{load_llm, optimizer, RunSummary, SplitCounts, StepLoop, TrainingRun};
use super::step::{encode_all, eval_loss, step_gradients, TrainItem, Trainables};
use crate::conversation::{MediaRef, Role, Turn};
use crate::data::manifest::{Columns, ManifestItem};
use crate::features::{load_encoder, FeatureSource};
use crate::multimodal::{ModalityAdapter, MultimodalModel};
use crate::recipe::{expand_path, AlignRecipe};

/// What alignment reports beyond every run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct AlignExtra {
    pub feature_cache: String,
    pub projector_params: usize,
    /// The CTC warm start, when this process ran one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctc: Option<ctc_warmup::CtcReport>,
}

pub type AlignSummary = RunSummary<AlignExtra>;

pub struct AlignOptions {
    /// Continue from the latest intact checkpoint in the run folder.
    pub resume: bool,
    /// Replace an earlier run in the run folder (see [`TrainingRun::prepare`]).
    pub overwrite: bool,
    /// The modalities the recipe's `modality` is looked up in.
    pub registry: ModalityRegistry,
}

pub fn run(recipe: &AlignRecipe, opts: &AlignOptions) -> Result<AlignSummary> {
    let run = TrainingRun::prepare(
        recipe.output_dir(),
        opts.resume,
        opts.overwrite,
        &recipe.to_toml()?,
    )?;
    let t = &recipe.train;

    // The frozen parts, and the fresh projector between them.
    let llm = load_llm(&recipe.llm)?;
    let modality = opts.registry.get(&recipe.modality).context("modality")?;
    let placeholder = modality.placeholder();
    recipe.check_prompt(&placeholder)?;
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
        llm.path.display(),
        llm.llm.cfg.num_layers,
        llm.llm.cfg.hidden_size,
        source.encoder.id(),
        source.encoder.hidden_size()
    );
    let pcfg = projector_config(
        recipe,
        llm.llm.cfg.hidden_size,
        source.encoder.hidden_size(),
        source.encoder.id(),
    )?;
    let (projector, store) = Projector::init(&pcfg, t.seed, &Device::Cpu)?;
    let adapter = ModalityAdapter {
        modality: recipe.modality.clone(),
        placeholder,
        default_extension: modality.default_extension().map(str::to_string),
        projector,
        store,
        source,
        dir: run.dir.path().to_path_buf(),
        trainable: true,
    };
    let name = recipe.output_dir.clone();
    let mut model =
        MultimodalModel::new(llm, vec![adapter], None, recipe.data.chat_template, name)?;
    let adapter = &model.adapters[0];

    // Data: validated, every file through the encoder once, rendered.
    let (train, train_counts) =
        load_splits(&recipe.data.train, &recipe.data.train_extra, recipe, &model)?;
    let (valid, valid_counts) =
        load_split(&expand_path(&recipe.data.valid), recipe, &model, "valid")?;

    let params = adapter.projector.trainable_vars(&adapter.store);
    let mut opt = optimizer(vec![(params.clone(), 1.0)], t)?;
    let resumed = run.resume(t.seed, &mut opt, |ckpt| {
        Ok(adapter
            .store
            .load_safetensors(&ckpt.join(anymal_adapters::projector::WEIGHTS_FILE))?)
    })?;
    let mut ctc = None;
    if !run.is_resuming() {
        match_embedding_scale(&model, &train)?;
        if !recipe.projector.init_from.is_empty() {
            let n = init_from(&adapter.store, &expand_path(&recipe.projector.init_from))
                .context("projector.init_from")?;
            eprintln!(
                "projector: {n} parameters from {}",
                recipe.projector.init_from
            );
        }
        ctc = ctc_warmup::warm_start(
            &recipe.ctc,
            t.seed,
            &model,
            &train,
            &valid,
            run.dir.path(),
            opts.resume,
        )?;
    }
    if let Some(output) = recipe.ctc.compress {
        // Fresh, restarted from `ctc-init/` or resumed from a checkpoint: the table is in the
        // store by now.
        let a = &mut model.adapters[0];
        let table = a
            .store
            .tensors()
            .remove(anymal_adapters::ctc_compress::TABLE)
            .context("ctc.compress: this run has no CTC table (it was started without it)")?;
        a.projector = a.projector.with_ctc_compress(&a.store, &table, output)?;
        eprintln!(
            "ctc compression ({output:?}): the LLM reads the tokens not called blank among {} classes",
            table.dim(0)?
        );
    }
    let adapter = &model.adapters[0];
    if ctc.is_some() {
        eprintln!(
            "after the ctc warm start: valid loss {:.4} through the LLM",
            eval_loss(&model, &valid, t.batch_size, t.eval_items)?
        );
    }
    let tokens = match (pcfg.reduce.is_rate(), pcfg.reduce.factor()) {
        (true, Some(n)) => format!("1 token per {n} frames ({})", reduce_name(&pcfg.reduce)),
        _ => format!("{} tokens", pcfg.num_tokens),
    };
    eprintln!(
        "projector {:?} {} -> {} x {tokens}: {} parameters",
        pcfg.kind,
        pcfg.d_enc,
        pcfg.d_llm,
        adapter.projector.trainable_params(&adapter.store)
    );

    let trainables = Trainables {
        projector: params,
        lora: None,
    };
    let order = DataOrder::new(train.len(), t.seed);
    let mut steps = StepLoop::new(&run, t, &resumed)?;
    while steps.next_step().is_some() {
        let items: Vec<&TrainItem> = steps.items(&order).iter().map(|&i| &train[i]).collect();
        let (loss, mut grads) = step_gradients(&model, &trainables, &items, t.batch_size)?;
        let grad_norm = clip_grad_norm(&mut grads, t.max_grad_norm)?;
        steps.check_finite(loss, grad_norm, "train.lr")?;
        opt.step(&grads, steps.lr())?;
        steps.record(loss, grad_norm)?;
        if steps.eval_due()
            && steps.record_eval(eval_loss(&model, &valid, t.batch_size, t.eval_items)?)?
        {
            steps.save_best(&run, |dir| {
                Ok(adapter.projector.save(dir, &adapter.store)?)
            })?;
        }
        if steps.save_due() {
            steps.save(&run, &opt, |dir| {
                Ok(adapter.projector.save(dir, &adapter.store)?)
            })?;
        }
    }
    let finished = steps.finish(
        &run,
        &format!(
            "{} alignment: {}",
            recipe.modality,
            run.dir.path().display()
        ),
    );

    // The result.
    adapter.projector.save(run.dir.path(), &adapter.store)?;
    let cache = adapter.source.cache_report();
    let detail = format!("{cache}; projector in {}", run.dir.path().display());
    let extra = AlignExtra {
        feature_cache: cache,
        projector_params: adapter.projector.trainable_params(&adapter.store),
        ctc,
    };
    RunSummary::report(&finished, train_counts, valid_counts, extra, &run, &detail)
}

/// The recipe's name of a reduction method.
fn reduce_name(r: &Reduce) -> &'static str {
    match r {
        Reduce::Pool => "pool",
        Reduce::Concat { .. } => "concat",
        Reduce::Stack { .. } => "stack",
        Reduce::AvgPool { .. } => "avg_pool",
    }
}

/// The projector's shape from the recipe and the two frozen models' widths.
pub fn projector_config(
    recipe: &AlignRecipe,
    d_llm: usize,
    d_enc: usize,
    encoder_id: &str,
) -> Result<ProjectorConfig> {
    let p = &recipe.projector;
    let kind = ProjectorKind::parse(&p.kind).context("projector.kind")?;
    let kind_default = kind.default_reduce();
    let method = match p.reduce.as_str() {
        "" => match kind_default {
            Some(Reduce::Stack { .. }) => "stack",
            Some(Reduce::AvgPool { .. }) => "avg_pool",
            _ => "pool",
        },
        m => m,
    };
    // Frames per token: as given, else the kind's own for its method, else (concat) 1.
    let stride = match (p.stride, kind_default.and_then(|r| r.factor())) {
        (Some(0), _) => bail!("projector.stride must be >= 1"),
        (Some(n), _) => Some(n),
        (None, Some(n)) if kind_default.is_some_and(|r| reduce_name(&r) == method) => Some(n),
        (None, _) if method == "concat" => Some(1),
        (None, _) => None,
    };
    let need_stride = || {
        stride.with_context(|| {
            format!("projector.stride (frames per token) is needed with reduce = \"{method}\"")
        })
    };
    let reduce = match method {
        "pool" => Reduce::Pool,
        "concat" => Reduce::Concat {
            stride: need_stride()?,
        },
        "stack" => Reduce::Stack { n: need_stride()? },
        "avg_pool" => Reduce::AvgPool { n: need_stride()? },
        other => {
            bail!("projector.reduce '{other}' is not one of: pool, concat, stack, avg_pool")
        }
    };
    Ok(ProjectorConfig {
        kind,
        d_enc,
        d_llm,
        num_tokens: p.num_tokens,
        reduce,
        hidden: p.hidden,
        perceiver: p.perceiver.clone(),
        front: p.front.clone().map(|f| f.with_input_width(d_enc)),
        ctc_compress: None,
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
fn init_from(store: &ParamStore, path: &Path) -> Result<usize> {
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

/// A manifest's items that pass validation and decode, as conversations: the recipe's prompt,
/// then the item's text as the answer (cut to `data.max_text_tokens`).
/// The training items of `data.train` and every `data.train_extra` manifest, in that order.
fn load_splits(
    train: &str,
    extra: &[String],
    recipe: &AlignRecipe,
    model: &MultimodalModel,
) -> Result<(Vec<TrainItem>, SplitCounts)> {
    let mut items = Vec::new();
    let mut counts = SplitCounts::default();
    for (i, m) in std::iter::once(train)
        .chain(extra.iter().map(|s| s.as_str()))
        .enumerate()
    {
        let what = if i == 0 {
            "train".to_string()
        } else {
            format!("train_extra.{}", i - 1)
        };
        let (part, c) = load_split(&expand_path(m), recipe, model, &what)?;
        items.extend(part);
        counts.items += c.items;
        counts.skipped += c.skipped;
    }
    Ok((items, counts))
}

fn load_split(
    path: &Path,
    recipe: &AlignRecipe,
    model: &MultimodalModel,
    what: &str,
) -> Result<(Vec<TrainItem>, SplitCounts)> {
    let t0 = std::time::Instant::now();
    let columns = Columns::with_overrides(&recipe.modality, &recipe.data.columns)?;
    let mut manifest =
        crate::data::read_manifest(path, &columns).with_context(|| format!("data.{what}"))?;
    let media_of = |it: &ManifestItem| vec![it.media(&recipe.modality)];
    let media: Vec<Vec<MediaRef>> = manifest.items.iter().map(media_of).collect();
    let refs: Vec<&[MediaRef]> = media.iter().map(|m| m.as_slice()).collect();
    let failed = encode_all(model, &refs, what);
    for (i, why) in failed.into_iter().enumerate().rev() {
        if let Some(why) = why {
            manifest.reject(i, &why);
        }
    }
    for p in &manifest.problems {
        eprintln!("skipped {p}");
    }
    manifest.check_bad_fraction(recipe.data.max_bad_fraction)?;
    let mut format = model.format();
    format.max_answer_tokens = recipe.data.max_text_tokens;
    let items = manifest
        .items
        .iter()
        .map(|it| {
            let turns = [
                Turn::new(Role::User, &recipe.data.prompt),
                Turn::new(Role::Assistant, &it.text),
            ];
            Ok(TrainItem {
                rendered: format.render(&turns)?,
                media: media_of(it),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "{what}: {} items ({} skipped) from {} in {:.1}s; {}",
        items.len(),
        manifest.problems.len(),
        path.display(),
        t0.elapsed().as_secs_f64(),
        model.adapters[0].source.cache_report()
    );
    let counts = SplitCounts {
        items: items.len(),
        skipped: manifest.problems.len(),
    };
    Ok((items, counts))
}

//! CTC warm start of a projector (`[ctc]` in an alignment recipe): before the projector learns
//! through the frozen LLM, it learns to put each audio token near the LLM's embedding of the
//! word piece spoken there, with a CTC loss over the LLM's own (input) embedding table.
//!
//! Why: through the LLM, a fresh projector gets one weak signal per answer token and needs
//! thousands of steps before the LLM starts to read it (on a 2-core CPU the LLM step is ~10 s;
//! see the README's speech figures). The CTC head needs no pass through the LLM (measured
//! ~50x more items per second) and gives every audio token a target, and its greedy decoding
//! measures within minutes how much the encoder and projector alone can carry. The hope, as in
//! CTC-compressed LLM speech front ends (e.g. Wu et al. 2023, "On decoder-only architecture
//! for speech-to-text and large language model integration"), is an LLM stage that starts from
//! tokens already spelling the transcript in the LLM's embedding space. Measured (README,
//! "CTC warm start" and "CTC compression"): with the blanks still there it does not help that
//! stage; with them dropped (`compress`) and the kept runs snapped to the word pieces'
//! embeddings, the frozen LLM reads the tokens as words.
//!
//! The head: `logits = exp(log_scale) * (|e| h / |h|) . [E_sub ; blank]`: each output row's
//! direction only, at the embeddings' mean norm `|e|` (so the loss cannot move the outputs'
//! norms off the embeddings' scale), against `E_sub`, the LLM's input embeddings of the token
//! ids the training transcripts use (fixed); `blank` is a trainable vector and `log_scale` a
//! trainable temperature, both dropped after this stage. Only the rate-based reductions
//! (`stack`, `avg_pool`) are accepted: a fixed token count has no time axis to align.
//!
//! With `compress = "mean" | "nearest"` the head's table (the word pieces' embeddings and the blank) stays
//! with the projector and the LLM stage reads only the tokens it does not call blank (see
//! `anymal_adapters::ctc_compress`).
//!
//! The result is written to `ctc-init/` in the run folder; a restarted run (`--resume` before
//! the first checkpoint) loads it instead of warming up again; a run without `--resume`
//! warms up anew.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use anymal_adapters::ctc_compress::CompressOutput;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ctc::{ctc_loss, greedy_decode, min_frames};
use super::data_order::DataOrder;
use super::embedding_scale::match_embedding_scale;
use super::optim::{clip_grad_norm, collect_grads, AdamW, AdamWConfig};
use super::progress::Progress;
use super::schedule::lr_at;
use super::step::TrainItem;
use crate::eval::wer::corpus_wer;
use crate::multimodal::MultimodalModel;

/// The `[ctc]` section of an alignment recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtcWarmupConfig {
    /// Optimizer steps of the warm start; 0 turns it off.
    #[serde(default)]
    pub steps: u64,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Items per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Report the validation CTC loss and greedy-decoding WER every N steps (0: at the end).
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Dropout on the encoder features during the warm start (each number zeroed with this
    /// probability, the rest scaled up; seeded per step): the head otherwise learns the
    /// training clips by heart (train CTC loss 0.2 against 1.04 on the valid clips). Measured
    /// at 0.1 it did not help (README); off by default.
    #[serde(default)]
    pub feature_dropout: f64,
    /// Keep the head's table and drop the blank tokens before the LLM from then on (see
    /// `anymal_adapters::ctc_compress`): the LLM reads one token per word piece, the `mean`
    /// of its audio tokens or the `nearest` word piece's own embedding. Unset: no compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<CompressOutput>,
}

impl Default for CtcWarmupConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            lr: default_lr(),
            batch_size: default_batch(),
            eval_every: default_eval_every(),
            feature_dropout: 0.0,
            compress: None,
        }
    }
}

fn default_lr() -> f64 {
    2e-3
}
fn default_batch() -> usize {
    16
}
fn default_eval_every() -> u64 {
    250
}

impl CtcWarmupConfig {
    pub fn check(&self) -> Result<()> {
        if self.compress.is_some() && self.steps == 0 {
            bail!("ctc.compress needs a CTC warm start to learn its table: set ctc.steps > 0");
        }
        if !(0.0..1.0).contains(&self.feature_dropout) {
            bail!(
                "ctc.feature_dropout must be in [0, 1), got {}",
                self.feature_dropout
            );
        }
        if self.steps > 0 {
            if self.batch_size == 0 {
                bail!("ctc.batch_size must be >= 1");
            }
            if !(self.lr > 0.0 && self.lr.is_finite()) {
                bail!("ctc.lr must be a positive number, got {}", self.lr);
            }
        }
        Ok(())
    }
}

/// The folder of a run that holds the warm-started projector weights.
pub const INIT_DIR: &str = crate::run_dir::CTC_INIT_DIR;
const WEIGHTS: &str = anymal_adapters::projector::WEIGHTS_FILE;

/// The stage's own parameters and the fixed embedding rows it scores against.
struct Head {
    /// Token id of each class but the last (the blank).
    class_ids: Vec<u32>,
    /// Class index of each token id that appears in a transcript.
    class_of: BTreeMap<u32, usize>,
    /// `(classes - 1, d)`: the LLM's input embeddings of `class_ids`.
    embeddings: Tensor,
    /// Mean norm of the embedding rows.
    embedding_norm: f64,
    blank: Var,
    log_scale: Var,
}

impl Head {
    fn new(model: &MultimodalModel, train: &[TrainItem]) -> Result<Self> {
        let llm = &model.model.llm;
        let mut class_ids: Vec<u32> = train.iter().flat_map(|i| targets(model, i)).collect();
        class_ids.sort_unstable();
        class_ids.dedup();
        if class_ids.is_empty() {
            bail!("ctc: the training transcripts hold no tokens");
        }
        let ids = Tensor::new(class_ids.as_slice(), &llm.device)?.unsqueeze(0)?;
        let embeddings = llm
            .embed_tokens(&ids)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .detach();
        // Start the temperature where an output equal to a token's embedding gets a logit of
        // ~10 for that token: 10 / mean squared norm of the embeddings.
        let norms = embeddings.sqr()?.sum(1)?.sqrt()?;
        let embedding_norm = norms.mean_all()?.to_scalar::<f32>()? as f64;
        let sq = embedding_norm * embedding_norm;
        let d = embeddings.dim(1)?;
        let class_of = class_ids.iter().enumerate().map(|(i, &t)| (t, i)).collect();
        Ok(Self {
            class_of,
            class_ids,
            embeddings,
            embedding_norm,
            blank: Var::zeros((1, d), DType::F32, &Device::Cpu)?,
            log_scale: Var::new(&[(10.0 / sq.max(1e-6)).ln() as f32], &Device::Cpu)?,
        })
    }

    fn classes(&self) -> usize {
        self.class_ids.len() + 1
    }

    fn blank_index(&self) -> usize {
        self.class_ids.len()
    }

    /// `(n, classes)` logits of the projector outputs `h (n, d)`, each row scored by its
    /// direction only (scaled to the embeddings' mean norm): the loss cannot grow the outputs'
    /// norms away from the embeddings' scale, where the LLM stage needs them.
    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let table = self.rows()?;
        let norms = (h.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
        let unit = (h.broadcast_div(&norms)? * self.embedding_norm)?;
        let scale = self.log_scale.as_tensor().exp()?;
        Ok(unit.matmul(&table.t()?)?.broadcast_mul(&scale)?)
    }

    /// `(classes, d)`: the word pieces' embeddings and the (trainable) blank, the blank last.
    fn rows(&self) -> Result<Tensor> {
        Ok(Tensor::cat(&[&self.embeddings, self.blank.as_tensor()], 0)?)
    }

    /// [`Self::rows`] as CTC compression keeps it: a constant.
    fn table(&self) -> Result<Tensor> {
        Ok(self.rows()?.detach())
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![
            ("ctc.blank".to_string(), self.blank.clone()),
            ("ctc.log_scale".to_string(), self.log_scale.clone()),
        ]
    }

    /// Class indices of an item's transcript tokens; None when one is not a class.
    fn labels(&self, model: &MultimodalModel, item: &TrainItem) -> Option<Vec<usize>> {
        targets(model, item)
            .map(|t| self.class_of.get(&t).copied())
            .collect()
    }
}

/// The answer's token ids, without the end-of-turn tokens the LLM stage also learns.
fn targets<'a>(model: &'a MultimodalModel, item: &'a TrainItem) -> impl Iterator<Item = u32> + 'a {
    let stop =
        |t: u32| model.model.tokenizer.eos_id == Some(t) || model.model.stop_ids.contains(&t);
    item.rendered.example.label_ids().filter(move |&t| !stop(t))
}

/// Loss and gradient terms of a batch: the summed CTC loss, the labels it covered, and the
/// items it had to leave out (too few tokens for their transcript, or an unknown token).
struct BatchCtc {
    nll: f64,
    labels: usize,
    skipped: usize,
    /// `(n, classes)` d(sum nll)/d logits.
    grad: Vec<f32>,
    /// Per item: its logits rows, for decoding.
    rows: Vec<Vec<f32>>,
}

fn batch_ctc(
    head: &Head,
    model: &MultimodalModel,
    items: &[&TrainItem],
    logits: &Tensor,
    lens: &[usize],
) -> Result<BatchCtc> {
    let classes = head.classes();
    let all: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let mut out = BatchCtc {
        nll: 0.0,
        labels: 0,
        skipped: 0,
        grad: vec![0.0; all.len()],
        rows: Vec::with_capacity(items.len()),
    };
    let mut row = 0;
    for (item, &len) in items.iter().zip(lens) {
        let span = row * classes..(row + len) * classes;
        row += len;
        out.rows.push(all[span.clone()].to_vec());
        let Some(labels) = head.labels(model, item) else {
            out.skipped += 1;
            continue;
        };
        if len < min_frames(&labels) {
            out.skipped += 1;
            continue;
        }
        let Some(loss) = ctc_loss(&all[span.clone()], classes, &labels, head.blank_index()) else {
            out.skipped += 1;
            continue;
        };
        out.nll += loss.nll;
        out.labels += labels.len().max(1);
        out.grad[span].copy_from_slice(&loss.grad);
    }
    Ok(out)
}

/// Projector outputs (one per frame group, before any compression) of `items` as one
/// `(n, d)` tensor, and each item's token count; `dropout`: the probability and seed of
/// feature dropout.
fn project(
    model: &MultimodalModel,
    items: &[&TrainItem],
    dropout: Option<(f64, u64)>,
) -> Result<(Tensor, Vec<usize>)> {
    let adapter = &model.adapters[0];
    let inputs: Vec<_> = items.iter().map(|i| i.media[0].input()).collect();
    let mut feats = adapter
        .source
        .get(&inputs)
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    if let Some((p, seed)) = dropout.filter(|(p, _)| *p > 0.0) {
        let mut rng = anymal_util::rng::SplitMix64::new(seed);
        let keep = (1.0 / (1.0 - p)) as f32;
        for f in feats.iter_mut() {
            let mask: Vec<f32> = (0..f.elem_count())
                .map(|_| if rng.next_f64() < p { 0.0 } else { keep })
                .collect();
            let mask = Tensor::from_vec(mask, f.shape(), f.device())?.to_dtype(f.dtype())?;
            *f = (&*f * mask)?;
        }
    }
    let outs = adapter.projector.frame_items(&feats)?;
    let lens = outs
        .iter()
        .map(|t| t.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok((Tensor::cat(&outs, 0)?, lens))
}

/// Validation CTC loss per label and the WER of greedy decoding.
fn evaluate(model: &MultimodalModel, head: &Head, valid: &[TrainItem]) -> Result<(f64, f64)> {
    let (mut nll, mut labels) = (0.0, 0);
    let mut pairs = Vec::new();
    for chunk in valid.chunks(16) {
        let items: Vec<&TrainItem> = chunk.iter().collect();
        let (h, lens) = project(model, &items, None)?;
        let logits = head.logits(&h.detach())?;
        let b = batch_ctc(head, model, &items, &logits, &lens)?;
        nll += b.nll;
        labels += b.labels;
        for (item, rows) in items.iter().zip(&b.rows) {
            let ids: Vec<u32> = greedy_decode(rows, head.classes(), head.blank_index())
                .into_iter()
                .map(|k| head.class_ids[k])
                .collect();
            let said = model.model.tokenizer.decode(&ids)?;
            let truth: Vec<u32> = targets(model, item).collect();
            pairs.push((model.model.tokenizer.decode(&truth)?, said));
        }
    }
    Ok((nll / labels.max(1) as f64, corpus_wer(&pairs)))
}

/// What a warm start did (in the run's `summary.json` as `ctc`).
#[derive(Debug, Clone, Serialize)]
pub struct CtcReport {
    pub steps: u64,
    pub minutes: f64,
    /// CTC loss per label of the first step, and the mean of the last tenth of the steps.
    pub first_train_loss: f64,
    pub last_train_loss: f64,
    /// On `data.valid`: CTC loss per label, and the WER of greedy CTC decoding (the head's own
    /// transcription, before the LLM sees anything).
    pub valid_loss: f64,
    pub valid_greedy_wer: f64,
}

/// Warm-start the (only) adapter's projector of `model` on `train`, or, when `resume`, load
/// an earlier warm start from `run_dir` (then None: nothing was trained here). Without
/// `resume` an earlier warm start in the folder is replaced: it may come from another recipe.
pub fn warm_start(
    cfg: &CtcWarmupConfig,
    seed: u64,
    model: &MultimodalModel,
    train: &[TrainItem],
    valid: &[TrainItem],
    run_dir: &std::path::Path,
    resume: bool,
) -> Result<Option<CtcReport>> {
    if cfg.steps == 0 {
        return Ok(None);
    }
    let adapter = &model.adapters[0];
    if !adapter.projector.cfg.reduce.is_rate() {
        bail!(
            "ctc.steps needs a rate-based projector.reduce (stack or avg_pool): a fixed token count has no time axis to align"
        );
    }
    let dir = run_dir.join(INIT_DIR);
    let weights = dir.join(WEIGHTS);
    if resume && weights.is_file() {
        adapter
            .store
            .load_safetensors(&weights)
            .with_context(|| format!("{}", weights.display()))?;
        eprintln!(
            "ctc: projector warm start loaded from {}",
            weights.display()
        );
        return Ok(None);
    }

    let head = Head::new(model, train)?;
    let mut params = adapter.store.vars();
    params.extend(head.vars());
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    eprintln!(
        "ctc warm start: {} steps x {} items over {} token classes + blank",
        cfg.steps,
        cfg.batch_size,
        head.class_ids.len()
    );
    let order = DataOrder::new(train.len(), seed ^ 0xC7C);
    let warmup = (cfg.steps / 20).max(1);
    let mut progress = Progress::new(cfg.steps, 0);
    let started = Instant::now();
    let mut losses = Vec::with_capacity(cfg.steps as usize);
    let mut last_eval = (f64::NAN, f64::NAN);
    for step in 0..cfg.steps {
        let t0 = Instant::now();
        let n = cfg.batch_size;
        let items: Vec<&TrainItem> = (step as usize * n..(step as usize + 1) * n)
            .map(|j| &train[order.item(j)])
            .collect();
        let dropout = (
            cfg.feature_dropout,
            seed ^ 0xD0 ^ step.wrapping_mul(0x9E37_79B9),
        );
        let (h, lens) = project(model, &items, Some(dropout))?;
        let logits = head.logits(&h)?;
        let b = batch_ctc(&head, model, &items, &logits, &lens)?;
        if b.labels == 0 {
            continue;
        }
        // sum(logits * g) has gradient g: the CTC gradient enters the graph as a constant.
        let g = Tensor::from_vec(b.grad, logits.shape(), &Device::Cpu)?;
        let surrogate = ((logits * g)?.sum_all()? / b.labels as f64)?;
        let mut grads = collect_grads(&params, &surrogate.backward()?)?;
        let grad_norm = clip_grad_norm(&mut grads, 1.0)?;
        let loss = b.nll / b.labels as f64;
        if !loss.is_finite() || !grad_norm.is_finite() {
            bail!(
                "ctc step {}: loss {loss} is not finite; lower ctc.lr",
                step + 1
            );
        }
        losses.push(loss);
        let lr = lr_at(step, cfg.steps, cfg.lr, warmup, 0.1);
        opt.step(&grads, lr)?;
        progress.update(step + 1, loss, lr, n as f64 / t0.elapsed().as_secs_f64());
        let last = step + 1 == cfg.steps;
        if last || (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0) {
            let (vloss, wer) = evaluate(model, &head, valid)?;
            last_eval = (vloss, wer);
            progress.message(&format!(
                "ctc step {}: valid CTC loss {vloss:.3} per token, greedy WER {:.1}%{}",
                step + 1,
                wer * 100.0,
                if b.skipped > 0 {
                    format!(" ({} items of the last batch skipped)", b.skipped)
                } else {
                    String::new()
                }
            ));
        }
    }
    progress.finish();
    // The head scored directions only: the tokens' norms went wherever the steps took them
    // (measured: 66x the embeddings' after 1,500 steps), and the LLM reads norms.
    match_embedding_scale(model, train)?;
    if let Some(output) = cfg.compress {
        // The folder then holds a complete compressing projector: `generate` can use it as is.
        adapter
            .projector
            .with_ctc_compress(&adapter.store, &head.table()?, output)?
            .save(&dir, &adapter.store)?;
    } else {
        adapter.projector.save(&dir, &adapter.store)?;
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    eprintln!(
        "ctc warm start done in {minutes:.1} min; {}",
        weights.display()
    );
    let tail = &losses[losses.len() - (losses.len() / 10).max(1).min(losses.len())..];
    Ok(Some(CtcReport {
        steps: cfg.steps,
        minutes,
        first_train_loss: losses.first().copied().unwrap_or(f64::NAN),
        last_train_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        valid_loss: last_eval.0,
        valid_greedy_wer: last_eval.1,
    }))
}

//! What one optimizer step computes, the same for every recipe: conversations (rendered, with
//! their media) through the [`MultimodalModel`] in micro-batches, the loss normalized by the
//! step's answer-token count, the gradients of the trainable parts summed over micro-batches;
//! and the validation loss, the same way without a graph.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use anymal_llm::LoraSet;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::optim::{accumulate, collect_grads};
use crate::conversation::{MediaRef, Rendered};
use crate::features::MediaInput;
use crate::multimodal::MultimodalModel;

/// A conversation ready for batching: its tokens and the files of its slots.
#[derive(Debug, Clone)]
pub struct TrainItem {
    pub rendered: Rendered,
    pub media: Vec<MediaRef>,
}

impl TrainItem {
    fn pair(&self) -> (&Rendered, &[MediaRef]) {
        (&self.rendered, self.media.as_slice())
    }
}

/// The parameters a run trains: projector parameters (named) and optionally a LoRA.
pub struct Trainables<'a> {
    pub projector: Vec<(String, Var)>,
    pub lora: Option<&'a LoraSet>,
}

impl Trainables<'_> {
    /// Every trainable parameter's gradient from a backward pass; a parameter that received
    /// none is an error (a silently frozen part is what this guards against).
    pub fn grads(&self, store: &GradStore) -> Result<HashMap<String, Tensor>> {
        let mut grads = collect_grads(&self.projector, store)?;
        if let Some(set) = self.lora {
            let lora = set.grads(store)?;
            if let Some((missing, _)) = set.vars().into_iter().find(|(n, _)| !lora.contains_key(n))
            {
                bail!("no gradient reached parameter '{missing}'");
            }
            grads.extend(lora);
        }
        Ok(grads)
    }
}

/// Mean answer-token loss of one optimizer step over `items`, taken in micro-batches of
/// `batch_size` (gradient accumulation), and the summed gradients.
pub fn step_gradients(
    model: &MultimodalModel,
    trainables: &Trainables,
    items: &[&TrainItem],
    batch_size: usize,
) -> Result<(f64, HashMap<String, Tensor>)> {
    let total_labels: usize = items.iter().map(|i| i.rendered.example.num_labels()).sum();
    let mut acc: Option<HashMap<String, Tensor>> = None;
    let mut loss_value = 0.0;
    for chunk in items.chunks(batch_size) {
        let pairs: Vec<_> = chunk.iter().map(|i| i.pair()).collect();
        let (nll, _) = model
            .answer_loss(&pairs, true)
            .context("a training batch")?;
        let loss = (nll / total_labels as f64)?;
        loss_value += loss.to_scalar::<f32>()? as f64;
        accumulate(&mut acc, trainables.grads(&loss.backward()?)?)?;
    }
    Ok((loss_value, acc.context("no micro-batches")?))
}

/// Mean answer-token loss over (the first `limit`, 0 = all, of) `items`, without a graph.
pub fn eval_loss(
    model: &MultimodalModel,
    items: &[TrainItem],
    batch_size: usize,
    limit: usize,
) -> Result<f64> {
    let n = if limit == 0 {
        items.len()
    } else {
        limit.min(items.len())
    };
    let (mut sum, mut count) = (0.0, 0);
    for chunk in items[..n].chunks(batch_size) {
        let pairs: Vec<_> = chunk.iter().map(|i| i.pair()).collect();
        let (nll, m) = model.answer_loss(&pairs, false)?;
        sum += nll.to_scalar::<f32>()? as f64;
        count += m;
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    })
}

/// Run every file of `media` (the media of each item) through its modality's encoder once:
/// this fills the feature cache and finds the files that fail to decode. Returns, per item,
/// the error of its first failing file. `what` names the split in progress lines.
pub fn encode_all(
    model: &MultimodalModel,
    media: &[&[MediaRef]],
    what: &str,
) -> Vec<Option<String>> {
    let t0 = Instant::now();
    let mut failed: Vec<Option<String>> = vec![None; media.len()];
    for a in &model.adapters {
        let files: Vec<(usize, MediaInput)> = media
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.iter()
                    .filter(|f| f.modality == a.modality)
                    .map(move |f| (i, f.input()))
            })
            .collect();
        for (g, group) in files.chunks(16).enumerate() {
            let inputs: Vec<MediaInput> = group.iter().map(|f| f.1).collect();
            for (j, r) in a.source.get(&inputs).into_iter().enumerate() {
                if let Err(e) = r {
                    failed[group[j].0].get_or_insert(format!("{e:#}"));
                }
            }
            if t0.elapsed().as_secs() >= 5 && g % 8 == 0 {
                eprintln!(
                    "{what}: {} features {}/{}",
                    a.modality,
                    ((g + 1) * 16).min(files.len()),
                    files.len()
                );
            }
        }
    }
    failed
}

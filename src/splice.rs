//! Splicing modality tokens into the LLM's input: a rendered conversation (see
//! [`crate::conversation`]) holds empty slots per placeholder; they are filled with the
//! projectors' output in embedding space, rows are padded into a batch, and the loss is taken
//! on the answer tokens only.
//!
//! A projector with a rate reduction gives each item as many tokens as its length asks, which
//! the rendering cannot know: a slot is then resized to the tokens it receives
//! ([`Example::with_slot_lens`]), moving the text, labels and later slots with it, before the
//! rows are padded. Padding is on the right and masked, so positions and labels of every row
//! are what they would be alone.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Label value for positions that carry no loss (prompt, modality slots, padding).
pub const IGNORE_INDEX: i64 = -100;

/// One sequence: ids (slots hold a dummy id), where each modality item's `k` slots start, and
/// a label per position (`IGNORE_INDEX` except on answer tokens).
#[derive(Debug, Clone)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub slots: Vec<usize>,
    /// Tokens in each slot (modalities may differ).
    pub slot_lens: Vec<usize>,
    pub labels: Vec<i64>,
}

impl Example {
    pub fn num_labels(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// The token ids the loss is taken on, in order (the answer and its end token).
    pub fn label_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .map(|&l| l as u32)
    }

    /// The same sequence with slot `g` holding `lens[g]` tokens: the text between slots, the
    /// labels and the slot starts move with the change.
    pub fn with_slot_lens(&self, lens: &[usize]) -> Result<Example> {
        if lens.len() != self.slots.len() || self.slot_lens.len() != self.slots.len() {
            bail!(
                "the prompt has {} placeholder(s) but {} modality input(s) were given",
                self.slots.len(),
                lens.len()
            );
        }
        let mut out = Example {
            input_ids: Vec::with_capacity(self.input_ids.len()),
            slots: Vec::with_capacity(lens.len()),
            slot_lens: lens.to_vec(),
            labels: Vec::with_capacity(self.labels.len()),
        };
        let mut cur = 0;
        for (g, &s) in self.slots.iter().enumerate() {
            out.input_ids.extend_from_slice(&self.input_ids[cur..s]);
            out.labels.extend_from_slice(&self.labels[cur..s]);
            out.slots.push(out.input_ids.len());
            out.input_ids.extend(std::iter::repeat_n(0u32, lens[g]));
            out.labels
                .extend(std::iter::repeat_n(IGNORE_INDEX, lens[g]));
            cur = s + self.slot_lens[g];
        }
        out.input_ids.extend_from_slice(&self.input_ids[cur..]);
        out.labels.extend_from_slice(&self.labels[cur..]);
        Ok(out)
    }
}

/// A padded batch ready for the LLM.
pub struct Batch {
    /// `(b, t, d)` text embeddings with the modality tokens in their slots.
    pub inputs_embeds: Tensor,
    /// `(b, t)` 1 for real positions, 0 for right padding.
    pub attention_mask: Tensor,
    /// Flat indices `i*t + j` of the positions whose next token is a label.
    pub predict_positions: Tensor,
    /// `(m,)` the label token at each of those positions.
    pub targets: Tensor,
}

/// Embed `examples`, fill their slots from `modality_tokens[i]` (one `(k, d)` tensor per slot
/// of example `i`: slots may hold different numbers of tokens, and a slot is resized to the
/// tokens given), and right-pad to the longest. The number of token groups must equal each
/// example's slot count: a mismatch is an error rather than a silently shifted prompt.
pub fn build_batch(
    llm: &anymal_llm::Llm,
    examples: &[Example],
    modality_tokens: &[Vec<Tensor>],
) -> Result<Batch> {
    if examples.len() != modality_tokens.len() {
        bail!(
            "{} examples but modality tokens for {}",
            examples.len(),
            modality_tokens.len()
        );
    }
    let examples = examples
        .iter()
        .zip(modality_tokens)
        .map(|(ex, toks)| {
            let lens = toks
                .iter()
                .map(|t| t.dim(0))
                .collect::<candle_core::Result<Vec<_>>>()?;
            // Rows already laid out as given (every fixed-count projector) are used as they are.
            if lens == ex.slot_lens {
                Ok(std::borrow::Cow::Borrowed(ex))
            } else {
                ex.with_slot_lens(&lens).map(std::borrow::Cow::Owned)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let t = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let dev = &llm.device;
    let mut rows = Vec::with_capacity(examples.len());
    let mut mask = Vec::with_capacity(examples.len() * t);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (bi, (ex, toks)) in examples.iter().zip(modality_tokens).enumerate() {
        let n_groups = toks.len();
        if n_groups != ex.slots.len() {
            bail!(
                "the prompt has {} placeholder(s) but {n_groups} modality input(s) were given",
                ex.slots.len()
            );
        }
        let ids = Tensor::new(ex.input_ids.as_slice(), dev)?.unsqueeze(0)?;
        let text = llm.embed_tokens(&ids)?.squeeze(0)?;
        let mut parts = Vec::new();
        let mut cur = 0;
        for (g, &s) in ex.slots.iter().enumerate() {
            let k = toks[g].dim(0)?;
            if ex.slot_lens.get(g) != Some(&k) {
                bail!(
                    "slot {g} holds {} tokens but {k} were given",
                    ex.slot_lens.get(g).copied().unwrap_or(0)
                );
            }
            if s > cur {
                parts.push(text.narrow(0, cur, s - cur)?);
            }
            parts.push(toks[g].to_dtype(text.dtype())?);
            cur = s + k;
        }
        let len = ex.input_ids.len();
        if len > cur {
            parts.push(text.narrow(0, cur, len - cur)?);
        }
        let mut row = Tensor::cat(&parts, 0)?;
        if len < t {
            row = row.pad_with_zeros(0, 0, t - len)?;
        }
        rows.push(row);
        mask.extend((0..t).map(|j| u32::from(j < len)));
        for (j, &l) in ex.labels.iter().enumerate() {
            if l != IGNORE_INDEX && j > 0 {
                positions.push((bi * t + j - 1) as u32);
                targets.push(l as u32);
            }
        }
    }
    let b = examples.len();
    Ok(Batch {
        inputs_embeds: Tensor::stack(&rows, 0)?,
        attention_mask: Tensor::from_vec(mask, (b, t), dev)?,
        predict_positions: Tensor::new(positions.as_slice(), dev)?,
        targets: Tensor::new(targets.as_slice(), dev)?,
    })
}

/// Summed cross-entropy over the label positions (logits are computed only there: the head of
/// a 262k-token vocabulary at every position would dominate the step), and the label count.
pub fn answer_loss_sum(llm: &anymal_llm::Llm, batch: &Batch) -> Result<(Tensor, usize)> {
    let hidden = llm.forward_embeds(&batch.inputs_embeds, 0, Some(&batch.attention_mask), None)?;
    let (b, t, d) = hidden.dims3()?;
    let m = batch.targets.dim(0)?;
    if m == 0 {
        bail!("the batch has no answer tokens to learn from");
    }
    let picked = hidden
        .reshape((b * t, d))?
        .index_select(&batch.predict_positions, 0)?;
    let targets = batch.targets.to_vec1::<u32>()?;
    let nll = llm
        .label_nll(&picked.to_dtype(DType::F32)?, &targets)?
        .sum_all()?;
    Ok((nll, m))
}

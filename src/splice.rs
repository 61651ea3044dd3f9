//! Splicing modality tokens into the LLM's input: a prompt with placeholders (`<audio>`)
//! becomes token ids with `k` empty slots per placeholder; the slots are then filled with the
//! projector's output in embedding space. Labels mark the answer tokens only.

use anyhow::{bail, Context, Result};
use anymal_llm::{LoadedModel, Message};
use candle_core::{DType, Tensor};

/// Label value for positions that carry no loss (prompt, modality slots, padding).
pub const IGNORE_INDEX: i64 = -100;

/// A prompt cut at its placeholders and tokenized: `pieces[0] <slots> pieces[1] <slots> ...`.
#[derive(Debug, Clone)]
pub struct PromptTemplate {
    pub pieces: Vec<Vec<u32>>,
    /// Token ending the answer (end of turn for chat models, EOS otherwise).
    pub end_id: u32,
}

impl PromptTemplate {
    /// Render `prompt` (the user turn, with placeholders) through the chat template when
    /// `chat` is set and the model has one, then split at `placeholder`.
    pub fn new(model: &LoadedModel, prompt: &str, placeholder: &str, chat: bool) -> Result<Self> {
        let tok = &model.tokenizer;
        let (text, templated) = match (&model.chat_template, chat) {
            (Some(t), true) => (t.render(&[Message::new("user", prompt)], true)?, true),
            _ => (prompt.to_string(), false),
        };
        // A rendered template carries its own BOS when the model wants one.
        let bos_text = tok.bos_id.and_then(|b| tok.id_to_token(b)).unwrap_or("");
        let add_bos =
            tok.add_bos && !(templated && !bos_text.is_empty() && text.starts_with(bos_text));
        let mut pieces = Vec::new();
        for (i, part) in text.split(placeholder).enumerate() {
            pieces.push(tok.encode(part, add_bos && i == 0, true)?);
        }
        let end_id = if templated {
            model.stop_ids.first().copied().or(tok.eos_id)
        } else {
            tok.eos_id
        }
        .context("the model has no end-of-sequence token to end answers with")?;
        Ok(Self { pieces, end_id })
    }

    pub fn num_placeholders(&self) -> usize {
        self.pieces.len() - 1
    }
}

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
    /// Prompt with `k` slots per placeholder, then `answer` (+ end token) when given.
    pub fn new(tpl: &PromptTemplate, k: usize, answer: Option<&[u32]>) -> Self {
        let mut input_ids = Vec::new();
        let mut slots = Vec::new();
        for (i, piece) in tpl.pieces.iter().enumerate() {
            if i > 0 {
                slots.push(input_ids.len());
                input_ids.extend(std::iter::repeat_n(0u32, k));
            }
            input_ids.extend_from_slice(piece);
        }
        let mut labels = vec![IGNORE_INDEX; input_ids.len()];
        if let Some(ans) = answer {
            for &t in ans.iter().chain(std::iter::once(&tpl.end_id)) {
                input_ids.push(t);
                labels.push(t as i64);
            }
        }
        Self {
            input_ids,
            slot_lens: vec![k; slots.len()],
            slots,
            labels,
        }
    }

    pub fn num_labels(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
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

/// Embed `examples`, fill their slots from `modality_tokens[i]` (`(slots_i, k, d)` for example
/// `i`), right-pad to the longest. The number of token groups must equal each example's
/// placeholder count: a mismatch is an error rather than a silently shifted prompt.
pub fn build_batch(
    llm: &anymal_llm::Llm,
    examples: &[Example],
    modality_tokens: &[Tensor],
) -> Result<Batch> {
    let groups = modality_tokens
        .iter()
        .map(|t| {
            (0..t.dim(0)?)
                .map(|g| t.get(g))
                .collect::<candle_core::Result<Vec<_>>>()
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    build_batch_groups(llm, examples, &groups)
}

/// [`build_batch`] with one `(k_g, d)` tensor per slot of each example, so that slots of
/// different modalities may hold different numbers of tokens.
pub fn build_batch_groups(
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

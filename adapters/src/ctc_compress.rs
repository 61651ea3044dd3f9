//! CTC compression of a rate projector's tokens: keep only the tokens that spell something.
//!
//! A projector warm-started with a CTC loss over the LLM's own input embeddings (the root
//! crate's `train::ctc_warmup`) puts each audio token near the embedding of the word piece
//! spoken there, or near a learned *blank* between word pieces. Most tokens are blank: at 6-12
//! tokens per second against 3-4 word pieces per second of speech, the LLM would read more
//! filler than content. This stage scores every token's direction against a fixed table
//! `[E_sub; blank]` (the word pieces' embeddings and the blank, copied from the warm start),
//! drops the tokens whose best class is the blank, and averages each run of neighbouring tokens
//! with the same best class into one token -- greedy CTC decoding, but keeping the (trainable)
//! vectors instead of the class ids, so the LLM stage still trains the projector through them.
//! The idea is from CTC-compressed speech front ends (Gaido et al. 2021, "CTC-based compression
//! for direct speech translation"; Wu et al. 2023 for decoder-only LLMs).
//!
//! What a kept run becomes ([`CompressOutput`]): the mean of its vectors, or the table's row
//! of its class -- the LLM's own embedding of the word piece, so that the frozen LLM reads the
//! greedy CTC transcript as text. Measured (README): the means, though their direction is
//! nearest a word piece's, are not read as words by SmolLM2; the rows are.
//!
//! The table is frozen: it is not trained by the LLM stage (see [`Projector::trainable_vars`]),
//! and it is saved in `projector.safetensors` under [`TABLE`]. The choice of tokens is not
//! differentiable (an argmax); the averages are, so every kept token gets its gradient.
//! An item whose tokens are all blank (silence) keeps one token, the mean of all of them, so
//! that its placeholder still stands for something.
//!
//! [`Projector::trainable_vars`]: crate::projector::Projector::trainable_vars

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::pool::pad_items;
use crate::{Error, Result};

/// Parameter name of the `(classes, d_llm)` table; its last row is the blank.
pub const TABLE: &str = "ctc_compress.table";

/// What a run of tokens with one best class becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressOutput {
    /// The mean of the run's token vectors.
    #[default]
    Mean,
    /// The class's own row of the table: the LLM's embedding of the word piece, so the LLM
    /// reads the greedy CTC transcript as text. Gradients pass straight through to the mean
    /// (as in VQ-VAE): the forward value is the embedding, the backward that of the mean.
    Nearest,
}

/// `projector.json`'s `ctc_compress`: the table's row count (word pieces + the blank) and
/// what a kept run becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtcCompressConfig {
    pub classes: usize,
    #[serde(default)]
    pub output: CompressOutput,
}

#[derive(Debug, Clone)]
pub struct CtcCompress {
    /// `(classes, d)`, the blank last.
    table: Tensor,
    output: CompressOutput,
}

impl CtcCompress {
    pub fn new(table: Tensor, output: CompressOutput) -> Result<Self> {
        let (classes, _) = table.dims2()?;
        if classes < 2 {
            return Err(Error::config(
                "ctc_compress.classes",
                format!(
                    "a CTC table needs at least one word piece and the blank, got {classes} rows"
                ),
            ));
        }
        Ok(Self {
            table: table.detach(),
            output,
        })
    }

    fn blank(&self) -> usize {
        self.table.dim(0).expect("2-d") - 1
    }

    /// Best class of each row of `rows (n, d)` (the direction decides: a row's norm does not
    /// change its argmax).
    fn best_classes(&self, rows: &Tensor) -> Result<Vec<u32>> {
        let scores = rows
            .detach()
            .to_dtype(DType::F32)?
            .matmul(&self.table.t()?)?;
        Ok(scores.argmax(1)?.to_vec1::<u32>()?)
    }

    /// Which tokens of one item become which output token: runs of one non-blank class.
    fn groups(&self, classes: &[u32]) -> Vec<std::ops::Range<usize>> {
        let blank = self.blank() as u32;
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, &c) in classes.iter().enumerate() {
            if c == blank {
                continue;
            }
            match groups.last_mut() {
                Some(g) if g.end == i && classes[g.start] == c => g.end = i + 1,
                _ => groups.push(i..i + 1),
            }
        }
        if groups.is_empty() && !classes.is_empty() {
            groups.push(0..classes.len());
        }
        groups
    }

    /// Compress one item's tokens `(t, d)` to `(t', d)`, `1 <= t' <= t`.
    pub fn compress_item(&self, tokens: &Tensor) -> Result<Tensor> {
        let t = tokens.dim(0)?;
        if t == 0 {
            return Ok(tokens.clone());
        }
        let classes = self.best_classes(tokens)?;
        let groups = self.groups(&classes);
        // A (t', t) averaging matrix: one matmul keeps the graph to every kept token.
        let mut m = vec![0f32; groups.len() * t];
        for (g, range) in groups.iter().enumerate() {
            let w = 1.0 / range.len() as f32;
            for j in range.clone() {
                m[g * t + j] = w;
            }
        }
        let m =
            Tensor::from_vec(m, (groups.len(), t), tokens.device())?.to_dtype(tokens.dtype())?;
        let mean = m.matmul(tokens)?;
        let blank = self.blank() as u32;
        match self.output {
            CompressOutput::Mean => Ok(mean),
            // An all-blank item's one group has no word piece: it keeps its mean.
            CompressOutput::Nearest if classes[groups[0].start] == blank => Ok(mean),
            CompressOutput::Nearest => {
                let ids: Vec<u32> = groups.iter().map(|g| classes[g.start]).collect();
                let ids = Tensor::new(ids.as_slice(), tokens.device())?;
                let rows = self.table.index_select(&ids, 0)?.to_dtype(tokens.dtype())?;
                Ok((rows + (&mean - mean.detach())?)?)
            }
        }
    }

    /// Compress a right-padded batch `(b, t, d)` with `counts[i]` real tokens per row: the
    /// result is right-padded to its own longest row, with the new counts.
    pub fn apply(&self, tokens: &Tensor, counts: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let items = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| self.compress_item(&tokens.get(i)?.narrow(0, 0, c)?))
            .collect::<Result<Vec<_>>>()?;
        pad_items(&items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Table rows: e0, e1, blank = e2 (unit vectors).
    fn table() -> Tensor {
        Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.]], &Device::Cpu).unwrap()
    }

    #[test]
    fn blanks_are_dropped_and_repeats_averaged() {
        let c = CtcCompress::new(table(), CompressOutput::Mean).unwrap();
        // classes: blank, 0, 0, blank, 1, 0 -> groups [1..3], [4..5], [5..6]
        let x = Tensor::new(
            &[
                [0.1f32, 0.0, 2.0],
                [2.0, 0.0, 0.0],
                [4.0, 1.0, 0.0],
                [0.0, 0.0, 3.0],
                [0.0, 5.0, 0.0],
                [6.0, 0.0, 1.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let y = c.compress_item(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            y,
            vec![
                vec![3.0, 0.5, 0.0],
                vec![0.0, 5.0, 0.0],
                vec![6.0, 0.0, 1.0]
            ]
        );
    }

    #[test]
    fn an_all_blank_item_keeps_its_mean() {
        let c = CtcCompress::new(table(), CompressOutput::Mean).unwrap();
        let x = Tensor::new(&[[0f32, 0.0, 1.0], [0.0, 0.0, 3.0]], &Device::Cpu).unwrap();
        let y = c.compress_item(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![0.0, 0.0, 2.0]]);
    }

    #[test]
    fn a_padded_batch_keeps_each_items_own_result() {
        let c = CtcCompress::new(table(), CompressOutput::Mean).unwrap();
        let a = Tensor::new(
            &[[1f32, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::new(&[[0f32, 2.0, 0.0]], &Device::Cpu).unwrap();
        let (batch, _) = pad_items(&[a.clone(), b.clone()]).unwrap();
        // Padding rows are zeros: their argmax would be class 0, but they are past the count.
        let (out, counts) = c.apply(&batch, &[3, 1]).unwrap();
        assert_eq!(counts, vec![2, 1]);
        let alone = c.compress_item(&a).unwrap();
        let diff = (out.get(0).unwrap() - alone)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
        assert_eq!(
            out.get(1).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![0.0, 2.0, 0.0], vec![0.0, 0.0, 0.0]]
        );
    }

    #[test]
    fn gradients_reach_every_kept_token_only() {
        let c = CtcCompress::new(table(), CompressOutput::Mean).unwrap();
        let x = candle_core::Var::new(
            &[[2f32, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let y = c.compress_item(x.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, vec![vec![1.0; 3], vec![0.0; 3], vec![1.0; 3]]);
    }

    #[test]
    fn nearest_gives_the_table_rows_and_the_means_gradient() {
        let c = CtcCompress::new(table(), CompressOutput::Nearest).unwrap();
        let x = candle_core::Var::new(
            &[
                [2f32, 0.5, 0.0],
                [4.0, 0.5, 0.0],
                [0.0, 0.0, 1.0],
                [0.0, 3.0, 0.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let y = c.compress_item(x.as_tensor()).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]
        );
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            g,
            vec![vec![0.5; 3], vec![0.5; 3], vec![0.0; 3], vec![1.0; 3]]
        );
        // Silence keeps its mean: there is no word piece to snap to.
        let quiet = Tensor::new(&[[0f32, 0.0, 2.0]], &Device::Cpu).unwrap();
        let y = c.compress_item(&quiet).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![0.0, 0.0, 2.0]]);
    }
}

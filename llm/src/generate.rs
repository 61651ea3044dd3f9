//! Autoregressive generation with a KV cache.

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::decoder::Llm;
use crate::kv_cache::KvCache;
use crate::sampling::Sampler;
use crate::Result;

/// What a generation call did.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub generate_seconds: f64,
    /// True when an end-of-sequence token stopped generation.
    pub stopped_at_eos: bool,
}

/// Generates up to `max_tokens` after `prompt_ids`, calling `on_token` for each new token
/// (EOS excluded). The prompt may be given as embeddings instead (`prompt_embeds (1, t, d)`,
/// for prompts with modality tokens spliced in).
pub fn generate(
    llm: &Llm,
    prompt_ids: &[u32],
    prompt_embeds: Option<&Tensor>,
    max_tokens: usize,
    sampler: &mut Sampler,
    eos_ids: &[u32],
    on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let mut prefill = Prefill::whole();
    generate_with(
        llm,
        prompt_ids,
        prompt_embeds,
        max_tokens,
        sampler,
        eos_ids,
        &mut prefill,
        on_token,
    )
}

/// How the prompt goes through the model before the first token: in one forward (the
/// default, [`Prefill::whole`]), or in chunks of `chunk` positions with `proceed` asked before
/// each. A server uses chunks to stop a long prompt whose client went away or whose time ran
/// out, instead of holding its only worker for the whole prefill. Chunked prefill attends
/// through the KV cache exactly as one forward does; only the floating-point order of the
/// products differs.
pub struct Prefill<'a> {
    pub chunk: usize,
    pub proceed: Box<dyn FnMut() -> bool + 'a>,
}

impl<'a> Prefill<'a> {
    pub fn whole() -> Self {
        Self {
            chunk: usize::MAX,
            proceed: Box::new(|| true),
        }
    }

    pub fn chunked(chunk: usize, proceed: impl FnMut() -> bool + 'a) -> Self {
        Self {
            chunk: chunk.max(1),
            proceed: Box::new(proceed),
        }
    }
}

/// [`generate`] with the prompt fed as `prefill` says; a prefill that `proceed` stops is
/// [`Error::Stopped`](crate::Error::Stopped).
#[allow(clippy::too_many_arguments)]
pub fn generate_with(
    llm: &Llm,
    prompt_ids: &[u32],
    prompt_embeds: Option<&Tensor>,
    max_tokens: usize,
    sampler: &mut Sampler,
    eos_ids: &[u32],
    prefill: &mut Prefill<'_>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let (mut seq, mut cache) =
        Sequence::prefill(llm, prompt_ids, prompt_embeds, max_tokens, prefill)?;
    loop {
        match seq.choose(sampler, eos_ids) {
            Choice::Feed(token) => {
                on_token(token)?;
                let ids = Tensor::new(&[token], &llm.device)?.unsqueeze(0)?;
                let e = llm.embed_tokens(&ids)?;
                let hidden = llm.forward_embeds(&e, cache.seq_len(), None, Some(&mut cache))?;
                seq.logits = last_logits(llm, &hidden)?.remove(0);
            }
            Choice::Last(token) => {
                on_token(token)?;
                break;
            }
            Choice::Done => break,
        }
    }
    Ok(seq.finish())
}

/// A prompt being read into its cache, some positions per forward.
struct Reading {
    embeds: Tensor,
    start: usize,
    cache: KvCache,
    max_tokens: usize,
    t0: Instant,
}

/// What reading more of a prompt left.
enum Read {
    More(Reading),
    /// The whole prompt is in the cache: the sequence can choose its first token.
    Done(Sequence, KvCache),
}

impl Reading {
    /// The prompt as token ids, or as embeddings `(1, t, d)`; nothing read yet.
    fn new(
        llm: &Llm,
        prompt_ids: &[u32],
        prompt_embeds: Option<&Tensor>,
        max_tokens: usize,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let embeds = match prompt_embeds {
            Some(e) => e.clone(),
            None => {
                let ids = Tensor::new(prompt_ids, &llm.device)?.unsqueeze(0)?;
                llm.embed_tokens(&ids)?
            }
        };
        if embeds.dim(1)? == 0 || embeds.dim(0)? != 1 {
            return Err(crate::Error::ShapeMismatch {
                what: "the prompt".into(),
                got: format!("{:?}", embeds.dims()),
                expected: "one sequence of at least 1 token".into(),
            });
        }
        Ok(Self {
            embeds,
            start: 0,
            cache: llm.new_cache(),
            max_tokens,
            t0,
        })
    }

    fn len(&self) -> usize {
        self.embeds.dims()[1]
    }

    /// Reads up to `chunk` more positions (one forward).
    fn advance(mut self, llm: &Llm, chunk: usize) -> Result<Read> {
        let n = chunk.max(1).min(self.len() - self.start);
        let part = self.embeds.narrow(1, self.start, n)?;
        let hidden = llm.forward_embeds(&part, self.start, None, Some(&mut self.cache))?;
        self.start += n;
        if self.start < self.len() {
            return Ok(Read::More(self));
        }
        let stats = GenerationStats {
            prompt_tokens: self.len(),
            prompt_seconds: self.t0.elapsed().as_secs_f64(),
            ..Default::default()
        };
        let seq = Sequence {
            logits: last_logits(llm, &hidden)?.remove(0),
            out: Vec::new(),
            max_tokens: self.max_tokens,
            stats,
            decoding_since: Instant::now(),
        };
        Ok(Read::Done(seq, self.cache))
    }
}

/// One sequence being generated: the logits of its next position and what it produced.
struct Sequence {
    logits: Vec<f32>,
    out: Vec<u32>,
    max_tokens: usize,
    stats: GenerationStats,
    decoding_since: Instant,
}

/// What a sequence does with the token it chose.
enum Choice {
    /// Emit it and feed it back for the next position.
    Feed(u32),
    /// Emit it; it was the last one allowed.
    Last(u32),
    /// Nothing more: an end-of-sequence token, or no tokens allowed at all.
    Done,
}

impl Sequence {
    /// Runs the prompt (ids, or embeddings `(1, t, d)`) through the model as `prefill` says,
    /// returning the sequence ready to choose its first token and the cache it fills.
    fn prefill(
        llm: &Llm,
        prompt_ids: &[u32],
        prompt_embeds: Option<&Tensor>,
        max_tokens: usize,
        prefill: &mut Prefill<'_>,
    ) -> Result<(Self, KvCache)> {
        let mut reading = Reading::new(llm, prompt_ids, prompt_embeds, max_tokens)?;
        loop {
            if !(prefill.proceed)() {
                return Err(crate::Error::Stopped(format!(
                    "prefill stopped after {} of {} prompt tokens",
                    reading.start,
                    reading.len()
                )));
            }
            reading = match reading.advance(llm, prefill.chunk)? {
                Read::More(r) => r,
                Read::Done(seq, cache) => return Ok((seq, cache)),
            };
        }
    }

    /// Chooses the next token from the current logits and records it.
    fn choose(&mut self, sampler: &mut Sampler, eos_ids: &[u32]) -> Choice {
        if self.out.len() >= self.max_tokens {
            return Choice::Done;
        }
        let next = sampler.sample(&self.logits);
        if eos_ids.contains(&next) {
            self.stats.stopped_at_eos = true;
            return Choice::Done;
        }
        self.out.push(next);
        if self.out.len() == self.max_tokens {
            Choice::Last(next)
        } else {
            Choice::Feed(next)
        }
    }

    fn finish(mut self) -> (Vec<u32>, GenerationStats) {
        self.stats.generated_tokens = self.out.len();
        self.stats.generate_seconds = self.decoding_since.elapsed().as_secs_f64();
        (self.out, self.stats)
    }
}

/// Generation for several sequences at once (continuous batching): every [`Self::step`]
/// chooses one token for each sequence and runs the ones that go on through the model
/// together, one row each ([`Llm::forward_rows`]); a finished sequence leaves the batch at
/// once and a new one may join between steps ([`Self::add`]). Each sequence gets the tokens
/// [`generate_with`] gives it alone (tested), because no row's arithmetic depends on the
/// others; what batching saves is the per-operation cost and one pass over the weights per
/// step instead of one per sequence.
pub struct BatchGenerator<'m, K> {
    llm: &'m Llm,
    eos_ids: Vec<u32>,
    /// One entry per sequence in the batch, in the order they joined; `caches[i]` is row i's.
    rows: Vec<Row<K>>,
    caches: Vec<KvCache>,
    /// Prompts being read a chunk per step ([`Self::add_reading`]), in the order they came.
    reading: Vec<Pending<K>>,
}

struct Pending<K> {
    key: K,
    reading: Reading,
    chunk: usize,
    sampler: Sampler,
}

struct Row<K> {
    key: K,
    seq: Sequence,
    sampler: Sampler,
}

/// What a [`BatchGenerator::step`] produced for one sequence.
#[derive(Debug)]
pub enum BatchEvent<K> {
    /// A new token of the sequence `key` (end-of-sequence tokens are not reported).
    Token { key: K, token: u32 },
    /// The sequence `key` is complete and has left the batch.
    Finished {
        key: K,
        tokens: Vec<u32>,
        stats: GenerationStats,
    },
    /// Reading the prompt of `key` failed; it has left the batch (the others go on).
    Failed { key: K, error: crate::Error },
}

impl<'m, K: Clone> BatchGenerator<'m, K> {
    pub fn new(llm: &'m Llm, eos_ids: &[u32]) -> Self {
        Self {
            llm,
            eos_ids: eos_ids.to_vec(),
            rows: Vec::new(),
            caches: Vec::new(),
            reading: Vec::new(),
        }
    }

    /// Sequences in the batch, those whose prompt is still being read included.
    pub fn len(&self) -> usize {
        self.rows.len() + self.reading.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the prompt of `key` is still being read.
    pub fn is_reading(&self, key: &K) -> bool
    where
        K: PartialEq,
    {
        self.reading.iter().any(|p| &p.key == key)
    }

    /// Runs a prompt's prefill (alone, as `prefill` says) and adds the sequence, known as
    /// `key`, to the batch; its tokens come from the next steps.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        key: K,
        prompt_ids: &[u32],
        prompt_embeds: Option<&Tensor>,
        max_tokens: usize,
        sampler: Sampler,
        prefill: &mut Prefill<'_>,
    ) -> Result<()> {
        let (seq, cache) =
            Sequence::prefill(self.llm, prompt_ids, prompt_embeds, max_tokens, prefill)?;
        self.rows.push(Row { key, seq, sampler });
        self.caches.push(cache);
        Ok(())
    }

    /// Adds the sequence `key` whose prompt is read `chunk` positions per [`Self::step`],
    /// between the steps of the others, so that a long prompt joining does not stall the
    /// sequences already generating for all of its length. Chunks fall at the same positions
    /// whatever else is in the batch, so the sequence gets the tokens [`generate_with`] gives
    /// it with `Prefill::chunked(chunk, ..)`. Its first token comes from the step that reads
    /// its last chunk.
    #[allow(clippy::too_many_arguments)]
    pub fn add_reading(
        &mut self,
        key: K,
        prompt_ids: &[u32],
        prompt_embeds: Option<&Tensor>,
        max_tokens: usize,
        sampler: Sampler,
        chunk: usize,
    ) -> Result<()> {
        let reading = Reading::new(self.llm, prompt_ids, prompt_embeds, max_tokens)?;
        self.reading.push(Pending {
            key,
            reading,
            chunk,
            sampler,
        });
        Ok(())
    }

    /// Takes the sequence `key` out of the batch (its client went away), returning what it
    /// had produced (nothing while its prompt is being read).
    pub fn remove(&mut self, key: &K) -> Option<(Vec<u32>, GenerationStats)>
    where
        K: PartialEq,
    {
        if let Some(i) = self.reading.iter().position(|p| &p.key == key) {
            self.reading.remove(i);
            return Some((Vec::new(), GenerationStats::default()));
        }
        let i = self.rows.iter().position(|r| &r.key == key)?;
        self.caches.remove(i);
        Some(self.rows.remove(i).seq.finish())
    }

    /// One chunk of every prompt being read, then one token for every sequence whose prompt
    /// is read: the events in row order, a sequence's `Token` before its `Finished`.
    pub fn step(&mut self) -> Result<Vec<BatchEvent<K>>> {
        let mut events = Vec::new();
        for p in std::mem::take(&mut self.reading) {
            let Pending {
                key,
                reading,
                chunk,
                sampler,
            } = p;
            match reading.advance(self.llm, chunk) {
                Ok(Read::More(reading)) => self.reading.push(Pending {
                    key,
                    reading,
                    chunk,
                    sampler,
                }),
                Ok(Read::Done(seq, cache)) => {
                    self.rows.push(Row { key, seq, sampler });
                    self.caches.push(cache);
                }
                Err(error) => events.push(BatchEvent::Failed { key, error }),
            }
        }
        let mut feed = Vec::with_capacity(self.rows.len());
        let mut keep = Vec::with_capacity(self.rows.len());
        for row in &mut self.rows {
            let choice = row.seq.choose(&mut row.sampler, &self.eos_ids);
            if let Choice::Feed(token) | Choice::Last(token) = choice {
                events.push(BatchEvent::Token {
                    key: row.key.clone(),
                    token,
                });
            }
            let goes_on = matches!(choice, Choice::Feed(_));
            if let Choice::Feed(token) = choice {
                feed.push(token);
            }
            keep.push(goes_on);
        }
        // Finished sequences leave before the forward, so it runs only the rows that go on.
        let (mut rows, mut caches) = (Vec::new(), Vec::new());
        for ((row, cache), goes_on) in self.rows.drain(..).zip(self.caches.drain(..)).zip(keep) {
            if goes_on {
                rows.push(row);
                caches.push(cache);
            } else {
                let key = row.key.clone();
                let (tokens, stats) = row.seq.finish();
                events.push(BatchEvent::Finished { key, tokens, stats });
            }
        }
        (self.rows, self.caches) = (rows, caches);
        if !feed.is_empty() {
            let ids = Tensor::new(feed.as_slice(), &self.llm.device)?.unsqueeze(1)?;
            let e = self.llm.embed_tokens(&ids)?;
            let hidden = self.llm.forward_rows(&e, &mut self.caches)?;
            for (row, logits) in self.rows.iter_mut().zip(last_logits(self.llm, &hidden)?) {
                row.seq.logits = logits;
            }
        }
        Ok(events)
    }
}

/// Logits of each sequence's last position `(b, vocab)`: the head is not run on the others.
fn last_logits(llm: &Llm, hidden: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = hidden.dim(1)?;
    let last = hidden.narrow(1, t - 1, 1)?;
    let logits = llm.logits(&last)?.squeeze(1)?.to_device(&Device::Cpu)?;
    Ok(logits.to_vec2::<f32>()?)
}

//! The one thread that owns the [`MultimodalModel`]: requests wait in a bounded queue, in the
//! order they came, and up to `--batch` of them are answered together (continuous batching,
//! as llama.cpp's server slots and vLLM do): each step of a [`BatchGenerator`] gives every
//! answer in progress one token through one forward over all of them; a request that arrives
//! joins between steps (its prompt is read a chunk per step, between the others' tokens, so a
//! long prompt does not stall them), and one that ends leaves at once. An answer's tokens are
//! the ones it gets alone (batched generation is exact per row). One owner needs no locking
//! around the KV caches or the encoders.
//!
//! Each job carries a channel back to its HTTP handler. The worker sends text as it is
//! generated; a send that fails means the client went away, and its answer leaves the batch.
//! A panic while checking a request or encoding its media becomes a 500 for that request; a
//! failed or panicking step, a 500 for the answers in it. The worker goes on with the next.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use anymal_llm::tokenizer::TokenStream;
use anymal_llm::{BatchEvent, BatchGenerator, GenerationStats, Sampler, SamplingConfig};
use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::media::TempMedia;
use super::stop::StopMatcher;
use crate::conversation::{MediaRef, Turn};
use crate::multimodal::MultimodalModel;

/// How to generate one answer.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Stop strings: the answer is cut before the first one found.
    pub stop: Vec<String>,
}

/// A media file of a request, with the part it came from (for error messages).
#[derive(Debug)]
pub struct JobMedia {
    pub modality: String,
    /// `messages[1].content[0] (input_audio)`.
    pub label: String,
    pub file: TempMedia,
}

pub struct Job {
    pub turns: Vec<Turn>,
    /// In placeholder order.
    pub media: Vec<JobMedia>,
    pub params: GenParams,
    pub events: UnboundedSender<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What the worker tells a job's handler: text pieces, then `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    Error(ApiError),
}

/// What one request may cost the worker.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Longest prompt, in tokens (at most the model's context).
    pub max_prompt_tokens: usize,
    /// Wall time from the start of answering to the last token; a request past it ends with
    /// `finish_reason: "length"` (or an error if it is still reading its prompt).
    pub max_seconds: f64,
}

/// Prompt positions read per step of the batch: between them the other answers get a token
/// each, and a client that left or a deadline that passed ends the reading (a second or so
/// of work on a 2-core CPU).
const PREFILL_CHUNK: usize = 256;

/// The HTTP side's handle on the worker.
pub struct Worker {
    tx: SyncSender<Job>,
    alive: Arc<AtomicBool>,
    queue: usize,
    batch: usize,
    /// Jobs accepted and not yet answered (those being answered included).
    pending: Arc<AtomicUsize>,
}

impl Worker {
    /// Start the thread: it answers up to `batch` requests at once; at most `queue` more
    /// wait.
    pub fn spawn(
        model: MultimodalModel,
        queue: usize,
        batch: usize,
        limits: RequestLimits,
    ) -> anyhow::Result<Self> {
        let batch = batch.max(1);
        // Admission is counted in `pending`, not by the channel: a zero-capacity channel
        // accepts a job only while the worker sits in `recv`, so with `--queue 0` a request
        // arriving just before the idle worker got there was refused as "busy".
        let (tx, rx) = sync_channel(queue + batch);
        let alive = Arc::new(AtomicBool::new(true));
        let pending = Arc::new(AtomicUsize::new(0));
        let (flag, done) = (alive.clone(), pending.clone());
        std::thread::Builder::new()
            .name("anymal-worker".into())
            .spawn(move || {
                let budget = Budget {
                    limits,
                    max_token_bytes: longest_token_bytes(&model),
                };
                run(&model, rx, &done, budget, batch);
                flag.store(false, Ordering::SeqCst);
            })?;
        Ok(Self {
            tx,
            alive,
            queue,
            batch,
            pending,
        })
    }

    /// Queue a job, or refuse it at once when `queue` jobs already wait behind the `batch`
    /// being answered (the client can retry; a request silently left hanging cannot).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let admitted = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.queue + self.batch).then_some(n + 1)
            })
            .is_ok();
        let sent = if admitted {
            self.tx.try_send(job).inspect_err(|_| {
                self.pending.fetch_sub(1, Ordering::SeqCst);
            })
        } else {
            Err(TrySendError::Full(job))
        };
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ApiError::unavailable(
                "server_busy",
                format!(
                    "the server is busy: {} request(s) already waiting (--queue {}); try again later",
                    self.queue, self.queue
                ),
            )),
            Err(TrySendError::Disconnected(_)) => Err(ApiError::unavailable(
                "worker_stopped",
                "the model worker has stopped; restart the server",
            )),
        }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// The most text bytes one token of the model's vocabulary stands for: a prompt of more
/// bytes than this times a token limit is over the limit without being tokenized.
fn longest_token_bytes(model: &MultimodalModel) -> usize {
    let tok = &model.model.tokenizer;
    (0..tok.vocab_size() as u32)
        .map(|id| tok.token_bytes(id).len())
        .max()
        .unwrap_or(1)
        .max(1)
}

fn run(
    model: &MultimodalModel,
    rx: Receiver<Job>,
    pending: &AtomicUsize,
    budget: Budget,
    batch: usize,
) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let eos = model.model.eos_ids();
    let mut generator = BatchGenerator::new(&model.model.llm, &eos);
    let mut answering: Vec<Answer<'_>> = Vec::new();
    loop {
        // Idle: wait for a request. Busy: take a queued one while the batch has room, without
        // waiting, so the answers in progress go on.
        let job = if answering.is_empty() {
            match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else if answering.len() < batch {
            rx.try_recv().ok()
        } else {
            None
        };
        if let Some(job) = job {
            // However this job ends, it no longer counts against the queue afterwards.
            let counted = Counted(pending);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            // The client left while its request waited: nothing to do.
            if job.events.is_closed() {
                eprintln!("request {n}: client went away while queued");
                continue;
            }
            let events = job.events.clone();
            let started = catch_unwind(AssertUnwindSafe(|| {
                start(model, &mut generator, job, n, budget)
            }));
            match started {
                Ok(Some(mut a)) => {
                    a.counted = Some(counted);
                    answering.push(a);
                }
                Ok(None) => {}
                Err(p) => {
                    let what = panic_message(&p);
                    eprintln!("request {n}: panicked: {what}");
                    let _ = events.send(Event::Error(ApiError::internal(format!(
                        "internal error while answering this request: {what}"
                    ))));
                }
            }
            continue;
        }
        // Answers still reading their prompt: a client that left or a request out of time
        // ends here, between chunks.
        answering.retain(|a| {
            if !generator.is_reading(&a.n) {
                return true;
            }
            let why = if a.events.is_closed() {
                Some(None)
            } else if a.t0.elapsed().as_secs_f64() > a.max_seconds {
                Some(Some(ApiError::unavailable(
                    "timeout",
                    format!(
                        "the request ran past the limit of {} s before its first token (--max-request-seconds)",
                        a.max_seconds
                    ),
                )))
            } else {
                None
            };
            let Some(error) = why else {
                return true;
            };
            generator.remove(&a.n);
            match error {
                None => eprintln!(
                    "request {}: client went away during the prefill; stopped after {:.2}s",
                    a.n,
                    a.t0.elapsed().as_secs_f64()
                ),
                Some(e) => {
                    eprintln!("request {}: error {e}", a.n);
                    let _ = a.events.send(Event::Error(e));
                }
            }
            false
        });
        if answering.is_empty() {
            continue;
        }
        // One token for every answer in the batch.
        let others = answering.len() - 1;
        for a in &mut answering {
            a.alongside = a.alongside.max(others);
        }
        let stepped = match catch_unwind(AssertUnwindSafe(|| generator.step())) {
            Ok(Ok(events)) => Ok(events),
            Ok(Err(e)) => Err(format!("generation failed: {e:#}")),
            Err(p) => Err(format!(
                "internal error while answering this request: {}",
                panic_message(&p)
            )),
        };
        let events = match stepped {
            Ok(events) => events,
            Err(what) => {
                // The batch's state is unknown after a failed step: every answer in it fails.
                for a in answering.drain(..) {
                    eprintln!("request {}: error {what}", a.n);
                    let _ = a
                        .events
                        .send(Event::Error(ApiError::internal(what.clone())));
                }
                generator = BatchGenerator::new(&model.model.llm, &eos);
                continue;
            }
        };
        for event in events {
            match event {
                BatchEvent::Token { key, token } => {
                    let Some(i) = answering.iter().position(|a| a.n == key) else {
                        continue;
                    };
                    if let Some(halt) = answering[i].token(token) {
                        generator.remove(&key);
                        answering.remove(i).halt(halt);
                    }
                }
                BatchEvent::Finished { key, tokens, stats } => {
                    if let Some(i) = answering.iter().position(|a| a.n == key) {
                        answering.remove(i).complete(&tokens, &stats);
                    }
                }
                BatchEvent::Failed { key, error } => {
                    if let Some(i) = answering.iter().position(|a| a.n == key) {
                        let e = ApiError::internal(format!("generation failed: {error:#}"));
                        answering.remove(i).halt(Halt::Failed(e));
                    }
                }
            }
        }
    }
}

/// Decrements the count of pending requests when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
        .to_string()
}

/// Why an answer ended before the model finished it.
enum Halt {
    StopString,
    ClientGone,
    OutOfTime,
    Failed(ApiError),
}

/// The limits of one request and what the worker knows of the tokenizer to check them fast.
#[derive(Clone, Copy)]
struct Budget {
    limits: RequestLimits,
    max_token_bytes: usize,
}

/// A request whose prompt has been read and whose tokens come from the batch's steps.
struct Answer<'m> {
    n: u64,
    events: UnboundedSender<Event>,
    t0: Instant,
    max_seconds: f64,
    prompt_tokens: usize,
    max_tokens: usize,
    stream: TokenStream<'m>,
    stop: StopMatcher,
    completion_tokens: usize,
    /// The most other answers generated alongside this one in a step (for the log).
    alongside: usize,
    /// Set once the request is in the batch: it counts against the queue until dropped.
    counted: Option<Counted<'m>>,
}

impl Answer<'_> {
    /// A new token: streams its text; `Some` when the answer must end here.
    fn token(&mut self, id: u32) -> Option<Halt> {
        self.completion_tokens += 1;
        if self.t0.elapsed().as_secs_f64() > self.max_seconds {
            return Some(Halt::OutOfTime);
        }
        let piece = match self.stream.push(id) {
            // No text yet (a character split across tokens): nothing to send, go on.
            Ok(piece) => piece?,
            Err(e) => {
                return Some(Halt::Failed(ApiError::internal(format!(
                    "decoding the answer: {e}"
                ))))
            }
        };
        let (text, hit) = self.stop.push(&piece);
        if !text.is_empty() && self.events.send(Event::Text(text)).is_err() {
            return Some(Halt::ClientGone);
        }
        hit.then_some(Halt::StopString)
    }

    /// Ends the answer before the model did (its row has left the batch).
    fn halt(mut self, halt: Halt) {
        match halt {
            Halt::ClientGone => eprintln!(
                "request {}: client went away; generation stopped after {:.2}s",
                self.n,
                self.t0.elapsed().as_secs_f64()
            ),
            // The tokens streamed so far are the answer, cut as max_tokens would cut it.
            Halt::OutOfTime => {
                let text = self.stop.finish();
                if text.is_empty() || self.events.send(Event::Text(text)).is_ok() {
                    let used = self.completion_tokens - 1;
                    self.done(FinishReason::Length, used);
                }
            }
            Halt::StopString => self.done(FinishReason::Stop, self.completion_tokens),
            Halt::Failed(e) => {
                eprintln!("request {}: error {e}", self.n);
                let _ = self.events.send(Event::Error(e));
            }
        }
    }

    /// The model finished the answer (end of sequence or `max_tokens`).
    fn complete(mut self, ids: &[u32], stats: &GenerationStats) {
        let tail = match self.stream.finish() {
            Ok(tail) => tail,
            Err(e) => {
                return self.halt(Halt::Failed(ApiError::internal(format!(
                    "decoding the answer: {e}"
                ))))
            }
        };
        let (mut text, hit) = self.stop.push(tail.as_deref().unwrap_or(""));
        if !hit {
            text.push_str(&self.stop.finish());
        }
        if !text.is_empty() && self.events.send(Event::Text(text)).is_err() {
            return self.halt(Halt::ClientGone);
        }
        let reason = if hit || stats.stopped_at_eos || ids.len() < self.max_tokens {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        self.done(reason, ids.len());
    }

    fn done(&self, finish_reason: FinishReason, completion_tokens: usize) {
        eprintln!(
            "request {}: {} prompt + {completion_tokens} completion tokens in {:.2}s ({}; alongside up to {} others)",
            self.n,
            self.prompt_tokens,
            self.t0.elapsed().as_secs_f64(),
            finish_reason.as_str(),
            self.alongside
        );
        let _ = self.events.send(Event::Done {
            finish_reason,
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens,
            },
        });
    }
}

/// Checks a request, encodes its media and puts its prompt in the batch to be read; the answer
/// is then produced by the batch's steps. `None` when the request already ended (an error was
/// sent, or its client left).
fn start<'m>(
    model: &'m MultimodalModel,
    generator: &mut BatchGenerator<'m, u64>,
    job: Job,
    n: u64,
    budget: Budget,
) -> Option<Answer<'m>> {
    let events = job.events.clone();
    let t0 = Instant::now();
    match read_prompt(model, generator, job, n, budget, t0) {
        Ok(answer) => Some(answer),
        Err(e) => {
            eprintln!("request {n}: error {e}");
            let _ = events.send(Event::Error(e));
            None
        }
    }
}

fn read_prompt<'m>(
    model: &'m MultimodalModel,
    generator: &mut BatchGenerator<'m, u64>,
    job: Job,
    n: u64,
    budget: Budget,
    t0: Instant,
) -> Result<Answer<'m>, ApiError> {
    let Job {
        turns,
        media,
        params,
        events,
    } = job;
    let context = model.model.llm.cfg.max_position_embeddings;
    let max_prompt = budget.limits.max_prompt_tokens.min(context);
    let over = |what: String| {
        ApiError::invalid(
            "context_length_exceeded",
            format!(
                "{what}; this server takes prompts of at most {max_prompt} tokens (the model's context is {context}; --max-prompt-tokens)"
            ),
        )
    };
    // A 30 MB text would take the tokenizer a minute and GBs: text longer than the longest
    // token times the limit is over it, whatever its tokens.
    // Likewise every message costs at least one token of its template.
    if turns.len() > max_prompt {
        return Err(over(format!(
            "the conversation has {} messages, more than {max_prompt} tokens of any template",
            turns.len()
        )));
    }
    let text_bytes: usize = turns.iter().map(|t| t.text.len()).sum();
    if text_bytes > max_prompt.saturating_mul(budget.max_token_bytes) {
        return Err(over(format!(
            "the prompt's text is {text_bytes} bytes, more than {max_prompt} tokens of any text"
        )));
    }
    // Rendering checks the conversation (a client error) and gives the prompt length.
    let rendered = model.format().render(&turns).map_err(|e| {
        ApiError::invalid(
            "invalid_conversation",
            format!("the conversation cannot be formatted: {e:#}"),
        )
    })?;
    let prompt_tokens = rendered.example.input_ids.len();
    if prompt_tokens > max_prompt || prompt_tokens >= context {
        return Err(over(format!("the prompt is {prompt_tokens} tokens")));
    }
    let max_seconds = budget.limits.max_seconds;
    if prompt_tokens > PREFILL_CHUNK {
        eprintln!("request {n}: reading a prompt of {prompt_tokens} tokens");
    }
    let max_tokens = params.max_tokens.min(context - prompt_tokens);
    let refs: Vec<MediaRef> = media
        .iter()
        .map(|m| MediaRef::file(m.modality.clone(), m.file.path.clone()))
        .collect();
    let prompt = model
        .prompt(&turns, &refs)
        .map_err(|e| diagnose(model, &media, e))?;
    // The request's files go as soon as they are encoded: a client that got its answer finds
    // nothing of its request left on the server's disk.
    drop(media);
    // The prompt is read PREFILL_CHUNK positions per step of the batch; between chunks the
    // worker checks that the client is still there and the request in time (`check_reading`).
    generator
        .add_reading(
            n,
            &prompt.ids,
            prompt.embeds.as_ref(),
            max_tokens,
            Sampler::new(params.sampling),
            PREFILL_CHUNK,
        )
        .map_err(|e| ApiError::internal(format!("generation failed: {e:#}")))?;
    Ok(Answer {
        n,
        events,
        t0,
        max_seconds,
        // With media, the prompt holds their tokens too.
        prompt_tokens: match &prompt.embeds {
            Some(e) => e.dims().get(1).copied().unwrap_or(prompt_tokens),
            None => prompt.ids.len(),
        },
        max_tokens,
        stream: TokenStream::new(&model.model.tokenizer),
        stop: StopMatcher::new(params.stop),
        completion_tokens: 0,
        alongside: 0,
        counted: None,
    })
}

/// A failed generation: if a media file cannot be encoded on its own, the request is at
/// fault (400 naming its part); else it is ours (500).
fn diagnose(model: &MultimodalModel, media: &[JobMedia], e: anyhow::Error) -> ApiError {
    for m in media {
        let Ok(adapter) = model.adapter(&m.modality) else {
            continue;
        };
        if let Some(Err(err)) = adapter.source.get_files(&[m.file.path.as_path()]).pop() {
            // The temporary path means nothing to the client.
            let msg = format!("{err:#}").replace(&m.file.path.display().to_string(), "the file");
            return ApiError::invalid(
                "invalid_media",
                format!("{}: cannot decode the {}: {msg}", m.label, m.modality),
            );
        }
    }
    ApiError::internal(format!("generation failed: {e:#}"))
}

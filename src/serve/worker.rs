//! The one thread that owns the [`MultimodalModel`]: requests wait in a bounded queue and are
//! answered one at a time, in the order they were queued. A CPU model answers one request at a
//! full core count faster than two interleaved, and one owner needs no locking around the KV
//! cache or the encoders.
//!
//! Each job carries a channel back to its HTTP handler. The worker sends text as it is
//! generated; a send that fails means the client went away, and generation stops at the next
//! token. A panic while answering one request becomes a 500 for that request; the worker goes
//! on with the next.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use anymal_llm::tokenizer::TokenStream;
use anymal_llm::{Prefill, Sampler, SamplingConfig};
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

/// The error code of a request whose client left before its first token.
const CLIENT_GONE: &str = "client_gone";

/// Prompt positions fed per forward, between which a client that left or a deadline that
/// passed stops the prefill: a few seconds of work on a 2-core CPU.
const PREFILL_CHUNK: usize = 256;

/// The HTTP side's handle on the worker.
pub struct Worker {
    tx: SyncSender<Job>,
    alive: Arc<AtomicBool>,
    queue: usize,
    /// Jobs accepted and not yet answered (the one being answered included).
    pending: Arc<AtomicUsize>,
}

impl Worker {
    /// Start the thread; at most `queue` jobs wait while one is being answered.
    pub fn spawn(
        model: MultimodalModel,
        queue: usize,
        limits: RequestLimits,
    ) -> anyhow::Result<Self> {
        // Admission is counted in `pending`, not by the channel: a zero-capacity channel
        // accepts a job only while the worker sits in `recv`, so with `--queue 0` a request
        // arriving just before the idle worker got there was refused as "busy".
        let (tx, rx) = sync_channel(queue + 1);
        let alive = Arc::new(AtomicBool::new(true));
        let pending = Arc::new(AtomicUsize::new(0));
        let (flag, done) = (alive.clone(), pending.clone());
        std::thread::Builder::new()
            .name("anymal-worker".into())
            .spawn(move || {
                let max_token_bytes = longest_token_bytes(&model);
                run(&model, rx, &done, limits, max_token_bytes);
                flag.store(false, Ordering::SeqCst);
            })?;
        Ok(Self {
            tx,
            alive,
            queue,
            pending,
        })
    }

    /// Queue a job, or refuse it at once when `queue` jobs already wait behind the one being
    /// answered (the client can retry; a request silently left hanging cannot).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let admitted = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n <= self.queue).then_some(n + 1)
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
    limits: RequestLimits,
    max_token_bytes: usize,
) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    while let Ok(job) = rx.recv() {
        // However this job ends, it no longer counts against the queue afterwards.
        struct Finished<'a>(&'a AtomicUsize);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _finished = Finished(pending);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // The client left while its request waited: nothing to do.
        if job.events.is_closed() {
            eprintln!("request {n}: client went away while queued");
            continue;
        }
        let events = job.events.clone();
        let budget = Budget {
            limits,
            max_token_bytes,
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| answer(model, job, n, budget))) {
            let what = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            eprintln!("request {n}: panicked: {what}");
            let _ = events.send(Event::Error(ApiError::internal(format!(
                "internal error while answering this request: {what}"
            ))));
        }
    }
}

/// Why generation was cut short from inside a callback.
#[derive(Clone, Copy)]
enum Halt {
    StopString,
    ClientGone,
    OutOfTime,
}

/// The limits of one request and what the worker knows of the tokenizer to check them fast.
#[derive(Clone, Copy)]
struct Budget {
    limits: RequestLimits,
    max_token_bytes: usize,
}

fn answer(model: &MultimodalModel, job: Job, n: u64, budget: Budget) {
    let Job {
        turns,
        media,
        params,
        events,
    } = job;
    let t0 = Instant::now();
    let result = generate(model, &turns, &media, &params, &events, budget, n);
    // The request's files go before its answer ends: a client that got its answer finds
    // nothing of its request left on the server's disk.
    drop(media);
    match result {
        Ok(Some((finish_reason, usage))) => {
            eprintln!(
                "request {n}: {} prompt + {} completion tokens in {:.2}s ({})",
                usage.prompt_tokens,
                usage.completion_tokens,
                t0.elapsed().as_secs_f64(),
                finish_reason.as_str()
            );
            let _ = events.send(Event::Done {
                finish_reason,
                usage,
            });
        }
        Ok(None) => eprintln!(
            "request {n}: client went away; generation stopped after {:.2}s",
            t0.elapsed().as_secs_f64()
        ),
        Err(e) if e.code == Some(CLIENT_GONE) => eprintln!(
            "request {n}: client went away during the prefill; stopped after {:.2}s",
            t0.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("request {n}: error {e}");
            let _ = events.send(Event::Error(e));
        }
    }
}

/// Generate and stream one answer; `None` when the client went away.
fn generate(
    model: &MultimodalModel,
    turns: &[Turn],
    media: &[JobMedia],
    params: &GenParams,
    events: &UnboundedSender<Event>,
    budget: Budget,
    n: u64,
) -> Result<Option<(FinishReason, Usage)>, ApiError> {
    let t0 = Instant::now();
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
    let rendered = model.format().render(turns).map_err(|e| {
        ApiError::invalid(
            "invalid_conversation",
            format!("the conversation cannot be formatted: {e:#}"),
        )
    })?;
    let prompt_tokens = rendered.example.input_ids.len();
    if prompt_tokens > max_prompt || prompt_tokens >= context {
        return Err(over(format!("the prompt is {prompt_tokens} tokens")));
    }
    let out_of_time = move || t0.elapsed().as_secs_f64() > budget.limits.max_seconds;
    if prompt_tokens > PREFILL_CHUNK {
        eprintln!("request {n}: reading a prompt of {prompt_tokens} tokens");
    }
    let max_tokens = params.max_tokens.min(context - prompt_tokens);
    let refs: Vec<MediaRef> = media
        .iter()
        .map(|m| MediaRef::file(m.modality.clone(), m.file.path.clone()))
        .collect();
    let mut sampler = Sampler::new(params.sampling);
    let mut stream = TokenStream::new(&model.model.tokenizer);
    let mut stop = StopMatcher::new(params.stop.clone());
    let mut completion_tokens = 0;
    let mut halt = None;
    // Between prefill chunks: has the client left, has the request run out of time.
    let prefill_halt = std::cell::Cell::new(None);
    let mut prefill = Prefill::chunked(PREFILL_CHUNK, || {
        if events.is_closed() {
            prefill_halt.set(Some(Halt::ClientGone));
        } else if out_of_time() {
            prefill_halt.set(Some(Halt::OutOfTime));
        }
        prefill_halt.get().is_none()
    });
    let res = model.generate_with(turns, &refs, max_tokens, &mut sampler, &mut prefill, |id| {
        completion_tokens += 1;
        if out_of_time() {
            halt = Some(Halt::OutOfTime);
            return Err(anymal_llm::Error::Stopped("out of time".into()));
        }
        if let Some(piece) = stream.push(id)? {
            let (text, hit) = stop.push(&piece);
            if !text.is_empty() && events.send(Event::Text(text)).is_err() {
                halt = Some(Halt::ClientGone);
                return Err(anymal_llm::Error::Stopped("the client went away".into()));
            }
            if hit {
                halt = Some(Halt::StopString);
                return Err(anymal_llm::Error::Stopped("stop string".into()));
            }
        }
        Ok(())
    });
    let usage = |completion_tokens| Usage {
        prompt_tokens,
        completion_tokens,
    };
    drop(prefill);
    let halt = halt.or(prefill_halt.take());
    match (res, halt) {
        // Nobody reads this error: it tells `answer` where the request ended.
        (_, Some(Halt::ClientGone)) if completion_tokens == 0 => {
            Err(ApiError::unavailable(CLIENT_GONE, "the client went away"))
        }
        (_, Some(Halt::ClientGone)) => Ok(None),
        (_, Some(Halt::OutOfTime)) if completion_tokens == 0 => Err(ApiError::unavailable(
            "timeout",
            format!(
                "the request ran past the limit of {} s before its first token (--max-request-seconds)",
                budget.limits.max_seconds
            ),
        )),
        (_, Some(Halt::OutOfTime)) => {
            // The tokens streamed so far are the answer, cut as max_tokens would cut it.
            let text = stop.finish();
            if !text.is_empty() && events.send(Event::Text(text)).is_err() {
                return Ok(None);
            }
            Ok(Some((FinishReason::Length, usage(completion_tokens - 1))))
        }
        (_, Some(Halt::StopString)) => Ok(Some((FinishReason::Stop, usage(completion_tokens)))),
        (Ok((ids, stats)), None) => {
            let tail = stream
                .finish()
                .map_err(|e| ApiError::internal(format!("decoding the answer: {e}")))?;
            let (mut text, hit) = stop.push(tail.as_deref().unwrap_or(""));
            if !hit {
                text.push_str(&stop.finish());
            }
            if !text.is_empty() && events.send(Event::Text(text)).is_err() {
                return Ok(None);
            }
            let reason = if hit || stats.stopped_at_eos || ids.len() < max_tokens {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            Ok(Some((
                reason,
                Usage {
                    prompt_tokens: stats.prompt_tokens,
                    completion_tokens: ids.len(),
                },
            )))
        }
        (Err(e), None) => Err(diagnose(model, media, completion_tokens, e)),
    }
}

/// A failed generation: if a media file cannot be encoded on its own, the request is at
/// fault (400 naming its part); else it is ours (500).
fn diagnose(
    model: &MultimodalModel,
    media: &[JobMedia],
    generated: usize,
    e: anyhow::Error,
) -> ApiError {
    if generated == 0 {
        for m in media {
            let Ok(adapter) = model.adapter(&m.modality) else {
                continue;
            };
            if let Some(Err(err)) = adapter.source.get_files(&[m.file.path.as_path()]).pop() {
                // The temporary path means nothing to the client.
                let msg =
                    format!("{err:#}").replace(&m.file.path.display().to_string(), "the file");
                return ApiError::invalid(
                    "invalid_media",
                    format!("{}: cannot decode the {}: {msg}", m.label, m.modality),
                );
            }
        }
    }
    ApiError::internal(format!("generation failed: {e:#}"))
}

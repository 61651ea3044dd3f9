//! `anymal serve`: the model behind an OpenAI-compatible HTTP API (see [`crate::serve`]).
//! Loads the model, starts the worker, binds, prints `listening on http://HOST:PORT` to stderr
//! and serves until Ctrl-C or SIGTERM.

use std::future::IntoFuture;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::model_args::{AnswerArgs, ModelArgs};
use crate::serve::http::{router, AppState};
use crate::serve::media::MediaStore;
use crate::serve::openai::{takes, Defaults, ServedModality};
use crate::serve::worker::{RequestLimits, Worker};

/// How long open requests may run on after Ctrl-C or SIGTERM.
const GRACE_SECONDS: u64 = 10;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (the `listening on` line says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Largest request body in MB (media come inline, base64).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// Requests that may wait while `--batch` are answered; more get a 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Requests answered at once (continuous batching: each gets the answer it would get
    /// alone; a new one joins as soon as one ends).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub batch: u64,
    /// Longest prompt in tokens; longer ones get a 400 before any work. Default: the
    /// model's context.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prompt_tokens: Option<u64>,
    /// Longest time one request may hold the model, in seconds: an answer still generating
    /// then ends with finish_reason "length", a prompt still being read gets a 503.
    #[arg(long, default_value_t = 600.0)]
    pub max_request_seconds: f64,
    /// The model id clients name in requests. Default: the loaded model's name.
    #[arg(long)]
    pub model_name: Option<String>,
}

pub fn run(a: ServeArgs, registry: &anymal_encoders::ModalityRegistry) -> Result<()> {
    let sampling = a.answer.sampling()?;
    if a.max_body_mb == 0 {
        bail!("--max-body-mb must be at least 1");
    }
    let max_body = a
        .max_body_mb
        .checked_mul(1 << 20)
        .context("--max-body-mb is too large")?;
    if !(a.max_request_seconds.is_finite() && a.max_request_seconds > 0.0) {
        bail!("--max-request-seconds must be a positive number of seconds");
    }
    let model = a.model.load(registry, false)?;
    let context = model.model.llm.cfg.max_position_embeddings;
    let limits = RequestLimits {
        max_prompt_tokens: a
            .max_prompt_tokens
            .map_or(context, |n| (n as usize).min(context)),
        max_seconds: a.max_request_seconds,
    };
    let model_id = a.model_name.clone().unwrap_or_else(|| model.name.clone());
    if model_id.is_empty() {
        bail!("--model-name must not be empty");
    }
    let modalities = model
        .adapters
        .iter()
        .map(|a| ServedModality {
            name: a.modality.clone(),
            placeholder: a.placeholder.clone(),
            default_format: a.default_extension.clone(),
        })
        .collect();
    let worker = Worker::spawn(model, a.queue, a.batch as usize, limits)
        .context("starting the model worker")?;
    let state = Arc::new(AppState {
        worker,
        model_id: model_id.clone(),
        modalities,
        media: MediaStore::new(max_body)?,
        max_body,
        defaults: Defaults {
            max_tokens: a.answer.max_tokens,
            sampling,
            system: a.answer.system.clone(),
        },
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        requests: Default::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!("serving '{model_id}' (takes {})", takes(&state.modalities));
        eprintln!("listening on http://{addr}");
        // On a signal, open requests get a few seconds to finish; a long answer streaming to
        // a slow client does not hold the shutdown up for longer.
        let (stopping_tx, stopping) = tokio::sync::oneshot::channel();
        let server =
            axum::serve(listener, router(state.clone())).with_graceful_shutdown(async move {
                shutdown_signal().await;
                eprintln!("shutting down: finishing open requests (at most {GRACE_SECONDS}s)");
                let _ = stopping_tx.send(());
            });
        tokio::select! {
            r = server.into_future() => r.context("serving HTTP")?,
            _ = async {
                let _ = stopping.await;
                tokio::time::sleep(std::time::Duration::from_secs(GRACE_SECONDS)).await;
            } => eprintln!("open requests did not finish in {GRACE_SECONDS}s; stopping anyway"),
        }
        eprintln!("shut down");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

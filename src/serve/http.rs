//! The HTTP surface: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`. Every
//! error, including unknown paths and wrong methods, is OpenAI-shaped JSON. The body is read
//! here under the size limit (a declared `Content-Length` over it is refused before reading),
//! media are decoded off the async threads, and the request joins the worker's queue; the
//! response is sent once the worker's first event says whether the request is answerable, so
//! a bad media file is a 4xx even for a streamed request.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::media::MediaStore;
use super::openai::{self, Defaults, ResponseMeta};
use super::worker::{Event, FinishReason, Job, Usage, Worker};

/// What every handler shares.
pub struct AppState {
    pub worker: Worker,
    /// The id clients must name in `model`.
    pub model_id: String,
    /// The modalities the model takes.
    pub modalities: Vec<openai::ServedModality>,
    pub media: MediaStore,
    /// Request bodies over this many bytes get a 413.
    pub max_body: usize,
    pub defaults: Defaults,
    /// Unix time the server started (`created` of the model object).
    pub started: u64,
    /// Chat completion requests received so far.
    pub requests: std::sync::atomic::AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health).fallback(method_not_allowed))
        .route("/v1/models", get(models).fallback(method_not_allowed))
        .route("/v1/models/{id}", get(model).fallback(method_not_allowed))
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    if app.worker.is_alive() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "message": "the model worker has stopped"})),
        )
            .into_response()
    }
}

async fn models(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(openai::model_list(&app.model_id, app.started))
}

async fn model(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == app.model_id {
        Json(openai::model_object(&app.model_id, app.started)).into_response()
    } else {
        unknown_model(&id, &app.model_id).into_response()
    }
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!(
            "no route {} {} (this server has GET /health, GET /v1/models, POST /v1/chat/completions)",
            req.method(),
            req.uri().path()
        ),
    )
}

fn unknown_model(asked: &str, served: &str) -> ApiError {
    ApiError::not_found(
        "model_not_found",
        format!("the model '{asked}' does not exist; this server serves '{served}'"),
    )
}

async fn chat_completions(State(app): State<Arc<AppState>>, req: Request) -> Response {
    match chat(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat(app: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let body = read_body(req, app.max_body).await?;
    let request = openai::parse_request(&body)?;
    drop(body);
    match request.model.as_deref() {
        None => return Err(ApiError::bad_request("`model` is required")),
        Some(m) if m != app.model_id => return Err(unknown_model(m, &app.model_id)),
        Some(_) => {}
    }
    let n = app
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let params = request.params(&app.defaults, n)?;
    let (stream, include_usage) = (request.stream(), request.include_usage());
    // Base64 decoding and file writes of up to --max-body-mb: not on the async threads.
    let state = app.clone();
    let conversation = tokio::task::spawn_blocking(move || {
        request.conversation(&state.modalities, &state.media, &state.defaults)
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding the request's media: {e}")))??;
    let (tx, mut rx) = unbounded_channel();
    app.worker.submit(Job {
        turns: conversation.turns,
        media: conversation.media,
        params,
        events: tx,
    })?;
    let meta = ResponseMeta::new(&app.model_id);
    // The first event decides between an error response and an answer.
    let first = rx.recv().await;
    if stream {
        return match first {
            Some(Event::Error(e)) => Err(e),
            None => Err(worker_dropped()),
            Some(first) => Ok(sse_response(meta, first, rx, include_usage)),
        };
    }
    let mut text = String::new();
    let mut next = first;
    loop {
        match next {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done {
                finish_reason,
                usage,
            }) => {
                return Ok(
                    Json(openai::completion(&meta, &text, finish_reason, usage)).into_response()
                )
            }
            Some(Event::Error(e)) => return Err(e),
            None => return Err(worker_dropped()),
        }
        next = rx.recv().await;
    }
}

fn worker_dropped() -> ApiError {
    ApiError::internal("the model worker dropped the request")
}

/// The body, at most `limit` bytes.
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is over the limit of {} MB (--max-body-mb)",
            limit >> 20
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Server-sent events: a chunk with the role, content chunks, a chunk with the finish reason
/// (then usage when asked), and `data: [DONE]`. An error after the answer began is sent as an
/// `{"error": ...}` event. Dropping this stream (client gone) closes the worker's channel.
fn sse_response(
    meta: ResponseMeta,
    first: Event,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
    struct St {
        meta: ResponseMeta,
        rx: UnboundedReceiver<Event>,
        first: Option<Event>,
        started: bool,
        done: bool,
        include_usage: bool,
    }
    let st = St {
        meta,
        rx,
        first: Some(first),
        started: false,
        done: false,
        include_usage,
    };
    let events = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = String::new();
        if !st.started {
            st.started = true;
            data(
                &mut out,
                &openai::chunk(&st.meta, json!({"role": "assistant", "content": ""}), None),
            );
        }
        let ev = match st.first.take() {
            Some(e) => Some(e),
            None => st.rx.recv().await,
        };
        match ev {
            Some(Event::Text(t)) => data(
                &mut out,
                &openai::chunk(&st.meta, json!({"content": t}), None),
            ),
            Some(Event::Done {
                finish_reason,
                usage,
            }) => {
                finish(&mut out, &st.meta, finish_reason, usage, st.include_usage);
                st.done = true;
            }
            Some(Event::Error(e)) => {
                data(&mut out, &e.to_json());
                out.push_str("data: [DONE]\n\n");
                st.done = true;
            }
            None => {
                data(&mut out, &worker_dropped().to_json());
                out.push_str("data: [DONE]\n\n");
                st.done = true;
            }
        }
        Some((Ok::<_, Infallible>(Bytes::from(out)), st))
    });
    let mut r = Response::new(Body::from_stream(events));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn data(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

fn finish(
    out: &mut String,
    meta: &ResponseMeta,
    reason: FinishReason,
    usage: Usage,
    include_usage: bool,
) {
    data(out, &openai::chunk(meta, json!({}), Some(reason)));
    if include_usage {
        data(out, &openai::usage_chunk(meta, usage));
    }
    out.push_str("data: [DONE]\n\n");
}

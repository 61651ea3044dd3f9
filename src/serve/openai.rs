//! The OpenAI chat completions API as anymal speaks it: the request body, its messages turned
//! into [`Turn`]s with modality placeholders and decoded media files, and the response objects
//! (`chat.completion`, `chat.completion.chunk`).
//!
//! Content parts: `text`, `image_url` (data URLs only: the server fetches nothing), and
//! `input_audio` as OpenAI defines them; every other modality the model takes, built in or
//! registered by a program of its own, is `input_<modality>` in the same shape as `input_audio`
//! (`{"data": base64, "format": file extension}`; the format defaults to the modality's own).
//! A media part becomes its modality's placeholder at the part's place in the message text.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::media::{extension_for_mime, parse_data_url, sanitize_extension, MediaStore, TempMedia};
use super::worker::{FinishReason, GenParams, JobMedia, Usage};
use crate::conversation::{Role, Turn};
use anymal_llm::SamplingConfig;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<RequestMessage>>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    /// A string or a list of strings.
    pub stop: Option<Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    /// A string, a list of parts, or null (an assistant turn that only called tools).
    pub content: Option<Value>,
}

/// Server-side defaults for what a request leaves out (the command-line flags).
#[derive(Debug, Clone)]
pub struct Defaults {
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Used when the request has no system message.
    pub system: Option<String>,
}

/// A modality the served model takes.
#[derive(Debug, Clone)]
pub struct ServedModality {
    pub name: String,
    /// What stands for a file of it in the text (`<audio>`).
    pub placeholder: String,
    /// The extension an inline file gets when its part names no `format`.
    pub default_format: Option<String>,
}

/// "text only", or "text, audio, image".
pub fn takes(modalities: &[ServedModality]) -> String {
    crate::multimodal::describe_inputs(modalities.iter().map(|m| m.name.as_str()))
}

/// A request ready for the worker.
#[derive(Debug)]
pub struct Conversation {
    pub turns: Vec<Turn>,
    pub media: Vec<JobMedia>,
}

/// Parse a request body; malformed JSON and wrong field types are 400s saying where.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => ApiError::invalid(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        ),
        serde_json::error::Category::Data => ApiError::bad_request(format!(
            "the request body is not a valid chat completion request: {e}"
        )),
    })
}

impl ChatRequest {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// Sampling and length settings, checked. A request without a `seed` gets the server's
    /// seed plus its number `n`: sampled answers differ from request to request, and a server
    /// run replays the same.
    pub fn params(&self, d: &Defaults, n: u64) -> Result<GenParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("`n` other than 1 is not supported"));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => d.max_tokens,
            Some(0) => return Err(ApiError::bad_request("`max_tokens` must be at least 1")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let mut sampling = d.sampling;
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::bad_request(format!(
                    "`temperature` must be between 0 and 2, got {t}"
                )));
            }
            sampling.temperature = t;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::bad_request(format!(
                    "`top_p` must be in (0, 1], got {p}"
                )));
            }
            sampling.top_p = p;
        }
        sampling.seed = match self.seed {
            Some(s) => s as u64,
            None => d.sampling.seed.wrapping_add(n),
        };
        let stop = match &self.stop {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::bad_request("`stop` must be a string or a list of strings")
                })?,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "`stop` must be a string or a list of strings",
                ))
            }
        };
        Ok(GenParams {
            max_tokens,
            sampling,
            stop,
        })
    }

    /// The messages as turns, media parts decoded into files of `store`. `modalities` are the
    /// ones the model takes. Consecutive messages of one role are joined (some chat templates
    /// insist on alternating roles; OpenAI clients do not).
    pub fn conversation(
        &self,
        modalities: &[ServedModality],
        store: &MediaStore,
        defaults: &Defaults,
    ) -> Result<Conversation, ApiError> {
        let messages = match &self.messages {
            None => return Err(ApiError::bad_request("`messages` is required")),
            Some(m) if m.is_empty() => return Err(ApiError::bad_request("`messages` is empty")),
            Some(m) => m,
        };
        let mut turns: Vec<Turn> = Vec::new();
        let mut media = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "{at}: role '{other}' is not supported (system, user, assistant)"
                    )))
                }
            };
            let text = message_text(&at, role, m.content.as_ref(), modalities, store, &mut media)?;
            match turns.last_mut() {
                Some(last) if last.role == role => {
                    last.text.push_str("\n\n");
                    last.text.push_str(&text);
                }
                _ => turns.push(Turn { role, text }),
            }
        }
        if turns.last().is_none_or(|t| t.role != Role::User) {
            return Err(ApiError::bad_request(
                "the last message must be from the user",
            ));
        }
        if let Some(system) = &defaults.system {
            if turns[0].role != Role::System {
                turns.insert(
                    0,
                    Turn {
                        role: Role::System,
                        text: system.clone(),
                    },
                );
            }
        }
        Ok(Conversation { turns, media })
    }
}

/// One message's text, media parts replaced by placeholders (their files appended to `media`).
fn message_text(
    at: &str,
    role: Role,
    content: Option<&Value>,
    modalities: &[ServedModality],
    store: &MediaStore,
    media: &mut Vec<JobMedia>,
) -> Result<String, ApiError> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(String::new()),
        Some(Value::String(s)) => {
            check_text(&format!("{at}.content"), s, modalities)?;
            return Ok(s.clone());
        }
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{at}.content must be a string or a list of content parts"
            )))
        }
    };
    let mut pieces: Vec<String> = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        let ty = part.get("type").and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad_request(format!("{at}: a content part needs a string `type`"))
        })?;
        let (modality, form) = match ty {
            "text" | "input_text" => {
                let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request(format!("{at}: a text part needs a string `text`"))
                })?;
                check_text(&at, text, modalities)?;
                pieces.push(text.to_string());
                continue;
            }
            "image_url" | "input_image" => ("image", MediaPart::Url),
            other => match other.strip_prefix("input_").filter(|m| !m.is_empty()) {
                Some(modality) => (modality, MediaPart::Fields),
                None => {
                    return Err(ApiError::invalid(
                        "unsupported_content_type",
                        format!(
                            "{at}: content part type '{other}' is not supported \
                             (text, image_url, input_<modality>: {})",
                            takes(modalities)
                        ),
                    ))
                }
            },
        };
        let label = format!("{at} ({ty})");
        if role != Role::User {
            return Err(ApiError::bad_request(format!(
                "{label}: media go in user messages only"
            )));
        }
        let Some(served) = modalities.iter().find(|m| m.name == modality) else {
            return Err(ApiError::invalid(
                "unsupported_modality",
                format!(
                    "{label}: this model takes no {modality} input (no {modality} projector is loaded; it takes {})",
                    takes(modalities)
                ),
            ));
        };
        let file = form.decode(part, ty, &label, served, store)?;
        media.push(JobMedia {
            modality: modality.to_string(),
            label,
            file,
        });
        pieces.push(served.placeholder.clone());
    }
    Ok(pieces.join("\n"))
}

/// How a media part carries its file.
enum MediaPart {
    /// `image_url`: `{"url": "data:..."}` (or the URL as a plain string, as in the Responses
    /// API).
    Url,
    /// `input_<modality>`: `{"data": base64, "format": ext}` under the part's type; the format
    /// defaults to the modality's own.
    Fields,
}

impl MediaPart {
    fn decode(
        &self,
        part: &Value,
        ty: &str,
        label: &str,
        modality: &ServedModality,
        store: &MediaStore,
    ) -> Result<TempMedia, ApiError> {
        let field = part.get(ty);
        match *self {
            MediaPart::Url => {
                let url = field
                    .and_then(|v| v.get("url"))
                    .or(field)
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("{label}: needs `{ty}.url`, a data URL"))
                    })?;
                let (mime, data) = parse_data_url(url, label)?;
                if !mime.is_empty() && !mime.to_ascii_lowercase().starts_with("image/") {
                    return Err(ApiError::invalid(
                        "invalid_media",
                        format!("{label}: the data URL holds {mime}, not an image"),
                    ));
                }
                store.store_base64(data, &extension_for_mime(mime), label)
            }
            MediaPart::Fields => {
                let obj = field.filter(|v| v.is_object()).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{label}: needs an object `{ty}` with `data` (base64)"
                    ))
                })?;
                let data = obj.get("data").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{label}: needs `{ty}.data`, base64 file content"
                    ))
                })?;
                let example = modality.default_format.as_deref().unwrap_or("bin");
                let ext = match obj.get("format") {
                    None | Some(Value::Null) => modality.default_format.clone().ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{label}: needs `{ty}.format`, the file's extension ({} files have no default)",
                            modality.name
                        ))
                    })?,
                    Some(Value::String(f)) => sanitize_extension(f).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{label}: `{ty}.format` must be a file extension such as {example}"
                        ))
                    })?,
                    Some(_) => return Err(ApiError::bad_request(format!("{label}: `{ty}.format` must be a string"))),
                };
                store.store_base64(data, &ext, label)
            }
        }
    }
}

/// Text may not hold a placeholder itself: it would claim a media file it does not bring.
fn check_text(at: &str, text: &str, modalities: &[ServedModality]) -> Result<(), ApiError> {
    if let Some(m) = modalities
        .iter()
        .find(|m| text.contains(m.placeholder.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "{at}: the text holds {}, which stands for a {} file here; send the file as a content part instead",
            m.placeholder, m.name
        )));
    }
    Ok(())
}

/// The ids and timestamps shared by a response and its chunks.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    pub fn new(model: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            id: format!(
                "chatcmpl-{created:x}{:06x}",
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            created,
            model: model.to_string(),
        }
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// A whole answer: `chat.completion`.
pub fn completion(meta: &ResponseMeta, text: &str, finish: FinishReason, usage: Usage) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish.as_str(),
        }],
        "usage": usage_json(usage),
    })
}

/// One streamed `chat.completion.chunk` with `delta` and `finish_reason`.
pub fn chunk(meta: &ResponseMeta, delta: Value, finish: Option<FinishReason>) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish.map(FinishReason::as_str)}],
    })
}

/// The last chunk when the client asked for `stream_options.include_usage`: no choices.
pub fn usage_chunk(meta: &ResponseMeta, usage: Usage) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage_json(usage),
    })
}

/// `GET /v1/models`.
pub fn model_list(model: &str, created: u64) -> Value {
    json!({"object": "list", "data": [model_object(model, created)]})
}

pub fn model_object(model: &str, created: u64) -> Value {
    json!({"id": model, "object": "model", "created": created, "owned_by": "anymal"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(body: Value, modalities: &[(&str, &str)]) -> Result<Conversation, ApiError> {
        let store = MediaStore::new(1 << 20).unwrap();
        let m: Vec<ServedModality> = modalities
            .iter()
            .map(|(a, b)| ServedModality {
                name: a.to_string(),
                placeholder: b.to_string(),
                default_format: Some("bin".into()),
            })
            .collect();
        let d = Defaults {
            max_tokens: 16,
            sampling: SamplingConfig::default(),
            system: None,
        };
        parse_request(body.to_string().as_bytes())?.conversation(&m, &store, &d)
    }

    #[test]
    fn parts_become_placeholders_in_order_and_bad_parts_are_named() {
        let c = conv(
            json!({"model": "m", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "wav"}},
                    {"type": "text", "text": "What is said?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]},
                {"role": "user", "content": "And?"}]}),
            &[("audio", "<audio>"), ("image", "<image>")],
        )
        .unwrap();
        assert_eq!(c.turns.len(), 2);
        assert_eq!(c.turns[1].text, "<audio>\nWhat is said?\n<image>\n\nAnd?");
        assert_eq!(c.media.len(), 2);
        assert_eq!(c.media[0].modality, "audio");
        assert!(c.media[0].file.path.extension().is_some_and(|e| e == "wav"));
        assert_eq!(c.media[1].label, "messages[1].content[2] (image_url)");
        assert!(c.media[1].file.path.extension().is_some_and(|e| e == "png"));

        let audio =
            json!({"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "wav"}});
        let e = conv(
            json!({"messages": [{"role": "user", "content": [audio]}]}),
            &[],
        )
        .unwrap_err();
        assert!(
            e.message.contains("messages[0].content[0] (input_audio)")
                && e.message.contains("no audio"),
            "{}",
            e.message
        );
        let e = conv(
            json!({"messages": [{"role": "user", "content": "hi <audio>"}]}),
            &[("audio", "<audio>")],
        )
        .unwrap_err();
        assert!(e.message.contains("<audio>"), "{}", e.message);
        let e = conv(json!({"messages": []}), &[]).unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = conv(
            json!({"messages": [{"role": "assistant", "content": "x"}]}),
            &[],
        )
        .unwrap_err();
        assert!(e.message.contains("last message"), "{}", e.message);
        let e = conv(json!({"messages": [{"role": "tool", "content": "x"}]}), &[]).unwrap_err();
        assert!(e.message.contains("'tool'"), "{}", e.message);
        let e = conv(
            json!({"messages": [{"role": "user", "content": [{"type": "file"}]}]}),
            &[],
        )
        .unwrap_err();
        assert!(e.message.contains("'file'"), "{}", e.message);
        assert_eq!(
            parse_request(b"{not json").unwrap_err().code,
            Some("invalid_json")
        );
    }

    #[test]
    fn params_follow_the_request_then_the_defaults() {
        let d = Defaults {
            max_tokens: 16,
            sampling: SamplingConfig::default(),
            system: None,
        };
        let p = |v: Value| {
            parse_request(v.to_string().as_bytes())
                .unwrap()
                .params(&d, 1)
        };
        let g = p(json!({"max_tokens": 3, "temperature": 0.5, "seed": 7, "stop": "\n"})).unwrap();
        assert_eq!(
            (g.max_tokens, g.sampling.temperature, g.sampling.seed),
            (3, 0.5, 7)
        );
        assert_eq!(g.stop, vec!["\n".to_string()]);
        assert_eq!(
            p(json!({"max_completion_tokens": 5, "max_tokens": 3}))
                .unwrap()
                .max_tokens,
            5
        );
        assert_eq!(p(json!({})).unwrap().max_tokens, 16);
        assert_eq!(
            p(json!({})).unwrap().sampling.seed,
            SamplingConfig::default().seed + 1
        );
        assert!(p(json!({"max_tokens": 0})).is_err());
        assert!(p(json!({"temperature": -1})).is_err());
        assert!(p(json!({"top_p": 0})).is_err());
        assert!(p(json!({"stop": [1]})).is_err());
        assert!(p(json!({"n": 2})).is_err());
    }
}

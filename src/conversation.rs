//! Conversations and how they become token sequences: the one prompt renderer. Training
//! (alignment and instruction tuning), generation, evaluation, chat and the server all render
//! through [`ConversationFormat`]; a single prompt is a one-turn conversation.
//!
//! With the model's chat template, the template is rendered once for the whole conversation
//! and once per assistant turn for the prefix before it (with the generation prompt) and the
//! prefix through it: the text between the two is that turn's answer, end-of-turn marker
//! included, exactly what the model must produce at inference, where the same prefix is
//! rendered with the generation prompt.
//!
//! Without a template (a base model, or `chat = false`), LLaVA's "plain" format: each turn's
//! text as it is, an answer right after its question (a space between them unless the question
//! ends in whitespace) and ended by EOS, a system turn and each later turn on a new line.
//!
//! Text is cut at placeholders and answer boundaries and each piece is tokenized on its own, the
//! same way in training and at inference; BOS, when the model wants one and the rendered text
//! does not already begin with it, comes first.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use anymal_llm::{LoadedModel, Message};

use crate::splice::{Example, IGNORE_INDEX};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// `system`, `human`/`user`, `gpt`/`assistant` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "system" => Some(Self::System),
            "human" | "user" => Some(Self::User),
            "gpt" | "assistant" => Some(Self::Assistant),
            _ => None,
        }
    }

    /// The LLaVA name (`system`, `human`, `gpt`), what the writers of this crate use.
    pub fn llava_name(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "human",
            Self::Assistant => "gpt",
        }
    }

    /// The chat-template name (`system`, `user`, `assistant`).
    pub fn template_name(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }

    /// How messages name the role: the names it is read from.
    pub fn describe(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "human/user",
            Self::Assistant => "gpt/assistant",
        }
    }
}

/// One turn; `text` keeps its placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

impl Turn {
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            text: text.into(),
        }
    }
}

/// One media file of a conversation, for the placeholder of its modality.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRef {
    pub modality: String,
    /// Resolved against the data file's folder (absolute paths are kept); for embedded media,
    /// the name its bytes go by (`train-00000.parquet#row 12`).
    pub path: PathBuf,
    /// The media's bytes when the data file embeds them (a Parquet row); `None`: read `path`.
    pub embedded: Option<std::sync::Arc<[u8]>>,
}

impl MediaRef {
    /// A media file on disk.
    pub fn file(modality: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            modality: modality.into(),
            path: path.into(),
            embedded: None,
        }
    }

    /// What the encoder reads: the file, or the embedded bytes.
    pub fn input(&self) -> anymal_encoders::MediaInput<'_> {
        match &self.embedded {
            None => anymal_encoders::MediaInput::File(&self.path),
            Some(bytes) => anymal_encoders::MediaInput::Bytes {
                name: &self.path,
                bytes,
            },
        }
    }
}

/// How a conversation becomes tokens: the model's chat template, or the plain format (a
/// model without one, or `chat = false`).
pub struct ConversationFormat<'a> {
    model: &'a LoadedModel,
    chat: bool,
    /// `(placeholder, tokens per item)` for every modality the conversation may hold.
    slots: Vec<(String, usize)>,
    /// Each assistant turn is cut to this many tokens (0: no limit). In the plain format the
    /// answer's text is cut and EOS still ends it; a chat template's answer is cut as rendered.
    pub max_answer_tokens: usize,
}

/// A conversation's tokens and the placeholder each slot stands for (in order).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub example: Example,
    pub slot_placeholders: Vec<String>,
}

enum Piece {
    Text(String),
    Answer(String),
    Slot(String),
}

/// A stretch of the rendered conversation before placeholders are cut out of it.
struct Run {
    text: String,
    answer: bool,
}

impl Run {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            answer: false,
        }
    }

    fn answer(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            answer: true,
        }
    }
}

impl<'a> ConversationFormat<'a> {
    pub fn new(model: &'a LoadedModel, chat: bool, slots: Vec<(String, usize)>) -> Self {
        Self {
            model,
            chat: chat && model.chat_template.is_some(),
            slots,
            max_answer_tokens: 0,
        }
    }

    pub fn uses_chat_template(&self) -> bool {
        self.chat
    }

    /// Tokens of `turns`. Training data ends with an assistant turn (labels on every
    /// assistant turn); a conversation ending with a user turn gets the generation prompt and
    /// no labels, ready for [`anymal_llm::generate`].
    pub fn render(&self, turns: &[Turn]) -> Result<Rendered> {
        if turns.is_empty() {
            bail!("the conversation has no turns");
        }
        let pieces = self.pieces(turns)?;
        let tok = &self.model.tokenizer;
        // A rendered template carries its own BOS when the model wants one.
        let first_text = match pieces.first() {
            Some(Piece::Text(text)) => text.as_str(),
            _ => "",
        };
        let bos_text = tok.bos_id.and_then(|b| tok.id_to_token(b)).unwrap_or("");
        let templated_bos = self.chat && !bos_text.is_empty() && first_text.starts_with(bos_text);
        let mut input_ids = Vec::new();
        let mut labels = Vec::new();
        if tok.add_bos && !templated_bos {
            input_ids.extend(tok.bos_id);
            labels.extend(tok.bos_id.map(|_| IGNORE_INDEX));
        }
        let mut slots = Vec::new();
        let mut slot_lens = Vec::new();
        let mut slot_placeholders = Vec::new();
        for p in pieces {
            match p {
                Piece::Slot(ph) => {
                    let k = self
                        .slots
                        .iter()
                        .find(|(p, _)| *p == ph)
                        .map(|(_, k)| *k)
                        .context("placeholder without a projector")?;
                    slots.push(input_ids.len());
                    slot_lens.push(k);
                    slot_placeholders.push(ph);
                    input_ids.extend(std::iter::repeat_n(0u32, k));
                    labels.extend(std::iter::repeat_n(IGNORE_INDEX, k));
                }
                Piece::Text(text) => {
                    let ids = tok.encode(&text, false, true)?;
                    labels.extend(std::iter::repeat_n(IGNORE_INDEX, ids.len()));
                    input_ids.extend(ids);
                }
                Piece::Answer(text) => {
                    let ids = self.answer_ids(&text)?;
                    labels.extend(ids.iter().map(|&t| t as i64));
                    input_ids.extend(ids);
                }
            }
        }
        Ok(Rendered {
            example: Example {
                input_ids,
                slots,
                slot_lens,
                labels,
            },
            slot_placeholders,
        })
    }

    /// An answer's tokens. A chat template's answer text ends with its own end-of-turn marker
    /// (a special token); a plain answer is data, tokenized without special tokens, ended by EOS.
    fn answer_ids(&self, text: &str) -> Result<Vec<u32>> {
        let tok = &self.model.tokenizer;
        let cut = |mut ids: Vec<u32>| {
            if self.max_answer_tokens > 0 {
                ids.truncate(self.max_answer_tokens);
            }
            ids
        };
        if self.chat {
            return Ok(cut(tok.encode(text, false, true)?));
        }
        let mut ids = cut(tok.encode(text, false, false)?);
        ids.extend(tok.eos_id);
        Ok(ids)
    }

    /// The conversation as text pieces, answers and slots, in order.
    fn pieces(&self, turns: &[Turn]) -> Result<Vec<Piece>> {
        let runs = if self.chat {
            self.template_runs(turns)?
        } else {
            plain_runs(turns)
        };
        let mut out = Vec::new();
        for run in runs {
            let Run { text, answer } = run;
            if answer {
                if self.slots.iter().any(|(ph, _)| text.contains(ph.as_str())) {
                    bail!("an assistant turn holds a modality placeholder; media go in user turns");
                }
                out.push(Piece::Answer(text));
                continue;
            }
            let mut rest = text.as_str();
            while let Some((i, ph)) = self
                .slots
                .iter()
                .filter_map(|(ph, _)| rest.find(ph.as_str()).map(|i| (i, ph)))
                .min_by_key(|(i, _)| *i)
            {
                if i > 0 {
                    out.push(Piece::Text(rest[..i].to_string()));
                }
                out.push(Piece::Slot(ph.clone()));
                rest = &rest[i + ph.len()..];
            }
            if !rest.is_empty() {
                out.push(Piece::Text(rest.to_string()));
            }
        }
        Ok(out)
    }

    /// Text and answer runs of the chat template's rendering.
    fn template_runs(&self, turns: &[Turn]) -> Result<Vec<Run>> {
        let tpl = self
            .model
            .chat_template
            .as_ref()
            .context("the model has no chat template")?;
        let ends_with_user = turns.last().is_some_and(|t| t.role != Role::Assistant);
        let msgs: Vec<Message> = turns
            .iter()
            .map(|t| Message::new(t.role.template_name(), &t.text))
            .collect();
        let full = tpl.render(&msgs, ends_with_user)?;
        let mut runs = Vec::new();
        let mut at = 0;
        for (k, t) in turns.iter().enumerate() {
            if t.role != Role::Assistant {
                continue;
            }
            let before = tpl.render(&msgs[..k], true)?;
            let through = tpl.render(&msgs[..=k], false)?;
            if !full.starts_with(&before)
                || !through.starts_with(&before)
                || !full.starts_with(&through)
            {
                bail!(
                    "the chat template does not render turn {} as a continuation of the turns before it; \
                     answers cannot be located (set data.chat_template = false)",
                    k + 1
                );
            }
            if before.len() < at {
                bail!("the chat template renders turn {} out of order", k + 1);
            }
            runs.push(Run::text(&full[at..before.len()]));
            runs.push(Run::answer(&full[before.len()..through.len()]));
            at = through.len();
        }
        runs.push(Run::text(&full[at..]));
        Ok(runs)
    }
}

/// Text and answer runs of the plain format (see the module docs).
fn plain_runs(turns: &[Turn]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut prev_ends_in_space = true;
    for (i, t) in turns.iter().enumerate() {
        let last = i + 1 == turns.len();
        match t.role {
            Role::Assistant => {
                let sep = if prev_ends_in_space { "" } else { " " };
                runs.push(Run::answer(format!("{sep}{}", t.text.trim())));
                if !last {
                    runs.push(Run::text("\n"));
                }
                prev_ends_in_space = true;
            }
            Role::System => {
                runs.push(Run::text(format!("{}\n", t.text)));
                prev_ends_in_space = true;
            }
            Role::User => {
                prev_ends_in_space = t.text.ends_with(char::is_whitespace);
                runs.push(Run::text(t.text.clone()));
            }
        }
    }
    runs
}

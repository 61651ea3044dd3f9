//! Conversations (several turns, several modalities) as token sequences: the model's chat
//! template applied, a run of empty slots wherever a modality placeholder stands, and labels on
//! the assistant turns only.
//!
//! The template is rendered once for the whole conversation and once per assistant turn for
//! the prefix before it (with the generation prompt) and the prefix through it: the text
//! between the two is that turn's answer, end-of-turn marker included, exactly what the model
//! must produce at inference, where the same prefix is rendered with the generation prompt.
//! Text is cut at placeholders and answer boundaries and each piece is tokenized on its own,
//! the same way in training and at inference.

use anyhow::{bail, Context, Result};
use anymal_llm::{LoadedModel, Message};

use crate::data::instruct::{Role, Turn};
use crate::splice::{Example, IGNORE_INDEX};

/// How a conversation becomes text: the model's chat template, or (a model without one, or
/// `chat = false`) turns on their own lines with each answer ended by EOS.
pub struct ConversationFormat<'a> {
    model: &'a LoadedModel,
    chat: bool,
    /// `(placeholder, tokens per item)` for every modality the conversation may hold.
    slots: Vec<(String, usize)>,
    /// Each assistant turn is cut to this many tokens (0: no limit).
    pub max_answer_tokens: usize,
}

/// A conversation's tokens and the placeholder each slot stands for (in order).
pub struct Rendered {
    pub example: Example,
    pub slot_placeholders: Vec<String>,
}

enum Piece {
    Text { text: String, answer: bool },
    Slot(String),
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
            Some(Piece::Text { text, .. }) => text.as_str(),
            _ => "",
        };
        let bos_text = tok.bos_id.and_then(|b| tok.id_to_token(b)).unwrap_or("");
        let mut add_bos =
            tok.add_bos && !(self.chat && !bos_text.is_empty() && first_text.starts_with(bos_text));
        let mut input_ids = Vec::new();
        let mut labels = Vec::new();
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
                Piece::Text { text, answer } => {
                    let mut ids = tok.encode(&text, add_bos, true)?;
                    add_bos = false;
                    if answer {
                        if !self.chat {
                            ids.extend(tok.eos_id);
                        }
                        if self.max_answer_tokens > 0 {
                            ids.truncate(self.max_answer_tokens);
                        }
                        labels.extend(ids.iter().map(|&t| t as i64));
                    } else {
                        labels.extend(std::iter::repeat_n(IGNORE_INDEX, ids.len()));
                    }
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

    /// The conversation as text pieces (answers marked) and slots.
    fn pieces(&self, turns: &[Turn]) -> Result<Vec<Piece>> {
        let ends_with_user = turns.last().is_some_and(|t| t.role != Role::Assistant);
        // (text, is answer) runs in order.
        let mut runs: Vec<(String, bool)> = Vec::new();
        if self.chat {
            let tpl = self.model.chat_template.as_ref().expect("checked in new");
            let msgs: Vec<Message> = turns
                .iter()
                .map(|t| Message::new(role_name(t.role), &t.text))
                .collect();
            let full = tpl.render(&msgs, ends_with_user)?;
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
                runs.push((full[at..before.len()].to_string(), false));
                runs.push((full[before.len()..through.len()].to_string(), true));
                at = through.len();
            }
            runs.push((full[at..].to_string(), false));
        } else {
            for t in turns {
                match t.role {
                    Role::Assistant => {
                        runs.push((format!(" {}", t.text.trim()), true));
                        runs.push(("\n".into(), false));
                    }
                    _ => runs.push((format!("{}\n", t.text), false)),
                }
            }
            if !ends_with_user {
                runs.pop();
            }
        }
        let mut out = Vec::new();
        for (text, answer) in runs {
            if answer {
                if self.slots.iter().any(|(ph, _)| text.contains(ph.as_str())) {
                    bail!("an assistant turn holds a modality placeholder; media go in user turns");
                }
                out.push(Piece::Text { text, answer });
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
                    out.push(Piece::Text {
                        text: rest[..i].to_string(),
                        answer: false,
                    });
                }
                out.push(Piece::Slot(ph.clone()));
                rest = &rest[i + ph.len()..];
            }
            if !rest.is_empty() {
                out.push(Piece::Text {
                    text: rest.to_string(),
                    answer: false,
                });
            }
        }
        Ok(out)
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

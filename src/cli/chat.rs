//! `anymal chat`: a conversation in the terminal. Lines are user messages; `/audio PATH`,
//! `/image PATH`, ... (one command per modality the model takes) attach a file to the next
//! message. The answer streams to stdout; prompts, notices and errors go to stderr, so a piped
//! session's stdout holds only the answers. Nothing typed ends the session except `/quit` and
//! end of input: a bad command or a failed answer is reported and the session goes on.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use anymal_llm::tokenizer::TokenStream;
use anymal_llm::Sampler;

use super::model_args::{AnswerArgs, ModelArgs};
use crate::conversation::{MediaRef, Role, Turn};
use crate::multimodal::MultimodalModel;

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
}

pub fn run(a: ChatArgs, registry: &anymal_encoders::ModalityRegistry) -> Result<()> {
    let sampling = a.answer.sampling()?;
    let model = a.model.load(registry, true)?;
    let mut chat = Chat {
        model: &model,
        system: a.answer.system.clone(),
        max_tokens: a.answer.max_tokens,
        sampling,
        sampler: Sampler::new(sampling),
        turns: Vec::new(),
        media: Vec::new(),
        attached: Vec::new(),
        known: registry.names(),
    };
    eprintln!(
        "chatting with {} (takes {}); /help lists the commands",
        model.name,
        model.takes()
    );
    let interactive = std::io::stdin().is_terminal();
    let mut input = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            // Bytes that are not UTF-8: that line is lost, the session is not.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                eprintln!("error: the line is not UTF-8 text");
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("reading standard input: {e}")),
        }
        if chat.handle(line.trim_end_matches(['\n', '\r'])) == Flow::Quit {
            break;
        }
    }
    Ok(())
}

#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Quit,
}

struct Chat<'a> {
    model: &'a MultimodalModel,
    system: Option<String>,
    max_tokens: usize,
    sampling: anymal_llm::SamplingConfig,
    /// One sampler per session (re-seeded on /reset): answers differ turn to turn when
    /// sampling, and a reset session replays the same.
    sampler: Sampler,
    /// The conversation so far, user and assistant turns alternating.
    turns: Vec<Turn>,
    /// The files of `turns`' placeholders, in order.
    media: Vec<MediaRef>,
    /// Files attached for the next message.
    attached: Vec<MediaRef>,
    /// Every modality of the registry, loaded or not.
    known: Vec<String>,
}

impl Chat<'_> {
    fn handle(&mut self, line: &str) -> Flow {
        if line.trim().is_empty() {
            return Flow::Go;
        }
        // `//text` sends `/text`.
        if let Some(text) = line.strip_prefix("//") {
            self.say(&format!("/{text}"));
            return Flow::Go;
        }
        let Some(cmd) = line.strip_prefix('/') else {
            self.say(line);
            return Flow::Go;
        };
        let (name, arg) = match cmd.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (cmd.trim(), ""),
        };
        match name {
            "quit" | "exit" => return Flow::Quit,
            "help" => self.help(),
            "reset" => {
                self.turns.clear();
                self.media.clear();
                self.attached.clear();
                self.sampler = Sampler::new(self.sampling);
                eprintln!("(conversation cleared)");
            }
            _ => self.attach(name, arg),
        }
        Flow::Go
    }

    fn help(&self) {
        let mods = self.model.modalities();
        eprintln!("Type a message and press Enter; the answer streams back. Commands:");
        for (m, _) in &mods {
            eprintln!("  /{m} PATH    attach a {m} file to the next message");
        }
        if mods.is_empty() {
            eprintln!("  (this model takes text only: load a --projector to attach files)");
        }
        eprintln!("  /reset        forget the conversation and the attachments");
        eprintln!("  /help         this list");
        eprintln!("  /quit         end (so does end of input)");
        eprintln!("  //text        send text that starts with '/'");
    }

    /// `/<modality> PATH`.
    fn attach(&mut self, name: &str, arg: &str) {
        let mods = self.model.modalities();
        if !mods.iter().any(|(m, _)| m == name) {
            // A modality the program knows but this model has no projector for is named as such.
            match self.model.adapter(name) {
                Err(e) if self.known.iter().any(|k| k == name) => {
                    eprintln!("error: /{name}: {e:#}")
                }
                _ => eprintln!("error: unknown command /{name}; /help lists the commands"),
            }
            return;
        }
        let path = PathBuf::from(strip_quotes(arg));
        if arg.is_empty() {
            eprintln!("error: /{name} needs a file path: /{name} PATH");
            return;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                eprintln!("error: /{name}: {} is not a file", path.display());
                return;
            }
            Err(e) => {
                eprintln!("error: /{name}: {}: {e}", path.display());
                return;
            }
        }
        self.attached.push(MediaRef::file(name, path.clone()));
        eprintln!(
            "(attached {name} {}; {} file(s) go with your next message)",
            path.display(),
            self.attached.len()
        );
    }

    /// Send a user message with the attachments and stream the answer.
    fn say(&mut self, text: &str) {
        let mods = self.model.modalities();
        if let Some((m, ph)) = mods.iter().find(|(_, ph)| text.contains(ph.as_str())) {
            eprintln!("error: the message holds {ph}, which stands for a {m} file; attach files with /{m} PATH");
            return;
        }
        let mut content = String::new();
        for m in &self.attached {
            let ph = &mods
                .iter()
                .find(|(n, _)| *n == m.modality)
                .expect("attached modalities are loaded")
                .1;
            content.push_str(ph);
            content.push('\n');
        }
        content.push_str(text);
        let mut turns = Vec::with_capacity(self.turns.len() + 2);
        if let Some(s) = &self.system {
            turns.push(Turn {
                role: Role::System,
                text: s.clone(),
            });
        }
        turns.extend(self.turns.iter().cloned());
        turns.push(Turn {
            role: Role::User,
            text: content.clone(),
        });
        let mut media = self.media.clone();
        media.extend(self.attached.iter().cloned());
        let attached = std::mem::take(&mut self.attached);
        match self.answer(&turns, &media) {
            Ok(answer) => {
                self.turns.push(Turn {
                    role: Role::User,
                    text: content,
                });
                // A placeholder in an answer would claim a file on the next turn.
                let mut answer = answer;
                for (_, ph) in &mods {
                    answer = answer.replace(ph.as_str(), "");
                }
                self.turns.push(Turn {
                    role: Role::Assistant,
                    text: answer,
                });
                self.media.extend(attached);
            }
            Err(e) => {
                eprintln!("error: {}", super::one_line(&e));
                if !attached.is_empty() {
                    eprintln!(
                        "(the message and its {} attachment(s) were dropped)",
                        attached.len()
                    );
                }
            }
        }
    }

    /// Stream one answer to stdout; its text.
    fn answer(&mut self, turns: &[Turn], media: &[MediaRef]) -> Result<String> {
        let prompt = self.model.format().render(turns)?.example.input_ids.len();
        let context = self.model.model.llm.cfg.max_position_embeddings;
        if prompt >= context {
            anyhow::bail!("the conversation is {prompt} tokens, this model's context is {context}; /reset to start over");
        }
        let t0 = Instant::now();
        let mut stream = TokenStream::new(&self.model.model.tokenizer);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut printed = false;
        let res = self.model.generate(
            turns,
            media,
            self.max_tokens.min(context - prompt),
            &mut self.sampler,
            |id| {
                if let Some(piece) = stream.push(id)? {
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                    printed = true;
                }
                Ok(())
            },
        );
        if let Ok(Some(rest)) = stream.finish() {
            let _ = out.write_all(rest.as_bytes());
            printed = true;
        }
        if printed {
            let _ = writeln!(out);
            let _ = out.flush();
        }
        let (ids, stats) = res?;
        eprintln!(
            "(prompt {} tokens; answered {} tokens in {:.1}s{})",
            stats.prompt_tokens,
            ids.len(),
            t0.elapsed().as_secs_f64(),
            if stats.stopped_at_eos {
                ""
            } else {
                ", cut at --max-tokens"
            }
        );
        Ok(self.model.model.tokenizer.decode(&ids)?)
    }
}

/// `"my file.wav"` -> `my file.wav`.
fn strip_quotes(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

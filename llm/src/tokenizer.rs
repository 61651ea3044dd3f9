//! Text <-> token ids for every model anymal loads: GGUF `gpt2` (byte-level BPE) and `llama`
//! (SentencePiece) vocabularies read from metadata, and HF `tokenizer.json` files.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::config::opt_usize;
use crate::spm::SpmModel;
use crate::{Error, Result};

// GGUF token types (llama.cpp's llama_token_type).
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

enum Kind {
    /// Byte-level BPE; `byte_of` maps GPT-2's printable stand-ins back to bytes.
    Bpe {
        tk: Box<tokenizers::Tokenizer>,
        byte_of: HashMap<char, u8>,
    },
    Spm(Box<SpmModel>),
    /// An HF tokenizer.json: decoding goes through its own decoder.
    Hf(Box<tokenizers::Tokenizer>),
}

/// A tokenizer with the model's special tokens.
pub struct Tokenizer {
    kind: Kind,
    /// Token strings by id (for specials and display).
    vocab: Vec<String>,
    /// Control and user-defined tokens, longest first, matched whole in the text.
    specials: Vec<(String, u32)>,
    /// Ids never rendered as text when decoding (control tokens).
    control: std::collections::HashSet<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether prompts start with BOS (GGUF `tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    add_space_prefix: bool,
}

fn gguf_strings(path: &Path, md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    match md.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|_| Error::format(path, format!("'{key}' holds a non-string")))
            })
            .collect(),
        Some(_) => Err(Error::format(path, format!("'{key}' is not an array"))),
        None => Err(Error::format(
            path,
            format!("no tokenizer: metadata '{key}' is missing"),
        )),
    }
}

fn gguf_bool(md: &HashMap<String, Value>, key: &str) -> Option<bool> {
    md.get(key).and_then(|v| v.to_bool().ok())
}

/// GPT-2's reversible byte -> printable char table.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).unwrap_or('?')))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(path: &Path, md: &HashMap<String, Value>) -> Result<Self> {
        let model = match md.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(Error::format(
                    path,
                    "no tokenizer: metadata 'tokenizer.ggml.model' is missing",
                ))
            }
        };
        let tokens = gguf_strings(path, md, "tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let mut specials = Vec::new();
        let mut control = std::collections::HashSet::new();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == TYPE_CONTROL {
                control.insert(i as u32);
            }
            if (*ty == TYPE_CONTROL || *ty == TYPE_USER_DEFINED) && !t.is_empty() {
                specials.push((t.clone(), i as u32));
            }
        }
        let bos_id = opt_usize(md, "tokenizer.ggml.bos_token_id").map(|v| v as u32);
        let eos_id = opt_usize(md, "tokenizer.ggml.eos_token_id").map(|v| v as u32);
        let unk = opt_usize(md, "tokenizer.ggml.unknown_token_id").map(|v| v as u32);
        let (kind, add_bos_default, space_default) = match model.as_str() {
            "llama" => {
                let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
                    Some(Value::Array(a)) => a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
                    _ => {
                        return Err(Error::format(
                            path,
                            "no tokenizer: 'tokenizer.ggml.scores' is missing",
                        ))
                    }
                };
                if scores.len() != tokens.len() {
                    return Err(Error::format(
                        path,
                        "tokenizer scores and tokens differ in length",
                    ));
                }
                (
                    Kind::Spm(Box::new(SpmModel::new(tokens.clone(), scores, unk))),
                    true,
                    true,
                )
            }
            "gpt2" => {
                let merges = gguf_strings(path, md, "tokenizer.ggml.merges")?;
                let pre = match md.get("tokenizer.ggml.pre") {
                    Some(Value::String(s)) => s.clone(),
                    _ => "default".to_string(),
                };
                (
                    Self::bpe_kind(path, &tokens, &merges, &pre, &specials)?,
                    false,
                    false,
                )
            }
            other => {
                return Err(Error::in_file(
                    path,
                    Error::Unsupported {
                        what: format!("tokenizer model '{other}' (supported: gpt2, llama)"),
                    },
                ))
            }
        };
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Self {
            kind,
            vocab: tokens,
            specials,
            control,
            bos_id,
            eos_id,
            add_bos: gguf_bool(md, "tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default),
            add_space_prefix: gguf_bool(md, "tokenizer.ggml.add_space_prefix")
                .unwrap_or(space_default),
        })
    }

    fn bpe_kind(
        path: &Path,
        tokens: &[String],
        merges: &[String],
        pre: &str,
        specials: &[(String, u32)],
    ) -> Result<Kind> {
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .filter_map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        // Pre-tokenizers llama.cpp names in `tokenizer.ggml.pre`.
        const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            Ok(Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .into())
        };
        let (pre_tok, ignore_merges): (PreTokenizerWrapper, bool) = match pre {
            "default" | "gpt2" | "gpt-2" => (ByteLevel::new(false, true, true).into(), false),
            "smollm" | "starcoder" => (
                Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
                false,
            ),
            "llama-bpe" | "llama3" | "llama-v3" => {
                (Sequence::new(vec![split(LLAMA3)?, ByteLevel::new(false, true, false).into()]).into(), true)
            }
            "qwen2" => (Sequence::new(vec![split(QWEN2)?, ByteLevel::new(false, true, false).into()]).into(), false),
            other => {
                return Err(Error::in_file(path, Error::Unsupported {
                    what: format!("BPE pre-tokenizer '{other}' (supported: default, gpt2, smollm, starcoder, llama-bpe, qwen2)"),
                }))
            }
        };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| Error::format(path, format!("tokenizer: {e}")))?;
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(pre_tok));
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        tk.add_special_tokens(added)
            .map_err(|e| Error::format(path, format!("tokenizer: {e}")))?;
        let byte_of = bytes_to_unicode()
            .into_iter()
            .map(|(b, c)| (c, b))
            .collect();
        Ok(Kind::Bpe {
            tk: Box::new(tk),
            byte_of,
        })
    }

    /// Loads an HF `tokenizer.json`; BOS/EOS come from `tokenizer_config.json` beside it.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let tk = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::format(path, format!("invalid tokenizer: {e}")))?;
        let vocab_map = tk.get_vocab(true);
        let mut vocab = vec![
            String::new();
            vocab_map
                .values()
                .map(|v| *v as usize + 1)
                .max()
                .unwrap_or(0)
        ];
        for (t, i) in &vocab_map {
            vocab[*i as usize] = t.clone();
        }
        let cfg: serde_json::Value = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        let tok_of = |k: &str| -> Option<u32> {
            let v = cfg.get(k)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            vocab_map.get(s).copied()
        };
        let mut control = std::collections::HashSet::new();
        let mut specials = Vec::new();
        for t in tk.get_added_tokens_decoder().values() {
            if let Some(&id) = vocab_map.get(&t.content) {
                if t.special {
                    control.insert(id);
                }
                specials.push((t.content.clone(), id));
            }
        }
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let bos_id = tok_of("bos_token");
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
            && bos_id.is_some();
        Ok(Self {
            kind: Kind::Hf(Box::new(tk)),
            vocab,
            specials,
            control,
            bos_id,
            eos_id: tok_of("eos_token"),
            add_bos,
            add_space_prefix: false,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(t, _)| t == s)
            .map(|(_, i)| *i)
            .or_else(|| match &self.kind {
                Kind::Spm(m) => m.token_id(s),
                Kind::Bpe { tk, .. } | Kind::Hf(tk) => tk.token_to_id(s),
            })
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(|s| s.as_str())
    }

    /// Encodes `text`. With `parse_special`, control/user-defined token strings in the text
    /// (`<|im_start|>`, `<start_of_turn>`) become their ids; otherwise they are plain text.
    /// `add_bos` prepends BOS when the model uses one.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if add_bos && self.add_bos {
            if let Some(b) = self.bos_id {
                out.push(b);
            }
        }
        let mut prev_special = true;
        for frag in self.split_specials(text, parse_special) {
            match frag {
                Fragment::Special(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    self.encode_plain(t, prev_special, &mut out)?;
                    prev_special = false;
                }
            }
        }
        Ok(out)
    }

    fn encode_plain(&self, text: &str, prev_special: bool, out: &mut Vec<u32>) -> Result<()> {
        match &self.kind {
            Kind::Spm(m) => {
                if self.add_space_prefix && prev_special {
                    m.encode(&format!(" {text}"), out);
                } else {
                    m.encode(text, out);
                }
            }
            Kind::Bpe { tk, .. } | Kind::Hf(tk) => {
                let enc = tk
                    .encode(text, false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                out.extend_from_slice(enc.get_ids());
            }
        }
        Ok(())
    }

    fn split_specials<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            // Earliest occurrence of any special; longest wins at the same position.
            let mut best: Option<(usize, usize, u32)> = None;
            for (s, id) in &self.specials {
                if !parse_special && self.control.contains(id) {
                    continue;
                }
                if let Some(pos) = rest.find(s.as_str()) {
                    if best.is_none_or(|(bp, bl, _)| pos < bp || (pos == bp && s.len() > bl)) {
                        best = Some((pos, s.len(), *id));
                    }
                }
            }
            match best {
                Some((pos, len, id)) => {
                    if pos > 0 {
                        frags.push(Fragment::Text(&rest[..pos]));
                    }
                    frags.push(Fragment::Special(id));
                    rest = &rest[pos + len..];
                }
                None => {
                    frags.push(Fragment::Text(rest));
                    break 'outer;
                }
            }
        }
        frags
    }

    /// The bytes token `id` contributes to the text (control tokens contribute none).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        if self.control.contains(&id) {
            return vec![];
        }
        match &self.kind {
            Kind::Spm(m) => m.piece_bytes(id),
            Kind::Bpe { byte_of, .. } => {
                let t = self
                    .vocab
                    .get(id as usize)
                    .map(|s| s.as_str())
                    .unwrap_or("");
                if self.specials.iter().any(|(_, i)| *i == id) {
                    return t.as_bytes().to_vec();
                }
                t.chars()
                    .map(|c| byte_of.get(&c).copied().unwrap_or(b'?'))
                    .collect()
            }
            Kind::Hf(tk) => tk.decode(&[id], true).unwrap_or_default().into_bytes(),
        }
    }

    /// Decodes ids to text, skipping control tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.kind {
            Kind::Hf(tk) => tk
                .decode(ids, true)
                .map_err(|e| Error::Tokenizer(e.to_string())),
            _ => {
                let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i)).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Special(u32),
}

/// Turns a stream of token ids into text pieces, holding back bytes of an unfinished UTF-8
/// character until it completes.
pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TokenStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self {
            tok,
            ids: vec![],
            emitted: 0,
        }
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(new))
    }

    /// Whatever remains (an incomplete character at the very end is rendered lossily).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.tok.decode(&self.ids)?;
        if text.len() > self.emitted && text.is_char_boundary(self.emitted) {
            let new = text[self.emitted..].to_string();
            self.emitted = text.len();
            return Ok(Some(new));
        }
        Ok(None)
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

//! Instruction data, LLaVA style: a JSON array of records, or JSONL (one record per line, blank
//! lines allowed), each record
//!
//! ```json
//! {"id": "clip-7", "audio": "a.wav", "task": "repeat",
//!  "conversations": [{"from": "human", "value": "<audio>\nRepeat what was said."},
//!                    {"from": "gpt", "value": "Hello world."}]}
//! ```
//!
//! A modality key (`audio`, `image`, ...) holds one path or a list of paths, relative to the data
//! file's folder; the turns hold as many of that modality's placeholder (`<audio>`) as there are
//! paths, and the paths fill the placeholders in text order. Roles: `system` (first only),
//! `human`/`user`, `gpt`/`assistant`; OpenAI-style `"messages": [{"role", "content"}]` is read
//! as well. Other string fields (`task`, ...) are kept for evaluation.
//!
//! A record is read in two steps: serde reads its shape ([`RecordShape`]: the turns, the id),
//! then [`validate`] checks its meaning (turn order, placeholders against files, files on
//! disk). As with [`Manifest`](super::manifest::Manifest), a bad record is skipped and reported
//! as `"<file>: record N (line L): <problem>"` rather than stopping a long run;
//! [`InstructData::check_bad_fraction`] turns too many of them into an error. A file that is
//! not JSON at all, or holds no record, is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::conversation::{MediaRef, Role, Turn};

/// `(modality name, placeholder)` pairs, e.g. `("audio", "<audio>")`: the media keys a record
/// may have and the text that stands for each file in the turns. Text that looks like a
/// placeholder of a modality not listed here is plain text.
#[derive(Debug, Clone, Default)]
pub struct Placeholders(pub Vec<(String, String)>);

impl Placeholders {
    pub fn new<N: Into<String>, P: Into<String>>(pairs: impl IntoIterator<Item = (N, P)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(n, p)| (n.into(), p.into()))
                .collect(),
        )
    }

    /// Every modality of `registry` with its placeholder (`<audio>`, `<image>`, ...).
    pub fn from_registry(registry: &anymal_encoders::ModalityRegistry) -> Self {
        Self(
            registry
                .names()
                .into_iter()
                .filter_map(|n| {
                    let p = registry.get(&n).ok()?.placeholder();
                    Some((n, p))
                })
                .collect(),
        )
    }

    /// The modality index of each placeholder in `text`, in text order. At each position the
    /// longest matching placeholder wins, so `<img>` and `<img2>` can coexist.
    fn scan(&self, text: &str) -> Vec<usize> {
        let mut found = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let best = self
                .0
                .iter()
                .enumerate()
                .filter(|(_, (_, p))| !p.is_empty() && rest.starts_with(p.as_str()))
                .max_by_key(|(_, (_, p))| p.len());
            match best {
                Some((k, (_, p))) => {
                    found.push(k);
                    i += p.len();
                }
                None => i += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        found
    }
}

/// One usable record.
#[derive(Debug, Clone)]
pub struct InstructSample {
    /// The record's `id`, or its record number when it has none.
    pub id: String,
    /// An optional system turn, then user/assistant alternating, ending with an assistant turn.
    pub turns: Vec<Turn>,
    /// The files in the order their placeholders occur across all turns.
    pub media: Vec<MediaRef>,
    /// The record's other string fields (`task`, ...).
    pub fields: BTreeMap<String, String>,
    /// 1-based record number in the file, for messages.
    pub record: usize,
    /// 1-based line number for JSONL; `None` for a JSON array.
    pub line: Option<usize>,
}

/// An instruction data file after validation.
#[derive(Debug, Clone)]
pub struct InstructData {
    pub path: PathBuf,
    pub samples: Vec<InstructSample>,
    /// `"<file>: record N (line L): <problem>"` for every skipped record.
    pub problems: Vec<String>,
}

impl InstructData {
    /// Read and check `path` (a JSON array of records or JSONL). Bad records are skipped into
    /// `problems`; an unreadable file, one that is not JSON / JSONL, or one without any record
    /// is an error.
    pub fn read(path: &Path, placeholders: &Placeholders) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let base = path.parent().unwrap_or(Path::new("."));
        // (record, line, parsed value or why not)
        let mut raw: Vec<(usize, Option<usize>, Result<Value, RecordError>)> = Vec::new();
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            bail!(
                "{}: empty file (expected a JSON array of records or JSONL)",
                path.display()
            );
        }
        if trimmed.starts_with('[') {
            let v: Value = serde_json::from_str(text).map_err(|e| {
                anyhow::anyhow!("{}: not a JSON array of records ({e})", path.display())
            })?;
            let Value::Array(items) = v else {
                bail!("{}: not a JSON array of records", path.display());
            };
            raw.extend(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i + 1, None, Ok(v))),
            );
        } else {
            for (i, l) in text.lines().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                let parsed = serde_json::from_str::<Value>(l)
                    .map_err(|e| RecordError::NotJson(e.to_string()));
                raw.push((raw.len() + 1, Some(i + 1), parsed));
            }
            if raw.iter().all(|(_, _, r)| r.is_err()) {
                let whole = serde_json::from_str::<Value>(text);
                let (_, line, first) = &raw[0];
                match (whole, first) {
                    (Ok(Value::Object(_)), _) => bail!(
                        "{}: a single JSON object; expected a JSON array of records or one record per line (JSONL)",
                        path.display()
                    ),
                    (_, Err(e)) => bail!(
                        "{}: neither a JSON array nor JSONL (line {}: {e})",
                        path.display(),
                        line.unwrap_or(1)
                    ),
                    _ => {}
                }
            }
        }
        if raw.is_empty() {
            bail!("{}: no records", path.display());
        }
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        for (record, line, v) in raw {
            let id = v.as_ref().ok().and_then(record_id);
            match v.and_then(|v| parse_record(&v, base, placeholders)) {
                Ok((turns, media, fields)) => samples.push(InstructSample {
                    id: id.unwrap_or_else(|| record.to_string()),
                    turns,
                    media,
                    fields,
                    record,
                    line,
                }),
                Err(e) => problems.push(format!(
                    "{}: {}: {e}",
                    path.display(),
                    location(record, line, id.as_deref())
                )),
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            samples,
            problems,
        })
    }

    /// Records read in total (usable + skipped).
    pub fn total(&self) -> usize {
        self.samples.len() + self.problems.len()
    }

    /// Mark sample `index` bad after the fact (e.g. its audio failed to decode).
    pub fn reject(&mut self, index: usize, why: &str) {
        if index >= self.samples.len() {
            return;
        }
        let s = self.samples.remove(index);
        self.problems.push(format!(
            "{}: {}: {why}",
            self.path.display(),
            location(s.record, s.line, Some(&s.id))
        ));
    }

    /// Error when nothing is usable or more than `max_bad` of the records are bad; the message
    /// lists the first problems.
    pub fn check_bad_fraction(&self, max_bad: f64) -> Result<()> {
        let total = self.total();
        let bad = self.problems.len();
        if self.samples.is_empty() || (total > 0 && bad as f64 / total as f64 > max_bad) {
            let first: Vec<&str> = self.problems.iter().take(5).map(|s| s.as_str()).collect();
            bail!(
                "{}: {bad} of {total} records are bad (limit {:.0}%): {}",
                self.path.display(),
                max_bad * 100.0,
                if first.is_empty() {
                    "no usable records".to_string()
                } else {
                    first.join("; ")
                }
            );
        }
        Ok(())
    }
}

/// `record 3 (line 5, id "x")`.
fn location(record: usize, line: Option<usize>, id: Option<&str>) -> String {
    let mut extra = Vec::new();
    if let Some(l) = line {
        extra.push(format!("line {l}"));
    }
    if let Some(id) = id {
        extra.push(format!("id {id:?}"));
    }
    if extra.is_empty() {
        format!("record {record}")
    } else {
        format!("record {record} ({})", extra.join(", "))
    }
}

fn record_id(v: &Value) -> Option<String> {
    match v.as_object()?.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Why a record is skipped. Each message names the field, turn or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The line is not JSON at all.
    #[error("not JSON ({0})")]
    NotJson(String),
    /// A field is missing or of the wrong type.
    #[error("{0}")]
    Shape(String),
    /// The turns are out of order, empty, or hold placeholders where none may stand.
    #[error("{0}")]
    Conversation(String),
    /// The files under a modality key do not match the placeholders of the turns.
    #[error("{0}")]
    MediaCount(String),
    /// A media file that is not there (or not a file).
    #[error("{}: {what}", path.display())]
    MediaFile { path: PathBuf, what: String },
}

/// The shape of a record, as serde reads it. Media keys and other fields depend on the
/// modalities known, so they are read from the record's map beside it.
#[derive(Deserialize)]
struct RecordShape {
    #[serde(default)]
    #[allow(dead_code)] // read for its type check; the id is taken from the raw value
    id: Option<RecordId>,
    conversations: Option<Vec<TurnShape>>,
    messages: Option<Vec<TurnShape>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RecordId {
    Text(#[allow(dead_code)] String),
    Number(#[allow(dead_code)] serde_json::Number),
}

/// `{"from": ..., "value": ...}` or OpenAI's `{"role": ..., "content": ...}`.
#[derive(Deserialize)]
struct TurnShape {
    #[serde(alias = "role")]
    from: RoleName,
    #[serde(alias = "content")]
    value: String,
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct RoleName(Role);

impl TryFrom<String> for RoleName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Role::parse(&s).map(RoleName).ok_or_else(|| {
            format!("unknown role {s:?} (expected system, human/user or gpt/assistant)")
        })
    }
}

/// One path or a list of paths under a modality key.
#[derive(Deserialize)]
#[serde(untagged)]
enum MediaPaths {
    One(String),
    Many(Vec<String>),
}

type Parsed = (Vec<Turn>, Vec<MediaRef>, BTreeMap<String, String>);

/// Read a record's shape with serde, then [`validate`] it.
fn parse_record(v: &Value, base: &Path, ph: &Placeholders) -> Result<Parsed, RecordError> {
    // serde would also read a struct from a list of its fields: records are objects.
    let obj = v
        .as_object()
        .ok_or_else(|| RecordError::Shape("not a JSON object".into()))?;
    let shape: RecordShape =
        serde_path_to_error::deserialize(v).map_err(|e| RecordError::Shape(shape_problem(&e)))?;
    validate(shape, obj, base, ph)
}

/// A serde error in a record, said in the record's own terms: `turn 2: "value" is not a
/// string` rather than `conversations[1].value: invalid type: integer`.
fn shape_problem(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_path_to_error::Segment;
    let inner = e.inner().to_string();
    let wrong_type =
        inner.starts_with("invalid type") || inner.contains("did not match any variant");
    let segments: Vec<&Segment> = e.path().iter().collect();
    match segments.as_slice() {
        [Segment::Map { key }] if key == "id" => "\"id\" is not a string".into(),
        [Segment::Map { key }] => format!("\"{key}\" is not a list"),
        [Segment::Map { .. }, Segment::Seq { index }] => {
            let missing = |field: &str| inner.contains(&format!("missing field `{field}`"));
            let what = if missing("from") {
                "no \"from\" (or \"role\")".to_string()
            } else if missing("value") {
                "no \"value\" (or \"content\")".to_string()
            } else {
                "not a JSON object".to_string()
            };
            format!("turn {}: {what}", index + 1)
        }
        [Segment::Map { .. }, Segment::Seq { index }, Segment::Map { key }] if wrong_type => {
            format!("turn {}: \"{key}\" is not a string", index + 1)
        }
        [Segment::Map { .. }, Segment::Seq { index }, _] => format!("turn {}: {inner}", index + 1),
        _ => format!("{}: {inner}", e.path()),
    }
}

/// The meaning of a well-shaped record: turn order, placeholders against files, files on disk.
fn validate(
    shape: RecordShape,
    obj: &Map<String, Value>,
    base: &Path,
    ph: &Placeholders,
) -> Result<Parsed, RecordError> {
    let turns = validate_turns(shape)?;

    // Placeholders: only in user and system turns; their modality indices in text order.
    let mut order = Vec::new();
    for (t, turn) in turns.iter().enumerate() {
        let found = ph.scan(&turn.text);
        if turn.role == Role::Assistant {
            if let Some(&k) = found.first() {
                return Err(RecordError::Conversation(format!(
                    "turn {} ({}): has {}; placeholders may only be in human/user or system turns",
                    t + 1,
                    turn.role.describe(),
                    ph.0[k].1
                )));
            }
        }
        order.extend(found);
    }

    // Paths per modality, counted against the placeholders.
    let mut paths: Vec<Vec<PathBuf>> = Vec::with_capacity(ph.0.len());
    for (k, (name, p)) in ph.0.iter().enumerate() {
        let given = media_paths(obj, name)?;
        let n_ph = order.iter().filter(|&&o| o == k).count();
        let count = |msg: String| Err(RecordError::MediaCount(msg));
        match (given, n_ph) {
            (None, 0) => paths.push(Vec::new()),
            (None, n) => {
                return count(format!(
                    "the turns have {n} {p} but there is no \"{name}\" key"
                ))
            }
            (Some(g), 0) => {
                return count(format!(
                    "\"{name}\" gives {} file(s) but no turn has {p}",
                    g.len()
                ))
            }
            (Some(g), n) if g.len() != n => {
                return count(format!(
                    "\"{name}\" gives {} file(s) but the turns have {n} {p}",
                    g.len()
                ))
            }
            (Some(g), _) => paths.push(g),
        }
    }

    let mut next = vec![0usize; ph.0.len()];
    let mut media = Vec::with_capacity(order.len());
    for k in order {
        let rel = &paths[k][next[k]];
        next[k] += 1;
        let path = base.join(rel);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(RecordError::MediaFile {
                    path,
                    what: "not a file".into(),
                })
            }
            Err(e) => {
                return Err(RecordError::MediaFile {
                    path,
                    what: e.to_string(),
                })
            }
        }
        media.push(MediaRef::file(ph.0[k].0.clone(), path));
    }

    let fields = obj
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "id" | "conversations" | "messages")
                && !ph.0.iter().any(|(n, _)| n == *k)
        })
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect();
    Ok((turns, media, fields))
}

/// The paths under modality key `name`: absent (or null), one string, or a list of strings.
fn media_paths(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<PathBuf>>, RecordError> {
    let shape = |msg: String| RecordError::Shape(msg);
    let paths = match obj.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => match MediaPaths::deserialize(v) {
            Ok(MediaPaths::One(p)) => vec![(format!("\"{name}\""), p)],
            Ok(MediaPaths::Many(list)) if list.is_empty() => {
                return Err(shape(format!("\"{name}\" is an empty list")))
            }
            Ok(MediaPaths::Many(list)) => list
                .into_iter()
                .enumerate()
                .map(|(i, p)| (format!("\"{name}\" item {}", i + 1), p))
                .collect(),
            Err(_) => {
                // A list with something else than a path in it, or neither a path nor a list.
                let bad_item = v
                    .as_array()
                    .and_then(|a| a.iter().position(|x| !x.is_string()));
                return Err(shape(match bad_item {
                    Some(i) => format!("\"{name}\" item {} is not a string", i + 1),
                    None => format!("\"{name}\" must be a path or a list of paths"),
                }));
            }
        },
    };
    paths
        .into_iter()
        .map(|(what, p)| {
            if p.trim().is_empty() {
                Err(shape(format!("{what} is an empty path")))
            } else {
                Ok(PathBuf::from(p))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `conversations` (`from`/`value`) or `messages` (`role`/`content`), checked for order.
fn validate_turns(shape: RecordShape) -> Result<Vec<Turn>, RecordError> {
    let conversation = |msg: String| Err(RecordError::Conversation(msg));
    let (key, list) = match (shape.conversations, shape.messages) {
        (Some(_), Some(_)) => {
            return Err(RecordError::Shape(
                "has both \"conversations\" and \"messages\"; give one".into(),
            ))
        }
        (Some(c), None) => ("conversations", c),
        (None, Some(m)) => ("messages", m),
        (None, None) => {
            return Err(RecordError::Shape(
                "no \"conversations\" (or \"messages\") list".into(),
            ))
        }
    };
    if list.is_empty() {
        return conversation(format!("\"{key}\" is empty"));
    }
    let mut turns = Vec::with_capacity(list.len());
    for (i, t) in list.into_iter().enumerate() {
        let role = t.from.0;
        if t.value.trim().is_empty() {
            return conversation(format!("turn {} ({}): empty text", i + 1, role.describe()));
        }
        turns.push(Turn::new(role, t.value));
    }
    // Order: [system] user assistant user assistant ...
    let start = usize::from(turns[0].role == Role::System);
    for (i, t) in turns.iter().enumerate().skip(start) {
        let expected = if (i - start) % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if t.role == Role::System {
            return conversation(format!("turn {}: a system turn may only come first", i + 1));
        } else if t.role != expected {
            return conversation(format!(
                "turn {}: expected a {} turn, found {}",
                i + 1,
                expected.describe(),
                t.role.describe()
            ));
        }
    }
    match turns.last().map(|t| t.role) {
        Some(Role::Assistant) => Ok(turns),
        Some(Role::System) => conversation("only a system turn; no human/user turn".into()),
        _ => conversation(format!(
            "the last turn (turn {}) is human/user; the conversation must end with a gpt/assistant answer",
            turns.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anymal-instruct-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ph() -> Placeholders {
        Placeholders::new([("audio", "<audio>"), ("image", "<image>")])
    }

    #[test]
    fn good_json_array() -> Result<()> {
        let d = dir("array");
        std::fs::write(d.join("a.wav"), b"x")?;
        let f = d.join("data.json");
        std::fs::write(
            &f,
            r#"[
  {"id": "one", "audio": "a.wav", "task": "repeat", "n": 3,
   "conversations": [{"from": "system", "value": "Be brief."},
                     {"from": "human", "value": "<audio>\nRepeat what was said."},
                     {"from": "gpt", "value": "Hello."}]},
  {"conversations": [{"from": "user", "value": "Say hi."}, {"from": "assistant", "value": "Hi."}]}
]"#,
        )?;
        let data = InstructData::read(&f, &ph())?;
        assert!(data.problems.is_empty(), "{:?}", data.problems);
        assert_eq!(data.samples.len(), 2);
        let s = &data.samples[0];
        assert_eq!((s.id.as_str(), s.record, s.line), ("one", 1, None));
        assert_eq!(s.turns.len(), 3);
        assert_eq!(s.turns[0].role, Role::System);
        assert_eq!(s.turns[1].text, "<audio>\nRepeat what was said.");
        assert_eq!(
            s.turns[2],
            Turn {
                role: Role::Assistant,
                text: "Hello.".into()
            }
        );
        assert_eq!(s.media, vec![MediaRef::file("audio", d.join("a.wav"))]);
        assert_eq!(s.fields.len(), 1, "only string fields: {:?}", s.fields);
        assert_eq!(s.fields["task"], "repeat");
        let s = &data.samples[1];
        assert_eq!((s.id.as_str(), s.record), ("2", 2));
        assert!(s.media.is_empty());
        assert_eq!(s.turns[0].role, Role::User);
        data.check_bad_fraction(0.0)?;
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn good_jsonl_with_blank_lines_and_openai_messages() -> Result<()> {
        let d = dir("jsonl");
        std::fs::write(d.join("a.wav"), b"x")?;
        let f = d.join("data.jsonl");
        std::fs::write(
            &f,
            concat!(
                "{\"id\": \"x\", \"audio\": \"a.wav\", \"conversations\": [{\"from\": \"human\", \"value\": \"<audio> What is said?\"}, {\"from\": \"gpt\", \"value\": \"Hi.\"}]}\n",
                "\n",
                "   \n",
                "{\"id\": 7, \"audio\": [\"a.wav\"], \"messages\": [{\"role\": \"user\", \"content\": \"<audio>\"}, {\"role\": \"assistant\", \"content\": \"Hi.\"}]}\n",
            ),
        )?;
        let data = InstructData::read(&f, &ph())?;
        assert!(data.problems.is_empty(), "{:?}", data.problems);
        assert_eq!(data.samples.len(), 2);
        assert_eq!((data.samples[0].record, data.samples[0].line), (1, Some(1)));
        assert_eq!((data.samples[1].record, data.samples[1].line), (2, Some(4)));
        assert_eq!(data.samples[1].id, "7");
        assert_eq!(data.samples[1].turns[1].role, Role::Assistant);
        assert_eq!(data.samples[1].media.len(), 1);
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn multi_turn_two_modalities_in_text_order() -> Result<()> {
        let d = dir("multi");
        for f in ["p.png", "q.png", "a.wav", "b.wav"] {
            std::fs::write(d.join(f), b"x")?;
        }
        let f = d.join("data.jsonl");
        let rec = serde_json::json!({
            "id": "m",
            "audio": ["a.wav", "b.wav"],
            "image": ["p.png", "q.png"],
            "conversations": [
                {"from": "human", "value": "<image> and then <audio>: same thing?"},
                {"from": "gpt", "value": "No."},
                {"from": "human", "value": "And <audio> with <image>? (<video> is just text here)"},
                {"from": "gpt", "value": "Yes."}
            ]
        });
        std::fs::write(&f, format!("{rec}\n"))?;
        let data = InstructData::read(&f, &ph())?;
        assert!(data.problems.is_empty(), "{:?}", data.problems);
        let got: Vec<(String, PathBuf)> = data.samples[0]
            .media
            .iter()
            .map(|m| (m.modality.clone(), m.path.clone()))
            .collect();
        let want: Vec<(String, PathBuf)> = [
            ("image", "p.png"),
            ("audio", "a.wav"),
            ("audio", "b.wav"),
            ("image", "q.png"),
        ]
        .iter()
        .map(|(m, p)| (m.to_string(), d.join(p)))
        .collect();
        assert_eq!(got, want);
        assert_eq!(data.samples[0].turns.len(), 4);
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn longest_placeholder_wins() {
        let p = Placeholders::new([("img", "<img>"), ("img2", "<img><2>")]);
        assert_eq!(p.scan("<img><2> x <img> ü <img><2><img>"), vec![1, 0, 1, 0]);
    }

    #[test]
    fn each_failure_is_reported_with_record_and_line() -> Result<()> {
        let d = dir("bad");
        std::fs::write(d.join("a.wav"), b"x")?;
        std::fs::write(d.join("p.png"), b"x")?;
        let turns = |u: &str, a: &str| serde_json::json!([{"from": "human", "value": u}, {"from": "gpt", "value": a}]);
        let recs: Vec<(String, &str)> = vec![
            ("not json".into(), "not JSON"),
            ("[1]".into(), "not a JSON object"),
            (serde_json::json!({"id": "a"}).to_string(), "no \"conversations\" (or \"messages\") list"),
            (serde_json::json!({"conversations": []}).to_string(), "\"conversations\" is empty"),
            (serde_json::json!({"conversations": "hi"}).to_string(), "\"conversations\" is not a list"),
            (
                serde_json::json!({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]}).to_string(),
                "turn 1: \"value\" is not a string",
            ),
            (
                serde_json::json!({"conversations": [{"from": "bot", "value": "x"}]}).to_string(),
                "turn 1: unknown role \"bot\"",
            ),
            (
                serde_json::json!({"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}).to_string(),
                "turn 1: expected a human/user turn, found gpt/assistant",
            ),
            (
                serde_json::json!({"conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}]}).to_string(),
                "turn 2: expected a gpt/assistant turn, found human/user",
            ),
            (
                serde_json::json!({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}, {"from": "system", "value": "z"}]}).to_string(),
                "turn 3: a system turn may only come first",
            ),
            (
                serde_json::json!({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "x"}]}).to_string(),
                "the last turn (turn 2) is human/user",
            ),
            (
                serde_json::json!({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "  "}]}).to_string(),
                "turn 2 (gpt/assistant): empty text",
            ),
            (
                serde_json::json!({"audio": ["a.wav", "a.wav"], "conversations": turns("<audio> hi", "x")}).to_string(),
                "\"audio\" gives 2 file(s) but the turns have 1 <audio>",
            ),
            (
                serde_json::json!({"conversations": turns("<audio> hi <audio>", "x")}).to_string(),
                "the turns have 2 <audio> but there is no \"audio\" key",
            ),
            (
                serde_json::json!({"image": "p.png", "audio": "a.wav", "conversations": turns("<audio> hi", "x")}).to_string(),
                "\"image\" gives 1 file(s) but no turn has <image>",
            ),
            (
                serde_json::json!({"audio": "a.wav", "conversations": turns("hi", "<audio> x")}).to_string(),
                "turn 2 (gpt/assistant): has <audio>",
            ),
            (
                serde_json::json!({"audio": "missing.wav", "conversations": turns("<audio>", "x")}).to_string(),
                "missing.wav",
            ),
            (
                serde_json::json!({"audio": 5, "conversations": turns("<audio>", "x")}).to_string(),
                "\"audio\" must be a path or a list of paths",
            ),
            (
                serde_json::json!({"audio": ["a.wav", 1], "conversations": turns("<audio><audio>", "x")}).to_string(),
                "\"audio\" item 2 is not a string",
            ),
            (
                serde_json::json!({"id": "both", "messages": [], "conversations": turns("a", "b")}).to_string(),
                "has both \"conversations\" and \"messages\"",
            ),
        ];
        let mut text =
            serde_json::json!({"audio": "a.wav", "conversations": turns("<audio> ok", "ok")})
                .to_string();
        text.push('\n');
        for (r, _) in &recs {
            text.push_str(r);
            text.push('\n');
        }
        let f = d.join("bad.jsonl");
        std::fs::write(&f, text)?;
        let data = InstructData::read(&f, &ph())?;
        assert_eq!(data.samples.len(), 1);
        assert_eq!(data.problems.len(), recs.len(), "{:#?}", data.problems);
        for (i, ((_, want), got)) in recs.iter().zip(&data.problems).enumerate() {
            let n = i + 2;
            assert!(
                got.starts_with(&format!("{}: record {n} (line {n}", f.display())),
                "{got}"
            );
            assert!(got.contains(want), "record {n}: want {want:?} in {got}");
        }
        assert!(data.problems.last().unwrap().contains("id \"both\""));
        let e = data.check_bad_fraction(0.5).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{} of {} records are bad",
                recs.len(),
                recs.len() + 1
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn unreadable_files_are_errors() -> Result<()> {
        let d = dir("files");
        let cases = [
            ("empty.json", "  \n\n", "empty file"),
            (
                "prose.txt",
                "hello there\nsecond line\n",
                "neither a JSON array nor JSONL (line 1",
            ),
            (
                "broken.json",
                "[{\"id\": 1},",
                "not a JSON array of records",
            ),
            ("none.json", "[]", "no records"),
            (
                "object.json",
                "{\n  \"id\": \"x\"\n}\n",
                "a single JSON object",
            ),
        ];
        for (name, text, want) in cases {
            let f = d.join(name);
            std::fs::write(&f, text)?;
            let e = InstructData::read(&f, &ph()).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains(&f.display().to_string()),
                "{name}: {e}"
            );
        }
        let e = InstructData::read(&d.join("nope.json"), &ph())
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    #[test]
    fn paths_resolve_against_the_data_files_folder() -> Result<()> {
        let d = dir("paths");
        std::fs::create_dir_all(d.join("media"))?;
        std::fs::create_dir_all(d.join("sets"))?;
        std::fs::write(d.join("media/a.wav"), b"x")?;
        let abs = d.join("media/a.wav");
        let f = d.join("sets/data.json");
        let recs = serde_json::json!([
            {"audio": "../media/a.wav", "conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "x"}]},
            {"audio": abs.to_string_lossy(), "conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "x"}]},
            {"audio": "media/a.wav", "conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "x"}]}
        ]);
        std::fs::write(&f, recs.to_string())?;
        let mut data = InstructData::read(&f, &ph())?;
        assert_eq!(data.samples.len(), 2);
        assert_eq!(data.samples[0].media[0].path, d.join("sets/../media/a.wav"));
        assert!(data.samples[0].media[0].path.is_file());
        assert_eq!(data.samples[1].media[0].path, abs);
        assert_eq!(data.problems.len(), 1);
        let want = format!(
            "{}: record 3: {}",
            f.display(),
            d.join("sets/media/a.wav").display()
        );
        assert!(data.problems[0].starts_with(&want), "{}", data.problems[0]);
        data.reject(1, "cannot decode");
        assert_eq!(data.samples.len(), 1);
        assert_eq!(
            data.problems[1],
            format!("{}: record 2 (id \"2\"): cannot decode", f.display())
        );
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }
}

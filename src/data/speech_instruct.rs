//! Instruction data from the speech corpus ([`super::speech`]): for every clip of the
//! `train` / `valid` / `test` manifests that `anymal data speech` writes, one LLaVA-style record
//! per task, answers derived from the clip's exact transcript, in `instruct-{split}.json`. The
//! corpus's fixed split is kept: a clip and all its questions stay in one split.
//!
//! Tasks (the record's `task` field):
//! - `repeat`: "Repeat what was said." -> the spoken transcript ([`spoken`]).
//! - `password`: "Does the speaker ask for a password?" -> `Yes` / `No` ([`asks_for_password`]).
//! - `digits`: "How many digits are mentioned?" -> `0`, `1`, ... ([`count_digits`]).
//! - `press`: "Does the speaker tell you to press or dial something?" -> `Yes` / `No`
//!   ([`tells_to_press`]).
//!
//! A few train clips (chosen by a hash of the clip name) also get a two-turn record: `repeat`,
//! then one of the other questions as a follow-up about the same audio.
//!
//! The corpus is telephony prompts, so the yes/no answers are far from balanced (about 1% of
//! clips ask for a password, 12% say press/dial) and most clips mention no digit; the summary
//! printed by `anymal data speech-instruct` gives the exact distributions.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use anymal_util::rng::fnv1a;
use serde_json::{json, Value};

use super::instruct::{InstructData, Placeholders};
use super::manifest::Manifest;

/// The single-turn tasks, in the order their records are written for each clip.
pub const TASKS: [&str; 4] = ["repeat", "password", "digits", "press"];

/// The modality key and its placeholder.
const AUDIO: &str = "audio";
const PLACEHOLDER: &str = "<audio>";

/// The user's question for `task`.
pub fn question(task: &str) -> &'static str {
    match task {
        "repeat" => "Repeat what was said.",
        "password" => "Does the speaker ask for a password? Answer yes or no.",
        "digits" => "How many digits are mentioned? Answer with a number.",
        "press" => "Does the speaker tell you to press or dial something? Answer yes or no.",
        _ => "",
    }
}

/// The answer to `task` for a clip whose transcript is `transcript`.
pub fn answer(task: &str, transcript: &str) -> String {
    let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_string();
    match task {
        "repeat" => spoken(transcript),
        "password" => yes_no(asks_for_password(transcript)),
        "digits" => count_digits(transcript).to_string(),
        "press" => yes_no(tells_to_press(transcript)),
        _ => String::new(),
    }
}

/// What is actually said: the transcript without its notes in brackets (`at [@]`,
/// `IAX (note: does not say "2")`, `<beep ascending>`, `(simple tone sound plays)`), with runs
/// of white space made one space. Empty for a clip that is only a description.
pub fn spoken(transcript: &str) -> String {
    let mut out = String::with_capacity(transcript.len());
    let mut close: Option<char> = None;
    for c in transcript.chars() {
        match close {
            Some(end) if c == end => close = None,
            Some(_) => {}
            None => match c {
                '[' => close = Some(']'),
                '(' => close = Some(')'),
                '<' => close = Some('>'),
                _ => out.push(c),
            },
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Lower-case words of `text`: runs of letters, digits, `'` and `-` (`o'clock`, `re-enter`,
/// `speed-dial` and `h` / `323` from `H.323` are each one word), trimmed of `'` and `-`.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

const PASSWORD_WORDS: [&str; 4] = ["password", "passwords", "passcode", "pin"];

/// Rule: the speaker asks for a password when one sentence (split at `.`, `!`, `?`, `;`) holds
/// the request word `enter` or `re-enter` (not `entered`: a report, not a request) and a
/// password word: `password(s)`, `passcode`, `pin`, or `personal identification number(s)`.
/// In the corpus: "Please enter your password followed by the pound key." (agent-pass,
/// auth-incorrect, vm-newpassword, vm-reenterpassword), "Please enter the conference pin
/// number.", "Please enter your personal identification number ..." -> Yes; "Your passwords
/// have been changed.", "That is not a valid password.", the lone word "password", and the demo
/// text that names "password 4242" in a sentence without a request -> No.
pub fn asks_for_password(transcript: &str) -> bool {
    spoken(transcript)
        .split(['.', '!', '?', ';'])
        .map(words)
        .any(|w| {
            let request = w.iter().any(|x| x == "enter" || x == "re-enter");
            let password = w.iter().any(|x| PASSWORD_WORDS.contains(&x.as_str()))
                || w.windows(3).any(|t| {
                    t[0] == "personal"
                        && t[1] == "identification"
                        && (t[2] == "number" || t[2] == "numbers")
                });
            request && password
        })
}

const DIGIT_WORDS: [&str; 11] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "niner",
];

/// Rule: every numeral character `0`-`9` counts one (`500` is three digits, `H.323` three,
/// `28.8` three, `3D` one), and every digit word counts one: `zero` ... `nine` and the radio
/// `niner`, whatever its use ("one other participant" counts; parts of hyphenated words too:
/// `twenty-one` counts one). `oh` counts only when it is clearly the digit: alone
/// (the `digits/oh` clip) or next to another digit word or numeral ("five oh two").
/// Number words that are not digits (`ten`, `twenty`, `hundred`, `first`) do not count.
pub fn count_digits(transcript: &str) -> usize {
    let text = spoken(transcript);
    let numerals = text.chars().filter(|c| c.is_ascii_digit()).count();
    // Words split at hyphens too, numerals kept as words to find `oh`'s neighbours.
    let w: Vec<String> = words(&text)
        .iter()
        .flat_map(|x| x.split('-').map(str::to_string).collect::<Vec<_>>())
        .filter(|x| !x.is_empty())
        .collect();
    let is_digit = |x: &str| DIGIT_WORDS.contains(&x) || x.chars().any(|c| c.is_ascii_digit());
    let mut n = numerals;
    for (i, x) in w.iter().enumerate() {
        if DIGIT_WORDS.contains(&x.as_str()) {
            n += 1;
        } else if x == "oh" {
            let prev = i > 0 && is_digit(&w[i - 1]);
            let next = w.get(i + 1).is_some_and(|y| is_digit(y));
            if w.len() == 1 || prev || next {
                n += 1;
            }
        }
    }
    n
}

/// Rule: the word `press` or `dial` appears ("press 1 to ...", "Press star for help", "If you
/// dial 1234", "Please check the number and dial again", the lone prompt "press"). Other forms
/// (`pressing`, `dialed`) and the name `speed-dial` do not count.
pub fn tells_to_press(transcript: &str) -> bool {
    words(&spoken(transcript))
        .iter()
        .any(|w| w == "press" || w == "dial")
}

/// Whether a train clip also gets a two-turn record, and which follow-up it asks: about one
/// clip in 16, fixed by the clip name.
fn follow_up(name: &str) -> Option<&'static str> {
    let h = fnv1a(format!("{name}#two-turn").as_bytes());
    h.is_multiple_of(16)
        .then(|| ["digits", "password", "press"][((h / 16) % 3) as usize])
}

/// Samples and answer counts per task for one split.
#[derive(Debug, Default, Clone)]
pub struct SplitSummary {
    pub clips: usize,
    pub samples: usize,
    /// task (`repeat`, ..., `repeat+digits` for two-turn records) -> final answer -> count.
    pub answers: BTreeMap<String, BTreeMap<String, usize>>,
}

/// What [`build`] wrote.
#[derive(Debug, Default, Clone)]
pub struct SpeechInstructReport {
    /// `train`, `valid`, `test` in that order.
    pub splits: Vec<(&'static str, SplitSummary)>,
    /// Clips left out (only a description, or a manifest problem) and why.
    pub skipped: Vec<String>,
    /// Whether the speech manifests had to be built first.
    pub built_manifests: bool,
}

impl SpeechInstructReport {
    /// One line per split and task: sample count and answer distribution.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (split, s) in &self.splits {
            lines.push(format!("{split}: {} clips, {} samples", s.clips, s.samples));
            for (task, answers) in &s.answers {
                let n: usize = answers.values().sum();
                let dist = if task == "repeat" {
                    format!("{} distinct transcripts", answers.len())
                } else {
                    let mut a: Vec<(&String, &usize)> = answers.iter().collect();
                    a.sort_by_key(|(k, _)| {
                        (k.parse::<usize>().unwrap_or(usize::MAX), k.to_string())
                    });
                    a.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                lines.push(format!("  {task:<16} {n:>4}: {dist}"));
            }
        }
        lines
    }
}

/// One record: `turns` are (question, answer) pairs about the same clip, the first question
/// carries the placeholder.
fn record(id: String, audio: &str, clip: &str, task: String, turns: &[(&str, String)]) -> Value {
    let mut conv = Vec::new();
    for (i, (q, a)) in turns.iter().enumerate() {
        let q = if i == 0 {
            format!("{PLACEHOLDER}\n{q}")
        } else {
            q.to_string()
        };
        conv.push(json!({"from": "human", "value": q}));
        conv.push(json!({"from": "gpt", "value": a}));
    }
    json!({"id": id, AUDIO: audio, "conversations": conv, "task": task, "clip": clip})
}

/// Read the speech manifests in `speech_dir` (building them from the corpus at `root` first
/// when one is missing, as `anymal data speech` does) and write `instruct-train.json`,
/// `instruct-valid.json`, `instruct-test.json` into `out`, audio paths relative to `out` (or
/// absolute when `out` shares nothing with them below the root).
/// Each file is read back with [`InstructData::read`] and must have no problem.
pub fn build(root: &Path, speech_dir: &Path, out: &Path) -> Result<SpeechInstructReport> {
    let splits = ["train", "valid", "test"];
    let mut report = SpeechInstructReport::default();
    if splits
        .iter()
        .any(|s| !speech_dir.join(format!("{s}.jsonl")).is_file())
    {
        super::speech::write_manifests(root, speech_dir)?;
        report.built_manifests = true;
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let out_abs = anymal_util::fs::absolute_normalized(out)?;
    let placeholders = Placeholders::new([(AUDIO, PLACEHOLDER)]);
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for split in splits {
        let mpath = speech_dir.join(format!("{split}.jsonl"));
        let man = Manifest::read(&mpath, AUDIO)?;
        man.check_bad_fraction(0.1)?;
        report.skipped.extend(man.problems.iter().cloned());
        let mut sum = SplitSummary::default();
        let mut records = Vec::new();
        for item in &man.items {
            let name = match item.fields.get("id") {
                Some(id) => id.clone(),
                None => item
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default(),
            };
            if let Some(other) = seen.insert(name.clone(), split) {
                bail!(
                    "{}:{}: clip {name} is also in the {other} manifest",
                    mpath.display(),
                    item.line
                );
            }
            if spoken(&item.text).is_empty() {
                report.skipped.push(format!(
                    "{}:{}: {name}: a description, not speech: {}",
                    mpath.display(),
                    item.line,
                    item.text
                ));
                continue;
            }
            let audio = anymal_util::fs::relative_to(
                &anymal_util::fs::absolute_normalized(&item.path)?,
                &out_abs,
            );
            let audio = audio.to_string_lossy();
            sum.clips += 1;
            for task in TASKS {
                let a = answer(task, &item.text);
                *sum.answers
                    .entry(task.into())
                    .or_default()
                    .entry(a.clone())
                    .or_default() += 1;
                records.push(record(
                    format!("{name}#{task}"),
                    &audio,
                    &name,
                    task.into(),
                    &[(question(task), a)],
                ));
            }
            if split == "train" {
                if let Some(next) = follow_up(&name) {
                    let task = format!("repeat+{next}");
                    let a = answer(next, &item.text);
                    *sum.answers
                        .entry(task.clone())
                        .or_default()
                        .entry(a.clone())
                        .or_default() += 1;
                    records.push(record(
                        format!("{name}#{task}"),
                        &audio,
                        &name,
                        task,
                        &[
                            (question("repeat"), answer("repeat", &item.text)),
                            (question(next), a),
                        ],
                    ));
                }
            }
        }
        sum.samples = records.len();
        // A JSON array with one record per line: valid JSON that still diffs and greps well.
        let mut text = String::from("[\n");
        for (i, r) in records.iter().enumerate() {
            text.push_str(&r.to_string());
            text.push_str(if i + 1 < records.len() { ",\n" } else { "\n" });
        }
        text.push_str("]\n");
        let file = out.join(format!("instruct-{split}.json"));
        anymal_util::fs::write_atomic(&file, text.as_bytes())?;
        let back = InstructData::read(&file, &placeholders)?;
        if !back.problems.is_empty() || back.samples.len() != records.len() {
            bail!(
                "{}: wrote {} records but {} read back: {}",
                file.display(),
                records.len(),
                back.samples.len(),
                back.problems.join("; ")
            );
        }
        report.splits.push((split, sum));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoken_drops_notes_and_spaces() {
        assert_eq!(spoken("at [@]"), "at");
        assert_eq!(spoken("IAX (note: does not say \"2\")"), "IAX");
        assert_eq!(spoken("<beep ascending>"), "");
        assert_eq!(
            spoken("That agent is on.  Please enter your number. (simple tone sound plays)"),
            "That agent is on. Please enter your number."
        );
        assert_eq!(spoken("Hello world."), "Hello world.");
    }

    #[test]
    fn password_rule() {
        for yes in [
            "Please enter your password followed by the pound key.",
            "Password incorrect.  Please enter your password followed by the pound key.",
            "Please re-enter your password followed by the pound key.",
            "Please enter the conference pin number.",
            "Please enter your personal identification number followed by the pound, or hash key.",
        ] {
            assert!(asks_for_password(yes), "{yes}");
            assert_eq!(answer("password", yes), "Yes");
        }
        for no in [
            "Your passwords have been changed.",
            "That is not a valid password.  Please try again.",
            "password",
            "The passwords you entered and re-entered did not match.  Please try again.",
            "You have entered too many invalid personal identification numbers.",
            "The sample configuration also has a single user with extension 1234 and password 4242.  To check voice mail dial 8500 to enter the voicemail system.",
            "Please enter your agent number followed by the pound key.",
            "Spinning.",
        ] {
            assert!(!asks_for_password(no), "{no}");
            assert_eq!(answer("password", no), "No");
        }
    }

    #[test]
    fn digit_rule() {
        let cases = [
            ("zero", 1),
            ("oh", 1),
            ("Comedian Mail.  Mailbox?", 0),
            ("Press 1 to list users, 2 to kick", 2),
            ("dial 500 or 1234", 7),
            ("a 28.8 kilobit modem", 3),
            ("3D audio enabled", 1),
            ("H.323", 3),
            ("IAX (note: does not say \"2\")", 0),
            ("There is currently one other participant", 1),
            ("Press one to listen to ...", 1),
            ("ten twenty hundred first", 0),
            ("five oh two", 3),
            ("Oh, hello.", 0),
            ("niner", 1),
            ("twenty-one", 1),
            ("someone", 0),
            ("folder 5", 1),
            ("4 or 6 to decrease or increase", 2),
        ];
        for (t, n) in cases {
            assert_eq!(count_digits(t), n, "{t}");
            assert_eq!(answer("digits", t), n.to_string());
        }
    }

    #[test]
    fn press_rule() {
        for yes in [
            "press 0 for help",
            "Please check the number and dial again.",
            "press",
            "If this is correct, press...",
            "Press star for help or pound to exit.",
        ] {
            assert!(tells_to_press(yes), "{yes}");
        }
        for no in [
            "Speed-dial.",
            "The number you have dialed is not in service.",
            "by pressing the pound key",
            "Hello world.",
        ] {
            assert!(!tells_to_press(no), "{no}");
        }
    }

    #[test]
    fn repeat_is_the_spoken_transcript() {
        assert_eq!(answer("repeat", "dot [.]"), "dot");
        assert_eq!(answer("repeat", "Thank you."), "Thank you.");
    }

    #[test]
    fn some_clips_get_a_follow_up() {
        let names: Vec<String> = (0..1600).map(|i| format!("clip-{i}")).collect();
        let n = names.iter().filter(|n| follow_up(n).is_some()).count();
        assert!((60..150).contains(&n), "{n}");
        for t in ["digits", "password", "press"] {
            assert!(names.iter().any(|n| follow_up(n) == Some(t)));
        }
    }
}

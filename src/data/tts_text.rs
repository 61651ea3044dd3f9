//! The text of the synthesized speech corpus (`anymal data tts-text`): one utterance a line,
//! mixed from three sources.
//!
//! - A seeded generator of phone-menu prompts ("Press 3 to hear your messages", extensions,
//!   dates, times, amounts, spelled letters, digit strings, ordinals, short questions): the
//!   domain of the real corpus, with far more wording than its 450 training clips.
//! - General English sentences from Debian's fortune files (`fortunes-min`, `fortunes`): so the
//!   projector also hears words outside the phone domain.
//! - The speech corpus's *train* transcripts, a few times each (each copy gets its own voice).
//!
//! Held-out text never enters: every candidate whose normalized form
//! ([`crate::eval::wer::normalize_text`]) equals a valid or test transcript's is dropped, so a
//! model trained on the synthesized clips has not heard the sentences it is scored on.
//!
//! Number style follows the corpus transcripts: keys and menu choices as digits ("press 3"),
//! counts, ordinals, dates, times and money in words ("one other participant", "first").

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_util::rng::SplitMix64;

use crate::eval::wer::normalize_text;

/// Where the fortune files live on Debian.
pub const FORTUNE_DIR: &str = "/usr/share/games/fortunes";

/// Options for [`build`].
#[derive(Debug, Clone)]
pub struct TextOptions {
    pub lines: usize,
    pub seed: u64,
    /// The speech manifests' folder (`train.jsonl`, `valid.jsonl`, `test.jsonl`).
    pub speech: PathBuf,
    pub fortunes: PathBuf,
}

/// What [`build`] produced.
#[derive(Debug, Clone, Default)]
pub struct TextReport {
    pub lines: Vec<String>,
    pub generated: usize,
    pub fortunes: usize,
    /// Usable fortune sentences found (before the mix took its share).
    pub fortunes_available: usize,
    /// Why the fortunes were not used, when they were not.
    pub fortunes_missing: Option<String>,
    pub train: usize,
    /// Candidates dropped because they match a valid/test transcript.
    pub held_out_dropped: usize,
}

/// Words of a number 0..=999_999 ("twenty one", "three hundred and five" without the "and",
/// as the corpus writes them).
pub fn number_words(n: u64) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    fn below_1000(n: u64, out: &mut Vec<String>) {
        if n >= 100 {
            out.push(format!("{} hundred", ONES[(n / 100) as usize]));
        }
        let r = n % 100;
        if r == 0 {
            return;
        }
        if r < 20 {
            out.push(ONES[r as usize].into());
        } else if r.is_multiple_of(10) {
            out.push(TENS[(r / 10) as usize].into());
        } else {
            out.push(format!(
                "{} {}",
                TENS[(r / 10) as usize],
                ONES[(r % 10) as usize]
            ));
        }
    }
    if n == 0 {
        return "zero".into();
    }
    let mut out = Vec::new();
    if n >= 1000 {
        below_1000(n / 1000 % 1000, &mut out);
        out.push("thousand".into());
    }
    below_1000(n % 1000, &mut out);
    out.join(" ")
}

/// Ordinal words ("first", "twenty third").
pub fn ordinal_words(n: u64) -> String {
    let w = number_words(n);
    let (head, last) = match w.rsplit_once(' ') {
        Some((h, l)) => (format!("{h} "), l.to_string()),
        None => (String::new(), w),
    };
    let last = match last.as_str() {
        "one" => "first".into(),
        "two" => "second".into(),
        "three" => "third".into(),
        "five" => "fifth".into(),
        "eight" => "eighth".into(),
        "nine" => "ninth".into(),
        "twelve" => "twelfth".into(),
        l if l.ends_with('y') => format!("{}ieth", &l[..l.len() - 1]),
        l => format!("{l}th"),
    };
    format!("{head}{last}")
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const SERVICES: &[&str] = &[
    "billing",
    "sales",
    "technical support",
    "customer service",
    "accounts",
    "the front desk",
    "reservations",
    "shipping",
    "returns",
    "the pharmacy",
    "claims",
    "the help desk",
    "our sales team",
    "an operator",
    "a representative",
    "human resources",
    "the service department",
    "appointments",
    "the lab",
    "payroll",
    "the parts department",
    "new accounts",
    "our store hours",
    "directions",
    "the dial by name directory",
    "your account balance",
    "recent transactions",
    "lost or stolen cards",
];
const ACTIONS: &[&str] = &[
    "hear your messages",
    "record a new greeting",
    "change your password",
    "repeat this menu",
    "return to the main menu",
    "leave a message",
    "speak with an operator",
    "check your balance",
    "make a payment",
    "cancel your order",
    "confirm your appointment",
    "reschedule",
    "hear these options again",
    "save this message",
    "delete this message",
    "forward this message",
    "skip to the next message",
    "replay the previous message",
    "set up call forwarding",
    "turn off do not disturb",
    "record your name",
    "change your language",
    "report an outage",
    "track a package",
    "update your address",
    "end this call",
    "join the conference",
    "mute your line",
    "hear the date and time",
    "transfer this call",
];
const THINGS: &[&str] = &[
    "message",
    "call",
    "order",
    "payment",
    "appointment",
    "reservation",
    "package",
    "request",
    "recording",
    "greeting",
    "account",
    "voicemail",
    "ticket",
    "claim",
    "delivery",
];
const PEOPLE: &[&str] = &[
    "John",
    "Maria",
    "Doctor Patel",
    "the manager",
    "Sarah",
    "Mister Lee",
    "your agent",
    "David",
    "Emily",
    "the caller",
    "Chen",
    "Fatima",
    "Robert",
    "Olivia",
    "the driver",
];
const PLACES: &[&str] = &[
    "Boston",
    "Denver",
    "the north branch",
    "Chicago",
    "Springfield",
    "the main office",
    "Seattle",
    "downtown",
    "the airport",
    "Portland",
    "Atlanta",
    "the west campus",
];
const ADJ: &[&str] = &[
    "new", "saved", "urgent", "unheard", "old", "pending", "missed", "open", "unread",
];
const KEYS: &[&str] = &["pound", "star", "the pound key", "the star key", "hash"];
const QUESTIONS: &[&str] = &[
    "Is this correct?",
    "Would you like to try again?",
    "Are you still there?",
    "Did you mean {p}?",
    "Do you want to save your changes?",
    "Would you like to hear more options?",
    "Can I help you with anything else?",
    "Was this call helpful?",
    "Shall I transfer you to {s}?",
    "Would you like a text message confirmation?",
    "Is there anything else I can do for you today?",
    "Do you want to hear that again?",
];
const SHORT: &[&str] = &[
    "Goodbye.",
    "Thank you.",
    "Please hold.",
    "One moment please.",
    "Please try again later.",
    "Invalid entry.",
    "That is not a valid option.",
    "Your call is important to us.",
    "Please stay on the line.",
    "Sorry, I didn't get that.",
    "Please speak after the tone.",
    "Recording stopped.",
    "Your changes have been saved.",
    "The party you are calling is not available.",
    "All of our agents are busy.",
    "This call may be recorded for quality purposes.",
    "Your request has been received.",
    "Welcome back.",
    "Please listen carefully, as our options have changed.",
    "The number you have dialed is not in service.",
    "You have been disconnected.",
    "Your session has expired.",
    "Access denied.",
    "Transfer complete.",
    "Please wait while I connect your call.",
];
const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn pick<'a>(rng: &mut SplitMix64, xs: &[&'a str]) -> &'a str {
    xs[(rng.next_u64() % xs.len() as u64) as usize]
}

/// "4 0 7 2": a digit string read digit by digit (spaces make every engine read digits).
fn digits(rng: &mut SplitMix64, lo: u32, hi: u32) -> String {
    let n = rng.range(lo, hi);
    (0..n)
        .map(|_| rng.range(0, 9).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn spelled(rng: &mut SplitMix64, lo: u32, hi: u32) -> String {
    let n = rng.range(lo, hi);
    let l = LETTERS.as_bytes();
    (0..n)
        .map(|_| (l[rng.range(0, 25) as usize] as char).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn time_words(rng: &mut SplitMix64) -> String {
    let h = rng.range(1, 12) as u64;
    let m = [0, 5, 10, 15, 20, 30, 35, 40, 45, 50, 55][rng.range(0, 10) as usize];
    let ampm = if rng.next_f64() < 0.5 { "a m" } else { "p m" };
    match m {
        0 if rng.next_f64() < 0.5 => format!("{} o'clock", number_words(h)),
        0 => format!("{} {ampm}", number_words(h)),
        5 => format!("{} oh five {ampm}", number_words(h)),
        m => format!("{} {} {ampm}", number_words(h), number_words(m)),
    }
}

fn date_words(rng: &mut SplitMix64) -> String {
    let month = pick(rng, &MONTHS);
    let day = ordinal_words(rng.range(1, 28) as u64);
    match rng.range(0, 2) {
        0 => format!("{month} {day}"),
        1 => format!("{}, {month} {day}", pick(rng, &DAYS)),
        _ => format!("the {day} of {month}"),
    }
}

fn money_words(rng: &mut SplitMix64) -> String {
    let d = match rng.range(0, 2) {
        0 => rng.range(1, 99),
        1 => rng.range(100, 999),
        _ => rng.range(1000, 9999),
    } as u64;
    let unit = if d == 1 { "dollar" } else { "dollars" };
    if rng.next_f64() < 0.4 {
        format!("{} {unit}", number_words(d))
    } else {
        let c = rng.range(1, 99) as u64;
        let cu = if c == 1 { "cent" } else { "cents" };
        format!("{} {unit} and {} {cu}", number_words(d), number_words(c))
    }
}

fn count_phrase(rng: &mut SplitMix64) -> String {
    let n = [0u64, 1, 1, 2, 3, 4, 5, 7, 9, 12, 15, 20, 31][rng.range(0, 12) as usize];
    let thing = pick(rng, THINGS);
    let adj = pick(rng, ADJ);
    match n {
        0 => format!("no {adj} {thing}s"),
        1 => format!("one {adj} {thing}"),
        n => format!("{} {adj} {thing}s", number_words(n)),
    }
}

/// One generated prompt.
pub fn generate_prompt(rng: &mut SplitMix64) -> String {
    let key = |rng: &mut SplitMix64| rng.range(0, 9).to_string();
    let t = rng.range(0, 29);
    let s = match t {
        0 => format!("Press {} to {}.", key(rng), pick(rng, ACTIONS)),
        1 => format!("For {}, press {}.", pick(rng, SERVICES), key(rng)),
        2 => format!(
            "To {}, press {}. To {}, press {}.",
            pick(rng, ACTIONS),
            key(rng),
            pick(rng, ACTIONS),
            key(rng)
        ),
        3 => format!("You have {}.", count_phrase(rng)),
        4 => format!(
            "Please enter your {} digit {}, followed by {}.",
            number_words(rng.range(4, 10) as u64),
            pick(
                rng,
                &[
                    "account number",
                    "PIN",
                    "extension",
                    "member ID",
                    "zip code",
                    "passcode"
                ]
            ),
            pick(rng, KEYS)
        ),
        5 => format!(
            "Your appointment is on {} at {}.",
            date_words(rng),
            time_words(rng)
        ),
        6 => format!("Your balance is {}.", money_words(rng)),
        7 => format!(
            "A payment of {} is due on {}.",
            money_words(rng),
            date_words(rng)
        ),
        8 => format!("The number you entered was {}.", digits(rng, 3, 10)),
        9 => format!("Your confirmation code is {}.", spelled(rng, 3, 6)),
        10 => format!(
            "Please spell the {} name of the person you are trying to reach.",
            pick(rng, &["first", "last"])
        ),
        11 => format!(
            "You are caller number {}.",
            number_words(rng.range(1, 25) as u64)
        ),
        12 => format!(
            "Your call is {} in line.",
            ordinal_words(rng.range(1, 12) as u64)
        ),
        13 => format!(
            "The estimated wait time is {} minutes.",
            number_words(rng.range(2, 45) as u64)
        ),
        14 => format!(
            "Message {}, received {} at {}.",
            number_words(rng.range(1, 20) as u64),
            date_words(rng),
            time_words(rng)
        ),
        15 => pick(rng, QUESTIONS)
            .replace("{p}", pick(rng, PEOPLE))
            .replace("{s}", pick(rng, SERVICES)),
        16 => pick(rng, SHORT).to_string(),
        17 => format!(
            "Please hold while I transfer you to {}.",
            pick(rng, SERVICES)
        ),
        18 => format!(
            "Our offices are open {} through {}, from {} to {}.",
            pick(rng, &DAYS[..3]),
            pick(rng, &DAYS[3..]),
            time_words(rng),
            time_words(rng)
        ),
        19 => format!("Extension {} is busy.", digits(rng, 3, 5)),
        20 => format!(
            "You have reached the voicemail of {}. Please leave a message after the tone.",
            pick(rng, PEOPLE)
        ),
        21 => format!(
            "Your {} to {} has been scheduled for {}.",
            pick(
                rng,
                &["flight", "delivery", "shipment", "train", "transfer"]
            ),
            pick(rng, PLACES),
            date_words(rng)
        ),
        22 => format!(
            "The current temperature in {} is {} degrees.",
            pick(rng, PLACES),
            number_words(rng.range(10, 99) as u64)
        ),
        23 => format!("At the tone, the time will be {}.", time_words(rng)),
        24 => format!(
            "If you know your party's extension, you may dial it at any time. Otherwise, press {}.",
            key(rng)
        ),
        25 => format!(
            "Your {} has been {}.",
            pick(rng, THINGS),
            pick(
                rng,
                &[
                    "saved",
                    "deleted",
                    "cancelled",
                    "confirmed",
                    "sent",
                    "updated",
                    "approved",
                    "declined"
                ]
            )
        ),
        26 => format!(
            "Press {} for {}, {} for {}, or {} to {}.",
            key(rng),
            pick(rng, SERVICES),
            key(rng),
            pick(rng, SERVICES),
            key(rng),
            pick(rng, ACTIONS)
        ),
        27 => format!(
            "This is the {} of {} reminders.",
            ordinal_words(rng.range(1, 5) as u64),
            number_words(rng.range(5, 9) as u64)
        ),
        _ => format!(
            "Please say or enter the {} digits of your {}.",
            pick(rng, &["last four", "first three", "last two"]),
            pick(
                rng,
                &[
                    "phone number",
                    "card number",
                    "social security number",
                    "order number"
                ]
            )
        ),
    };
    s
}

/// Strip transcript annotations ("dollar [$]", "IAX (note: does not say 2)"): what is in
/// brackets or parentheses is not spoken.
fn strip_notes(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = (depth - 1).max(0),
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sentences of 3..=25 words from the fortune files under `dir` (entries split on `%` lines,
/// attributions and code-like text dropped). `Err` says why there are none.
pub fn fortune_sentences(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).with_context(|| {
        format!(
            "{}: no fortune files (scripts/fetch-assets.sh tts)",
            dir.display()
        )
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none())
        // Pictures, not sentences.
        .filter(|p| {
            !matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("art" | "ascii-art" | "perl")
            )
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue; // not UTF-8: a binary or an odd encoding, skip the file
        };
        for entry in text.split("\n%\n") {
            let body: Vec<&str> = entry
                .lines()
                .take_while(|l| {
                    !l.trim_start().starts_with("--") && !l.trim_start().starts_with("-- ")
                })
                .collect();
            // Dialogue, verse and code put structure in the lines; keep prose only.
            if body.iter().any(|l| {
                l.contains(':')
                    && l.split(':')
                        .next()
                        .is_some_and(|h| h.split_whitespace().count() <= 2 && !h.trim().is_empty())
            }) {
                continue;
            }
            let joined = body.join(" ");
            for sent in split_sentences(&joined) {
                if let Some(s) = clean_sentence(&sent) {
                    out.push(s);
                }
            }
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no usable sentences in the fortune files",
            dir.display()
        );
    }
    Ok(out)
}

fn split_sentences(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        cur.push(c);
        if matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|n| n.is_whitespace()) {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.push(cur);
    out
}

/// A sentence fit to be read aloud, or `None`: only letters, digits and plain punctuation,
/// 3..=25 words, starting with a capital letter.
fn clean_sentence(s: &str) -> Option<String> {
    let s = s.replace(['"', '`'], "").replace("''", "");
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let ok = |c: char| c.is_ascii_alphanumeric() || " .,!?'-;".contains(c);
    if !s.chars().all(ok) || s.contains("--") {
        return None;
    }
    let words = s.split_whitespace().count();
    if !(3..=25).contains(&words) || !s.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    // Mostly words, not numbers or initials.
    let letters = s.chars().filter(|c| c.is_ascii_alphabetic()).count();
    if letters * 10 < s.len() * 7 {
        return None;
    }
    // The fortunes packages carry some crude jokes: a corpus users train on should not.
    let lower = s.to_ascii_lowercase();
    if lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| CRUDE.iter().any(|c| w.starts_with(c)))
    {
        return None;
    }
    Some(s)
}

/// Word stems whose sentences are left out of the fortune text.
const CRUDE: [&str; 16] = [
    "masturbat",
    "fuck",
    "shit",
    "sex",
    "penis",
    "vagina",
    "rape",
    "whore",
    "bitch",
    "nigg",
    "fag",
    "cunt",
    "dick",
    "orgasm",
    "porn",
    "breast",
];

/// Transcripts of a speech manifest (`text` of every line).
pub fn manifest_texts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read manifest", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .with_context(|| format!("{}:{}: no \"text\" string", path.display(), i + 1))?;
        out.push(t.to_string());
    }
    Ok(out)
}

/// Normalized valid/test transcripts of the speech folder (those that exist).
pub fn held_out(speech: &Path) -> Result<HashSet<String>> {
    let mut set = HashSet::new();
    for split in ["valid.jsonl", "test.jsonl"] {
        let p = speech.join(split);
        if p.exists() {
            for t in manifest_texts(&p)? {
                set.insert(normalize_text(&t));
            }
        }
    }
    Ok(set)
}

/// Build the mixed lines: ~50% generated prompts, ~35% fortune sentences (when the files are
/// there; the generator fills in otherwise), the rest train transcripts (each at most
/// [`TRAIN_REPEATS`] times), shuffled. Lines are unique except for the train repeats.
pub fn build(o: &TextOptions) -> Result<TextReport> {
    let held = held_out(&o.speech)?;
    let mut r = TextReport::default();
    let mut rng = SplitMix64::new(o.seed ^ 0x7e57_7e57);
    let mut seen: HashSet<String> = HashSet::new();
    // Candidates pass when they are new and not held-out.
    let admit = |s: &str, r: &mut TextReport, seen: &mut HashSet<String>| -> bool {
        let n = normalize_text(s);
        if n.is_empty() {
            return false;
        }
        if held.contains(&n) {
            r.held_out_dropped += 1;
            return false;
        }
        seen.insert(n)
    };

    // Train transcripts (cleaned of notes), up to TRAIN_REPEATS copies, at most 15%.
    let train_path = o.speech.join("train.jsonl");
    let mut train = Vec::new();
    if train_path.exists() {
        for t in manifest_texts(&train_path)? {
            let t = strip_notes(&t);
            if admit(&t, &mut r, &mut seen) {
                train.push(t);
            }
        }
    }
    let train_budget = o.lines * 15 / 100;
    let mut train_lines = Vec::new();
    'rep: for _ in 0..TRAIN_REPEATS {
        for t in &train {
            if train_lines.len() >= train_budget {
                break 'rep;
            }
            train_lines.push(t.clone());
        }
    }
    r.train = train_lines.len();

    let mut fortune_lines = Vec::new();
    match fortune_sentences(&o.fortunes) {
        Ok(mut all) => {
            // A seeded shuffle, so the share taken is not all from the first file.
            shuffle(&mut all, &mut rng);
            r.fortunes_available = all.len();
            let budget = o.lines * 35 / 100;
            for s in all {
                if fortune_lines.len() >= budget {
                    break;
                }
                if admit(&s, &mut r, &mut seen) {
                    fortune_lines.push(s);
                }
            }
        }
        Err(e) => r.fortunes_missing = Some(format!("{e:#}")),
    }
    r.fortunes = fortune_lines.len();

    let want_gen = o.lines.saturating_sub(r.train + r.fortunes);
    let mut gen_lines = Vec::new();
    let mut tries = 0usize;
    while gen_lines.len() < want_gen {
        tries += 1;
        if tries > want_gen * 50 + 1000 {
            bail!(
                "the prompt generator ran out of new sentences after {} (asked for {want_gen})",
                gen_lines.len()
            );
        }
        let s = generate_prompt(&mut rng);
        if admit(&s, &mut r, &mut seen) {
            gen_lines.push(s);
        }
    }
    r.generated = gen_lines.len();

    let mut lines = gen_lines;
    lines.extend(fortune_lines);
    lines.extend(train_lines);
    shuffle(&mut lines, &mut rng);
    r.lines = lines;
    Ok(r)
}

/// How many times each train transcript may appear (each copy is voiced differently).
pub const TRAIN_REPEATS: usize = 2;

fn shuffle<T>(xs: &mut [T], rng: &mut SplitMix64) {
    for i in (1..xs.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        xs.swap(i, j);
    }
}

/// [`build`], then write the lines to `out` (atomically).
pub fn write(o: &TextOptions, out: &Path) -> Result<TextReport> {
    let r = build(o)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let mut text = r.lines.join("\n");
    text.push('\n');
    anymal_util::fs::write_atomic(out, text.as_bytes())?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_manifest(path: &Path, texts: &[&str]) {
        let lines: Vec<String> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::json!({"audio": format!("{i}.wav"), "text": t, "id": i.to_string()})
                    .to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n")).unwrap();
    }

    #[test]
    fn numbers_and_ordinals_in_words() {
        assert_eq!(number_words(0), "zero");
        assert_eq!(number_words(13), "thirteen");
        assert_eq!(number_words(40), "forty");
        assert_eq!(number_words(305), "three hundred five");
        assert_eq!(number_words(2021), "two thousand twenty one");
        assert_eq!(ordinal_words(1), "first");
        assert_eq!(ordinal_words(23), "twenty third");
        assert_eq!(ordinal_words(20), "twentieth");
        assert_eq!(ordinal_words(12), "twelfth");
    }

    #[test]
    fn the_generator_varies() {
        let mut rng = SplitMix64::new(1);
        let set: HashSet<String> = (0..2000).map(|_| generate_prompt(&mut rng)).collect();
        // Some templates are fixed sentences ("Goodbye."), so not every draw is new.
        assert!(
            set.len() > 1200,
            "only {} distinct prompts in 2000",
            set.len()
        );
    }

    #[test]
    fn no_held_out_sentence_survives() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let speech = dir.path().join("speech");
        std::fs::create_dir_all(&speech)?;
        // The test split holds a train sentence (in other casing), a prompt the generator makes
        // and a fortune sentence: none may come out.
        write_manifest(
            &speech.join("train.jsonl"),
            &[
                "Press 1 for sales.",
                "Goodbye.",
                "dollar [$]",
                "Welcome to the system.",
            ],
        );
        write_manifest(&speech.join("valid.jsonl"), &["Thank you."]);
        write_manifest(
            &speech.join("test.jsonl"),
            &[
                "welcome to the SYSTEM",
                "Goodbye",
                "Please hold.",
                "The cat sat on the mat.",
            ],
        );
        let fortunes = dir.path().join("fortunes");
        std::fs::create_dir_all(&fortunes)?;
        std::fs::write(
            fortunes.join("misc"),
            "The cat sat on the mat. A stitch in time saves nine.\n\t-- Someone Famous\n%\nNever trust a computer you cannot throw out of a window.\n%\n",
        )?;
        let r = build(&TextOptions {
            lines: 400,
            seed: 5,
            speech: speech.clone(),
            fortunes,
        })?;
        assert_eq!(r.lines.len(), 400);
        assert!(r.held_out_dropped >= 3, "dropped {}", r.held_out_dropped);
        let held = held_out(&speech)?;
        for l in &r.lines {
            assert!(
                !held.contains(&normalize_text(l)),
                "held-out line kept: {l}"
            );
        }
        // The real corpus, when it is here.
        let real = anymal_util::fs::cache_dir().join("data/speech");
        if real.join("test.jsonl").exists() {
            let real_held = held_out(&real)?;
            let rr = build(&TextOptions {
                lines: 3000,
                seed: 9,
                speech: real,
                fortunes: PathBuf::from(FORTUNE_DIR),
            })?;
            assert_eq!(rr.lines.len(), 3000);
            for l in &rr.lines {
                assert!(
                    !real_held.contains(&normalize_text(l)),
                    "test/valid line kept: {l}"
                );
            }
        }
        assert!(r.lines.iter().any(|l| l == "Press 1 for sales."));
        assert!(r.lines.iter().any(|l| l == "dollar"), "notes stripped");
        assert!(r.lines.iter().any(|l| l.starts_with("A stitch in time")));
        assert!(r.lines.iter().all(|l| !l.contains("Someone Famous")));
        assert_eq!(r.generated + r.fortunes + r.train, 400);
        Ok(())
    }

    #[test]
    fn missing_fortunes_are_reported_and_filled_by_the_generator() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let r = build(&TextOptions {
            lines: 100,
            seed: 1,
            speech: dir.path().join("none"),
            fortunes: dir.path().join("no-fortunes"),
        })?;
        assert_eq!(r.fortunes, 0);
        assert!(r
            .fortunes_missing
            .as_deref()
            .is_some_and(|m| m.contains("no-fortunes")));
        assert_eq!(r.generated, 100);
        Ok(())
    }

    #[test]
    fn fortune_sentences_are_clean() {
        assert_eq!(
            clean_sentence("I have bad news for you, you've been masturbating again."),
            None
        );
        for (s, ok) in [
            ("Hello there my friend.", true),
            ("x = y + 1;", false),
            ("Two words.", false),
            ("It's a <tag> here.", false),
        ] {
            assert_eq!(clean_sentence(s).is_some(), ok, "{s}");
        }
    }
}

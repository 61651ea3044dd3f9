//! Word error rate (WER) for speech recognition evaluation.
//!
//! Both references and hypotheses go through [`normalize_text`] before they are split into
//! words, so casing and punctuation never count as errors. The corpus score is computed like
//! `jiwer.wer(list_of_refs, list_of_hyps)`: the sum of word-level edits over all pairs divided
//! by the sum of reference words (not the mean of per-utterance rates), so long utterances
//! weigh more than short ones.
//!
//! `scripts/fixtures/make_eval_fixtures.py` re-implements [`normalize_text`] in Python, runs the
//! real `jiwer` package on the normalized strings, and writes
//! `tests/fixtures/eval/wer_cider.json`, which the unit tests below compare against.

/// Normalizes a transcript for scoring; used for references and hypotheses alike.
///
/// Rules, applied in this order:
/// 1. Unicode lowercase (`str::to_lowercase`).
/// 2. Alphanumeric characters (`char::is_alphanumeric`, so accented letters and non-Latin
///    scripts are kept) are kept as is.
/// 3. An apostrophe (`'` or the typographic `’`) is kept, as ASCII `'`, only when it sits
///    between two alphanumeric characters (`don't`, `o'clock`); quotes around words and
///    trailing possessive apostrophes (`dogs'`) are dropped.
/// 4. A `.` or `,` between two ASCII digits is kept, so `3.5` and `1,000` stay one token.
/// 5. Every other character (punctuation, symbols, whitespace) becomes a word separator, so
///    `well-known` becomes `well known` and `hello,world` becomes `hello world`.
/// 6. Runs of separators collapse to one space; leading and trailing spaces are removed.
///
/// Numbers written with digits stay digits: `5` and `five` are different words and count as
/// a substitution. No spelling or number normalization is attempted, on purpose: it would
/// make scores depend on an English-only rule set.
pub fn normalize_text(s: &str) -> String {
    let chars: Vec<char> = s.to_lowercase().chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        // Neighbours in the lowercased input (not in the output), so a kept character never
        // depends on an earlier decision.
        let prev = if i > 0 {
            chars.get(i - 1).copied()
        } else {
            None
        };
        let next = chars.get(i + 1).copied();
        let between = |pred: fn(&char) -> bool| {
            prev.is_some_and(|p| pred(&p)) && next.is_some_and(|n| pred(&n))
        };
        if c.is_alphanumeric() {
            out.push(c);
        } else if (c == '\'' || c == '\u{2019}') && between(|ch| ch.is_alphanumeric()) {
            out.push('\'');
        } else if (c == '.' || c == ',') && between(|ch| ch.is_ascii_digit()) {
            out.push(c);
        } else {
            out.push(' ');
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Word-level Levenshtein distance between two token sequences (substitution, deletion and
/// insertion each cost 1), in O(len(b)) memory.
fn levenshtein<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    // row[j] holds the distance between a[..i] and b[..j] for the current i.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ai) in a.iter().enumerate() {
        let mut diag = row[0]; // distance(a[..i], b[..j]) before row[j] is overwritten
        row[0] = i + 1;
        for (j, bj) in b.iter().enumerate() {
            let substitute = diag + usize::from(ai != bj);
            let delete = row[j + 1] + 1;
            let insert = row[j] + 1;
            diag = row[j + 1];
            row[j + 1] = substitute.min(delete).min(insert);
        }
    }
    row[b.len()]
}

/// Returns `(edits, reference_words)` for one pair after [`normalize_text`] on both sides:
/// the minimum number of word substitutions, deletions and insertions turning the reference
/// into the hypothesis, and the number of words in the normalized reference.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize_text(reference);
    let h = normalize_text(hypothesis);
    let rw: Vec<&str> = r.split(' ').filter(|w| !w.is_empty()).collect();
    let hw: Vec<&str> = h.split(' ').filter(|w| !w.is_empty()).collect();
    (levenshtein(&rw, &hw), rw.len())
}

/// Corpus WER over `(reference, hypothesis)` pairs: total edits / total reference words, the
/// same aggregation as `jiwer.wer` on lists. Can exceed 1.0 when hypotheses insert words.
///
/// Edge cases: an empty slice, or one where every reference normalizes to nothing, gives
/// `0.0` when there are no edits either and `f64::INFINITY` when the hypotheses contain words
/// (there is no finite rate for insertions against nothing).
pub fn corpus_wer(pairs: &[(String, String)]) -> f64 {
    let (edits, words) = pairs.iter().fold((0usize, 0usize), |(e, w), (r, h)| {
        let (de, dw) = word_errors(r, h);
        (e + de, w + dw)
    });
    if words == 0 {
        return if edits == 0 { 0.0 } else { f64::INFINITY };
    }
    edits as f64 / words as f64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn normalization_rules() {
        assert_eq!(normalize_text("  Hello,   World! "), "hello world");
        assert_eq!(normalize_text("Don't STOP"), "don't stop");
        assert_eq!(
            normalize_text("It\u{2019}s 'quoted' dogs'"),
            "it's quoted dogs"
        );
        assert_eq!(normalize_text("well-known e-mail"), "well known e mail");
        assert_eq!(
            normalize_text("Pi is 3.14, not 3; 1,000 ok."),
            "pi is 3.14 not 3 1,000 ok"
        );
        assert_eq!(normalize_text("Café ÉCOLE"), "café école");
        assert_eq!(normalize_text("?!..."), "");
        assert_eq!(normalize_text(""), "");
    }

    #[test]
    fn edit_counts() {
        assert_eq!(word_errors("the cat sat", "the cat sat"), (0, 3));
        assert_eq!(word_errors("the cat sat", "the bat sat"), (1, 3));
        assert_eq!(word_errors("the cat sat", "cat sat"), (1, 3));
        assert_eq!(word_errors("the cat sat", "the cat sat down now"), (2, 3));
        assert_eq!(word_errors("a b c d", "x a b c"), (2, 4));
        assert_eq!(word_errors("", "something"), (1, 0));
        assert_eq!(word_errors("one two", ""), (2, 2));
        // Casing and punctuation are not errors.
        assert_eq!(word_errors("Hello, world.", "hello world"), (0, 2));
    }

    #[test]
    fn corpus_edges() {
        assert_eq!(corpus_wer(&[]), 0.0);
        assert_eq!(corpus_wer(&[("".into(), "".into())]), 0.0);
        assert!(corpus_wer(&[("...".into(), "hi".into())]).is_infinite());
        let pairs = vec![
            ("a b".to_string(), "a c".to_string()),
            ("c d e f".to_string(), "c d e f".to_string()),
        ];
        assert!((corpus_wer(&pairs) - 1.0 / 6.0).abs() < 1e-12);
    }

    /// Values from the real `jiwer` package (see scripts/fixtures/make_eval_fixtures.py).
    #[test]
    fn matches_jiwer_fixture() {
        let text = include_str!("../../tests/fixtures/eval/wer_cider.json");
        let wer = fixture_section(text, "\"wer\"");
        let refs = string_array(wer, "\"refs\"");
        let hyps = string_array(wer, "\"hyps\"");
        let refs_norm = string_array(wer, "\"refs_normalized\"");
        let hyps_norm = string_array(wer, "\"hyps_normalized\"");
        let per_pair = number_array(wer, "\"per_pair_errors\"");
        let corpus = number_array(wer, "\"corpus_wer\"");
        assert_eq!(refs.len(), hyps.len());
        assert!(refs.len() >= 10);
        for i in 0..refs.len() {
            assert_eq!(normalize_text(&refs[i]), refs_norm[i], "ref {i}");
            assert_eq!(normalize_text(&hyps[i]), hyps_norm[i], "hyp {i}");
            let (e, _) = word_errors(&refs[i], &hyps[i]);
            assert_eq!(
                e as f64, per_pair[i],
                "pair {i}: {:?} / {:?}",
                refs[i], hyps[i]
            );
        }
        let pairs: Vec<(String, String)> = refs.into_iter().zip(hyps).collect();
        let ours = corpus_wer(&pairs);
        assert!(
            (ours - corpus[0]).abs() < 1e-12,
            "ours {ours} jiwer {}",
            corpus[0]
        );
    }

    // --- A tiny reader for the fixture file, so the test needs no serde_json. The fixture is
    // written by our own script with json.dumps(ensure_ascii=True), one array per line. ---

    /// The text from `key` up to the end of the file (sections are searched in order).
    pub(crate) fn fixture_section<'a>(text: &'a str, key: &str) -> &'a str {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("fixture lacks {key}"));
        &text[at..]
    }

    /// Parses the JSON string array that follows `key` in `text`.
    pub(crate) fn string_array(text: &str, key: &str) -> Vec<String> {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("fixture lacks {key}"));
        let rest = &text[at + key.len()..];
        let open = rest.find('[').expect("array start");
        let mut out = Vec::new();
        let mut cur: Option<String> = None;
        let mut chars = rest[open + 1..].chars();
        while let Some(c) = chars.next() {
            match (&mut cur, c) {
                (None, ']') => return out,
                (None, '"') => cur = Some(String::new()),
                (None, _) => {}
                (Some(s), '\\') => match chars.next() {
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let code = u32::from_str_radix(&hex, 16).expect("hex escape");
                        // Our fixtures only escape BMP characters (no surrogate pairs).
                        s.push(char::from_u32(code).expect("BMP char"));
                    }
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some(other) => s.push(other),
                    None => panic!("truncated escape"),
                },
                (Some(_), '"') => {
                    if let Some(s) = cur.take() {
                        out.push(s);
                    }
                }
                (Some(s), other) => s.push(other),
            }
        }
        panic!("unterminated array for {key}")
    }

    /// Parses the JSON number array (or single number, returned as one element) after `key`.
    pub(crate) fn number_array(text: &str, key: &str) -> Vec<f64> {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("fixture lacks {key}"));
        let rest = text[at + key.len()..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start();
        let body = if let Some(r) = rest.strip_prefix('[') {
            &r[..r.find(']').expect("array end")]
        } else {
            let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
            &rest[..end]
        };
        body.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad number {t:?}"))
            })
            .collect()
    }
}

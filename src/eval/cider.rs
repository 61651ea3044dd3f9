//! CIDEr-D for caption evaluation, computing what the COCO caption evaluation code computes.
//!
//! The reference is `pycocoevalcap.cider.cider.Cider` (pip package `pycocoevalcap` 1.2, file
//! `cider/cider_scorer.py`). Although that class is named "Cider", it is the CIDEr-D variant:
//! clipped tf-idf products, a Gaussian length penalty with sigma = 6, and a factor of 10.
//! Per item, for n = 1..=4:
//!
//! - every sentence becomes n-gram counts; an n-gram's idf is
//!   `ln(N) - ln(max(1, df))`, where `N` is the number of items in the evaluated corpus and
//!   `df` the number of items whose *reference set* contains the n-gram (hypotheses never
//!   contribute to `df`, and an n-gram no reference has gets the full `ln(N)`);
//! - tf-idf vectors `g = count * idf` per n; for each reference,
//!   `sim_n = sum_over_hyp_ngrams(min(g_hyp, g_ref) * g_ref) / (|g_hyp| * |g_ref|)`
//!   (the division is skipped when a norm is 0), times `exp(-delta^2 / (2 sigma^2))`;
//! - item score = 10 * mean over n of (sum over references of sim_n) / (number of references).
//!
//! The corpus score is the plain mean of the item scores. Because idf depends on the whole
//! corpus, scores of a subset are not the subset's share of a larger run.
//!
//! Two details copied on purpose so the numbers match the reference code:
//! - `delta` is the difference of the two sentences' *bigram* counts (the reference code's
//!   "length" counts n-grams of index 1). That equals the word-count difference whenever both
//!   sentences have at least one word; it only differs for an empty sentence (-1 vs 0).
//! - with a single item `N = 1`, every idf is 0 and every score is 0.
//!
//! Tokenization: the COCO pipeline runs Stanford's PTBTokenizer (lowercase, split off
//! punctuation, drop punctuation tokens). We use [`super::wer::normalize_text`] instead
//! (lowercase, punctuation becomes a separator, apostrophes inside words kept) and split on
//! spaces. Both give the same tokens on plain sentences; they differ on things like
//! hyphenated words (`well-known` is one PTB token, two here) and clitics (PTB splits `don't`
//! into `do n't`). The fixture test feeds our normalized strings to the Python scorer directly.

use std::collections::{HashMap, HashSet};

use super::wer::normalize_text;

/// Longest n-gram order (the reference's `n=4`).
const MAX_N: usize = 4;
/// Standard deviation of the Gaussian length penalty (the reference's `sigma=6.0`).
const SIGMA: f64 = 6.0;

/// N-gram counts of one sentence, one map per order; an n-gram is its words joined by ' '
/// (words never contain spaces after normalization, so the key is unambiguous).
struct NgramCounts {
    by_n: [HashMap<String, u32>; MAX_N],
}

fn count_ngrams(sentence: &str) -> NgramCounts {
    let normalized = normalize_text(sentence);
    let words: Vec<&str> = normalized.split(' ').filter(|w| !w.is_empty()).collect();
    let mut by_n: [HashMap<String, u32>; MAX_N] = Default::default();
    for (k, map) in by_n.iter_mut().enumerate() {
        for window in words.windows(k + 1) {
            *map.entry(window.join(" ")).or_insert(0) += 1;
        }
    }
    NgramCounts { by_n }
}

/// Tf-idf vector of one sentence: weights per order, their L2 norms, and the "length"
/// (bigram count, see the module docs).
struct TfIdf {
    weights: [HashMap<String, f64>; MAX_N],
    norms: [f64; MAX_N],
    length: f64,
}

fn tf_idf(counts: &NgramCounts, df: &HashMap<String, f64>, log_n: f64) -> TfIdf {
    let mut weights: [HashMap<String, f64>; MAX_N] = Default::default();
    let mut norms = [0.0; MAX_N];
    for (n, map) in counts.by_n.iter().enumerate() {
        for (gram, &tf) in map {
            let d = df.get(gram).copied().unwrap_or(0.0);
            let w = f64::from(tf) * (log_n - d.max(1.0).ln());
            norms[n] += w * w;
            weights[n].insert(gram.clone(), w);
        }
        norms[n] = norms[n].sqrt();
    }
    // Bigram count, exactly what the reference code calls the length.
    let length = counts.by_n[1].values().map(|&c| f64::from(c)).sum();
    TfIdf {
        weights,
        norms,
        length,
    }
}

/// Per-order clipped cosine similarity with the length penalty (the reference's `sim`).
fn similarity(hyp: &TfIdf, reference: &TfIdf) -> [f64; MAX_N] {
    let delta = hyp.length - reference.length;
    let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
    let mut val = [0.0; MAX_N];
    for (n, v) in val.iter_mut().enumerate() {
        for (gram, &wh) in &hyp.weights[n] {
            let wr = reference.weights[n].get(gram).copied().unwrap_or(0.0);
            *v += wh.min(wr) * wr;
        }
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            *v /= hyp.norms[n] * reference.norms[n];
        }
        *v *= penalty;
    }
    val
}

/// CIDEr-D of `hyps[i]` against the references `refs[i]`, as pycocoevalcap computes it (see
/// the module docs for the formula and the tokenization used).
///
/// Returns `(corpus mean, per-item scores)`; scores are >= 0 and typically within 0..10.
/// Errors when the two slices differ in length, the corpus is empty, or an item has no
/// reference: the metric is undefined there, and silently scoring 0 would hide a data bug.
pub fn cider_d(refs: &[Vec<String>], hyps: &[String]) -> Result<(f64, Vec<f64>), String> {
    if refs.len() != hyps.len() {
        return Err(format!(
            "CIDEr-D needs one hypothesis per item: got {} reference sets and {} hypotheses",
            refs.len(),
            hyps.len()
        ));
    }
    if refs.is_empty() {
        return Err("CIDEr-D of an empty corpus is undefined".to_string());
    }
    if let Some(i) = refs.iter().position(Vec::is_empty) {
        return Err(format!("CIDEr-D item {i} has no reference caption"));
    }

    let ref_counts: Vec<Vec<NgramCounts>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| count_ngrams(r)).collect())
        .collect();
    let hyp_counts: Vec<NgramCounts> = hyps.iter().map(|h| count_ngrams(h)).collect();

    // Document frequency: in how many items' reference sets each n-gram occurs (once per item).
    let mut df: HashMap<String, f64> = HashMap::new();
    for item in &ref_counts {
        let mut seen: HashSet<&str> = HashSet::new();
        for counts in item {
            for map in &counts.by_n {
                seen.extend(map.keys().map(String::as_str));
            }
        }
        for gram in seen {
            *df.entry(gram.to_string()).or_insert(0.0) += 1.0;
        }
    }

    let log_n = (refs.len() as f64).ln();
    let mut scores = Vec::with_capacity(refs.len());
    for (hyp, item_refs) in hyp_counts.iter().zip(&ref_counts) {
        let hv = tf_idf(hyp, &df, log_n);
        let mut sum = [0.0; MAX_N];
        for r in item_refs {
            let rv = tf_idf(r, &df, log_n);
            for (acc, v) in sum.iter_mut().zip(similarity(&hv, &rv)) {
                *acc += v;
            }
        }
        // Same order of operations as the reference: mean over n, / refs, * 10.
        let mean_n = sum.iter().sum::<f64>() / MAX_N as f64;
        scores.push(mean_n / item_refs.len() as f64 * 10.0);
    }
    let corpus = scores.iter().sum::<f64>() / scores.len() as f64;
    Ok((corpus, scores))
}

#[cfg(test)]
mod tests {
    use super::super::wer::tests::{fixture_section, number_array, string_array};
    use super::*;

    #[test]
    fn rejects_malformed_input() {
        assert!(cider_d(&[], &[]).is_err());
        assert!(cider_d(&[vec!["a".into()]], &[]).is_err());
        assert!(cider_d(&[vec![]], &["a".into()]).is_err());
    }

    #[test]
    fn single_item_scores_zero_and_identical_beats_unrelated() {
        let (c, s) =
            cider_d(&[vec!["a dog runs".into()]], &["a dog runs".into()]).unwrap_or_default();
        assert_eq!((c, s), (0.0, vec![0.0]));
        let refs = vec![
            vec!["a dog runs on the beach".to_string()],
            vec!["two cats sleep on a sofa".to_string()],
            vec!["a man rides a red bike".to_string()],
        ];
        let good = [
            "a dog runs on the beach",
            "two cats sleep on a sofa",
            "a man rides a red bike",
        ];
        let bad = ["purple elephants", "quantum soup", "nothing here"];
        let to_vec = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (g, _) = cider_d(&refs, &to_vec(&good)).unwrap_or_default();
        let (b, _) = cider_d(&refs, &to_vec(&bad)).unwrap_or_default();
        assert!(g > 5.0 && b == 0.0, "good {g} bad {b}");
    }

    /// Values from the real `pycocoevalcap` package (scripts/fixtures/make_eval_fixtures.py).
    #[test]
    fn matches_pycocoevalcap_fixture() {
        let text = include_str!("../../tests/fixtures/eval/wer_cider.json");
        let cider = fixture_section(text, "\"cider\"");
        let hyps = string_array(cider, "\"hyps\"");
        let per_item = number_array(cider, "\"per_item\"");
        let corpus = number_array(cider, "\"corpus\"");
        // References are stored one array per item as "refs_0", "refs_1", ...
        let refs: Vec<Vec<String>> = (0..hyps.len())
            .map(|i| string_array(cider, &format!("\"refs_{i}\"")))
            .collect();
        assert!(hyps.len() >= 8);
        let (c, s) = match cider_d(&refs, &hyps) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.len(), per_item.len());
        for (i, (ours, theirs)) in s.iter().zip(&per_item).enumerate() {
            assert!(
                (ours - theirs).abs() < 1e-6,
                "item {i}: ours {ours} pycocoevalcap {theirs}"
            );
        }
        assert!(
            (c - corpus[0]).abs() < 1e-6,
            "corpus: ours {c} pycocoevalcap {}",
            corpus[0]
        );
    }
}

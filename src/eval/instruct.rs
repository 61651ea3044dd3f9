//! Scoring an instruction-tuned model on held-out conversations: the last assistant turn of
//! each conversation is the reference, everything before it is the prompt (earlier turns stay
//! as history), generation is greedy. Scores are grouped by a field of the records (`task`).
//!
//! Per group: accuracy (the answer is right: the normalized generation equals the normalized
//! reference, or, for a one-word reference such as "Yes" or "3", the generation's first word
//! is that word), the word error rate, the majority baseline (what always answering the most
//! common reference would score) and, for one-word answers, balanced accuracy (the mean over
//! reference answers of the fraction of their items answered right), which the majority
//! baseline cannot inflate on skewed tasks.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::wer::{corpus_wer, normalize_text};
use crate::conversation::Role;
use crate::data::instruct::{InstructData, Placeholders};
use crate::multimodal::MultimodalModel;

#[derive(Debug, Clone, Serialize, Default)]
pub struct GroupScore {
    pub items: usize,
    pub accuracy: f64,
    /// None when some reference in the group is longer than one word.
    pub balanced_accuracy: Option<f64>,
    pub majority_baseline: f64,
    pub wer: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstructReport {
    pub data: String,
    pub group_by: String,
    pub items: usize,
    pub skipped: usize,
    pub groups: BTreeMap<String, GroupScore>,
    pub seconds: f64,
}

impl InstructReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "| {} | items | accuracy | balanced acc. | majority baseline | WER |\n|---|---|---|---|---|---|\n",
            self.group_by
        );
        for (g, r) in &self.groups {
            s.push_str(&format!(
                "| {g} | {} | {:.1}% | {} | {:.1}% | {:.1}% |\n",
                r.items,
                r.accuracy * 100.0,
                r.balanced_accuracy
                    .map_or("-".to_string(), |b| format!("{:.1}%", b * 100.0)),
                r.majority_baseline * 100.0,
                r.wer * 100.0
            ));
        }
        s
    }
}

/// Whether `prediction` answers `reference` (see the module docs).
pub fn answer_is_right(reference: &str, prediction: &str) -> bool {
    let (r, p) = (normalize_text(reference), normalize_text(prediction));
    if r == p {
        return true;
    }
    !r.is_empty() && !r.contains(' ') && p.split(' ').next() == Some(r.as_str())
}

#[allow(clippy::too_many_arguments)]
pub fn evaluate_instruct(
    m: &MultimodalModel,
    registry: &anymal_encoders::ModalityRegistry,
    data_path: &Path,
    group_by: &str,
    max_tokens: usize,
    batch: usize,
    limit: usize,
    predictions: &Path,
) -> Result<InstructReport> {
    let t0 = Instant::now();
    let data = InstructData::read(data_path, &Placeholders::from_registry(registry))?;
    for p in &data.problems {
        eprintln!("skipped {p}");
    }
    let n = if limit == 0 {
        data.samples.len()
    } else {
        limit.min(data.samples.len())
    };
    let mut out = std::fs::File::create(predictions)
        .with_context(|| format!("{}: cannot create", predictions.display()))?;
    // group -> (reference, prediction) pairs
    let mut by_group: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut skipped = data.problems.len();
    let samples = &data.samples[..n];
    // The conversation before its last answer, which is the reference.
    let split = |i: usize| {
        samples[i]
            .turns
            .split_last()
            .filter(|(l, _)| l.role == Role::Assistant)
    };
    super::batch::generate_in_order(
        m,
        n,
        batch,
        max_tokens,
        |i| match split(i) {
            Some((_, history)) => m.prompt(history, &samples[i].media),
            None => bail!("the conversation does not end with an answer to score"),
        },
        |i, result| {
            let s = &samples[i];
            let pred = match result {
                Ok(ids) => m.model.tokenizer.decode(&ids)?.trim().to_string(),
                Err(e) => {
                    eprintln!(
                        "skipped {}: record {}: {e:#}",
                        data_path.display(),
                        s.record
                    );
                    skipped += 1;
                    return Ok(());
                }
            };
            let last = split(i).expect("only answered conversations generate").0;
            let group = s
                .fields
                .get(group_by)
                .cloned()
                .unwrap_or_else(|| "(none)".into());
            let right = answer_is_right(&last.text, &pred);
            writeln!(
                out,
                "{}",
                serde_json::json!({"record": s.record, "id": s.id, group_by: group, "reference": last.text, "prediction": pred, "right": right})
            )?;
            by_group
                .entry(group)
                .or_default()
                .push((last.text.clone(), pred));
            if (i + 1) % 10 == 0 || i + 1 == n {
                let done: usize = by_group.values().map(|v| v.len()).sum();
                let ok: usize = by_group
                    .values()
                    .flatten()
                    .filter(|(r, p)| answer_is_right(r, p))
                    .count();
                eprintln!(
                    "eval {}/{n}: accuracy so far {:.1}%",
                    i + 1,
                    100.0 * ok as f64 / done.max(1) as f64
                );
            }
            Ok(())
        },
    )?;
    if by_group.is_empty() {
        bail!(
            "{}: no conversation could be evaluated",
            data_path.display()
        );
    }
    let groups = by_group
        .iter()
        .map(|(g, pairs)| (g.clone(), score(pairs)))
        .collect();
    Ok(InstructReport {
        data: data_path.display().to_string(),
        group_by: group_by.to_string(),
        items: by_group.values().map(|v| v.len()).sum(),
        skipped,
        groups,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn score(pairs: &[(String, String)]) -> GroupScore {
    let n = pairs.len();
    let right = pairs.iter().filter(|(r, p)| answer_is_right(r, p)).count();
    let mut per_ref: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (r, p) in pairs {
        let e = per_ref.entry(normalize_text(r)).or_default();
        e.0 += 1;
        e.1 += answer_is_right(r, p) as usize;
    }
    let majority = per_ref.values().map(|v| v.0).max().unwrap_or(0);
    let one_word = per_ref.keys().all(|r| !r.contains(' '));
    GroupScore {
        items: n,
        accuracy: right as f64 / n as f64,
        balanced_accuracy: one_word.then(|| {
            per_ref
                .values()
                .map(|(c, ok)| *ok as f64 / *c as f64)
                .sum::<f64>()
                / per_ref.len() as f64
        }),
        majority_baseline: majority as f64 / n as f64,
        wer: corpus_wer(pairs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_answers_match_on_their_first_word() {
        assert!(answer_is_right("Yes", "Yes, the speaker asks for it."));
        assert!(answer_is_right("3", "3"));
        assert!(!answer_is_right("3", "There are 3."));
        assert!(!answer_is_right("No", "Yes"));
        assert!(answer_is_right("Please hold.", "please hold"));
        assert!(!answer_is_right("Please hold.", "please"));
    }

    #[test]
    fn balanced_accuracy_is_not_fooled_by_the_majority() {
        let pairs: Vec<(String, String)> = (0..9)
            .map(|_| ("No".to_string(), "No".to_string()))
            .chain([("Yes".to_string(), "No".to_string())])
            .collect();
        let s = score(&pairs);
        assert!((s.accuracy - 0.9).abs() < 1e-9);
        assert!((s.majority_baseline - 0.9).abs() < 1e-9);
        assert!((s.balanced_accuracy.unwrap() - 0.5).abs() < 1e-9);
    }
}

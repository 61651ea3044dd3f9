//! `anymal eval --manifest`: generate for every item of a manifest (the prompt the projector
//! was trained with, greedy) and score the generations against the manifest's texts (WER,
//! CIDEr-D, attribute accuracy).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{attribute, cider::cider_d, wer::corpus_wer, wer::word_errors};
use crate::conversation::{Role, Turn};
use crate::data::manifest::Columns;
use crate::multimodal::MultimodalModel;

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub manifest: String,
    pub items: usize,
    pub skipped: usize,
    pub wer: f64,
    pub cider_d: f64,
    /// Items whose normalized generation equals the normalized reference.
    pub exact_match: f64,
    /// Per scored manifest field (`label`, `motion`...): the fraction of items whose
    /// generation names the right value first (see `eval::attribute`).
    pub attributes: std::collections::BTreeMap<String, f64>,
    pub seconds: f64,
}

impl EvalReport {
    pub fn markdown(&self) -> String {
        let names: String = self
            .attributes
            .keys()
            .map(|k| format!(" {k} acc. |"))
            .collect();
        let rules: String = self.attributes.keys().map(|_| "---|").collect();
        let accs: String = self
            .attributes
            .values()
            .map(|a| format!(" {:.1}% |", a * 100.0))
            .collect();
        format!(
            "| manifest | items | WER | CIDEr-D | exact |{names} seconds |\n|---|---|---|---|---|{rules}---|\n| {} | {} | {:.1}% | {:.3} | {:.1}% |{accs} {:.0} |\n",
            self.manifest,
            self.items,
            self.wer * 100.0,
            self.cider_d,
            self.exact_match * 100.0,
            self.seconds
        )
    }
}

/// Greedy generation for each item (at most `limit`, 0 = all; `batch` at a time, which gives
/// the same generations as one at a time, faster); predictions go to
/// `predictions` as JSONL (`text`, `prediction`, per-item word errors).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    m: &MultimodalModel,
    manifest_path: &Path,
    columns: &std::collections::BTreeMap<String, String>,
    max_tokens: usize,
    batch: usize,
    limit: usize,
    attributes: &[String],
    predictions: &Path,
) -> Result<EvalReport> {
    let t0 = Instant::now();
    let modality = match m.adapters.as_slice() {
        [one] => one.modality.clone(),
        [] => anyhow::bail!("the model takes text only: a manifest scores a projector"),
        _ => anyhow::bail!(
            "the model takes several modalities ({}); a manifest scores one: use --data",
            m.takes()
        ),
    };
    let columns = Columns::with_overrides(&modality, columns)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("data.columns", "--column")))?;
    let manifest = crate::data::read_manifest(manifest_path, &columns)?;
    for p in &manifest.problems {
        eprintln!("skipped {p}");
    }
    // Score the named fields, or `label` when every item has one and none were named.
    let attributes: Vec<String> = if attributes.is_empty() {
        let all_labelled = !manifest.items.is_empty()
            && manifest
                .items
                .iter()
                .all(|it| it.fields.contains_key("label"));
        if all_labelled {
            vec!["label".to_string()]
        } else {
            vec![]
        }
    } else {
        attributes.to_vec()
    };
    let mut class_sets = Vec::new();
    for a in &attributes {
        let values: Vec<&str> = manifest
            .items
            .iter()
            .filter_map(|it| it.fields.get(a).map(|s| s.as_str()))
            .collect();
        if values.len() != manifest.items.len() {
            anyhow::bail!(
                "{}: --attribute {a}: {} of {} items have no string field \"{a}\"",
                manifest_path.display(),
                manifest.items.len() - values.len(),
                manifest.items.len()
            );
        }
        class_sets.push(attribute::classes(values));
    }
    let mut right = vec![0usize; attributes.len()];
    // The user turn the projector was trained with.
    let turns = [Turn::new(Role::User, m.training_prompt(&modality)?)];
    let n = if limit == 0 {
        manifest.items.len()
    } else {
        limit.min(manifest.items.len())
    };
    let mut out = std::fs::File::create(predictions)
        .with_context(|| format!("{}: cannot create", predictions.display()))?;
    let mut pairs = Vec::with_capacity(n);
    let mut skipped = manifest.problems.len();
    let items = &manifest.items[..n];
    super::batch::generate_in_order(
        m,
        n,
        batch,
        max_tokens,
        |i| m.prompt(&turns, &[items[i].media(&modality)]),
        |i, result| {
            let item = &items[i];
            let ids = match result {
                Ok(ids) => ids,
                Err(e) => {
                    eprintln!("skipped {}:{}: {e:#}", manifest_path.display(), item.line);
                    skipped += 1;
                    return Ok(());
                }
            };
            let pred = m.model.tokenizer.decode(&ids)?.trim().to_string();
            let (edits, words) = word_errors(&item.text, &pred);
            let mut named = serde_json::Map::new();
            for (ai, a) in attributes.iter().enumerate() {
                let ok = attribute::is_right(&pred, &item.fields[a], &class_sets[ai]);
                right[ai] += ok as usize;
                named.insert(a.clone(), serde_json::Value::Bool(ok));
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({"line": item.line, "path": item.path, "text": item.text, "prediction": pred, "edits": edits, "words": words, "right": named})
            )?;
            pairs.push((item.text.clone(), pred));
            if (i + 1) % 10 == 0 || i + 1 == n {
                let accs: String = attributes
                    .iter()
                    .zip(&right)
                    .map(|(a, r)| format!(", {a} {:.1}%", 100.0 * *r as f64 / pairs.len() as f64))
                    .collect();
                eprintln!(
                    "eval {}/{n}: WER so far {:.1}%{accs}",
                    i + 1,
                    100.0 * corpus_wer(&pairs)
                );
            }
            Ok(())
        },
    )?;
    if pairs.is_empty() {
        anyhow::bail!("{}: no item could be evaluated", manifest_path.display());
    }
    let refs: Vec<Vec<String>> = pairs.iter().map(|(r, _)| vec![r.clone()]).collect();
    let hyps: Vec<String> = pairs.iter().map(|(_, h)| h.clone()).collect();
    let (cider, _) = cider_d(&refs, &hyps).map_err(|e| anyhow::anyhow!("CIDEr-D: {e}"))?;
    let norm = super::wer::normalize_text;
    let exact =
        pairs.iter().filter(|(r, h)| norm(r) == norm(h)).count() as f64 / pairs.len() as f64;
    Ok(EvalReport {
        manifest: manifest_path.display().to_string(),
        items: pairs.len(),
        skipped,
        wer: corpus_wer(&pairs),
        cider_d: cider,
        exact_match: exact,
        attributes: attributes
            .iter()
            .zip(&right)
            .map(|(a, r)| (a.clone(), *r as f64 / pairs.len() as f64))
            .collect(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

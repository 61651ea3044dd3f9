//! Batched generation gives every sequence the tokens one-at-a-time generation gives it, on
//! the real GGUF models (from `scripts/fetch-assets.sh`): sequences of different lengths, with
//! different token budgets, greedy and sampled, joining and leaving the batch at different
//! steps, half of them with their prompts read a few positions per step between the others'
//! steps; for Gemma 3 also one that decodes past its sliding window.

use std::collections::BTreeMap;

use anymal_llm::loader::known_model_path;
use anymal_llm::{
    generate_with, load_model, BatchEvent, BatchGenerator, LoadOptions, LoadedModel, Prefill,
    Sampler, SamplingConfig,
};

/// Every other sequence joins with its prompt read 4 positions per step
/// (`BatchGenerator::add_reading`); alone, it is generated with the same chunks.
fn chunk_of(i: usize) -> Option<usize> {
    i.is_multiple_of(2).then_some(4)
}

fn prefill_of(i: usize) -> Prefill<'static> {
    match chunk_of(i) {
        Some(c) => Prefill::chunked(c, || true),
        None => Prefill::whole(),
    }
}

fn model(name: &str) -> LoadedModel {
    let path = known_model_path(name).unwrap_or_else(|e| panic!("{e}"));
    load_model(path.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

struct Case {
    ids: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingConfig,
}

/// The prompts below, `copies` times over (each copy with other seeds and budgets).
fn cases(m: &LoadedModel, long_prompt: bool, copies: usize) -> Vec<Case> {
    let texts = [
        "The capital of France is",
        "Write a short poem about the sea.\n",
        "1, 2, 3, 4, 5,",
        "Question: what do bees make?\nAnswer:",
        "def fibonacci(n):",
        "Once upon a time",
        "The three primary colours are",
    ];
    let mut out: Vec<Case> = (0..copies)
        .flat_map(|c| texts.iter().enumerate().map(move |(i, t)| (c, i, t)))
        .map(|(c, i, t)| Case {
            ids: m.tokenizer.encode(t, true, false).unwrap(),
            max_tokens: [24usize, 7, 40, 1, 0, 16, 31][i].saturating_sub(3 * c),
            // Sampled sequences: each row draws from its own seeded sampler only.
            sampling: SamplingConfig {
                temperature: if (i + c) % 3 == 1 { 0.9 } else { 0.0 },
                top_k: 40,
                seed: 11 + (i + 100 * c) as u64,
                ..Default::default()
            },
        })
        .collect();
    if long_prompt {
        // Longer than Gemma 3's 512-position sliding window, so its local layers mask in
        // decoding.
        let long: String = (0..200).map(|i| format!("item {i}, ")).collect::<String>();
        let ids = m.tokenizer.encode(&long, true, false).unwrap();
        assert!(ids.len() > 520, "{} tokens", ids.len());
        out.insert(
            2,
            Case {
                ids,
                max_tokens: 12,
                sampling: SamplingConfig::default(),
            },
        );
    }
    out
}

fn check(name: &str, long_prompt: bool, copies: usize, batches: &[usize]) {
    let m = model(name);
    let eos = m.eos_ids();
    let cases = cases(&m, long_prompt, copies);
    let alone: Vec<Vec<u32>> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut s = Sampler::new(c.sampling);
            let mut prefill = prefill_of(i);
            generate_with(
                &m.llm,
                &c.ids,
                None,
                c.max_tokens,
                &mut s,
                &eos,
                &mut prefill,
                |_| Ok(()),
            )
            .unwrap()
            .0
        })
        .collect();
    for &batch in batches {
        let mut g = BatchGenerator::new(&m.llm, &eos);
        let mut streamed: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        let mut finished: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        let mut next = 0;
        let mut widest = 0;
        while finished.len() < cases.len() {
            while g.len() < batch && next < cases.len() {
                let c = &cases[next];
                let s = Sampler::new(c.sampling);
                match chunk_of(next) {
                    Some(chunk) => g.add_reading(next, &c.ids, None, c.max_tokens, s, chunk),
                    None => g.add(next, &c.ids, None, c.max_tokens, s, &mut prefill_of(next)),
                }
                .unwrap();
                next += 1;
            }
            widest = widest.max(g.len());
            for e in g.step().unwrap() {
                match e {
                    BatchEvent::Token { key, token } => {
                        streamed.entry(key).or_default().push(token)
                    }
                    BatchEvent::Finished { key, tokens, stats } => {
                        assert_eq!(stats.generated_tokens, tokens.len());
                        assert!(finished.insert(key, tokens).is_none(), "{key} twice");
                    }
                    BatchEvent::Failed { key, error } => panic!("sequence {key} failed: {error}"),
                }
            }
        }
        assert_eq!(widest, batch.min(cases.len()), "the batch never filled");
        for (i, want) in alone.iter().enumerate() {
            assert_eq!(
                &finished[&i], want,
                "{name}, batch {batch}: sequence {i} differs from generating it alone"
            );
            assert_eq!(streamed.get(&i).cloned().unwrap_or_default(), *want);
            assert!(want.len() <= cases[i].max_tokens);
        }
    }
    // The cases reach the budget, stop at end of sequence or generate nothing, so joining and
    // leaving happen at different steps.
    assert!(
        alone
            .iter()
            .map(|a| a.len())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 4
    );
}

#[test]
fn smollm2_batched_generation_matches_one_at_a_time() {
    // 21 sequences: a batch of 21 runs its forwards in groups of EXACT_ROWS (16) rows.
    check("smollm2", false, 3, &[3, 21]);
}

#[test]
fn gemma3_batched_generation_matches_one_at_a_time() {
    check("gemma3", true, 1, &[3, 8]);
}

//! Greedy generation for every item of an evaluation, several at a time: items join a
//! [`BatchGenerator`] as others finish (continuous batching), and their results come back in
//! item order, so reports and prediction files read as one-at-a-time generation writes them
//! (the tokens are the same; see `BatchGenerator`).

use anyhow::Result;
use anymal_llm::{BatchEvent, BatchGenerator, Prefill, Sampler, SamplingConfig};

use crate::multimodal::{MultimodalModel, Prompt};

/// Generates for items `0..n`, at most `batch` at once. `prompt(i)` builds item `i`'s prompt;
/// `done(i, result)` gets, in item order, the generated tokens or the error that kept item `i`
/// from generating (its prompt could not be built: a media file that does not decode).
pub fn generate_in_order(
    m: &MultimodalModel,
    n: usize,
    batch: usize,
    max_tokens: usize,
    mut prompt: impl FnMut(usize) -> Result<Prompt>,
    mut done: impl FnMut(usize, Result<Vec<u32>>) -> Result<()>,
) -> Result<()> {
    let mut generator = BatchGenerator::new(&m.model.llm, &m.model.eos_ids());
    // Results that arrived before an earlier item's: held until they can be handed out.
    let mut finished: Vec<Option<Result<Vec<u32>>>> = (0..n).map(|_| None).collect();
    let (mut next_in, mut next_out) = (0, 0);
    while next_out < n {
        while generator.len() < batch.max(1) && next_in < n {
            let i = next_in;
            next_in += 1;
            let added = prompt(i).and_then(|p| {
                let greedy = Sampler::new(SamplingConfig {
                    temperature: 0.0,
                    ..Default::default()
                });
                Ok(generator.add(
                    i,
                    &p.ids,
                    p.embeds.as_ref(),
                    max_tokens,
                    greedy,
                    &mut Prefill::whole(),
                )?)
            });
            if let Err(e) = added {
                finished[i] = Some(Err(e));
            }
        }
        if !generator.is_empty() {
            for event in generator.step()? {
                match event {
                    BatchEvent::Finished { key, tokens, .. } => finished[key] = Some(Ok(tokens)),
                    BatchEvent::Failed { key, error } => finished[key] = Some(Err(error.into())),
                    BatchEvent::Token { .. } => {}
                }
            }
        }
        while next_out < n {
            let Some(result) = finished[next_out].take() else {
                break;
            };
            done(next_out, result)?;
            next_out += 1;
        }
    }
    Ok(())
}

//! Autoregressive generation with a KV cache.

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::decoder::Llm;
use crate::sampling::Sampler;
use crate::Result;

/// What a generation call did.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub generate_seconds: f64,
    /// True when an end-of-sequence token stopped generation.
    pub stopped_at_eos: bool,
}

/// Generates up to `max_tokens` after `prompt_ids`, calling `on_token` for each new token
/// (EOS excluded). The prompt may be given as embeddings instead (`prompt_embeds (1, t, d)`,
/// for prompts with modality tokens spliced in).
pub fn generate(
    llm: &Llm,
    prompt_ids: &[u32],
    prompt_embeds: Option<&Tensor>,
    max_tokens: usize,
    sampler: &mut Sampler,
    eos_ids: &[u32],
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let mut cache = llm.new_cache();
    let mut stats = GenerationStats::default();
    let t0 = Instant::now();
    let embeds = match prompt_embeds {
        Some(e) => e.clone(),
        None => {
            let ids = Tensor::new(prompt_ids, &llm.device)?.unsqueeze(0)?;
            llm.embed_tokens(&ids)?
        }
    };
    let prompt_len = embeds.dim(1)?;
    stats.prompt_tokens = prompt_len;
    let hidden = llm.forward_embeds(&embeds, 0, None, Some(&mut cache))?;
    let mut logits = last_logits(llm, &hidden)?;
    stats.prompt_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut out = Vec::new();
    for pos in prompt_len..prompt_len + max_tokens {
        let next = sampler.sample(&logits);
        if eos_ids.contains(&next) {
            stats.stopped_at_eos = true;
            break;
        }
        out.push(next);
        on_token(next)?;
        if out.len() == max_tokens {
            break;
        }
        let ids = Tensor::new(&[next], &llm.device)?.unsqueeze(0)?;
        let e = llm.embed_tokens(&ids)?;
        let hidden = llm.forward_embeds(&e, pos, None, Some(&mut cache))?;
        logits = last_logits(llm, &hidden)?;
    }
    stats.generated_tokens = out.len();
    stats.generate_seconds = t1.elapsed().as_secs_f64();
    Ok((out, stats))
}

/// Logits of the last position only: the head is not run on the others.
fn last_logits(llm: &Llm, hidden: &Tensor) -> Result<Vec<f32>> {
    let t = hidden.dim(1)?;
    let last = hidden.narrow(1, t - 1, 1)?;
    let logits = llm.logits(&last)?.flatten_all()?.to_device(&Device::Cpu)?;
    Ok(logits.to_vec1::<f32>()?)
}

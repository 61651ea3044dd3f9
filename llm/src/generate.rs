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
    on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let mut prefill = Prefill::whole();
    generate_with(
        llm,
        prompt_ids,
        prompt_embeds,
        max_tokens,
        sampler,
        eos_ids,
        &mut prefill,
        on_token,
    )
}

/// How the prompt goes through the model before the first token: in one forward (the
/// default, [`Prefill::whole`]), or in chunks of `chunk` positions with `proceed` asked before
/// each. A server uses chunks to stop a long prompt whose client went away or whose time ran
/// out, instead of holding its only worker for the whole prefill. Chunked prefill attends
/// through the KV cache exactly as one forward does; only the floating-point order of the
/// products differs.
pub struct Prefill<'a> {
    pub chunk: usize,
    pub proceed: Box<dyn FnMut() -> bool + 'a>,
}

impl<'a> Prefill<'a> {
    pub fn whole() -> Self {
        Self {
            chunk: usize::MAX,
            proceed: Box::new(|| true),
        }
    }

    pub fn chunked(chunk: usize, proceed: impl FnMut() -> bool + 'a) -> Self {
        Self {
            chunk: chunk.max(1),
            proceed: Box::new(proceed),
        }
    }
}

/// [`generate`] with the prompt fed as `prefill` says; a prefill that `proceed` stops is
/// [`Error::Stopped`](crate::Error::Stopped).
#[allow(clippy::too_many_arguments)]
pub fn generate_with(
    llm: &Llm,
    prompt_ids: &[u32],
    prompt_embeds: Option<&Tensor>,
    max_tokens: usize,
    sampler: &mut Sampler,
    eos_ids: &[u32],
    prefill: &mut Prefill<'_>,
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
    if prompt_len == 0 {
        return Err(crate::Error::ShapeMismatch {
            what: "the prompt".into(),
            got: "0 tokens".into(),
            expected: "at least 1".into(),
        });
    }
    let mut start = 0;
    let hidden = loop {
        if !(prefill.proceed)() {
            return Err(crate::Error::Stopped(format!(
                "prefill stopped after {start} of {prompt_len} prompt tokens"
            )));
        }
        let n = prefill.chunk.min(prompt_len - start);
        let h = llm.forward_embeds(&embeds.narrow(1, start, n)?, start, None, Some(&mut cache))?;
        start += n;
        if start == prompt_len {
            break h;
        }
    };
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

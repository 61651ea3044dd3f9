use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use anymal_llm::tokenizer::TokenStream;
use anymal_llm::{generate, load_model, Message, Sampler, SamplingConfig};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model: a GGUF file, an HF folder, an HF hub id in the local HF cache, or a fetched model
    /// name (smollm2, gemma3).
    #[arg(long, default_value = "smollm2")]
    pub llm: String,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 0 = no top-k truncation.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 299792458)]
    pub seed: u64,
    /// Re-quantize the model's linear layers on load (e.g. q4k: Q4_1 has no fast CPU kernel).
    #[arg(long)]
    pub requant: Option<String>,
    /// Send the prompt as it is, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let opts = super::load_options(a.requant.as_deref())?;
    let model = load_model(&a.llm, &opts).with_context(|| format!("loading model '{}'", a.llm))?;
    eprintln!(
        "loaded {} ({}, {} layers) in {:.2}s",
        model.path.display(),
        model.llm.cfg.arch.name(),
        model.llm.cfg.num_layers,
        t0.elapsed().as_secs_f64()
    );
    let text = match (&model.chat_template, a.raw) {
        (Some(t), false) => {
            let mut msgs = vec![];
            if let Some(s) = &a.system {
                msgs.push(Message::new("system", s));
            }
            msgs.push(Message::new("user", &a.prompt));
            t.render(&msgs, true)?
        }
        _ => a.prompt.clone(),
    };
    // A rendered template carries its own BOS when the model wants one.
    let add_bos = a.raw || model.chat_template.is_none() || !text_starts_with_bos(&model, &text);
    let ids = model.tokenizer.encode(&text, add_bos, true)?;
    if ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    });
    let mut stream = TokenStream::new(&model.tokenizer);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (_, stats) = generate(
        &model.llm,
        &ids,
        None,
        a.max_tokens,
        &mut sampler,
        &model.eos_ids(),
        |id| {
            if let Some(piece) = stream.push(id)? {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
            Ok(())
        },
    )?;
    if let Some(rest) = stream.finish()? {
        out.write_all(rest.as_bytes())?;
    }
    writeln!(out)?;
    eprintln!(
        "prompt: {} tokens in {:.2}s ({:.1} t/s); generated {} tokens in {:.2}s ({:.1} t/s){}",
        stats.prompt_tokens,
        stats.prompt_seconds,
        stats.prompt_tokens as f64 / stats.prompt_seconds.max(1e-9),
        stats.generated_tokens,
        stats.generate_seconds,
        stats.generated_tokens as f64 / stats.generate_seconds.max(1e-9),
        if stats.stopped_at_eos {
            ", stopped at end of sequence"
        } else {
            ""
        }
    );
    Ok(())
}

fn text_starts_with_bos(model: &anymal_llm::LoadedModel, text: &str) -> bool {
    model
        .tokenizer
        .bos_id
        .and_then(|b| model.tokenizer.id_to_token(b))
        .is_some_and(|b| !b.is_empty() && text.starts_with(b))
}

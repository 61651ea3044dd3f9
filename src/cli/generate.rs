use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use anymal_llm::tokenizer::TokenStream;
use anymal_llm::{generate, load_model, Message, Sampler, SamplingConfig};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model: a GGUF file, an HF folder, an HF hub id in the local HF cache, or a fetched model
    /// name (smollm2, gemma3).
    /// Default: smollm2, or the LLM a --projector was trained with.
    #[arg(long)]
    pub llm: Option<String>,
    /// With --projector, may hold placeholders (`<audio>`); without one, the inputs come first.
    #[arg(long)]
    pub prompt: String,
    /// A run folder (or any folder) with projector.json + projector.safetensors from `anymal align`.
    #[arg(long)]
    pub projector: Option<std::path::PathBuf>,
    /// A run folder of `anymal tune` (model.json: LLM, LoRA, projectors).
    #[arg(long, conflicts_with = "projector")]
    pub run: Option<std::path::PathBuf>,
    /// A LoRA (PEFT folder, from anymal or PEFT) to apply to the LLM.
    #[arg(long)]
    pub lora: Option<std::path::PathBuf>,
    /// Input file(s) for the prompt's placeholders (`<audio>`, `<image>`, ...), in order; of the
    /// modality the projector was trained on. `--audio`, `--image`, `--video`, `--imu` are
    /// aliases. With a tuned run of several modalities, name each: `--input image=photo.jpg`.
    #[arg(long = "input", visible_aliases = ["audio", "image", "video", "imu"])]
    pub inputs: Vec<std::path::PathBuf>,
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

pub fn run(a: GenerateArgs, registry: &anymal_encoders::ModalityRegistry) -> anyhow::Result<()> {
    if a.run.is_some() || a.lora.is_some() {
        return run_with_assistant(a, registry);
    }
    if a.projector.is_some() {
        return run_with_projector(a, registry);
    }
    if !a.inputs.is_empty() {
        anyhow::bail!(
            "--input/--audio/--image/--video/--imu need --projector RUN_DIR (a projector trained with `anymal align`)"
        );
    }
    let t0 = Instant::now();
    let opts = super::load_options(a.requant.as_deref())?;
    let llm = a.llm.clone().unwrap_or_else(|| "smollm2".into());
    let model = load_model(&llm, &opts).with_context(|| format!("loading model '{llm}'"))?;
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
    stream_to_stdout(&model.tokenizer, |on_token| {
        let eos = model.eos_ids();
        Ok(generate(
            &model.llm,
            &ids,
            None,
            a.max_tokens,
            &mut sampler,
            &eos,
            on_token,
        )?
        .1)
    })
}

/// Generation with modality inputs through a trained projector.
fn run_with_projector(
    a: GenerateArgs,
    registry: &anymal_encoders::ModalityRegistry,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let dir = a.projector.clone().unwrap_or_default();
    let m =
        crate::infer::AlignedModel::load(registry, &dir, a.llm.as_deref(), a.requant.as_deref())?;
    eprintln!(
        "loaded {} + {} projector from {} in {:.2}s",
        m.model.path.display(),
        m.projector.cfg.modality,
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    let files: Vec<&std::path::Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    let prompt = m.user_prompt(Some(&a.prompt), files.len());
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    });
    stream_to_stdout(&m.model.tokenizer, |on_token| {
        Ok(
            m.generate(&prompt, &files, a.max_tokens, &mut sampler, on_token)?
                .1,
        )
    })
}

/// Generation with a tuned run or a LoRA (and any projectors): the conversation path.
fn run_with_assistant(
    a: GenerateArgs,
    registry: &anymal_encoders::ModalityRegistry,
) -> anyhow::Result<()> {
    use crate::data::instruct::{MediaRef, Role, Turn};
    let t0 = Instant::now();
    let spec = crate::assistant::AssistantSpec {
        run: a.run.clone(),
        llm: a.llm.clone(),
        projectors: a.projector.iter().cloned().collect(),
        lora: a.lora.clone(),
        requant: a.requant.clone(),
        chat_template: a.raw.then_some(false),
        feature_cache: None,
    };
    let m = crate::assistant::Assistant::load(registry, &spec)?;
    eprintln!(
        "loaded {} ({}{}) in {:.2}s",
        m.model.path.display(),
        if m.lora.is_some() { "LoRA, " } else { "" },
        if m.adapters.is_empty() {
            "text only".to_string()
        } else {
            m.adapters
                .iter()
                .map(|x| x.modality.as_str())
                .collect::<Vec<_>>()
                .join(" + ")
        },
        t0.elapsed().as_secs_f64()
    );
    let mut media = Vec::new();
    for inp in &a.inputs {
        let text = inp.to_string_lossy();
        let (modality, path) = match text.split_once('=') {
            Some((k, v)) if m.adapters.iter().any(|x| x.modality == k) => (k.to_string(), v.into()),
            _ => match m.adapters.as_slice() {
                [one] => (one.modality.clone(), inp.clone()),
                [] => anyhow::bail!("--input {text}: this model takes text only"),
                _ => anyhow::bail!(
                    "--input {text}: the model takes several modalities; name it, e.g. --input {}={text}",
                    m.adapters[0].modality
                ),
            },
        };
        media.push(MediaRef { modality, path });
    }
    m.adapter_placeholders_check(&a.prompt, &media)?;
    let mut prompt = a.prompt.clone();
    if !m.adapters.iter().any(|x| prompt.contains(&x.placeholder)) && !media.is_empty() {
        let phs: Vec<String> = media
            .iter()
            .map(|f| m.adapter(&f.modality).map(|x| x.placeholder.clone()))
            .collect::<anyhow::Result<_>>()?;
        prompt = format!("{}\n{prompt}", phs.join("\n"));
    }
    let mut turns = Vec::new();
    if let Some(sys) = &a.system {
        turns.push(Turn {
            role: Role::System,
            text: sys.clone(),
        });
    }
    turns.push(Turn {
        role: Role::User,
        text: prompt,
    });
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    });
    stream_to_stdout(&m.model.tokenizer, |on_token| {
        Ok(
            m.generate(&turns, &media, a.max_tokens, &mut sampler, on_token)?
                .1,
        )
    })
}

/// Run `gen` with a callback that prints each decoded piece to stdout as it comes, then a
/// newline and the speed on stderr.
fn stream_to_stdout(
    tokenizer: &anymal_llm::Tokenizer,
    gen: impl FnOnce(
        &mut dyn FnMut(u32) -> anymal_llm::Result<()>,
    ) -> anyhow::Result<anymal_llm::GenerationStats>,
) -> anyhow::Result<()> {
    let mut stream = TokenStream::new(tokenizer);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let stats = gen(&mut |id| {
        if let Some(piece) = stream.push(id)? {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        Ok(())
    })?;
    if let Some(rest) = stream.finish()? {
        out.write_all(rest.as_bytes())?;
    }
    writeln!(out)?;
    print_stats(&stats);
    Ok(())
}

fn print_stats(stats: &anymal_llm::GenerationStats) {
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
}

fn text_starts_with_bos(model: &anymal_llm::LoadedModel, text: &str) -> bool {
    model
        .tokenizer
        .bos_id
        .and_then(|b| model.tokenizer.id_to_token(b))
        .is_some_and(|b| !b.is_empty() && text.starts_with(b))
}

//! `anymal generate`: one answer to one prompt, streamed to stdout; what was loaded and the
//! speed go to stderr. Text only, or with media through the model's projectors.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use anymal_encoders::ModalityRegistry;
use anymal_llm::tokenizer::TokenStream;
use anymal_llm::Sampler;

use super::model_args::{load_model, AnswerArgs, ModelArgs};
use crate::conversation::{MediaRef, Role, Turn};
use crate::multimodal::{ModelSpec, MultimodalModel};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub answer: AnswerArgs,
    /// The user's message. With media it may hold their placeholders (`<audio>`); without
    /// any, the inputs come first.
    #[arg(long)]
    pub prompt: String,
    /// Input file(s) for the prompt's placeholders (`<audio>`, `<image>`, ...), in order; of a
    /// modality the model has a projector for. `--audio`, `--image`, `--video`, `--imu` are
    /// aliases. With a model of several modalities, name each: `--input image=photo.jpg`.
    #[arg(long = "input", visible_aliases = ["audio", "image", "video", "imu"])]
    pub inputs: Vec<PathBuf>,
    /// Send the prompt as it is, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
}

pub fn run(a: GenerateArgs, registry: &ModalityRegistry) -> Result<()> {
    let m = &a.model;
    if !a.inputs.is_empty() && m.run.is_none() && m.projectors.is_empty() {
        bail!(
            "--input/--audio/--image/--video/--imu need --projector RUN_DIR (a projector trained with `anymal align`)"
        );
    }
    let sampling = a.answer.sampling()?;
    let spec = ModelSpec {
        chat_template: a.raw.then_some(false),
        ..m.spec()
    };
    let model = load_model(registry, &spec)?;
    let media = media_refs(&model, &a.inputs, &media_flags_used())?;
    let mut turns = Vec::new();
    if let Some(sys) = &a.answer.system {
        turns.push(Turn::new(Role::System, sys));
    }
    turns.push(Turn::new(
        Role::User,
        model.user_prompt(Some(&a.prompt), &media)?,
    ));
    let mut sampler = Sampler::new(sampling);
    let mut stream = TokenStream::new(&model.model.tokenizer);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (_, stats) = model.generate(&turns, &media, a.answer.max_tokens, &mut sampler, |id| {
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

/// Which spelling of `--input` gave each input, in order (`audio`, `image`, ... or `input`):
/// clap folds the aliases into one list, and `--audio clip.wav` to a model without an audio
/// projector should say so rather than fail to decode the clip as an image. Empty when the
/// command line cannot be matched up with certainty.
fn media_flags_used() -> Vec<String> {
    const FLAGS: [&str; 5] = ["input", "audio", "image", "video", "imu"];
    let mut used = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--" {
            break;
        }
        let Some(name) = arg.strip_prefix("--") else {
            continue;
        };
        let name = name.split_once('=').map_or(name, |(n, _)| n);
        if FLAGS.contains(&name) {
            used.push(name.to_string());
        }
    }
    used
}

/// `--input` values as media: `modality=path`, or a bare path when the model takes one
/// modality. `flags` (see [`media_flags_used`]), when it matches `inputs`, says which alias
/// gave each: `--audio` names the modality as `audio=` would.
fn media_refs(
    model: &MultimodalModel,
    inputs: &[PathBuf],
    flags: &[String],
) -> Result<Vec<MediaRef>> {
    let flags = if flags.len() == inputs.len() {
        flags
    } else {
        &[]
    };
    inputs
        .iter()
        .enumerate()
        .map(|(i, inp)| {
            let text = inp.to_string_lossy();
            if let Some(flag) = flags.get(i).filter(|f| *f != "input") {
                if !model.adapters.iter().any(|x| &x.modality == flag) {
                    let takes: Vec<&str> =
                        model.adapters.iter().map(|x| x.modality.as_str()).collect();
                    bail!(
                        "--{flag} {text}: this model has no {flag} projector (it takes {})",
                        if takes.is_empty() {
                            "text only".to_string()
                        } else {
                            takes.join(", ")
                        }
                    );
                }
                if !text.starts_with(&format!("{flag}=")) {
                    return Ok(MediaRef::file(flag.clone(), inp.clone()));
                }
            }
            let (modality, path) = match text.split_once('=') {
                Some((k, v)) if model.adapters.iter().any(|x| x.modality == k) => {
                    (k.to_string(), PathBuf::from(v))
                }
                _ => match model.adapters.as_slice() {
                    [one] => (one.modality.clone(), inp.clone()),
                    [] => bail!("--input {text}: this model takes text only"),
                    _ => bail!(
                        "--input {text}: the model takes several modalities; name it, e.g. --input {}={text}",
                        model.adapters[0].modality
                    ),
                },
            };
            Ok(MediaRef::file(modality, path))
        })
        .collect()
}

//! `anymal export`: a trained adapter in a format another runtime loads (today: llama.cpp's
//! mmproj GGUF for audio and images).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::export::mmproj::{export_mmproj, llama_cpp_prompt, MatrixType};
use crate::run_dir::{RunDir, RunKind};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// llama.cpp's multimodal projector GGUF (`llama-mtmd-cli --mmproj`, `llama-server
    /// --mmproj`): the frozen encoder and the trained projector.
    Mmproj,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run folder of `anymal align` (its `best/` when it kept one), a checkpoint, a projector
    /// folder, or a run of `anymal tune` (its audio projector; merge its LoRA with `anymal merge`).
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, value_enum, default_value = "mmproj")]
    pub format: ExportFormat,
    /// The file to write (e.g. `adapter.mmproj.gguf`); an existing file is replaced only with
    /// `--overwrite`.
    #[arg(long)]
    pub out: PathBuf,
    /// Type of the weight matrices (norms, biases and positions are f32, the convolutions f16).
    #[arg(long = "type", value_enum, default_value = "f16")]
    pub ty: MatrixType,
    /// The encoder to write (Whisper, or a CLIP/SigLIP folder); default: the one the projector
    /// names.
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    crate::run_dir::refuse_system_file(&a.out, "--out")?;
    if !a.run.exists() {
        bail!("--run {}: no such folder", a.run.display());
    }
    let dir = projector_folder(&a.run)?;
    if a.out.is_dir() {
        bail!(
            "--out {}: is a folder; name the .gguf file to write",
            a.out.display()
        );
    }
    if a.out.exists() && !a.overwrite {
        bail!(
            "--out {}: exists; pass --overwrite to replace it",
            a.out.display()
        );
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "--out {}: folder {} does not exist",
                a.out.display(),
                parent.display()
            );
        }
    }
    match a.format {
        ExportFormat::Mmproj => {
            let s = export_mmproj(&dir, a.encoder.as_deref(), a.ty, &a.out)?;
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            let cfg = &s.config;
            eprintln!(
                "wrote {} ({} tensors, {:.1} MB): projector type {}, {}",
                a.out.display(),
                s.tensors,
                s.bytes as f64 / 1e6,
                s.projector_type,
                s.tokens
            );
            let template = if cfg.chat_template {
                String::new()
            } else {
                // Trained without the chat template: llama.cpp's tools apply one unless given a
                // template that passes the text through.
                " --jinja --chat-template \"{% for m in messages %}{{ m['content'] }}{% endfor %}\""
                    .into()
            };
            // The GGUF the projector trained against, where anymal finds it.
            let llm = anymal_llm::loader::resolve_model_ref(&cfg.llm)
                .ok()
                .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("<the GGUF of {}>", cfg.llm));
            eprintln!(
                "run it: llama-mtmd-cli -m {llm} --mmproj {} {} -p {:?}{template}",
                a.out.display(),
                s.media_flag,
                llama_cpp_prompt(cfg)
            );
        }
    }
    Ok(())
}

/// The projector folder `run` names (see [`ExportArgs::run`]).
fn projector_folder(run: &std::path::Path) -> Result<PathBuf> {
    let dir = RunDir::new(run);
    if dir.kind() == RunKind::Tuned {
        let m = dir.read_model_manifest()?;
        let p = m
            .projectors
            .iter()
            .map(|p| run.join(p))
            .find(|p| {
                anymal_adapters::projector::load_config(p)
                    .is_ok_and(|c| matches!(c.modality.as_str(), "audio" | "image"))
            })
            .with_context(|| {
                format!(
                    "--run {}: the tuned model has no audio or image projector",
                    run.display()
                )
            })?;
        eprintln!(
            "note: {} holds a LoRA too; llama.cpp needs it merged into the LLM: anymal merge --lora {}",
            run.display(),
            run.display()
        );
        return Ok(p);
    }
    let (folder, _) = dir.for_inference();
    if !folder
        .join(anymal_adapters::projector::CONFIG_FILE)
        .is_file()
    {
        bail!(
            "--run {}: no projector.json (not a run of `anymal align` or a projector folder)",
            run.display()
        );
    }
    Ok(folder)
}

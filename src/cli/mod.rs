pub mod align;
pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod model_args;
pub mod recipes;
pub mod serve;
pub mod tune;

use std::process::ExitCode;

use anymal_encoders::ModalityRegistry;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "anymal",
    version,
    about = "Teach a frozen 4-bit LLM to take in any modality"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; the answer streams to stdout, logs to stderr.
    Generate(self::generate::GenerateArgs),
    /// Describe a model: architecture, tensor types, parameters, size, training memory.
    Inspect(self::inspect::InspectArgs),
    /// Train a projector that aligns a modality (audio, ...) to the frozen LLM.
    Align(self::align::AlignArgs),
    /// Instruction-tune: LoRA on the frozen LLM together with the aligned projectors.
    Tune(self::tune::TuneArgs),
    /// Fold a LoRA into the LLM's weights: a GGUF (re-quantized) or f16 safetensors.
    Merge(self::merge::MergeArgs),
    /// Write a trained audio projector and its encoder as a llama.cpp mmproj GGUF.
    Export(self::export::ExportArgs),
    /// List and show the shipped recipes.
    Recipes(self::recipes::RecipesArgs),
    /// Score a trained projector on a manifest: WER and CIDEr-D of greedy generations.
    Eval(self::eval::EvalArgs),
    /// Build manifests for the corpora the project ships with.
    Data(self::data::DataArgs),
    /// Measure QLinear, the decoder's forward+backward and generation speed on this machine.
    Bench(self::bench::BenchArgs),
    /// Talk to a model in the terminal: /audio, /image, ... attach files; answers stream.
    Chat(self::chat::ChatArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (chat completions, streaming, media).
    Serve(self::serve::ServeArgs),
}

/// Parse the command line and run it with the modalities of `registry`. The `anymal` binary
/// passes the built-in ones; a program that adds its own modality (see
/// `examples/custom_modality.rs`) passes a registry with it registered and gets the whole CLI.
pub fn main_with(registry: ModalityRegistry) -> ExitCode {
    let cli = Cli::parse();
    let training = match &cli.command {
        Command::Align(_) | Command::Tune(_) => true,
        Command::Bench(b) => {
            !b.only.is_empty() && b.only.iter().all(|o| o == "align" || o == "train")
        }
        _ => false,
    };
    crate::system::configure_process(training);
    let res = match cli.command {
        Command::Generate(a) => self::generate::run(a, &registry),
        Command::Inspect(a) => self::inspect::run(a),
        Command::Bench(a) => self::bench::run(a),
        Command::Align(a) => self::align::run(a, &registry),
        Command::Tune(a) => self::tune::run(a, &registry),
        Command::Merge(a) => self::merge::run(a),
        Command::Export(a) => self::export::run(a),
        Command::Recipes(a) => self::recipes::run(a),
        Command::Data(a) => self::data::run(a),
        Command::Eval(a) => self::eval::run(a, &registry),
        Command::Chat(a) => self::chat::run(a, &registry),
        Command::Serve(a) => self::serve::run(a, &registry),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, naming the file and what is wrong.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

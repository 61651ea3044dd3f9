//! `anymal`: teach a frozen 4-bit LLM to take in any modality.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use anymal::cli;

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
    Generate(cli::generate::GenerateArgs),
    /// Describe a model: architecture, tensor types, parameters, size, training memory.
    Inspect(cli::inspect::InspectArgs),
    /// Train a projector that aligns a modality (audio, ...) to the frozen LLM.
    Align(cli::align::AlignArgs),
    /// List and show the shipped recipes.
    Recipes(cli::recipes::RecipesArgs),
    /// Score a trained projector on a manifest: WER and CIDEr-D of greedy generations.
    Eval(cli::eval::EvalArgs),
    /// Build manifests for the corpora the project ships with.
    Data(cli::data::DataArgs),
    /// Measure QLinear, the decoder's forward+backward and generation speed on this machine.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Align(a) => cli::align::run(a),
        Command::Recipes(a) => cli::recipes::run(a),
        Command::Data(a) => cli::data::run(a),
        Command::Eval(a) => cli::eval::run(a),
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

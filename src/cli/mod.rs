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
    #[command(flatten)]
    limits: LimitArgs,
    /// On an error, print its whole chain with a backtrace (with RUST_BACKTRACE=1) instead
    /// of one line.
    #[arg(short, long, global = true)]
    verbose: bool,
}

/// Bounds on one input file, for every command; they win over a recipe's `[limits]`.
#[derive(clap::Args, Debug, Clone, Default)]
struct LimitArgs {
    /// Largest image or video frame accepted, in pixels (width x height) [default: 64000000].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    max_image_pixels: Option<u64>,
    /// Longest audio clip accepted, in seconds [default: 3600].
    #[arg(long, global = true, value_parser = positive_seconds)]
    max_audio_seconds: Option<f64>,
    /// Most rows of one IMU recording, as read and once resampled [default: 10000000].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    max_imu_rows: Option<u64>,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number of seconds, got '{s}'")),
    }
}

/// The `--max-...` flags given, kept for [`apply_limits`].
static LIMIT_FLAGS: std::sync::OnceLock<LimitArgs> = std::sync::OnceLock::new();

/// Sets the media bounds of the process: the defaults, under `recipe`'s `[limits]` when a
/// recipe is in use, under the `--max-...` flags.
pub fn apply_limits(recipe: Option<&crate::recipe::LimitsSection>) {
    let mut l = anymal_encoders::MediaLimits::default();
    if let Some(r) = recipe {
        l = r.over(l);
    }
    if let Some(f) = LIMIT_FLAGS.get() {
        l = crate::recipe::LimitsSection {
            max_image_pixels: f.max_image_pixels,
            max_audio_seconds: f.max_audio_seconds,
            max_imu_rows: f.max_imu_rows,
        }
        .over(l);
    }
    anymal_encoders::set_limits(l);
}

/// An error as one line: its chain joined with ": ", each cause once. Libraries that keep a
/// cause both in their message and as its source (`cannot read: Invalid argument` with the
/// same I/O error below it) would otherwise print it twice, and a multi-line message (a
/// backtrace candle attached, a parser's excerpt) is folded onto the line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
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
    if !cli.verbose {
        // Errors from candle capture a backtrace whenever RUST_BACKTRACE is set (common among
        // Rust users) and print it inside their message; library backtraces are for -v.
        // Panics keep RUST_BACKTRACE's. Set before any thread starts or any capture is made.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let _ = LIMIT_FLAGS.set(cli.limits.clone());
    apply_limits(None);
    let training = match &cli.command {
        Command::Align(_) | Command::Tune(_) => true,
        Command::Bench(b) => {
            !b.only.is_empty() && b.only.iter().all(|o| o == "align" || o == "train")
        }
        _ => false,
    };
    crate::system::configure_process(training);
    let cli_verbose = cli.verbose;
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
        Err(e) if cli_verbose => {
            eprintln!("error: {e:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            // One line: the context chain joined, naming the file and what is wrong.
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

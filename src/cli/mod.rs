pub mod align;
pub mod assistant_args;
pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod recipes;
pub mod serve;
pub mod tune;

use std::process::ExitCode;

use anymal_encoders::ModalityRegistry;
use anymal_llm::LoadOptions;
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
    keep_freed_memory();
    pin_thread_count();
    let cli = Cli::parse();
    let training = match &cli.command {
        Command::Align(_) | Command::Tune(_) => true,
        Command::Bench(b) => {
            !b.only.is_empty() && b.only.iter().all(|o| o == "align" || o == "train")
        }
        _ => false,
    };
    if training {
        no_spinning_workers();
    }
    let res = match cli.command {
        Command::Generate(a) => self::generate::run(a, &registry),
        Command::Inspect(a) => self::inspect::run(a),
        Command::Bench(a) => self::bench::run(a),
        Command::Align(a) => self::align::run(a, &registry),
        Command::Tune(a) => self::tune::run(a, &registry),
        Command::Merge(a) => self::merge::run(a),
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

use anymal_quant::QuantType;

/// Load options from the shared `--requant` flag.
pub fn load_options(requant: Option<&str>) -> anyhow::Result<LoadOptions> {
    let quant = requant.map(QuantType::parse).transpose()?;
    Ok(LoadOptions {
        quant,
        ..Default::default()
    })
}

/// glibc returns every freed block above 128 KiB to the OS and maps the next one fresh, so a
/// training step, which allocates the same activation-sized tensors every step, spent ~15% of
/// its time zeroing new pages (`clear_page_erms` in a profile). Blocks up to 32 MiB are kept
/// for reuse instead, and the heap is trimmed only above 256 MiB free.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// candle asks for its thread count on every matmul, and without `RAYON_NUM_THREADS` that
/// re-reads `/proc/cpuinfo` each time (~3% of a decoding step in a profile). Its answer is
/// computed once here and pinned in the variable, before any thread starts.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// candle's quantized-matmul and elementwise thread pool spins after each task (25k rounds) for
/// the next one, which suits decoding (hundreds of small ops per token) but in training steals
/// a core from the f32 GEMM's own threads: 11% of a step's samples were that spinning, and the
/// step ran ~10% faster without it. Only when the user has not chosen a value.
fn no_spinning_workers() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

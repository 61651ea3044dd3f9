//! `anymal`: teach a frozen 4-bit LLM to take in any modality.

use std::process::ExitCode;

use anymal_encoders::ModalityRegistry;

fn main() -> ExitCode {
    anymal::cli::main_with(ModalityRegistry::with_builtins())
}

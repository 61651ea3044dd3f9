//! Evaluation: metrics on generated text and the `anymal eval` runner.

pub mod cider;
pub mod run;
pub mod wer;

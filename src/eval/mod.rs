//! Evaluation: metrics on generated text and the `anymal eval` runner.

pub mod attribute;
pub mod cider;
pub mod run;
pub mod wer;

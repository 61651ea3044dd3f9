//! Evaluation: metrics on generated text and the `anymal eval` runner.

pub mod attribute;
pub mod batch;
pub mod cider;
pub mod instruct;
pub mod run;
pub mod wer;

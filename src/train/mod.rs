//! Training: the alignment loop and its parts.

pub mod align;
pub mod checkpoint;
pub mod feature_cache;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod schedule;

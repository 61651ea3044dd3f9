//! Training: the alignment loop (`align`), the instruction-tuning loop (`tune`) and their
//! shared parts.

pub mod align;
pub mod checkpoint;
pub mod data_order;
pub mod feature_cache;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod schedule;
pub mod tune;

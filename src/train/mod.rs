//! Training: one loop per recipe, the alignment loop ([`align`]) and the instruction-tuning
//! loop ([`tune`]), on shared pieces: the run's life around the step ([`run`]: folder, resume,
//! cadence, report), the step itself ([`step`]: micro-batches through the multimodal model,
//! gradients of the trainable parts), [`checkpoint`]s, AdamW with saved moments ([`optim`]),
//! the learning-rate [`schedule`], the seeded [`data_order`], the projector's start at the
//! [`embedding_scale`], [`metrics`], [`progress`] and the
//! loss [`plot`].

pub mod align;
pub mod checkpoint;
pub mod ctc;
pub mod ctc_warmup;
pub mod data_order;
pub mod embedding_scale;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod step;
pub mod tune;

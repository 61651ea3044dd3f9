//! `anymal serve`: an OpenAI-compatible chat completions server around one [`MultimodalModel`].
//!
//! [`openai`] turns requests into turns and media files ([`media`] decodes inline data),
//! [`worker`] answers them one at a time on the thread that owns the model, [`stop`] cuts
//! answers at stop strings, [`http`] is the axum router and [`error`] the OpenAI error shape.
//!
//! [`MultimodalModel`]: crate::multimodal::MultimodalModel

pub mod error;
pub mod http;
pub mod media;
pub mod openai;
pub mod stop;
pub mod worker;

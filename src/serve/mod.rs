//! `anymal serve`: an OpenAI-compatible chat completions server around one [`Assistant`].
//!
//! [`openai`] turns requests into turns and media files ([`media`] decodes inline data),
//! [`worker`] answers them one at a time on the thread that owns the model, [`stop`] cuts
//! answers at stop strings, [`http`] is the axum router and [`error`] the OpenAI error shape.
//!
//! [`Assistant`]: crate::assistant::Assistant

pub mod error;
pub mod http;
pub mod media;
pub mod openai;
pub mod stop;
pub mod worker;

//! anymal-encoders: the frozen modality encoders (audio, image, video, IMU) the toolkit aligns
//! to an LLM, behind one plug-in API.
//!
//! # Layout
//! One folder per modality, each ending in a `modality.rs` that plugs it into the toolkit:
//! - [`audio`]: decoding (symphonia), 16 kHz resampling, Whisper's log-mel, the Whisper encoder;
//! - [`image`]: decoding, preprocessing, the ImageNet CNNs and CLIP/SigLIP towers;
//! - `video` (with the `video` feature): FFmpeg decoding of frames sampled by time and of
//!   soundtracks; frames go through the image encoders;
//! - [`imu`]: CSV and `.ts` sensor recordings, resampled, windowed and normalised.
//!
//! # Plug-in API
//! [`modality`]: a [`Modality`] reads one kind of input from a file and builds its frozen
//! [`Encoder`]; [`ModalityRegistry`] ([`registry`]) holds the built-in ones and any a user
//! registers. The rest of the toolkit sees only [`AnyModality`] and [`FileEncoder`] (files in,
//! features out), so a new modality is one `impl Modality` and one `register` call.
//!
//! # Errors
//! One [`Error`] type ([`error`]): problems with a file name the file (unreadable, corrupt,
//! unsupported codec, bad cell...); the rest are typed by condition (a bad `[encoder.options]`
//! field, an unknown modality or encoder, a shape mismatch, an empty input), with
//! [`Error::InvalidArgument`] left for values the calling code passes out of range.

pub mod audio;
pub mod error;
pub mod image;
pub mod imu;
pub mod limits;
pub mod modality;
pub mod registry;
#[cfg(feature = "video")]
pub mod video;

pub use error::{Error, Result};
pub use limits::{limits, set_limits, MediaLimits};
pub use modality::{
    AnyModality, Batch, Encoder, EncoderContext, FileEncoder, MediaInput, Modality,
};
pub use registry::ModalityRegistry;

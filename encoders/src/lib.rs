//! anymal-encoders: frozen modality encoders (audio, image, video, IMU) and the `Modality`
//! trait they implement.
//!
//! # Plug-in API
//! A [`Modality`] reads one kind of input from a file and builds its frozen [`Encoder`];
//! [`ModalityRegistry`] holds the built-in ones and any a user registers. The rest of the
//! toolkit sees only [`AnyModality`] and [`FileEncoder`] (files in, features out).
//!
//! # Audio
//! [`audio::load_audio_16k`] decodes a file (WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A; not Opus),
//! averages its channels to mono and resamples it to 16 kHz with a windowed-sinc filter.
//! [`audio::WhisperEncoder`] turns those samples into `(n_frames, d_model)` features with a
//! frozen Whisper encoder (CTranslate2 `model.bin` or HF safetensors weights).
//!
//! Clips shorter than 30 s: Whisper was trained on 30 s windows only, so the clip is padded
//! with zeros to 30 s before the log-mel (exactly as `whisper.pad_or_trim` does), the encoder
//! produces its 1500 frames (20 ms each), and only the `ceil(n / 320)` frames that carry audio
//! are kept; the rest describe padding and are dropped. Clips longer than 30 s are encoded in
//! consecutive 30 s windows whose kept frames are concatenated.

pub mod audio;
pub mod error;
pub mod image;
pub mod imu;
pub mod modality;
pub mod registry;
#[cfg(feature = "video")]
pub mod video;

pub use error::{Error, Result};
pub use modality::{AnyModality, Batch, Encoder, EncoderContext, FileEncoder, Modality};
pub use registry::ModalityRegistry;

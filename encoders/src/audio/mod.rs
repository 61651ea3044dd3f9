//! Audio: decoding (`decode`), resampling (`resample`), Whisper's log-mel front end (`mel`),
//! the CTranslate2 weight reader (`ct2`), the frozen Whisper encoder (`whisper`) and the
//! [`AudioModality`] that plugs them into the toolkit (`modality`).

pub mod ct2;
pub mod decode;
pub mod mel;
pub mod modality;
pub mod resample;
pub mod whisper;

use std::path::Path;

pub use decode::{decode_file, DecodedAudio};
pub use mel::{log_mel_spectrogram, mel_filters, N_FRAMES, N_SAMPLES};
pub use modality::AudioModality;
pub use resample::resample;
pub use whisper::{resolve_encoder_ref, WhisperEncoder};

use crate::error::Result;

/// Sample rate every audio encoder here consumes.
pub const SAMPLE_RATE: u32 = 16_000;

/// Decodes `path`, downmixes to mono and resamples to 16 kHz: `(n,)` f32 samples.
pub fn load_audio_16k(path: &Path) -> Result<Vec<f32>> {
    let decoded = decode_file(path)?;
    resample(&decoded.samples, decoded.sample_rate, SAMPLE_RATE)
}

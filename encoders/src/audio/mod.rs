//! Audio: decoding (`decode`), resampling (`resample`), Whisper's log-mel front end (`mel`),
//! the CTranslate2 weight reader (`ct2`), the frozen Whisper encoder (`whisper`) and the
//! [`AudioModality`] that plugs them into the toolkit (`modality`).
//!
//! [`load_audio_16k`] decodes a file (WAV, FLAC, MP3, Ogg Vorbis, AAC/M4A; not Opus),
//! averages its channels to mono and resamples it to 16 kHz with a windowed-sinc filter.
//! [`WhisperEncoder`] turns those samples into `(n_frames, d_model)` features with a frozen
//! Whisper encoder (CTranslate2 `model.bin` or HF safetensors weights).
//!
//! Clips shorter than 30 s: Whisper was trained on 30 s windows only, so the clip is padded
//! with zeros to 30 s before the log-mel (exactly as `whisper.pad_or_trim` does), the encoder
//! produces its 1500 frames (20 ms each), and only the `ceil(n / 320)` frames that carry audio
//! are kept; the rest describe padding and are dropped. Clips longer than 30 s are encoded in
//! consecutive 30 s windows whose kept frames are concatenated.

pub mod ct2;
pub mod decode;
pub mod mel;
pub mod modality;
pub mod resample;
pub mod whisper;

use std::path::Path;

pub use decode::{decode_bytes, decode_file, DecodedAudio};
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

/// [`load_audio_16k`] on a file's bytes already in memory; `name` names them in errors.
pub fn load_audio_16k_bytes(bytes: &[u8], name: &Path) -> Result<Vec<f32>> {
    let decoded = decode_bytes(bytes, name)?;
    resample(&decoded.samples, decoded.sample_rate, SAMPLE_RATE)
}

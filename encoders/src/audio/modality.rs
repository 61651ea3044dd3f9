//! Audio as a [`Modality`]: files decode to 16 kHz mono samples; Whisper's encoder turns
//! their 30 s log-mel windows into frames.

use std::path::Path;

use candle_core::Tensor;

use super::whisper::{resolve_encoder_ref_in, Context};
use super::{load_audio_16k, load_audio_16k_bytes, WhisperEncoder};
use crate::modality::{Batch, Encoder, EncoderContext, Modality};
use crate::{Error, Result};

/// `[encoder.options]` of the audio modality.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioOptions {
    /// `window` (each clip padded to Whisper's 30 s), `clip` (its own length, rounded up to
    /// 0.5 s) or `full_window` (30 s windows with every frame kept, as llama.cpp runs an
    /// exported projector); see [`Context`].
    #[serde(default)]
    pub context: Context,
}

/// The built-in audio modality (`<audio>`, manifest key `audio`).
#[derive(Debug, Clone, Default)]
pub struct AudioModality {
    pub options: AudioOptions,
}

impl Modality for AudioModality {
    /// 16 kHz mono samples.
    type Item = Vec<f32>;

    fn name(&self) -> &str {
        "audio"
    }

    fn default_extension(&self) -> Option<&str> {
        Some("wav")
    }

    fn configure(&self, ctx: &EncoderContext) -> Result<Self> {
        Ok(Self {
            options: ctx.parse_options("audio")?,
        })
    }

    /// symphonia first; with the `video` feature, a codec or layout it lacks (5.1 AAC, Opus, a
    /// film's soundtrack) is decoded by FFmpeg instead.
    fn load(&self, path: &Path) -> Result<Vec<f32>> {
        match load_audio_16k(path) {
            #[cfg(feature = "video")]
            Err(Error::UnsupportedCodec { .. }) => crate::video::decode_audio_16k_mono(path),
            other => other,
        }
    }

    /// symphonia only: FFmpeg reads files.
    fn load_bytes(&self, bytes: &[u8], name: &Path) -> Result<Vec<f32>> {
        load_audio_16k_bytes(bytes, name)
    }

    fn build_encoder(
        &self,
        reference: &str,
        ctx: &EncoderContext,
    ) -> Result<Box<dyn Encoder<Vec<f32>>>> {
        let path = resolve_encoder_ref_in(reference, &ctx.cache_dir)?;
        Ok(Box::new(
            WhisperEncoder::load(&path, &ctx.device)?.with_context(self.options.context),
        ))
    }
}

impl Encoder<Vec<f32>> for WhisperEncoder {
    fn id(&self) -> &str {
        WhisperEncoder::id(self)
    }

    fn hidden_size(&self) -> usize {
        WhisperEncoder::hidden_size(self)
    }

    /// `(w, n_mels, 3000)`: every clip's 30 s windows, clip after clip; lengths in samples.
    fn preprocess(&self, items: &[Vec<f32>]) -> Result<Batch> {
        let clips: Vec<&[f32]> = items.iter().map(|v| v.as_slice()).collect();
        Ok(Batch {
            input: self.log_mel_windows(&clips)?,
            lengths: items.iter().map(|v| v.len()).collect(),
        })
    }

    fn encode(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        if batch.lengths.is_empty() {
            return Err(Error::EmptyInput {
                what: "empty audio batch".into(),
            });
        }
        self.encode_windows(&batch.input, &batch.lengths)
    }
}

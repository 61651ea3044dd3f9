//! Decoding an audio file into mono f32 samples with symphonia (pure Rust).
//!
//! Handled: WAV (8/16/24/32-bit integer and 32/64-bit float PCM), FLAC, MP3, Ogg Vorbis,
//! AAC in MP4/M4A or ADTS, ALAC, AIFF, CAF. Not handled: Opus (symphonia 0.6 ships no Opus
//! decoder), which is reported as an unsupported codec rather than decoded wrongly.

use std::fs::File;
use std::path::Path;

use symphonia::core::codecs::audio::well_known::{CODEC_ID_OPUS, CODEC_ID_SPEEX};
use symphonia::core::codecs::audio::{AudioCodecId, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use crate::error::{Error, Result};

/// A decoded clip: `samples` is mono (the mean of all channels), `(n,)` at `sample_rate`;
/// `channels` is how many channels the file had before the downmix.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub channels: usize,
}

impl DecodedAudio {
    /// Length of the clip in seconds.
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate.max(1) as f64
    }
}

/// Decodes `path` to mono f32 in [-1, 1] at the file's own sample rate.
///
/// Encoder delay and padding: symphonia 0.6 has no `enable_gapless` switch any more; its
/// demuxers state delay/padding as per-packet trim (`Packet::trim_start`/`trim_end`, from the
/// LAME/Xing header of MP3s and the granule positions of Ogg) and the MP3 and Vorbis decoders
/// drop those frames themselves, so what comes back is the clip without them. AAC in MP4
/// carries its priming samples in an edit list that symphonia 0.6 does not read: such clips
/// keep about 1024 leading (near-silent) samples.
///
/// A stream that breaks off after some packets decoded (a truncated download) is returned with
/// what was decoded; a file whose header cannot be parsed, or that decodes to nothing, is an
/// error.
pub fn decode_file(path: &Path) -> Result<DecodedAudio> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory"),
        });
    }
    decode_source(Box::new(file), path)
}

/// [`decode_file`] on a file's bytes already in memory (a Parquet row's embedded audio);
/// `name` names them in errors, and its extension, if any, hints the format.
pub fn decode_bytes(bytes: &[u8], name: &Path) -> Result<DecodedAudio> {
    if bytes.is_empty() {
        return Err(Error::Empty {
            path: name.to_path_buf(),
        });
    }
    decode_source(Box::new(std::io::Cursor::new(bytes.to_vec())), name)
}

fn decode_source(source: Box<dyn MediaSource>, path: &Path) -> Result<DecodedAudio> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let unsupported = |what: String| Error::UnsupportedCodec {
        path: path.to_path_buf(),
        what,
    };

    let mss = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(what) => {
                unsupported(format!("no container format recognised ({what})"))
            }
            other => corrupt(format!("cannot read the container header: {other}")),
        })?;

    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| corrupt("the file has no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| corrupt("the audio track has no codec parameters".into()))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(_) => unsupported(codec_name(params.codec)),
            other => corrupt(format!("cannot set up the decoder: {other}")),
        })?;

    let mut sample_rate = params.sample_rate;
    let mut channels = params.channels.as_ref().map(|c| c.count());
    let mut mono: Vec<f32> = Vec::new();
    let mut planes: Vec<Vec<f32>> = Vec::new();
    // The first error that ended decoding early; kept to explain an empty result.
    let mut stopped: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                // An unexpected EOF or a broken packet after good ones: keep what decoded.
                stopped = Some(e.to_string());
                break;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            // One damaged packet in a long stream is skipped, as players do.
            Err(SymError::DecodeError(what)) => {
                stopped.get_or_insert_with(|| format!("malformed packet: {what}"));
                continue;
            }
            Err(e) => {
                stopped = Some(e.to_string());
                break;
            }
        };
        let spec = buf.spec();
        let n_ch = spec.channels().count();
        if n_ch == 0 {
            return Err(corrupt("a decoded packet has zero channels".into()));
        }
        sample_rate.get_or_insert(spec.rate());
        channels.get_or_insert(n_ch);
        if sample_rate != Some(spec.rate()) {
            return Err(corrupt(format!(
                "the sample rate changes mid-stream ({:?} Hz then {} Hz)",
                sample_rate,
                spec.rate()
            )));
        }
        buf.copy_to_vecs_planar(&mut planes);
        let frames = buf.frames();
        // Mean over channels: a plain average keeps a mono signal duplicated on both
        // channels at its original level (a sum would double it).
        let scale = 1.0 / n_ch as f32;
        let start = mono.len();
        mono.resize(start + frames, 0.0);
        for plane in planes.iter().take(n_ch) {
            for (dst, &s) in mono[start..].iter_mut().zip(plane.iter()) {
                *dst += s * scale;
            }
        }
    }

    let sample_rate = check_decoded(path, &mono, sample_rate, stopped)?;
    Ok(DecodedAudio {
        samples: mono,
        sample_rate,
        channels: channels.unwrap_or(1),
    })
}

/// The last checks of a decode, shared with FFmpeg's soundtrack decoder
/// (`crate::video::audio`): some samples (else the first `problem` met explains why there are
/// none, or the file is [`Error::Empty`]), a stated sample rate, which it returns, and no NaN or
/// infinity.
pub(crate) fn check_decoded(
    path: &Path,
    samples: &[f32],
    sample_rate: Option<u32>,
    problem: Option<String>,
) -> Result<u32> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    if samples.is_empty() {
        return match problem {
            Some(why) => Err(corrupt(format!("no audio could be decoded: {why}"))),
            None => Err(Error::Empty {
                path: path.to_path_buf(),
            }),
        };
    }
    let sample_rate = match sample_rate {
        Some(r) if r > 0 => r,
        _ => return Err(corrupt("the stream does not state a sample rate".into())),
    };
    if samples.iter().any(|s| !s.is_finite()) {
        return Err(corrupt("decoded samples contain NaN or infinity".into()));
    }
    Ok(sample_rate)
}

/// A readable name for codecs users are likely to meet but that symphonia cannot decode.
fn codec_name(id: AudioCodecId) -> String {
    if id == CODEC_ID_OPUS {
        "Opus (not supported by the decoder; convert to FLAC, WAV or Vorbis)".into()
    } else if id == CODEC_ID_SPEEX {
        "Speex".into()
    } else {
        format!("codec id {id}")
    }
}

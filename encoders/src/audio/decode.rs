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
use crate::limits::{check_audio_length, check_audio_rate};

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
/// Errors name the file: a header that cannot be parsed, a sample rate outside
/// [`AUDIO_RATE_RANGE_HZ`], a clip longer than [`MediaLimits::max_audio_seconds`] (decoding
/// stops there), a stream that breaks off or holds less than its header states (a truncated
/// download: an error rather than half a clip), nothing decoded.
///
/// [`MediaLimits::max_audio_seconds`]: crate::MediaLimits
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
    let declared_frames = track.num_frames;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| corrupt("the audio track has no codec parameters".into()))?
        .clone();
    if let Some(rate) = params.sample_rate {
        check_audio_rate(path, rate)?;
    }
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(_) => unsupported(codec_name(params.codec)),
            other => corrupt(format!("cannot set up the decoder: {other}")),
        })?;

    let mut sample_rate = params.sample_rate;
    let mut channels = params.channels.as_ref().map(|c| c.count());
    let bytes_per_frame = channels.unwrap_or(1) as u64
        * u64::from(
            params
                .bits_per_coded_sample
                .or(params.bits_per_sample)
                .unwrap_or(0),
        )
        / 8;
    // A stream of unknown length ends at the end of the file, whatever the demuxer says.
    let open_ended = declared_frames
        .is_some_and(|n| is_placeholder_length(n.saturating_mul(bytes_per_frame), bytes_per_frame));
    let declared_frames = declared_frames.filter(|_| !open_ended);
    let mut mono: Vec<f32> = Vec::new();
    let mut planes: Vec<Vec<f32>> = Vec::new();
    // The first error that ended decoding early; kept to explain an empty result.
    let mut stopped: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymError::IoError(e))
                if open_ended && e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                break
            }
            Err(e) => {
                // An unexpected EOF or a broken packet after good ones (judged at the end).
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
        if sample_rate.is_none() {
            check_audio_rate(path, spec.rate())?;
            sample_rate = Some(spec.rate());
        }
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
        check_audio_length(path, mono.len(), spec.rate())?;
    }

    let sample_rate = check_decoded(path, &mono, sample_rate, stopped.clone())?;
    check_complete(path, mono.len(), declared_frames, sample_rate, stopped)?;
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

/// Whether a declared data length of `bytes` (frames of `frame_bytes` each) is a writer's
/// placeholder for "unknown" rather than a length: WAV writers that cannot seek back (ffmpeg
/// or sox writing to a pipe) leave the largest 32-bit value, unsigned or signed, or sox's
/// 0x7ffff000. Any other length is a claim the data must meet.
fn is_placeholder_length(bytes: u64, frame_bytes: u64) -> bool {
    [u64::from(u32::MAX), i32::MAX as u64, 0x7fff_f000]
        .iter()
        .any(|&p| bytes <= p && bytes + frame_bytes.max(1) > p)
}

/// A clip that stops before its end is an error, not the part that decoded: training on half a
/// recording against its whole transcript teaches the projector wrong words. Evidence of a
/// cut: the demuxer broke off with an error (`stopped`), or the header states a length
/// (`declared` frames) the data falls short of by more than 2% + 50 ms (slack for encoder
/// padding and estimated MP3 lengths).
fn check_complete(
    path: &Path,
    decoded: usize,
    declared: Option<u64>,
    rate: u32,
    stopped: Option<String>,
) -> Result<()> {
    let secs = |n: f64| n / f64::from(rate);
    let short = declared.filter(|&d| (decoded as f64) < d as f64 * 0.98 - 0.05 * f64::from(rate));
    if let Some(d) = short {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: format!(
                "truncated: the header states {:.2} s of audio but the data holds {:.2} s",
                secs(d as f64),
                secs(decoded as f64)
            ),
        });
    }
    // A stream that reaches its stated length and then fails (trailing junk) is complete.
    if let (Some(why), None) = (stopped, declared) {
        if !why.starts_with("malformed packet") {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                what: format!(
                    "truncated or damaged: the stream breaks off at {:.2} s ({why})",
                    secs(decoded as f64)
                ),
            });
        }
    }
    Ok(())
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

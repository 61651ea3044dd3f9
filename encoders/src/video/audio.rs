//! A video's soundtrack as 16 kHz mono, decoded with FFmpeg.
//!
//! The audio module's symphonia decoder reads AAC in MP4, but only mono and stereo: film
//! soundtracks are often 5.1 (Big Buck Bunny's is), which it refuses. FFmpeg decodes any
//! layout; libswresample downmixes it to mono with the standard surround coefficients
//! (centre at full level, fronts and surrounds at -3 dB, LFE left out), normalised so the
//! weights sum to one (stereo becomes the mean of left and right, as in
//! [`crate::audio::load_audio_16k`]), and the audio module's windowed-sinc resampler brings it
//! to 16 kHz, so both paths produce the same kind of samples.

use std::path::Path;

use ffmpeg_next as ffmpeg;

use ffmpeg::format::sample::{Sample, Type as SampleType};
use ffmpeg::media::Type as MediaType;
use ffmpeg::software::resampling;
use ffmpeg::util::frame::audio::Audio as AvAudio;
use ffmpeg::{ChannelLayout, Dictionary, Packet};

use super::input::{codec_context, decoder_open_error, open_input, receive_frames};
use crate::audio::decode::check_decoded;
use crate::audio::{resample, SAMPLE_RATE};
use crate::error::{Error, Result};
use crate::limits::{check_audio_length, check_audio_rate};

/// Decodes the first audio stream of `path` (any container and codec FFmpeg reads), mixes it
/// down to mono and resamples it to 16 kHz: `(n,)` f32 samples.
///
/// Errors name the file: unreadable, not media, no audio stream, a codec FFmpeg lacks, a
/// stream that breaks off (the samples before the break are kept, as the audio module does,
/// unless there are none) or decodes to nothing.
pub fn decode_audio_16k_mono(path: &Path) -> Result<Vec<f32>> {
    let (samples, rate) = decode_audio_mono(path)?;
    resample(&samples, rate, SAMPLE_RATE)
}

/// Decodes the first audio stream of `path` to mono f32 at its own rate: (samples, rate).
pub fn decode_audio_mono(path: &Path) -> Result<(Vec<f32>, u32)> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let mut ictx = open_input(path)?;
    let stream = ictx
        .streams()
        .best(MediaType::Audio)
        .ok_or_else(|| corrupt("the file has no audio track".into()))?;
    let index = stream.index();
    let ctx = codec_context(&stream, path)?;
    let codec_id = ctx.id();
    let mut decoder = ctx
        .decoder()
        .audio()
        .map_err(|e| decoder_open_error(e, codec_id, "audio", path))?;

    let mut mono: Vec<f32> = Vec::new();
    let mut rate: Option<u32> = None;
    let mut mixer: Option<Mixer> = None;
    // The first problem met, to explain an empty result.
    let mut problem: Option<String> = None;
    let mut frame = AvAudio::empty();
    let mut packet = Packet::empty();
    let mut take = |frame: &AvAudio, mono: &mut Vec<f32>| -> Result<()> {
        match rate {
            None => {
                check_audio_rate(path, frame.rate())?;
                rate = Some(frame.rate());
            }
            Some(r) if r != frame.rate() => {
                return Err(corrupt(format!(
                    "the sample rate changes mid-stream ({r} Hz then {} Hz)",
                    frame.rate()
                )))
            }
            Some(_) => {}
        }
        if !mixer.as_ref().is_some_and(|m| m.fits(frame)) {
            mixer = Some(Mixer::new(frame).map_err(&corrupt)?);
        }
        if let Some(m) = mixer.as_mut() {
            m.run(frame, mono).map_err(&corrupt)?;
        }
        check_audio_length(path, mono.len(), frame.rate())
    };
    let mut ended = false;
    while !ended {
        match packet.read(&mut ictx) {
            Ok(()) => {
                if packet.stream() != index {
                    continue;
                }
                if let Err(e) = decoder.send_packet(&packet) {
                    problem.get_or_insert_with(|| format!("the decoder rejected a packet ({e})"));
                    continue;
                }
            }
            Err(ffmpeg::Error::Eof) => {
                ended = true;
                let _ = decoder.send_eof();
            }
            Err(ffmpeg::Error::InvalidData) => {
                problem.get_or_insert_with(|| "the demuxer rejected a packet".into());
                continue;
            }
            Err(e) => {
                problem.get_or_insert_with(|| format!("reading the file failed ({e})"));
                ended = true;
                let _ = decoder.send_eof();
            }
        }
        receive_frames(&mut decoder, &mut frame, &mut problem, |f| {
            take(f, &mut mono).map(|()| true)
        })?;
    }
    let rate = check_decoded(path, &mono, rate, problem)?;
    Ok((mono, rate))
}

/// libswresample from one input format and layout to packed f32 mono at the same rate.
struct Mixer {
    ctx: resampling::Context,
    src: (Sample, ChannelLayout, u32),
}

impl Mixer {
    fn layout(frame: &AvAudio) -> ChannelLayout {
        // Some decoders leave the layout unset and state only a channel count.
        let l = frame.channel_layout();
        if l.bits() == 0 || l.channels() != i32::from(frame.channels()) {
            ChannelLayout::default(i32::from(frame.channels()))
        } else {
            l
        }
    }

    fn new(frame: &AvAudio) -> std::result::Result<Self, String> {
        let layout = Self::layout(frame);
        let mut opts = Dictionary::new();
        // Normalise the downmix weights to sum to one: float output would otherwise keep
        // them as they are and a loud 5.1 mix could exceed full scale.
        opts.set("rematrix_maxval", "1.0");
        let ctx = resampling::Context::get_with(
            frame.format(),
            layout,
            frame.rate(),
            Sample::F32(SampleType::Packed),
            ChannelLayout::MONO,
            frame.rate(),
            opts,
        )
        .map_err(|e| {
            format!(
                "swresample cannot mix {:?} {} channels at {} Hz to mono: {e}",
                frame.format(),
                frame.channels(),
                frame.rate()
            )
        })?;
        Ok(Self {
            ctx,
            src: (frame.format(), layout, frame.rate()),
        })
    }

    fn fits(&self, frame: &AvAudio) -> bool {
        self.src == (frame.format(), Self::layout(frame), frame.rate())
    }

    fn run(&mut self, frame: &AvAudio, mono: &mut Vec<f32>) -> std::result::Result<(), String> {
        if frame.samples() == 0 {
            return Ok(());
        }
        // No rate change, so one output sample per input sample: a fresh frame of the
        // input's length holds all of it.
        let mut out = AvAudio::empty();
        self.ctx
            .run(frame, &mut out)
            .map_err(|e| format!("swresample failed: {e}"))?;
        let n = out.samples();
        let data = out.data(0);
        if data.len() < n * 4 {
            return Err("swresample returned a short buffer".into());
        }
        mono.extend(
            data[..n * 4]
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }
}

//! Decoding a video file into RGB frames with FFmpeg (the system's libavformat, libavcodec and
//! libswscale, through `ffmpeg-next`): the entry points and the decode loop.
//!
//! Handled: whatever the installed FFmpeg demuxes and decodes; tested on H.264 in MP4 and MOV,
//! VP8 and VP9 in WebM, H.264 in MKV. Frames are picked by time ([`FrameSampling`]): the decoder
//! runs forward through the stream and keeps, for every target time, the decoded frame whose
//! presentation time is nearest to it (`picker`). Long gaps between targets are skipped
//! by seeking to the keyframe before the next target ([`DecodeOptions::seek`]), so 8 frames of a
//! long film cost about 8 GOPs of decoding rather than the whole film.
//!
//! Colour: frames are converted to RGB24 with the matrix and range the stream declares, at the
//! coded size (as torchvision, PyAV and decord return them; non-square pixels are reported in
//! [`Video::pixel_aspect`], not stretched), optionally downscaled so the longer side fits
//! [`DecodeOptions::max_side`] (`scale`).
//!
//! Damage: a packet the decoder rejects is skipped, as players do. A stream that breaks off
//! (a truncated download: the container's index points past the end of the file) before the
//! requested times is an error rather than a set of frames padded with the last good one.
//!
//! Opening the file and its decoder is `input`'s job, reading the stream headers
//! [`super::probe`]'s.

use std::fmt;
use std::path::Path;

use ffmpeg_next as ffmpeg;

use ffmpeg::codec::threading;
use ffmpeg::format::context::Input;
use ffmpeg::util::frame::video::Video as AvFrame;
use ffmpeg::Packet;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::input::{codec_context, decoder_open_error, open_input, receive_frames};
use super::picker::Picker;
use super::probe::{has_audio, scan_duration, StreamInfo};
use super::sampling::FrameSampling;
use crate::error::{Error, Result};

/// How frames are produced, beside which frames ([`FrameSampling`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeOptions {
    /// Downscale (never upscale) so the longer side is at most this many pixels, keeping the
    /// aspect ratio; `None` keeps the display size. Limits memory for HD and 4K sources.
    pub max_side: Option<u32>,
    /// Seek to the keyframe before a target instead of decoding through a long gap. Off, the
    /// stream is decoded from the start; both pick the same frames.
    pub seek: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_side: None,
            seek: true,
        }
    }
}

/// Decoded frames of one clip and what the file says about it.
#[derive(Clone)]
pub struct Video {
    /// The sampled frames, in time order, all `width` x `height`.
    pub frames: Vec<RgbImage>,
    /// Presentation time of each frame, seconds from the start of the video stream.
    pub timestamps_s: Vec<f64>,
    /// The stream's average frame rate; 0 when the file does not say.
    pub fps: f64,
    /// Length of the video stream in seconds (of the container when the stream does not say).
    pub duration_s: f64,
    /// Size of the returned frames (the coded size, after `max_side`).
    pub width: u32,
    pub height: u32,
    /// Coded size of the stream's pictures.
    pub source_width: u32,
    pub source_height: u32,
    /// Width / height of one pixel as the file states it (1 for square pixels; 128:117 for
    /// PAL QCIF, say): a player shows the frames `pixel_aspect` times wider.
    pub pixel_aspect: f64,
    /// Whether the file also carries an audio stream (decode it with
    /// [`crate::audio::load_audio_16k`]).
    pub has_audio: bool,
}

impl fmt::Debug for Video {
    // The derived form would print every pixel.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Video")
            .field("frames", &self.frames.len())
            .field("timestamps_s", &self.timestamps_s)
            .field("fps", &self.fps)
            .field("duration_s", &self.duration_s)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("source_width", &self.source_width)
            .field("source_height", &self.source_height)
            .field("pixel_aspect", &self.pixel_aspect)
            .field("has_audio", &self.has_audio)
            .finish()
    }
}

/// Decodes the frames `sampling` asks for from `path`, at display size, seeking across long
/// gaps. See [`decode_frames_with`].
pub fn decode_frames(path: &Path, sampling: &FrameSampling) -> Result<Video> {
    decode_frames_with(path, sampling, &DecodeOptions::default())
}

/// Decodes the frames `sampling` asks for from `path`.
///
/// Errors name the file: missing or unreadable ([`Error::Io`]), not a media file
/// ([`Error::NotMedia`]), no video stream ([`Error::NoVideoStream`]), a codec the installed
/// FFmpeg cannot decode ([`Error::UnsupportedCodec`]), a truncated or damaged stream
/// ([`Error::Corrupt`]), no frame at all ([`Error::NoVideoFrames`]).
pub fn decode_frames_with(
    path: &Path,
    sampling: &FrameSampling,
    opts: &DecodeOptions,
) -> Result<Video> {
    sampling.validate()?;
    if opts.max_side == Some(0) {
        return Err(Error::InvalidArgument("max_side must be at least 1".into()));
    }
    let mut ictx = open_input(path)?;
    let has_audio = has_audio(&ictx);
    let info = StreamInfo::of(&ictx, path)?;

    let duration_s = match info.duration_s {
        Some(d) => d,
        // No duration in the headers (a streamed WebM, a raw elementary stream): read the
        // packets once without decoding to find where the stream ends, then start over.
        None => {
            let d = scan_duration(&mut ictx, &info).ok_or_else(|| Error::NoVideoFrames {
                path: path.to_path_buf(),
            })?;
            ictx = open_input(path)?;
            d
        }
    };
    let targets = sampling.targets(duration_s);

    let mut decoder = open_decoder(&ictx, info.index, path)?;
    // Frames are decoded at their own size before any downscale: bound it first.
    crate::limits::check_image_pixels(decoder.width(), decoder.height(), path)?;
    let mut picker = Picker::new(targets, opts.max_side);
    run(
        &mut ictx,
        &mut decoder,
        &info,
        opts,
        &mut picker,
        duration_s,
        path,
    )?;

    let (width, height) = picker.out_size.unwrap_or((0, 0));
    let (frames, timestamps_s): (Vec<RgbImage>, Vec<f64>) = picker.chosen.into_iter().unzip();
    Ok(Video {
        frames,
        timestamps_s,
        fps: info.fps,
        duration_s,
        width,
        height,
        source_width: picker.source_size.0,
        source_height: picker.source_size.1,
        pixel_aspect: picker.pixel_aspect,
        has_audio,
    })
}

/// A decoder for stream `index`, frame-threaded over the machine's cores.
fn open_decoder(ictx: &Input, index: usize, path: &Path) -> Result<ffmpeg::decoder::Video> {
    let stream = ictx.stream(index).ok_or_else(|| Error::NoVideoStream {
        path: path.to_path_buf(),
    })?;
    let mut ctx = codec_context(&stream, path)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);
    ctx.set_threading(threading::Config {
        kind: threading::Type::Frame,
        count: threads,
        ..Default::default()
    });
    let codec_id = ctx.id();
    let mut decoder = ctx.decoder();
    decoder.set_packet_time_base(stream.time_base());
    decoder
        .video()
        .map_err(|e| decoder_open_error(e, codec_id, "video", path))
}

/// Seek only across gaps longer than this, or than twice the longest keyframe interval seen:
/// a seek lands on a keyframe up to a GOP before the target, so shorter gaps decode faster
/// straight through.
const SEEK_MIN_GAP_S: f64 = 2.0;

/// Reads, decodes and offers frames to `picker` until every target has its frame.
fn run(
    ictx: &mut Input,
    decoder: &mut ffmpeg::decoder::Video,
    info: &StreamInfo,
    opts: &DecodeOptions,
    picker: &mut Picker,
    duration_s: f64,
    path: &Path,
) -> Result<()> {
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let mut packet = Packet::empty();
    let mut frame = AvFrame::empty();
    // The first problem met (a packet the demuxer or decoder rejected), kept to explain a
    // stream that ends early.
    let mut problem: Option<String> = None;
    let mut last_key_s: Option<f64> = None;
    let mut max_gop_s: f64 = 0.0;
    // Where the last seek was meant to land, to learn how far back its keyframe was.
    let mut seek_target: Option<f64> = None;
    // Frame numbering for streams without timestamps.
    let mut n_decoded = 0usize;

    // The target index a seek was last made for: one seek per target, or the loop would seek
    // again before the frames of the first seek come out.
    let mut sought: Option<usize> = None;
    while !picker.done() {
        if opts.seek && sought != Some(picker.next_index()) {
            if let Some(target) = picker.next_target() {
                let pos = picker.position().unwrap_or(0.0);
                let gap = SEEK_MIN_GAP_S.max(2.0 * max_gop_s);
                if target - pos > gap {
                    sought = Some(picker.next_index());
                    // Land a little before the target: with B-frames a keyframe's display time
                    // can be later than its decode time, which is what the index holds.
                    let margin = if info.fps > 0.0 { 2.0 / info.fps } else { 0.1 };
                    // avformat_seek_file without a stream index takes absolute microseconds.
                    let abs_s =
                        (target - margin).max(0.0) + info.start as f64 * f64::from(info.time_base);
                    let to_us = (abs_s * ffmpeg::ffi::AV_TIME_BASE as f64) as i64;
                    // A failed seek (an unseekable format) just means decoding on. `..to_us` is
                    // FFmpeg's max_ts, which is inclusive: land on a keyframe at or before it.
                    if ictx.seek(to_us, ..to_us).is_ok() {
                        decoder.flush();
                        seek_target = Some(target);
                    }
                }
            }
        }

        let ended = match packet.read(ictx) {
            Ok(()) => false,
            Err(ffmpeg::Error::Eof) => true,
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => continue,
            // "partial file" from the MP4 demuxer (its index points past the end) and damaged
            // Matroska clusters come back as InvalidData; the demuxer moves on at the next read.
            Err(e @ ffmpeg::Error::InvalidData) => {
                problem.get_or_insert_with(|| format!("the demuxer rejected a packet ({e})"));
                continue;
            }
            Err(e) => {
                problem.get_or_insert_with(|| format!("reading the file failed ({e})"));
                true
            }
        };
        if ended {
            // Drain the frames the decoder still holds (B-frame reordering, frame threads).
            if decoder.send_eof().is_err() {
                break;
            }
        } else {
            if packet.stream() != info.index {
                continue;
            }
            if packet.is_key() {
                if let Some(t) = packet.pts().or(packet.dts()).map(|ts| info.seconds(ts)) {
                    if let Some(target) = seek_target.take() {
                        // Everything between this keyframe and the target was a GOP.
                        max_gop_s = max_gop_s.max(target - t);
                    }
                    if let Some(prev) = last_key_s {
                        if t > prev {
                            max_gop_s = max_gop_s.max(t - prev);
                        }
                    }
                    last_key_s = Some(t);
                }
            }
            if let Err(e) = decoder.send_packet(&packet) {
                // A damaged packet: skipped, as players do.
                problem.get_or_insert_with(|| format!("the decoder rejected a packet ({e})"));
                continue;
            }
        }
        receive_frames(decoder, &mut frame, &mut problem, |f| {
            let t = info.frame_time(f, n_decoded);
            n_decoded += 1;
            picker.offer(t, f)?;
            Ok(!picker.done())
        })
        .map_err(&corrupt)?;
        if ended {
            break;
        }
    }

    if picker.position().is_none() {
        return Err(match problem {
            Some(p) => corrupt(format!("no frame could be decoded: {p}")),
            None => Error::NoVideoFrames {
                path: path.to_path_buf(),
            },
        });
    }
    if !picker.done() {
        // Targets after the last frame: normal at the very end of a clean stream (the last
        // frame is their nearest), a truncated file when the stream stops well before the
        // length the headers state and either complained on the way or that length is the
        // stream's own (demuxers report a file cut at a packet or cluster boundary as a clean
        // end). A container's length that may be the soundtrack's is no such evidence.
        let last = picker.position().unwrap_or(0.0);
        let slack = if info.fps > 0.0 { 3.0 / info.fps } else { 0.0 };
        if last < duration_s - slack.max(0.5) {
            if let Some(p) = problem {
                return Err(corrupt(format!(
                    "the stream breaks off at {last:.2} s of {duration_s:.2} s (truncated or damaged): {p}"
                )));
            }
            if info.duration_from_stream {
                return Err(corrupt(format!(
                    "the stream ends at {last:.2} s but its header says {duration_s:.2} s (truncated?)"
                )));
            }
        }
        picker.finish().map_err(&corrupt)?;
    }
    Ok(())
}

//! Decoding a video file into RGB frames with FFmpeg (the system's libavformat, libavcodec and
//! libswscale, through `ffmpeg-next`).
//!
//! Handled: whatever the installed FFmpeg demuxes and decodes; tested on H.264 in MP4 and MOV,
//! VP8 and VP9 in WebM, H.264 in MKV. Frames are picked by time ([`FrameSampling`]): the decoder
//! runs forward through the stream and keeps, for every target time, the decoded frame whose
//! presentation time is nearest to it. Long gaps between targets are skipped by seeking to the
//! keyframe before the next target ([`DecodeOptions::seek`]), so 8 frames of a long film cost
//! about 8 GOPs of decoding rather than the whole film.
//!
//! Colour: frames are converted to RGB24 with swscale using the matrix (BT.601, BT.709,
//! BT.2020...) and range (limited or full) the stream declares, at the coded size (as
//! torchvision, PyAV and decord return them; non-square pixels are reported in
//! [`Video::pixel_aspect`], not stretched), optionally downscaled so the longer side fits
//! [`DecodeOptions::max_side`].
//!
//! Damage: a packet the decoder rejects is skipped, as players do. A stream that breaks off
//! (a truncated download: the container's index points past the end of the file) before the
//! requested times is an error rather than a set of frames padded with the last good one.

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use ffmpeg_next as ffmpeg;

use ffmpeg::codec::threading;
use ffmpeg::format::context::Input;
use ffmpeg::format::Pixel;
use ffmpeg::media::Type as MediaType;
use ffmpeg::software::scaling;
use ffmpeg::util::frame::video::Video as AvFrame;
use ffmpeg::{Packet, Rational, Stream};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which frames of a clip to keep.
///
/// Serialized with a `kind` tag: `{"kind": "uniform", "frames": 8}`,
/// `{"kind": "rate", "fps": 2.0, "max_frames": 16}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FrameSampling {
    /// `frames` frames spread evenly over the clip: the frame nearest to the middle of each of
    /// `frames` equal slices of the duration (the middles, not the ends, so the first and last
    /// targets do not land on fade-ins or the black frame some clips end with). Always
    /// `frames` frames: a clip with fewer frames repeats some.
    Uniform { frames: usize },
    /// One frame every `1 / fps` seconds from the start, while inside the clip, at most
    /// `max_frames`. Asking for more than the clip's own rate repeats frames.
    Rate { fps: f32, max_frames: usize },
}

impl FrameSampling {
    /// Checks the numbers: at least one frame, a finite positive rate.
    pub fn validate(&self) -> Result<()> {
        match *self {
            FrameSampling::Uniform { frames: 0 } => Err(Error::InvalidArgument(
                "uniform frame sampling needs frames >= 1".into(),
            )),
            FrameSampling::Rate { fps, max_frames } => {
                if !(fps.is_finite() && fps > 0.0) {
                    Err(Error::InvalidArgument(format!(
                        "frame sampling rate must be a positive number, got {fps}"
                    )))
                } else if max_frames == 0 {
                    Err(Error::InvalidArgument(
                        "rate frame sampling needs max_frames >= 1".into(),
                    ))
                } else {
                    Ok(())
                }
            }
            FrameSampling::Uniform { .. } => Ok(()),
        }
    }

    /// The target times, in seconds from the start of the video stream, for a clip lasting
    /// `duration_s`; non-decreasing, never empty for a valid sampling.
    pub fn targets(&self, duration_s: f64) -> Vec<f64> {
        let d = if duration_s.is_finite() {
            duration_s.max(0.0)
        } else {
            0.0
        };
        match *self {
            FrameSampling::Uniform { frames } => (0..frames)
                .map(|i| (i as f64 + 0.5) * d / frames as f64)
                .collect(),
            FrameSampling::Rate { fps, max_frames } => {
                let step = 1.0 / fps as f64;
                // The first frame always counts, even for a one-frame clip of duration ~0.
                (0..max_frames)
                    .map(|k| k as f64 * step)
                    .take_while(|&t| t == 0.0 || t < d)
                    .collect()
            }
        }
    }
}

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
    let has_audio = ictx
        .streams()
        .any(|s| s.parameters().medium() == MediaType::Audio);
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

/// Whether `path` carries an audio stream (a video's soundtrack, or an audio file).
pub fn has_audio_stream(path: &Path) -> Result<bool> {
    let ictx = open_input(path)?;
    let has = ictx
        .streams()
        .any(|s| s.parameters().medium() == MediaType::Audio);
    Ok(has)
}

/// Whether `path` carries a video stream (cover art attached to an audio file does not count).
pub fn has_video_stream(path: &Path) -> Result<bool> {
    let ictx = open_input(path)?;
    Ok(pick_video_stream(&ictx).is_some())
}

/// Initialises FFmpeg once per process and turns its own logging down to errors: the
/// decoder's warnings about a damaged stream reach the user through our errors instead.
fn init() -> std::result::Result<(), ffmpeg::Error> {
    static INIT: OnceLock<std::result::Result<(), ffmpeg::Error>> = OnceLock::new();
    *INIT.get_or_init(|| {
        let r = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
        r
    })
}

/// Opens `path` as a container and reads its stream headers.
pub(crate) fn open_input(path: &Path) -> Result<Input> {
    init().map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        what: format!("FFmpeg failed to initialise: {e}"),
    })?;
    // Checked here rather than left to FFmpeg: its message for a missing file is a bare
    // "No such file or directory", and a directory opens as an empty "file".
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory"),
        });
    }
    if meta.len() == 0 {
        return Err(Error::NotMedia {
            path: path.to_path_buf(),
            what: "the file is empty".into(),
        });
    }
    ffmpeg::format::input(path).map_err(|e| match e {
        // An MP4/MOV cut short before its index (the `moov` box, often written last) fails
        // the same way as random bytes; its `ftyp` box tells them apart.
        ffmpeg::Error::InvalidData if starts_like_mp4(path) => Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("an MP4/MOV file without a readable index (moov box): truncated? ({e})"),
        },
        ffmpeg::Error::InvalidData | ffmpeg::Error::DemuxerNotFound => Error::NotMedia {
            path: path.to_path_buf(),
            what: format!("FFmpeg reads it as no known container ({e})"),
        },
        ffmpeg::Error::Other { errno } => Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(errno),
        },
        other => Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("cannot read the container: {other}"),
        },
    })
}

/// Whether the file begins with an ISO-BMFF `ftyp` box (MP4, MOV, M4A, 3GP).
fn starts_like_mp4(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[4..8] == b"ftyp"
}

/// The video stream to decode: FFmpeg's best guess unless that is cover art, else the first
/// real video stream.
fn pick_video_stream(ictx: &Input) -> Option<Stream<'_>> {
    let is_video = |s: &Stream| {
        s.parameters().medium() == MediaType::Video
            && !s
                .disposition()
                .contains(ffmpeg::format::stream::Disposition::ATTACHED_PIC)
    };
    match ictx.streams().best(MediaType::Video) {
        Some(s) if is_video(&s) => Some(s),
        _ => ictx.streams().find(|s| is_video(s)),
    }
}

/// What the headers say about the chosen video stream.
struct StreamInfo {
    index: usize,
    time_base: Rational,
    /// Start of the stream in `time_base` units (0 when not stated).
    start: i64,
    fps: f64,
    duration_s: Option<f64>,
    /// Whether `duration_s` is the video stream's own (stated for the stream, or the
    /// container's when the video is its only stream), so a stream ending well before it is
    /// truncated.
    duration_from_stream: bool,
}

impl StreamInfo {
    fn of(ictx: &Input, path: &Path) -> Result<Self> {
        let s = pick_video_stream(ictx).ok_or_else(|| Error::NoVideoStream {
            path: path.to_path_buf(),
        })?;
        let time_base = s.time_base();
        let tb = f64::from(time_base);
        if !(tb.is_finite() && tb > 0.0) {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                what: format!("the video stream has an invalid time base {time_base}"),
            });
        }
        let start = match s.start_time() {
            ffmpeg::ffi::AV_NOPTS_VALUE => 0,
            t => t,
        };
        let rate = |r: Rational| {
            let v = if r.denominator() != 0 {
                f64::from(r)
            } else {
                0.0
            };
            (v.is_finite() && v > 0.0).then_some(v)
        };
        // The stream's own length: from the index (MP4, MOV), else from the per-track
        // `DURATION` tag Matroska and WebM writers (FFmpeg, mkvmerge) add.
        let stream_dur = match s.duration() {
            d if d > 0 && d != ffmpeg::ffi::AV_NOPTS_VALUE => Some(d as f64 * tb),
            _ => s.metadata().get("DURATION").and_then(parse_duration_tag),
        };
        // The container's length covers all streams: the video's own only when it is alone.
        let container_dur = match ictx.duration() {
            d if d > 0 && d != ffmpeg::ffi::AV_NOPTS_VALUE => {
                Some(d as f64 / ffmpeg::ffi::AV_TIME_BASE as f64)
            }
            _ => None,
        };
        let alone = ictx.streams().count() == 1;
        let duration_s = stream_dur.or(container_dur);
        let fps = rate(s.avg_frame_rate())
            .or_else(|| rate(s.rate()))
            .or_else(|| match (s.frames(), duration_s) {
                (n, Some(d)) if n > 0 && d > 0.0 => Some(n as f64 / d),
                _ => None,
            })
            .unwrap_or(0.0);
        Ok(Self {
            index: s.index(),
            time_base,
            start,
            fps,
            duration_s,
            duration_from_stream: stream_dur.is_some() || (alone && container_dur.is_some()),
        })
    }

    /// Seconds from the stream's start for a timestamp in the stream's time base.
    fn seconds(&self, ts: i64) -> f64 {
        (ts - self.start) as f64 * f64::from(self.time_base)
    }
}

/// Seconds from a Matroska `DURATION` tag, `HH:MM:SS.fraction` (`00:00:04.000000000`).
fn parse_duration_tag(tag: &str) -> Option<f64> {
    let mut parts = tag.trim().split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    let d = h * 3600.0 + m * 60.0 + sec;
    (parts.next().is_none() && d.is_finite() && d > 0.0).then_some(d)
}

/// The end of the last packet of the video stream, in seconds, from reading the packets
/// without decoding them; `None` when the stream has no timed packet.
fn scan_duration(ictx: &mut Input, info: &StreamInfo) -> Option<f64> {
    let mut end: Option<f64> = None;
    let mut packet = Packet::empty();
    let mut count = 0usize;
    loop {
        match packet.read(ictx) {
            Ok(()) => {}
            // A damaged packet: the demuxer resyncs on the next read.
            Err(ffmpeg::Error::InvalidData) => continue,
            Err(_) => break,
        }
        if packet.stream() != info.index {
            continue;
        }
        count += 1;
        if let Some(pts) = packet.pts().or(packet.dts()) {
            let t = info.seconds(pts + packet.duration().max(0));
            end = Some(end.map_or(t, |e: f64| e.max(t)));
        }
    }
    // Packets without timestamps (a raw elementary stream): count them at the stated rate.
    match end {
        Some(e) if e > 0.0 => Some(e),
        _ if count > 0 && info.fps > 0.0 => Some(count as f64 / info.fps),
        _ if count > 0 => Some(0.0),
        _ => None,
    }
}

/// A decoder for stream `index`, frame-threaded over the machine's cores.
fn open_decoder(ictx: &Input, index: usize, path: &Path) -> Result<ffmpeg::decoder::Video> {
    let stream = ictx.stream(index).ok_or_else(|| Error::NoVideoStream {
        path: path.to_path_buf(),
    })?;
    let corrupt = |what: String| Error::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let mut ctx = ffmpeg::codec::Context::from_parameters(stream.parameters())
        .map_err(|e| corrupt(format!("bad codec parameters: {e}")))?;
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
    decoder.video().map_err(|e| match e {
        ffmpeg::Error::DecoderNotFound => Error::UnsupportedCodec {
            path: path.to_path_buf(),
            what: format!("no {codec_id:?} video decoder in the installed FFmpeg"),
        },
        other => corrupt(format!("cannot open the {codec_id:?} decoder: {other}")),
    })
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
        if opts.seek && sought != Some(picker.next) {
            if let Some(target) = picker.next_target() {
                let pos = picker.position().unwrap_or(0.0);
                let gap = SEEK_MIN_GAP_S.max(2.0 * max_gop_s);
                if target - pos > gap {
                    sought = Some(picker.next);
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

        match packet.read(ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => continue,
            // "partial file" from the MP4 demuxer (its index points past the end) and damaged
            // Matroska clusters come back as InvalidData; the demuxer moves on at the next read.
            Err(e @ ffmpeg::Error::InvalidData) => {
                problem.get_or_insert_with(|| format!("the demuxer rejected a packet ({e})"));
                continue;
            }
            Err(e) => {
                problem.get_or_insert_with(|| format!("reading the file failed ({e})"));
                break;
            }
        }
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
        match decoder.send_packet(&packet) {
            Ok(()) => {}
            // A damaged packet: skipped, as players do.
            Err(e) => {
                problem.get_or_insert_with(|| format!("the decoder rejected a packet ({e})"));
                continue;
            }
        }
        receive_all(
            decoder,
            &mut frame,
            picker,
            info,
            &mut n_decoded,
            &mut problem,
        )
        .map_err(&corrupt)?;
    }

    if !picker.done() {
        // Drain the frames the decoder still holds (B-frame reordering, frame threads).
        if decoder.send_eof().is_ok() {
            receive_all(
                decoder,
                &mut frame,
                picker,
                info,
                &mut n_decoded,
                &mut problem,
            )
            .map_err(&corrupt)?;
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

/// Offers every frame the decoder has ready to `picker`, until it wants more input, is
/// drained, or `picker` has all its frames. A frame the decoder fails on is noted in
/// `problem` and skipped.
fn receive_all(
    decoder: &mut ffmpeg::decoder::Video,
    frame: &mut AvFrame,
    picker: &mut Picker,
    info: &StreamInfo,
    n_decoded: &mut usize,
    problem: &mut Option<String>,
) -> std::result::Result<(), String> {
    // Each failed call consumes the broken frame; the cap only guards against a decoder
    // that keeps failing without moving on.
    let mut failures = 0;
    while !picker.done() {
        match decoder.receive_frame(frame) {
            Ok(()) => {
                let t = match frame.timestamp().or(frame.pts()) {
                    Some(ts) => info.seconds(ts),
                    // No timestamps (a raw elementary stream): count frames at the stated rate.
                    None if info.fps > 0.0 => *n_decoded as f64 / info.fps,
                    None => *n_decoded as f64,
                };
                *n_decoded += 1;
                picker.offer(t, frame)?;
            }
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => break,
            Err(e) => {
                problem.get_or_insert_with(|| format!("the decoder failed on a frame ({e})"));
                failures += 1;
                if failures > 64 {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Keeps, for each target time, the decoded frame nearest to it; frames arrive in display
/// order and only the latest one is held, so memory is one source frame plus the outputs.
struct Picker {
    targets: Vec<f64>,
    /// Index of the first target without a frame.
    next: usize,
    /// The latest frame offered and its time.
    prev: AvFrame,
    prev_t: Option<f64>,
    /// Frames chosen so far, one per resolved target, with their times.
    chosen: Vec<(RgbImage, f64)>,
    max_side: Option<u32>,
    scaler: Option<Scaler>,
    out_size: Option<(u32, u32)>,
    source_size: (u32, u32),
    pixel_aspect: f64,
}

impl Picker {
    fn new(targets: Vec<f64>, max_side: Option<u32>) -> Self {
        Self {
            chosen: Vec::with_capacity(targets.len()),
            targets,
            next: 0,
            prev: AvFrame::empty(),
            prev_t: None,
            max_side,
            scaler: None,
            out_size: None,
            source_size: (0, 0),
            pixel_aspect: 1.0,
        }
    }

    fn done(&self) -> bool {
        self.next >= self.targets.len()
    }

    fn next_target(&self) -> Option<f64> {
        self.targets.get(self.next).copied()
    }

    /// Time of the latest frame offered.
    fn position(&self) -> Option<f64> {
        self.prev_t
    }

    /// Offers the frame at `t` (taking its data; `frame` is left holding stale data).
    fn offer(&mut self, t: f64, frame: &mut AvFrame) -> std::result::Result<(), String> {
        if !t.is_finite() {
            return Ok(());
        }
        // After a seek that landed before frames already seen: nothing new until past them.
        if let Some(pt) = self.prev_t {
            if t <= pt {
                return Ok(());
            }
        }
        while let Some(target) = self.next_target() {
            if target > t {
                break;
            }
            // The target lies between the previous frame and this one: the nearer wins, the
            // earlier on a tie.
            let use_prev = matches!(self.prev_t, Some(pt) if target - pt <= t - target);
            let (img, ft) = if use_prev {
                (self.convert_prev()?, self.prev_t.unwrap_or(t))
            } else {
                (self.convert(frame)?, t)
            };
            self.chosen.push((img, ft));
            self.next += 1;
        }
        std::mem::swap(&mut self.prev, frame);
        self.prev_t = Some(t);
        Ok(())
    }

    /// Resolves the targets left after the last frame with that frame.
    fn finish(&mut self) -> std::result::Result<(), String> {
        let Some(pt) = self.prev_t else {
            return Ok(());
        };
        while !self.done() {
            let img = self.convert_prev()?;
            self.chosen.push((img, pt));
            self.next += 1;
        }
        Ok(())
    }

    fn convert_prev(&mut self) -> std::result::Result<RgbImage, String> {
        // The same frame can be nearest to several targets (a short clip, a high rate).
        if let Some((img, t)) = self.chosen.last() {
            if Some(*t) == self.prev_t {
                return Ok(img.clone());
            }
        }
        let prev = std::mem::replace(&mut self.prev, AvFrame::empty());
        let r = self.convert(&prev);
        self.prev = prev;
        r
    }

    fn convert(&mut self, frame: &AvFrame) -> std::result::Result<RgbImage, String> {
        let (w, h) = (frame.width(), frame.height());
        if w == 0 || h == 0 || frame.format() == Pixel::None {
            return Err(format!(
                "the decoder returned an empty picture ({w}x{h}, {:?})",
                frame.format()
            ));
        }
        // The output size is fixed by the first frame, so a stream that changes resolution
        // midway still yields frames of one size.
        let (ow, oh) = match self.out_size {
            Some(s) => s,
            None => {
                let s = output_size(w, h, self.max_side);
                self.out_size = Some(s);
                self.source_size = (w, h);
                let sar = frame.aspect_ratio();
                if sar.numerator() > 0 && sar.denominator() > 0 {
                    self.pixel_aspect = f64::from(sar);
                }
                s
            }
        };
        let fits = self.scaler.as_ref().is_some_and(|s| s.fits(frame));
        if !fits {
            self.scaler = Some(Scaler::new(frame, ow, oh)?);
        }
        match self.scaler.as_mut() {
            Some(s) => s.run(frame),
            None => Err("no scaler".into()),
        }
    }
}

/// Size of a `w` x `h` picture downscaled to fit `max_side` (aspect kept, never upscaled, at
/// least 1 pixel a side).
fn output_size(w: u32, h: u32, max_side: Option<u32>) -> (u32, u32) {
    let (mut fw, mut fh) = (w as f64, h as f64);
    if let Some(m) = max_side {
        let scale = (m as f64 / fw.max(fh)).min(1.0);
        fw *= scale;
        fh *= scale;
    }
    ((fw.round() as u32).max(1), (fh.round() as u32).max(1))
}

/// swscale from one source format and size to RGB24 at the output size.
struct Scaler {
    ctx: scaling::Context,
    src: (Pixel, u32, u32),
    out: AvFrame,
}

impl Scaler {
    fn new(frame: &AvFrame, ow: u32, oh: u32) -> std::result::Result<Self, String> {
        let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
        let mut ctx = scaling::Context::get(
            fmt,
            w,
            h,
            Pixel::RGB24,
            ow,
            oh,
            // Bicubic for downscaling (its filter widens with the ratio); accurate rounding
            // and full chroma interpolation so colours of small, sharp shapes survive.
            scaling::Flags::BICUBIC | scaling::Flags::ACCURATE_RND | scaling::Flags::FULL_CHR_H_INT,
        )
        .map_err(|e| format!("swscale cannot convert {fmt:?} {w}x{h} to RGB {ow}x{oh}: {e}"))?;
        set_colorspace(&mut ctx, frame);
        Ok(Self {
            ctx,
            src: (fmt, w, h),
            out: AvFrame::empty(),
        })
    }

    fn fits(&self, frame: &AvFrame) -> bool {
        self.src == (frame.format(), frame.width(), frame.height())
    }

    fn run(&mut self, frame: &AvFrame) -> std::result::Result<RgbImage, String> {
        self.ctx
            .run(frame, &mut self.out)
            .map_err(|e| format!("swscale failed: {e}"))?;
        let (w, h) = (self.out.width() as usize, self.out.height() as usize);
        let stride = self.out.stride(0);
        let data = self.out.data(0);
        let row = w * 3;
        if stride < row || data.len() < stride * (h - 1) + row {
            return Err("swscale returned a short picture".into());
        }
        // Rows of an AVFrame are padded to the stride; the image wants them packed.
        let mut buf = Vec::with_capacity(row * h);
        for y in 0..h {
            buf.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        RgbImage::from_raw(w as u32, h as u32, buf).ok_or_else(|| "bad RGB buffer size".into())
    }
}

/// Tells swscale the stream's YUV matrix and range; by default it assumes BT.601 limited
/// range, which tints BT.709 (HD) video and crushes full-range (JPEG-style) video.
fn set_colorspace(ctx: &mut scaling::Context, frame: &AvFrame) {
    use ffmpeg::color::{Range, Space};
    use ffmpeg::ffi;
    let fmt = frame.format();
    let cs = match frame.color_space() {
        Space::BT709 => ffi::SWS_CS_ITU709,
        Space::FCC => ffi::SWS_CS_FCC,
        Space::SMPTE240M => ffi::SWS_CS_SMPTE240M,
        Space::BT2020NCL | Space::BT2020CL => ffi::SWS_CS_BT2020,
        _ => ffi::SWS_CS_DEFAULT,
    };
    // The yuvj* formats are full range by definition, whatever the frame's flag says.
    let full = frame.color_range() == Range::JPEG
        || matches!(
            fmt,
            Pixel::YUVJ420P | Pixel::YUVJ422P | Pixel::YUVJ444P | Pixel::YUVJ440P | Pixel::YUVJ411P
        );
    // SAFETY: the context pointer is valid for the life of `ctx`; the coefficient tables
    // are static arrays inside libswscale. For RGB input the call is a no-op that returns -1.
    unsafe {
        let _ = ffi::sws_setColorspaceDetails(
            ctx.as_mut_ptr(),
            ffi::sws_getCoefficients(cs),
            full as std::os::raw::c_int,
            ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT),
            1,
            0,
            1 << 16,
            1 << 16,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_targets_are_slice_middles() {
        let t = FrameSampling::Uniform { frames: 4 }.targets(8.0);
        assert_eq!(t, vec![1.0, 3.0, 5.0, 7.0]);
        assert_eq!(
            FrameSampling::Uniform { frames: 2 }.targets(0.0),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn rate_targets_stop_at_the_end_or_the_cap() {
        let r = FrameSampling::Rate {
            fps: 2.0,
            max_frames: 100,
        };
        assert_eq!(r.targets(2.0), vec![0.0, 0.5, 1.0, 1.5]);
        assert_eq!(r.targets(0.0), vec![0.0]);
        let capped = FrameSampling::Rate {
            fps: 2.0,
            max_frames: 3,
        };
        assert_eq!(capped.targets(10.0).len(), 3);
    }

    #[test]
    fn bad_samplings_are_rejected() {
        assert!(FrameSampling::Uniform { frames: 0 }.validate().is_err());
        for fps in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let s = FrameSampling::Rate { fps, max_frames: 4 };
            assert!(s.validate().is_err(), "{fps}");
        }
        assert!(FrameSampling::Rate {
            fps: 1.0,
            max_frames: 0
        }
        .validate()
        .is_err());
    }

    #[test]
    fn sampling_serde_is_tagged() {
        let s: FrameSampling = serde_json::from_str(r#"{"kind": "uniform", "frames": 8}"#).unwrap();
        assert_eq!(s, FrameSampling::Uniform { frames: 8 });
        let r: FrameSampling =
            serde_json::from_str(r#"{"kind": "rate", "fps": 2.0, "max_frames": 16}"#).unwrap();
        assert_eq!(
            r,
            FrameSampling::Rate {
                fps: 2.0,
                max_frames: 16
            }
        );
        assert!(
            serde_json::from_str::<FrameSampling>(r#"{"kind": "uniform", "frame": 8}"#).is_err()
        );
    }

    #[test]
    fn matroska_duration_tags() {
        assert_eq!(parse_duration_tag("00:00:04.000000000"), Some(4.0));
        assert_eq!(parse_duration_tag("01:02:03.5"), Some(3723.5));
        assert_eq!(parse_duration_tag("4.0"), None);
        assert_eq!(parse_duration_tag("00:00:00.000"), None);
        assert_eq!(parse_duration_tag("aa:bb:cc"), None);
    }

    #[test]
    fn output_size_keeps_aspect_and_never_upscales() {
        assert_eq!(output_size(1280, 720, None), (1280, 720));
        assert_eq!(output_size(1280, 720, Some(320)), (320, 180));
        assert_eq!(output_size(176, 144, Some(320)), (176, 144));
        assert_eq!(output_size(4000, 1, Some(10)), (10, 1));
    }
}

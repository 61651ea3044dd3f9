//! What a file says about its streams before any frame is decoded: which stream is the video
//! (cover art is not), whether there is a soundtrack, the time base, frame rate and duration.
//!
//! Containers state these in different places and some not at all: MP4 and MOV in their index,
//! Matroska and WebM in a per-track `DURATION` tag, a raw elementary stream nowhere (then
//! `scan_duration` reads the packets once to find where the stream ends). Whether the
//! duration is the video stream's own also matters: a stream that stops well before its own
//! stated length is truncated, one that stops before the container's length (which may be the
//! soundtrack's) need not be.

use std::path::Path;

use ffmpeg_next as ffmpeg;

use ffmpeg::format::context::Input;
use ffmpeg::media::Type as MediaType;
use ffmpeg::util::frame::video::Video as AvFrame;
use ffmpeg::{Packet, Rational, Stream};

use super::input::open_input;
use crate::error::{Error, Result};

/// Whether `path` carries an audio stream (a video's soundtrack, or an audio file).
pub fn has_audio_stream(path: &Path) -> Result<bool> {
    Ok(has_audio(&open_input(path)?))
}

/// Whether `path` carries a video stream (cover art attached to an audio file does not count).
pub fn has_video_stream(path: &Path) -> Result<bool> {
    let ictx = open_input(path)?;
    Ok(pick_video_stream(&ictx).is_some())
}

/// Whether the opened container holds an audio stream.
pub(crate) fn has_audio(ictx: &Input) -> bool {
    ictx.streams()
        .any(|s| s.parameters().medium() == MediaType::Audio)
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
pub(crate) struct StreamInfo {
    pub index: usize,
    pub time_base: Rational,
    /// Start of the stream in `time_base` units (0 when not stated).
    pub start: i64,
    pub fps: f64,
    pub duration_s: Option<f64>,
    /// Whether `duration_s` is the video stream's own (stated for the stream, or the
    /// container's when the video is its only stream), so a stream ending well before it is
    /// truncated.
    pub duration_from_stream: bool,
}

impl StreamInfo {
    pub fn of(ictx: &Input, path: &Path) -> Result<Self> {
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
    pub fn seconds(&self, ts: i64) -> f64 {
        (ts - self.start) as f64 * f64::from(self.time_base)
    }

    /// Presentation time of `frame`, the `index`-th (0-based) the decoder returned: its
    /// timestamp, or for a stream without timestamps (a raw elementary stream) its place at the
    /// stated rate.
    pub fn frame_time(&self, frame: &AvFrame, index: usize) -> f64 {
        match frame.timestamp().or(frame.pts()) {
            Some(ts) => self.seconds(ts),
            None if self.fps > 0.0 => index as f64 / self.fps,
            None => index as f64,
        }
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
pub(crate) fn scan_duration(ictx: &mut Input, info: &StreamInfo) -> Option<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matroska_duration_tags() {
        assert_eq!(parse_duration_tag("00:00:04.000000000"), Some(4.0));
        assert_eq!(parse_duration_tag("01:02:03.5"), Some(3723.5));
        assert_eq!(parse_duration_tag("4.0"), None);
        assert_eq!(parse_duration_tag("00:00:00.000"), None);
        assert_eq!(parse_duration_tag("aa:bb:cc"), None);
    }
}

//! Video: decoding with FFmpeg into RGB frames sampled by time, and the soundtrack as 16 kHz
//! mono.
//!
//! One component per file:
//! - `input`: FFmpeg's set-up, opening a file and a stream's decoder, pulling frames out;
//! - [`probe`]: what the headers say (which stream, time base, frame rate, duration);
//! - [`sampling`]: which frames to keep, as target times ([`FrameSampling`]);
//! - [`decode`]: the decode loop and its entry points ([`decode_frames`], [`Video`]);
//! - `picker`: the decoded frame nearest to each target time;
//! - `scale`: conversion to RGB with the stream's colour matrix and range, and downscaling;
//! - [`audio`]: the soundtrack;
//! - [`modality`]: video as a [`crate::Modality`].
//!
//! A video's soundtrack feeds the audio modality: [`crate::audio::load_audio_16k`] reads AAC
//! in MP4 when it is mono or stereo; [`decode_audio_16k_mono`] reads any layout (5.1 film
//! soundtracks) and any codec FFmpeg has. [`has_audio_stream`] says whether there is one.

pub mod audio;
pub mod decode;
mod input;
pub mod modality;
mod picker;
pub mod probe;
pub mod sampling;
mod scale;

pub use audio::{decode_audio_16k_mono, decode_audio_mono};
pub use decode::{decode_frames, decode_frames_with, DecodeOptions, Video};
/// The frame type of [`Video::frames`], re-exported so callers need no `image` dependency.
pub use image::RgbImage;
pub use modality::{VideoFrames, VideoModality, VideoOptions};
pub use probe::{has_audio_stream, has_video_stream};
pub use sampling::FrameSampling;

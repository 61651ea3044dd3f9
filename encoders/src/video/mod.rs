//! Video: decoding with FFmpeg into RGB frames sampled by time (`decode`), and the
//! soundtrack as 16 kHz mono (`audio`).
//!
//! A video's soundtrack feeds the audio modality: [`crate::audio::load_audio_16k`] reads AAC
//! in MP4 when it is mono or stereo; [`decode_audio_16k_mono`] reads any layout (5.1 film
//! soundtracks) and any codec FFmpeg has. [`has_audio_stream`] says whether there is one.

pub mod audio;
pub mod decode;
pub mod modality;

pub use audio::{decode_audio_16k_mono, decode_audio_mono};
pub use decode::{
    decode_frames, decode_frames_with, has_audio_stream, has_video_stream, DecodeOptions,
    FrameSampling, Video,
};
/// The frame type of [`Video::frames`], re-exported so callers need no `image` dependency.
pub use image::RgbImage;
pub use modality::{VideoFrames, VideoModality, VideoOptions};

//! Bounds on what one media file may make the decoders allocate. Each decoder checks the sizes
//! a file *declares* (an image's width and height, an audio stream's rate and length, an IMU
//! recording's time span once resampled) against these before it allocates or decodes, so a
//! 74-byte PNG claiming 100000 x 100000 pixels is an error naming the file, not a 30 GB
//! allocation; and checks again while decoding, for formats whose headers state no size.
//!
//! The checks live here too, one per kind of input, so that every bound is in one file.
//!
//! The bounds are process-wide settings, set once from the command line or the recipe
//! ([`set_limits`]) and read by every decoder ([`limits`]). They are a policy of the process,
//! like its memory, rather than a property of one modality, and passing them through
//! [`Modality::load`](crate::Modality::load) would change the plug-in API of every modality
//! for a value none of them chooses.

use std::path::Path;
use std::sync::RwLock;

use crate::error::{Error, Result};

/// The largest inputs the decoders accept. Defaults suit training and serving on a machine
/// with a few GB: each bound keeps one decoded input well under 1 GB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MediaLimits {
    /// Width x height of one image or video frame, before any resizing. 64 MP (a 9248 x
    /// 6936 camera photo) decodes to 192 MB of 8-bit RGB and 768 MB as f32.
    pub max_image_pixels: u64,
    /// Length of one audio clip (or a video's soundtrack), in seconds. One hour at 16 kHz is
    /// 230 MB of f32 samples.
    pub max_audio_seconds: f64,
    /// Rows of one IMU recording, as read and once resampled to the encoder's rate (10 M
    /// rows of 6 channels are 240 MB).
    pub max_imu_rows: u64,
}

/// Sample rates an audio stream may declare. Below 1 kHz no speech or music is left; above
/// 768 kHz is no audio format in use (DXD is 352.8 kHz). A header outside is corrupt or crafted.
pub const AUDIO_RATE_RANGE_HZ: std::ops::RangeInclusive<u32> = 1_000..=768_000;

impl Default for MediaLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl MediaLimits {
    /// The defaults, as a constant so that the process-wide value can start from them.
    pub const DEFAULT: Self = Self {
        max_image_pixels: 64_000_000,
        max_audio_seconds: 3600.0,
        max_imu_rows: 10_000_000,
    };

    /// The first bound that cannot work (zero, negative, NaN), as (field, what is wrong).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.max_image_pixels == 0 {
            return Some(("max_image_pixels", "must be at least 1".into()));
        }
        if !(self.max_audio_seconds.is_finite() && self.max_audio_seconds > 0.0) {
            return Some((
                "max_audio_seconds",
                format!("must be a positive number, got {}", self.max_audio_seconds),
            ));
        }
        if self.max_imu_rows == 0 {
            return Some(("max_imu_rows", "must be at least 1".into()));
        }
        None
    }
}

static LIMITS: RwLock<MediaLimits> = RwLock::new(MediaLimits::DEFAULT);

/// The bounds in force.
pub fn limits() -> MediaLimits {
    // A poisoned lock still holds a valid value (it is only ever replaced whole).
    *LIMITS.read().unwrap_or_else(|e| e.into_inner())
}

/// Replaces the bounds for the whole process.
pub fn set_limits(l: MediaLimits) {
    *LIMITS.write().unwrap_or_else(|e| e.into_inner()) = l;
}

/// `64 MP`, `1.5 MP`, `120000 pixels`: a pixel count as people read it.
fn megapixels(px: u64) -> String {
    if px >= 1_000_000 {
        format!("{:.1} MP", px as f64 / 1e6)
    } else {
        format!("{px} pixels")
    }
}

// The checks, one per kind of input, each before the work it bounds.

/// An image (or video frame) of `w x h` pixels against [`MediaLimits::max_image_pixels`].
pub(crate) fn check_image_pixels(w: u32, h: u32, path: &Path) -> Result<()> {
    let (px, max) = (u64::from(w) * u64::from(h), limits().max_image_pixels);
    if px > max {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: format!("the image is {w}x{h} ({})", megapixels(px)),
            limit: megapixels(max),
            setting: "max_image_pixels",
        });
    }
    Ok(())
}

/// A sample rate no audio format in use has (a crafted or corrupt header: a 1 Hz WAV would
/// resample 32 KB into 16000 s of audio) is an error, before any sample is decoded.
pub(crate) fn check_audio_rate(path: &Path, rate: u32) -> Result<()> {
    if !AUDIO_RATE_RANGE_HZ.contains(&rate) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: format!(
                "a sample rate of {rate} Hz (audio is {}-{} Hz)",
                AUDIO_RATE_RANGE_HZ.start(),
                AUDIO_RATE_RANGE_HZ.end()
            ),
        });
    }
    Ok(())
}

/// `n` samples decoded so far at `rate`, against
/// [`MediaLimits::max_audio_seconds`]: checked as decoding goes, so a
/// clip over the bound stops decoding as soon as it passes it, whatever its header says.
pub(crate) fn check_audio_length(path: &Path, n: usize, rate: u32) -> Result<()> {
    let max = limits().max_audio_seconds;
    if n as f64 > max * f64::from(rate.max(1)) {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: "the audio runs longer".into(),
            limit: format!("{max} s"),
            setting: "max_audio_seconds",
        });
    }
    Ok(())
}

/// `rows` (as resampled to `rate_hz`, or read) against
/// [`MediaLimits::max_imu_rows`], before they are made: a time step of
/// 1e15 s between two rows would otherwise resample into billions.
pub(crate) fn check_imu_rows(path: &Path, rows: f64, rate_hz: f32) -> Result<()> {
    let max = limits().max_imu_rows;
    // Negated so that a NaN row count is over the limit too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if !(rows <= max as f64) {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: format!("the recording spans {rows:.3e} rows at {rate_hz} Hz"),
            limit: format!("{max} rows"),
            setting: "max_imu_rows",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_default_is_the_default() {
        assert_eq!(limits(), MediaLimits::default());
        assert!(MediaLimits::default().problem().is_none());
        let bad = MediaLimits {
            max_audio_seconds: f64::NAN,
            ..Default::default()
        };
        assert_eq!(bad.problem().unwrap().0, "max_audio_seconds");
    }
}

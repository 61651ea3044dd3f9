//! Which frames of a clip to keep, as times: [`FrameSampling`] turns a clip's duration into the
//! target times the decoder then finds the nearest frames for (`picker`). Pure
//! arithmetic, kept apart from FFmpeg so it is checked without decoding anything, and
//! serializable because recipes name it (`[encoder.options] sampling`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most frames one clip may ask for: 512 frames at 224 px are 300 MB of f32 pixels.
pub const MAX_FRAMES: usize = 512;

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
        match self.problem() {
            Some(what) => Err(Error::InvalidArgument(what)),
            None => Ok(()),
        }
    }

    /// What [`validate`](Self::validate) rejects, if anything.
    pub(crate) fn problem(&self) -> Option<String> {
        match *self {
            FrameSampling::Uniform { frames: 0 } => {
                Some("uniform frame sampling needs frames >= 1".into())
            }
            FrameSampling::Rate { fps, .. } if !(fps.is_finite() && fps > 0.0) => Some(format!(
                "frame sampling rate must be a positive number, got {fps}"
            )),
            FrameSampling::Rate { max_frames: 0, .. } => {
                Some("rate frame sampling needs max_frames >= 1".into())
            }
            FrameSampling::Uniform { frames: n } | FrameSampling::Rate { max_frames: n, .. }
                if n > MAX_FRAMES =>
            {
                Some(format!(
                    "{n} frames per clip is over the limit of {MAX_FRAMES} (each is a full \
                     decoded picture held in memory)"
                ))
            }
            FrameSampling::Uniform { .. } | FrameSampling::Rate { .. } => None,
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
}

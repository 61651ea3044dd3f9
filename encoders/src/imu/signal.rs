//! Turning a recording into the fixed-size input of an IMU encoder: resample to one rate, cut
//! or pad to one window, normalise each channel.
//!
//! Order: resample -> crop (centre or start) -> normalise over the real samples -> pad with
//! zeros at the end. Padding comes last so that it is zero in normalised units (the channel
//! mean under z-scores) and never moves the statistics; the number of real rows is returned
//! beside the window so an encoder can mask the rest.

use serde::{Deserialize, Serialize};

use super::ImuRecording;
use crate::error::{Error, Result};

/// Floor on a channel's standard deviation when dividing by it. A constant channel (a sensor
/// at rest, a stuck axis) would divide by zero; a near-constant one would blow its noise up to
/// unit variance. 1e-3 is below the noise of consumer accelerometers (in g or m/s^2) and
/// gyroscopes (rad/s or deg/s), so real motion is scaled as usual and a still channel stays
/// near zero.
pub const STD_FLOOR: f32 = 1e-3;

/// Per-channel normalisation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Raw sensor units.
    None,
    /// Each channel of each recording to zero mean and unit variance (std floored at
    /// [`STD_FLOOR`]). Removes sensor offsets and gravity's direction, and with them the
    /// absolute intensity of a movement.
    #[default]
    #[serde(rename = "zscore")]
    ZScore,
    /// Fixed per-channel statistics (e.g. of the training set, from [`channel_stats`]); keeps
    /// intensity differences between recordings.
    Stats { mean: Vec<f32>, std: Vec<f32> },
}

/// Where a window is cut from a longer recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    /// The middle `window` samples (starts and ends of recordings are often the wearer
    /// handling the device).
    #[default]
    Center,
    Start,
}

/// How a recording becomes the encoder's `(window, channels)` input. Defaults suit a 6-axis
/// IMU (accelerometer x, y, z, gyroscope x, y, z) in 10 s windows at 10 Hz.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImuPreprocessConfig {
    /// Rate the encoder sees.
    #[serde(default = "default_rate")]
    pub rate_hz: f32,
    /// Window length in samples at `rate_hz`.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Channels every recording must have.
    #[serde(default = "default_channels")]
    pub channels: usize,
    #[serde(default)]
    pub normalize: Normalize,
    #[serde(default)]
    pub crop: Crop,
    /// Rate of files that carry no timestamps (`.ts`, CSV without a time column). For `.ts`,
    /// `None` means `rate_hz`; a CSV without a time column needs it.
    #[serde(default)]
    pub source_rate_hz: Option<f32>,
}

fn default_rate() -> f32 {
    10.0
}
fn default_window() -> usize {
    100
}
fn default_channels() -> usize {
    6
}

impl Default for ImuPreprocessConfig {
    fn default() -> Self {
        Self {
            rate_hz: default_rate(),
            window: default_window(),
            channels: default_channels(),
            normalize: Normalize::default(),
            crop: Crop::default(),
            source_rate_hz: None,
        }
    }
}

impl ImuPreprocessConfig {
    fn check(&self) -> Result<()> {
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "imu rate_hz must be a positive number, got {}",
                self.rate_hz
            )));
        }
        if self.window == 0 || self.channels == 0 {
            return Err(Error::InvalidArgument(
                "imu window and channels must be at least 1".into(),
            ));
        }
        if let Normalize::Stats { mean, std } = &self.normalize {
            if mean.len() != self.channels || std.len() != self.channels {
                return Err(Error::ShapeMismatch {
                    what: "imu normalize stats".into(),
                    expected: format!(
                        "one mean and one std for each of {} channels",
                        self.channels
                    ),
                    got: format!("{} means and {} stds", mean.len(), std.len()),
                });
            }
        }
        Ok(())
    }
}

/// `(window, channels)` row-major; see the module docs for the steps.
pub fn preprocess(rec: &ImuRecording, cfg: &ImuPreprocessConfig) -> Result<Vec<f32>> {
    Ok(preprocess_with_length(rec, cfg)?.0)
}

/// [`preprocess`] plus how many leading rows are real samples (the rest is zero padding).
pub fn preprocess_with_length(
    rec: &ImuRecording,
    cfg: &ImuPreprocessConfig,
) -> Result<(Vec<f32>, usize)> {
    cfg.check()?;
    if rec.channels != cfg.channels {
        return Err(Error::ShapeMismatch {
            what: "channels of the recording".into(),
            expected: format!("{} (the configuration's)", cfg.channels),
            got: rec.channels.to_string(),
        });
    }
    if rec.is_empty() {
        return Err(Error::EmptyInput {
            what: "the recording has no samples".into(),
        });
    }
    let rec = resample(rec, cfg.rate_hz)?;
    let c = rec.channels;
    let (mut out, valid) = crop(&rec.data, c, cfg.window, cfg.crop);
    match &cfg.normalize {
        Normalize::None => {}
        Normalize::ZScore => {
            let (mean, std) = stats(&out[..valid * c], c);
            apply(&mut out[..valid * c], &mean, &std);
        }
        Normalize::Stats { mean, std } => apply(&mut out[..valid * c], mean, std),
    }
    out.resize(cfg.window * c, 0.0);
    Ok((out, valid))
}

/// The recording at `rate_hz`, spanning the same time (first to last sample).
///
/// Linear interpolation. When going down by more than 1.5x, each channel is first smoothed
/// with a centred moving average about one output period wide: a crude low-pass, but it keeps
/// vibration above the new Nyquist rate from folding back as slow motion.
pub fn resample(rec: &ImuRecording, rate_hz: f32) -> Result<ImuRecording> {
    if !(rate_hz.is_finite() && rate_hz > 0.0 && rec.rate_hz.is_finite() && rec.rate_hz > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "cannot resample from {} Hz to {} Hz",
            rec.rate_hz, rate_hz
        )));
    }
    let (from, to) = (rec.rate_hz as f64, rate_hz as f64);
    let n = rec.len();
    let c = rec.channels;
    if ((from - to) / to).abs() < 1e-6 || n < 2 || c == 0 {
        return Ok(ImuRecording {
            rate_hz,
            ..rec.clone()
        });
    }
    let ratio = from / to;
    let src = if ratio > 1.5 {
        moving_average(&rec.data, c, (ratio.round() as usize) / 2)
    } else {
        rec.data.clone()
    };
    // A hair of slack so a last output landing on the last input is not lost to rounding.
    let m = ((n - 1) as f64 / ratio + 1e-6).floor() as usize + 1;
    let mut data = Vec::with_capacity(m * c);
    for k in 0..m {
        let p = (k as f64 * ratio).min((n - 1) as f64);
        let i = (p.floor() as usize).min(n - 2);
        let f = p - i as f64;
        for ch in 0..c {
            let a = src[i * c + ch] as f64;
            let b = src[(i + 1) * c + ch] as f64;
            data.push((a + (b - a) * f) as f32);
        }
    }
    Ok(ImuRecording {
        rate_hz,
        channels: c,
        data,
        names: rec.names.clone(),
    })
}

/// Centred moving average over `2 * half + 1` rows (fewer at the ends), per channel.
fn moving_average(data: &[f32], c: usize, half: usize) -> Vec<f32> {
    let n = data.len() / c;
    let mut out = vec![0f32; data.len()];
    for i in 0..n {
        let (lo, hi) = (i.saturating_sub(half), (i + half).min(n - 1));
        for ch in 0..c {
            let s: f64 = (lo..=hi).map(|j| data[j * c + ch] as f64).sum();
            out[i * c + ch] = (s / (hi - lo + 1) as f64) as f32;
        }
    }
    out
}

/// At most `window` rows of `(t, c)` data and how many there are (not yet padded).
fn crop(data: &[f32], c: usize, window: usize, how: Crop) -> (Vec<f32>, usize) {
    let n = data.len() / c;
    if n <= window {
        return (data.to_vec(), n);
    }
    let start = match how {
        Crop::Center => (n - window) / 2,
        Crop::Start => 0,
    };
    (data[start * c..(start + window) * c].to_vec(), window)
}

/// Consecutive windows of `window` rows every `hop` rows, each `(window, c)` with its number
/// of real rows. A recording shorter than one window gives one zero-padded window; the tail
/// after the last full window is dropped. No resampling or normalisation.
pub fn split_windows(
    rec: &ImuRecording,
    window: usize,
    hop: usize,
) -> Result<Vec<(Vec<f32>, usize)>> {
    if window == 0 || hop == 0 {
        return Err(Error::InvalidArgument(
            "window and hop must be at least 1".into(),
        ));
    }
    let c = rec.channels;
    let n = rec.len();
    if n < window {
        let mut d = rec.data.clone();
        d.resize(window * c, 0.0);
        return Ok(vec![(d, n)]);
    }
    Ok((0..=n - window)
        .step_by(hop)
        .map(|s| (rec.data[s * c..(s + window) * c].to_vec(), window))
        .collect())
}

/// Per-channel mean and standard deviation over every row of every recording, for
/// [`Normalize::Stats`]. Recordings must share the channel count.
pub fn channel_stats(recs: &[ImuRecording]) -> Result<(Vec<f32>, Vec<f32>)> {
    let Some(first) = recs.first() else {
        return Err(Error::EmptyInput {
            what: "no recordings to take statistics of".into(),
        });
    };
    let c = first.channels;
    if let Some(r) = recs.iter().find(|r| r.channels != c) {
        return Err(Error::ShapeMismatch {
            what: "channels of the recordings".into(),
            expected: format!("{c} (the first one's)"),
            got: r.channels.to_string(),
        });
    }
    let all: Vec<f32> = recs.iter().flat_map(|r| r.data.iter().copied()).collect();
    Ok(stats(&all, c))
}

/// Mean and population std per channel of `(t, c)` data, in f64 to keep long sums exact.
fn stats(data: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (data.len() / c).max(1) as f64;
    let mut mean = vec![0f64; c];
    for row in data.chunks(c) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; c];
    for row in data.chunks(c) {
        for ((v, &x), m) in var.iter_mut().zip(row).zip(&mean) {
            *v += (x as f64 - m).powi(2);
        }
    }
    (
        mean.iter().map(|&m| m as f32).collect(),
        var.iter().map(|&v| (v / n).sqrt() as f32).collect(),
    )
}

fn apply(data: &mut [f32], mean: &[f32], std: &[f32]) {
    let c = mean.len();
    for row in data.chunks_mut(c) {
        for ((x, m), s) in row.iter_mut().zip(mean).zip(std) {
            *x = (*x - m) / s.max(STD_FLOOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rate: f32, c: usize, data: Vec<f32>) -> ImuRecording {
        ImuRecording {
            rate_hz: rate,
            channels: c,
            names: (0..c).map(|i| format!("dim_{i}")).collect(),
            data,
        }
    }

    #[test]
    fn upsampling_a_line_stays_on_the_line() -> Result<()> {
        let r = rec(10.0, 1, (0..11).map(|i| i as f32 * 0.5).collect());
        let up = resample(&r, 40.0)?;
        assert_eq!(up.len(), 41);
        for (k, v) in up.data.iter().enumerate() {
            assert!((v - k as f32 * 0.125).abs() < 1e-5, "{k}: {v}");
        }
        Ok(())
    }

    #[test]
    fn downsampling_averages_out_fast_vibration() -> Result<()> {
        // 100 Hz: a line plus a +-1 alternation at 50 Hz; at 10 Hz only the line survives.
        let r = rec(
            100.0,
            1,
            (0..201)
                .map(|i| i as f32 * 0.01 + if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
        );
        let down = resample(&r, 10.0)?;
        assert_eq!(down.len(), 21);
        for k in 2..19 {
            let v = down.data[k];
            assert!((v - k as f32 * 0.1).abs() < 0.15, "{k}: {v}");
        }
        Ok(())
    }

    #[test]
    fn crop_pad_and_zscore() -> Result<()> {
        let cfg = ImuPreprocessConfig {
            rate_hz: 10.0,
            window: 4,
            channels: 2,
            ..Default::default()
        };
        // Longer: the centre 4 of 6 rows; the constant channel stays at zero.
        let r = rec(
            10.0,
            2,
            vec![0., 5., 1., 5., 2., 5., 3., 5., 4., 5., 5., 5.],
        );
        let (out, valid) = preprocess_with_length(&r, &cfg)?;
        assert_eq!(valid, 4);
        let s = (1.25f32).sqrt();
        let want = [-1.5 / s, 0., -0.5 / s, 0., 0.5 / s, 0., 1.5 / s, 0.];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
        // Shorter: padded with zeros after the real rows.
        let r = rec(10.0, 2, vec![1., 2., 3., 4.]);
        let (out, valid) = preprocess_with_length(&r, &cfg)?;
        assert_eq!(valid, 2);
        assert_eq!(out, vec![-1., -1., 1., 1., 0., 0., 0., 0.]);
        // Wrong channel count.
        assert!(preprocess(&rec(10.0, 3, vec![0.; 9]), &cfg).is_err());
        Ok(())
    }

    #[test]
    fn windows_split() -> Result<()> {
        let r = rec(10.0, 1, (0..10).map(|i| i as f32).collect());
        let w = split_windows(&r, 4, 3)?;
        assert_eq!(w.len(), 3);
        assert_eq!(w[2].0, vec![6., 7., 8., 9.]);
        let w = split_windows(&r, 12, 3)?;
        assert_eq!((w.len(), w[0].1, w[0].0.len()), (1, 10, 12));
        Ok(())
    }

    #[test]
    fn config_serde_defaults() {
        let c: ImuPreprocessConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ImuPreprocessConfig::default());
        let c: ImuPreprocessConfig = serde_json::from_str(
            r#"{"normalize": {"stats": {"mean": [0], "std": [1]}}, "channels": 1}"#,
        )
        .unwrap();
        assert!(matches!(c.normalize, Normalize::Stats { .. }));
        assert!(serde_json::from_str::<ImuPreprocessConfig>(r#"{"normalise": "zscore"}"#).is_err());
    }
}

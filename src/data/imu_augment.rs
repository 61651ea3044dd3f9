//! Augmented copies of IMU recordings (accelerometer x, y, z then gyroscope x, y, z), for a
//! training split too small to teach its classes (BasicMotions: 32 recordings). Each variant
//! is the recording as another wearer and another watch might have given it:
//!
//! - **rotation**: the watch sits at another angle on the wrist; one random rotation (about a
//!   random axis, up to [`MAX_ROTATION_DEG`]) turns the accelerometer and the gyroscope vectors
//!   alike, so the gravity direction moves a little but the motion's shape is kept;
//! - **time warp and crop**: another pace and another start; a random stretch of
//!   [`MIN_CROP`]..1 of the recording, resampled linearly to the original length;
//! - **scaling**: per channel gains around 1 (sensor calibration, stronger or weaker motion);
//! - **jitter**: Gaussian noise at a fraction of each channel's standard deviation.
//!
//! Every draw comes from a seeded generator per (recording, variant), so building again
//! writes the same samples.

use anymal_util::rng::SplitMix64;

pub const MAX_ROTATION_DEG: f64 = 20.0;
pub const MIN_CROP: f64 = 0.85;
/// Gains drawn from 1 +- this.
pub const MAX_GAIN_CHANGE: f64 = 0.1;
/// Noise standard deviation as a fraction of each channel's.
pub const JITTER: f64 = 0.05;

/// A row-major `(samples, 6)` recording, augmented with the draws of `seed`.
pub fn augment(data: &[f32], seed: u64) -> Vec<f32> {
    const C: usize = 6;
    let n = data.len() / C;
    if n < 2 {
        return data.to_vec();
    }
    let mut rng = SplitMix64::new(seed);

    // Time warp and crop: rows [start, start + len) resampled to n rows.
    let len = rng.uniform(MIN_CROP, 1.0) * (n - 1) as f64;
    let start = rng.uniform(0.0, (n - 1) as f64 - len);
    let mut out = vec![0f32; n * C];
    for i in 0..n {
        let pos = start + len * i as f64 / (n - 1) as f64;
        let lo = (pos.floor() as usize).min(n - 1);
        let hi = (lo + 1).min(n - 1);
        let w = (pos - lo as f64) as f32;
        for c in 0..C {
            out[i * C + c] = data[lo * C + c] * (1.0 - w) + data[hi * C + c] * w;
        }
    }

    // One rotation for both sensors (Rodrigues' formula about a random unit axis).
    let axis = loop {
        let v = [
            rng.normal(0.0, 1.0),
            rng.normal(0.0, 1.0),
            rng.normal(0.0, 1.0),
        ];
        let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if norm > 1e-6 {
            break [v[0] / norm, v[1] / norm, v[2] / norm];
        }
    };
    let angle = rng
        .uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
        .to_radians();
    let r = rotation(axis, angle);
    for row in out.chunks_mut(C) {
        for sensor in row.chunks_mut(3) {
            let v = [sensor[0] as f64, sensor[1] as f64, sensor[2] as f64];
            for (k, s) in sensor.iter_mut().enumerate() {
                *s = (r[k][0] * v[0] + r[k][1] * v[1] + r[k][2] * v[2]) as f32;
            }
        }
    }

    // Gains and noise per channel.
    for c in 0..C {
        let gain = rng.uniform(1.0 - MAX_GAIN_CHANGE, 1.0 + MAX_GAIN_CHANGE) as f32;
        let mean = (0..n).map(|i| out[i * C + c] as f64).sum::<f64>() / n as f64;
        let var = (0..n)
            .map(|i| (out[i * C + c] as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let sigma = JITTER * var.sqrt();
        for i in 0..n {
            out[i * C + c] = out[i * C + c] * gain + rng.normal(0.0, sigma) as f32;
        }
    }
    out
}

/// The matrix of a rotation by `angle` about the unit vector `k`.
fn rotation(k: [f64; 3], angle: f64) -> [[f64; 3]; 3] {
    let (s, c) = angle.sin_cos();
    let t = 1.0 - c;
    let [x, y, z] = k;
    [
        [c + x * x * t, x * y * t - z * s, x * z * t + y * s],
        [y * x * t + z * s, c + y * y * t, y * z * t - x * s],
        [z * x * t - y * s, z * y * t + x * s, c + z * z * t],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording() -> Vec<f32> {
        (0..100)
            .flat_map(|i| {
                let t = i as f32 / 10.0;
                [
                    t.sin(),
                    (2.0 * t).cos(),
                    9.8 + 0.1 * t,
                    0.3 * t.cos(),
                    0.2,
                    -0.1 * t,
                ]
            })
            .collect()
    }

    #[test]
    fn rotations_keep_lengths_and_compose_to_identity() {
        let r = rotation([0.0, 0.6, 0.8], 0.7);
        let back = rotation([0.0, 0.6, 0.8], -0.7);
        for (i, row) in r.iter().enumerate() {
            for j in 0..3 {
                let p: f64 = row.iter().zip(&back).map(|(a, b)| a * b[j]).sum();
                assert!((p - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn variants_are_seeded_close_to_the_recording_and_different_from_each_other() {
        let x = recording();
        let a = augment(&x, 1);
        assert_eq!(a.len(), x.len());
        assert_eq!(a, augment(&x, 1), "same seed, same variant");
        assert_ne!(a, augment(&x, 2));
        assert!(a.iter().all(|v| v.is_finite()));
        // Gravity (channel 2, ~9.8) moves into the other axes by at most the rotation angle,
        // and the magnitude of the accelerometer vector changes by at most the gains + noise.
        let mag = |r: &[f32]| (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
        let mean_mag = |d: &[f32]| d.chunks(6).map(mag).sum::<f32>() / 100.0;
        let (m0, m1) = (mean_mag(&x), mean_mag(&a));
        assert!((m1 / m0 - 1.0).abs() < 0.15, "{m0} vs {m1}");
        let z_mean = a.chunks(6).map(|r| r[2]).sum::<f32>() / 100.0;
        assert!(z_mean > 9.8 * (MAX_ROTATION_DEG.to_radians().cos() as f32) * 0.85);
    }
}

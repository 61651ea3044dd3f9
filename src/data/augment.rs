//! Audio augmentation for the synthesized speech corpus (`anymal data tts`): speed
//! perturbation, additive white or pink noise at a chosen SNR, reverberation through a
//! synthetic room impulse response, and a telephone channel (8 kHz, 300-3400 Hz).
//!
//! Why: clean synthetic voices are far from the test corpus (8 kHz telephone prompts, one
//! studio voice); perturbing speed, room, noise and channel makes the projector learn what was
//! said rather than how one engine renders it. The augmentation runs once, at build time: the
//! feature cache keys on file content, so each variant is its own file.
//!
//! Why hand-written: each piece is a few lines (a biquad, an exponentially decaying noise
//! burst) and their behaviour is pinned by the tests below; the convolution's FFT is
//! `rustfft` (which the encoders use for the log-mel), and resampling reuses the encoders'
//! windowed-sinc resampler.
//! All functions take and return mono f32 at [`SR`].

use anyhow::{anyhow, Result};
use anymal_util::rng::SplitMix64;

/// Sample rate of every signal here (what the audio encoders consume).
pub const SR: u32 = 16_000;

/// Speed perturbation by resampling (pitch moves with speed, as in Kaldi's speed perturb):
/// factor 1.1 plays 10% faster, so the result has `len / 1.1` samples.
pub fn speed(xs: &[f32], factor: f64) -> Result<Vec<f32>> {
    if !(0.5..=2.0).contains(&factor) {
        return Err(anyhow!("speed factor {factor} outside 0.5..2"));
    }
    // Read the samples as if they had been recorded at SR * factor, then bring them to SR.
    let from = (SR as f64 * factor).round() as u32;
    anymal_encoders::audio::resample(xs, from, SR).map_err(|e| anyhow!("speed {factor}: {e}"))
}

/// Noise colours for [`add_noise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noise {
    White,
    /// 1/f power: weighs the low frequencies like room and line hum do.
    Pink,
}

/// Mean power (mean of squares).
pub fn power(xs: &[f32]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / xs.len() as f64
}

/// Noise of `n` samples, unit-free (scaled by the caller).
fn noise(n: usize, colour: Noise, rng: &mut SplitMix64) -> Vec<f32> {
    let white = (0..n).map(|_| rng.normal(0.0, 1.0));
    match colour {
        Noise::White => white.map(|v| v as f32).collect(),
        Noise::Pink => {
            // Sum of first-order low-passes at spread-out poles approximates 1/f over the
            // speech band (a Kellet-style filter bank; coefficients chosen here, not tuned).
            let poles = [0.99886, 0.99332, 0.96900, 0.86650, 0.55000];
            let gains = [0.0555179, 0.0750759, 0.1538520, 0.3104856, 0.5329522];
            let mut state = [0.0f64; 5];
            white
                .map(|w| {
                    let mut y = 0.0;
                    for k in 0..5 {
                        state[k] = poles[k] * state[k] + gains[k] * w;
                        y += state[k];
                    }
                    (y + 0.1 * w) as f32
                })
                .collect()
        }
    }
}

/// `xs` plus noise scaled so that 10 log10(P(xs) / P(noise)) is exactly `snr_db` (powers over
/// the whole clip). A silent clip is returned unchanged (there is no SNR to hold).
pub fn add_noise(xs: &[f32], snr_db: f64, colour: Noise, rng: &mut SplitMix64) -> Vec<f32> {
    let ps = power(xs);
    let ns = noise(xs.len(), colour, rng);
    let pn = power(&ns);
    if ps == 0.0 || pn == 0.0 {
        return xs.to_vec();
    }
    let gain = (ps / pn / 10f64.powf(snr_db / 10.0)).sqrt() as f32;
    xs.iter().zip(&ns).map(|(&x, &n)| x + gain * n).collect()
}

/// A synthetic room impulse response: a unit direct path, then (after a few ms) exponentially
/// decaying noise whose energy falls by 60 dB in `rt60` seconds, with its total energy
/// `drr_db` below the direct path's. Length: the first `rt60` seconds.
pub fn room_impulse(rt60: f64, drr_db: f64, rng: &mut SplitMix64) -> Vec<f32> {
    let n = ((rt60 * SR as f64) as usize).max(2);
    let predelay = (0.003 * SR as f64) as usize + 1;
    // Amplitude decays by 60 dB (x1000) over rt60: exp(-ln(1000) t / rt60).
    let decay = (1000f64).ln() / (rt60 * SR as f64);
    let mut h = vec![0.0f64; n.max(predelay + 1)];
    for (i, v) in h.iter_mut().enumerate().skip(predelay) {
        *v = rng.normal(0.0, 1.0) * (-decay * i as f64).exp();
    }
    let tail: f64 = h.iter().map(|v| v * v).sum();
    let scale = if tail > 0.0 {
        (10f64.powf(-drr_db / 10.0) / tail).sqrt()
    } else {
        0.0
    };
    let mut out: Vec<f32> = h.iter().map(|v| (v * scale) as f32).collect();
    out[0] = 1.0;
    out
}

/// Reverberation: `xs` convolved with `h` (full convolution, so the result is
/// `len(xs) + len(h) - 1` samples: the room's tail rings on after the speech), rescaled to the
/// input's peak so the level does not drift with the room.
pub fn reverb(xs: &[f32], h: &[f32]) -> Vec<f32> {
    if xs.is_empty() || h.is_empty() {
        return xs.to_vec();
    }
    let mut ys = convolve(xs, h);
    let (pi, po) = (peak(xs), peak(&ys));
    if po > 0.0 {
        ys.iter_mut().for_each(|y| *y *= pi / po);
    }
    ys
}

/// Largest absolute sample.
pub fn peak(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// Full linear convolution through the FFT (a 5 s clip with a 0.7 s room would take ~10^9
/// multiply-adds directly, ~10^7 this way).
pub fn convolve(a: &[f32], b: &[f32]) -> Vec<f32> {
    use rustfft::num_complex::Complex;
    let n_out = a.len() + b.len() - 1;
    let n = n_out.next_power_of_two();
    let spectrum = |xs: &[f32]| -> Vec<Complex<f64>> {
        let mut v: Vec<Complex<f64>> = xs.iter().map(|&x| Complex::new(x as f64, 0.0)).collect();
        v.resize(n, Complex::new(0.0, 0.0));
        v
    };
    let mut planner = rustfft::FftPlanner::<f64>::new();
    let (forward, inverse) = (planner.plan_fft_forward(n), planner.plan_fft_inverse(n));
    let (mut fa, mut fb) = (spectrum(a), spectrum(b));
    forward.process(&mut fa);
    forward.process(&mut fb);
    for (x, y) in fa.iter_mut().zip(&fb) {
        *x *= y;
    }
    inverse.process(&mut fa);
    fa[..n_out]
        .iter()
        .map(|c| (c.re / n as f64) as f32)
        .collect()
}

/// A second-order section (RBJ audio-EQ cookbook), run in direct form I.
struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
}

impl Biquad {
    fn new(highpass: bool, f0: f64) -> Self {
        let w0 = 2.0 * std::f64::consts::PI * f0 / SR as f64;
        let alpha = w0.sin() / (2.0 * std::f64::consts::FRAC_1_SQRT_2); // Q = 1/sqrt(2): Butterworth
        let c = w0.cos();
        let a0 = 1.0 + alpha;
        let b = if highpass {
            [(1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0]
        } else {
            [(1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0]
        };
        Self {
            b: b.map(|v| v / a0),
            a: [-2.0 * c / a0, (1.0 - alpha) / a0],
        }
    }

    fn run(&self, xs: &mut [f32]) {
        let (mut x1, mut x2, mut y1, mut y2) = (0.0, 0.0, 0.0, 0.0);
        for v in xs.iter_mut() {
            let x0 = *v as f64;
            let y0 =
                self.b[0] * x0 + self.b[1] * x1 + self.b[2] * x2 - self.a[0] * y1 - self.a[1] * y2;
            (x2, x1, y2, y1) = (x1, x0, y1, y0);
            *v = y0 as f32;
        }
    }
}

/// A telephone channel: down to 8 kHz and back (what the real test corpus is: 8 kHz prompts),
/// then 300-3400 Hz (two cascaded Butterworth sections on each edge, 24 dB/octave), the voice
/// band of a phone line.
pub fn telephone(xs: &[f32]) -> Result<Vec<f32>> {
    let narrow = anymal_encoders::audio::resample(xs, SR, 8_000)
        .map_err(|e| anyhow!("telephone band: {e}"))?;
    let mut ys = anymal_encoders::audio::resample(&narrow, 8_000, SR)
        .map_err(|e| anyhow!("telephone band: {e}"))?;
    for (hp, f) in [
        (true, 300.0),
        (true, 300.0),
        (false, 3400.0),
        (false, 3400.0),
    ] {
        Biquad::new(hp, f).run(&mut ys);
    }
    Ok(ys)
}

/// One augmentation step, as drawn for a clip.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Speed(f64),
    Reverb { rt60: f64, drr_db: f64 },
    Telephone,
    Noise { snr_db: f64, colour: Noise },
}

impl Step {
    /// The manifest's name of the step (`speed1.1`, `reverb0.42`, `tel`, `pink18`).
    pub fn name(&self) -> String {
        match self {
            Step::Speed(f) => format!("speed{f}"),
            Step::Reverb { rt60, .. } => format!("reverb{rt60:.2}"),
            Step::Telephone => "tel".into(),
            Step::Noise { snr_db, colour } => format!(
                "{}{snr_db:.0}",
                if *colour == Noise::Pink {
                    "pink"
                } else {
                    "white"
                }
            ),
        }
    }
}

/// A random chain for one clip: about a quarter of the clips stay clean; otherwise each step
/// is drawn on its own, in the order a real recording would see them (the speaker's pace, the
/// room, the phone line, noise on the line).
pub fn draw_chain(rng: &mut SplitMix64) -> Vec<Step> {
    let mut chain = Vec::new();
    if rng.next_f64() < 0.25 {
        return chain;
    }
    if rng.next_f64() < 0.5 {
        chain.push(Step::Speed(if rng.next_f64() < 0.5 { 0.9 } else { 1.1 }));
    }
    if rng.next_f64() < 0.35 {
        let rt60 = rng.uniform(0.15, 0.7);
        chain.push(Step::Reverb {
            rt60,
            drr_db: rng.uniform(0.0, 8.0),
        });
    }
    if rng.next_f64() < 0.4 {
        chain.push(Step::Telephone);
    }
    if rng.next_f64() < 0.45 {
        let colour = if rng.next_f64() < 0.5 {
            Noise::White
        } else {
            Noise::Pink
        };
        chain.push(Step::Noise {
            snr_db: rng.uniform(10.0, 30.0),
            colour,
        });
    }
    chain
}

/// The manifest's `augment` field for a chain: step names joined by `+`, or `clean`.
pub fn chain_name(chain: &[Step]) -> String {
    if chain.is_empty() {
        return "clean".into();
    }
    chain.iter().map(Step::name).collect::<Vec<_>>().join("+")
}

/// Apply `chain` to `xs`; `rng` draws the noise and the room.
pub fn apply(xs: &[f32], chain: &[Step], rng: &mut SplitMix64) -> Result<Vec<f32>> {
    let mut ys = xs.to_vec();
    for step in chain {
        ys = match step {
            Step::Speed(f) => speed(&ys, *f)?,
            Step::Reverb { rt60, drr_db } => reverb(&ys, &room_impulse(*rt60, *drr_db, rng)),
            Step::Telephone => telephone(&ys)?,
            Step::Noise { snr_db, colour } => add_noise(&ys, *snr_db, *colour, rng),
        };
    }
    Ok(ys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, secs: f64, amp: f32) -> Vec<f32> {
        (0..(secs * SR as f64) as usize)
            .map(|i| amp * (2.0 * std::f64::consts::PI * hz * i as f64 / SR as f64).sin() as f32)
            .collect()
    }

    /// Power of the `hz` component (Goertzel-free: correlation with sine and cosine).
    fn power_at(xs: &[f32], hz: f64) -> f64 {
        let (mut s, mut c) = (0.0, 0.0);
        for (i, &x) in xs.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * hz * i as f64 / SR as f64;
            s += x as f64 * ph.sin();
            c += x as f64 * ph.cos();
        }
        (s * s + c * c) * 2.0 / (xs.len() as f64).powi(2)
    }

    #[test]
    fn noise_is_mixed_at_the_asked_snr() {
        let clean = tone(440.0, 1.0, 0.3);
        for (snr, colour) in [
            (10.0, Noise::White),
            (25.0, Noise::Pink),
            (17.5, Noise::Pink),
        ] {
            let mut rng = SplitMix64::new(7);
            let noisy = add_noise(&clean, snr, colour, &mut rng);
            let residual: Vec<f32> = noisy.iter().zip(&clean).map(|(a, b)| a - b).collect();
            let got = 10.0 * (power(&clean) / power(&residual)).log10();
            assert!(
                (got - snr).abs() < 0.5,
                "{colour:?}: asked {snr} dB, got {got}"
            );
        }
    }

    #[test]
    fn pink_noise_has_more_low_than_high_energy() {
        let mut rng = SplitMix64::new(3);
        let silent_tone = tone(1.0, 2.0, 1e-3);
        let n = add_noise(&silent_tone, 0.0, Noise::Pink, &mut rng);
        let lo: f64 = (100..120).map(|f| power_at(&n, f as f64)).sum();
        let hi: f64 = (4000..4020).map(|f| power_at(&n, f as f64)).sum();
        assert!(lo > 5.0 * hi, "pink: low {lo} vs high {hi}");
    }

    #[test]
    fn speed_changes_the_length_by_the_factor() -> Result<()> {
        let xs = tone(300.0, 2.0, 0.5);
        let fast = speed(&xs, 1.1)?;
        let want = xs.len() as f64 / 1.1;
        assert!(
            (fast.len() as f64 - want).abs() <= 2.0,
            "{} vs {want}",
            fast.len()
        );
        let slow = speed(&xs, 0.9)?;
        assert!((slow.len() as f64 - xs.len() as f64 / 0.9).abs() <= 2.0);
        // The tone moves up with the speed: 300 Hz played 1.1x faster is 330 Hz.
        assert!(power_at(&fast, 330.0) > 10.0 * power_at(&fast, 300.0));
        Ok(())
    }

    #[test]
    fn telephone_band_removes_6khz_and_keeps_1khz() -> Result<()> {
        let xs: Vec<f32> = tone(1000.0, 1.0, 0.3)
            .iter()
            .zip(tone(6000.0, 1.0, 0.3))
            .map(|(a, b)| a + b)
            .collect();
        let ys = telephone(&xs)?;
        assert_eq!(ys.len(), xs.len());
        let keep = power_at(&ys, 1000.0) / power_at(&xs, 1000.0);
        let gone = power_at(&ys, 6000.0) / power_at(&xs, 6000.0);
        assert!(keep > 0.8, "1 kHz kept at {keep}");
        assert!(gone < 1e-4, "6 kHz left at {gone}");
        // And below the band: 100 Hz is cut by the 300 Hz high-pass.
        let low = telephone(&tone(100.0, 1.0, 0.3))?;
        assert!(power(&low[4000..]) < 0.05 * power(&tone(100.0, 1.0, 0.3)));
        Ok(())
    }

    #[test]
    fn reverb_keeps_the_length_adds_the_tail_and_stays_finite() {
        let mut rng = SplitMix64::new(11);
        let xs = tone(500.0, 0.5, 0.5);
        let h = room_impulse(0.5, 3.0, &mut rng);
        assert_eq!(h.len(), 8000);
        let ys = reverb(&xs, &h);
        assert_eq!(ys.len(), xs.len() + h.len() - 1);
        assert!(ys.iter().all(|y| y.is_finite()));
        assert!((peak(&ys) - peak(&xs)).abs() < 1e-4);
        // The room rings on after the speech stops, and dies away.
        let tail = &ys[xs.len()..];
        assert!(power(&tail[..800]) > 1e-5, "no tail");
        assert!(power(&tail[tail.len() - 800..]) < power(&tail[..800]) / 100.0);
    }

    #[test]
    fn fft_convolution_matches_the_direct_sum() {
        let a = [1.0, -2.0, 0.5, 3.0, 0.0, 1.5];
        let b = [0.25, 1.0, -1.0];
        let got = convolve(&a, &b);
        let mut want = vec![0.0f32; a.len() + b.len() - 1];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                want[i + j] += x * y;
            }
        }
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn chains_are_seeded_and_named() {
        let a: Vec<String> = (0..50)
            .map(|i| chain_name(&draw_chain(&mut SplitMix64::new(i))))
            .collect();
        let b: Vec<String> = (0..50)
            .map(|i| chain_name(&draw_chain(&mut SplitMix64::new(i))))
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().any(|n| n == "clean"));
        assert!(a.iter().any(|n| n.contains("tel")));
        assert!(a.iter().any(|n| n.contains("reverb")));
    }
}

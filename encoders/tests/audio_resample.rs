//! The resampler keeps a tone's frequency, amplitude and timing, and removes what the target
//! rate cannot hold. The reference is the analytic sine itself.
use anymal_encoders::audio::resample;

fn sine(hz: f64, sr: u32, n: usize, amp: f64) -> Vec<f32> {
    (0..n)
        .map(|i| (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / sr as f64).sin()) as f32)
        .collect()
}

#[test]
fn sine_440_keeps_frequency_amplitude_and_phase() {
    for from in [8000u32, 48000, 44100, 22050] {
        let x = sine(440.0, from, from as usize * 2, 0.5);
        let y = resample(&x, from, 16000).unwrap();
        assert_eq!(y.len(), 32000, "{from}");
        // Away from the edges, sample by sample against the exact sine at 16 kHz delayed by
        // d output samples, d searched in [-0.5, 0.5]: frequency, amplitude and timing within
        // half a sample at once.
        let (err, d) = (-50..=50)
            .map(|k| {
                let d = k as f64 / 100.0;
                let e = (2000..30000)
                    .map(|i| {
                        let t = (i as f64 - d) / 16000.0;
                        (y[i] as f64 - 0.5 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()).abs()
                    })
                    .fold(0f64, f64::max);
                (e, d)
            })
            .fold((f64::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a });
        eprintln!("{from} Hz -> 16 kHz: max error {err:.2e} at delay {d} samples");
        assert!(
            err < 1e-3,
            "{from} Hz -> 16 kHz: max error {err} (best delay {d})"
        );
        if from == 8000 {
            assert_eq!(d, 0.0, "2x upsampling must be exactly aligned");
        }
    }
}

#[test]
fn content_above_the_new_nyquist_is_removed() {
    // 10 kHz cannot exist at 16 kHz: it must vanish, not alias to 6 kHz.
    let x = sine(10_000.0, 48000, 96000, 0.5);
    let y = resample(&x, 48000, 16000).unwrap();
    let rms = (y[2000..30000]
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        / 28000.0)
        .sqrt();
    assert!(rms < 1e-3, "rms {rms}");
}

#[test]
fn identity_and_bad_rates() {
    let x = sine(440.0, 16000, 1000, 0.5);
    assert_eq!(resample(&x, 16000, 16000).unwrap(), x);
    assert!(resample(&x, 0, 16000).is_err());
}

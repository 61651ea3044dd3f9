//! Whisper's log-mel spectrogram, computed the way `whisper.audio.log_mel_spectrogram` does.
//!
//! Pipeline for one 30 s window, `(480000,)` samples at 16 kHz -> `(n_mels, 3000)`:
//! 1. STFT as `torch.stft(x, 400, 160, window=hann_window(400), center=True)`: the signal is
//!    reflect-padded by 200 samples on both sides (torch's default `pad_mode="reflect"`, which
//!    mirrors without repeating the edge sample), framed every 160 samples (3001 frames), each
//!    frame multiplied by the *periodic* Hann window and transformed with a 400-point FFT
//!    (201 bins). Whisper drops the last frame (`stft[..., :-1]`): 3000 frames remain.
//! 2. Power spectrum `|X|^2`, then the slaney mel filter bank `(n_mels, 201)` ([`mel_filters`]).
//! 3. `log10(max(mel, 1e-10))`, floored at `max - 8` (max over the whole window), then
//!    `(x + 4) / 4`.
//!
//! Which Whisper call this matches: `whisper.log_mel_spectrogram(whisper.pad_or_trim(audio),
//! n_mels)`, and, for clips of at most 30 s, also the first 3000 frames of what `transcribe`
//! computes (`log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)`): the extra zero padding
//! only adds frames of silence whose log is -10, below any max-8 floor, and frame 2999 sees
//! zeros in both cases. For longer audio `transcribe` takes the max over the whole file while
//! [`log_mel_spectrogram`] normalises each 30 s window on its own.

use std::f64::consts::PI;
use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::error::{Error, Result};

/// Audio sample rate Whisper expects.
pub const SAMPLE_RATE: usize = 16_000;
/// FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Samples in one Whisper window: 30 s.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one Whisper window.
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;
/// Frequency bins of a 400-point real FFT.
pub const N_FREQS: usize = N_FFT / 2 + 1;

/// librosa's slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// numpy's `linspace(start, stop, n)`: `start + i * step`, with the last point exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// The mel filter bank Whisper ships in `mel_filters.npz`, recomputed: librosa's
/// `filters.mel(sr=16000, n_fft=400, n_mels, fmin=0, fmax=8000, htk=False, norm="slaney")`.
/// Returns `(n_mels, 201)` row-major f32 (computed in f64, rounded once at the end as librosa
/// does).
pub fn mel_filters(n_mels: usize) -> Result<Vec<f32>> {
    if n_mels == 0 || n_mels > 512 {
        return Err(Error::InvalidArgument(format!(
            "n_mels must be between 1 and 512 (Whisper uses 80 or 128), got {n_mels}"
        )));
    }
    let fftfreqs = linspace(0.0, SAMPLE_RATE as f64 / 2.0, N_FREQS);
    let mels = linspace(hz_to_mel(0.0), hz_to_mel(8000.0), n_mels + 2);
    let mel_f: Vec<f64> = mels.iter().map(|&m| mel_to_hz(m)).collect();
    let mut weights = vec![0f32; n_mels * N_FREQS];
    for i in 0..n_mels {
        let (lo, c, hi) = (mel_f[i], mel_f[i + 1], mel_f[i + 2]);
        // Slaney normalisation: each triangle has unit area in Hz, so wider (higher) bands
        // are not louder.
        let enorm = 2.0 / (hi - lo);
        for (k, &f) in fftfreqs.iter().enumerate() {
            // Written as librosa does (ramps and differences) so rounding matches closely.
            let lower = -(lo - f) / (c - lo);
            let upper = (hi - f) / (hi - c);
            let w = lower.min(upper).max(0.0);
            weights[i * N_FREQS + k] = (w * enorm) as f32;
        }
    }
    Ok(weights)
}

/// Reusable state for computing log-mel spectrograms: the filter bank, the window and the FFT
/// plan. Cheap to clone (the plan is shared).
#[derive(Clone)]
pub struct LogMel {
    n_mels: usize,
    filters: Vec<f32>,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
}

impl LogMel {
    pub fn new(n_mels: usize) -> Result<Self> {
        let filters = mel_filters(n_mels)?;
        // Periodic Hann (torch.hann_window(400), periodic=True): the N+1-point symmetric
        // window without its last point, so overlapped frames sum to a constant.
        let window = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * PI * i as f64 / N_FFT as f64).cos())
            .collect();
        let fft = FftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        Ok(Self {
            n_mels,
            filters,
            window,
            fft,
        })
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel of one 30 s window: `samples_16k` `(n,)` is zero-padded or cut to 480000
    /// samples first. Returns `(n_mels, 3000)` row-major.
    pub fn compute(&self, samples_16k: &[f32]) -> Result<Vec<f32>> {
        if let Some(i) = samples_16k.iter().position(|s| !s.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "audio sample {i} is {} (NaN or infinite)",
                samples_16k[i]
            )));
        }
        let pad = N_FFT / 2;
        // pad_or_trim to 30 s, then reflect-pad by 200 on each side: x[-k] = x[k] and
        // x[N-1+k] = x[N-1-k].
        let mut x = vec![0f64; N_SAMPLES + 2 * pad];
        for (d, &s) in x[pad..pad + N_SAMPLES].iter_mut().zip(samples_16k.iter()) {
            *d = s as f64;
        }
        for k in 1..=pad {
            x[pad - k] = x[pad + k];
            x[pad + N_SAMPLES - 1 + k] = x[pad + N_SAMPLES - 1 - k];
        }

        // Power spectrum, frequency-major (201, 3000), so each mel row is a dot product over
        // contiguous memory per frame below.
        let mut power = vec![0f32; N_FRAMES * N_FREQS];
        let mut buf = vec![Complex::new(0f64, 0f64); N_FFT];
        let mut scratch = vec![Complex::new(0f64, 0f64); self.fft.get_inplace_scratch_len()];
        for t in 0..N_FRAMES {
            let frame = &x[t * HOP_LENGTH..t * HOP_LENGTH + N_FFT];
            for ((b, &s), &w) in buf.iter_mut().zip(frame).zip(&self.window) {
                *b = Complex::new(s * w, 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (k, c) in buf.iter().take(N_FREQS).enumerate() {
                power[t * N_FREQS + k] = c.norm_sqr() as f32;
            }
        }

        let mut out = vec![0f32; self.n_mels * N_FRAMES];
        let mut max = f32::NEG_INFINITY;
        for m in 0..self.n_mels {
            let row = &self.filters[m * N_FREQS..(m + 1) * N_FREQS];
            // The triangle is non-zero on a few bins only: skip the zeros.
            let first = row.iter().position(|&w| w != 0.0).unwrap_or(N_FREQS);
            let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
            for t in 0..N_FRAMES {
                let p = &power[t * N_FREQS..(t + 1) * N_FREQS];
                let mut acc = 0f64;
                for k in first..last {
                    acc += row[k] as f64 * p[k] as f64;
                }
                let v = (acc.max(1e-10)).log10() as f32;
                max = max.max(v);
                out[m * N_FRAMES + t] = v;
            }
        }
        let floor = max - 8.0;
        for v in out.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        Ok(out)
    }
}

/// Whisper's log-mel of `samples_16k` `(n,)` at 16 kHz, padded with zeros or cut to 30 s:
/// `(n_mels, 3000)` row-major. See the module docs for the exact Whisper call it matches.
pub fn log_mel_spectrogram(samples_16k: &[f32], n_mels: usize) -> Result<Vec<f32>> {
    LogMel::new(n_mels)?.compute(samples_16k)
}

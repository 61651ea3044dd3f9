//! Sample-rate conversion with a windowed-sinc resampler (rubato).

use rubato::{FftFixedIn, Resampler};

use crate::error::{Error, Result};

/// Input frames handed to rubato per call; any value works, 4096 keeps the per-call overhead
/// small without a large scratch buffer.
const CHUNK: usize = 4096;

/// Resamples mono `samples` `(n,)` from `from_hz` to `to_hz`, returning
/// `(round(n * to_hz / from_hz),)` samples aligned in time with the input: the filter's delay
/// is removed, so output sample `i` sits at time `i / to_hz` (exactly for 8k -> 16k, within
/// half an output sample for rates such as 48k or 44.1k whose filter delay is not a whole
/// number of output samples).
///
/// The low-pass is a windowed sinc with its cutoff just under the lower Nyquist frequency:
/// content above `min(from, to) / 2` is removed (anti-aliasing when downsampling, no imaging
/// when upsampling). Equal rates return the input unchanged.
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>> {
    if from_hz == 0 || to_hz == 0 {
        return Err(Error::InvalidArgument(format!(
            "cannot resample from {from_hz} Hz to {to_hz} Hz: rates must be positive"
        )));
    }
    if from_hz == to_hz || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let ratio = to_hz as f64 / from_hz as f64;
    let rerr = |e: &dyn std::fmt::Display| {
        Error::Internal(format!("resampling {from_hz} Hz -> {to_hz} Hz failed: {e}"))
    };
    // Synchronous (fixed integer-ratio) resampler: the rate pair is reduced by its gcd
    // (8000:16000 = 1:2, 44100:16000 = 441:160) and each block is filtered in the frequency
    // domain with a Blackman-Harris windowed-sinc low-pass at the lower Nyquist. Exact ratio,
    // no drift, and faster than evaluating the sinc per output sample for the usual rates.
    let mut rs = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, CHUNK, 2, 1)
        .map_err(|e| rerr(&e))?;

    let want = ((samples.len() as f64) * ratio).round() as usize;
    let delay = rs.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(want + delay + CHUNK);
    let mut pos = 0;
    while pos + CHUNK <= samples.len() {
        let block = rs
            .process(&[&samples[pos..pos + CHUNK]], None)
            .map_err(|e| rerr(&e))?;
        out.extend_from_slice(&block[0]);
        pos += CHUNK;
    }
    if pos < samples.len() {
        let block = rs
            .process_partial(Some(&[&samples[pos..]]), None)
            .map_err(|e| rerr(&e))?;
        out.extend_from_slice(&block[0]);
    }
    // Flush: feed silence until the filter's delay line has produced every output sample.
    while out.len() < want + delay {
        let block = rs
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| rerr(&e))?;
        if block[0].is_empty() {
            break;
        }
        out.extend_from_slice(&block[0]);
    }
    let end = (delay + want).min(out.len());
    let mut y = out[delay.min(end)..end].to_vec();
    y.resize(want, 0.0);
    Ok(y)
}

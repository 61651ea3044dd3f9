//! Whisper's log-mel front end against Whisper's own filter bank and spectrogram.
mod common;

use std::io::Read;

use anymal_encoders::audio::{log_mel_spectrogram, mel_filters};
use common::{asset, f32s, reference, repeat_16k};

/// Reads one float32 array from Whisper's `mel_filters.npz` (a zip of `.npy` files): the
/// `.npy` header is a magic, a version, a little-endian header length and a Python dict
/// literal; the data follow in C order.
fn npz_f32(name: &str) -> (Vec<usize>, Vec<f32>) {
    let path = asset("whisper/mel_filters.npz", "mel-filters");
    let file = std::fs::File::open(&path).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut entry = zip.by_name(&format!("{name}.npy")).unwrap();
    let mut buf = Vec::new();
    entry.read_to_end(&mut buf).unwrap();
    assert_eq!(&buf[..6], b"\x93NUMPY");
    let (hlen, start) = if buf[6] == 1 {
        (u16::from_le_bytes([buf[8], buf[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&buf[start..start + hlen]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = buf[start + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

#[test]
fn filter_bank_matches_whispers_npz() {
    for n in [80usize, 128] {
        let (shape, want) = npz_f32(&format!("mel_{n}"));
        assert_eq!(shape, vec![n, 201]);
        let got = mel_filters(n).unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Filter weights peak around 0.03; 1e-6 is about f32 rounding of those.
        assert!(err < 1e-6, "mel_{n}: max abs error {err}");
    }
}

/// Compares a Rust log-mel `(n_mels, 3000)` with the reference entry from the fixture.
/// Tolerance: 5e-5 per value (measured: under 1e-5); the residue is torch's f32 FFT and matmul
/// against our f64 ones. 1e-5 on the means and the max.
fn check_mel(got: &[f32], r: &serde_json::Value) -> f32 {
    let n_mels = r["n_mels"].as_u64().unwrap() as usize;
    assert_eq!(got.len(), n_mels * 3000);
    let max = got.iter().cloned().fold(f32::MIN, f32::max);
    assert!(
        (max - r["max"].as_f64().unwrap() as f32).abs() < 1e-5,
        "max {max}"
    );
    let rows = r["sample_rows"].as_array().unwrap();
    let cols = r["sample_cols"].as_array().unwrap();
    let vals = f32s(&r["sample_values"]);
    let mut worst = 0f32;
    for ((row, col), want) in rows.iter().zip(cols).zip(&vals) {
        let (row, col) = (
            row.as_u64().unwrap() as usize,
            col.as_u64().unwrap() as usize,
        );
        worst = worst.max((got[row * 3000 + col] - want).abs());
    }
    for (m, want) in f32s(&r["row_means"]).iter().enumerate() {
        let mean = got[m * 3000..(m + 1) * 3000]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>()
            / 3000.0;
        assert!(
            (mean as f32 - want).abs() < 1e-5,
            "row {m}: {mean} vs {want}"
        );
    }
    for (t, want) in f32s(&r["frame_means_0_400"]).iter().enumerate() {
        let mean = (0..n_mels).map(|m| got[m * 3000 + t] as f64).sum::<f64>() / n_mels as f64;
        worst = worst.max((mean as f32 - want).abs());
    }
    assert!(worst < 5e-5, "max abs error {worst}");
    worst
}

#[test]
fn spectrogram_matches_openai_whisper() {
    let doc = reference();
    for clip in doc["clips"].as_array().unwrap() {
        let x = repeat_16k(clip["file"].as_str().unwrap());
        assert_eq!(x.len() as u64, clip["n_samples_16k"].as_u64().unwrap());
        for w in clip["windows"].as_array().unwrap() {
            let start = w["start"].as_u64().unwrap() as usize;
            let len = w["len"].as_u64().unwrap() as usize;
            let xw = &x[start..start + len];
            let e80 = check_mel(&log_mel_spectrogram(xw, 80).unwrap(), &w["mel80"]);
            eprintln!("{} @{start}: mel80 max abs err {e80:.2e}", clip["file"]);
            if !w["mel128"].is_null() {
                let e128 = check_mel(&log_mel_spectrogram(xw, 128).unwrap(), &w["mel128"]);
                eprintln!("{} @{start}: mel128 max abs err {e128:.2e}", clip["file"]);
            }
        }
    }
}

#[test]
fn bad_inputs() {
    assert!(mel_filters(0).is_err());
    assert!(log_mel_spectrogram(&[0.0, f32::NAN], 80).is_err());
    // Silence is valid: log10(1e-10) everywhere, (-10 + 4) / 4.
    let m = log_mel_spectrogram(&[], 80).unwrap();
    assert!(m.iter().all(|&v| v == -1.5));
}

//! IMU (motion sensor) recordings: reading CSV (`csv`) and sktime `.ts` (`ts`) files,
//! resampling, windowing and normalisation (`signal`).
//!
//! ```text
//! file.csv / file.ts --read--> ImuRecording (t, c) at rate_hz --preprocess--> (window, channels)
//! ```
//!
//! IMU encoders are small and trained with the projector (`anymal_adapters::imu_encoder`), so
//! this module stops at the preprocessed samples.

pub mod csv;
pub mod modality;
pub mod signal;
pub mod ts;

use std::path::Path;

pub use csv::{read_csv, ImuCsvOptions, TimeUnit};
pub use modality::{ImuModality, ImuWindow};
pub use signal::{
    channel_stats, preprocess, preprocess_with_length, resample, split_windows, Crop,
    ImuPreprocessConfig, Normalize,
};
pub use ts::read_ts;

use crate::error::{Error, Result};

/// A multichannel series sampled at a fixed rate: `data` is `(t, channels)` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImuRecording {
    pub rate_hz: f32,
    pub channels: usize,
    /// `(t, channels)` row-major: sample `i` of channel `c` is `data[i * channels + c]`.
    pub data: Vec<f32>,
    /// One name per channel (the CSV header, or `dim_0`.. when the file has none).
    pub names: Vec<String>,
}

impl ImuRecording {
    /// Number of samples (rows).
    pub fn len(&self) -> usize {
        self.data.len() / self.channels.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.len() as f64 / self.rate_hz.max(f32::MIN_POSITIVE) as f64
    }

    /// The samples of channel `c`, `(t,)`; empty when `c` is out of range.
    pub fn channel(&self, c: usize) -> Vec<f32> {
        if c >= self.channels {
            return Vec::new();
        }
        self.data
            .iter()
            .skip(c)
            .step_by(self.channels)
            .copied()
            .collect()
    }
}

/// Reads one recording and preprocesses it with `cfg`: `(cfg.window, cfg.channels)` row-major.
///
/// By extension: `.csv`, `.tsv`, `.txt` are read with [`read_csv`] (timestamps from the file, or
/// `cfg.source_rate_hz` when it has no time column); `.ts` with [`read_ts`] and must hold exactly
/// one recording (at `cfg.source_rate_hz`, else at `cfg.rate_hz`). A channel count other than
/// `cfg.channels` is an error naming the file.
pub fn load_imu(path: &Path, cfg: &ImuPreprocessConfig) -> Result<Vec<f32>> {
    Ok(load_imu_with_length(path, cfg)?.0)
}

/// [`load_imu`] plus how many of the `cfg.window` rows are real samples (the rest is padding).
pub fn load_imu_with_length(path: &Path, cfg: &ImuPreprocessConfig) -> Result<(Vec<f32>, usize)> {
    let rec = read_imu(path, cfg)?;
    if rec.channels != cfg.channels {
        return Err(Error::BadData {
            path: path.to_path_buf(),
            what: format!(
                "{} channels ({}), the configuration expects {}",
                rec.channels,
                rec.names.join(", "),
                cfg.channels
            ),
        });
    }
    crate::limits::check_imu_rows(path, rec.duration_s() * f64::from(cfg.rate_hz), cfg.rate_hz)?;
    preprocess_with_length(&rec, cfg).map_err(|e| Error::BadData {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

/// Reads one recording without preprocessing, choosing the reader by extension (see
/// [`load_imu`]).
pub fn read_imu(path: &Path, cfg: &ImuPreprocessConfig) -> Result<ImuRecording> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" | "tsv" | "txt" => {
            let opts = ImuCsvOptions {
                rate_hz: cfg.source_rate_hz,
                ..Default::default()
            };
            read_csv(path, &opts)
        }
        "ts" => {
            let rate = cfg.source_rate_hz.unwrap_or(cfg.rate_hz);
            let mut recs = read_ts(path, rate)?;
            if recs.len() != 1 {
                return Err(Error::BadData {
                    path: path.to_path_buf(),
                    what: format!(
                        "holds {} recordings; a single IMU input must hold exactly one",
                        recs.len()
                    ),
                });
            }
            Ok(recs.remove(0).0)
        }
        _ => Err(Error::BadData {
            path: path.to_path_buf(),
            what: format!(
                "unknown IMU file type '.{ext}' (expected .csv, .tsv, .txt or a single-recording .ts)"
            ),
        }),
    }
}

/// The file as text; a missing file is an I/O error naming it, bytes that are not UTF-8 a
/// `BadData` naming it.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| Error::BadData {
        path: path.to_path_buf(),
        what: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })
}

/// A cell as a finite number. `decimal_comma`: a lone `,` is the decimal mark (`1,5`), as in
/// semicolon- or tab-separated files written with European locales.
pub(crate) fn parse_number(cell: &str, decimal_comma: bool) -> std::result::Result<f64, String> {
    let s = cell.trim().trim_matches('"').trim();
    if s.is_empty() {
        return Err("empty cell".into());
    }
    let owned;
    let s = if decimal_comma && s.matches(',').count() == 1 && !s.contains('.') {
        owned = s.replace(',', ".");
        owned.as_str()
    } else {
        s
    };
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("'{s}' is not a finite number")),
        Err(_) if s == "?" => Err("missing value '?'".into()),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

/// [`parse_number`] for a sample value, which is stored as f32.
pub(crate) fn parse_sample(cell: &str, decimal_comma: bool) -> std::result::Result<f32, String> {
    let v = parse_number(cell, decimal_comma)?;
    let f = v as f32;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(format!("{v} is too large for a 32-bit sample"))
    }
}

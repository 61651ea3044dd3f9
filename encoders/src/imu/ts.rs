//! The sktime / UEA `.ts` format: `#` comments, `@tag value` header lines up to `@data`, then
//! one recording per line: its dimensions separated by `:`, each a comma-separated series,
//! and, with `@classLabel true`, the class label as the last `:` field.
//!
//! ```text
//! @dimensions 2
//! @classLabel true standing walking
//! @data
//! 0.1,0.2,0.3:1.0,1.1,1.2:walking
//! ```
//!
//! Handled: univariate and multivariate, equal and unequal length across recordings (within a
//! recording all dimensions must have the same length, as an IMU's channels do), class labels
//! or none. Not handled: `@timeStamps true` (`(t, v)` tuples), reported as such. The format
//! carries no sample rate, so the caller supplies it.

use std::path::Path;

use super::{parse_sample, read_text, ImuRecording};
use crate::error::{Error, Result};

/// Every recording of a `.ts` file, `(recording (t, dims) at rate_hz, label)` in file order.
/// The label is `None` when the file declares none; a declared label list is enforced.
pub fn read_ts(path: &Path, rate_hz: f32) -> Result<Vec<(ImuRecording, Option<String>)>> {
    if !(rate_hz.is_finite() && rate_hz > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "rate_hz must be a positive number, got {rate_hz}"
        )));
    }
    let text = read_text(path)?;
    let bad = |what: String| Error::BadData {
        path: path.to_path_buf(),
        what,
    };
    if text.trim().is_empty() {
        return Err(bad("empty file".into()));
    }
    let mut dimensions: Option<usize> = None;
    let mut series_length: Option<usize> = None;
    let mut equal_length = false;
    let mut has_label = false;
    let mut labels: Option<Vec<String>> = None;
    let mut in_data = false;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !in_data {
            if !line.starts_with('@') {
                return Err(bad(format!(
                    "line {line_no}: data before @data (expected a @tag header line)"
                )));
            }
            let mut words = line.split_whitespace();
            let tag = words.next().unwrap_or("").to_ascii_lowercase();
            let rest: Vec<&str> = words.collect();
            let flag = || rest.first().map(|w| w.eq_ignore_ascii_case("true"));
            let number = |what: &str| -> Result<usize> {
                rest.first()
                    .and_then(|w| w.parse::<usize>().ok())
                    .ok_or_else(|| bad(format!("line {line_no}: {what} needs a whole number")))
            };
            match tag.as_str() {
                "@data" => in_data = true,
                "@timestamps" if flag() == Some(true) => {
                    return Err(bad(format!(
                        "line {line_no}: @timeStamps true (series of (time, value) tuples) is not supported"
                    )))
                }
                "@dimensions" => dimensions = Some(number("@dimensions")?),
                "@serieslength" => series_length = Some(number("@seriesLength")?),
                "@equallength" => equal_length = flag() == Some(true),
                "@classlabel" => {
                    has_label = flag() == Some(true);
                    labels = has_label.then(|| rest[1..].iter().map(|s| s.to_string()).collect());
                }
                // A regression target is also the last field; keep it as the label text.
                "@targetlabel" => has_label = has_label || flag() == Some(true),
                _ => {}
            }
            continue;
        }
        let mut fields: Vec<&str> = line.split(':').collect();
        let label = if has_label {
            let l = fields.pop().unwrap_or("").trim().to_string();
            if l.is_empty() {
                return Err(Error::BadCell {
                    path: path.to_path_buf(),
                    line: line_no,
                    column: "class label".into(),
                    what: "missing label".into(),
                });
            }
            if let Some(ls) = labels.as_ref().filter(|ls| !ls.is_empty()) {
                if !ls.contains(&l) {
                    return Err(Error::BadCell {
                        path: path.to_path_buf(),
                        line: line_no,
                        column: "class label".into(),
                        what: format!(
                            "'{l}' is not one of the declared labels ({})",
                            ls.join(", ")
                        ),
                    });
                }
            }
            Some(l)
        } else {
            None
        };
        let dims = fields.len();
        let expected = dimensions.unwrap_or(dims);
        if dims != expected || dims == 0 {
            return Err(bad(format!(
                "line {line_no}: {dims} dimensions, the header declares {expected}"
            )));
        }
        dimensions = Some(dims);
        let mut series: Vec<Vec<f32>> = Vec::with_capacity(dims);
        for (d, field) in fields.iter().enumerate() {
            let mut values = Vec::new();
            for (j, cell) in field.split(',').enumerate() {
                let v = parse_sample(cell, false).map_err(|what| Error::BadCell {
                    path: path.to_path_buf(),
                    line: line_no,
                    column: format!("dimension {}, value {}", d + 1, j + 1),
                    what,
                })?;
                values.push(v);
            }
            series.push(values);
        }
        let len = series[0].len();
        if series.iter().any(|s| s.len() != len) {
            let lens: Vec<String> = series.iter().map(|s| s.len().to_string()).collect();
            return Err(bad(format!(
                "line {line_no}: dimensions have different lengths ({}); an IMU recording needs one length for all channels",
                lens.join(", ")
            )));
        }
        if let (true, Some(sl)) = (equal_length, series_length) {
            if len != sl {
                return Err(bad(format!(
                    "line {line_no}: {len} values per dimension, the header declares @seriesLength {sl}"
                )));
            }
        }
        if len < 2 {
            return Err(bad(format!(
                "line {line_no}: only {len} value per dimension; an IMU recording needs at least 2"
            )));
        }
        let mut data = Vec::with_capacity(len * dims);
        for t in 0..len {
            data.extend(series.iter().map(|s| s[t]));
        }
        out.push((
            ImuRecording {
                rate_hz,
                channels: dims,
                data,
                names: (0..dims).map(|d| format!("dim_{d}")).collect(),
            },
            label,
        ));
    }
    if !in_data {
        return Err(bad("no @data line: not a .ts file".into()));
    }
    if out.is_empty() {
        return Err(bad("no recordings after @data".into()));
    }
    Ok(out)
}

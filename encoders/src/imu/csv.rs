//! IMU recordings as delimited text: one row per sample, a time column plus one column per
//! channel (accelerometer, gyroscope, ...), or only channels at a known rate.
//!
//! What is detected, and how:
//! - Delimiter: tab if the first row has one, else `;`, else `,` (override: `delimiter`). With
//!   `;` or tab, a lone comma inside a number is a decimal mark (`9,81`).
//! - Header: the first row is a header when none of its cells is a number (override:
//!   `header`). Lines starting with `#` and blank lines are skipped everywhere.
//! - Time column: with a header, the first column named `t`, `ts`, `time...` or
//!   `timestamp...` (case-insensitive); without a header, the first column, unless `rate_hz`
//!   is given, in which case every column is a channel. With a header and no time-like
//!   column, `rate_hz` must be given.
//! - Time unit (`time_unit = auto`): a unit named in the time header (`time_ms`,
//!   `timestamp (ns)`, `t_s`) wins; otherwise the median step between rows decides: below
//!   0.5 it is seconds, below 1e5 milliseconds, from 1e5 on nanoseconds. That reads every rate
//!   from 2 Hz to 2 kHz correctly in seconds and milliseconds and up to 10 kHz in nanoseconds;
//!   microseconds overlap both and must be asked for. Only differences of times are used, so
//!   epoch timestamps are fine.
//! - Timestamps must increase strictly. When every step is within 1% of the median step the
//!   rows are kept as they are, at rate `(n - 1) / (t_last - t_first)`; otherwise they are
//!   resampled linearly onto a uniform grid at `1 / median step` from the first time.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{parse_number, parse_sample, read_text, ImuRecording};
use crate::error::{Error, Result};

/// Unit of the time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// From the header name, else from the median step (see the module docs).
    #[default]
    Auto,
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
}

impl TimeUnit {
    fn seconds_per_unit(self) -> f64 {
        match self {
            TimeUnit::Auto | TimeUnit::Seconds => 1.0,
            TimeUnit::Milliseconds => 1e-3,
            TimeUnit::Microseconds => 1e-6,
            TimeUnit::Nanoseconds => 1e-9,
        }
    }

    /// A unit spelled in a header such as `time_ms` or `timestamp (ns)`.
    fn from_header(name: &str) -> Option<Self> {
        name.to_ascii_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .skip(1)
            .find_map(|tok| match tok {
                "s" | "sec" | "secs" | "seconds" => Some(TimeUnit::Seconds),
                "ms" | "millis" | "milliseconds" => Some(TimeUnit::Milliseconds),
                "us" | "µs" | "micros" | "microseconds" => Some(TimeUnit::Microseconds),
                "ns" | "nanos" | "nanoseconds" => Some(TimeUnit::Nanoseconds),
                _ => None,
            })
    }

    /// The unit a median step between rows most plausibly is in (see the module docs).
    fn from_median_step(step: f64) -> Self {
        if step < 0.5 {
            TimeUnit::Seconds
        } else if step < 1e5 {
            TimeUnit::Milliseconds
        } else {
            TimeUnit::Nanoseconds
        }
    }
}

/// How to read a CSV recording; every field defaults to detection (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImuCsvOptions {
    /// `,`, `;` or `\t`; `None` detects it.
    pub delimiter: Option<char>,
    /// Whether the first row is a header; `None` detects it.
    pub header: Option<bool>,
    pub time_unit: TimeUnit,
    /// Sample rate of a file without a time column (rows are consecutive samples).
    pub rate_hz: Option<f32>,
}

/// Reads an IMU CSV into an [`ImuRecording`] of every non-time column, `(t, c)`.
///
/// Errors name the file, and the line and column where one is at fault: unparsable, empty,
/// NaN or infinite cells, rows of another width, times that do not increase, an empty file,
/// fewer than two rows.
pub fn read_csv(path: &Path, opts: &ImuCsvOptions) -> Result<ImuRecording> {
    let text = read_text(path)?;
    let bad = |what: String| Error::BadData {
        path: path.to_path_buf(),
        what,
    };
    if let Some(r) = opts.rate_hz {
        if !(r.is_finite() && r > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "rate_hz must be a positive number, got {r}"
            )));
        }
    }
    // (1-based line number, line) of every line that holds data or the header.
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .peekable();
    let Some(&(_, first)) = lines.peek() else {
        return Err(bad("empty file: no rows".into()));
    };
    let delim = opts.delimiter.unwrap_or_else(|| detect_delimiter(first));
    let decimal_comma = delim != ',';
    let split = |l: &str| -> Vec<String> { l.split(delim).map(|c| c.trim().to_string()).collect() };

    let first_cells = split(first);
    let has_header = opts.header.unwrap_or_else(|| {
        first_cells
            .iter()
            .all(|c| parse_number(c, decimal_comma).is_err() && c.trim() != "?")
    });
    let width = first_cells.len();
    let header: Option<Vec<String>> = if has_header {
        lines.next();
        Some(
            first_cells
                .iter()
                .map(|c| c.trim_matches('"').trim().to_string())
                .collect(),
        )
    } else {
        None
    };

    // Which column is time, and its unit when the header names one.
    let time_col: Option<usize> = match &header {
        Some(h) => h.iter().position(|n| is_time_name(n)),
        None if opts.rate_hz.is_some() => None,
        None => Some(0),
    };
    if time_col.is_none() && opts.rate_hz.is_none() {
        return Err(bad(format!(
            "no time column (a header named t, ts, time... or timestamp...) and no rate_hz given; header: {}",
            header.as_deref().unwrap_or_default().join(", ")
        )));
    }
    let col_name = |c: usize| -> String {
        match header.as_ref().and_then(|h| h.get(c)) {
            Some(n) if !n.is_empty() => format!("{} ({n})", c + 1),
            _ => format!("{}", c + 1),
        }
    };
    let channel_cols: Vec<usize> = (0..width).filter(|&c| Some(c) != time_col).collect();
    if channel_cols.is_empty() {
        return Err(bad("no channel columns besides time".into()));
    }
    let names: Vec<String> = channel_cols
        .iter()
        .map(|&c| match header.as_ref().and_then(|h| h.get(c)) {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("dim_{}", c - usize::from(time_col.is_some_and(|t| t < c))),
        })
        .collect();

    let mut times: Vec<f64> = Vec::new();
    let mut data: Vec<f32> = Vec::new();
    let mut time_lines: Vec<usize> = Vec::new();
    for (line_no, line) in lines {
        let cells = split(line);
        if cells.len() != width {
            return Err(bad(format!(
                "line {line_no}: {} fields, expected {width} (as in the {})",
                cells.len(),
                if has_header { "header" } else { "first row" }
            )));
        }
        let cell_err = |c: usize, what: String| Error::BadCell {
            path: path.to_path_buf(),
            line: line_no,
            column: col_name(c),
            what,
        };
        if let Some(tc) = time_col {
            let t = parse_number(&cells[tc], decimal_comma).map_err(|w| cell_err(tc, w))?;
            times.push(t);
            time_lines.push(line_no);
        }
        for &c in &channel_cols {
            data.push(parse_sample(&cells[c], decimal_comma).map_err(|w| cell_err(c, w))?);
        }
    }
    let channels = channel_cols.len();
    let n = data.len() / channels;
    if n == 0 {
        return Err(bad("no data rows (only a header)".into()));
    }
    if n < 2 {
        return Err(bad(format!(
            "only {n} data row; an IMU recording needs at least 2"
        )));
    }

    let Some(tc) = time_col else {
        return Ok(ImuRecording {
            rate_hz: opts.rate_hz.unwrap_or(1.0),
            channels,
            data,
            names,
        });
    };
    // Differences only: epoch timestamps keep their precision relative to the first row.
    let t0 = times[0];
    for i in 1..n {
        if times[i] <= times[i - 1] {
            return Err(Error::BadCell {
                path: path.to_path_buf(),
                line: time_lines[i],
                column: col_name(tc),
                what: format!(
                    "time {} does not increase (the row before has {}); timestamps must increase strictly",
                    times[i],
                    times[i - 1]
                ),
            });
        }
    }
    let mut steps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    steps.sort_by(f64::total_cmp);
    let median = steps[steps.len() / 2];
    let unit = match opts.time_unit {
        TimeUnit::Auto => header
            .as_ref()
            .and_then(|h| TimeUnit::from_header(&h[tc]))
            .unwrap_or_else(|| TimeUnit::from_median_step(median)),
        u => u,
    };
    let scale = unit.seconds_per_unit();
    let secs: Vec<f64> = times.iter().map(|t| (t - t0) * scale).collect();
    let median_s = median * scale;
    let regular = steps.iter().all(|s| (s - median).abs() <= 0.01 * median);
    if regular {
        let rate = (n - 1) as f64 / secs[n - 1];
        return Ok(ImuRecording {
            rate_hz: rate as f32,
            channels,
            data,
            names,
        });
    }
    let rate = 1.0 / median_s;
    crate::limits::check_imu_rows(path, secs[n - 1] * rate, rate as f32)?;
    Ok(ImuRecording {
        rate_hz: rate as f32,
        channels,
        data: resample_irregular(&secs, &data, channels, rate),
        names,
    })
}

/// Linear interpolation of rows at increasing times `secs` (from 0) onto `k / rate`,
/// `k = 0..=floor(t_last * rate)`.
fn resample_irregular(secs: &[f64], data: &[f32], channels: usize, rate: f64) -> Vec<f32> {
    let last = secs[secs.len() - 1];
    // A hair of slack so a grid point that lands on the last time is not lost to rounding.
    let m = (last * rate + 1e-6).floor() as usize + 1;
    let mut out = Vec::with_capacity(m * channels);
    let mut j = 0;
    for k in 0..m {
        let t = (k as f64 / rate).min(last);
        while j + 2 < secs.len() && secs[j + 1] < t {
            j += 1;
        }
        let (ta, tb) = (secs[j], secs[j + 1]);
        let f = ((t - ta) / (tb - ta)).clamp(0.0, 1.0);
        for c in 0..channels {
            let a = data[j * channels + c] as f64;
            let b = data[(j + 1) * channels + c] as f64;
            out.push((a + (b - a) * f) as f32);
        }
    }
    out
}

fn detect_delimiter(first: &str) -> char {
    if first.contains('\t') {
        '\t'
    } else if first.contains(';') {
        ';'
    } else {
        ','
    }
}

fn is_time_name(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n == "t" || n == "ts" || n.starts_with("time") || n.starts_with("t_") || n.starts_with("t (")
}

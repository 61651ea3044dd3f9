//! `metrics.jsonl` of a run: one JSON object per step or evaluation, appended as training goes,
//! cut back to the resumed step when a run continues; and the loss curves drawn from it.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::run_dir::RunDir;

pub struct MetricsLog {
    file: File,
    history: Vec<Value>,
}

impl MetricsLog {
    /// The run's metrics cut back to `start_step` (lines a killed run wrote after its last
    /// checkpoint describe steps that will be redone), opened for appending.
    pub fn open(run: &RunDir, start_step: u64) -> Result<Self> {
        let path = run.metrics();
        let history = read_history(&path, start_step);
        let mut text = String::new();
        for v in &history {
            text.push_str(&v.to_string());
            text.push('\n');
        }
        anymal_util::fs::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Self { file, history })
    }

    pub fn push(&mut self, line: Value) -> Result<()> {
        writeln!(self.file, "{line}").context("writing metrics.jsonl")?;
        self.history.push(line);
        Ok(())
    }

    /// `loss.png` from the `loss` and `eval_loss` points; a failure is a warning (the run
    /// itself succeeded).
    pub fn write_curves(&self, run: &RunDir, title: &str) {
        let curve = |key: &str| -> Vec<(u64, f64)> {
            self.history
                .iter()
                .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get(key)?.as_f64()?)))
                .collect()
        };
        let png = run.loss_plot();
        if let Err(e) =
            super::plot::write_loss_png(&png, &curve("loss"), &curve("eval_loss"), title)
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Lines of `path` up to step `keep_until`; unreadable lines are dropped.
fn read_history(path: &Path, keep_until: u64) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v.get("step")
                .and_then(|s| s.as_u64())
                .is_some_and(|s| s <= keep_until)
        })
        .collect()
}

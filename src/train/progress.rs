//! Progress of a training run on stderr, through `indicatif`.
//!
//! On a terminal, a bar redrawn in place with the loss, learning rate, speed and ETA:
//!
//! ```text
//! [#######>------------] 40/300 loss 2.314 lr 1.0e-4 5.2 samples/s ETA 3m12s
//! ```
//!
//! Elsewhere (a log file, `nohup`, CI) carriage returns would make the log unreadable, so plain
//! lines are printed instead, when a new 5% of the steps is reached or 30 s have passed since the
//! last one, and for the last step:
//!
//! ```text
//! step 40/300 (13%) loss 2.314 lr 1.0e-4 5.2 samples/s ETA 3m12s
//! ```
//!
//! The ETA counts only the steps of this process, so a resumed run does not take the steps of
//! the earlier run as done instantly (indicatif's own estimate would, its position starting at
//! the resumed step).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Least time between two plain lines that are not 5% milestones.
const PLAIN_INTERVAL: Duration = Duration::from_secs(30);

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    start_step: u64,
    started: Instant,
    last_plain: Option<(Instant, u64)>,
    pending: Option<String>,
}

impl Progress {
    /// A display for a run of `total` steps that starts (or resumes) at `start_step`: the bar
    /// when stderr is a terminal, plain lines otherwise.
    pub fn new(total: u64, start_step: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("[{bar:20}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("#>-"),
            );
            bar.set_position(start_step);
            bar
        });
        Self {
            bar,
            total,
            start_step,
            started: Instant::now(),
            last_plain: None,
            pending: None,
        }
    }

    /// Step `step` (1-based, of `total`) is done.
    pub fn update(&mut self, step: u64, loss: f64, lr: f64, samples_per_s: f64) {
        let eta = self
            .eta(step)
            .map(|s| format!(" ETA {}", HumanDuration(Duration::from_secs_f64(s))))
            .unwrap_or_default();
        let stats = format!("loss {loss:.3} lr {lr:.1e} {samples_per_s:.1} samples/s{eta}");
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(stats);
            }
            None => {
                let pct = step * 100 / self.total.max(1);
                let line = format!("step {step}/{} ({pct}%) {stats}", self.total);
                let milestone = |s: u64| s * 20 / self.total.max(1);
                let due = match self.last_plain {
                    None => true,
                    Some((at, s)) => {
                        milestone(step) > milestone(s) || at.elapsed() >= PLAIN_INTERVAL
                    }
                };
                if due || step == self.total {
                    eprintln!("{line}");
                    self.last_plain = Some((Instant::now(), step));
                    self.pending = None;
                } else {
                    self.pending = Some(line);
                }
            }
        }
    }

    /// A line of its own (an evaluation, a checkpoint), above the bar.
    pub fn message(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Leave the bar (or the last plain line) on screen.
    pub fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        } else if let Some(line) = self.pending.take() {
            eprintln!("{line}");
        }
    }

    /// Seconds left, from this process's own pace.
    fn eta(&self, step: u64) -> Option<f64> {
        let done = step.checked_sub(self.start_step).filter(|&d| d > 0)?;
        let per_step = self.started.elapsed().as_secs_f64() / done as f64;
        Some(per_step * self.total.saturating_sub(step) as f64)
    }
}

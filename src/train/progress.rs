//! Progress reporting for long training runs, on stderr, with no dependency beyond `std`.
//!
//! On a terminal a single status line is redrawn in place with `\r`:
//!
//! ```text
//! [#####...............] step 40/300 loss 2.314 lr 1.0e-4 5.2 samples/s ETA 3m12s
//! ```
//!
//! When stderr is not a terminal (a log file, `nohup`, CI), carriage returns would make the log
//! unreadable, so plain lines are printed instead, only when a new 5% of the total steps is
//! reached or when the plain-line interval (default 30 s) has passed since the last line, and
//! always for the last step:
//!
//! ```text
//! step 40/300 (13%) loss 2.314 lr 1.0e-4 5.2 samples/s ETA 3m12s
//! ```
//!
//! The ETA uses only the steps done by this process (`step - start_step` over the time since
//! [`Progress::new`]), so a resumed run does not count the steps of the earlier run as if they
//! had been done instantly.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

/// Width of the `[####....]` bar in characters (inside the brackets).
const BAR_WIDTH: usize = 20;
/// Minimum time between two redraws of the terminal line (redrawing every step of a fast loop
/// would spend more time in the terminal than in training).
const TTY_REDRAW: Duration = Duration::from_millis(100);
/// Default minimum time between two plain (non-terminal) lines that are not 5% milestones.
const DEFAULT_PLAIN_INTERVAL: Duration = Duration::from_secs(30);

/// The values of the last [`Progress::update`].
#[derive(Clone, Copy)]
struct Snapshot {
    step: u64,
    loss: f64,
    lr: f64,
    samples_per_s: f64,
}

/// A progress display for a training loop: a redrawn bar on a terminal, throttled plain lines
/// otherwise. Output errors are ignored on purpose: losing a progress line must never stop a
/// training run.
pub struct Progress {
    total_steps: u64,
    start_step: u64,
    started: Instant,
    out: Box<dyn Write + Send>,
    tty: bool,
    plain_interval: Duration,
    /// When the terminal line was last drawn or the last plain line printed.
    last_output: Option<Instant>,
    /// Index of the last 5% milestone a plain line was printed for.
    last_milestone: Option<u64>,
    /// Characters of the bar currently on screen (0 when none), to blank it out on redraw.
    drawn_len: usize,
    last: Option<Snapshot>,
    /// Whether the latest snapshot has been shown (plain mode), so `finish` does not repeat it.
    last_shown: bool,
    finished: bool,
}

impl Progress {
    /// A progress display on stderr for a run of `total_steps` steps that starts (or resumes)
    /// at `start_step`. Uses the redrawn bar when stderr is a terminal.
    pub fn new(total_steps: u64, start_step: u64) -> Self {
        let tty = io::stderr().is_terminal();
        Self::with_writer(total_steps, start_step, Box::new(io::stderr()), tty)
    }

    /// Like [`Progress::new`] but writing to `out`, drawing the bar when `terminal` is true.
    pub fn with_writer(
        total_steps: u64,
        start_step: u64,
        out: Box<dyn Write + Send>,
        terminal: bool,
    ) -> Self {
        Progress {
            total_steps,
            start_step,
            started: Instant::now(),
            out,
            tty: terminal,
            plain_interval: DEFAULT_PLAIN_INTERVAL,
            last_output: None,
            last_milestone: None,
            drawn_len: 0,
            last: None,
            last_shown: false,
            finished: false,
        }
    }

    /// Sets the minimum time between plain lines that are not 5% milestones (default 30 s).
    pub fn set_plain_interval(&mut self, interval: Duration) {
        self.plain_interval = interval;
    }

    /// Records that `step` (the number of steps completed, `start_step..=total_steps`) finished
    /// with this loss, learning rate and throughput, and redraws or prints when due.
    pub fn update(&mut self, step: u64, loss: f64, lr: f64, samples_per_s: f64) {
        self.last = Some(Snapshot {
            step,
            loss,
            lr,
            samples_per_s,
        });
        self.last_shown = false;
        let now = Instant::now();
        let since_last = self.last_output.map(|t| now.duration_since(t));
        let at_end = step >= self.total_steps;
        if self.tty {
            if at_end || since_last.is_none_or(|d| d >= TTY_REDRAW) {
                self.draw_bar();
                self.last_output = Some(now);
            }
        } else {
            // A total of 0 counts as already complete (milestone 20 = 100%).
            let milestone = step
                .saturating_mul(20)
                .checked_div(self.total_steps)
                .unwrap_or(20);
            let new_milestone = self.last_milestone.is_none_or(|m| milestone > m);
            if at_end || new_milestone || since_last.is_none_or(|d| d >= self.plain_interval) {
                self.print_plain();
                self.last_output = Some(now);
                self.last_milestone = Some(milestone);
            }
        }
    }

    /// Prints a full line of text (an eval result, a checkpoint note) without garbling the bar:
    /// on a terminal the bar is cleared, the line printed, and the bar drawn again below it.
    pub fn message(&mut self, line: &str) {
        if self.tty && self.drawn_len > 0 {
            self.clear_bar();
            let _ = writeln!(self.out, "{line}");
            self.draw_bar();
        } else {
            let _ = writeln!(self.out, "{line}");
        }
        let _ = self.out.flush();
    }

    /// Shows the final state and ends the bar's line; prints the steps done and the time taken.
    /// Calling it again does nothing; dropping an unfinished `Progress` calls it.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.tty {
            if self.last.is_some() {
                if !self.last_shown {
                    self.draw_bar();
                }
                let _ = writeln!(self.out);
                self.drawn_len = 0;
            }
        } else if self.last.is_some() && !self.last_shown {
            self.print_plain();
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = self
            .last
            .map_or(0, |s| s.step.saturating_sub(self.start_step));
        let _ = writeln!(self.out, "done: {done} steps in {}", format_eta(elapsed));
        let _ = self.out.flush();
    }

    /// Seconds left at the current pace of this process, or `None` before any step is done.
    fn eta_secs(&self, step: u64) -> Option<f64> {
        let done = step.saturating_sub(self.start_step);
        let elapsed = self.started.elapsed().as_secs_f64();
        if done == 0 || elapsed <= 0.0 {
            return None;
        }
        let remaining = self.total_steps.saturating_sub(step);
        Some(remaining as f64 * elapsed / done as f64)
    }

    /// The last update as a line, with a bar of `width` characters (0: no bar).
    fn last_line(&self, width: usize) -> Option<String> {
        let s = self.last?;
        Some(render_line(
            s.step,
            self.total_steps,
            s.loss,
            s.lr,
            s.samples_per_s,
            self.eta_secs(s.step),
            width,
        ))
    }

    fn draw_bar(&mut self) {
        let Some(line) = self.last_line(BAR_WIDTH) else {
            return;
        };
        let len = line.chars().count();
        // Pad with spaces over the tail of a longer previous line instead of using ANSI codes.
        let pad = self.drawn_len.saturating_sub(len);
        let _ = write!(self.out, "\r{line}{:pad$}", "");
        let _ = self.out.flush();
        self.drawn_len = len;
        self.last_shown = true;
    }

    fn clear_bar(&mut self) {
        let _ = write!(self.out, "\r{:w$}\r", "", w = self.drawn_len);
        self.drawn_len = 0;
    }

    fn print_plain(&mut self) {
        let Some(line) = self.last_line(0) else {
            return;
        };
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        self.last_shown = true;
    }
}

impl Drop for Progress {
    /// Ends the bar's line so whatever is printed next (an error, a panic message) starts on a
    /// fresh line.
    fn drop(&mut self) {
        if !self.finished && self.tty && self.drawn_len > 0 {
            let _ = writeln!(self.out);
            let _ = self.out.flush();
        }
    }
}

/// Formats a duration in seconds for humans: `42s`, `3m12s`, `2h05m`; `?` for negative,
/// NaN or infinite input (e.g. an ETA before the first step).
pub fn format_eta(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".to_string();
    }
    // Rounding first keeps 59.6 s from printing as "60s".
    let total = secs.round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A loss with three decimals, or in scientific notation when tiny or huge.
fn format_loss(loss: f64) -> String {
    let a = loss.abs();
    if loss == 0.0 || (1e-3..1e5).contains(&a) || !loss.is_finite() {
        format!("{loss:.3}")
    } else {
        format!("{loss:.3e}")
    }
}

/// One status line. With `bar_width > 0` it starts with a `[###...]` bar of that width (the
/// terminal form); with 0 the bar is replaced by the percentage after the step count (the
/// plain-log form). `eta_secs` of `None` prints `ETA ?`.
///
/// `render_line(40, 300, 2.3141, 1e-4, 5.23, Some(192.0), 10)` gives
/// `[#.........] step 40/300 loss 2.314 lr 1.0e-4 5.2 samples/s ETA 3m12s`.
pub fn render_line(
    step: u64,
    total: u64,
    loss: f64,
    lr: f64,
    samples_per_s: f64,
    eta_secs: Option<f64>,
    bar_width: usize,
) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (step as f64 / total as f64).clamp(0.0, 1.0)
    };
    let eta = eta_secs.map_or_else(|| "?".to_string(), format_eta);
    let stats = format!(
        "loss {} lr {lr:.1e} {samples_per_s:.1} samples/s ETA {eta}",
        format_loss(loss)
    );
    if bar_width == 0 {
        let pct = (frac * 100.0).floor() as u64;
        format!("step {step}/{total} ({pct}%) {stats}")
    } else {
        let filled = ((frac * bar_width as f64).floor() as usize).min(bar_width);
        format!(
            "[{}{}] step {step}/{total} {stats}",
            "#".repeat(filled),
            ".".repeat(bar_width - filled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn eta_formats() {
        assert_eq!(format_eta(0.0), "0s");
        assert_eq!(format_eta(42.4), "42s");
        assert_eq!(format_eta(59.6), "1m00s");
        assert_eq!(format_eta(192.0), "3m12s");
        assert_eq!(format_eta(7500.0), "2h05m");
        assert_eq!(format_eta(-1.0), "?");
        assert_eq!(format_eta(f64::NAN), "?");
        assert_eq!(format_eta(f64::INFINITY), "?");
    }

    #[test]
    fn lines_render() {
        assert_eq!(
            render_line(40, 300, 2.3141, 1e-4, 5.23, Some(192.0), 10),
            "[#.........] step 40/300 loss 2.314 lr 1.0e-4 5.2 samples/s ETA 3m12s"
        );
        assert_eq!(
            render_line(150, 300, 0.5, 3e-5, 12.0, None, 10),
            "[#####.....] step 150/300 loss 0.500 lr 3.0e-5 12.0 samples/s ETA ?"
        );
        assert_eq!(
            render_line(40, 300, 2.3141, 1e-4, 5.23, Some(192.0), 0),
            "step 40/300 (13%) loss 2.314 lr 1.0e-4 5.2 samples/s ETA 3m12s"
        );
        // Past the end and empty totals do not overflow the bar.
        assert!(
            render_line(400, 300, 1.0, 1e-4, 1.0, Some(0.0), 4).starts_with("[####] step 400/300")
        );
        assert!(render_line(0, 0, 1.0, 1e-4, 1.0, None, 4).starts_with("[####]"));
        assert_eq!(format_loss(1.5e-5), "1.500e-5");
        assert_eq!(format_loss(f64::NAN), "NaN");
    }

    /// A `Write` that keeps what it is given, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn plain_mode_prints_milestones_only() {
        let sink = Sink::default();
        let mut p = Progress::with_writer(1000, 100, Box::new(sink.clone()), false);
        for step in 101..=1000 {
            p.update(step, 2.0, 1e-4, 10.0);
        }
        p.message("eval loss 1.9");
        p.finish();
        p.finish();
        let text = sink.text();
        assert!(!text.contains('\r'));
        let lines: Vec<&str> = text.lines().collect();
        // First update (milestone 2), milestones 3..=20, the message, the done line.
        assert_eq!(lines.len(), 1 + 18 + 1 + 1, "{text}");
        assert!(lines[0].starts_with("step 101/1000 (10%)"));
        assert!(lines[lines.len() - 3].starts_with("step 1000/1000 (100%)"));
        assert_eq!(lines[lines.len() - 2], "eval loss 1.9");
        assert!(lines[lines.len() - 1].starts_with("done: 900 steps in "));
    }

    #[test]
    fn terminal_mode_redraws_in_place() {
        let sink = Sink::default();
        let mut p = Progress::with_writer(10, 0, Box::new(sink.clone()), true);
        p.update(1, 123.456, 1e-3, 1.0);
        p.message("checkpoint saved");
        p.update(10, 1.0, 1e-3, 1.0);
        p.finish();
        let text = sink.text();
        assert!(
            text.starts_with("\r[##..................] step 1/10 loss 123.456"),
            "{text:?}"
        );
        // The message sits on its own line after the bar was blanked, then the bar comes back.
        assert!(text.contains("\rcheckpoint saved\n\r[##"), "{text:?}");
        // The final bar is shorter than the first one, so it is padded with spaces.
        assert!(
            text.contains(
                "\r[####################] step 10/10 loss 1.000 lr 1.0e-3 1.0 samples/s ETA 0s "
            ),
            "{text:?}"
        );
        // `finish` does not draw the already-shown final bar again; it only ends the line.
        assert!(
            text.ends_with("ETA 0s \ndone: 10 steps in 0s\n"),
            "{text:?}"
        );
    }
}

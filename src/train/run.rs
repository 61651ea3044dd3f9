//! The life of a training run around its step, shared by every recipe's loop: preparing or
//! resuming the run folder, the frozen LLM and the optimizer from the recipe, the step cadence
//! (schedule, metrics, progress, when to evaluate, checkpoint and stop) and the final report.
//! What a step computes and what a checkpoint holds stay in each recipe's loop.
//!
//! ```text
//! let run = TrainingRun::prepare(out, resume, overwrite, recipe_toml)?;
//! let resumed = run.resume(seed, &mut opt, |ckpt| /* load the trainables */)?;
//! let mut steps = StepLoop::new(&run, &recipe.train, &resumed)?;
//! while let Some(step) = steps.next_step() {
//!     /* gradients for steps.items(&order) */
//!     steps.check_finite(loss, grad_norm, "train.lr")?;  opt.step(&grads, steps.lr())?;
//!     steps.record(loss, grad_norm)?;
//!     if steps.eval_due() { steps.record_eval(/* valid loss */)?; }
//!     if steps.save_due() { checkpoint::save(...)?; }
//! }
//! let finished = steps.finish(title);
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use anymal_llm::{LoadOptions, LoadedModel};
use candle_core::Var;
use serde::Serialize;

use super::checkpoint::{self, TrainerState};
use super::data_order::DataOrder;
use super::metrics::MetricsLog;
use super::optim::{AdamW, AdamWConfig};
use super::progress::Progress;
use super::schedule::lr_at;
use crate::recipe::{LlmSection, TrainSection};
use crate::run_dir::{BestRecord, RunDir};

/// A run folder made ready for training.
pub struct TrainingRun {
    pub dir: RunDir,
    /// The checkpoint to continue from (`--resume` and one exists).
    resume_from: Option<(u64, PathBuf)>,
    /// The resolved recipe, written into the folder when training starts.
    recipe_toml: String,
    started: Instant,
}

/// Where training starts: step 0, or a checkpoint's step and the time it had taken.
#[derive(Debug, Clone, Default)]
pub struct Resumed {
    pub step: u64,
    pub elapsed_s: f64,
    /// The best evaluation so far and the evaluations since it, as the checkpoint kept them.
    pub best: Option<crate::run_dir::BestRecord>,
    pub evals_since_best: u64,
}

impl TrainingRun {
    /// Start or continue a run in `out`, which may not be the root, a system folder or the
    /// home folder. Resuming needs a run there: its newest intact checkpoint (see
    /// [`checkpoint::newest_intact`]), or at least the CTC warm start of one killed before its
    /// first checkpoint. A fresh start refuses a folder holding an earlier run's files unless
    /// `overwrite`, which removes them first (the user's other files stay). Then the folder is
    /// created; the recipe is written into it when training starts ([`StepLoop::new`]), so that
    /// a run stopped by bad input before its first step leaves no file that would refuse the
    /// corrected rerun.
    pub fn prepare(out: PathBuf, resume: bool, overwrite: bool, recipe_toml: &str) -> Result<Self> {
        crate::run_dir::refuse_system_folder(&out, "output_dir")?;
        let dir = RunDir::new(out);
        let shown = dir.path().display();
        let earlier = dir.earlier_run_entries();
        let resume_from = if resume {
            if overwrite {
                bail!(
                    "--resume and --overwrite: continue the run in {shown} or replace it, not both"
                );
            }
            if !dir.path().is_dir() {
                bail!("--resume: {shown} does not exist; drop --resume to start a run there");
            }
            checkpoint::clear_leftovers(&dir)?;
            let found = checkpoint::newest_intact(&dir)?;
            let warm_start = dir.path().join(crate::run_dir::CTC_INIT_DIR).is_dir();
            if found.is_none() && !warm_start {
                let how = if earlier.is_empty() {
                    "drop --resume to start one"
                } else {
                    "drop --resume and pass --overwrite to start one over the files there"
                };
                bail!("--resume: {shown} holds no run (no checkpoint-* folder); {how}");
            }
            found
        } else {
            // A CTC warm start alone is no run to protect: a fresh start warms up again and
            // replaces it (ctc_warmup::warm_start). --overwrite removes it with the rest.
            let is_warm_start =
                |p: &PathBuf| p.file_name() == Some(crate::run_dir::CTC_INIT_DIR.as_ref());
            if !earlier.iter().all(is_warm_start) && !overwrite {
                if dir.latest_checkpoint().is_some() {
                    bail!(
                        "{shown}: holds checkpoints of an earlier run; pass --resume to continue it, --overwrite to replace it, or choose another output_dir"
                    );
                }
                let names: Vec<String> = earlier
                    .iter()
                    .filter(|p| !is_warm_start(p))
                    .filter_map(|p| Some(p.file_name()?.to_string_lossy().to_string()))
                    .collect();
                bail!(
                    "{shown}: holds an earlier run ({}); pass --overwrite to replace it or choose another output_dir",
                    names.join(", ")
                );
            }
            for p in &earlier {
                let removed = if p.is_dir() {
                    std::fs::remove_dir_all(p)
                } else {
                    std::fs::remove_file(p)
                };
                removed.with_context(|| format!("--overwrite: {}: cannot remove", p.display()))?;
            }
            if !earlier.is_empty() {
                eprintln!(
                    "--overwrite: removed the earlier run's files from {shown} ({} entries)",
                    earlier.len()
                );
            }
            None
        };
        std::fs::create_dir_all(dir.path())
            .with_context(|| format!("{}: cannot create", dir.path().display()))?;
        Ok(Self {
            dir,
            resume_from,
            recipe_toml: recipe_toml.to_string(),
            started: Instant::now(),
        })
    }

    /// Whether training continues from a checkpoint.
    pub fn is_resuming(&self) -> bool {
        self.resume_from.is_some()
    }

    /// Continue from the checkpoint, if any: its seed checked against the recipe's, the
    /// trainable parts restored by `restore` (given the checkpoint folder), the optimizer's
    /// moments loaded.
    pub fn resume(
        &self,
        seed: u64,
        opt: &mut AdamW,
        restore: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<Resumed> {
        let Some((step, dir)) = &self.resume_from else {
            return Ok(Resumed::default());
        };
        let state = checkpoint::read_state(dir)?;
        if state.seed != seed {
            bail!(
                "{}: was trained with train.seed {}, the recipe says {seed}",
                dir.display(),
                state.seed,
            );
        }
        restore(dir)?;
        opt.load_state(&dir.join(crate::run_dir::OPTIMIZER_FILE), *step)?;
        eprintln!("resuming from {} (step {step})", dir.display());
        Ok(Resumed {
            step: *step,
            elapsed_s: state.elapsed_s,
            best: state.best,
            evals_since_best: state.evals_since_best,
        })
    }

    /// Minutes since [`TrainingRun::prepare`].
    pub fn minutes_so_far(&self) -> f64 {
        self.started.elapsed().as_secs_f64() / 60.0
    }
}

/// The frozen LLM a recipe names, with its re-quantization and gradient checkpointing.
pub fn load_llm(llm: &LlmSection) -> Result<LoadedModel> {
    let mut model =
        anymal_llm::load_model(&llm.model, &LoadOptions::requantized(Some(&llm.requant))?)
            .with_context(|| format!("llm.model '{}'", llm.model))?;
    model.llm.gradient_checkpointing = llm.gradient_checkpointing;
    model.llm.set_compute(llm.compute);
    Ok(model)
}

/// AdamW from the train section for parameter groups, each with its learning rate as a
/// multiple of `train.lr` (so one schedule drives them all).
pub fn optimizer(groups: Vec<(Vec<(String, Var)>, f64)>, t: &TrainSection) -> Result<AdamW> {
    AdamW::grouped(
        groups,
        AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.adam_eps,
            weight_decay: t.weight_decay,
        },
    )
}

/// The cadence of a training loop: which step is next, its learning rate and items, the
/// metrics and progress after it, when to evaluate, checkpoint and stop.
pub struct StepLoop<'a> {
    t: &'a TrainSection,
    /// Optimizer steps completed.
    step: u64,
    elapsed_before: f64,
    started: Instant,
    step_started: Instant,
    metrics: MetricsLog,
    progress: Progress,
    samples_done: usize,
    last_loss: f64,
    last_eval: Option<f64>,
    out_of_time: bool,
    stopped_early: bool,
    best: Option<BestRecord>,
    evals_since_best: u64,
    /// `train.early_stopping` evaluations passed without a new best.
    patience_out: bool,
}

impl<'a> StepLoop<'a> {
    /// Training starts: the run folder gets its recipe, and its metrics cut back to the step
    /// it starts from.
    pub fn new(run: &TrainingRun, t: &'a TrainSection, resumed: &Resumed) -> Result<Self> {
        anymal_util::fs::write_atomic(&run.dir.recipe(), run.recipe_toml.as_bytes())?;
        Ok(Self {
            t,
            step: resumed.step,
            elapsed_before: resumed.elapsed_s,
            started: Instant::now(),
            step_started: Instant::now(),
            metrics: MetricsLog::open(&run.dir, resumed.step)?,
            progress: Progress::new(t.max_steps, resumed.step),
            samples_done: 0,
            last_loss: f64::NAN,
            last_eval: None,
            out_of_time: false,
            stopped_early: false,
            best: resumed.best.clone(),
            evals_since_best: resumed.evals_since_best,
            patience_out: false,
        })
    }

    /// The next step to take (0-based), or None when training is over: all steps done, or
    /// `train.max_minutes` reached (then `--resume` continues).
    pub fn next_step(&mut self) -> Option<u64> {
        if self.step >= self.t.max_steps {
            return None;
        }
        if self.patience_out {
            self.progress.message(&format!(
                "stopping at step {}: no better validation loss in {} evaluations (train.early_stopping); best/ holds step {}",
                self.step,
                self.t.early_stopping,
                self.best.as_ref().map_or(0, |b| b.step)
            ));
            self.stopped_early = true;
            return None;
        }
        if self.out_of_time {
            self.progress.message(&format!(
                "stopping at step {}: train.max_minutes ({}) reached; --resume continues",
                self.step, self.t.max_minutes
            ));
            self.stopped_early = true;
            return None;
        }
        self.step_started = Instant::now();
        Some(self.step)
    }

    fn per_step(&self) -> usize {
        self.t.batch_size * self.t.grad_accum
    }

    /// The learning rate of the current step.
    pub fn lr(&self) -> f64 {
        let t = self.t;
        lr_at(self.step, t.max_steps, t.lr, t.warmup_steps, t.min_lr_ratio)
    }

    /// The items of the current step: they depend only on the step and the seed.
    pub fn items(&self, order: &DataOrder) -> Vec<usize> {
        let n = self.per_step();
        let s = self.step as usize;
        (s * n..(s + 1) * n).map(|j| order.item(j)).collect()
    }

    /// A non-finite loss or gradient norm stops the run before the update spoils the weights;
    /// `lower` names the setting to change.
    pub fn check_finite(&self, loss: f64, grad_norm: f64, lower: &str) -> Result<()> {
        if !loss.is_finite() || !grad_norm.is_finite() {
            bail!(
                "step {}: loss {loss} / gradient norm {grad_norm} is not finite; lower {lower}",
                self.step + 1
            );
        }
        Ok(())
    }

    /// The current step is done (its update applied): metrics line, progress.
    pub fn record(&mut self, loss: f64, grad_norm: f64) -> Result<()> {
        let lr = self.lr();
        self.step += 1;
        self.samples_done += self.per_step();
        self.last_loss = loss;
        let sps = self.per_step() as f64 / self.step_started.elapsed().as_secs_f64();
        let elapsed = self.elapsed_s();
        self.metrics.push(serde_json::json!({
            "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "samples_per_s": sps, "elapsed_s": elapsed,
        }))?;
        self.progress.update(self.step, loss, lr, sps);
        self.out_of_time = self.t.max_minutes > 0.0 && elapsed / 60.0 >= self.t.max_minutes;
        Ok(())
    }

    /// Whether the step just done is the run's last (all steps, or out of time).
    fn last(&self) -> bool {
        self.step == self.t.max_steps || self.out_of_time || self.patience_out
    }

    pub fn eval_due(&self) -> bool {
        (self.t.eval_every > 0 && self.step.is_multiple_of(self.t.eval_every)) || self.last()
    }

    /// Record a validation loss; true when it is the best so far (then call
    /// [`save_best`](Self::save_best)). `train.early_stopping` evaluations in a row without a
    /// new best end the run after this step.
    pub fn record_eval(&mut self, loss: f64) -> Result<bool> {
        self.metrics
            .push(serde_json::json!({"step": self.step, "eval_loss": loss}))?;
        self.last_eval = Some(loss);
        let is_best = loss.is_finite() && self.best.as_ref().is_none_or(|b| loss < b.eval_loss);
        if is_best {
            self.best = Some(BestRecord {
                step: self.step,
                eval_loss: loss,
            });
            self.evals_since_best = 0;
        } else {
            self.evals_since_best += 1;
        }
        self.progress.message(&format!(
            "step {}: eval loss {loss:.4}{}",
            self.step,
            if is_best { " (best so far)" } else { "" }
        ));
        self.patience_out =
            self.t.early_stopping > 0 && self.evals_since_best >= self.t.early_stopping;
        Ok(is_best)
    }

    /// Write the trainable parts as the run's `best/` (see [`checkpoint::save_best`]).
    pub fn save_best(
        &mut self,
        run: &TrainingRun,
        write: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        let record = self
            .best
            .clone()
            .context("internal: save_best without a best evaluation")?;
        checkpoint::save_best(&run.dir, &record, write)?;
        Ok(())
    }

    /// The best evaluation of the run so far.
    pub fn best(&self) -> Option<&BestRecord> {
        self.best.as_ref()
    }

    pub fn save_due(&self) -> bool {
        (self.t.save_every > 0 && self.step.is_multiple_of(self.t.save_every)) || self.last()
    }

    /// Write a checkpoint of the step just done (see [`checkpoint::save`]).
    pub fn save(
        &mut self,
        run: &TrainingRun,
        opt: &AdamW,
        write: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        let state = TrainerState {
            step: self.step,
            elapsed_s: self.elapsed_s(),
            seed: self.t.seed,
            best: self.best.clone(),
            evals_since_best: self.evals_since_best,
        };
        let dir = checkpoint::save(&run.dir, opt, &state, self.t.keep_checkpoints, write)?;
        self.progress.message(&format!("saved {}", dir.display()));
        Ok(())
    }

    fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    /// End the loop: the progress display closed, the loss curves drawn.
    pub fn finish(mut self, run: &TrainingRun, title: &str) -> Finished {
        self.progress.finish();
        self.metrics.write_curves(&run.dir, title);
        let loop_s = self.started.elapsed().as_secs_f64();
        Finished {
            steps: self.step,
            minutes: self.elapsed_s() / 60.0,
            samples_per_s: if loop_s > 0.0 {
                self.samples_done as f64 / loop_s
            } else {
                0.0
            },
            final_train_loss: self.last_loss,
            final_eval_loss: self.last_eval,
            stopped_early: self.stopped_early,
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub steps: u64,
    /// Training minutes across resumes.
    pub minutes: f64,
    /// Of this process's steps.
    pub samples_per_s: f64,
    pub final_train_loss: f64,
    pub final_eval_loss: Option<f64>,
    pub stopped_early: bool,
}

/// How many items of a split were usable and how many were skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct SplitCounts {
    pub items: usize,
    pub skipped: usize,
}

/// What a run reports at its end (also `summary.json`): the fields every recipe has, then
/// the recipe's own (`extra`, flattened).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary<E: Serialize> {
    pub steps: u64,
    pub minutes: f64,
    pub train_items: usize,
    pub train_skipped: usize,
    pub valid_items: usize,
    pub valid_skipped: usize,
    pub final_train_loss: f64,
    pub final_eval_loss: Option<f64>,
    pub samples_per_s: f64,
    pub peak_rss_mib: f64,
    #[serde(flatten)]
    pub extra: E,
}

impl<E: Serialize> RunSummary<E> {
    /// Write `summary.json` and say on stderr how the run ended; `detail` is the recipe's part
    /// of that line (`feature cache: ...; projector in runs/x`).
    pub fn report(
        finished: &Finished,
        train: SplitCounts,
        valid: SplitCounts,
        extra: E,
        run: &TrainingRun,
        detail: &str,
    ) -> Result<Self> {
        let summary = Self {
            steps: finished.steps,
            minutes: finished.minutes,
            train_items: train.items,
            train_skipped: train.skipped,
            valid_items: valid.items,
            valid_skipped: valid.skipped,
            final_train_loss: finished.final_train_loss,
            final_eval_loss: finished.final_eval_loss,
            samples_per_s: finished.samples_per_s,
            peak_rss_mib: crate::system::peak_rss_mib(),
            extra,
        };
        crate::run_dir::write_json(&run.dir.summary(), &summary)?;
        eprintln!(
            "{} {} steps in {:.1} min ({:.2} samples/s); {detail}; total {:.1} min",
            if finished.stopped_early {
                "stopped after"
            } else {
                "done:"
            },
            finished.steps,
            finished.minutes,
            finished.samples_per_s,
            run.minutes_so_far()
        );
        Ok(summary)
    }
}

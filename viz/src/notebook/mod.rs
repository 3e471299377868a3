//! Helpers for evcxr notebooks: everything here is owned and `'static`, so it can live in a
//! notebook variable across cells, and everything that has a picture shows itself inline.
//!
//! - [`Run::fit`] trains a configuration to the end in the calling cell and keeps the trainer
//!   and its [`RunHistory`] (which displays as its curves);
//! - [`Live`] wraps a [`Session`] (training on a background thread) with blocking helpers for
//!   cells: wait for a step, take single steps, swap the objective, ask for an analysis;
//! - [`curves`], [`compare`] and [`compare_runs`] draw curves of one run or of several runs;
//! - [`Table`] is a small table that displays as HTML ([`Table::runs`] compares finished runs).
//!
//! Keep notebook variables owned: evcxr cannot carry a borrowed value (`Vec<&str>`) from one
//! cell to the next, so helpers here take `&[Run]` and return owned values.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use viz::notebook::{Run, Table};
//! let mut cfg = workbench::config::RunConfig::preset("tiny")?;
//! cfg.train.steps = 200;
//! let run = Run::fit(cfg, "clip")?;           // the last expression of a cell shows the curves
//! let table = Table::evals(&[("clip", run.last_eval())]);
//! # Ok(()) }
//! ```

use std::fmt::{self, Write as _};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use workbench::config::RunConfig;
use workbench::control::Command;
use workbench::events::{EvalReport, Event};
use workbench::loss::LossConfig;
use workbench::train::Trainer;

use crate::figure::{Figure, FigureError, LineChart, Series};
use crate::session::{Reply, Request, RunHistory, Session};

mod table;
pub use table::{Table, escape_html, num};
use table::{block, emit};

/// Width of the figures made here, pixels (small enough to keep notebooks light).
pub const WIDTH: u32 = 600;
/// Height of the figures made here, pixels.
pub const HEIGHT: u32 = 340;

/// Mean of the last `window` points up to each point (`window` ≤ 1 returns the points).
pub fn smoothed(points: &[[f64; 2]], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let tail = &points[(i + 1).saturating_sub(window)..=i];
            (
                p[0],
                tail.iter().map(|q| q[1]).sum::<f64>() / tail.len() as f64,
            )
        })
        .collect()
}

/// Curves of one run over steps, one line per name of [`RunHistory::series`] (`loss`,
/// `term:<name>`, `scalar:<name>`, `probe:i2t_r1`, `eval:zero_shot`, …). Names without points
/// are left out; objective swaps and edits are listed in the title.
pub fn curves(history: &RunHistory, names: &[&str]) -> Result<Figure, FigureError> {
    let series: Vec<Series> = names
        .iter()
        .map(|name| Series {
            name: (*name).to_string(),
            points: history.series(name).iter().map(|p| (p[0], p[1])).collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let marks: Vec<String> = history
        .markers
        .iter()
        .map(|m| format!("{}: {}", m.step, m.label))
        .collect();
    let title = if marks.is_empty() {
        history.objective.clone()
    } else {
        format!("{} — {}", history.objective, marks.join("; "))
    };
    LineChart {
        title,
        x_label: "step".into(),
        y_label: String::new(),
        series,
        width: WIDTH,
        height: HEIGHT,
        ..LineChart::default()
    }
    .render()
}

/// One curve (`name`, as in [`curves`]) of several runs on one chart, each smoothed with a
/// moving mean over `window` points (1: raw).
pub fn compare(
    runs: &[(&str, &RunHistory)],
    name: &str,
    window: usize,
) -> Result<Figure, FigureError> {
    let series = runs
        .iter()
        .map(|(run, history)| Series {
            name: (*run).to_string(),
            points: smoothed(&history.series(name), window),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let title = if window > 1 {
        format!("{name} (mean of {window} points)")
    } else {
        name.to_string()
    };
    LineChart {
        title,
        x_label: "step".into(),
        y_label: name.into(),
        series,
        markers: window <= 1,
        width: WIDTH,
        height: HEIGHT,
        ..LineChart::default()
    }
    .render()
}

/// [`compare`] of finished runs under their names.
pub fn compare_runs(runs: &[Run], name: &str, window: usize) -> Result<Figure, FigureError> {
    let histories: Vec<(&str, &RunHistory)> =
        runs.iter().map(|r| (r.name.as_str(), &r.history)).collect();
    compare(&histories, name, window)
}

/// The names [`RunHistory::evcxr_display`] draws: the loss, and the objective's terms when it
/// has more than one.
fn loss_names(history: &RunHistory) -> Vec<String> {
    let terms: Vec<String> = history
        .series_names()
        .into_iter()
        .filter(|n| n.starts_with("term:"))
        .collect();
    let mut names = vec!["loss".to_string()];
    if terms.len() > 1 {
        names.extend(terms);
    }
    names
}

/// A one-line summary of a history: objective, steps, last loss and evaluation.
fn summary(history: &RunHistory) -> String {
    let mut text = format!(
        "{}: step {}/{}",
        history.objective,
        history.step(),
        history.total_steps
    );
    if let Some(s) = history.steps.last() {
        let _ = write!(text, ", loss {:.4}", s.loss);
    }
    if let Some(r) = history.evals.last() {
        let _ = write!(
            text,
            ", val R@1 i→t {:.3} t→i {:.3}, gap {:.3}",
            r.image_to_text.r1, r.text_to_image.r1, r.modality_gap
        );
        if let Some(z) = &r.zero_shot {
            let _ = write!(text, ", zero-shot {:.3}", z.accuracy);
        }
    }
    if history.finished {
        text.push_str(" (finished)");
    }
    text
}

impl RunHistory {
    /// The evcxr blocks of a history: its loss curves as PNG, then a one-line summary.
    pub fn evcxr_blocks(&self) -> String {
        let names = loss_names(self);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let text = block("text/plain", &summary(self));
        if self.steps.is_empty() {
            return text;
        }
        match curves(self, &names).and_then(|f| f.evcxr_blocks()) {
            Ok(png) => {
                // The figure's own text block is replaced by the summary.
                let image = png
                    .split_once("EVCXR_END_CONTENT\n")
                    .map_or(png.as_str(), |(first, _)| first);
                format!("{image}EVCXR_END_CONTENT\n{text}")
            }
            Err(e) => block("text/plain", &format!("{}\n{e}", summary(self))),
        }
    }

    /// Shows the run's loss curves inline in a notebook.
    pub fn evcxr_display(&self) {
        emit(&self.evcxr_blocks());
    }
}

/// A run trained to the end in the calling cell: the trainer (for analyses) and what it
/// reported.
pub struct Run {
    /// The name shown in tables and legends.
    pub name: String,
    /// The trained model with its data, objective and optimiser.
    pub trainer: Trainer,
    /// Every event of the run.
    pub history: RunHistory,
    /// Wall time of the fit, seconds.
    pub seconds: f64,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Run({:?}, {})", self.name, summary(&self.history))
    }
}

impl Run {
    /// Builds a trainer from `cfg` and trains it for `cfg.train.steps` steps (evaluating every
    /// `cfg.train.eval_every` and at the end).
    pub fn fit(cfg: RunConfig, name: impl Into<String>) -> Result<Self> {
        let trainer = Trainer::new(cfg).context("cannot build the run")?;
        Self::fit_trainer(trainer, name)
    }

    /// [`Run::fit`] with one data-parallel rank per device (`&["cpu", "cpu"]`,
    /// `&["cuda:0", "cuda:1"]`; `train.batch_size` is the global batch and must divide by
    /// their number). The run keeps rank 0's trainer; every rank's parameters are the same.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "taken as Run::fit takes it, so that the two calls read alike in a cell"
    )]
    pub fn fit_on(cfg: RunConfig, devices: &[&str], name: impl Into<String>) -> Result<Self> {
        let mut history = RunHistory::default();
        let started = Instant::now();
        let run = workbench::parallel::DataParallel::new(devices)
            .context("devices")?
            .fit(&cfg, None, |event: &Event| {
                history.push(event);
                ControlFlow::Continue(())
            })
            .context("data-parallel run")?;
        let trainer = run
            .trainers
            .into_iter()
            .next()
            .context("a data-parallel run without a rank")?;
        Ok(Self {
            name: name.into(),
            trainer,
            history,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Trains an existing trainer (e.g. one given a custom objective) to the end of its schedule.
    pub fn fit_trainer(mut trainer: Trainer, name: impl Into<String>) -> Result<Self> {
        let mut history = RunHistory::default();
        let started = Instant::now();
        trainer.fit(|event: &Event| {
            history.push(event);
            ControlFlow::Continue(())
        })?;
        Ok(Self {
            name: name.into(),
            trainer,
            history,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The last evaluation (the final one once the run finished).
    pub fn last_eval(&self) -> Option<&EvalReport> {
        self.history.evals.last()
    }

    /// Shows the run's loss curves inline.
    pub fn evcxr_display(&self) {
        self.history.evcxr_display();
    }
}

/// A live [`Session`] with blocking helpers for notebook cells. Training runs on the session's
/// thread between cells; every call here first collects what the thread reported.
pub struct Live {
    session: Session,
    replies: Vec<Reply>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Live({:?}, {})",
            self.session.name(),
            summary(self.session.history())
        )
    }
}

/// How long the blocking helpers wait at most.
const PATIENCE: Duration = Duration::from_mins(10);
/// Sleep between two polls.
const TICK: Duration = Duration::from_millis(20);

impl Live {
    /// Builds the run on a background thread, paused.
    pub fn start(cfg: RunConfig, name: impl Into<String>) -> Result<Self> {
        Ok(Self {
            session: Session::start(cfg, name)?,
            replies: Vec::new(),
        })
    }

    /// [`Live::start`] with one data-parallel rank per device (`&["cpu", "cpu"]`,
    /// `&["cuda:0", "cuda:1"]`): every step trains all of them on their shares of the global
    /// batch, every command changes all of them, and rank 0 answers what is asked.
    pub fn start_on(cfg: RunConfig, devices: &[&str], name: impl Into<String>) -> Result<Self> {
        Ok(Self {
            session: Session::start_on(cfg, devices, name)?,
            replies: Vec::new(),
        })
    }

    fn collect(&mut self) {
        let replies = self.session.poll();
        self.replies.extend(replies);
    }

    /// Trains continuously (until paused or finished).
    pub fn play(&mut self) {
        self.session.send(Request::Play);
    }

    /// Pauses after the current step and returns the step reached.
    pub fn pause(&mut self) -> Result<usize> {
        self.session.send(Request::Pause);
        let started = Instant::now();
        loop {
            self.collect();
            if !self.session.playing() {
                return Ok(self.session.step());
            }
            if started.elapsed() > PATIENCE {
                bail!("the run did not pause within {PATIENCE:?}");
            }
            std::thread::sleep(TICK);
        }
    }

    /// Waits until the run has completed `step` steps (or finished, or paused) and returns the
    /// step reached.
    pub fn wait_for(&mut self, step: usize) -> Result<usize> {
        let started = Instant::now();
        loop {
            self.collect();
            let h = self.session.history();
            if h.step() >= step || h.finished {
                return Ok(h.step());
            }
            if !self.session.playing() && started.elapsed() > Duration::from_secs(2) {
                bail!("the run is paused at step {} (wanted {step})", h.step());
            }
            if started.elapsed() > PATIENCE {
                bail!("step {step} not reached within {PATIENCE:?}");
            }
            std::thread::sleep(TICK);
        }
    }

    /// Takes `n` single steps (the run must be paused) and returns the step reached.
    pub fn step(&mut self, n: usize) -> Result<usize> {
        self.collect();
        let target = self.session.step() + n;
        for _ in 0..n {
            self.session.send(Request::Step);
        }
        let started = Instant::now();
        loop {
            self.collect();
            let h = self.session.history();
            if h.step() >= target || h.finished {
                return Ok(h.step());
            }
            if started.elapsed() > PATIENCE {
                bail!("step {target} not reached within {PATIENCE:?}");
            }
            std::thread::sleep(TICK);
        }
    }

    /// Sends a live command (applied between two steps).
    pub fn command(&mut self, command: Command) {
        self.session.send(Request::Control(command));
    }

    /// Swaps to the objective called `name` with its paper's defaults (applied between two
    /// steps).
    pub fn swap(&mut self, name: &str) -> Result<()> {
        let loss = LossConfig::by_name(name)?;
        self.command(Command::Swap { loss });
        Ok(())
    }

    /// Sends an inspection request and waits for its answer; a [`Reply::Error`] is an error.
    pub fn ask(&mut self, request: Request) -> Result<Reply> {
        self.collect();
        self.replies.clear();
        self.session.send(request);
        let started = Instant::now();
        loop {
            self.collect();
            if !self.replies.is_empty() {
                return match self.replies.remove(0) {
                    Reply::Error(e) => bail!("{e}"),
                    reply => Ok(reply),
                };
            }
            if started.elapsed() > PATIENCE {
                bail!("no answer within {PATIENCE:?}");
            }
            std::thread::sleep(TICK);
        }
    }

    /// Everything reported so far (collected now).
    pub fn history(&mut self) -> &RunHistory {
        self.collect();
        self.session.history()
    }

    /// A copy of the history as it is now (to display or keep).
    pub fn snapshot(&mut self) -> RunHistory {
        self.history().clone()
    }

    /// Curves of the run so far (see [`curves`]).
    pub fn curves(&mut self, names: &[&str]) -> Result<Figure> {
        Ok(curves(self.history(), names)?)
    }

    /// The underlying session (for requests not covered here).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Shows the run's loss curves as far as last collected.
    pub fn evcxr_display(&self) {
        self.session.history().evcxr_display();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_a_trailing_mean() {
        let p = [[0.0, 1.0], [1.0, 3.0], [2.0, 5.0]];
        assert_eq!(smoothed(&p, 2), vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0)]);
        assert_eq!(smoothed(&p, 0), vec![(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]);
    }
}

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
use std::io::Write as _;
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

/// Width of the figures made here, pixels (small enough to keep notebooks light).
pub const WIDTH: u32 = 600;
/// Height of the figures made here, pixels.
pub const HEIGHT: u32 = 340;

/// Prints evcxr rich-output blocks in one locked write.
fn emit(blocks: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing useful can be done in a notebook cell if stdout is gone.
    let _ = out.write_all(blocks.as_bytes()).and_then(|()| out.flush());
}

/// One evcxr output block of `mime` type.
fn block(mime: &str, payload: &str) -> String {
    format!("EVCXR_BEGIN_CONTENT {mime}\n{payload}\nEVCXR_END_CONTENT\n")
}

/// `text` with `& < > " '` replaced by HTML entities.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value with three decimals, or `–` when absent.
pub fn num(value: Option<f32>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}

/// A table of text cells that shows as HTML in a notebook (and as aligned text elsewhere).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Shown above the table (may be empty).
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells; a short row leaves its last columns empty.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            title: String::new(),
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// The same table with a title.
    #[must_use]
    pub fn titled(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Appends a row.
    pub fn push<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
        self
    }

    /// The same table with one more row.
    #[must_use]
    pub fn row<S: ToString>(mut self, cells: impl IntoIterator<Item = S>) -> Self {
        self.push(cells);
        self
    }

    /// One row per named evaluation (`None`: not evaluated): retrieval both ways, zero-shot
    /// accuracy, modality gap and validation loss.
    pub fn evals(reports: &[(&str, Option<&EvalReport>)]) -> Self {
        let mut table = Self::new([
            "run",
            "step",
            "i→t R@1",
            "i→t R@5",
            "t→i R@1",
            "t→i R@5",
            "zero-shot",
            "gap",
            "val loss",
        ]);
        for (name, report) in reports {
            match report {
                Some(r) => table.push([
                    (*name).to_string(),
                    r.step.to_string(),
                    num(Some(r.image_to_text.r1)),
                    num(Some(r.image_to_text.r5)),
                    num(Some(r.text_to_image.r1)),
                    num(Some(r.text_to_image.r5)),
                    num(r.zero_shot.as_ref().map(|z| z.accuracy)),
                    num(Some(r.modality_gap)),
                    num(r.loss),
                ]),
                None => table.push([(*name).to_string(), "not evaluated".to_string()]),
            };
        }
        table
    }

    /// [`Table::evals`] of finished runs under their names, with their training time.
    pub fn runs(runs: &[Run]) -> Self {
        let reports: Vec<(&str, Option<&EvalReport>)> = runs
            .iter()
            .map(|r| (r.name.as_str(), r.last_eval()))
            .collect();
        let mut table = Self::evals(&reports);
        table.header.push("time".into());
        for (row, run) in table.rows.iter_mut().zip(runs) {
            row.resize(table.header.len() - 1, String::new());
            row.push(format!("{:.0} s", run.seconds));
        }
        table
    }

    fn columns(&self) -> usize {
        self.rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0)
    }

    /// The table as an HTML fragment; every cell is escaped.
    pub fn html(&self) -> String {
        let columns = self.columns();
        let mut html = String::from("<table>");
        let cells = |html: &mut String, row: &[String], tag: &str| {
            for i in 0..columns {
                let text = row.get(i).map_or("", String::as_str);
                let _ = write!(html, "<{tag}>{}</{tag}>", escape_html(text));
            }
        };
        if !self.title.is_empty() {
            let _ = write!(html, "<caption>{}</caption>", escape_html(&self.title));
        }
        html.push_str("<thead><tr>");
        cells(&mut html, &self.header, "th");
        html.push_str("</tr></thead><tbody>");
        for row in &self.rows {
            html.push_str("<tr>");
            cells(&mut html, row, "td");
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table>");
        html
    }

    /// The evcxr blocks: `text/html`, then the aligned `text/plain` form.
    pub fn evcxr_blocks(&self) -> String {
        format!(
            "{}{}",
            block("text/html", &self.html()),
            block("text/plain", &self.to_string())
        )
    }

    /// Shows the table inline in a notebook.
    pub fn evcxr_display(&self) {
        emit(&self.evcxr_blocks());
    }
}

impl fmt::Display for Table {
    /// Aligned columns separated by two spaces, the title on its own line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.columns();
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        if !self.title.is_empty() {
            writeln!(f, "{}", self.title)?;
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = row.get(i).map_or("", String::as_str);
                    let pad = widths[i] - cell.chars().count();
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

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
    fn html_escapes_every_cell_and_pads_short_rows() {
        let t = Table::new(["a<b", "c"])
            .titled("x & y")
            .row(["\"q\"", "'s'"])
            .row(["only"]);
        let html = t.html();
        assert!(html.contains("<caption>x &amp; y</caption>"));
        assert!(html.contains("<th>a&lt;b</th>"));
        assert!(html.contains("<td>&quot;q&quot;</td><td>&#39;s&#39;</td>"));
        assert!(html.contains("<tr><td>only</td><td></td></tr>"));
        // Column 0 is 4 wide ("only"): "a<b" gets 1 space of padding, then the 2-space gap.
        assert_eq!(t.to_string(), "x & y\na<b   c\n\"q\"   's'\nonly\n");
    }

    #[test]
    fn smoothing_is_a_trailing_mean() {
        let p = [[0.0, 1.0], [1.0, 3.0], [2.0, 5.0]];
        assert_eq!(smoothed(&p, 2), vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0)]);
        assert_eq!(smoothed(&p, 0), vec![(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]);
    }
}

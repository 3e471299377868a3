//! The UI-free record of a run: every event a session reported, as curves and markers.

use workbench::control::Command;
use workbench::events::{EvalReport, Event, ProbeReport, StepStats};
use workbench::loss::LossConfig;

/// A vertical marker on the curves: an objective swap, a live edit, a rejected command, a pause.
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    /// Steps completed when it happened.
    pub step: usize,
    /// What happened.
    pub label: String,
}

/// Everything a run has reported, as plain data (no tensors, no UI).
#[derive(Clone, Debug, Default)]
pub struct RunHistory {
    /// Every step's statistics.
    pub steps: Vec<StepStats>,
    /// Every evaluation.
    pub evals: Vec<EvalReport>,
    /// Every probe (the fixed validation batch).
    pub probes: Vec<ProbeReport>,
    /// Swaps, edits, rejected commands and pauses.
    pub markers: Vec<Marker>,
    /// Notable events, one line each.
    pub log: Vec<String>,
    /// The active objective.
    pub objective: String,
    /// The active objective's settings, with live weight edits applied (`None` for a
    /// user-defined objective).
    pub loss: Option<LossConfig>,
    /// `train.steps`.
    pub total_steps: usize,
    /// Whether the run reached `train.steps`.
    pub finished: bool,
    /// Steps completed when the history started (non-zero for a resumed or forked run).
    pub start_step: usize,
    /// Where it trains, as `run_started` says: `cpu`, `cuda:0 (NVIDIA H100 …)`, or every rank
    /// of a data-parallel run (`2 ranks: cpu, cpu`).
    pub device: String,
    /// Micro-batches per step (`train.micro_batches`), with live changes applied.
    pub micro_batches: usize,
}

impl RunHistory {
    /// Adds one event.
    pub fn push(&mut self, event: &Event) {
        match event {
            Event::RunStarted {
                config,
                objective,
                step,
                device,
                ..
            } => {
                self.objective.clone_from(objective);
                self.device.clone_from(device);
                self.loss = Some(config.loss.clone());
                self.total_steps = config.train.steps;
                self.micro_batches = config.train.micro_batches;
                if self.steps.is_empty() {
                    self.start_step = *step;
                }
                self.log.push(format!(
                    "started at step {step} with {objective} on {device}"
                ));
            }
            Event::Step(s) => {
                self.objective.clone_from(&s.objective);
                self.steps.push(s.clone());
            }
            Event::Eval(r) => self.evals.push(r.clone()),
            Event::Probe(p) => self.probes.push(p.clone()),
            Event::ObjectiveSwapped {
                step, to, config, ..
            } => {
                self.objective.clone_from(to);
                self.loss.clone_from(config);
                self.mark(*step, format!("→ {to}"));
            }
            Event::Edited { step, command, .. } => {
                if let (Command::SetWeight { part, weight }, Some(LossConfig::Sum(sum))) =
                    (command, self.loss.as_mut())
                    && let Some(p) = sum.parts.iter_mut().find(|p| p.loss.name() == part)
                {
                    p.weight = *weight;
                }
                if let Command::SetMicroBatches { micro_batches } = command {
                    self.micro_batches = *micro_batches;
                }
                self.mark(*step, describe(command));
            }
            Event::CommandRejected { step, reason, .. } => {
                self.mark(*step, format!("rejected: {reason}"));
            }
            Event::Paused { step, reason } => {
                self.log.push(format!("paused at step {step}: {reason}"));
            }
            Event::Checkpoint { step, path } => {
                self.log
                    .push(format!("checkpoint at step {step}: {}", path.display()));
            }
            Event::RunFinished {
                step,
                pairs_per_second,
                ..
            } => {
                self.finished = true;
                self.log.push(format!(
                    "finished at step {step} ({pairs_per_second:.0} pairs/s)"
                ));
            }
        }
    }

    fn mark(&mut self, step: usize, label: String) {
        self.log.push(format!("step {step}: {label}"));
        self.markers.push(Marker { step, label });
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.steps.last().map_or(self.start_step, |s| s.step)
    }

    /// The last (up to) 20 steps: what the status figures are taken over.
    fn recent(&self) -> &[StepStats] {
        &self.steps[self.steps.len().saturating_sub(20)..]
    }

    /// Pairs per second over the last (up to) 20 steps.
    pub fn pairs_per_second(&self) -> Option<f64> {
        let tail = self.recent();
        let secs: f64 = tail.iter().map(|s| s.seconds).sum();
        let pairs: usize = tail.iter().map(|s| s.batch_size).sum();
        (secs > 0.0).then(|| pairs as f64 / secs)
    }

    /// How long the last (up to) 20 steps waited for their batches.
    pub fn data_wait(&self) -> DataWait {
        let mut wait = DataWait::default();
        for s in self.recent() {
            wait.add(s);
        }
        wait
    }

    /// A curve as `[step, value]` points: `loss`, `lr`, `grad_norm`, `term:<name>`,
    /// `scalar:<name>`, `probe:info_nce`, `probe:i2t_r1`, `probe:t2i_r1`, `probe:gap`,
    /// `eval:i2t_r1`, `eval:t2i_r1` (and `_r5`, `_r10`), `eval:zero_shot`, `eval:gap`. Unknown
    /// names are empty.
    pub fn series(&self, name: &str) -> Vec<[f64; 2]> {
        let steps = |f: &dyn Fn(&StepStats) -> Option<f64>| -> Vec<[f64; 2]> {
            self.steps
                .iter()
                .filter_map(|s| f(s).map(|v| [s.step as f64, v]))
                .collect()
        };
        let probes = |f: &dyn Fn(&ProbeReport) -> f32| -> Vec<[f64; 2]> {
            self.probes
                .iter()
                .map(|p| [p.step as f64, f64::from(f(p))])
                .collect()
        };
        let evals = |f: &dyn Fn(&EvalReport) -> Option<f32>| -> Vec<[f64; 2]> {
            self.evals
                .iter()
                .filter_map(|r| f(r).map(|v| [r.step as f64, f64::from(v)]))
                .collect()
        };
        if let Some(term) = name.strip_prefix("term:") {
            return steps(&|s| s.terms.get(term).map(|&v| f64::from(v)));
        }
        if let Some(scalar) = name.strip_prefix("scalar:") {
            return steps(&|s| s.scalars.get(scalar).map(|&v| f64::from(v)));
        }
        match name {
            "loss" => steps(&|s| Some(f64::from(s.loss))),
            "lr" => steps(&|s| Some(s.lr)),
            "grad_norm" => steps(&|s| Some(f64::from(s.grad_norm))),
            "probe:info_nce" => probes(&|p| p.info_nce),
            "probe:i2t_r1" => probes(&|p| p.image_to_text_r1),
            "probe:t2i_r1" => probes(&|p| p.text_to_image_r1),
            "probe:gap" => probes(&|p| p.modality_gap),
            "eval:i2t_r1" => evals(&|r| Some(r.image_to_text.r1)),
            "eval:t2i_r1" => evals(&|r| Some(r.text_to_image.r1)),
            "eval:i2t_r5" => evals(&|r| Some(r.image_to_text.r5)),
            "eval:t2i_r5" => evals(&|r| Some(r.text_to_image.r5)),
            "eval:i2t_r10" => evals(&|r| Some(r.image_to_text.r10)),
            "eval:t2i_r10" => evals(&|r| Some(r.text_to_image.r10)),
            "eval:zero_shot" => evals(&|r| r.zero_shot.as_ref().map(|z| z.accuracy)),
            "eval:gap" => evals(&|r| Some(r.modality_gap)),
            _ => Vec::new(),
        }
    }

    /// Every curve name with at least one point so far.
    pub fn series_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["loss", "lr", "grad_norm"]
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut terms = std::collections::BTreeSet::new();
        let mut scalars = std::collections::BTreeSet::new();
        for s in &self.steps {
            terms.extend(s.terms.keys().cloned());
            scalars.extend(s.scalars.keys().cloned());
        }
        names.extend(terms.into_iter().map(|t| format!("term:{t}")));
        names.extend(scalars.into_iter().map(|t| format!("scalar:{t}")));
        if !self.probes.is_empty() {
            names.extend(
                [
                    "probe:info_nce",
                    "probe:i2t_r1",
                    "probe:t2i_r1",
                    "probe:gap",
                ]
                .iter()
                .map(ToString::to_string),
            );
        }
        if !self.evals.is_empty() {
            names.extend(
                [
                    "eval:i2t_r1",
                    "eval:t2i_r1",
                    "eval:i2t_r5",
                    "eval:t2i_r5",
                    "eval:i2t_r10",
                    "eval:t2i_r10",
                    "eval:gap",
                ]
                .iter()
                .map(ToString::to_string),
            );
            if self.evals.iter().any(|r| r.zero_shot.is_some()) {
                names.push("eval:zero_shot".into());
            }
        }
        if self.steps.is_empty() {
            names.clear();
        }
        names
    }
}

/// A short label for a live command.
pub fn describe(command: &Command) -> String {
    match command {
        Command::Swap { loss } => format!("swap to {}", loss.name()),
        Command::SetWeight { part, weight } => format!("weight {part} = {weight}"),
        Command::SetTemperature { objective, tau } => format!("τ {objective} = {tau}"),
        Command::SetParam { name, value } => format!("{name} = {value}"),
        Command::Freeze { prefix, frozen } => {
            format!("{} {prefix}", if *frozen { "freeze" } else { "unfreeze" })
        }
        Command::Clamp { prefix, range } => match range {
            Some([lo, hi]) => format!("clamp {prefix} to [{lo}, {hi}]"),
            None => format!("unclamp {prefix}"),
        },
        Command::SetMicroBatches { micro_batches } => format!("micro-batches = {micro_batches}"),
        Command::Stop => "stop".into(),
    }
}

/// How long some steps waited for their batches (the device idles meanwhile): the command
/// line's summary of a run, the app's status over the last steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DataWait {
    /// Steps counted.
    pub steps: usize,
    /// Their total time waiting for data, seconds.
    pub data_seconds: f64,
    /// Their total time, seconds.
    pub seconds: f64,
}

impl DataWait {
    /// Counts one step.
    pub fn add(&mut self, s: &StepStats) {
        self.steps += 1;
        self.data_seconds += s.data_seconds;
        self.seconds += s.seconds;
    }

    /// Mean wait per step in milliseconds, and the share of step time spent waiting in
    /// percent; `None` before any step.
    pub fn figures(&self) -> Option<(f64, f64)> {
        (self.steps > 0).then(|| {
            let mean_ms = self.data_seconds / self.steps as f64 * 1e3;
            (mean_ms, self.data_seconds / self.seconds.max(1e-12) * 100.0)
        })
    }

    /// The summary line: mean wait per step and the share of step time spent waiting; `None`
    /// before any step.
    pub fn line(&self) -> Option<String> {
        self.figures().map(|(mean_ms, share)| {
            format!(
                "data wait {mean_ms:.1} ms per step · {share:.1} % of step time (device idle waiting for data)"
            )
        })
    }
}

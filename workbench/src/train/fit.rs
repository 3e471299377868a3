//! The training loop: [`Trainer::fit`] and [`Trainer::fit_with`], one [`Trainer::tick`] at a
//! time, with the start, pause and finish around it — one loop ([`run_loop`]) for a lone
//! trainer and for rank 0 of a data-parallel group.

use super::{FitOutcome, Tick, Trainer};
use crate::control::{Command, RunHandle};
use crate::data::Split;
use crate::events::Event;
use crate::{Error, Result};
use std::ops::ControlFlow;
use std::sync::mpsc::{self, Receiver};

impl Trainer {
    /// Trains until `train.steps`, evaluating every `train.eval_every` steps and at the end, and
    /// checkpointing (when a run directory is set). `on_event` sees every event and may stop the
    /// run by returning `Break`; a non-finite loss or gradient pauses it. Either way the trainer
    /// keeps its last good state, and `fit` can be called again to continue.
    pub fn fit(&mut self, on_event: impl FnMut(&Event) -> ControlFlow<()>) -> Result<FitOutcome> {
        let (_keep, commands) = mpsc::channel();
        self.fit_with(&commands, on_event)
    }

    /// [`Trainer::fit`] taking live [`Command`]s from `commands` between steps: each is applied
    /// and logged (`objective_swapped`, `edited`, or `command_rejected` — a command that cannot
    /// apply never stops the run). A swap is followed by a probe event.
    pub fn fit_with(
        &mut self,
        commands: &Receiver<Command>,
        on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<FitOutcome> {
        run_loop(self, commands, on_event)
    }

    /// Ends a run: the final evaluation, a checkpoint (when a run directory is set) and
    /// `run_finished`, each handed to `on_event`.
    pub fn finish(
        &mut self,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<FitOutcome> {
        let report = self.scheduled_evaluation()?;
        let _ = on_event(&Event::Eval(report));
        self.checkpoint_event(&mut on_event)?;
        let pairs = (self.step * self.cfg.train.batch_size) as f64;
        let _ = on_event(&Event::RunFinished {
            step: self.step,
            train_seconds: self.train_seconds,
            pairs_per_second: pairs / self.train_seconds.max(1e-9),
            bad_samples: self.dataset.bad_samples(),
        });
        Ok(FitOutcome::Finished)
    }

    /// The validation evaluation of the schedule; a device out of memory says which setting to
    /// lower.
    fn scheduled_evaluation(&mut self) -> Result<crate::events::EvalReport> {
        self.evaluate(Split::Val).map_err(|e| {
            let remedy = format!(
                "lower train.eval_batch_size (now {})",
                self.cfg.train.eval_batch_size
            );
            let step = self.step;
            e.out_of_memory(
                &self.device,
                || format!("evaluation at step {step}"),
                &remedy,
            )
        })
    }

    /// After an error that ended a run (a device out of memory, a failed evaluation, another
    /// rank's failure), the trainer still holds its last good state: it is checkpointed (when
    /// a run directory is set) so that no completed step is lost, and the error is returned.
    /// A checkpoint that cannot be written is not reported over the error.
    pub(crate) fn save_after(
        &mut self,
        e: Error,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Error {
        let _ = self.checkpoint_event(on_event);
        e
    }

    /// The `run_started` event describing this trainer now.
    pub fn started_event(&self) -> Event {
        Event::RunStarted {
            config: Box::new(self.cfg.clone()),
            step: self.step,
            model_parameters: self.params.count("model."),
            objective: self.objective.name().to_string(),
            device: crate::devices::describe(&self.device),
        }
    }

    /// One iteration of the training loop: a step, then the probe, evaluation and checkpoint
    /// that the schedule (`train.probe_every`, `eval_every`, `checkpoint_every`) puts at that
    /// step, each handed to `on_event`. A non-finite loss or gradient skips the update and
    /// returns [`Tick::Paused`] with the reason; so does an `on_event` that returns `Break`.
    /// [`Trainer::fit_with`] is a loop of ticks; an interactive front end calls it itself.
    pub fn tick(&mut self, mut on_event: impl FnMut(&Event) -> ControlFlow<()>) -> Result<Tick> {
        let steps = self.cfg.train.steps;
        let (every, ck_every, probe_every) = (
            self.cfg.train.eval_every,
            self.cfg.train.checkpoint_every,
            self.cfg.train.probe_every,
        );
        let stats = match self.step() {
            Ok(s) => s,
            Err(e @ Error::NonFinite { .. }) => return Ok(Tick::Paused(e.to_string())),
            Err(e) => return Err(e),
        };
        let step = stats.step;
        let stopped = || Ok(Tick::Paused("stopped by the caller".into()));
        if on_event(&Event::Step(stats)).is_break() {
            return stopped();
        }
        if probe_every > 0 && step % probe_every == 0 {
            let report = self.probe().map_err(|e| {
                let remedy = format!("lower train.probe_size (now {})", self.cfg.train.probe_size);
                e.out_of_memory(
                    &self.device,
                    || format!("the probe at step {step}"),
                    &remedy,
                )
            })?;
            if on_event(&Event::Probe(report)).is_break() {
                return stopped();
            }
        }
        if every > 0 && step % every == 0 && step < steps {
            let report = self.scheduled_evaluation()?;
            if on_event(&Event::Eval(report)).is_break() {
                return stopped();
            }
        }
        if ck_every > 0 && step % ck_every == 0 && step < steps {
            self.checkpoint_event(&mut on_event)?;
        }
        Ok(Tick::Stepped)
    }

    /// Runs [`Trainer::fit_with`] on a background thread; the handle sends commands, streams
    /// events and gives the trainer back when the run ends (see [`crate::control`]).
    pub fn spawn(mut self) -> RunHandle {
        RunHandle::spawn(move |commands, on_event| {
            let outcome = self.fit_with(commands, on_event);
            (self, outcome)
        })
    }

    pub(crate) fn pause(
        &mut self,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
        reason: String,
    ) -> Result<FitOutcome> {
        self.checkpoint_event(on_event)?;
        let _ = on_event(&Event::Paused {
            step: self.step,
            reason: reason.clone(),
        });
        Ok(FitOutcome::Paused(reason))
    }
}

/// What the training loop steps: a trainer alone, or rank 0 of a data-parallel group
/// ([`crate::parallel::Leader`]), which passes each tick and command on to the other ranks.
pub(crate) trait Lockstep {
    /// The trainer that reports, evaluates and checkpoints (rank 0).
    fn reporter(&mut self) -> &mut Trainer;
    /// The `run_started` event.
    fn started(&self) -> Event;
    /// One [`Trainer::tick`] on every rank.
    fn tick_all(&mut self, on_event: &mut dyn FnMut(&Event) -> ControlFlow<()>) -> Result<Tick>;
    /// One live command on every rank, reported as [`Trainer::fit_with`] reports it.
    fn command_all(
        &mut self,
        command: &Command,
        on_event: &mut dyn FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>>;
}

impl Lockstep for Trainer {
    fn reporter(&mut self) -> &mut Trainer {
        self
    }
    fn started(&self) -> Event {
        self.started_event()
    }
    fn tick_all(&mut self, on_event: &mut dyn FnMut(&Event) -> ControlFlow<()>) -> Result<Tick> {
        self.tick(on_event)
    }
    fn command_all(
        &mut self,
        command: &Command,
        on_event: &mut dyn FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        self.apply_live(command, Some(on_event))
    }
}

/// The loop of [`Trainer::fit_with`], for one trainer or a whole data-parallel group: the
/// start and first probe, then before each step the commands waiting in `commands`, then the
/// step; a stop (the caller's, a command's, a non-finite value's) pauses with a checkpoint,
/// and reaching `train.steps` finishes.
pub(crate) fn run_loop(
    group: &mut impl Lockstep,
    commands: &Receiver<Command>,
    mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
) -> Result<FitOutcome> {
    let by_caller = || "stopped by the caller".to_string();
    if on_event(&group.started()).is_break() {
        return group.reporter().pause(&mut on_event, by_caller());
    }
    let train = &group.reporter().cfg.train;
    let (steps, probe_every) = (train.steps, train.probe_every);
    if probe_every > 0 && group.reporter().step < steps {
        let report = group.reporter().probe()?;
        if on_event(&Event::Probe(report)).is_break() {
            return group.reporter().pause(&mut on_event, by_caller());
        }
    }
    while group.reporter().step < steps {
        let mut stop = false;
        for command in commands.try_iter() {
            if command == Command::Stop {
                stop = true;
                continue;
            }
            if group.command_all(&command, &mut on_event)?.is_break() {
                return group.reporter().pause(&mut on_event, by_caller());
            }
        }
        if stop {
            return group
                .reporter()
                .pause(&mut on_event, "stopped by a command".into());
        }
        match group.tick_all(&mut on_event) {
            Ok(Tick::Stepped) => {}
            Ok(Tick::Paused(reason)) => return group.reporter().pause(&mut on_event, reason),
            Err(e) => return Err(group.reporter().save_after(e, &mut on_event)),
        }
    }
    match group.reporter().finish(&mut on_event) {
        Ok(outcome) => Ok(outcome),
        Err(e) => Err(group.reporter().save_after(e, &mut on_event)),
    }
}

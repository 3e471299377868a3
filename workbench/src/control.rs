//! Live control of a running fit: commands applied between two steps.
//!
//! A [`Command`] switches the objective or edits the run (a weight of a summed objective, a
//! parameter's value, freezing, clamping). [`Trainer::fit_with`](crate::train::Trainer::fit_with)
//! drains a channel of commands before every step; [`Trainer::spawn`](crate::train::Trainer::spawn)
//! runs the fit on a background thread and hands back a [`RunHandle`] — what the GUI and
//! notebooks use ([`DataParallel::spawn`](crate::parallel::DataParallel::spawn) does the same
//! for a data-parallel run). Every applied command is logged as an event (`objective_swapped` or `edited`;
//! `command_rejected` when it cannot apply, and the run goes on unchanged).
//!
//! ```no_run
//! use workbench::{config::RunConfig, control::Command, loss::LossConfig, train::Trainer};
//! let mut cfg = RunConfig::preset("tiny")?;
//! cfg.train.steps = 600;
//! let run = Trainer::new(cfg)?.spawn();
//! // … later, while it trains:
//! run.send(Command::Swap { loss: LossConfig::by_name("siglip")? });
//! run.send(Command::SetTemperature { objective: "siglip".into(), tau: 0.05 });
//! for event in run.events() {
//!     println!("{}", serde_json::to_string(&event).unwrap());
//! }
//! let (trainer, outcome) = run.join()?;
//! # Ok::<(), workbench::Error>(())
//! ```

use crate::events::Event;
use crate::loss::LossConfig;
use crate::train::{FitOutcome, Trainer};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

/// An edit applied between two training steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Switch to another objective. Its parameters are restored if it ran before, created with
    /// their init policy otherwise; the outgoing objective's parameters are kept.
    Swap {
        /// The incoming objective.
        loss: LossConfig,
    },
    /// Set the weight of the part called `part` of the active `sum` objective.
    SetWeight {
        /// The part's objective name (e.g. `"filip"`).
        part: String,
        /// Its new weight (≥ 0).
        weight: f64,
    },
    /// Set the temperature τ of objective `objective` (its `logit_scale` becomes `ln(1/τ)`).
    SetTemperature {
        /// The objective name.
        objective: String,
        /// The temperature.
        tau: f64,
    },
    /// Set every element of a parameter of an objective (`loss.*`) to `value`.
    SetParam {
        /// Full parameter name, e.g. `loss.siglip.logit_bias`.
        name: String,
        /// The value.
        value: f64,
    },
    /// Stop (`frozen = true`) or resume updating every parameter whose name starts with
    /// `prefix` (e.g. `loss.clip.logit_scale`, or `model.vision` to freeze the image tower).
    Freeze {
        /// Name prefix.
        prefix: String,
        /// Frozen or not.
        frozen: bool,
    },
    /// Keep every parameter whose name starts with `prefix` within `[min, max]` after each step
    /// (`range: None` removes the clamp). Clamps apply on top of an objective's own.
    Clamp {
        /// Name prefix.
        prefix: String,
        /// `[min, max]`, or `None` to remove.
        range: Option<[f64; 2]>,
    },
    /// Pass each step's batch through the model in this many micro-batches from the next step
    /// on (`train.micro_batches`): the same gradients in less memory, for one more forward pass
    /// per micro-batch — what to do when a step ran out of device memory. It must divide the
    /// batch (each rank's share of it).
    SetMicroBatches {
        /// Micro-batches per step (1: the whole batch at once).
        micro_batches: usize,
    },
    /// Stop after the current step (checkpointed; `fit` can continue it).
    Stop,
}

/// A fit running on a background thread: [`Trainer::spawn`](crate::train::Trainer::spawn), whose
/// [`RunHandle::join`] gives back the trainer and the outcome, or
/// [`DataParallel::spawn`](crate::parallel::DataParallel::spawn), whose `join` gives the
/// data-parallel run's result.
pub struct RunHandle<T = (Trainer, Result<FitOutcome>)> {
    commands: Sender<Command>,
    events: Receiver<Event>,
    thread: JoinHandle<T>,
}

impl<T: Send + 'static> RunHandle<T> {
    /// Runs `fit(commands, on_event)` on a new thread: the handle's `send` feeds `commands`, every
    /// event handed to `on_event` reaches the handle's `events`, and `join` gives what `fit`
    /// returns. [`Trainer::spawn`](crate::train::Trainer::spawn) and
    /// [`DataParallel::spawn`](crate::parallel::DataParallel::spawn) are this.
    pub(crate) fn spawn(
        fit: impl FnOnce(&Receiver<Command>, &mut dyn FnMut(&Event) -> ControlFlow<()>) -> T
        + Send
        + 'static,
    ) -> Self {
        let (commands, command_rx) = std::sync::mpsc::channel();
        let (event_tx, events) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            fit(&command_rx, &mut |event: &Event| {
                // A dropped receiver only means nobody listens any more; training goes on.
                let _ = event_tx.send(event.clone());
                ControlFlow::Continue(())
            })
        });
        Self {
            commands,
            events,
            thread,
        }
    }
}

impl<T> RunHandle<T> {
    /// Queues a command for the next gap between steps. Returns false if the run has ended.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Events as they come (blocks; ends when the run ends).
    pub fn events(&self) -> std::sync::mpsc::Iter<'_, Event> {
        self.events.iter()
    }

    /// Events that have arrived so far (does not block).
    pub fn try_events(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the run to end; gives back what the run returns — for
    /// [`Trainer::spawn`](crate::train::Trainer::spawn) the trainer (to continue, evaluate or
    /// inspect) with the outcome of the fit.
    pub fn join(self) -> Result<T> {
        self.thread
            .join()
            .map_err(|_| Error::Data("the training thread panicked".into()))
    }
}

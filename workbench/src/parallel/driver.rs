//! [`DataParallel`]: one thread per device, the ranks stepping in lock-step.

use super::{Communicator, ThreadComm, ThreadGroup};
use crate::config::RunConfig;
use crate::control::{Command, RunHandle};
use crate::events::Event;
use crate::train::{FitOutcome, Trainer};
use crate::{Error, Result};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// What a rank's communicator error says when another rank is gone; such an error is a
/// consequence, and the driver reports the cause instead.
pub(crate) const LEFT_THE_GROUP: &str = "left the group";

/// Trains one model on several devices: one rank per device, each on its shard of every
/// global batch (`train.batch_size` pairs, split evenly), the loss on the gathered global
/// batch, the gradients averaged over the ranks — the update of a single process with the
/// whole batch. `cpu` devices run as threads exchanging through memory ([`ThreadGroup`]);
/// `cuda:N` devices through NCCL (feature `nccl`). Rank 0 emits the events, evaluates, probes
/// and writes checkpoints; the other ranks only train.
///
/// ```no_run
/// use std::ops::ControlFlow;
/// use workbench::{config::RunConfig, parallel::DataParallel};
/// let mut cfg = RunConfig::preset("tiny")?;
/// cfg.train.steps = 100;
/// let ddp = DataParallel::new(&["cpu", "cpu"])?;
/// let run = ddp.fit(&cfg, None, |event| {
///     println!("{}", serde_json::to_string(event).unwrap());
///     ControlFlow::Continue(())
/// })?;
/// assert_eq!(run.trainers.len(), 2);
/// # Ok::<(), workbench::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct DataParallel {
    devices: Vec<String>,
}

/// How a data-parallel run ended.
pub struct ParallelOutcome {
    /// Rank 0's outcome (all ranks end alike).
    pub outcome: FitOutcome,
    /// Every rank's trainer, in rank order; their parameters are identical.
    pub trainers: Vec<Trainer>,
}

impl DataParallel {
    /// One rank per device (`"cpu"` or `"cuda:N"`, all of one kind; `"cpu"` may repeat).
    pub fn new(devices: &[impl AsRef<str>]) -> Result<Self> {
        let devices: Vec<String> = devices
            .iter()
            .map(|d| d.as_ref().trim().to_string())
            .collect();
        if devices.is_empty() {
            return Err(Error::config("train.devices", "needs at least one device"));
        }
        let cuda = devices.iter().filter(|d| d.starts_with("cuda")).count();
        if cuda > 0 && cuda < devices.len() {
            return Err(Error::config(
                "train.devices",
                format!(
                    "{devices:?} mixes cpu and cuda devices; data-parallel ranks must all be \
                     \"cpu\" or all \"cuda:N\""
                ),
            ));
        }
        for d in &devices {
            if d != "cpu" && d != "cuda" && !d.starts_with("cuda:") {
                return Err(Error::config(
                    "train.devices",
                    format!("{d:?}: expected \"cpu\" or \"cuda:N\""),
                ));
            }
        }
        if cuda > 0 {
            let mut seen: Vec<&str> = devices
                .iter()
                .map(|d| if d == "cuda" { "cuda:0" } else { d })
                .collect();
            seen.sort_unstable();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return Err(Error::config(
                    "train.devices",
                    format!("{devices:?} names a GPU twice; NCCL needs one rank per GPU"),
                ));
            }
            if !cfg!(feature = "nccl") {
                return Err(Error::config(
                    "train.devices",
                    format!(
                        "{devices:?}: data parallel on CUDA devices goes through NCCL; this build \
                         lacks it — rebuild with `--features nccl`"
                    ),
                ));
            }
        }
        Ok(Self { devices })
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.devices.len()
    }

    /// The devices, in rank order.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Trains `cfg` (its `train.device` replaced by each rank's device) until `train.steps`;
    /// rank 0 writes checkpoints under `run_dir/checkpoint` when given. `on_event` sees rank
    /// 0's events, and may stop every rank by returning `Break`.
    pub fn fit(
        &self,
        cfg: &RunConfig,
        run_dir: Option<&Path>,
        on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<ParallelOutcome> {
        let world = self.world_size();
        if !cfg.train.batch_size.is_multiple_of(world) {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "the global batch of {} pairs does not split evenly over {world} devices; \
                     make it a multiple of {world}",
                    cfg.train.batch_size
                ),
            ));
        }
        self.fit_with(
            |rank, device| {
                let mut cfg = cfg.clone();
                cfg.train.device = device.to_string();
                let mut trainer = Trainer::new(cfg)?;
                if let (0, Some(dir)) = (rank, run_dir) {
                    trainer.set_run_dir(dir);
                }
                Ok(trainer)
            },
            on_event,
        )
    }

    /// [`DataParallel::fit`] with trainers made by `build(rank, device)` — resumed ones,
    /// pretrained ones, any dataset. Every rank's trainer must come from the same
    /// configuration and be at the same step; the driver gives each its communicator.
    pub fn fit_with(
        &self,
        build: impl Fn(usize, &str) -> Result<Trainer> + Sync,
        on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<ParallelOutcome> {
        let (_keep, commands) = mpsc::channel();
        self.fit_live(build, &commands, on_event)
    }

    /// [`DataParallel::fit_live`] on a background thread, as [`Trainer::spawn`] runs a single
    /// trainer: the handle sends commands to every rank, streams rank 0's events, and its
    /// `join` gives the run's result (every rank's trainer, in rank order).
    ///
    /// ```no_run
    /// use workbench::{config::RunConfig, control::Command, loss::LossConfig};
    /// use workbench::{parallel::DataParallel, train::Trainer};
    /// let mut cfg = RunConfig::preset("tiny")?;
    /// cfg.train.steps = 600;
    /// let run = DataParallel::new(&["cpu", "cpu"])?.spawn(move |_, device| {
    ///     let mut cfg = cfg.clone();
    ///     cfg.train.device = device.to_string();
    ///     Trainer::new(cfg)
    /// });
    /// run.send(Command::Swap { loss: LossConfig::by_name("cloob")? });
    /// for event in run.events() {
    ///     println!("{}", serde_json::to_string(&event).unwrap());
    /// }
    /// let trainers = run.join()??.trainers;
    /// # Ok::<(), workbench::Error>(())
    /// ```
    pub fn spawn(
        self,
        build: impl Fn(usize, &str) -> Result<Trainer> + Send + Sync + 'static,
    ) -> RunHandle<Result<ParallelOutcome>> {
        RunHandle::spawn(move |commands, on_event| self.fit_live(build, commands, on_event))
    }

    /// [`DataParallel::fit_with`] steered by live [`Command`]s, as [`Trainer::fit_with`] is:
    /// before each step rank 0 drains `commands`, and every rank applies the same commands in
    /// the same order before that step, so the ranks stay identical (an objective swap, a new
    /// temperature, a freeze or a clamp changes all of them at once). Rank 0's events report
    /// each one (`objective_swapped` followed by a probe, `edited`, or `command_rejected`, which
    /// leaves every rank unchanged); [`Command::Stop`] pauses every rank at that step. It is the
    /// loop of [`Trainer::fit_with`] driving a [`super::Leader`] whose other ranks run on
    /// threads scoped to the call.
    ///
    /// ```no_run
    /// use std::ops::ControlFlow;
    /// use workbench::{config::RunConfig, control::Command, loss::LossConfig};
    /// use workbench::{parallel::DataParallel, train::Trainer};
    /// let mut cfg = RunConfig::preset("tiny")?;
    /// cfg.train.steps = 600;
    /// let (send, commands) = std::sync::mpsc::channel();
    /// send.send(Command::Swap { loss: LossConfig::by_name("siglip")? }).unwrap(); // before step 1
    /// let ddp = DataParallel::new(&["cpu", "cpu"])?;
    /// let run = ddp.fit_live(|_, device| {
    ///     let mut cfg = cfg.clone();
    ///     cfg.train.device = device.to_string();
    ///     Trainer::new(cfg)
    /// }, &commands, |event| {
    ///     if let workbench::events::Event::Step(s) = event && s.step == 300 {
    ///         let _ = send.send(Command::Swap { loss: LossConfig::by_name("cloob").unwrap() });
    ///     }
    ///     ControlFlow::Continue(())
    /// })?;
    /// # Ok::<(), workbench::Error>(())
    /// ```
    pub fn fit_live(
        &self,
        build: impl Fn(usize, &str) -> Result<Trainer> + Sync,
        commands: &Receiver<Command>,
        on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<ParallelOutcome> {
        std::thread::scope(|scope| {
            let mut threads = Vec::new();
            let run = || {
                let mut group = self.lead_scoped(scope, &build, &mut threads)?;
                let outcome = crate::train::run_loop(&mut group, commands, on_event)?;
                let trainers = group.into_trainers()?;
                Ok(ParallelOutcome { outcome, trainers })
            };
            let result = run();
            // Every rank has ended or been told to (the group is gone); a rank's panic has
            // reached rank 0 as an error already.
            for thread in threads {
                let _ = thread.join();
            }
            result
        })
    }
}

/// Where each rank's communicator comes from.
pub(super) enum Backend {
    Threads(Vec<Mutex<Option<ThreadComm>>>),
    #[cfg(feature = "nccl")]
    Nccl(Arc<super::NcclGroup>),
}

impl Backend {
    pub(super) fn new(devices: &[String]) -> Result<Self> {
        if devices.iter().all(|d| d == "cpu") {
            let comms = ThreadGroup::new(devices.len());
            return Ok(Self::Threads(
                comms.into_iter().map(|c| Mutex::new(Some(c))).collect(),
            ));
        }
        #[cfg(feature = "nccl")]
        {
            Ok(Self::Nccl(super::NcclGroup::new(devices.len())?))
        }
        #[cfg(not(feature = "nccl"))]
        Err(Error::config(
            "train.devices",
            format!("{devices:?}: CUDA ranks need the `nccl` feature"),
        ))
    }

    #[cfg_attr(not(feature = "nccl"), allow(clippy::unused_self, unused_variables))]
    pub(super) fn communicator(
        &self,
        rank: usize,
        trainer: &Trainer,
    ) -> Result<Arc<dyn Communicator>> {
        match self {
            Self::Threads(comms) => {
                let comm = comms[rank]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .ok_or_else(|| Error::Data(format!("rank {rank} started twice")))?;
                Ok(Arc::new(comm))
            }
            #[cfg(feature = "nccl")]
            Self::Nccl(group) => Ok(Arc::new(super::NcclComm::join(
                group,
                trainer.device(),
                rank,
            )?)),
        }
    }
}

/// The reason a group failed: the first error that is not a rank finding its partner gone,
/// named by rank (every rank's error when all are consequences: the first).
pub(super) fn cause(mut errors: Vec<(usize, Error)>) -> Error {
    if errors.is_empty() {
        return Error::Data("the data-parallel group failed without an error".into());
    }
    let i = errors
        .iter()
        .position(|(_, e)| !e.to_string().contains(LEFT_THE_GROUP))
        .unwrap_or(0);
    let (rank, e) = errors.swap_remove(i);
    match e {
        Error::Candle(c) => Error::Data(format!("rank {rank}: {c}")),
        e => e,
    }
}

/// Where the ranks meet once built: no rank connects before all are, since NCCL would wait
/// forever for a rank that failed to build.
pub(super) struct StartGate {
    /// Ranks arrived, and whether any of them failed.
    state: Mutex<(usize, bool)>,
    all_in: Condvar,
    world: usize,
}

impl StartGate {
    pub(super) fn new(world: usize) -> Self {
        Self {
            state: Mutex::new((0, false)),
            all_in: Condvar::new(),
            world,
        }
    }

    /// Counts one rank in (built or not) and waits for the others; `true` when all were built.
    pub(super) fn arrive(&self, built: bool) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 += 1;
        s.1 |= !built;
        self.all_in.notify_all();
        while s.0 < self.world {
            s = self.all_in.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        !s.1
    }

    /// Counts in a rank whose thread never started, as failed, without waiting.
    pub(super) fn absent(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 += 1;
        s.1 = true;
        self.all_in.notify_all();
    }
}

/// A built trainer (or the error building it) made rank `rank` of the group, once every rank
/// has arrived at `gate`: its communicator set, and training only when it is not rank 0.
pub(super) fn join_group(
    rank: usize,
    built: Result<Trainer>,
    gate: &StartGate,
    backend: &Backend,
) -> Result<Trainer> {
    let all_built = gate.arrive(built.is_ok());
    let mut trainer = built?;
    if !all_built {
        return Err(Error::Data(format!(
            "rank {rank}: another rank failed to start; {LEFT_THE_GROUP}"
        )));
    }
    let comm = backend.communicator(rank, &trainer)?;
    trainer.set_communicator(comm)?;
    if rank > 0 {
        trainer.quiet_rank();
    }
    Ok(trainer)
}

/// Rank 0's `run_started` event, its device naming the whole group when there are several
/// ranks: `2 ranks: cuda:0 (NVIDIA H100 80GB HBM3), cuda:1`.
pub(super) fn group_started(trainer: &Trainer, devices: &[String]) -> Event {
    let mut event = trainer.started_event();
    if let (Event::RunStarted { device, .. }, [_, rest @ ..]) = (&mut event, devices)
        && !rest.is_empty()
    {
        *device = format!("{} ranks: {device}, {}", devices.len(), rest.join(", "));
    }
    event
}

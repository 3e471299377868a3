//! [`Leader`]: a data-parallel group stepped one tick at a time by its caller — what an
//! interactive front end needs, since it steps between requests rather than in a loop.

use super::driver::{Backend, StartGate, cause, group_started, join_group};
use super::{DataParallel, LEFT_THE_GROUP};
use crate::control::Command;
use crate::events::Event;
use crate::train::{Lockstep, Tick, Trainer};
use crate::{Error, Result};
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

/// How long a broken group waits for its other ranks to end before leaving them be (a rank
/// ends at once once the group is aborted; one inside a call into NCCL that does not return
/// is left to itself).
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// What rank 0 tells the other ranks to do, in order.
enum Order {
    /// One [`Trainer::tick`].
    Tick,
    /// A live command, applied before the next tick.
    Apply(Command),
}

/// A rank other than 0: the channel of its orders, and the one on which its thread hands its
/// trainer back (or its error) when it ends.
struct Follower {
    rank: usize,
    orders: Option<Sender<Order>>,
    done: Receiver<Result<Trainer>>,
    /// What `done` delivered, once it has.
    result: Option<Result<Trainer>>,
}

/// Rank 0 of a data-parallel group, held by the caller, with the other ranks on threads of
/// their own that wait (on the host, not in a collective) for rank 0's orders: each
/// [`Leader::tick`] steps every rank once, each [`Leader::command`] changes every rank
/// alike, and between ticks rank 0 answers whatever its caller asks of its trainer —
/// attention maps, evaluations, checkpoints — while the others wait. The ranks stay identical
/// exactly as under [`DataParallel::fit_live`], which steps the same trainers in a loop.
///
/// A leader of one rank ([`Leader::solo`]) is a plain trainer behind the same interface, so
/// a front end holds a `Leader` whatever the number of devices.
///
/// When a tick fails on any rank of several the group is over: the leader names the rank that
/// failed and why, refuses further ticks and commands with that reason, and keeps rank 0's
/// trainer, whose state is that of its last completed step, for inspection and checkpoints.
/// A leader of one rank only reports the error: its trainer keeps its last good state (a
/// failed step changes nothing) and the next tick tries again — after, say, a
/// [`Command::SetMicroBatches`](crate::control::Command::SetMicroBatches) for a step that ran
/// out of device memory.
/// [`Leader::into_trainers`] ends the group and gives back every rank's trainer; dropping the
/// leader ends it too (each other rank finishes its current order and stops).
///
/// ```no_run
/// use std::ops::ControlFlow;
/// use workbench::{config::RunConfig, control::Command, loss::LossConfig};
/// use workbench::{data::Split, parallel::DataParallel, train::Trainer};
/// let cfg = RunConfig::preset("tiny")?;
/// let mut group = DataParallel::new(&["cpu", "cpu"])?.lead(move |_, device| {
///     let mut cfg = cfg.clone();
///     cfg.train.device = device.to_string();
///     Trainer::new(cfg)
/// })?;
/// let mut print = |e: &workbench::events::Event| {
///     println!("{}", serde_json::to_string(e).unwrap());
///     ControlFlow::Continue(())
/// };
/// for _ in 0..10 {
///     group.tick(&mut print)?;
/// }
/// group.command(&Command::Swap { loss: LossConfig::by_name("siglip")? }, &mut print)?;
/// let sample = group.trainer().sample(Split::Val, 0)?; // rank 0 answers alone
/// let view = group.trainer().attention(&sample.image, "a red circle")?;
/// group.tick(&mut print)?;
/// let ranks = group.into_trainers()?; // identical parameters
/// # Ok::<(), workbench::Error>(())
/// ```
pub struct Leader {
    trainer: Trainer,
    followers: Vec<Follower>,
    devices: Vec<String>,
    /// Why the group stopped, once it has.
    broken: Option<String>,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("devices", &self.devices)
            .field("step", &self.trainer.completed_steps())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl DataParallel {
    /// Builds every rank with `build(rank, device)` — rank 0 on this thread, the others on
    /// threads of their own — and connects them; the group then steps when the returned
    /// [`Leader`] ticks. Building fails as [`DataParallel::fit_with`] does: with the error
    /// of the rank that could not be built.
    pub fn lead(
        &self,
        build: impl Fn(usize, &str) -> Result<Trainer> + Send + Sync + 'static,
    ) -> Result<Leader> {
        let build = Arc::new(build);
        let rank0 = build.clone();
        self.assemble(&*rank0, |rank, main| {
            let build = build.clone();
            std::thread::Builder::new()
                .name(format!("rank {rank}"))
                .spawn(move || main(&*build))
                .map(drop)
        })
    }

    /// [`DataParallel::lead`] with the other ranks on threads of `scope`, so that `build` may
    /// borrow ([`DataParallel::fit_live`]); their handles go to `threads`, for the caller to
    /// join (a scope whose unjoined thread panicked would panic in turn — a rank's panic
    /// reaches rank 0 as an error instead).
    pub(super) fn lead_scoped<'scope, 'env, B>(
        &self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        build: &'env B,
        threads: &mut Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
    ) -> Result<Leader>
    where
        B: Fn(usize, &str) -> Result<Trainer> + Sync,
    {
        self.assemble(build, |rank, main| {
            let thread = std::thread::Builder::new()
                .name(format!("rank {rank}"))
                .spawn_scoped(scope, move || main(build))?;
            threads.push(thread);
            Ok(())
        })
    }

    /// Starts ranks `1..W` through `spawn(rank, main)` — `main` builds the rank with the
    /// `build` it is given, joins the group and follows orders — then builds rank 0 here.
    fn assemble<B>(
        &self,
        build: &B,
        mut spawn: impl FnMut(usize, FollowerStart) -> std::io::Result<()>,
    ) -> Result<Leader>
    where
        B: Fn(usize, &str) -> Result<Trainer> + ?Sized,
    {
        let world = self.world_size();
        let backend = Arc::new(Backend::new(self.devices())?);
        let gate = Arc::new(StartGate::new(world));
        let mut followers = Vec::with_capacity(world.saturating_sub(1));
        let mut spawn_error = None;
        for rank in 1..world {
            let (orders, inbox) = mpsc::channel();
            let (finished, done) = mpsc::channel();
            let (backend, start) = (backend.clone(), gate.clone());
            let device = self.devices()[rank].clone();
            let main: FollowerStart = Box::new(move |build| {
                let built = build_rank(build, rank, &device);
                let body = || follow(join_group(rank, built, &start, &backend)?, &inbox);
                let result = catch_unwind(AssertUnwindSafe(body));
                let _ = finished.send(result.unwrap_or_else(|_| Err(panicked(rank))));
            });
            match spawn(rank, main) {
                Ok(()) => followers.push(Follower {
                    rank,
                    orders: Some(orders),
                    done,
                    result: None,
                }),
                Err(e) => {
                    gate.absent();
                    spawn_error.get_or_insert((rank, e));
                }
            }
        }
        let rank0 = join_group(0, build_rank(build, 0, &self.devices()[0]), &gate, &backend);
        match rank0 {
            Ok(trainer) => Ok(Leader {
                trainer,
                followers,
                devices: self.devices().to_vec(),
                broken: None,
            }),
            Err(e) => {
                let mut errors = vec![(0, e)];
                errors.extend(leave(&mut followers));
                if let Some((rank, e)) = spawn_error {
                    let e = Error::Data(format!("cannot start rank {rank}: {e}"));
                    errors.insert(0, (rank, e));
                }
                Err(cause(errors))
            }
        }
    }
}

/// A follower's body, given the `build` of its rank: build, join the group, follow orders,
/// and send the result to rank 0.
type FollowerStart = Box<dyn FnOnce(&(dyn Fn(usize, &str) -> Result<Trainer> + Sync)) + Send>;

impl Leader {
    /// A group of one: `trainer` alone, stepped and commanded directly.
    pub fn solo(trainer: Trainer) -> Self {
        let devices = vec![trainer.config().train.device.clone()];
        Self {
            trainer,
            followers: Vec::new(),
            devices,
            broken: None,
        }
    }

    /// Rank 0's trainer: ask it anything that does not change it (samples, attention,
    /// alignment, evaluation, probes, checkpoints). The other ranks do not see what is done
    /// through it, so training it here (a step, a command) would set the ranks apart; step
    /// with [`Leader::tick`] and change it with [`Leader::command`].
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Rank 0's trainer, for the inspections that take `&mut` (the modality gap, probes,
    /// which cache their batches). The caveat of [`Leader::trainer`] holds.
    pub fn trainer_mut(&mut self) -> &mut Trainer {
        &mut self.trainer
    }

    /// The devices, in rank order (one, for [`Leader::solo`]).
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.followers.len() + 1
    }

    /// Why the group stopped, once a tick failed on some rank.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The `run_started` event of the group: rank 0's, its device naming every rank.
    pub fn started_event(&self) -> Event {
        if self.followers.is_empty() {
            self.trainer.started_event()
        } else {
            group_started(&self.trainer, &self.devices)
        }
    }

    /// One [`Trainer::tick`] on every rank: the step (its collectives join the ranks), then
    /// rank 0's probe, evaluation and checkpoint as scheduled, their events handed to
    /// `on_event`. A non-finite value pauses every rank at the same step, as in one process.
    /// An error on any rank ends the group (see [`Leader`]) and is returned with its cause.
    pub fn tick(&mut self, on_event: impl FnMut(&Event) -> ControlFlow<()>) -> Result<Tick> {
        self.usable()?;
        if let Some(rank) = self.send(|| Order::Tick) {
            // Rank 0 does not step: the collectives would wait for a rank that is gone.
            return Err(self.break_up(Error::Data(format!(
                "rank 0: rank {rank} {LEFT_THE_GROUP} before step {}",
                self.trainer.completed_steps() + 1
            ))));
        }
        match self.trainer.tick(on_event) {
            Ok(tick) => Ok(tick),
            // Alone, nobody waits for this rank and its state is intact: it can go on.
            Err(e) if self.followers.is_empty() => Err(e),
            Err(e) => Err(self.break_up(e)),
        }
    }

    /// Applies a live command to every rank before the next tick, reporting it to `on_event`
    /// as [`Trainer::fit_with`] does: `objective_swapped` followed by a probe, `edited`, or
    /// `command_rejected` (a command that cannot apply changes no rank). `Stop` does nothing
    /// here: the caller stops by not ticking.
    pub fn command(
        &mut self,
        command: &Command,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<()> {
        self.usable()?;
        if *command == Command::Stop {
            return Ok(());
        }
        let report: &mut dyn FnMut(&Event) -> ControlFlow<()> = &mut on_event;
        // A failure here is the probe after a swap, which the swap itself precedes.
        let applied = self.trainer.apply_live(command, Some(report));
        // Sent whether or not rank 0 took it (or could probe after it): each rank decides
        // alike, and a rank that could not take what rank 0 took fails, which the next tick
        // reports.
        if let Some(rank) = self.send(|| Order::Apply(command.clone())) {
            return Err(self.break_up(Error::Data(format!("rank 0: rank {rank} {LEFT_THE_GROUP}"))));
        }
        applied.map(drop)
    }

    /// Ends the group and gives every rank's trainer back, in rank order: identical copies,
    /// unless the group broke (then the error that broke it).
    pub fn into_trainers(mut self) -> Result<Vec<Trainer>> {
        if let Some(why) = &self.broken {
            return Err(Error::Data(why.clone()));
        }
        let mut followers = std::mem::take(&mut self.followers);
        for f in &mut followers {
            f.orders = None;
        }
        let mut trainers = Vec::with_capacity(followers.len() + 1);
        let mut errors = Vec::new();
        for f in followers {
            let rank = f.rank;
            let result = match f.result {
                Some(r) => r,
                None => f.done.recv().unwrap_or_else(|_| Err(panicked(rank))),
            };
            match result {
                Ok(t) => trainers.push(t),
                Err(e) => errors.push((rank, e)),
            }
        }
        if !errors.is_empty() {
            return Err(cause(errors));
        }
        let Self { trainer, .. } = self;
        trainers.insert(0, trainer);
        Ok(trainers)
    }

    fn usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(Error::Data(format!(
                "the data-parallel group stopped ({why}); fork or resume it from a checkpoint"
            ))),
            None => Ok(()),
        }
    }

    /// Sends an order to every other rank; the first rank that can no longer take one.
    fn send(&self, order: impl Fn() -> Order) -> Option<usize> {
        let mut gone = None;
        for f in &self.followers {
            let sent = f.orders.as_ref().is_some_and(|o| o.send(order()).is_ok());
            if !sent {
                gone.get_or_insert(f.rank);
            }
        }
        gone
    }

    /// Ends the group after `e` on rank 0: rank 0 leaves (its partners' collectives fail
    /// rather than wait), the other ranks are told to stop and given a moment to end, and the
    /// cause among all their errors is kept and returned.
    fn break_up(&mut self, e: Error) -> Error {
        self.trainer.leave_group(&e);
        let mut errors = vec![(0, e)];
        errors.extend(leave(&mut self.followers));
        let e = cause(errors);
        self.broken = Some(e.to_string());
        e
    }
}

impl Follower {
    /// Whether its thread has ended (its result, or a panic, arrived).
    fn ended(&mut self) -> bool {
        if self.result.is_none() {
            match self.done.try_recv() {
                Ok(r) => self.result = Some(r),
                Err(TryRecvError::Disconnected) => self.result = Some(Err(panicked(self.rank))),
                Err(TryRecvError::Empty) => {}
            }
        }
        self.result.is_some()
    }
}

/// Tells every follower to stop and collects the errors of those that end within
/// [`LEAVE_WAIT`]; one still running after that (an NCCL rank that the abort could not reach)
/// is left to itself.
fn leave(followers: &mut Vec<Follower>) -> Vec<(usize, Error)> {
    for f in followers.iter_mut() {
        f.orders = None;
    }
    let deadline = Instant::now() + LEAVE_WAIT;
    while followers.iter_mut().any(|f| !f.ended()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    followers
        .drain(..)
        .filter_map(|f| match f.result {
            Some(Err(e)) => Some((f.rank, e)),
            _ => None,
        })
        .collect()
}

/// `build(rank, device)`, a panic in it made an error: every rank must reach the start gate,
/// or the others would wait there forever.
fn build_rank<B>(build: &B, rank: usize, device: &str) -> Result<Trainer>
where
    B: Fn(usize, &str) -> Result<Trainer> + ?Sized,
{
    catch_unwind(AssertUnwindSafe(|| build(rank, device))).unwrap_or_else(|_| {
        Err(Error::Data(format!(
            "rank {rank} ({device}): building its trainer panicked"
        )))
    })
}

fn panicked(rank: usize) -> Error {
    Error::Data(format!("rank {rank} panicked"))
}

/// A rank other than 0: carries out rank 0's orders until rank 0 closes the channel, then
/// gives its trainer back. An error ends it and, by aborting its communicator, the group:
/// rank 0 may be waiting in a collective for it.
fn follow(mut trainer: Trainer, orders: &Receiver<Order>) -> Result<Trainer> {
    for order in orders {
        let done = match order {
            // A pause (a non-finite value) is agreed on by every rank; the next tick goes on.
            Order::Tick => trainer.tick(|_| ControlFlow::Continue(())).map(drop),
            Order::Apply(command) => trainer
                .apply_live(&command, None::<&mut dyn FnMut(&Event) -> ControlFlow<()>>)
                .map(drop),
        };
        if let Err(e) = done {
            trainer.leave_group(&e);
            return Err(e);
        }
    }
    Ok(trainer)
}

impl Lockstep for Leader {
    fn reporter(&mut self) -> &mut Trainer {
        &mut self.trainer
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
        let mut broke = false;
        self.command(command, |e| {
            let flow = on_event(e);
            broke |= flow.is_break();
            flow
        })?;
        Ok(if broke {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

//! A training session for interactive front ends: the [`Trainer`] lives on a background thread
//! (the device lives there too); the front end sends [`Request`]s and drains plain-data
//! [`Reply`]s and events every frame into a UI-free [`RunHistory`]. Nothing here blocks the
//! caller and nothing here knows about egui.
//!
//! The thread trains while playing, one [`Trainer::tick`] at a time, and between two ticks
//! applies live commands and answers inspection requests (attention, alignment, gap, batch,
//! pointing, fork). Paused, it sleeps until the next request.
//!
//! A session may train on several devices at once ([`Session::start_on`]): the thread then
//! holds rank 0 of a data-parallel group ([`workbench::parallel::Leader`]), every tick steps
//! all ranks on their shards of the global batch, every command changes all of them, and rank
//! 0 answers the inspections.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use viz::session::{Request, Session};
//! let mut session = Session::start(workbench::config::RunConfig::preset("tiny")?, "run 1")?;
//! session.send(Request::Play);
//! loop {
//!     for reply in session.poll() { /* inspection answers */ }
//!     if session.step() >= 100 { break; }
//!     std::thread::sleep(std::time::Duration::from_millis(50));
//! }
//! session.send(Request::Pause);
//! println!("loss curve: {:?}", session.history().series("loss"));
//! # Ok(()) }
//! ```

use anyhow::{Context as _, Result};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use workbench::analysis::{
    Alignment, AttentionView, BatchSimilarity, GapAnalysis, PointingReport, Relevance,
};
use workbench::config::RunConfig;
use workbench::control::Command;
use workbench::data::{RgbImage, Split};
use workbench::events::Event;
use workbench::model::Pool;
use workbench::parallel::{DataParallel, Leader};
use workbench::train::{Tick, Trainer};

/// What a front end asks the training thread.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Train continuously until paused or finished.
    Play,
    /// Stop after the current step.
    Pause,
    /// Exactly one optimizer step (when paused).
    Step,
    /// A live command: swap the objective, edit a weight, temperature or parameter, freeze,
    /// clamp (see [`workbench::control`]).
    Control(Command),
    /// Attention and relevance for a sample and its first caption.
    Attention {
        /// Split of the sample.
        split: Split,
        /// Index in the split.
        index: usize,
    },
    /// Token × patch alignment of a sample with a text (`None`: its first caption).
    Align {
        /// Split of the sample.
        split: Split,
        /// Index in the split.
        index: usize,
        /// Any text.
        text: Option<String>,
    },
    /// The modality gap on the validation split, with retrieval after each shift.
    Gap {
        /// Shifts along the gap vector.
        deltas: Vec<f32>,
    },
    /// The similarity matrix of the first `n` validation pairs.
    Batch {
        /// Pairs.
        n: usize,
    },
    /// The pointing game on the first `images` validation images.
    Pointing {
        /// Images to play.
        images: usize,
    },
    /// Checkpoint the run now (weights, optimizer, data position) to fork it.
    Fork,
}

/// Attention of both towers and the relevance maps for one sample.
#[derive(Clone, Debug)]
pub struct AttentionReply {
    /// Split and index of the sample.
    pub sample: (Split, usize),
    /// The image.
    pub image: RgbImage,
    /// Its first caption.
    pub text: String,
    /// Attention of every layer and head.
    pub view: AttentionView,
    /// How the image tower pools (which row is the pooled query).
    pub pool: Pool,
    /// Grad-CAM and gradient × attention relevance.
    pub relevance: Relevance,
}

/// Alignment of one sample with a text.
#[derive(Clone, Debug)]
pub struct AlignReply {
    /// Split and index of the sample.
    pub sample: (Split, usize),
    /// The image.
    pub image: RgbImage,
    /// The sample's captions (to offer as clickable text).
    pub captions: Vec<String>,
    /// Token × patch similarities.
    pub alignment: Alignment,
}

/// An answer of the training thread to a request (events go to the history instead).
#[derive(Clone, Debug)]
pub enum Reply {
    /// For [`Request::Attention`].
    Attention(Box<AttentionReply>),
    /// For [`Request::Align`].
    Alignment(Box<AlignReply>),
    /// For [`Request::Gap`].
    Gap(Box<GapAnalysis>),
    /// For [`Request::Batch`].
    Batch(Box<BatchReply>),
    /// For [`Request::Pointing`].
    Pointing(PointingReport),
    /// For [`Request::Fork`]: a checkpoint directory to [`Session::resume`] from.
    Forked(PathBuf),
    /// A request that failed, with the reason.
    Error(String),
}

pub use history::{DataWait, Marker, RunHistory, describe};

mod history;

/// The similarity matrix of a batch of validation pairs, with the batch's images.
#[derive(Clone, Debug)]
pub struct BatchReply {
    /// Similarities, per-pair losses, false-negative candidates; captions are the pairs'.
    pub similarity: BatchSimilarity,
    /// The pairs' images, in row order.
    pub images: Vec<RgbImage>,
}

/// What the thread sends back.
enum Message {
    Event(Event),
    Reply(Reply),
    Playing(bool),
}

type Waker = Arc<Mutex<Option<Box<dyn Fn() + Send + Sync>>>>;

/// A run on a background thread (see the module docs).
pub struct Session {
    name: String,
    config: RunConfig,
    devices: Vec<String>,
    requests: Sender<Request>,
    messages: Receiver<Message>,
    history: RunHistory,
    playing: bool,
    waker: Waker,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("step", &self.step())
            .field("playing", &self.playing)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Builds a trainer from `config` on a new thread; the session starts paused.
    pub fn start(config: RunConfig, name: impl Into<String>) -> Result<Self> {
        let trainer = Trainer::new(config).context("cannot build the run")?;
        Ok(Self::spawn(Leader::solo(trainer), name.into()))
    }

    /// [`Session::start`] with one data-parallel rank per device (`"cpu"` repeated, or
    /// `"cuda:N"` GPUs; `train.device` is replaced by each rank's). One device, or none, is a
    /// plain session on `devices[0]` (or `train.device`). `train.batch_size` is the global
    /// batch and must divide by the number of devices.
    pub fn start_on(
        mut config: RunConfig,
        devices: &[impl AsRef<str>],
        name: impl Into<String>,
    ) -> Result<Self> {
        if let [device] = devices {
            config.train.device = device.as_ref().to_string();
        }
        if devices.len() < 2 {
            return Self::start(config, name);
        }
        let group = DataParallel::new(devices)
            .context("devices")?
            .lead(move |_, device| {
                let mut config = config.clone();
                config.train.device = device.to_string();
                Trainer::new(config)
            })
            .context("cannot build the run")?;
        Ok(Self::spawn(group, name.into()))
    }

    /// Continues the run checkpointed in `dir` (a fork, or any run directory), paused.
    pub fn resume(dir: &Path, name: impl Into<String>) -> Result<Self> {
        let trainer = Trainer::resume(dir, None)
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        Ok(Self::spawn(Leader::solo(trainer), name.into()))
    }

    /// [`Session::resume`] with one data-parallel rank per device, as [`Session::start_on`].
    pub fn resume_on(
        dir: &Path,
        devices: &[impl AsRef<str>],
        name: impl Into<String>,
    ) -> Result<Self> {
        let devices: Vec<String> = devices.iter().map(|d| d.as_ref().to_string()).collect();
        let resume = |dir: &Path, device: &str| {
            Trainer::resume(dir, Some(workbench::config::parse_device(device)?))
        };
        let group = match devices.as_slice() {
            [] => return Self::resume(dir, name),
            [device] => resume(dir, device).map(Leader::solo),
            _ => {
                let owned = dir.to_path_buf();
                DataParallel::new(&devices)
                    .context("devices")?
                    .lead(move |_, device| resume(&owned, device))
            }
        }
        .with_context(|| format!("cannot resume from {}", dir.display()))?;
        Ok(Self::spawn(group, name.into()))
    }

    fn spawn(group: Leader, name: String) -> Self {
        let (requests, request_rx) = mpsc::channel();
        let (message_tx, messages) = mpsc::channel();
        let waker: Waker = Arc::new(Mutex::new(None));
        let config = group.trainer().config().clone();
        let devices = group.devices().to_vec();
        let mut history = RunHistory::default();
        history.push(&group.started_event());
        let thread_waker = Arc::clone(&waker);
        let thread = std::thread::Builder::new()
            .name(format!("training: {name}"))
            .spawn(move || worker(group, &request_rx, &message_tx, &thread_waker))
            .ok();
        Self {
            name,
            config,
            devices,
            requests,
            messages,
            history,
            playing: false,
            waker,
            thread,
        }
    }

    /// Sends a request; it is handled between two steps. A finished thread ignores it.
    pub fn send(&self, request: Request) {
        let _ = self.requests.send(request);
    }

    /// Drains what the thread sent: events go to [`Session::history`], answers are returned.
    pub fn poll(&mut self) -> Vec<Reply> {
        let mut replies = Vec::new();
        loop {
            match self.messages.try_recv() {
                Ok(Message::Event(e)) => self.history.push(&e),
                Ok(Message::Reply(r)) => replies.push(r),
                Ok(Message::Playing(p)) => self.playing = p,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.playing = false;
                    break;
                }
            }
        }
        replies
    }

    /// Everything reported so far.
    pub fn history(&self) -> &RunHistory {
        &self.history
    }

    /// The session's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the thread last reported it was training.
    pub fn playing(&self) -> bool {
        self.playing
    }

    /// Steps completed (as far as polled).
    pub fn step(&self) -> usize {
        self.history.step()
    }

    /// The configuration the run started with (rank 0's, on several devices).
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The devices it trains on, in rank order: one, or one per data-parallel rank.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Called by the thread after it sends anything (e.g. to request a repaint).
    pub fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        if let Ok(mut w) = self.waker.lock() {
            *w = Some(waker);
        }
    }
}

/// How long dropping a session waits for its thread to finish the current step.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_mins(1);

impl Drop for Session {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after its current step.
        let (dead, _) = mpsc::channel();
        self.requests = dead;
        if let Some(t) = self.thread.take() {
            // A step that never ends (an NCCL rank waiting in a collective for a rank that
            // failed) must not hold up whoever drops the session — the app, on exit — forever.
            let deadline = std::time::Instant::now() + CLOSE_WAIT;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The training thread: trains while playing, handles requests between steps.
fn worker(mut group: Leader, requests: &Receiver<Request>, out: &Sender<Message>, waker: &Waker) {
    let send = |m: Message| {
        let _ = out.send(m);
        if let Ok(w) = waker.lock()
            && let Some(w) = w.as_ref()
        {
            w();
        }
    };
    let mut playing = false;
    loop {
        let request = if playing {
            match requests.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        } else {
            match requests.recv() {
                Ok(r) => Some(r),
                Err(_) => return,
            }
        };
        if let Some(request) = request {
            match request {
                Request::Play => {
                    let t = group.trainer();
                    playing = t.completed_steps() < t.config().train.steps;
                    send(Message::Playing(playing));
                }
                Request::Pause => {
                    playing = false;
                    send(Message::Playing(false));
                }
                Request::Step => {
                    if !playing && !tick(&mut group, &send) {
                        send(Message::Playing(false));
                    }
                }
                other => handle(&mut group, other, &send),
            }
            continue;
        }
        if !tick(&mut group, &send) {
            playing = false;
            send(Message::Playing(false));
        }
    }
}

/// One step with its scheduled events; `false` when the run cannot go on (finished, paused by
/// a non-finite value, or failed).
fn tick(group: &mut Leader, send: &impl Fn(Message)) -> bool {
    let t = group.trainer();
    if t.completed_steps() >= t.config().train.steps {
        return false;
    }
    let on_event = |e: &Event| {
        send(Message::Event(e.clone()));
        ControlFlow::Continue(())
    };
    match group.tick(on_event) {
        Ok(Tick::Stepped) => {
            let trainer = group.trainer_mut();
            if trainer.completed_steps() >= trainer.config().train.steps {
                if let Err(e) = trainer.finish(on_event) {
                    send(Message::Reply(Reply::Error(format!("{e:#}"))));
                }
                return false;
            }
            true
        }
        Ok(Tick::Paused(reason)) => {
            send(Message::Event(Event::Paused {
                step: group.trainer().completed_steps(),
                reason,
            }));
            false
        }
        Err(e) if group.broken().is_some() => {
            send(Message::Reply(Reply::Error(format!(
                "training stopped: {e}"
            ))));
            false
        }
        Err(e) => {
            // One rank, its state intact: the next Play or Step tries again.
            send(Message::Reply(Reply::Error(format!(
                "training paused: {e}; play to try again"
            ))));
            false
        }
    }
}

/// Live commands and inspection requests.
fn handle(group: &mut Leader, request: Request, send: &impl Fn(Message)) {
    let reply = match answer(group, request, send) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => Reply::Error(format!("{e:#}")),
    };
    send(Message::Reply(reply));
}

fn answer(group: &mut Leader, request: Request, send: &impl Fn(Message)) -> Result<Option<Reply>> {
    if let Request::Control(command) = &request {
        group.command(command, |e| {
            send(Message::Event(e.clone()));
            ControlFlow::Continue(())
        })?;
        return Ok(None);
    }
    // Inspection: rank 0 answers alone, between two ticks.
    let trainer = group.trainer_mut();
    Ok(Some(match request {
        Request::Attention { split, index } => {
            let s = trainer.sample(split, index)?;
            let text = s
                .captions
                .first()
                .map(|c| c.text.clone())
                .with_context(|| format!("{split} sample {index} has no caption"))?;
            let view = trainer.attention(&s.image, &text)?;
            let relevance = trainer.relevance(&s.image, &text)?;
            Reply::Attention(Box::new(AttentionReply {
                sample: (split, index),
                pool: trainer.model().config().vision.pool,
                image: s.image,
                text,
                view,
                relevance,
            }))
        }
        Request::Align { split, index, text } => {
            let s = trainer.sample(split, index)?;
            let captions: Vec<String> = s.captions.iter().map(|c| c.text.clone()).collect();
            let text = match text {
                Some(t) => t,
                None => captions
                    .first()
                    .cloned()
                    .with_context(|| format!("{split} sample {index} has no caption"))?,
            };
            let alignment = trainer.align(&s.image, &text)?;
            Reply::Alignment(Box::new(AlignReply {
                sample: (split, index),
                image: s.image,
                captions,
                alignment,
            }))
        }
        Request::Gap { deltas } => Reply::Gap(Box::new(trainer.analyse_gap(Split::Val, &deltas)?)),
        Request::Batch { n } => {
            let similarity = trainer.batch_similarity(Split::Val, n)?;
            let images = (0..similarity.n)
                .map(|i| trainer.sample(Split::Val, i).map(|s| s.image))
                .collect::<workbench::Result<Vec<_>>>()?;
            Reply::Batch(Box::new(BatchReply { similarity, images }))
        }
        Request::Pointing { images } => Reply::Pointing(trainer.pointing_game(Split::Val, images)?),
        Request::Fork => {
            let dir = fork_dir(trainer.completed_steps())?;
            trainer.save_checkpoint(&dir)?;
            Reply::Forked(dir)
        }
        // Handled above (control) or by the worker's loop.
        Request::Control(_) | Request::Play | Request::Pause | Request::Step => return Ok(None),
    }))
}

/// A fresh directory for a fork's checkpoint under the system temporary directory.
fn fork_dir(step: usize) -> Result<PathBuf> {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "workbench-fork-{}-{n}-step{step}",
        std::process::id()
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    Ok(dir)
}

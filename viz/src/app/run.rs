//! One run in the app: its session (the training thread) and the answers to the inspection
//! requests sent to it, with what each answer was asked for.

use workbench::analysis::{GapAnalysis, PointingReport};

use super::paint::Cached;
use crate::session::{AlignReply, AttentionReply, BatchReply, Reply, Request, Session};

/// An answer that is requested asynchronously: what was asked last, whether the answer is
/// still out, and the latest answer.
pub struct Inspection<K, V> {
    /// The parameters of the last request sent.
    requested: Option<K>,
    /// The step at which it was sent.
    at_step: usize,
    /// Whether its answer has not arrived yet.
    pending: bool,
    /// The latest answer and the parameters it answers.
    value: Option<(K, V)>,
    /// Bumped at every answer (keys the textures made from it).
    generation: u64,
}

impl<K, V> Default for Inspection<K, V> {
    fn default() -> Self {
        Self {
            requested: None,
            at_step: 0,
            pending: false,
            value: None,
            generation: 0,
        }
    }
}

impl<K: Clone + PartialEq, V> Inspection<K, V> {
    /// Whether a request for `key` should be sent now: nothing is out and either `key` differs
    /// from the last request or, with `refresh_every = Some(n)`, the answer is `n` steps old.
    /// Marks the request as sent when it returns true.
    pub fn want(&mut self, key: &K, step: usize, refresh_every: Option<usize>) -> bool {
        if self.pending {
            return false;
        }
        let changed = self.requested.as_ref() != Some(key);
        let stale = refresh_every.is_some_and(|n| n > 0 && step >= self.at_step + n);
        if changed || stale {
            self.requested = Some(key.clone());
            self.at_step = step;
            self.pending = true;
            true
        } else {
            false
        }
    }

    /// Forget the last request so that the next [`Inspection::want`] sends again.
    pub fn invalidate(&mut self) {
        if !self.pending {
            self.requested = None;
        }
    }

    /// Stores an answer (to the last request).
    pub fn fill(&mut self, value: V) {
        self.pending = false;
        self.generation += 1;
        if let Some(k) = self.requested.clone() {
            self.value = Some((k, value));
        }
    }

    /// The request failed.
    pub fn fail(&mut self) {
        self.pending = false;
    }

    /// Whether an answer is awaited.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// The latest answer.
    pub fn value(&self) -> Option<&V> {
        self.value.as_ref().map(|(_, v)| v)
    }

    /// Counts answers received.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Textures of a run's panels, rebuilt only when what they show changes.
#[derive(Default)]
pub struct Textures {
    /// The attention panel's big overlay.
    pub attention: Cached<(u64, bool, Option<usize>, Option<usize>)>,
    /// The attention panel's layers × heads grid (one per cell).
    pub attention_grid: Vec<Cached<u64>>,
    /// The alignment panel's image with the selected word's map.
    pub alignment: Cached<(u64, Option<String>)>,
    /// The batch panel's image thumbnails (one per pair), keyed by the answer's generation.
    pub thumbnails: Vec<Cached<u64>>,
}

/// A run: a training session plus what the panels asked it.
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent flags of one run, not states of one machine"
)]
pub struct Run {
    /// The training thread.
    pub session: Session,
    /// Whether the session's waker is set.
    pub waker_set: bool,
    /// Whether the temperature is frozen (as last requested).
    pub tau_frozen: bool,
    /// Whether the logit bias is frozen (as last requested).
    pub bias_frozen: bool,
    /// Whether its loss curve is overlaid on the active run's.
    pub overlay: bool,
    /// Batch similarity: key = pairs.
    pub batch: Inspection<usize, BatchReply>,
    /// Attention: key = sample index.
    pub attention: Inspection<usize, AttentionReply>,
    /// Alignment: key = (sample index, typed text).
    pub alignment: Inspection<(usize, Option<String>), AlignReply>,
    /// Pointing game: key = images.
    pub pointing: Inspection<usize, PointingReport>,
    /// Modality gap: key = δ in thousandths.
    pub gap: Inspection<i32, GapAnalysis>,
    /// A fork was requested and not answered yet.
    pub fork_pending: bool,
    /// Failed requests, newest last.
    pub errors: Vec<String>,
    /// Textures of the panels.
    pub textures: Textures,
}

/// What a poll brought that the app must act on.
pub enum Event {
    /// A fork was checkpointed in this directory.
    Forked(std::path::PathBuf),
}

impl Run {
    /// A run around a session.
    pub fn new(session: Session) -> Self {
        Self {
            session,
            waker_set: false,
            tau_frozen: false,
            bias_frozen: false,
            overlay: true,
            batch: Inspection::default(),
            attention: Inspection::default(),
            alignment: Inspection::default(),
            pointing: Inspection::default(),
            gap: Inspection::default(),
            fork_pending: false,
            errors: Vec::new(),
            textures: Textures::default(),
        }
    }

    /// Drains the session's messages and files the answers.
    pub fn poll(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for reply in self.session.poll() {
            match reply {
                Reply::Attention(a) => self.attention.fill(*a),
                Reply::Alignment(a) => self.alignment.fill(*a),
                Reply::Gap(g) => self.gap.fill(*g),
                Reply::Batch(b) => self.batch.fill(*b),
                Reply::Pointing(p) => self.pointing.fill(p),
                Reply::Forked(dir) => {
                    self.fork_pending = false;
                    events.push(Event::Forked(dir));
                }
                Reply::Error(e) => {
                    // The reply does not say which request failed: none is awaited any more,
                    // and none is sent again until its parameters change or the user refreshes.
                    self.batch.fail();
                    self.attention.fail();
                    self.alignment.fail();
                    self.pointing.fail();
                    self.gap.fail();
                    self.fork_pending = false;
                    self.errors.push(e);
                }
            }
        }
        events
    }

    /// Sends a request.
    pub fn send(&self, r: Request) {
        self.session.send(r);
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.session.step()
    }
}

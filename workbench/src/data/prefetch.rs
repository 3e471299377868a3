//! Loading ahead: a background thread builds the next batches while the trainer computes.
//!
//! [`Prefetcher`] wraps a [`Loader`]. With a depth of 0 it is the loader itself, called in the
//! step. With a depth `d > 0` a thread of its own (started at the first batch) runs a copy of the
//! loader on the CPU and keeps up to `d` finished batches ahead of the trainer in a bounded
//! channel; the trainer's thread moves each batch it takes to its device, so the producer never
//! touches a device context.
//!
//! The batch at a position is a function of `(seed, position, extras)` alone (see
//! [`crate::data::loader`]), so loading ahead changes no number. What the producer has reached
//! is never part of the state: [`Prefetcher::state`] is the position of the next batch the
//! trainer will *consume*, and that is what a checkpoint stores. Every request names the
//! position and [`Extras`] it wants; when they are not those of the batches in flight — after
//! [`Prefetcher::set_state`] (a resume, or the rewind after a non-finite step) or a swap to an
//! objective that needs other extras — the queued batches are discarded and the producer starts
//! again from the requested position. A loader error travels to the request that would have
//! consumed the batch, unchanged, and does not advance the position. Dropping the prefetcher
//! stops and joins its thread.
//!
//! ```
//! use std::sync::Arc;
//! use workbench::data::loader::AugmentConfig;
//! use workbench::data::{Extras, Loader, PairDataset, Prefetcher, Shapes, ShapesConfig, Tokenizer};
//! let data: Arc<dyn PairDataset> = Arc::new(Shapes::new(ShapesConfig {
//!     train_size: 64,
//!     ..ShapesConfig::default()
//! })?);
//! let tok = Arc::new(Tokenizer::fit_word_level(&data.corpus(), 32)?);
//! let loader = |seed| {
//!     let cpu = candle_core::Device::Cpu;
//!     Loader::new(data.clone(), tok.clone(), 8, seed, AugmentConfig::default(), cpu)
//! };
//! let mut sync = Prefetcher::new(loader(3)?, 0);
//! let mut ahead = Prefetcher::new(loader(3)?, 2);
//! for _ in 0..3 {
//!     let (a, b) = (sync.next_batch_with(Extras::default())?, ahead.next_batch_with(Extras::default())?);
//!     assert_eq!(a.indices, b.indices);
//!     assert_eq!(a.images.to_vec3::<f32>().ok(), b.images.to_vec3::<f32>().ok());
//! }
//! assert_eq!(ahead.state().position, 24); // consumed, not produced
//! # Ok::<(), workbench::Error>(())
//! ```

use crate::data::{Batch, Extras, Loader, LoaderState};
use crate::{Error, Result};
use candle_core::Device;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;

/// The most batches a prefetcher may hold ahead (`train.prefetch` is checked against it).
pub const MAX_PREFETCH: usize = 64;

/// A [`Loader`] that builds the next batches on a background thread (see the module docs).
pub struct Prefetcher {
    /// The consumer's loader: its position is the next batch to hand out; with depth 0 it also
    /// builds the batches.
    loader: Loader,
    depth: usize,
    worker: Option<Worker>,
}

impl Prefetcher {
    /// A prefetcher keeping up to `depth` batches ahead of the consumer (0: load in the caller,
    /// as the plain loader does), delivering them on `loader`'s device.
    pub fn new(loader: Loader, depth: usize) -> Self {
        Self {
            loader,
            depth: depth.min(MAX_PREFETCH),
            worker: None,
        }
    }

    /// The position of the next batch handed out (not what the producer has reached).
    pub fn state(&self) -> LoaderState {
        self.loader.state()
    }

    /// Continues from `state`; batches built ahead for another position are discarded at the
    /// next request.
    pub fn set_state(&mut self, state: LoaderState) {
        self.loader.set_state(state);
    }

    /// Makes the loader rank `rank` of `world` data-parallel ranks (see [`Loader::set_shard`]);
    /// batches built ahead for the unsharded loader are discarded.
    pub fn set_shard(&mut self, rank: usize, world: usize) {
        self.loader.set_shard(rank, world);
        self.worker = None;
    }

    /// Batches kept ahead (0: none, loading happens in the request).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The loader (its position is [`Prefetcher::state`]).
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// The next batch with `extras`, on the loader's device; advances the position by the batch
    /// size. Equal to [`Loader::next_batch_with`] at the same position, bit for bit.
    pub fn next_batch_with(&mut self, extras: Extras) -> Result<Batch> {
        if self.depth == 0 {
            return self.loader.next_batch_with(extras);
        }
        let position = self.loader.state().position;
        let worker = match &mut self.worker {
            Some(w) => w,
            None => self.worker.insert(Worker::spawn(
                self.loader.on_device(Device::Cpu),
                self.depth,
            )?),
        };
        let batch = worker.take(position, extras)?;
        let batch = batch.to_device(self.loader.device())?;
        self.loader.set_state(LoaderState {
            position: position + self.loader.batch_size() as u64,
        });
        Ok(batch)
    }
}

/// Where the producer should (re)start: a new generation of batches.
struct Job {
    generation: u64,
    position: u64,
    extras: Extras,
}

/// One batch (or the loader's error) of a generation, at a position.
struct Made {
    generation: u64,
    position: u64,
    batch: Result<Batch>,
}

/// The producer thread and both ends of its channels.
struct Worker {
    jobs: Option<Sender<Job>>,
    made: Option<Receiver<Made>>,
    thread: Option<JoinHandle<()>>,
    generation: u64,
    /// Position and extras of the next batch the current generation delivers; `None` when the
    /// producer stopped (after an error) or has no job yet.
    next: Option<(u64, Extras)>,
    batch_size: u64,
}

impl Worker {
    fn spawn(loader: Loader, depth: usize) -> Result<Self> {
        let batch_size = loader.batch_size() as u64;
        let (jobs_tx, jobs_rx) = mpsc::channel();
        // The producer holds one finished batch while it waits to send: a channel of `depth − 1`
        // keeps at most `depth` batches ahead.
        let (made_tx, made_rx) = mpsc::sync_channel(depth.saturating_sub(1));
        let thread = std::thread::Builder::new()
            .name("batch-prefetch".into())
            .spawn(move || produce(loader, &jobs_rx, &made_tx))
            .map_err(|e| Error::Data(format!("cannot start the batch-loading thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs_tx),
            made: Some(made_rx),
            thread: Some(thread),
            generation: 0,
            next: None,
            batch_size,
        })
    }

    /// The batch at `position` with `extras`, restarting the producer there if the batches in
    /// flight are for anything else.
    fn take(&mut self, position: u64, extras: Extras) -> Result<Batch> {
        if self.next != Some((position, extras)) {
            self.generation += 1;
            let job = Job {
                generation: self.generation,
                position,
                extras,
            };
            let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
            if !sent {
                return Err(self.stopped());
            }
            self.next = Some((position, extras));
        }
        loop {
            let Some(made) = self.made.as_ref().and_then(|m| m.recv().ok()) else {
                return Err(self.stopped());
            };
            // Batches of an earlier generation were built for another position or extras.
            if made.generation != self.generation {
                continue;
            }
            if made.position != position {
                self.next = None;
                return Err(Error::Data(format!(
                    "batch-loading thread delivered position {}, expected {position}",
                    made.position
                )));
            }
            return match made.batch {
                Ok(batch) => {
                    self.next = Some((position + self.batch_size, extras));
                    Ok(batch)
                }
                Err(e) => {
                    // The producer waits for a new job; the next request retries this position.
                    self.next = None;
                    Err(e)
                }
            };
        }
    }

    /// The error for a producer that is gone (it only ends on its own by panicking).
    fn stopped(&mut self) -> Error {
        self.next = None;
        self.jobs = None;
        self.made = None;
        let why = match self.thread.take().map(JoinHandle::join) {
            Some(Err(panic)) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                .unwrap_or_else(|| "a panic".into()),
            _ => "it ended".into(),
        };
        Error::Data(format!("the batch-loading thread stopped: {why}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing both channels wakes the producer wherever it waits; it ends after the batch it
        // may be building.
        self.made = None;
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // A panic was already reported to the request that met it, or nobody asked.
            let _ = thread.join();
        }
    }
}

/// The producer: builds batches of the newest job in order until the consumer is gone; after a
/// loader error it waits for a new job.
fn produce(mut loader: Loader, jobs: &Receiver<Job>, made: &SyncSender<Made>) {
    let mut job: Option<Job> = None;
    loop {
        // The newest job replaces the current one; with none, wait for one.
        if job.is_none() {
            match jobs.recv() {
                Ok(j) => job = Some(j),
                Err(_) => return,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(j) => job = Some(j),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let Some(current) = job.as_mut() else {
            continue;
        };
        loader.set_state(LoaderState {
            position: current.position,
        });
        let batch = loader.next_batch_with(current.extras);
        let failed = batch.is_err();
        let out = Made {
            generation: current.generation,
            position: current.position,
            batch,
        };
        current.position = loader.state().position;
        if made.send(out).is_err() {
            return;
        }
        if failed {
            job = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::AugmentConfig;
    use crate::data::{PairDataset, Shapes, ShapesConfig, Tokenizer};
    use std::sync::Arc;

    fn loader(batch: usize) -> Loader {
        let data: Arc<dyn PairDataset> = Arc::new(
            Shapes::new(ShapesConfig {
                train_size: 40,
                ..ShapesConfig::default()
            })
            .unwrap(),
        );
        let tok = Arc::new(Tokenizer::fit_word_level(&data.corpus(), 32).unwrap());
        Loader::new(data, tok, batch, 5, AugmentConfig::default(), Device::Cpu).unwrap()
    }

    fn pixels(b: &Batch) -> Vec<f32> {
        b.images.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn restarts_where_the_consumer_is_after_a_rewind_or_new_extras() {
        let mut sync = Prefetcher::new(loader(6), 0);
        let mut ahead = Prefetcher::new(loader(6), 3);
        let plain = Extras::default();
        let second = Extras {
            second_views: true,
            hard_negatives: 0,
        };
        // Across an epoch boundary (40 items), a rewind, and a change of extras.
        let plan = [
            plain, plain, plain, plain, plain, plain, plain, second, second, plain,
        ];
        for (k, &extras) in plan.iter().enumerate() {
            if k == 4 {
                let back = LoaderState { position: 12 };
                sync.set_state(back);
                ahead.set_state(back);
            }
            let (a, b) = (
                sync.next_batch_with(extras).unwrap(),
                ahead.next_batch_with(extras).unwrap(),
            );
            assert_eq!(a.indices, b.indices, "request {k}");
            assert_eq!(a.captions, b.captions, "request {k}");
            assert_eq!(pixels(&a), pixels(&b), "request {k}");
            assert_eq!(a.second.is_some(), b.second.is_some());
            if let (Some(x), Some(y)) = (&a.second, &b.second) {
                let (x, y) = (&x.images, &y.images);
                assert_eq!(
                    x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
            }
            assert_eq!(sync.state(), ahead.state());
        }
    }

    #[test]
    fn depth_is_capped() {
        assert_eq!(Prefetcher::new(loader(2), 1000).depth(), MAX_PREFETCH);
    }
}

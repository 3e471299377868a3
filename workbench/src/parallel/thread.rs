//! `W` ranks as threads of one process: collectives through shared host buffers.
//!
//! Each collective is one round: every rank deposits its tensor, the last to arrive publishes
//! all `W` contributions, and each rank computes its result from them. Every result is
//! computed from the same contributions in the same (rank) order, so all ranks see
//! bit-identical sums. A round needs every rank: a [`ThreadComm`] that is dropped while others
//! wait (its thread failed or stopped) ends their round with an error naming it instead of a
//! hang.

use super::{Communicator, LEFT_THE_GROUP, check_f32};
use candle_core::{Device, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// One rank's tensor in a round: its values (row-major) and its shape.
#[derive(Debug)]
struct Contribution {
    data: Vec<f32>,
    dims: Vec<usize>,
}

#[derive(Debug, Default)]
struct Round {
    /// Rounds completed so far.
    generation: u64,
    /// This round's contributions so far, by rank.
    pending: Vec<Option<Contribution>>,
    arrived: usize,
    /// The contributions of the last completed round.
    published: Option<Arc<Vec<Contribution>>>,
    /// Why the group cannot complete a round any more.
    broken: Option<String>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    round: Mutex<Round>,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds the communicators of `W` threads that train together.
#[derive(Debug)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// `w` connected communicators, rank `0 .. w` in order; move each into its thread.
    /// `w = 0` gives none.
    #[allow(clippy::new_ret_no_self, reason = "a group is its communicators")]
    pub fn new(w: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            world: w,
            round: Mutex::new(Round {
                pending: (0..w).map(|_| None).collect(),
                ..Round::default()
            }),
            done: Condvar::new(),
        });
        (0..w)
            .map(|rank| ThreadComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`ThreadGroup`].
#[derive(Debug)]
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// Deposits `x` and returns every rank's contribution once all have arrived.
    fn exchange(&self, x: &Tensor, op: &str) -> candle_core::Result<Arc<Vec<Contribution>>> {
        check_f32(x, op)?;
        let mine = Contribution {
            data: x.flatten_all()?.to_vec1::<f32>()?,
            dims: x.dims().to_vec(),
        };
        let shared = &self.shared;
        let mut round = shared.lock();
        if let Some(why) = &round.broken {
            candle_core::bail!("{op} on rank {}: {why}", self.rank);
        }
        let generation = round.generation;
        round.pending[self.rank] = Some(mine);
        round.arrived += 1;
        if round.arrived == shared.world {
            let all: Vec<Contribution> =
                round.pending.iter_mut().filter_map(Option::take).collect();
            round.published = Some(Arc::new(all));
            round.arrived = 0;
            round.generation += 1;
            shared.done.notify_all();
        } else {
            // A completed round is read before a broken group is reported: a rank that
            // finished its last collective and left must not fail the others' last round.
            while round.generation == generation && round.broken.is_none() {
                round = shared
                    .done
                    .wait(round)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if round.generation == generation {
                let why = round.broken.clone().unwrap_or_default();
                candle_core::bail!("{op} on rank {}: {why}", self.rank);
            }
        }
        let all = round.published.clone().unwrap_or_default();
        drop(round);
        for (r, c) in all.iter().enumerate() {
            if c.dims != x.dims() {
                candle_core::bail!(
                    "{op}: rank {r} sent a tensor of shape {:?}, rank {} one of shape {:?}; \
                     every rank must send the same shape",
                    c.dims,
                    self.rank,
                    x.dims()
                );
            }
        }
        Ok(all)
    }
}

/// Element-wise sum of `parts`, added in the order given (rank order).
fn sum_in_order<'a>(mut parts: impl Iterator<Item = &'a [f32]>, len: usize) -> Vec<f32> {
    let mut out = parts.next().map_or_else(|| vec![0.0; len], <[f32]>::to_vec);
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

fn tensor(data: Vec<f32>, dims: Vec<usize>, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, dims, &Device::Cpu)?.to_device(device)
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_gather(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let all = self.exchange(x, "all_gather")?;
        let data: Vec<f32> = all.iter().flat_map(|c| c.data.iter().copied()).collect();
        let mut dims = x.dims().to_vec();
        dims[0] *= self.shared.world;
        tensor(data, dims, x.device())
    }

    fn reduce_scatter(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.shared.world;
        let rows = x.dims()[0];
        if !rows.is_multiple_of(w) {
            candle_core::bail!(
                "reduce_scatter: {rows} rows do not split evenly over {w} ranks (shape {:?})",
                x.dims()
            );
        }
        let all = self.exchange(x, "reduce_scatter")?;
        let len = x.elem_count() / w;
        let at = self.rank * len;
        let data = sum_in_order(all.iter().map(|c| &c.data[at..at + len]), len);
        let mut dims = x.dims().to_vec();
        dims[0] = rows / w;
        tensor(data, dims, x.device())
    }

    fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let all = self.exchange(x, "all_reduce")?;
        let data = sum_in_order(all.iter().map(|c| c.data.as_slice()), x.elem_count());
        tensor(data, x.dims().to_vec(), x.device())
    }

    /// What dropping the communicator does, while it is still referenced (by a trainer's
    /// autograd graph, say).
    fn abort(&self, _why: &str) {
        self.leave();
    }
}

impl ThreadComm {
    /// Marks the group broken by this rank and wakes every rank waiting in a round.
    fn leave(&self) {
        let mut round = self.shared.lock();
        if round.broken.is_none() {
            round.broken = Some(format!("rank {} {LEFT_THE_GROUP}", self.rank));
        }
        self.shared.done.notify_all();
    }
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        self.leave();
    }
}

//! Data-parallel training: one rank per device, the contrastive loss on the global batch.
//!
//! Every rank holds a full copy of the parameters and encodes only its shard of the global
//! batch: with `W` ranks and a global batch of `B` pairs, rank `r` takes rows
//! `r·B/W .. (r+1)·B/W` of exactly the batch a single process would have drawn. A contrastive
//! loss compares every image with every caption, so each rank all-gathers the embeddings
//! ([`gather_with_grad`]) and evaluates the objective on the whole `(B, E)` batch — the numbers
//! a single process computes. The gather keeps the gradient: its backward sums the incoming
//! gradients of all ranks and hands each rank the rows it contributed (OpenCLIP's
//! `gather_with_grad`, i.e. `torch.distributed.nn.all_gather`). After the backward pass the
//! trainer all-reduces every trainable gradient and divides by `W`
//! ([`all_reduce_gradients`]): each rank then holds the gradient of the single-process loss,
//! applies the same AdamW update, and the copies stay identical.
//!
//! Why the factor `W` cancels: every rank evaluates the same global loss `L`, so the gathered
//! embeddings receive `∂L/∂G` on every rank, and the reduce-scatter hands rank `r`
//! `W·∂L/∂G[rows of r]`. Summing the parameter gradients of all ranks gives `W·∂L/∂θ` (the
//! objective's own parameters, such as the temperature, get `∂L/∂τ` on every rank, summing to
//! `W·∂L/∂τ` as well); dividing by `W` gives `∂L/∂θ`.
//!
//! The collectives go through a [`Communicator`]:
//!
//! - [`Solo`] — a world of one, every collective the identity. A single rank runs through the
//!   same code as many, and its numbers equal a plain run's bit for bit (tested).
//! - [`ThreadGroup`] / [`ThreadComm`] — `W` ranks as threads of one process, exchanging host
//!   copies through shared buffers. Sums run in rank order, so every rank gets bit-identical
//!   results and a run is reproducible. It is how data parallelism is tested on a CPU, and how
//!   [`DataParallel`] runs several `cpu` devices.
//! - `NcclComm` (feature `nccl`) — NCCL through cudarc's safe `Comm`, one thread per GPU.
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{Device, Tensor};
//! use workbench::parallel::{Communicator, ThreadGroup};
//!
//! let comms = ThreadGroup::new(2);
//! let handles: Vec<_> = comms
//!     .into_iter()
//!     .map(|comm| {
//!         std::thread::spawn(move || {
//!             let r = comm.rank() as f32;
//!             let x = Tensor::new(&[[r, 10.0 * r]], &Device::Cpu)?; // (1, 2) on each rank
//!             let all = comm.all_gather(&x)?; // (2, 2): rank 0's row, then rank 1's
//!             let sum = comm.all_reduce(&x)?; // (1, 2): the rows added
//!             Ok::<_, candle_core::Error>((all.to_vec2::<f32>()?, sum.to_vec2::<f32>()?))
//!         })
//!     })
//!     .collect();
//! for h in handles {
//!     let (all, sum) = h.join().unwrap()?;
//!     assert_eq!(all, vec![vec![0.0, 0.0], vec![1.0, 10.0]]);
//!     assert_eq!(sum, vec![vec![1.0, 10.0]]);
//! }
//! # Ok::<(), candle_core::Error>(())
//! ```

mod driver;
mod gather;
mod leader;
#[cfg(feature = "nccl")]
mod nccl;
mod thread;

pub(crate) use driver::LEFT_THE_GROUP;
pub use driver::{DataParallel, ParallelOutcome};
pub use gather::{GatheredInputs, gather_ids, gather_with_grad};
pub use leader::Leader;
#[cfg(feature = "nccl")]
pub use nccl::{NcclComm, NcclGroup};
pub use thread::{ThreadComm, ThreadGroup};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::fmt::Debug;

/// The collectives data-parallel training needs, on `f32` tensors whose first dimension is
/// the batch. Every rank must call the same collectives in the same order with tensors of the
/// same shape. A rank that fails mid-run calls [`Communicator::abort`], so that the others'
/// collectives, in flight or later, fail instead of waiting for it.
pub trait Communicator: Send + Sync + Debug {
    /// This rank, `0 .. world_size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// `(b, …)` on every rank → `(W·b, …)`: rank 0's rows, then rank 1's, and so on.
    fn all_gather(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// `(W·b, …)` on every rank → `(b, …)`: the sum over ranks of rows `r·b .. (r+1)·b`, on
    /// rank `r` (the backward pass of [`Communicator::all_gather`]).
    fn reduce_scatter(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// The element-wise sum over ranks, on every rank.
    fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Ends the group because this rank failed (`why`, for the log): every rank's collectives,
    /// those waiting now and any later, fail with an error saying that this rank left the
    /// group, rather than wait for a contribution that will never come. A group that ends
    /// normally is not aborted: its ranks just drop their communicators. The default does
    /// nothing (a world of one has nobody to wait for).
    fn abort(&self, why: &str) {
        let _ = why;
    }
}

/// A world of one: every collective returns its input. Training with it runs the
/// data-parallel code path and gives exactly the numbers of a plain run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_gather(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        check_f32(x, "all_gather")?;
        Ok(x.clone())
    }
    fn reduce_scatter(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        check_f32(x, "reduce_scatter")?;
        Ok(x.clone())
    }
    fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        check_f32(x, "all_reduce")?;
        Ok(x.clone())
    }
}

/// Collectives carry `f32` tensors with a batch dimension; anything else is a caller's error.
pub(crate) fn check_f32(x: &Tensor, op: &str) -> candle_core::Result<()> {
    if x.dtype() != DType::F32 {
        candle_core::bail!("{op}: collectives carry f32 tensors, got {:?}", x.dtype());
    }
    if x.rank() == 0 {
        candle_core::bail!("{op}: the tensor needs a batch dimension, got a scalar");
    }
    Ok(())
}

/// Replaces the gradient of every variable in `params` by the mean over ranks: one
/// all-reduce of all gradients concatenated (in the order of `params`, which every rank must
/// list alike), divided by the world size. Variables without a gradient stay without one on
/// every rank (the graphs are the same). With one rank the values are unchanged bit for bit.
pub fn all_reduce_gradients(
    comm: &dyn Communicator,
    params: &[(String, Var)],
    grads: &mut GradStore,
) -> candle_core::Result<()> {
    let present: Vec<(&Var, Tensor)> = params
        .iter()
        .filter_map(|(_, v)| grads.get(v).map(|g| (v, g.flatten_all())))
        .map(|(v, g)| g.map(|g| (v, g)))
        .collect::<candle_core::Result<_>>()?;
    if present.is_empty() {
        return Ok(());
    }
    let flat: Vec<&Tensor> = present.iter().map(|(_, g)| g).collect();
    let all = Tensor::cat(&flat, 0)?.to_dtype(DType::F32)?;
    let world = comm.world_size();
    let mut mean = comm.all_reduce(&all)?;
    if world > 1 {
        mean = (mean / world as f64)?;
    }
    let mut at = 0;
    for (v, g) in present {
        let n = g.elem_count();
        let part = mean
            .narrow(0, at, n)?
            .reshape(v.shape())?
            .to_dtype(v.dtype())?;
        grads.insert(v.as_tensor(), part);
        at += n;
    }
    Ok(())
}

/// Whether any rank saw a problem this step: the flags are summed, so every rank returns the
/// same answer and all of them pause together.
/// The flag travels as a one-element tensor on `device` (NCCL needs it on the GPU).
pub fn any_rank(
    comm: &dyn Communicator,
    flag: bool,
    device: &candle_core::Device,
) -> candle_core::Result<bool> {
    let x = Tensor::new(&[f32::from(u8::from(flag))], device)?;
    let sum = comm.all_reduce(&x)?.to_vec1::<f32>()?;
    Ok(sum.first().copied().unwrap_or(0.0) > 0.0)
}

//! [`NcclComm`]: the collectives on CUDA tensors through NCCL (cudarc's safe `Comm`).
//!
//! One thread per GPU, all joining one [`NcclGroup`] (its NCCL unique id, shared by the
//! threads of one process). Each collective is a forward-only custom op whose CUDA forward
//! calls NCCL on the stream candle runs the device's kernels on, so it is ordered with them.
//!
//! NCCL cannot tell that a rank has gone: the others wait in their next collective forever.
//! So a rank that fails [aborts](Communicator::abort) the group: `ncclCommAbort` on every
//! rank's communicator ends the operations they have on their devices, a rank blocked waiting
//! on its stream returns, and every later collective fails at once, naming the rank that left.

use super::{Communicator, LEFT_THE_GROUP, check_f32};
use crate::{Error, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};
use kernels::nccl::{Abort, SharedComm};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How long an abort waits for a rank's thread to finish a call into NCCL before leaving
/// that rank's communicator as it is.
const ABORT_PATIENCE: Duration = Duration::from_secs(2);

/// The ranks of one NCCL communicator in this process: its unique id, and what an abort needs
/// to reach every rank.
#[derive(Debug)]
pub struct NcclGroup {
    id: Id,
    world: usize,
    state: Mutex<GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    /// The communicator of every rank that joined, with its rank.
    members: Vec<(usize, Weak<SharedComm>)>,
    /// Why the group ended, once a rank aborted it.
    broken: Option<String>,
}

impl NcclGroup {
    /// A group of `world` ranks with a fresh NCCL unique id.
    pub fn new(world: usize) -> Result<Arc<Self>> {
        let id = Id::new()
            .map_err(|e| Error::Data(format!("NCCL: cannot create a unique id: {e:?}")))?;
        Ok(Arc::new(Self {
            id,
            world,
            state: Mutex::new(GroupState::default()),
        }))
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the group ended, if a rank aborted it.
    pub fn broken(&self) -> Option<String> {
        self.state().broken.clone()
    }

    /// Ends the group on behalf of `rank`: every member's communicator is aborted. A member
    /// whose thread is inside a call into NCCL for longer than [`ABORT_PATIENCE`], or whose
    /// abort fails, is left as it is, and the reason the group gives says so. Idempotent.
    fn abort(&self, rank: usize, why: &str) {
        let members: Vec<(usize, Arc<SharedComm>)> = {
            let mut s = self.state();
            if s.broken.is_some() {
                return;
            }
            s.broken = Some(format!("rank {rank} {LEFT_THE_GROUP} ({why})"));
            s.members
                .iter()
                .filter_map(|(r, m)| Some((*r, m.upgrade()?)))
                .collect()
        };
        let stuck: Vec<String> = members
            .iter()
            .filter(|(_, m)| {
                !matches!(
                    m.abort(ABORT_PATIENCE),
                    Abort::Aborted | Abort::AlreadyAborted
                )
            })
            .map(|(r, _)| r.to_string())
            .collect();
        if !stuck.is_empty()
            && let Some(reason) = &mut self.state().broken
        {
            *reason = format!(
                "{reason}; the communicator of rank {} could not be aborted and may still wait",
                stuck.join(", rank ")
            );
        }
    }
}

/// One rank of an NCCL communicator on a CUDA device.
#[derive(Debug)]
pub struct NcclComm {
    comm: Arc<SharedComm>,
    group: Arc<NcclGroup>,
    rank: usize,
    world: usize,
}

impl NcclComm {
    /// Joins `group` as `rank` on `device` (a CUDA device). Blocks until every rank has
    /// joined.
    pub fn join(group: &Arc<NcclGroup>, device: &Device, rank: usize) -> Result<Self> {
        let (world, id) = (group.world, group.id);
        let Device::Cuda(cuda) = device else {
            return Err(Error::config(
                "train.devices",
                format!("NCCL rank {rank} needs a CUDA device, got {device:?}"),
            ));
        };
        let stream = cuda.cuda_stream();
        // NCCL joins on the thread's current device: make it this rank's.
        stream.context().bind_to_thread().map_err(|e| {
            Error::Data(format!("NCCL: rank {rank} cannot select its device: {e:?}"))
        })?;
        let comm = Comm::from_rank(stream, rank, world, id)
            .map_err(|e| Error::Data(format!("NCCL: rank {rank} of {world} cannot join: {e:?}")))?;
        let comm = Arc::new(SharedComm::new(comm));
        group.state().members.push((rank, Arc::downgrade(&comm)));
        Ok(Self {
            comm,
            group: group.clone(),
            rank,
            world,
        })
    }

    fn run(&self, x: &Tensor, what: Collective) -> candle_core::Result<Tensor> {
        check_f32(x, what.name())?;
        self.usable(what)?;
        x.contiguous()?.apply_op1_no_bwd(&Op { comm: self, what })
    }

    /// Fails once the group has been aborted.
    fn usable(&self, what: Collective) -> candle_core::Result<()> {
        match self.group.broken() {
            Some(why) => candle_core::bail!("{} on rank {}: {why}", what.name(), self.rank),
            None => Ok(()),
        }
    }
}

impl Drop for NcclComm {
    /// A rank that unwinds from a panic ends the group, as an error would; one that ends
    /// normally leaves the others' last collectives be.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.group.abort(self.rank, "it panicked");
        }
    }
}

#[derive(Clone, Copy)]
enum Collective {
    AllGather,
    ReduceScatter,
    AllReduce,
}

impl Collective {
    fn name(self) -> &'static str {
        match self {
            Self::AllGather => "nccl-all-gather",
            Self::ReduceScatter => "nccl-reduce-scatter",
            Self::AllReduce => "nccl-all-reduce",
        }
    }
}

struct Op<'a> {
    comm: &'a NcclComm,
    what: Collective,
}

impl CustomOp1 for Op<'_> {
    fn name(&self) -> &'static str {
        self.what.name()
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "{}: the tensor is on the CPU; NCCL ranks work on CUDA tensors",
            self.name()
        )
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: the tensor is not contiguous", self.name());
        };
        let input = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let w = self.comm.world;
        let mut dims = layout.dims().to_vec();
        match self.what {
            Collective::AllGather => dims[0] *= w,
            Collective::ReduceScatter => {
                if !dims[0].is_multiple_of(w) {
                    candle_core::bail!(
                        "{}: {} rows do not split evenly over {w} ranks",
                        self.name(),
                        dims[0]
                    );
                }
                dims[0] /= w;
            }
            Collective::AllReduce => {}
        }
        let shape = Shape::from(dims);
        let mut out = storage.device.alloc_zeros::<f32>(shape.elem_count())?;
        let done = self.comm.comm.with(|c| match self.what {
            Collective::AllGather => c.all_gather(&input, &mut out),
            Collective::ReduceScatter => c.reduce_scatter(&input, &mut out, &ReduceOp::Sum),
            Collective::AllReduce => c.all_reduce(&input, &mut out, &ReduceOp::Sum),
        });
        let Some(done) = done else {
            // Aborted between the check in `run` and here.
            self.comm.usable(self.what)?;
            candle_core::bail!("{} on rank {}: aborted", self.name(), self.comm.rank);
        };
        done.map_err(|e| {
            candle_core::Error::Msg(format!(
                "{} on rank {} of {w}: {e:?}",
                self.name(),
                self.comm.rank
            ))
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, storage.device.clone()),
            shape,
        ))
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_gather(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, Collective::AllGather)
    }
    fn reduce_scatter(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, Collective::ReduceScatter)
    }
    fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, Collective::AllReduce)
    }
    fn abort(&self, why: &str) {
        self.group.abort(self.rank, why);
    }
}

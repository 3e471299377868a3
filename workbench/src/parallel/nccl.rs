//! [`NcclComm`]: the collectives on CUDA tensors through NCCL (cudarc's safe `Comm`).
//!
//! One thread per GPU; rank 0's [`NcclComm::unique_id`] is shared with every rank (threads
//! of one process copy it). Each collective is a forward-only custom op whose CUDA forward
//! calls NCCL on the stream candle runs the device's kernels on, so it is ordered with them.

use super::{Communicator, check_f32};
use crate::{Error, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};
use kernels::nccl::SharedComm;

/// One rank of an NCCL communicator on a CUDA device.
#[derive(Debug)]
pub struct NcclComm {
    comm: SharedComm,
    rank: usize,
    world: usize,
}

impl NcclComm {
    /// A fresh communicator id; every rank of one group must use the same.
    pub fn unique_id() -> Result<Id> {
        Id::new().map_err(|e| Error::Data(format!("NCCL: cannot create a unique id: {e:?}")))
    }

    /// Joins the group `id` as `rank` of `world` on `device` (a CUDA device). Blocks until
    /// every rank has joined.
    pub fn new(device: &Device, rank: usize, world: usize, id: Id) -> Result<Self> {
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
        Ok(Self {
            comm: SharedComm::new(comm),
            rank,
            world,
        })
    }

    fn run(&self, x: &Tensor, what: Collective) -> candle_core::Result<Tensor> {
        check_f32(x, what.name())?;
        x.contiguous()?.apply_op1_no_bwd(&Op { comm: self, what })
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
        self.comm
            .comm
            .with(|c| match self.what {
                Collective::AllGather => c.all_gather(&input, &mut out),
                Collective::ReduceScatter => c.reduce_scatter(&input, &mut out, &ReduceOp::Sum),
                Collective::AllReduce => c.all_reduce(&input, &mut out, &ReduceOp::Sum),
            })
            .map_err(|e| {
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
}

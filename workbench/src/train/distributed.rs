//! The trainer's side of data parallelism (see [`crate::parallel`]): a rank's shard of the
//! loader, the agreed batch, the gathered loss inputs, the agreed non-finite check and the
//! averaged gradients.

use super::Trainer;
use crate::data::Batch;
use crate::loss::{LossInputs, Objective};
use crate::parallel::{
    Communicator, GatheredInputs, LEFT_THE_GROUP, all_reduce_gradients, any_rank,
};
use crate::{Error, Result};
use candle_core::Var;
use candle_core::backprop::GradStore;
use std::sync::Arc;

impl Trainer {
    /// Makes this trainer rank `comm.rank()` of `comm.world_size()`: its loader yields rows
    /// `r·b .. (r+1)·b` of every global batch of `train.batch_size` pairs (`b` = batch size / `W`),
    /// the objective sees the whole global batch, and gradients are averaged over the ranks
    /// before clipping and the optimizer step. Every rank must be built from the same
    /// configuration and step together ([`crate::parallel::DataParallel`] does both).
    pub fn set_communicator(&mut self, comm: Arc<dyn Communicator>) -> Result<()> {
        let (rank, world) = (comm.rank(), comm.world_size());
        if rank >= world {
            return Err(Error::config(
                "train.devices",
                format!("rank {rank} is outside a world of {world} ranks"),
            ));
        }
        let batch = self.cfg.train.batch_size;
        if !batch.is_multiple_of(world) {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "the global batch of {batch} pairs does not split evenly over {world} ranks; \
                     make it a multiple of {world}"
                ),
            ));
        }
        let micro = self.cfg.train.micro_batches;
        if !(batch / world).is_multiple_of(micro) {
            return Err(Error::config(
                "train.micro_batches",
                format!(
                    "each of the {world} ranks has {} pairs of the batch of {batch}, which do not \
                     split into {micro} micro-batches; make the batch a multiple of {}",
                    batch / world,
                    world * micro
                ),
            ));
        }
        self.loader.set_shard(rank, world);
        self.comm = Some(comm);
        Ok(())
    }

    /// A rank other than 0 trains only: no evaluation, probe or checkpoint of its own.
    pub(crate) fn quiet_rank(&mut self) {
        let t = &mut self.cfg.train;
        (t.eval_every, t.probe_every, t.checkpoint_every) = (0, 0, 0);
        self.run_dir = None;
    }

    /// Leaves the group this trainer was a rank of, after `why` (an error) ended its part: the
    /// communicator is aborted and dropped, so the other ranks' collectives, in flight or
    /// later, fail instead of waiting for this one. Its loader keeps its shard; a group's
    /// driver calls this only once the group is over.
    pub(crate) fn leave_group(&mut self, why: &Error) {
        if let Some(comm) = self.comm.take() {
            comm.abort(&why.to_string());
        }
    }

    /// The communicator, when this trainer is one rank of a data-parallel run.
    pub fn communicator(&self) -> Option<&Arc<dyn Communicator>> {
        self.comm.as_ref()
    }

    /// The number of ranks training together (1 without a communicator).
    pub fn world_size(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world_size())
    }

    /// `train.local_loss` needs an objective that computes a rank's rows alone.
    pub(super) fn check_local_loss(&self, objective: &dyn Objective) -> Result<()> {
        if self.cfg.train.local_loss && !objective.supports_local_loss() {
            return Err(Error::config(
                "train.local_loss",
                format!(
                    "`{}` computes its loss over the whole batch at once; local losses work \
                     with every built-in objective but align_uniform and cloob with \
                     hopfield = true, and with sums of them",
                    objective.name()
                ),
            ));
        }
        Ok(())
    }

    /// The objective's inputs on this rank: the gathered batch, with this rank's rows marked
    /// under `train.local_loss`.
    pub(super) fn global_inputs<'a>(
        &self,
        gathered: &'a GatheredInputs,
        local: &LossInputs<'_>,
    ) -> LossInputs<'a> {
        let mut inputs = gathered.inputs(local);
        if self.cfg.train.local_loss {
            inputs.local = Some(gathered.local_rows());
        }
        inputs
    }

    /// The step's loss and terms as one process would report them: under `train.local_loss`
    /// each rank has its rows' share, and the mean over the ranks is the whole batch's.
    pub(super) fn report_values(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        match &self.comm {
            Some(comm) if self.cfg.train.local_loss && comm.world_size() > 1 => {
                let n = values.len();
                let sum =
                    comm.all_reduce(&candle_core::Tensor::from_vec(values, n, &self.device)?)?;
                Ok((sum / comm.world_size() as f64)?.to_vec1::<f32>()?)
            }
            _ => Ok(values),
        }
    }

    /// The objective's scalars as one process would report them. Under `train.local_loss` a
    /// scalar measured on the batch (`masked_fraction`, `hard_negative_accuracy`) is each
    /// rank's share of its own rows, and all ranks have as many rows, so the batch's value is
    /// their mean; a scalar every rank has alike (a temperature, a weight) is kept as it is.
    pub(super) fn report_scalars(&self, scalars: Vec<(String, f32)>) -> Result<Vec<(String, f32)>> {
        match &self.comm {
            Some(comm) if self.cfg.train.local_loss && comm.world_size() > 1 => {
                let n = scalars.len();
                if n == 0 {
                    return Ok(scalars);
                }
                let mine: Vec<f32> = scalars.iter().map(|(_, v)| *v).collect();
                let all = comm
                    .all_gather(&candle_core::Tensor::from_vec(mine, (1, n), &self.device)?)?
                    .to_vec2::<f32>()?;
                Ok(scalars
                    .into_iter()
                    .enumerate()
                    .map(|(k, (name, v))| {
                        let alike = all.iter().all(|r| r[k].to_bits() == v.to_bits());
                        let mean =
                            all.iter().map(|r| f64::from(r[k])).sum::<f64>() / all.len() as f64;
                        (name, if alike { v } else { mean as f32 })
                    })
                    .collect())
            }
            _ => Ok(scalars),
        }
    }

    /// The global batch gathered from every rank, or `None` in a plain run.
    pub(super) fn gather_inputs(&self, local: &LossInputs<'_>) -> Result<Option<GatheredInputs>> {
        Ok(match &self.comm {
            Some(comm) => Some(GatheredInputs::new(local, comm)?),
            None => None,
        })
    }

    /// The non-finite term of this step as all ranks agree on it: when any rank saw one,
    /// every rank stops the step (naming its own term, or another rank's loss).
    pub(super) fn agree_non_finite(&self, bad: Option<String>) -> Result<Option<String>> {
        let Some(comm) = &self.comm else {
            return Ok(bad);
        };
        let any = any_rank(comm.as_ref(), bad.is_some(), &self.device)?;
        Ok(bad.or_else(|| any.then(|| "loss (non-finite on another rank)".to_string())))
    }

    /// This step's batch as all ranks agree on it: when any rank could not load its shard (a
    /// bad image under `data.bad_samples = "fail"`, a vanished file), every rank stops before
    /// the step's first collective — which NCCL would otherwise wait in forever for the rank
    /// that is gone. That rank returns its loader error; the others say that it left.
    pub(super) fn agree_batch(&self, batch: Result<Batch>) -> Result<Batch> {
        let Some(comm) = &self.comm else {
            return batch;
        };
        let failed = any_rank(comm.as_ref(), batch.is_err(), &self.device)?;
        match batch {
            Ok(_) if failed => Err(Error::Data(format!(
                "rank {}: another rank could not load its share of batch {}; {LEFT_THE_GROUP}",
                comm.rank(),
                self.step + 1
            ))),
            batch => batch,
        }
    }

    /// Averages the gradients of `trainable` over the ranks (nothing in a plain run).
    pub(super) fn reduce_gradients(
        &self,
        trainable: &[(String, Var)],
        grads: &mut GradStore,
    ) -> Result<()> {
        if let Some(comm) = &self.comm {
            all_reduce_gradients(comm.as_ref(), trainable, grads)?;
        }
        Ok(())
    }
}

//! The all-gather that keeps the gradient, and the gathering of a whole [`LossInputs`].

use super::Communicator;
use crate::loss::{LocalRows, LossInputs};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::Arc;

/// The gathered rows, computed before the op is applied; the op's forward hands them out as
/// its result, and its backward is the reduce-scatter.
struct GatherOp {
    comm: Arc<dyn Communicator>,
    gathered: Tensor,
}

impl CustomOp1 for GatherOp {
    fn name(&self) -> &'static str {
        "gather-with-grad"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.gathered.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s)
                if layout.is_contiguous() && layout.start_offset() == 0 =>
            {
                Ok((s.clone(), layout.shape().clone()))
            }
            _ => candle_core::bail!("gather-with-grad: the gathered rows are not a CPU tensor"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (storage, layout) = self.gathered.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("gather-with-grad: the gathered rows are not a CUDA tensor"),
        }
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.comm.reduce_scatter(&grad.contiguous()?)?))
    }
}

/// All-gathers `x` `(b, …)` into `(W·b, …)` — rank 0's rows first — keeping the gradient: the
/// backward pass sums the gradients that all ranks computed for the gathered tensor and gives
/// each rank those of its own rows (`torch.distributed.nn.all_gather`, as OpenCLIP's
/// `gather_features(gather_with_grad=True)` uses it). Every rank must call it in the same order.
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{Device, Tensor, Var};
/// use workbench::parallel::{Communicator, Solo, gather_with_grad};
///
/// let comm: Arc<dyn Communicator> = Arc::new(Solo);
/// let x = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let all = gather_with_grad(x.as_tensor(), &comm)?; // one rank: the same rows
/// let grads = (all * 3.0)?.sum_all()?.backward()?;
/// assert_eq!(grads.get(&x).unwrap().to_vec2::<f32>()?, vec![vec![3.0; 2]; 2]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn gather_with_grad(x: &Tensor, comm: &Arc<dyn Communicator>) -> candle_core::Result<Tensor> {
    let gathered = comm.all_gather(&x.detach().contiguous()?)?.contiguous()?;
    x.apply_op1_arc(Arc::new(Box::new(GatherOp {
        comm: comm.clone(),
        gathered,
    })))
}

/// All-gathers per-row ids (group or caption ids), rank 0's first. Each id travels as four
/// 16-bit pieces, exact in `f32`, so ids of any size survive any communicator. `device` is
/// where the collective runs (the rank's training device).
pub fn gather_ids(
    ids: &[u64],
    comm: &dyn Communicator,
    device: &candle_core::Device,
) -> candle_core::Result<Vec<u64>> {
    let pieces: Vec<f32> = ids
        .iter()
        .flat_map(|&id| (0..4).map(move |k| ((id >> (16 * k)) & 0xffff) as f32))
        .collect();
    let x = Tensor::from_vec(pieces, (ids.len(), 4), device)?;
    let all = comm.all_gather(&x)?.to_vec2::<f32>()?;
    Ok(all
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .fold(0u64, |id, (k, &v)| id | ((v as u64) << (16 * k)))
        })
        .collect())
}

/// Everything batch-major of a [`LossInputs`], gathered over the ranks: the embeddings with
/// their gradient, the text mask and the ids as plain values. Per-token embeddings and the
/// mask are padded to the longest text of any rank first (ranks pad their own batch to their
/// own longest caption; the padding positions are masked out, as in a single process).
#[derive(Debug)]
pub struct GatheredInputs {
    image: Tensor,
    text: Tensor,
    image_tokens: Option<Tensor>,
    text_tokens: Option<Tensor>,
    text_mask: Option<Tensor>,
    groups: Option<Vec<u64>>,
    text_ids: Option<Vec<u64>>,
    extra_text: Option<Tensor>,
    image2: Option<Tensor>,
    text2: Option<Tensor>,
    /// This rank's rows of the gathered batch.
    rows: LocalRows,
}

impl GatheredInputs {
    /// Gathers every field `local` has. All ranks must pass inputs with the same fields set.
    pub fn new(local: &LossInputs<'_>, comm: &Arc<dyn Communicator>) -> candle_core::Result<Self> {
        let device = local.image.device();
        let gather = |t: Option<&Tensor>| t.map(|t| gather_with_grad(t, comm)).transpose();
        // The longest text of all ranks: every rank sends its own length, all take the max.
        let width = local
            .text_mask
            .or(local.text_tokens)
            .map(|t| t.dim(1))
            .transpose()?;
        let longest = match width {
            Some(t) => {
                let all = comm.all_gather(&Tensor::new(&[t as f32], device)?)?;
                Some(all.to_vec1::<f32>()?.into_iter().fold(0f32, f32::max) as usize)
            }
            None => None,
        };
        let pad = |t: Option<&Tensor>| -> candle_core::Result<Option<Tensor>> {
            match (t, longest) {
                (Some(t), Some(n)) => Ok(Some(t.pad_with_zeros(1, 0, n - t.dim(1)?)?)),
                (t, _) => Ok(t.cloned()),
            }
        };
        let text_tokens = pad(local.text_tokens)?;
        let text_mask = pad(local.text_mask)?;
        Ok(Self {
            image: gather_with_grad(local.image, comm)?,
            text: gather_with_grad(local.text, comm)?,
            image_tokens: gather(local.image_tokens)?,
            text_tokens: gather(text_tokens.as_ref())?,
            text_mask: text_mask
                .map(|m| comm.all_gather(&m.contiguous()?))
                .transpose()?,
            groups: local
                .groups
                .map(|g| gather_ids(g, comm.as_ref(), device))
                .transpose()?,
            text_ids: local
                .text_ids
                .map(|g| gather_ids(g, comm.as_ref(), device))
                .transpose()?,
            extra_text: gather(local.extra_text)?,
            image2: gather(local.image2)?,
            text2: gather(local.text2)?,
            rows: {
                let len = local.image.dim(0)?;
                LocalRows {
                    start: comm.rank() * len,
                    len,
                }
            },
        })
    }

    /// This rank's rows of the gathered batch (every rank sends the same number).
    pub fn local_rows(&self) -> LocalRows {
        self.rows
    }

    /// The global batch as the objective sees it; `progress` and `step` come from `local`.
    pub fn inputs<'a>(&'a self, local: &LossInputs<'_>) -> LossInputs<'a> {
        LossInputs {
            image: &self.image,
            text: &self.text,
            image_tokens: self.image_tokens.as_ref(),
            text_tokens: self.text_tokens.as_ref(),
            text_mask: self.text_mask.as_ref(),
            groups: self.groups.as_deref(),
            text_ids: self.text_ids.as_deref(),
            extra_text: self.extra_text.as_ref(),
            image2: self.image2.as_ref(),
            text2: self.text2.as_ref(),
            progress: local.progress,
            step: local.step,
            local: None,
        }
    }
}

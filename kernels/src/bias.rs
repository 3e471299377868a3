//! Broadcast addition of a bias over leading dimensions, with a fast backward.
//!
//! `y = x + b` where `b`'s shape equals the trailing dimensions of `x` (a linear layer's bias
//! over `(N, out)`, or position embeddings `(L, D)` over `(B, L, D)`). The backward of candle's
//! `broadcast_add` sums the gradient over the broadcast dimensions with a strided reduction that
//! walks memory column by column; here the bias gradient is accumulated row by row (contiguous
//! reads, vectorised adds), in fixed blocks summed in order so the result does not depend on
//! thread scheduling. The gradient of `x` is the incoming gradient itself (no copy).
//!
//! CPU: f32 or bf16 (computed in f32, each result rounded once; the bias gradient summed in f32),
//! contiguous. CUDA (feature `cuda`): f32 or bf16 likewise, `cuda/bias.cu`; the bias gradient
//! sums fixed chunks of rows, then the chunks in order. Other devices and dtypes use the
//! reference.

use crate::cpu::{PARALLEL_MIN, narrow, widen};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// The reference: candle's differentiable `broadcast_add`.
pub fn add_bias_reference(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.broadcast_add(bias)
}

/// `xs + bias`, `bias` matching the trailing dimensions of `xs`.
pub fn add_bias(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (xd, bd) = (xs.dims(), bias.dims());
    if bd.len() > xd.len() || xd[xd.len() - bd.len()..] != *bd {
        bail!("add_bias: bias {bd:?} does not match the trailing dimensions of {xd:?}");
    }
    if crate::dispatch::fused_f32_or_bf16(&[xs, bias]) {
        xs.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
    } else {
        add_bias_reference(xs, bias)
    }
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut out = widen(s1, l1, self.name())?.into_owned();
        let b = &*widen(s2, l2, self.name())?;
        let k = b.len().max(1);
        let add = |row: &mut [f32]| row.iter_mut().zip(b).for_each(|(o, &bv)| *o += bv);
        if out.len() >= PARALLEL_MIN {
            out.par_chunks_mut(k).for_each(add);
        } else {
            out.chunks_mut(k).for_each(add);
        }
        Ok((narrow(out, s1.dtype()), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::add_bias_fwd(s1, l1, s2, l2, self.name())
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = sum_rows(grad, bias.elem_count())?.reshape(bias.shape())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// `Σ_rows` of `grad` viewed as `(N, k)`: a `(k)` tensor, summed in fixed blocks of rows, in
/// order (not differentiable).
pub(crate) fn sum_rows(grad: &Tensor, k: usize) -> Result<Tensor> {
    grad.contiguous()?.apply_op1_no_bwd(&SumRows { k })
}

/// Sums a contiguous tensor viewed as `(N, k)` over its rows.
struct SumRows {
    k: usize,
}

/// Rows per block (fixed, for reproducible sums).
const BLOCK_ROWS: usize = 64;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &*widen(s, l, self.name())?;
        let k = self.k.max(1);
        let block = |rows: &[f32]| -> Vec<f32> {
            let mut acc = vec![0f32; k];
            for r in rows.chunks_exact(k) {
                acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
            }
            acc
        };
        let partials: Vec<Vec<f32>> = if g.len() >= PARALLEL_MIN {
            g.par_chunks(BLOCK_ROWS * k).map(block).collect()
        } else {
            g.chunks(BLOCK_ROWS * k).map(block).collect()
        };
        let mut out = vec![0f32; k];
        for p in partials {
            out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
        Ok((narrow(out, s.dtype()), Shape::from(k)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::sum_rows(s, l, self.k, self.name())
    }
}

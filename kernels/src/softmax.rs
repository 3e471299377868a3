//! Softmax over the last dimension, forward and backward fused.
//!
//! Forward per row: `y = exp(x − max) / Σ exp(x − max)`. Backward per row:
//! `dx = y ⊙ (g − Σ g⊙y)` — one pass over `y` and `g`, where candle's autograd of the composed
//! softmax (max, sub, exp, sum, div with broadcasting) materialises several temporaries.
//! Rows of `−∞` entries (masked positions) get probability 0 as long as one entry is finite.
//!
//! CPU: f32, contiguous, rows in parallel. CUDA (feature `cuda`): f32, `cuda/softmax.cu`, one
//! block per row. Other devices and dtypes use the reference.

use crate::cpu::{for_rows, slice_f32};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Tensor};

/// The reference: `exp(x − max) / Σ exp(x − max)` with composed, differentiable ops (the max is
/// detached; softmax is shift-invariant, so the gradient is exact).
pub fn softmax_last_reference(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let e = xs.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Fused softmax over the last dimension with a hand-written backward.
pub fn softmax_last(xs: &Tensor) -> Result<Tensor> {
    if crate::dispatch::fused(&[xs]) {
        xs.contiguous()?.apply_op1(SoftmaxOp)
    } else {
        softmax_last_reference(xs)
    }
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "softmax-last-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l, self.name())?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = x.to_vec();
        for_rows(&mut out, n, |_, row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for v in row.iter_mut() {
                *v = crate::cpu::exp(*v - max);
            }
            let inv = 1.0 / crate::cpu::sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::softmax_fwd(s, l, self.name())
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?,
        ))
    }
}

/// `y ⊙ (g − Σ g⊙y)` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-last-fused-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice_f32(s1, l1, self.name())?;
        let g = slice_f32(s2, l2, self.name())?;
        let n = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        for_rows(&mut out, n, |i, row| {
            let (yr, gr) = (&y[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &gv) in row.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::softmax_bwd(s1, l1, s2, l2, self.name())
    }
}

//! Layer normalisation over the last dimension, forward and backward fused.
//!
//! Forward per row of `D` values: `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)` (biased variance, as
//! PyTorch), `y = x̂·w + b`. Backward, with `ĝ = g·w`:
//! `dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, `dw = Σ_rows g·x̂`, `db = Σ_rows g`.
//! μ and r are recomputed in the backward pass (one extra read of `x`) instead of being stored.
//! The weight/bias reductions sum fixed blocks of rows and then the blocks in order, so results
//! do not depend on thread scheduling.
//!
//! CPU: f32, contiguous, rows in parallel. CUDA (feature `cuda`): f32, `cuda/layer_norm.cu`, one
//! block per row; the weight/bias reduction sums fixed chunks of rows, then the chunks in order.
//! Other devices and dtypes use the reference.

use crate::cpu::{PARALLEL_MIN, for_rows, slice_f32, sum, sum_by, vectorized};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The reference, composed of differentiable tensor ops.
pub fn layer_norm_reference(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centred = xs.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(w)?.broadcast_add(b)
}

/// Fused LayerNorm with a hand-written backward for `x`, `w` and `b`.
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::dispatch::fused(&[xs, w, b]) {
        xs.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            LayerNormOp { eps: eps as f32 },
        )
    } else {
        layer_norm_reference(xs, w, b, eps)
    }
}

#[derive(Clone, Copy)]
struct LayerNormOp {
    eps: f32,
}

/// Mean and reciprocal standard deviation of a row (sums in vector lanes).
#[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
#[allow(clippy::inline_always)]
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let var = sum_by(row, row, |v, _| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, self.name())?;
        let w = slice_f32(s2, l2, self.name())?;
        let b = slice_f32(s3, l3, self.name())?;
        let d = w.len();
        if l1.dims().last() != Some(&d) || b.len() != d {
            candle_core::bail!(
                "{}: weight/bias of size {d} do not match input {:?}",
                self.name(),
                l1.dims()
            );
        }
        let mut out = x.to_vec();
        for_rows(&mut out, d, |_, row| {
            vectorized(
                #[inline(always)]
                || {
                    let (mean, r) = stats(row, self.eps);
                    for ((v, &wv), &bv) in row.iter_mut().zip(w).zip(b) {
                        *v = (*v - mean) * r * wv + bv;
                    }
                },
            );
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
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::layer_norm_fwd((s1, l1), (s2, l2), (s3, l3), self.eps, self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &LayerNormDx { eps: self.eps })?;
        let dwdb = x.apply_op2_no_bwd(&g, &LayerNormDwDb { eps: self.eps })?; // (2, D)
        Ok((Some(dx), Some(dwdb.get(0)?), Some(dwdb.get(1)?)))
    }
}

struct LayerNormDx {
    eps: f32,
}

impl CustomOp3 for LayerNormDx {
    fn name(&self) -> &'static str {
        "layer-norm-fused-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, self.name())?;
        let w = slice_f32(s2, l2, self.name())?;
        let g = slice_f32(s3, l3, self.name())?;
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, d, |i, row| {
            vectorized(
                #[inline(always)]
                || {
                    let (xr, gr) = (&x[i * d..(i + 1) * d], &g[i * d..(i + 1) * d]);
                    let (mean, r) = stats(xr, self.eps);
                    // ĝ = g ⊙ w, written into the output row first, then m1 = mean(ĝ),
                    // m2 = mean(ĝ ⊙ x̂), and dx = r·(ĝ − m1 − x̂·m2).
                    for ((o, &gv), &wv) in row.iter_mut().zip(gr).zip(w) {
                        *o = gv * wv;
                    }
                    let m1 = sum(row) / d as f32;
                    let m2 = sum_by(row, xr, |gh, xv| gh * (xv - mean) * r) / d as f32;
                    for (o, &xv) in row.iter_mut().zip(xr) {
                        let xh = (xv - mean) * r;
                        *o = r * (*o - m1 - xh * m2);
                    }
                },
            );
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
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::layer_norm_dx((s1, l1), (s2, l2), (s3, l3), self.eps, self.name())
    }
}

struct LayerNormDwDb {
    eps: f32,
}

/// Rows per block of the weight/bias reduction (fixed, for reproducible sums).
const BLOCK_ROWS: usize = 256;

impl CustomOp2 for LayerNormDwDb {
    fn name(&self) -> &'static str {
        "layer-norm-fused-dwdb"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, self.name())?;
        let g = slice_f32(s2, l2, self.name())?;
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        let block = |(xb, gb): (&[f32], &[f32])| -> Vec<f32> {
            let mut acc = vec![0f32; 2 * d];
            vectorized(
                #[inline(always)]
                || {
                    let (dw, db) = acc.split_at_mut(d);
                    for (xr, gr) in xb.chunks(d).zip(gb.chunks(d)) {
                        let (mean, r) = stats(xr, self.eps);
                        for (((aw, ab), &xv), &gv) in
                            dw.iter_mut().zip(db.iter_mut()).zip(xr).zip(gr)
                        {
                            *aw += gv * (xv - mean) * r;
                            *ab += gv;
                        }
                    }
                },
            );
            acc
        };
        let pairs = x.chunks(BLOCK_ROWS * d).zip(g.chunks(BLOCK_ROWS * d));
        let partials: Vec<Vec<f32>> = if x.len() >= PARALLEL_MIN {
            pairs
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(block)
                .collect()
        } else {
            pairs.map(block).collect()
        };
        let mut out = vec![0f32; 2 * d];
        for p in partials {
            for (o, v) in out.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((2, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::layer_norm_dwdb((s1, l1), (s2, l2), self.eps, self.name())
    }
}

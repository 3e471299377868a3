//! Symmetric InfoNCE (CLIP's loss), forward and backward fused, memory linear in the batch.
//!
//! With image rows `x_i`, text rows `y_j` (`B × D`, normalised by the caller) and a scale `s`:
//!
//! ```text
//! l_ij = s·x_i·y_j
//! image→text = (1/B) Σ_i (lse_j l_ij − l_ii)      text→image = (1/B) Σ_j (lse_i l_ij − l_jj)
//! ```
//!
//! CLIP's loss is the mean of the two. Both ops return the pair `[image→text, text→image]`.
//!
//! # Design
//!
//! The composed version materialises `l` and, forward and backward, about a dozen more `B × B`
//! tensors (shifted logits, exponentials, the transposed copy, their gradients): ≈ 1 GiB each at
//! B = 16 384. Here the logits exist one strip of `TILE` rows at a time (`TILE × B` floats), so
//! memory is O(B·TILE + B·D):
//!
//! - **forward** — per strip, one matmul gives the cosines; each row is complete, so its
//!   log-sum-exp is exact (max, then `Σ exp(l − max)`, rows in parallel). The columns see the
//!   strips one after another and keep an *online* log-sum-exp: a running max `m_j` and a running
//!   sum `S_j` of `exp(l_ij − m_j)`, rescaled by `exp(m_old − m_new)` whenever a strip raises the
//!   max (columns in parallel). Only the row and column log-sum-exps (2·B floats) survive; the op
//!   returns them after the two losses so the backward can read them instead of recomputing them.
//! - **backward** — the gradient with respect to the logits is
//!   `G_ij = (g₁/B)(P_ij − δ_ij) + (g₂/B)(Q_ij − δ_ij)` with the row softmax
//!   `P_ij = exp(l_ij − lse_row_i)` and the column softmax `Q_ij = exp(l_ij − lse_col_j)`. It
//!   needs the whole row *and* column normalisers, so it cannot be formed during the forward
//!   without storing `B × B` values; recomputing the logits strip by strip (one more matmul)
//!   costs far less than storing them. Then `dx = s·G·y`, `dy = s·Gᵀ·x` (two matmuls per strip)
//!   and `ds = Σ G ⊙ (x·yᵀ)`.
//!
//! Numerical stability: every exponent is a logit minus a maximum or a log-sum-exp taken over a
//! set that contains it, so it is ≤ 0 (up to rounding) and `exp` cannot overflow, even at the
//! clamp's largest scale of 100. Cross-row reductions are summed in f64, in a fixed order, so the
//! result does not depend on thread scheduling.
//!
//! CPU: f32, contiguous; strips in order, rows and columns of a strip in parallel, matmuls
//! through candle's multi-threaded gemm. CUDA (feature `cuda`): f32, the same strips through
//! candle's cuBLAS matmul and the kernels of `cuda/contrastive.cu`. Other devices and dtypes use
//! the reference.

use crate::cpu::{PARALLEL_MIN, Pairs, slice_f32};
use candle_core::{CpuStorage, CustomOp3, D, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Rows of logits that exist at once: `TILE × B` floats (8 MiB at B = 16 384).
pub const TILE: usize = 128;

/// Columns each parallel task of the column statistics owns.
const COLUMN_CHUNK: usize = 256;

/// Checks `(B, D)` embeddings of one shape, `B ≥ 1`, and one-element scalars; returns `B`.
pub(crate) fn check(
    what: &str,
    image: &Tensor,
    text: &Tensor,
    scalars: &[(&str, &Tensor)],
) -> Result<usize> {
    let (b, d) = image.dims2()?;
    if text.dims() != [b, d] || b == 0 {
        bail!(
            "{what}: image {:?} and text {:?} must be (B, D) with B ≥ 1",
            image.dims(),
            text.dims()
        );
    }
    for (name, t) in scalars {
        if t.elem_count() != 1 {
            bail!(
                "{what}: the {name} must have one element, got {:?}",
                t.dims()
            );
        }
    }
    Ok(b)
}

/// `log Σ_j exp(x_ij)` per row of a matrix (the max is detached; the result is exact).
fn logsumexp_rows(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    (x.broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?
        .squeeze(D::Minus1)
}

/// The reference: `[image→text, text→image]` from the full `B × B` logits, composed of
/// differentiable tensor ops (gradients reach `image`, `text` and `scale`).
pub fn infonce_reference(image: &Tensor, text: &Tensor, scale: &Tensor) -> Result<Tensor> {
    check("infonce", image, text, &[("scale", scale)])?;
    let s = scale.reshape(())?;
    let logits = image.matmul(&text.t()?)?.broadcast_mul(&s)?;
    let diag = (image * text)?.sum(1)?.broadcast_mul(&s)?;
    let i2t = (logsumexp_rows(&logits)? - &diag)?.mean_all()?;
    let t2i = (logsumexp_rows(&logits.t()?.contiguous()?)? - &diag)?.mean_all()?;
    Tensor::stack(&[i2t, t2i], 0)
}

/// Fused symmetric InfoNCE: `[image→text, text→image]`, differentiable with respect to `image`,
/// `text` and `scale` (0-d or one element) by a hand-written backward; no `B × B` tensor exists.
pub fn infonce(image: &Tensor, text: &Tensor, scale: &Tensor) -> Result<Tensor> {
    check("infonce", image, text, &[("scale", scale)])?;
    if crate::dispatch::fused(&[image, text, scale]) {
        image
            .contiguous()?
            .apply_op3(&text.contiguous()?, &scale.contiguous()?, InfoNceOp)?
            .narrow(0, 0, 2)
    } else {
        infonce_reference(image, text, scale)
    }
}

/// Forward: `[image→text, text→image, lse_row (B), lse_col (B)]`. The public function keeps the
/// first two; the statistics are there for the backward (their gradient is always zero).
struct InfoNceOp;

impl CustomOp3 for InfoNceOp {
    fn name(&self) -> &'static str {
        "infonce-fused"
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
        let pairs = Pairs::new(self.name(), s1, l1, s2, l2)?;
        let s = slice_f32(s3, l3, self.name())?[0];
        let b = pairs.b;
        let mut row_lse = vec![0f32; b];
        let mut diag = vec![0f32; b];
        let mut col_max = vec![f32::NEG_INFINITY; b];
        let mut col_sum = vec![0f32; b];
        pairs.for_strips(TILE, |r0, mut strip| {
            let r = strip.len() / b;
            let parallel = strip.len() >= PARALLEL_MIN;
            let rows = |(i, ((row, lse), dg)): (usize, ((&mut [f32], &mut f32), &mut f32))| {
                for v in row.iter_mut() {
                    *v *= s;
                }
                *dg = row[r0 + i];
                *lse = logsumexp(row);
            };
            let (lse, dg) = (&mut row_lse[r0..r0 + r], &mut diag[r0..r0 + r]);
            if parallel {
                strip
                    .par_chunks_mut(b)
                    .zip(lse.par_iter_mut())
                    .zip(dg.par_iter_mut())
                    .enumerate()
                    .for_each(rows);
            } else {
                strip
                    .chunks_mut(b)
                    .zip(lse.iter_mut())
                    .zip(dg.iter_mut())
                    .enumerate()
                    .for_each(rows);
            }
            let strip = &strip;
            let columns = |(c, (m, sum)): (usize, (&mut [f32], &mut [f32]))| {
                let c0 = c * COLUMN_CHUNK;
                let n = m.len();
                let mut new_max = m.to_vec();
                for i in 0..r {
                    for (nm, &v) in new_max.iter_mut().zip(&strip[i * b + c0..i * b + c0 + n]) {
                        *nm = nm.max(v);
                    }
                }
                for ((sj, mj), &nm) in sum.iter_mut().zip(m.iter()).zip(&new_max) {
                    *sj *= (*mj - nm).exp();
                }
                for i in 0..r {
                    let row = &strip[i * b + c0..i * b + c0 + n];
                    for ((sj, &v), &nm) in sum.iter_mut().zip(row).zip(&new_max) {
                        *sj += (v - nm).exp();
                    }
                }
                m.copy_from_slice(&new_max);
            };
            if parallel {
                col_max
                    .par_chunks_mut(COLUMN_CHUNK)
                    .zip(col_sum.par_chunks_mut(COLUMN_CHUNK))
                    .enumerate()
                    .for_each(columns);
            } else {
                col_max
                    .chunks_mut(COLUMN_CHUNK)
                    .zip(col_sum.chunks_mut(COLUMN_CHUNK))
                    .enumerate()
                    .for_each(columns);
            }
            Ok(())
        })?;
        let col_lse: Vec<f32> = col_max
            .iter()
            .zip(&col_sum)
            .map(|(m, s)| m + s.ln())
            .collect();
        let mean_minus_diag = |lse: &[f32]| {
            lse.iter()
                .zip(&diag)
                .map(|(&l, &d)| f64::from(l) - f64::from(d))
                .sum::<f64>()
                / b as f64
        };
        let mut out = Vec::with_capacity(2 + 2 * b);
        out.push(mean_minus_diag(&row_lse) as f32);
        out.push(mean_minus_diag(&col_lse) as f32);
        out.extend_from_slice(&row_lse);
        out.extend_from_slice(&col_lse);
        Ok((CpuStorage::F32(out), Shape::from(2 + 2 * b)))
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
        crate::cuda::pairs::infonce_fwd((s1, l1), (s2, l2), (s3, l3), self.name())
    }

    fn bwd(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, d) = image.dims2()?;
        // [s, g₁, g₂, lse_row (B), lse_col (B)]
        let packed = Tensor::cat(
            &[
                scale.reshape(1)?.detach(),
                grad.narrow(0, 0, 2)?.detach(),
                res.narrow(0, 2, 2 * b)?.detach(),
            ],
            0,
        )?;
        let g = image.apply_op3_no_bwd(text, &packed, &InfoNceBackward)?;
        Ok((
            Some(g.narrow(0, 0, b * d)?.reshape((b, d))?),
            Some(g.narrow(0, b * d, b * d)?.reshape((b, d))?),
            Some(g.narrow(0, 2 * b * d, 1)?.reshape(scale.shape())?),
        ))
    }
}

/// `log Σ exp(v)` of a row: max, then the shifted sum.
fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}

/// `[dx (B·D), dy (B·D), ds]` from `x`, `y` and `[s, g₁, g₂, lse_row, lse_col]`.
struct InfoNceBackward;

impl CustomOp3 for InfoNceBackward {
    fn name(&self) -> &'static str {
        "infonce-fused-backward"
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
        let pairs = Pairs::new(self.name(), s1, l1, s2, l2)?;
        let (b, d) = (pairs.b, pairs.d);
        let p = slice_f32(s3, l3, self.name())?;
        if p.len() != 3 + 2 * b {
            bail!(
                "{}: expected {} packed values, got {}",
                self.name(),
                3 + 2 * b,
                p.len()
            );
        }
        let s = p[0];
        let (a, c) = (p[1] / b as f32, p[2] / b as f32);
        let (row_lse, col_lse) = (&p[3..3 + b], &p[3 + b..]);
        let grads = pairs.backward(TILE, |i, row| {
            let ri = row_lse[i];
            let mut dot = 0f32;
            for (j, (v, &cj)) in row.iter_mut().zip(col_lse).enumerate() {
                let cos = *v;
                let l = s * cos;
                let mut g = a * (l - ri).exp() + c * (l - cj).exp();
                if j == i {
                    g -= a + c;
                }
                dot += g * cos;
                *v = g;
            }
            (f64::from(dot), 0.0)
        })?;
        let mut out = grads.dx;
        out.extend_from_slice(&grads.dy);
        for v in &mut out {
            *v *= s;
        }
        out.push(grads.g_dot_scores as f32);
        Ok((CpuStorage::F32(out), Shape::from(2 * b * d + 1)))
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
        crate::cuda::pairs::infonce_bwd((s1, l1), (s2, l2), (s3, l3), self.name())
    }
}

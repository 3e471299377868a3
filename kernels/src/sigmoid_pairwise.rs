//! SigLIP's pairwise sigmoid loss, forward and backward fused, memory linear in the batch.
//!
//! With image rows `x_i`, text rows `y_j` (`B × D`, normalised by the caller), a scale `s` and a
//! bias `β`:
//!
//! ```text
//! l_ij = s·x_i·y_j + β,   z_ij = +1 if i = j else −1
//! positive = −(1/B) Σ_i log σ(l_ii)      negative = −(1/B) Σ_{i≠j} log σ(−l_ij)
//! ```
//!
//! SigLIP's loss is their sum, `−(1/B) Σ_ij log σ(z_ij·l_ij)` (both divided by B, as in the
//! paper's Algorithm 1). Both ops return the pair `[positive, negative]`.
//!
//! # Design
//!
//! Every cell is an independent binary classification, so unlike InfoNCE no normaliser couples a
//! row or column: the forward needs no statistics at all. The logits exist one strip of
//! [`TILE`] rows at a time (`TILE × B` floats, memory O(B·TILE + B·D)),
//! produced by a matmul and reduced to per-row sums. The backward recomputes each strip (storing
//! the `B × B` logits would defeat the purpose; a matmul per strip is cheap next to them) and
//! forms `G_ij = −(g_ij/B)·z_ij·σ(−z_ij·l_ij)`, where `g_ij` is the incoming gradient of the
//! positive or the negative term; then `dx = s·G·y`, `dy = s·Gᵀ·x`, `ds = Σ G ⊙ (x·yᵀ)`,
//! `dβ = Σ G`.
//!
//! Numerical stability: `log σ(u) = min(u, 0) − log1p(exp(−|u|))` and
//! `σ(−u) = e/(1 + e)` with `e = exp(−|u|)` (or `1/(1 + e)` for `u < 0`) never exponentiate a
//! positive number, so scale 100 and bias −10 are safe. Per-row sums are combined in f64 in a
//! fixed order.
//!
//! CPU: f32, contiguous; strips in order, rows in parallel, matmuls through candle's
//! multi-threaded gemm. CUDA (feature `cuda`): f32, the same strips through candle's cuBLAS matmul
//! and the kernels of `cuda/contrastive.cu`. Other devices and dtypes use the reference.

use crate::cpu::{PARALLEL_MIN, Pairs, slice_f32};
use crate::infonce::{TILE, check};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

const WHAT: &str = "sigmoid_pairwise";

/// `log σ(x)`, composed: `min(x, 0) − log(1 + exp(−|x|))`.
fn log_sigmoid_reference(x: &Tensor) -> Result<Tensor> {
    let softplus = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.minimum(&x.zeros_like()?)? - softplus
}

/// The reference: `[positive, negative]` from the full `B × B` logits, composed of
/// differentiable tensor ops (gradients reach `image`, `text`, `scale` and `bias`).
pub fn sigmoid_pairwise_reference(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let b = check(WHAT, image, text, &[("scale", scale), ("bias", bias)])?;
    let logits = image
        .matmul(&text.t()?)?
        .broadcast_mul(&scale.reshape(())?)?
        .broadcast_add(&bias.reshape(())?)?;
    let eye = Tensor::eye(b, logits.dtype(), logits.device())?;
    let z = ((&eye * 2.0)? - 1.0)?;
    let ll = log_sigmoid_reference(&(logits * z)?)?;
    let positive = ((&ll * &eye)?.sum_all()? / -(b as f64))?;
    let negative = ((&ll * (1.0 - &eye)?)?.sum_all()? / -(b as f64))?;
    Tensor::stack(&[positive, negative], 0)
}

/// Fused pairwise sigmoid loss: `[positive, negative]`, differentiable with respect to `image`,
/// `text`, `scale` and `bias` (each of the last two 0-d or one element) by a hand-written
/// backward; no `B × B` tensor exists.
pub fn sigmoid_pairwise(
    image: &Tensor,
    text: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    check(WHAT, image, text, &[("scale", scale), ("bias", bias)])?;
    if crate::dispatch::fused(&[image, text, scale, bias]) {
        // Scale and bias travel as one operand (a custom op has at most three); `cat` routes
        // their gradients back to each.
        let scale_bias = Tensor::cat(&[scale.reshape(1)?, bias.reshape(1)?], 0)?;
        image
            .contiguous()?
            .apply_op3(&text.contiguous()?, &scale_bias, SigmoidPairwiseOp)
    } else {
        sigmoid_pairwise_reference(image, text, scale, bias)
    }
}

/// `(log σ(u), σ(−u))`, both without exponentiating a positive number.
#[inline]
fn log_sigmoid_and_complement(u: f32) -> (f32, f32) {
    let e = (-u.abs()).exp();
    let log_sig = u.min(0.0) - e.ln_1p();
    let sig_neg = if u >= 0.0 {
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + e)
    };
    (log_sig, sig_neg)
}

/// Forward: `[positive, negative]` from `x`, `y` and `[s, β]`.
struct SigmoidPairwiseOp;

impl CustomOp3 for SigmoidPairwiseOp {
    fn name(&self) -> &'static str {
        "sigmoid-pairwise-fused"
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
        let sb = slice_f32(s3, l3, self.name())?;
        let [s, beta] = sb else {
            bail!(
                "{}: expected [scale, bias], got {} values",
                self.name(),
                sb.len()
            );
        };
        let (s, beta, b) = (*s, *beta, pairs.b);
        let (mut positive, mut negative) = (0f64, 0f64);
        let mut sums = Vec::new();
        pairs.for_strips(TILE, |r0, strip| {
            let row_sums = |(i, row): (usize, &[f32])| {
                let mut neg = 0f32;
                for (j, &cos) in row.iter().enumerate() {
                    if j != r0 + i {
                        neg += log_sigmoid_and_complement(-(s * cos + beta)).0;
                    }
                }
                let pos = log_sigmoid_and_complement(s * row[r0 + i] + beta).0;
                (f64::from(pos), f64::from(neg))
            };
            sums.clear();
            if strip.len() >= PARALLEL_MIN {
                strip
                    .par_chunks(b)
                    .enumerate()
                    .map(row_sums)
                    .collect_into_vec(&mut sums);
            } else {
                sums.extend(strip.chunks(b).enumerate().map(row_sums));
            }
            for &(p, n) in &sums {
                positive -= p;
                negative -= n;
            }
            Ok(())
        })?;
        let out = vec![(positive / b as f64) as f32, (negative / b as f64) as f32];
        Ok((CpuStorage::F32(out), Shape::from(2)))
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
        crate::cuda::pairs::sigmoid_fwd((s1, l1), (s2, l2), (s3, l3), self.name())
    }

    fn bwd(
        &self,
        image: &Tensor,
        text: &Tensor,
        scale_bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, d) = image.dims2()?;
        // [s, β, g_positive, g_negative]
        let packed = Tensor::cat(&[scale_bias.detach(), grad.detach()], 0)?;
        let g = image.apply_op3_no_bwd(text, &packed, &SigmoidPairwiseBackward)?;
        Ok((
            Some(g.narrow(0, 0, b * d)?.reshape((b, d))?),
            Some(g.narrow(0, b * d, b * d)?.reshape((b, d))?),
            Some(g.narrow(0, 2 * b * d, 2)?),
        ))
    }
}

/// `[dx (B·D), dy (B·D), ds, dβ]` from `x`, `y` and `[s, β, g_positive, g_negative]`.
struct SigmoidPairwiseBackward;

impl CustomOp3 for SigmoidPairwiseBackward {
    fn name(&self) -> &'static str {
        "sigmoid-pairwise-fused-backward"
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
        let [s, beta, gp, gn] = p else {
            bail!("{}: expected 4 packed values, got {}", self.name(), p.len());
        };
        let (s, beta) = (*s, *beta);
        let (gp, gn) = (gp / b as f32, gn / b as f32);
        let grads = pairs.backward(TILE, |i, row| {
            let (mut dot, mut sum) = (0f32, 0f32);
            for (j, v) in row.iter_mut().enumerate() {
                let cos = *v;
                let l = s * cos + beta;
                // d/dl of −log σ(z·l) is −z·σ(−z·l).
                let g = if j == i {
                    -gp * log_sigmoid_and_complement(l).1
                } else {
                    gn * log_sigmoid_and_complement(-l).1
                };
                dot += g * cos;
                sum += g;
                *v = g;
            }
            (f64::from(dot), f64::from(sum))
        })?;
        let mut out = grads.dx;
        out.extend_from_slice(&grads.dy);
        for v in &mut out {
            *v *= s;
        }
        out.push(grads.g_dot_scores as f32);
        out.push(grads.g_sum as f32);
        Ok((CpuStorage::F32(out), Shape::from(2 * b * d + 2)))
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
        crate::cuda::pairs::sigmoid_bwd((s1, l1), (s2, l2), (s3, l3), self.name())
    }
}

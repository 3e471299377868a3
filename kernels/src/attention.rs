//! Multi-head self-attention on packed `qkv`, forward and backward fused.
//!
//! Input `qkv` is `(B, L, 3D)` — queries, keys and values side by side, each `D = H·d` wide
//! with head `h` in columns `h·d .. (h+1)·d` — exactly what one linear layer produces. Output is
//! `(B, L, D)`, the heads' `softmax(q·kᵀ/√d + mask)·v` side by side, ready for the output
//! projection. `causal` masks keys after the query (text tower).
//!
//! Design: per batch row `b` (rows in parallel) and head `h`, the `L×L` probabilities are built
//! in one buffer per thread and immediately applied to `v`; nothing of size `B·H·L·L` is
//! stored. On the CPU every product (`q·kᵀ`, `P·v` and the five of the backward) is one `gemm`
//! call on strided views of the packed rows, so no head is copied out. The backward recomputes
//! `P` and applies, per head,
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS·K/√d`, `dK = dSᵀ·Q/√d`,
//! writing `dqkv` in the packed layout. Compared with the composed version (3 slices, 3
//! transposed copies, 2 batched matmuls, mask add, softmax, each with its own backward nodes)
//! this is one node. [`attention_weights`] returns `P` `(B, H, L, L)` for inspection, from the
//! same inputs, without touching the output.
//!
//! CPU: f32 or bf16, contiguous. CUDA (feature `cuda`): f32 or bf16, `cuda/attention.cu`, one
//! thread per (batch row, head, query) with an online softmax, and a backward in two kernels
//! (queries, then keys and values) that recompute `P` from the saved log-sum-exps; heads wider
//! than `kernels::cuda::attention::MAX_HEAD_DIM` (128) run the reference. In bf16, `qkv`, the
//! output and the gradients are bf16, everything inside is computed in f32 and each result is
//! rounded once (on the CPU: the f32 op on the widened input, rounded); the weights for
//! inspection are f32 either way. Other devices and dtypes use the reference.

use crate::cpu::{View, gemm, narrow, vectorized, widen};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

fn check(qkv: &Tensor, heads: usize) -> Result<(usize, usize, usize)> {
    let (b, l, three_d) = qkv.dims3()?;
    if three_d % 3 != 0 || heads == 0 || (three_d / 3) % heads != 0 {
        bail!("attention: qkv width {three_d} is not 3·heads·d for {heads} heads");
    }
    Ok((b, l, three_d / 3))
}

/// `(B, H, L, dh)` view of part `i` (0 = q, 1 = k, 2 = v) of `qkv`.
fn split_heads(qkv: &Tensor, i: usize, heads: usize) -> Result<Tensor> {
    let (b, l, d) = check(qkv, heads)?;
    qkv.narrow(2, i * d, d)?
        .reshape((b, l, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Additive causal mask `(L, L)`: 0 on and below the diagonal, −∞ above.
pub fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (l, l), device)
}

/// The reference weights `softmax(q·kᵀ/√d + mask)` `(B, H, L, L)`, differentiable.
pub fn attention_weights_reference(qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    let (_, l, d) = check(qkv, heads)?;
    let q = (split_heads(qkv, 0, heads)? * ((d / heads) as f64).powf(-0.5))?;
    let k = split_heads(qkv, 1, heads)?;
    let mut scores = q.matmul(&k.t()?)?;
    if causal {
        scores = scores.broadcast_add(&causal_mask(l, qkv.device())?.to_dtype(scores.dtype())?)?;
    }
    crate::softmax_last_reference(&scores)
}

/// The reference output `(B, L, D)` from given weights `(B, H, L, L)`: `P·v`, heads side by side.
pub fn apply_weights(weights: &Tensor, qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, d) = check(qkv, heads)?;
    let v = split_heads(qkv, 2, heads)?;
    weights.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))
}

/// The reference attention, composed of differentiable tensor ops.
pub fn attention_reference(qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    apply_weights(
        &attention_weights_reference(qkv, heads, causal)?,
        qkv,
        heads,
    )
}

/// [`attention_weights_reference`] with the product `q·kᵀ` taken on operands cast to `compute`
/// (bf16 for mixed precision) and widened back; the mask and the softmax run in `qkv`'s dtype,
/// so the weights come back in it. With `compute == qkv.dtype()` this is the reference itself.
pub fn attention_weights_in(
    qkv: &Tensor,
    heads: usize,
    causal: bool,
    compute: DType,
) -> Result<Tensor> {
    if compute == qkv.dtype() {
        return attention_weights_reference(qkv, heads, causal);
    }
    let (_, l, d) = check(qkv, heads)?;
    let q = (split_heads(qkv, 0, heads)? * ((d / heads) as f64).powf(-0.5))?;
    let k = split_heads(qkv, 1, heads)?;
    let mut scores = q
        .to_dtype(compute)?
        .matmul(&k.to_dtype(compute)?.t()?)?
        .to_dtype(qkv.dtype())?;
    if causal {
        scores = scores.broadcast_add(&causal_mask(l, qkv.device())?.to_dtype(scores.dtype())?)?;
    }
    crate::softmax_last(&scores)
}

/// [`apply_weights`] with the product `P·v` taken on operands cast to `compute` and widened
/// back to `qkv`'s dtype. With `compute == qkv.dtype()` this is [`apply_weights`] itself.
pub fn apply_weights_in(
    weights: &Tensor,
    qkv: &Tensor,
    heads: usize,
    compute: DType,
) -> Result<Tensor> {
    if compute == qkv.dtype() {
        return apply_weights(weights, qkv, heads);
    }
    let (b, l, d) = check(qkv, heads)?;
    let v = split_heads(qkv, 2, heads)?.to_dtype(compute)?;
    weights
        .to_dtype(compute)?
        .matmul(&v)?
        .to_dtype(qkv.dtype())?
        .transpose(1, 2)?
        .reshape((b, l, d))
}

fn fused_ok(qkv: &Tensor, heads: usize) -> bool {
    match qkv.device() {
        Device::Cpu => crate::dispatch::fused_f32_or_bf16(&[qkv]),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let d = qkv.dims().last().copied().unwrap_or(0) / 3;
            crate::dispatch::fused_f32_or_bf16(&[qkv])
                && heads > 0
                && d / heads <= crate::cuda::attention::MAX_HEAD_DIM
        }
        _ => {
            let _ = heads;
            false
        }
    }
}

/// Fused attention with a hand-written backward.
pub fn attention(qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    check(qkv, heads)?;
    if fused_ok(qkv, heads) {
        qkv.contiguous()?.apply_op1(AttentionOp { heads, causal })
    } else {
        attention_reference(qkv, heads, causal)
    }
}

/// Attention weights `(B, H, L, L)` for inspection (not differentiable on the fused path).
pub fn attention_weights(qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    check(qkv, heads)?;
    if fused_ok(qkv, heads) {
        qkv.contiguous()?
            .apply_op1_no_bwd(&WeightsOp { heads, causal })
    } else {
        attention_weights_reference(qkv, heads, causal)
    }
}

#[derive(Clone, Copy)]
struct Geometry {
    l: usize,
    d: usize,
    dh: usize,
    causal: bool,
}

impl Geometry {
    fn new(layout: &Layout, heads: usize, causal: bool) -> Result<(usize, Self)> {
        let [b, l, three_d] = layout.dims() else {
            bail!("attention: expected (B, L, 3D), got {:?}", layout.dims());
        };
        let d = three_d / 3;
        Ok((
            *b,
            Self {
                l: *l,
                d,
                dh: d / heads,
                causal,
            },
        ))
    }

    /// Number of keys query `i` sees.
    fn keys(&self, i: usize) -> usize {
        if self.causal { i + 1 } else { self.l }
    }

    /// The probabilities of head `h` for one batch row `x` (`L × 3D`): `P = softmax(q·kᵀ/√d)`
    /// into `p` (`L × L`, row-major), zero where the mask hides a key. The scores are one
    /// product of strided views of `x` (no copies); each row's softmax runs in vector lanes.
    #[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
    #[allow(clippy::inline_always)]
    fn head_probs(&self, x: &[f32], h: usize, p: &mut [f32]) {
        let (l, d3, off) = (self.l, 3 * self.d, h * self.dh);
        let scale = (self.dh as f32).powf(-0.5);
        gemm(
            (l, l, self.dh),
            (p, View::rows(0, l)),
            (x, View::rows(off, d3)),
            (x, View::rows(self.d + off, d3).t()),
            false,
            scale,
            false,
        );
        for (i, row) in p.chunks_exact_mut(l).enumerate() {
            let (seen, hidden) = row.split_at_mut(self.keys(i));
            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for v in seen.iter_mut() {
                *v = crate::cpu::exp(*v - max);
            }
            let inv = 1.0 / crate::cpu::sum(seen);
            for v in seen.iter_mut() {
                *v *= inv;
            }
            hidden.fill(0.0);
        }
    }
}

struct AttentionOp {
    heads: usize,
    causal: bool,
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = &*widen(s, layout, self.name())?;
        let (b, g) = Geometry::new(layout, self.heads, self.causal)?;
        let (l, d) = (g.l, g.d);
        let mut out = vec![0f32; b * l * d];
        out.par_chunks_mut(l * d).enumerate().for_each(|(bi, o)| {
            vectorized(
                #[inline(always)]
                || {
                    let xb = &x[bi * l * 3 * d..(bi + 1) * l * 3 * d];
                    let mut p = vec![0f32; l * l];
                    for h in 0..self.heads {
                        let off = h * g.dh;
                        g.head_probs(xb, h, &mut p);
                        // O_h = P·V_h, into the head's columns of the output.
                        gemm(
                            (l, g.dh, l),
                            (o, View::rows(off, d)),
                            (&p, View::rows(0, l)),
                            (xb, View::rows(2 * d + off, 3 * d)),
                            false,
                            1.0,
                            false,
                        );
                    }
                },
            );
        });
        Ok((narrow(out, s.dtype()), Shape::from((b, l, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::attention::attention_fwd(s, l, self.heads, self.causal, self.name())
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = AttentionBackward {
            heads: self.heads,
            causal: self.causal,
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

struct AttentionBackward {
    heads: usize,
    causal: bool,
}

impl CustomOp2 for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention-fused-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = &*widen(s1, l1, self.name())?;
        let go = &*widen(s2, l2, self.name())?;
        let (b, g) = Geometry::new(l1, self.heads, self.causal)?;
        let (l, d, dh) = (g.l, g.d, g.dh);
        let scale = (dh as f32).powf(-0.5);
        let mut dx = vec![0f32; b * l * 3 * d];
        dx.par_chunks_mut(l * 3 * d)
            .enumerate()
            .for_each(|(bi, dxb)| {
                vectorized(
                    #[inline(always)]
                    || {
                        let xb = &x[bi * l * 3 * d..(bi + 1) * l * 3 * d];
                        let gb = &go[bi * l * d..(bi + 1) * l * d];
                        let (mut p, mut ds) = (vec![0f32; l * l], vec![0f32; l * l]);
                        let rows = |off| View::rows(off, 3 * d);
                        for h in 0..self.heads {
                            let off = h * dh;
                            g.head_probs(xb, h, &mut p);
                            // dP = dO·Vᵀ
                            gemm(
                                (l, l, dh),
                                (&mut ds, View::rows(0, l)),
                                (gb, View::rows(off, d)),
                                (xb, rows(2 * d + off).t()),
                                false,
                                1.0,
                                false,
                            );
                            // dS = P ⊙ (dP − Σ_j P_ij dP_ij) / √d (zero where P is masked)
                            for (pi, dsi) in p.chunks_exact(l).zip(ds.chunks_exact_mut(l)) {
                                let dot = crate::cpu::sum_by(pi, dsi, |p, dp| p * dp);
                                for (v, &pij) in dsi.iter_mut().zip(pi) {
                                    *v = pij * (*v - dot) * scale;
                                }
                            }
                            // dQ = dS·K, dK = dSᵀ·Q, dV = Pᵀ·dO, into the packed layout.
                            let products = [
                                (off, &ds, View::rows(0, l), xb, rows(d + off)),
                                (d + off, &ds, View::rows(0, l).t(), xb, rows(off)),
                                (
                                    2 * d + off,
                                    &p,
                                    View::rows(0, l).t(),
                                    gb,
                                    View::rows(off, d),
                                ),
                            ];
                            for (at, a, av, bm, bv) in products {
                                gemm(
                                    (l, dh, l),
                                    (dxb, rows(at)),
                                    (a, av),
                                    (bm, bv),
                                    false,
                                    1.0,
                                    false,
                                );
                            }
                        }
                    },
                );
            });
        Ok((narrow(dx, s1.dtype()), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::attention::attention_bwd(
            (s1, l1),
            (s2, l2),
            self.heads,
            self.causal,
            self.name(),
        )
    }
}

struct WeightsOp {
    heads: usize,
    causal: bool,
}

impl CustomOp1 for WeightsOp {
    fn name(&self) -> &'static str {
        "attention-weights"
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = &*widen(s, layout, self.name())?;
        let (b, g) = Geometry::new(layout, self.heads, self.causal)?;
        let (l, d) = (g.l, g.d);
        let mut out = vec![0f32; b * self.heads * l * l];
        out.par_chunks_mut(self.heads * l * l)
            .enumerate()
            .for_each(|(bi, o)| {
                let xb = &x[bi * l * 3 * d..(bi + 1) * l * 3 * d];
                for (h, p) in o.chunks_exact_mut(l * l).enumerate() {
                    g.head_probs(xb, h, p);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, self.heads, l, l))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::attention::attention_probs(s, l, self.heads, self.causal, self.name())
    }
}

//! Multi-head self-attention on packed `qkv`, forward and backward fused.
//!
//! Input `qkv` is `(B, L, 3D)` — queries, keys and values side by side, each `D = H·d` wide
//! with head `h` in columns `h·d .. (h+1)·d` — exactly what one linear layer produces. Output is
//! `(B, L, D)`, the heads' `softmax(q·kᵀ/√d + mask)·v` side by side, ready for the output
//! projection. `causal` masks keys after the query (text tower).
//!
//! Design: per batch row `b` (rows in parallel) and head `h`, the `L×L` probabilities are built
//! row by row in a small buffer and immediately applied to `v`; nothing of size `B·H·L·L` is
//! stored. The backward recomputes `P` and applies, per head,
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

use crate::cpu::{narrow, vectorized, widen};
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

    /// Row `i` of the probabilities of head `h` for one batch row `x` (`L × 3D`) into `p`.
    #[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
    #[allow(clippy::inline_always)]
    fn probs(&self, x: &[f32], h: usize, i: usize, p: &mut [f32]) {
        let (d3, off) = (3 * self.d, h * self.dh);
        let scale = (self.dh as f32).powf(-0.5);
        let q = &x[i * d3 + off..i * d3 + off + self.dh];
        let n = self.keys(i);
        let mut max = f32::NEG_INFINITY;
        for (j, pj) in p.iter_mut().enumerate().take(n) {
            let k = &x[j * d3 + self.d + off..j * d3 + self.d + off + self.dh];
            let s = dot_product(q, k) * scale;
            *pj = s;
            max = max.max(s);
        }
        for pj in p.iter_mut().take(n) {
            *pj = crate::cpu::exp(*pj - max);
        }
        let inv = 1.0 / crate::cpu::sum(&p[..n]);
        for pj in p.iter_mut().take(n) {
            *pj *= inv;
        }
        for pj in p.iter_mut().skip(n) {
            *pj = 0.0;
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
                    let mut p = vec![0f32; l];
                    for h in 0..self.heads {
                        let off = h * g.dh;
                        for i in 0..l {
                            g.probs(xb, h, i, &mut p);
                            let oi = &mut o[i * d + off..i * d + off + g.dh];
                            for (j, &pj) in p.iter().enumerate().take(g.keys(i)) {
                                let v =
                                    &xb[j * 3 * d + 2 * d + off..j * 3 * d + 2 * d + off + g.dh];
                                for (a, &vv) in oi.iter_mut().zip(v) {
                                    *a += pj * vv;
                                }
                            }
                        }
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
                        let mut p = vec![0f32; l * l];
                        // Head-local copies (L × dh each) keep the inner loops contiguous and bounds-check free.
                        let (mut q, mut k, mut v, mut o) = (
                            vec![0f32; l * dh],
                            vec![0f32; l * dh],
                            vec![0f32; l * dh],
                            vec![0f32; l * dh],
                        );
                        let (mut dq, mut dk, mut dv) =
                            (vec![0f32; l * dh], vec![0f32; l * dh], vec![0f32; l * dh]);
                        let mut ds = vec![0f32; l];
                        for h in 0..self.heads {
                            let off = h * dh;
                            for i in 0..l {
                                let row = &xb[i * 3 * d..(i + 1) * 3 * d];
                                q[i * dh..(i + 1) * dh].copy_from_slice(&row[off..off + dh]);
                                k[i * dh..(i + 1) * dh]
                                    .copy_from_slice(&row[d + off..d + off + dh]);
                                v[i * dh..(i + 1) * dh]
                                    .copy_from_slice(&row[2 * d + off..2 * d + off + dh]);
                                o[i * dh..(i + 1) * dh]
                                    .copy_from_slice(&gb[i * d + off..i * d + off + dh]);
                                g.probs(xb, h, i, &mut p[i * l..(i + 1) * l]);
                            }
                            dq.fill(0.0);
                            dk.fill(0.0);
                            dv.fill(0.0);
                            for i in 0..l {
                                let n = g.keys(i);
                                let pi = &p[i * l..i * l + n];
                                let go_i = &o[i * dh..(i + 1) * dh];
                                // dP_ij = dO_i · v_j ; dS_ij = P_ij (dP_ij − Σ_j P_ij dP_ij) / √d
                                let mut dot = 0f32;
                                for (j, (dsj, &pij)) in ds.iter_mut().zip(pi).enumerate() {
                                    let dp = dot_product(go_i, &v[j * dh..(j + 1) * dh]);
                                    *dsj = dp;
                                    dot += pij * dp;
                                }
                                for (dsj, &pij) in ds.iter_mut().zip(pi) {
                                    *dsj = pij * (*dsj - dot) * scale;
                                }
                                // dQ_i = Σ_j dS_ij k_j ; dK_j += dS_ij q_i ; dV_j += P_ij dO_i
                                let (qi, dqi) =
                                    (&q[i * dh..(i + 1) * dh], &mut dq[i * dh..(i + 1) * dh]);
                                for j in 0..n {
                                    axpy(ds[j], &k[j * dh..(j + 1) * dh], dqi);
                                    axpy(ds[j], qi, &mut dk[j * dh..(j + 1) * dh]);
                                    axpy(pi[j], go_i, &mut dv[j * dh..(j + 1) * dh]);
                                }
                            }
                            for i in 0..l {
                                let row = &mut dxb[i * 3 * d..(i + 1) * 3 * d];
                                row[off..off + dh].copy_from_slice(&dq[i * dh..(i + 1) * dh]);
                                row[d + off..d + off + dh]
                                    .copy_from_slice(&dk[i * dh..(i + 1) * dh]);
                                row[2 * d + off..2 * d + off + dh]
                                    .copy_from_slice(&dv[i * dh..(i + 1) * dh]);
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

/// `a·b`, summed in 8 independent lanes so that the compiler vectorises it (a single running
/// sum is a serial chain of dependent additions it may not reorder); the lanes are added last.
#[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
#[allow(clippy::inline_always)]
fn dot_product(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a·x`.
#[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
#[allow(clippy::inline_always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
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
                for h in 0..self.heads {
                    for i in 0..l {
                        let start = (h * l + i) * l;
                        g.probs(xb, h, i, &mut o[start..start + l]);
                    }
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

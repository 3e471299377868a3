//! GELU, tanh approximation (Hendrycks & Gimpel, 2016), forward and backward fused.
//!
//! `gelu(x) = ½x(1 + tanh(u))`, `u = √(2/π)(x + 0.044715x³)`. Using `½(1 + tanh(u)) = σ(2u)`,
//! the forward is `x·σ(2u)` — one exponential per element — and the derivative is
//! `σ(2u) + x·σ(2u)(1 − σ(2u))·2u'`, `u' = √(2/π)(1 + 3·0.044715x²)`, again one exponential.
//! candle's autograd of `Tensor::gelu` builds ~12 element-wise tensors in the backward pass;
//! this op reads `x` and the incoming gradient once and writes one tensor.
//!
//! CPU: f32 or bf16 (computed in f32, rounded once), contiguous, rayon over chunks. CUDA (feature
//! `cuda`): f32 or bf16 likewise, `cuda/gelu.cu`, one thread per element. Other devices and
//! dtypes use the reference; the result is the same function either way.

use crate::cpu::{for_rows, narrow, vectorized, widen};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

const C: f32 = 0.797_884_6; // √(2/π)
const A: f32 = 0.044_715;

/// The reference: candle's differentiable tanh-approximation GELU.
pub fn gelu_reference(xs: &Tensor) -> Result<Tensor> {
    xs.gelu()
}

/// Fused GELU (tanh approximation) with a hand-written backward.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    if crate::dispatch::fused_f32_or_bf16(&[xs]) {
        xs.contiguous()?.apply_op1(GeluOp)
    } else {
        gelu_reference(xs)
    }
}

#[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
#[allow(clippy::inline_always)]
fn sigmoid_2u(x: f32) -> f32 {
    let u = C * (x + A * x * x * x);
    1.0 / (1.0 + crate::cpu::exp(-2.0 * u))
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = widen(s, l, self.name())?.into_owned();
        for_rows(&mut out, 4096, |_, chunk| {
            vectorized(|| {
                for v in chunk {
                    *v *= sigmoid_2u(*v);
                }
            });
        });
        Ok((narrow(out, s.dtype()), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::gelu_fwd(s, l, self.name())
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?,
        ))
    }
}

/// `grad · gelu'(x)` in one pass.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu-fused-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = widen(s1, l1, self.name())?;
        let g = widen(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        for_rows(&mut out, 4096, |i, chunk| {
            let range = i * 4096..i * 4096 + chunk.len();
            // Zipped slices, not indices: without bounds checks the loop vectorises.
            vectorized(
                #[inline(always)]
                || {
                    for ((o, &xv), &gv) in chunk.iter_mut().zip(&x[range.clone()]).zip(&g[range]) {
                        let s = sigmoid_2u(xv);
                        let du = C * (1.0 + 3.0 * A * xv * xv);
                        *o = gv * (s + xv * s * (1.0 - s) * 2.0 * du);
                    }
                },
            );
        });
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
        crate::cuda::ops::gelu_bwd(s1, l1, s2, l2, self.name())
    }
}

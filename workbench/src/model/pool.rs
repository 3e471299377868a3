//! Multi-head attention pooling (Lee et al., 2019, "Set Transformer", arXiv:1810.00825; the
//! pooling head of SigLIP, Zhai et al., 2023): a learned probe vector is the only query of one
//! multi-head attention over the tower's tokens, followed by LayerNorm and an MLP with a residual
//! connection. The pooled vector is the probe's output.
//!
//! Parameters (under `model.vision.map`): `probe` `(D,)`, `attn.qkv.{weight,bias}` `(3D, D)` /
//! `(3D,)` laid out like `torch.nn.MultiheadAttention`'s `in_proj` (query, key, value rows),
//! `attn.proj`, `ln`, `mlp.{fc,proj}`.

use super::Precision;
use super::layers::{LayerNorm, Linear, Mlp, Spec, log_softmax_last};
use crate::Result;
use crate::params::{Init, Scope};
use candle_core::Tensor;

/// The attention-pooling head.
#[derive(Clone, Debug)]
pub struct AttentionPool {
    probe: Tensor,
    in_weight: Tensor,
    in_bias: Tensor,
    proj: Linear,
    ln: LayerNorm,
    mlp: Mlp,
    heads: usize,
    precision: Precision,
}

impl AttentionPool {
    /// A head over `spec.width`-wide tokens with `spec.heads` heads and `spec.hidden` MLP width.
    pub fn new(spec: &Spec, s: &Scope) -> Result<Self> {
        let w = spec.width;
        let std = (w as f64).powf(-0.5);
        let attn = s.pp("attn");
        let qkv = attn.pp("qkv");
        Ok(Self {
            probe: s.get("probe", w, Init::Normal(std))?,
            in_weight: qkv.get("weight", (3 * w, w), Init::Normal(std))?,
            in_bias: qkv.get("bias", 3 * w, Init::Zeros)?,
            proj: Linear::new(w, w, std, true, &attn.pp("proj"))?.with_kernels(spec.kernels),
            ln: LayerNorm::with_eps(w, spec.eps, spec.kernels, &s.pp("ln"))?,
            mlp: Mlp::new(spec, &s.pp("mlp"))?,
            heads: spec.heads,
            precision: s.precision(),
        })
    }

    /// Pools `xs` `(B, N, D)` into `(B, D)`; also returns the probe's attention `(B, H, 1, N)`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, n, d) = xs.dims3()?;
        let (h, dh) = (self.heads, d / self.heads);
        let mm = |a: &Tensor, b: &Tensor| self.precision.matmul(a, b);
        let q = mm(
            &self.probe.reshape((1, d))?,
            &self.in_weight.narrow(0, 0, d)?.t()?,
        )?
        .broadcast_add(&self.in_bias.narrow(0, 0, d)?)?; // (1, D)
        let q = (q.reshape((1, h, 1, dh))? * (dh as f64).powf(-0.5))?
            .broadcast_as((b, h, 1, dh))?
            .contiguous()?;
        let kv = mm(
            &xs.reshape((b * n, d))?,
            &self.in_weight.narrow(0, d, 2 * d)?.t()?,
        )?
        .broadcast_add(&self.in_bias.narrow(0, d, 2 * d)?)?; // (B·N, 2D)
        let split = |at: usize| {
            kv.narrow(1, at * d, d)?
                .reshape((b, n, h, dh))?
                .transpose(1, 2)?
                .contiguous() // (B, H, N, dh)
        };
        let (k, v) = (split(0)?, split(1)?);
        let weights = log_softmax_last(&mm(&q, &k.t()?)?)?.exp()?; // (B, H, 1, N)
        let out = mm(&weights, &v)? // (B, H, 1, dh)
            .transpose(1, 2)?
            .reshape((b, 1, d))?;
        let out = self.proj.forward(&out)?;
        let out = (&out + self.mlp.forward(&self.ln.forward(&out)?)?)?;
        Ok((out.squeeze(1)?, weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, Kernels};
    use crate::params::Params;
    use candle_core::{D, Device};

    #[test]
    fn probe_weights_sum_to_one_and_pool_is_permutation_invariant() {
        let params = Params::new(3, &Device::Cpu);
        let spec = Spec {
            width: 8,
            heads: 2,
            hidden: 12,
            layers: 1,
            kernels: Kernels::Reference,
            activation: Activation::Gelu,
            eps: 1e-6,
        };
        let pool = AttentionPool::new(&spec, &params.scope("map")).unwrap();
        let mut rng = crate::rng::Rng::new(1);
        let xs = Tensor::from_vec(rng.normal_vec(2 * 5 * 8, 1.0), (2, 5, 8), &Device::Cpu).unwrap();
        let (pooled, w) = pool.forward(&xs).unwrap();
        assert_eq!(pooled.dims(), &[2, 8]);
        assert_eq!(w.dims(), &[2, 2, 1, 5]);
        for s in w
            .sum(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        {
            assert!((s - 1.0).abs() < 1e-5);
        }
        // Reversing the tokens permutes the weights and leaves the pooled vector alone.
        let rev = Tensor::new(&[4u32, 3, 2, 1, 0], &Device::Cpu).unwrap();
        let (again, _) = pool.forward(&xs.index_select(&rev, 1).unwrap()).unwrap();
        let diff = (pooled - again).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}

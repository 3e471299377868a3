//! Transformer building blocks shared by both towers: linear, LayerNorm, attention, MLP, block.
//!
//! Everything is written with differentiable tensor ops (candle's fused `layer_norm` and
//! `softmax_last_dim` have no backward pass). Attention is explicit — `softmax(QKᵀ/√d + mask)·V`
//! — so each layer can hand back its attention weights without changing the numbers.

use super::{Activation, Kernels, Precision};
use crate::Result;
use crate::params::{Init, Scope};
use candle_core::{D, DType, Tensor, Var};

/// `y = x·Wᵀ + b`, with `W` of shape `(out, in)` like `torch.nn.Linear`; `x·Wᵀ` in the
/// scope's [`Precision`].
///
/// [`Linear::forward`] hands back f32 with the bias added in f32; [`Linear::forward_in`] hands
/// back the compute dtype with the bias added in it, for activations that go straight into the
/// next product or the fused attention (a bf16 model's MLP hidden layer and `qkv`), as
/// `torch.autocast` keeps them.
///
/// The layer is one op, [`kernels::linear()`] or [`kernels::linear_bf16`] (their references with
/// [`Kernels::Reference`], see [`Linear::with_kernels`]).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    precision: Precision,
    fused: bool,
}

impl Linear {
    /// A linear layer with weights `N(0, std²)` and zero bias (if `bias`).
    pub fn new(in_dim: usize, out_dim: usize, std: f64, bias: bool, s: &Scope) -> Result<Self> {
        let weight = s.get("weight", (out_dim, in_dim), Init::Normal(std))?;
        let bias = if bias {
            Some(s.get("bias", out_dim, Init::Zeros)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            precision: s.precision(),
            fused: true,
        })
    }

    /// This layer with the fused op of the `kernels` crate (the default) or its reference.
    #[must_use]
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.fused = kernels == Kernels::Fused;
        self
    }

    /// Applies the layer to the last dimension of `xs` (any rank ≥ 2, any float dtype); the
    /// result is in the parameters' dtype (f32), the bias added after the product is widened.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(xs, self.weight.dtype())
    }

    /// [`Linear::forward`] with the result (and the bias addition) in the compute dtype:
    /// bf16 under [`Precision::Bf16`], where the product is not widened; exactly
    /// [`Linear::forward`] in f32.
    pub fn forward_in(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(xs, self.precision.compute_dtype())
    }

    fn apply(&self, xs: &Tensor, out: DType) -> candle_core::Result<Tensor> {
        let (w, b) = (&self.weight, self.bias.as_ref());
        match (self.precision, self.fused) {
            (Precision::F32, true) => kernels::linear(&xs.to_dtype(DType::F32)?, w, b),
            (Precision::F32, false) => kernels::linear_reference(&xs.to_dtype(DType::F32)?, w, b),
            (Precision::Bf16, true) => kernels::linear_bf16(xs, w, b, out),
            (Precision::Bf16, false) => kernels::linear_bf16_reference(xs, w, b, out),
        }
    }
}

/// Layer normalisation over the last dimension, with learned scale and shift.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    fused: bool,
}

impl LayerNorm {
    /// Scale 1, shift 0, `eps = 1e-5` (PyTorch's default).
    pub fn new(dim: usize, kernels: Kernels, s: &Scope) -> Result<Self> {
        Self::with_eps(dim, 1e-5, kernels, s)
    }

    /// Scale 1, shift 0, the given `eps`.
    pub fn with_eps(dim: usize, eps: f64, kernels: Kernels, s: &Scope) -> Result<Self> {
        Ok(Self {
            weight: s.get("weight", dim, Init::Ones)?,
            bias: s.get("bias", dim, Init::Zeros)?,
            eps,
            fused: kernels == Kernels::Fused,
        })
    }

    /// `(x − mean) / sqrt(var + eps) · weight + bias`, biased variance as in PyTorch.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if self.fused {
            kernels::layer_norm(xs, &self.weight, &self.bias, self.eps)
        } else {
            kernels::layer_norm_reference(xs, &self.weight, &self.bias, self.eps)
        }
    }
}

/// The shape and numerics of one tower's blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    /// Token width.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub hidden: usize,
    /// Blocks in the tower (for the open_clip init scale).
    pub layers: usize,
    /// Fused kernels or references.
    pub kernels: Kernels,
    /// MLP non-linearity.
    pub activation: Activation,
    /// LayerNorm `eps`.
    pub eps: f64,
}

/// Applies `activation`; the tanh GELU uses the fused kernel when `fused`.
pub fn activate(xs: &Tensor, activation: Activation, fused: bool) -> candle_core::Result<Tensor> {
    match activation {
        Activation::GeluTanh if fused => kernels::gelu(xs),
        Activation::GeluTanh => kernels::gelu_reference(xs),
        Activation::QuickGelu => xs.mul(&candle_nn::ops::sigmoid(&(xs * 1.702)?)?),
        Activation::Gelu => xs.gelu_erf(),
    }
}

/// Log-softmax over the last dimension. The max is subtracted for stability and detached:
/// the function is shift-invariant, so its gradient is exact without differentiating the max.
pub fn log_softmax_last(xs: &Tensor) -> candle_core::Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Multi-head self-attention with explicit weights.
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    fused: bool,
    precision: Precision,
}

impl Attention {
    /// `qkv` maps `width → 3·width`, `proj` maps back; init as in open_clip
    /// (`in_proj std = width^-½`, `out_proj std = width^-½ · (2·layers)^-½`).
    pub fn new(
        width: usize,
        heads: usize,
        layers: usize,
        kernels: Kernels,
        s: &Scope,
    ) -> Result<Self> {
        let attn_std = (width as f64).powf(-0.5);
        let proj_std = attn_std * ((2 * layers) as f64).powf(-0.5);
        Ok(Self {
            qkv: Linear::new(width, 3 * width, attn_std, true, &s.pp("qkv"))?.with_kernels(kernels),
            proj: Linear::new(width, width, proj_std, true, &s.pp("proj"))?.with_kernels(kernels),
            heads,
            fused: kernels == Kernels::Fused,
            precision: s.precision(),
        })
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Self-attention over `xs` `(B, L, D)` (`causal`: each position sees itself and earlier
    /// ones). Returns the output `(B, L, D)` and, if `want_weights`, the weights `(B, H, L, L)`.
    ///
    /// With fused kernels the output is computed by one fused op and the weights, when asked
    /// for, by a second op on the same inputs, so asking for weights never changes the output;
    /// with reference kernels the output is computed from the returned weights (which are then
    /// part of the autograd graph, for gradient-based relevance). In bf16 the `qkv` projection
    /// is rounded to bf16; with fused kernels the attention reads it and writes its output in
    /// bf16, computing in f32 inside; with reference kernels its products take bf16 operands and
    /// the softmax runs in f32 ([`kernels::attention::attention_weights_in`]). The weights
    /// handed back are f32.
    pub fn forward(
        &self,
        xs: &Tensor,
        causal: bool,
        want_weights: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let h = self.heads;
        let (out, weights) = if self.fused {
            // The kernel stores nothing of size B·H·L·L. In bf16 it reads the bf16 projection
            // and writes a bf16 output, computing in f32, as the output projection's input.
            let qkv = self.qkv.forward_in(xs)?; // (B, L, 3D)
            let w = if want_weights {
                Some(kernels::attention::attention_weights(&qkv, h, causal)?)
            } else {
                None
            };
            (kernels::attention::attention(&qkv, h, causal)?, w)
        } else if self.precision != Precision::F32 {
            let qkv = self.qkv.forward(xs)?;
            let dt = self.precision.compute_dtype();
            let w = kernels::attention::attention_weights_in(&qkv, h, causal, dt)?;
            let out = kernels::attention::apply_weights_in(&w, &qkv, h, dt)?;
            (out, want_weights.then_some(w))
        } else {
            let qkv = self.qkv.forward(xs)?;
            let w = kernels::attention::attention_weights_reference(&qkv, h, causal)?;
            let out = kernels::attention::apply_weights(&w, &qkv, h)?;
            (out, want_weights.then_some(w))
        };
        Ok((self.proj.forward(&out)?, weights))
    }

    /// Reference-path attention with `offset` `(B, H, L, L)` added to the weights before they
    /// are applied. With a zero-valued [`Var`] as offset the output is unchanged and the
    /// offset's gradient is the gradient of whatever follows with respect to the weights
    /// (candle keeps gradients of variables only). Returns the output and the offset weights.
    pub fn forward_probed(
        &self,
        xs: &Tensor,
        causal: bool,
        offset: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let qkv = self.qkv.forward(xs)?;
        let dt = self.precision.compute_dtype();
        let w = (kernels::attention::attention_weights_in(&qkv, self.heads, causal, dt)? + offset)?;
        let out = kernels::attention::apply_weights_in(&w, &qkv, self.heads, dt)?;
        Ok((self.proj.forward(&out)?, w))
    }

    /// The query and key vectors `(B, H, L, dh)` of `xs` — the weights are
    /// `softmax(q·kᵀ/√dh)` (masked when causal).
    pub fn queries_keys(&self, xs: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, l, d) = xs.dims3()?;
        let dh = d / self.heads;
        let qkv = self.qkv.forward(xs)?;
        let split = |at: usize| {
            qkv.narrow(2, at * d, d)?
                .reshape((b, l, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        Ok((split(0)?, split(1)?))
    }

    /// The value vectors `(B, H, L, dh)` of `xs` — with the weights they reproduce the output.
    pub fn values(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        let dh = d / self.heads;
        self.qkv
            .forward(xs)?
            .narrow(2, 2 * d, d)?
            .reshape((b, l, self.heads, dh))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Applies the output projection to per-head outputs `(B, H, L, dh)`.
    pub fn project_heads(&self, heads_out: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, l, dh) = heads_out.dims4()?;
        self.proj
            .forward(&heads_out.transpose(1, 2)?.reshape((b, l, h * dh))?)
    }
}

/// Two-layer perceptron (GELU with the tanh approximation unless the spec says otherwise).
#[derive(Clone, Debug)]
pub struct Mlp {
    fc: Linear,
    proj: Linear,
    activation: Activation,
    fused: bool,
}

impl Mlp {
    /// `width → hidden → width`, init as in open_clip (`fc std = (2·width)^-½`).
    pub fn new(spec: &Spec, s: &Scope) -> Result<Self> {
        let (width, hidden) = (spec.width, spec.hidden);
        let fc_std = ((2 * width) as f64).powf(-0.5);
        let proj_std = (width as f64).powf(-0.5) * ((2 * spec.layers) as f64).powf(-0.5);
        Ok(Self {
            fc: Linear::new(width, hidden, fc_std, true, &s.pp("fc"))?.with_kernels(spec.kernels),
            proj: Linear::new(hidden, width, proj_std, true, &s.pp("proj"))?
                .with_kernels(spec.kernels),
            activation: spec.activation,
            fused: spec.kernels == Kernels::Fused,
        })
    }

    /// `proj(act(fc(x)))`, in f32. The hidden layer is in the compute dtype: a bf16 model
    /// keeps it (and its activation) in bf16, as autocast does, so its widest tensors take half
    /// the memory.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = activate(&self.fc.forward_in(xs)?, self.activation, self.fused)?;
        self.proj.forward(&h)
    }
}

/// Pre-LN residual block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Clone, Debug)]
pub struct Block {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    /// One block of a `spec.layers`-deep encoder.
    pub fn new(spec: &Spec, s: &Scope) -> Result<Self> {
        let (w, k) = (spec.width, spec.kernels);
        Ok(Self {
            ln1: LayerNorm::with_eps(w, spec.eps, k, &s.pp("ln1"))?,
            attn: Attention::new(w, spec.heads, spec.layers, k, &s.pp("attn"))?,
            ln2: LayerNorm::with_eps(w, spec.eps, k, &s.pp("ln2"))?,
            mlp: Mlp::new(spec, &s.pp("mlp"))?,
        })
    }

    /// The block's output and, on request, its attention weights `(B, H, L, L)`.
    pub fn forward(
        &self,
        xs: &Tensor,
        causal: bool,
        want_weights: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (a, w) = self
            .attn
            .forward(&self.ln1.forward(xs)?, causal, want_weights)?;
        let xs = (xs + a)?;
        let xs = (&xs + self.mlp.forward(&self.ln2.forward(&xs)?)?)?;
        Ok((xs, w))
    }

    /// [`Block::forward`] with gradient probes: `input` is added to the block's input and
    /// `attention` to its attention weights (see [`Attention::forward_probed`]). Returns the
    /// output, the probed weights and the probed input.
    pub fn forward_probed(
        &self,
        xs: &Tensor,
        causal: bool,
        input: &Tensor,
        attention: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let xs = (xs + input)?;
        let (a, w) = self
            .attn
            .forward_probed(&self.ln1.forward(&xs)?, causal, attention)?;
        let out = (&xs + a)?;
        let out = (&out + self.mlp.forward(&self.ln2.forward(&out)?)?)?;
        Ok((out, w, xs))
    }

    /// The attention sub-layer and its input normalisation, for inspection.
    pub fn attention(&self) -> (&LayerNorm, &Attention) {
        (&self.ln1, &self.attn)
    }
}

/// Zero-valued variables added to an encoder's intermediate tensors so that their gradients can
/// be read from a [`GradStore`](candle_core::backprop::GradStore) (candle keeps the gradients
/// of variables only): `inputs[l]` is added to block `l`'s input `(B, L, D)`, `attention[l]` to
/// its attention weights `(B, H, L, L)`. Adding zeros changes no value.
#[derive(Clone, Debug)]
pub struct Probes {
    /// Per layer, added to the block input.
    pub inputs: Vec<Var>,
    /// Per layer, added to the attention weights.
    pub attention: Vec<Var>,
}

impl Probes {
    /// Zeros for `layers` blocks over `(b, len, width)` inputs with `heads` heads.
    pub fn zeros(
        layers: usize,
        (b, len, width): (usize, usize, usize),
        heads: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<Self> {
        let f = candle_core::DType::F32;
        Ok(Self {
            inputs: (0..layers)
                .map(|_| Var::zeros((b, len, width), f, device))
                .collect::<candle_core::Result<_>>()?,
            attention: (0..layers)
                .map(|_| Var::zeros((b, heads, len, len), f, device))
                .collect::<candle_core::Result<_>>()?,
        })
    }
}

/// A stack of [`Block`]s.
#[derive(Clone, Debug)]
pub struct Encoder {
    blocks: Vec<Block>,
}

/// An encoder's output.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// Last block's output `(B, L, D)`.
    pub hidden: Tensor,
    /// Per layer, attention weights `(B, H, L, L)` — present when requested.
    pub attentions: Option<Vec<Tensor>>,
    /// Per layer, the block input `(B, L, D)` — present when weights were requested.
    pub inputs: Option<Vec<Tensor>>,
}

impl Encoder {
    /// `spec.layers` blocks under `s.blocks.<i>`.
    pub fn new(spec: &Spec, s: &Scope) -> Result<Self> {
        let blocks = (0..spec.layers)
            .map(|i| Block::new(spec, &s.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { blocks })
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Runs every block on the reference path with gradient [`Probes`]; always returns the
    /// (probed) weights and block inputs.
    pub fn forward_probed(
        &self,
        xs: &Tensor,
        causal: bool,
        probes: &Probes,
    ) -> candle_core::Result<EncoderOutput> {
        if probes.inputs.len() != self.blocks.len() || probes.attention.len() != self.blocks.len() {
            candle_core::bail!(
                "probes for {} / {} layers given to an encoder of {} blocks",
                probes.inputs.len(),
                probes.attention.len(),
                self.blocks.len()
            );
        }
        let mut xs = xs.clone();
        let mut attentions = Vec::new();
        let mut inputs = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            let (out, w, x) = block.forward_probed(
                &xs,
                causal,
                probes.inputs[l].as_tensor(),
                probes.attention[l].as_tensor(),
            )?;
            attentions.push(w);
            inputs.push(x);
            xs = out;
        }
        Ok(EncoderOutput {
            hidden: xs,
            attentions: Some(attentions),
            inputs: Some(inputs),
        })
    }

    /// Runs every block; collects attention weights (and block inputs) when `want_weights`.
    pub fn forward(
        &self,
        xs: &Tensor,
        causal: bool,
        want_weights: bool,
    ) -> candle_core::Result<EncoderOutput> {
        let mut xs = xs.clone();
        let mut attentions = Vec::new();
        let mut inputs = Vec::new();
        for block in &self.blocks {
            if want_weights {
                inputs.push(xs.clone());
            }
            let (out, w) = block.forward(&xs, causal, want_weights)?;
            attentions.extend(w);
            xs = out;
        }
        Ok(EncoderOutput {
            hidden: xs,
            attentions: want_weights.then_some(attentions),
            inputs: want_weights.then_some(inputs),
        })
    }
}

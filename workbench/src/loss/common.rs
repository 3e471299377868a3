//! Pieces shared by the objectives: the learnable temperature, masks, soft-target cross-entropy.

use crate::Result;
use crate::params::{Init, Scope};
use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

/// A finite stand-in for −∞ in additive masks: far below any logit (|logit| ≤ 100), and safe
/// to multiply by zero.
pub const NEG: f64 = -1e9;

/// How a temperature is set up (`[loss.temperature]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemperatureConfig {
    /// Initial temperature τ; the parameter is the log-scale `t = ln(1/τ)`.
    pub init: f64,
    /// Learn it. When false it is not trained and not clamped: it starts at `init` when first
    /// created and keeps whatever value it has since — one restored from an earlier time on this
    /// objective, or one set live (`Command::SetTemperature`).
    pub learnable: bool,
    /// Upper bound of the scale `exp(t)` (open_clip clamps at 100).
    pub max_scale: f64,
}

impl Default for TemperatureConfig {
    fn default() -> Self {
        Self {
            init: 0.07,
            learnable: true,
            max_scale: 100.0,
        }
    }
}

impl TemperatureConfig {
    /// A fixed temperature.
    pub fn fixed(tau: f64) -> Self {
        Self {
            init: tau,
            learnable: false,
            max_scale: (1.0 / tau).max(1.0),
        }
    }
}

/// A log-scale `t`, used as `exp(t)`. A learnable one is clamped to `[0, ln max_scale]` after each
/// step (open_clip's `clamp_logit_scale`); a fixed one keeps its value.
pub struct Temperature {
    var: Var,
    name: String,
    max_log: f64,
    learnable: bool,
}

impl Temperature {
    /// Creates (or restores) `<scope>.logit_scale`.
    pub fn new(cfg: &TemperatureConfig, s: &Scope) -> Result<Self> {
        if !(cfg.init > 0.0 && cfg.init.is_finite() && cfg.max_scale >= 1.0) {
            return Err(crate::Error::config(
                format!("{}.temperature", s.prefix()),
                format!(
                    "need init > 0 and max_scale >= 1, got init {} max_scale {}",
                    cfg.init, cfg.max_scale
                ),
            ));
        }
        Ok(Self {
            var: s.var("logit_scale", (), Init::Const((1.0 / cfg.init).ln()))?,
            name: s.path("logit_scale"),
            max_log: cfg.max_scale.ln(),
            learnable: cfg.learnable,
        })
    }

    /// `exp(t)` as a scalar tensor (differentiable).
    pub fn scale(&self) -> candle_core::Result<Tensor> {
        self.var.as_tensor().exp()
    }

    /// `(name, variable)` if learnable.
    pub fn parameter(&self) -> Option<(String, Var)> {
        self.learnable
            .then(|| (self.name.clone(), self.var.clone()))
    }

    /// Clamps a learnable `t` to `[0, ln max_scale]`. A fixed temperature is left alone: the
    /// optimizer never moves it, and clamping would change a fixed `τ > 1` (or `τ < 1/max_scale`)
    /// after the first step.
    pub fn clamp(&self) -> candle_core::Result<()> {
        if !self.learnable {
            return Ok(());
        }
        self.var
            .set(&self.var.as_tensor().clamp(0.0, self.max_log)?)
    }

    /// Current `exp(t)`.
    pub fn value(&self) -> candle_core::Result<f32> {
        Ok(self.var.as_tensor().to_scalar::<f32>()?.exp())
    }
}

/// Cosine similarities `a·bᵀ` of L2-normalised rows: `(N, E) × (M, E) → (N, M)`.
pub fn similarity(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    a.matmul(&b.t()?)
}

/// The `n × n` identity as f32.
pub fn eye(n: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut v = vec![0f32; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    Tensor::from_vec(v, (n, n), device)
}

/// An `n × m` f32 matrix from a predicate.
pub fn mask(
    n: usize,
    m: usize,
    device: &Device,
    f: impl Fn(usize, usize) -> bool,
) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..n * m)
        .map(|k| if f(k / m, k % m) { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (n, m), device)
}

/// Mean over rows of `−Σ_j targets_ij · log softmax(logits_i)_j` (targets rows sum to 1).
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let logp = crate::model::layers::log_softmax_last(logits)?;
    (logp * targets)?.sum(D::Minus1)?.mean_all()?.neg()
}

/// `log σ(x)`, computed stably as `min(x, 0) − log(1 + e^{−|x|})`.
pub fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    let zero = x.zeros_like()?;
    let softplus = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.minimum(&zero)? - softplus
}

/// `log Σ_j exp(x_ij)` over the last dimension (stable; the max is detached).
pub fn logsumexp_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    (x.broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?
        .squeeze(D::Minus1)
}

/// The diagonal of a square matrix `(N, N) → (N,)`.
pub fn diagonal(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let idx = Tensor::arange(0u32, n as u32, x.device())?.unsqueeze(1)?;
    x.gather(&idx, 1)?.squeeze(1)
}

/// Checks that the inputs are a square batch of at least two pairs.
pub fn check_batch(image: &Tensor, text: &Tensor, what: &str) -> candle_core::Result<usize> {
    let (b, e) = image.dims2()?;
    let (b2, e2) = text.dims2()?;
    if b != b2 || e != e2 {
        candle_core::bail!(
            "{what}: image {:?} and text {:?} embeddings must have the same shape",
            image.dims(),
            text.dims()
        );
    }
    if b < 2 {
        candle_core::bail!("{what}: a contrastive batch needs at least two pairs, got {b}");
    }
    if image.dtype() != DType::F32 && image.dtype() != DType::F64 {
        candle_core::bail!("{what}: embeddings must be f32 or f64");
    }
    Ok(b)
}

/// A scalar tensor on `device`.
pub fn scalar(v: f64, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::new(v as f32, device)
}

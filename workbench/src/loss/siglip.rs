//! SigLIP: pairwise sigmoid loss with learnable temperature and bias.
//!
//! Zhai et al., 2023, "Sigmoid Loss for Language Image Pre-Training" (arXiv:2303.15343),
//! Algorithm 1; open_clip `SigLipLoss` (src/open_clip/loss.py).
//!
//! ```text
//! logits_ij = exp(t')·x_i·y_j + b,   z_ij = +1 if i = j else −1
//! L = −(1/B) Σ_i Σ_j log σ(z_ij · logits_ij)
//! ```
//!
//! Every cell is an independent binary classification; no normalisation across the batch.
//! Paper init: `t' = ln 10`, `b = −10` (the bias offsets the B² − B negatives at the start).
//! Terms: `positive` (the diagonal cells) and `negative` (the others), both divided by B, so
//! `loss = positive + negative`.
//!
//! Swapped in mid-run, a freshly created bias is set from the current logits
//! (`bias_from_logits`): the `b` that minimises the loss on the probe batch at the current
//! similarities and scale (a convex one-dimensional problem, solved by Newton's method), so the
//! swap does not start from the huge loss that `b = −10` gives a trained model. A bias restored
//! from an earlier time on this objective is kept.
//!
//! With [`Kernels::Fused`] (the default) the loss is [`kernels::sigmoid_pairwise()`], whose memory
//! is linear in the batch; [`Kernels::Reference`] composes it from the `B × B` logits.

use super::common::{
    Temperature, TemperatureConfig, check_batch, eye, log_sigmoid, mask, similarity,
};
use super::{LossInputs, LossOutput, Objective};
use crate::Result;
use crate::model::Kernels;
use crate::params::{Init, Scope};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Settings of [`SiglipLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiglipConfig {
    /// Temperature: init `t' = ln 10` (τ = 0.1), learnable.
    pub temperature: TemperatureConfig,
    /// Initial bias.
    pub init_bias: f64,
    /// Learn the bias.
    pub learn_bias: bool,
    /// When swapped in mid-run with a new bias, set it from the current logits.
    pub bias_from_logits: bool,
}

impl Default for SiglipConfig {
    fn default() -> Self {
        Self {
            temperature: TemperatureConfig {
                init: 0.1,
                ..TemperatureConfig::default()
            },
            init_bias: -10.0,
            learn_bias: true,
            bias_from_logits: true,
        }
    }
}

/// SigLIP's sigmoid loss. Terms: `positive`, `negative`.
pub struct SiglipLoss {
    temperature: Temperature,
    bias: Var,
    bias_name: String,
    learn_bias: bool,
    bias_is_new: bool,
    bias_from_logits: bool,
    kernels: Kernels,
}

impl SiglipLoss {
    /// Creates (or restores) `logit_scale` and `logit_bias` under `s`; computes with the fused
    /// kernel.
    pub fn new(cfg: &SiglipConfig, s: &Scope) -> Result<Self> {
        Self::with_kernels(cfg, s, Kernels::Fused)
    }

    /// As [`SiglipLoss::new`], computing with the fused kernel or its reference.
    pub fn with_kernels(cfg: &SiglipConfig, s: &Scope, kernels: Kernels) -> Result<Self> {
        let bias_name = s.path("logit_bias");
        let bias_is_new = s.params().get(&bias_name).is_none();
        Ok(Self {
            temperature: Temperature::new(&cfg.temperature, s)?,
            bias: s.var("logit_bias", (), Init::Const(cfg.init_bias))?,
            bias_name,
            learn_bias: cfg.learn_bias,
            bias_is_new,
            bias_from_logits: cfg.bias_from_logits,
            kernels,
        })
    }

    fn logits(&self, x: &LossInputs<'_>) -> candle_core::Result<Tensor> {
        similarity(x.image, x.text)?
            .broadcast_mul(&self.temperature.scale()?)?
            .broadcast_add(self.bias.as_tensor())
    }
}

/// The positive and negative terms of the pairwise sigmoid loss of `logits` (rows × columns),
/// positives where `pos_mask` is 1: `−Σ log σ(z·l) / rows` over each kind of pair.
fn pairwise_terms(
    logits: &Tensor,
    pos_mask: &Tensor,
    rows: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let z = ((pos_mask * 2.0)? - 1.0)?;
    let ll = log_sigmoid(&(logits * &z)?)?; // log σ(z·l)
    let positive = ((&ll * pos_mask)?.sum_all()? / -(rows as f64))?;
    let negative = ((&ll * (1.0 - pos_mask)?)?.sum_all()? / -(rows as f64))?;
    Ok((positive, negative))
}

/// The bias `b` minimising `−Σ_ij log σ(z_ij (l_ij + b))` for fixed logits `l` (row-major
/// `n × n`, positives on the diagonal), by Newton's method from `start`.
pub fn optimal_bias(logits: &[f32], n: usize, start: f64) -> f64 {
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mut b = start;
    for _ in 0..100 {
        let (mut g, mut h) = (0.0, 0.0);
        for (k, &l) in logits.iter().enumerate() {
            let z = if k / n == k % n { 1.0 } else { -1.0 };
            let p = sigmoid(z * (f64::from(l) + b));
            g -= z * (1.0 - p);
            h += p * (1.0 - p);
        }
        let delta = g / h.max(1e-12);
        b -= delta.clamp(-5.0, 5.0);
        if delta.abs() < 1e-9 {
            break;
        }
    }
    b
}

impl Objective for SiglipLoss {
    fn name(&self) -> &'static str {
        "siglip"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let b = check_batch(x.image, x.text, "siglip")?;
        let (positive, negative) = if let Some(l) = x.local {
            // This rank's images against every caption: its rows of the pairwise loss, over
            // its own row count.
            let logits = similarity(&x.image.narrow(0, l.start, l.len)?, x.text)?
                .broadcast_mul(&self.temperature.scale()?)?
                .broadcast_add(self.bias.as_tensor())?;
            let pos_mask = mask(l.len, b, logits.device(), |i, j| j == l.start + i)?;
            pairwise_terms(&logits, &pos_mask, l.len)?
        } else if self.kernels == Kernels::Fused {
            let terms = kernels::sigmoid_pairwise(
                x.image,
                x.text,
                &self.temperature.scale()?,
                self.bias.as_tensor(),
            )?;
            (terms.get(0)?, terms.get(1)?)
        } else {
            let logits = self.logits(x)?;
            pairwise_terms(&logits, &eye(b, logits.device())?, b)?
        };
        Ok(LossOutput {
            loss: (&positive + &negative)?,
            terms: vec![("positive".into(), positive), ("negative".into(), negative)],
        })
    }

    fn supports_local_loss(&self) -> bool {
        true
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        let mut p: Vec<(String, Var)> = self.temperature.parameter().into_iter().collect();
        if self.learn_bias {
            p.push((self.bias_name.clone(), self.bias.clone()));
        }
        p
    }

    fn after_step(&self) -> candle_core::Result<()> {
        self.temperature.clamp()
    }

    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        Ok(vec![
            ("logit_scale".into(), self.temperature.value()?),
            (
                "logit_bias".into(),
                self.bias.as_tensor().to_scalar::<f32>()?,
            ),
        ])
    }

    fn on_activate(&self, x: &LossInputs<'_>) -> candle_core::Result<()> {
        if !(self.bias_is_new && self.bias_from_logits) {
            return Ok(());
        }
        let n = check_batch(x.image, x.text, "siglip")?;
        let l = similarity(x.image, x.text)?
            .broadcast_mul(&self.temperature.scale()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let start = f64::from(self.bias.as_tensor().to_scalar::<f32>()?);
        let b = optimal_bias(&l, n, start);
        self.bias.set(&Tensor::new(b as f32, self.bias.device())?)
    }
}

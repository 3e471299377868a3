//! Focal contrastive loss: cross-entropy replaced by the focal loss.
//!
//! Kim, Angelova & Kuo, 2023, "Region-Aware Pretraining for Open-Vocabulary Object Detection
//! with Vision Transformers" (RO-ViT, arXiv:2305.07011), §3.2: "replace the common softmax cross
//! entropy loss in contrastive learning with focal loss to better learn the informative yet
//! difficult examples"; the focal loss is Lin et al., 2017 (arXiv:1708.02002).
//!
//! `variant = "sigmoid"` (RO-ViT's formulation): every image–text cell is a binary problem,
//! `p_ij = σ(z_ij·l_ij)` with `z = +1` on the diagonal and `−1` elsewhere,
//! `l_ij = exp(t)·x_i·y_j + b`, and
//!
//! ```text
//! L = −(1/B) Σ_i Σ_j (1 − p_ij)^γ log p_ij
//! ```
//!
//! A learnable bias initialised at −10 offsets the B² − B negatives (as in SigLIP); without it
//! the loss starts dominated by easy negatives.
//!
//! `variant = "softmax"`: `p_i = softmax_j(l_i·)_i` in both directions and
//! `L = ½ [−(1/B) Σ_i (1 − p_i)^γ log p_i + same over columns]` — focal loss on CLIP's softmax.
//! γ = 0 recovers SigLIP (sigmoid) or CLIP (softmax).

use super::common::{
    NEG, Temperature, TemperatureConfig, check_batch, log_sigmoid, logsumexp_last,
};
use super::{LossInputs, LossOutput, Objective, anchor_rows, anchor_similarities, positive_mask};
use crate::Result;
use crate::params::{Init, Scope};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Which probabilities the focal weighting applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FocalVariant {
    /// Per-cell sigmoid probabilities (RO-ViT).
    Sigmoid,
    /// Softmax probability of the positive, both directions.
    Softmax,
}

/// Settings of [`FocalLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FocalConfig {
    /// Focusing parameter γ ≥ 0.
    pub gamma: f64,
    /// Sigmoid (RO-ViT) or softmax.
    pub variant: FocalVariant,
    /// Temperature: init τ = 0.1 for the sigmoid variant, learnable.
    pub temperature: TemperatureConfig,
    /// Initial bias (sigmoid variant).
    pub init_bias: f64,
}

impl Default for FocalConfig {
    fn default() -> Self {
        Self {
            gamma: 2.0,
            variant: FocalVariant::Sigmoid,
            temperature: TemperatureConfig {
                init: 0.1,
                ..TemperatureConfig::default()
            },
            init_bias: -10.0,
        }
    }
}

/// Focal contrastive loss. Terms: `positive` and `negative` (sigmoid) or `image_to_text` and
/// `text_to_image` (softmax).
pub struct FocalLoss {
    cfg: FocalConfig,
    temperature: Temperature,
    bias: Option<(String, Var)>,
}

impl FocalLoss {
    /// Creates (or restores) the temperature and, for the sigmoid variant, the bias.
    pub fn new(cfg: &FocalConfig, s: &Scope) -> Result<Self> {
        if !(cfg.gamma >= 0.0 && cfg.gamma.is_finite()) {
            return Err(crate::Error::config(
                "loss.gamma",
                format!("must be >= 0, got {}", cfg.gamma),
            ));
        }
        let bias = match cfg.variant {
            FocalVariant::Sigmoid => Some((
                s.path("logit_bias"),
                s.var("logit_bias", (), Init::Const(cfg.init_bias))?,
            )),
            FocalVariant::Softmax => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            temperature: Temperature::new(&cfg.temperature, s)?,
            bias,
        })
    }
}

/// `−(1 − p)^γ log p` (element-wise) from `log p` and `log(1 − p)`, both computed stably by the
/// caller. The weight is `exp(γ·log(1 − p))`: `(1 − exp(log p))^γ` rounds `1 − p` to 0 for a
/// confidently classified cell, where the derivative of `x^γ` (γ < 1) is infinite and the
/// gradients become NaN; this form stays finite and keeps `1 − p` accurate near `p = 1`.
fn focal_term(logp: &Tensor, log_one_minus_p: &Tensor, gamma: f64) -> candle_core::Result<Tensor> {
    if gamma == 0.0 {
        return logp.neg();
    }
    ((log_one_minus_p * gamma)?.exp()? * logp)?.neg()
}

/// `(log p_i, log(1 − p_i))` for the softmax probability `p_i` of each row's positive, in column
/// `start + i` of `(b, B)` logits: `log(1 − p_i) = logsumexp_{j≠s+i} l_ij − logsumexp_j l_ij`.
fn softmax_positive_log_probs(l: &Tensor, start: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, n) = l.dims2()?;
    let labels = Tensor::arange(start as u32, (start + b) as u32, l.device())?.unsqueeze(1)?;
    let logp = crate::model::layers::log_softmax_last(l)?
        .gather(&labels, 1)?
        .squeeze(1)?;
    let others = (l + (positive_mask(b, n, start, l.device())? * NEG)?)?;
    let log_one_minus_p = (logsumexp_last(&others)? - logsumexp_last(l)?)?;
    Ok((logp, log_one_minus_p))
}

impl Objective for FocalLoss {
    fn name(&self) -> &'static str {
        "focal"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "focal")?;
        let scale = self.temperature.scale()?;
        let g = self.cfg.gamma;
        if let Some((_, bias)) = &self.bias {
            // Every cell of the image rows (this rank's, under local losses) against every
            // caption, normalised by the rows' count.
            let (s, start) = anchor_rows(x.image, x.text, x.local)?;
            let (rows, n) = s.dims2()?;
            let l = s.broadcast_mul(&scale)?.broadcast_add(bias.as_tensor())?;
            let pos = positive_mask(rows, n, start, l.device())?;
            let z = ((&pos * 2.0)? - 1.0)?;
            let zl = (l * z)?;
            // p = σ(z·l) and 1 − p = σ(−z·l).
            let cell = focal_term(&log_sigmoid(&zl)?, &log_sigmoid(&zl.neg()?)?, g)?;
            let positive = ((&cell * &pos)?.sum_all()? / rows as f64)?;
            let negative = ((&cell * (1.0 - &pos)?)?.sum_all()? / rows as f64)?;
            Ok(LossOutput {
                loss: (&positive + &negative)?,
                terms: vec![("positive".into(), positive), ("negative".into(), negative)],
            })
        } else {
            let (i2t, t2i, start) = anchor_similarities(x.image, x.text, x.local)?;
            let direction = |s: &Tensor| -> candle_core::Result<Tensor> {
                let l = s.broadcast_mul(&scale)?;
                let (logp, log_one_minus_p) = softmax_positive_log_probs(&l, start)?;
                focal_term(&logp, &log_one_minus_p, g)?.mean_all()
            };
            let (i2t, t2i) = (direction(&i2t)?, direction(&t2i)?);
            Ok(LossOutput {
                loss: ((&i2t + &t2i)? * 0.5)?,
                terms: vec![("image_to_text".into(), i2t), ("text_to_image".into(), t2i)],
            })
        }
    }

    fn supports_local_loss(&self) -> bool {
        true
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.temperature
            .parameter()
            .into_iter()
            .chain(self.bias.clone())
            .collect()
    }

    fn after_step(&self) -> candle_core::Result<()> {
        self.temperature.clamp()
    }

    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        let mut v = vec![("logit_scale".into(), self.temperature.value()?)];
        if let Some((_, b)) = &self.bias {
            v.push(("logit_bias".into(), b.as_tensor().to_scalar::<f32>()?));
        }
        Ok(v)
    }
}

//! CLIP: symmetric InfoNCE with a learnable temperature.
//!
//! Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision"
//! (arXiv:2103.00020), Figure 3; open_clip `ClipLoss` (src/open_clip/loss.py).
//!
//! With L2-normalised `x_i` (image) and `y_j` (text) and `s = exp(t)`:
//!
//! ```text
//! logits_ij = s · x_i·y_j
//! L = ½ [ −(1/B) Σ_i log softmax_j(logits)_ii  −(1/B) Σ_j log softmax_i(logits)_jj ]
//! ```
//!
//! `t` is learned, initialised to `ln(1/0.07)`, and clamped to `[0, ln 100]` after every
//! optimizer step — open_clip's `clamp_logit_scale`, so the scale never exceeds 100.
//!
//! With [`Kernels::Fused`] (the default) the loss is [`kernels::infonce()`], whose memory is linear
//! in the batch; [`Kernels::Reference`] composes it from the `B × B` logits.

use super::common::{Temperature, TemperatureConfig, check_batch, similarity};
use super::{
    LossInputs, LossOutput, Objective, anchor_similarities, info_nce, local_cross_entropy,
};
use crate::Result;
use crate::model::Kernels;
use crate::params::Scope;
use candle_core::Var;
use serde::{Deserialize, Serialize};

/// Settings of [`ClipLoss`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipLossConfig {
    /// The temperature (init τ = 0.07, learnable, scale ≤ 100).
    pub temperature: TemperatureConfig,
}

/// CLIP's symmetric InfoNCE. Terms: `image_to_text`, `text_to_image`.
pub struct ClipLoss {
    temperature: Temperature,
    kernels: Kernels,
}

impl ClipLoss {
    /// Creates (or restores) `logit_scale` under `s`; computes with the fused kernel.
    pub fn new(cfg: &ClipLossConfig, s: &Scope) -> Result<Self> {
        Self::with_kernels(cfg, s, Kernels::Fused)
    }

    /// As [`ClipLoss::new`], computing with the fused kernel or its reference.
    pub fn with_kernels(cfg: &ClipLossConfig, s: &Scope, kernels: Kernels) -> Result<Self> {
        Ok(Self {
            temperature: Temperature::new(&cfg.temperature, s)?,
            kernels,
        })
    }
}

impl Objective for ClipLoss {
    fn name(&self) -> &'static str {
        "clip"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "clip")?;
        if x.local.is_some() {
            // This rank's images against every caption, and its captions against every image.
            let scale = self.temperature.scale()?;
            let (i2t, t2i, start) = anchor_similarities(x.image, x.text, x.local)?;
            let i2t = local_cross_entropy(&i2t.broadcast_mul(&scale)?, start)?;
            let t2i = local_cross_entropy(&t2i.broadcast_mul(&scale)?, start)?;
            return Ok(LossOutput {
                loss: ((&i2t + &t2i)? * 0.5)?,
                terms: vec![("image_to_text".into(), i2t), ("text_to_image".into(), t2i)],
            });
        }
        if self.kernels == Kernels::Reference {
            let logits = similarity(x.image, x.text)?.broadcast_mul(&self.temperature.scale()?)?;
            return info_nce(&logits);
        }
        let terms = kernels::infonce(x.image, x.text, &self.temperature.scale()?)?;
        let (i2t, t2i) = (terms.get(0)?, terms.get(1)?);
        Ok(LossOutput {
            loss: ((&i2t + &t2i)? * 0.5)?,
            terms: vec![("image_to_text".into(), i2t), ("text_to_image".into(), t2i)],
        })
    }

    fn supports_local_loss(&self) -> bool {
        true
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.temperature.parameter().into_iter().collect()
    }

    fn after_step(&self) -> candle_core::Result<()> {
        self.temperature.clamp()
    }

    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        Ok(vec![("logit_scale".into(), self.temperature.value()?)])
    }
}

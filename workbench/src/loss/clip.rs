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

use super::{LossInputs, LossOutput, Objective, symmetric_cross_entropy};
use crate::Result;
use crate::params::{Init, Scope};
use candle_core::Var;
use serde::{Deserialize, Serialize};

/// Settings of [`ClipLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipLossConfig {
    /// Initial temperature τ; the learned parameter is `t = ln(1/τ)`.
    pub init_temperature: f64,
    /// Upper bound of the scale `exp(t)`.
    pub max_scale: f64,
    /// Keep the temperature fixed at its current value.
    pub freeze_temperature: bool,
}

impl Default for ClipLossConfig {
    fn default() -> Self {
        Self {
            init_temperature: 0.07,
            max_scale: 100.0,
            freeze_temperature: false,
        }
    }
}

/// CLIP's symmetric InfoNCE. Terms: `image_to_text`, `text_to_image`.
pub struct ClipLoss {
    logit_scale: Var,
    name: String,
    max_log_scale: f64,
    frozen: bool,
}

impl ClipLoss {
    /// Creates (or restores) `logit_scale` under `s`.
    pub fn new(cfg: &ClipLossConfig, s: &Scope) -> Result<Self> {
        if !(cfg.init_temperature > 0.0 && cfg.max_scale >= 1.0) {
            return Err(crate::Error::config(
                "loss.init_temperature",
                "need init_temperature > 0 and max_scale >= 1",
            ));
        }
        let init = (1.0 / cfg.init_temperature).ln();
        Ok(Self {
            logit_scale: s.var("logit_scale", (), Init::Const(init))?,
            name: s.path("logit_scale"),
            max_log_scale: cfg.max_scale.ln(),
            frozen: cfg.freeze_temperature,
        })
    }
}

impl Objective for ClipLoss {
    fn name(&self) -> &'static str {
        "clip"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let scale = self.logit_scale.as_tensor().exp()?;
        let logits = x.image.matmul(&x.text.t()?)?.broadcast_mul(&scale)?;
        let (i2t, t2i) = symmetric_cross_entropy(&logits)?;
        let loss = ((&i2t + &t2i)? * 0.5)?;
        Ok(LossOutput {
            loss,
            terms: vec![("image_to_text".into(), i2t), ("text_to_image".into(), t2i)],
        })
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        if self.frozen {
            Vec::new()
        } else {
            vec![(self.name.clone(), self.logit_scale.clone())]
        }
    }

    fn after_step(&self) -> candle_core::Result<()> {
        let clamped = self
            .logit_scale
            .as_tensor()
            .clamp(0.0, self.max_log_scale)?;
        self.logit_scale.set(&clamped)
    }

    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        let t = self.logit_scale.as_tensor().to_scalar::<f32>()?;
        Ok(vec![("logit_scale".into(), t.exp())])
    }
}

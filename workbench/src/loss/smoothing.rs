//! Softened negatives: InfoNCE with soft targets and an ε schedule.
//!
//! PyramidCLIP (Gao et al., 2022, arXiv:2204.14095): "soften the loss of negative samples
//! (unpaired samples) so as to weaken the strict constraint"; LightCLIP (Nie et al., 2023,
//! arXiv:2312.00674): "softening the label of negative samples progressively". Pairs in a batch
//! are not strictly one-to-one, so the target puts `1 − ε` on the positive and spreads `ε`
//! uniformly over the `B − 1` negatives:
//!
//! ```text
//! q_ij = 1 − ε  if i = j,   ε / (B − 1)  otherwise
//! L = ½ [ −(1/B) Σ_i Σ_j q_ij log softmax_j(l)_ij  + same over columns ],   l = exp(t)·x·yᵀ
//! ```
//!
//! ε follows a schedule over training progress `p ∈ [0, 1]` from `epsilon_start` to
//! `epsilon_end`: constant (start), linear, or cosine. ε = 0 is CLIP.

use super::common::{Temperature, TemperatureConfig, check_batch, soft_cross_entropy};
use super::{LossInputs, LossOutput, Objective, anchor_similarities, positive_mask};
use crate::Result;
use crate::params::Scope;
use candle_core::Var;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Shape of the ε schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `epsilon_start` throughout.
    Constant,
    /// Linear from start to end.
    Linear,
    /// Half-cosine from start to end.
    Cosine,
}

/// Settings of [`SoftTargetsLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoftTargetsConfig {
    /// ε at the start of training.
    pub epsilon_start: f64,
    /// ε at the end of training.
    pub epsilon_end: f64,
    /// How ε moves between them.
    pub schedule: Schedule,
    /// The temperature (as CLIP).
    pub temperature: TemperatureConfig,
}

impl Default for SoftTargetsConfig {
    fn default() -> Self {
        Self {
            epsilon_start: 0.0,
            epsilon_end: 0.2,
            schedule: Schedule::Linear,
            temperature: TemperatureConfig::default(),
        }
    }
}

impl SoftTargetsConfig {
    /// ε at training progress `p`.
    pub fn epsilon(&self, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        let (a, b) = (self.epsilon_start, self.epsilon_end);
        match self.schedule {
            Schedule::Constant => a,
            Schedule::Linear => a + (b - a) * p,
            Schedule::Cosine => b + (a - b) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        }
    }
}

/// Soft-target InfoNCE. Terms: `image_to_text`, `text_to_image`; scalar `epsilon`.
pub struct SoftTargetsLoss {
    cfg: SoftTargetsConfig,
    temperature: Temperature,
    last_epsilon: AtomicU64,
}

impl SoftTargetsLoss {
    /// Creates (or restores) the temperature.
    pub fn new(cfg: &SoftTargetsConfig, s: &Scope) -> Result<Self> {
        for (field, v) in [
            ("epsilon_start", cfg.epsilon_start),
            ("epsilon_end", cfg.epsilon_end),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(crate::Error::config(
                    format!("loss.{field}"),
                    format!("must be in [0, 1), got {v}"),
                ));
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            temperature: Temperature::new(&cfg.temperature, s)?,
            last_epsilon: AtomicU64::new(cfg.epsilon(0.0).to_bits()),
        })
    }
}

impl Objective for SoftTargetsLoss {
    fn name(&self) -> &'static str {
        "soft_targets"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let b = check_batch(x.image, x.text, "soft_targets")?;
        let eps = self.cfg.epsilon(x.progress);
        self.last_epsilon.store(eps.to_bits(), Ordering::Relaxed);
        let scale = self.temperature.scale()?;
        // The anchors of both directions (this rank's rows, under local losses).
        let (i2t, t2i, start) = anchor_similarities(x.image, x.text, x.local)?;
        let pos = positive_mask(i2t.dim(0)?, b, start, x.image.device())?;
        let targets = ((&pos * (1.0 - eps))? + ((1.0 - &pos)? * (eps / (b - 1) as f64))?)?;
        let i2t = soft_cross_entropy(&i2t.broadcast_mul(&scale)?, &targets)?;
        let t2i = soft_cross_entropy(&t2i.broadcast_mul(&scale)?, &targets)?;
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
        Ok(vec![
            ("logit_scale".into(), self.temperature.value()?),
            (
                "epsilon".into(),
                f64::from_bits(self.last_epsilon.load(Ordering::Relaxed)) as f32,
            ),
        ])
    }
}

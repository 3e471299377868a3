//! Multi-positive InfoNCE: every row of the same group is a positive.
//!
//! DreamLIP (Zheng et al., 2024, arXiv:2403.17007) builds "multiple positive pairs" from
//! sub-captions of one image; PLIP (Zuo et al., 2023, arXiv:2305.08386) contrasts by identity.
//! Both amount to supervised-contrastive targets (Khosla et al., 2020, arXiv:2004.11362, the
//! `L_out` form): with `P(i) = {j : g_j = g_i}` (always containing `i`),
//!
//! ```text
//! q_ij = 1/|P(i)| if j ∈ P(i), else 0
//! L = ½ [ −(1/B) Σ_i Σ_j q_ij log softmax_j(l)_ij  + same over columns ],   l = exp(t)·x·yᵀ
//! ```
//!
//! With all groups distinct this is CLIP. Group ids come from the dataset's
//! [`Sample::group`](crate::data::Sample::group): for `shapes`, images whose scenes have the same
//! canonical description, so a batch's repeated captions ("a large red circle") are positives of
//! every image they describe instead of false negatives.

use super::common::{Temperature, TemperatureConfig, check_batch, mask, soft_cross_entropy};
use super::{LossInputs, LossOutput, Needs, Objective, anchor_similarities};
use crate::Result;
use crate::params::Scope;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Settings of [`MultiPositiveLoss`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MultiPositiveConfig {
    /// The temperature (as CLIP).
    pub temperature: TemperatureConfig,
}

/// Multi-positive InfoNCE. Terms: `image_to_text`, `text_to_image`; scalar `positives`.
pub struct MultiPositiveLoss {
    temperature: Temperature,
}

impl MultiPositiveLoss {
    /// Creates (or restores) the temperature.
    pub fn new(cfg: &MultiPositiveConfig, s: &Scope) -> Result<Self> {
        Ok(Self {
            temperature: Temperature::new(&cfg.temperature, s)?,
        })
    }
}

/// Row-normalised same-group targets `(B, B)`.
pub fn group_targets(groups: &[u64], device: &Device) -> candle_core::Result<Tensor> {
    let b = groups.len();
    let same = mask(b, b, device, |i, j| groups[i] == groups[j])?;
    same.broadcast_div(&same.sum_keepdim(1)?)
}

impl Objective for MultiPositiveLoss {
    fn name(&self) -> &'static str {
        "multi_positive"
    }

    fn needs(&self) -> Needs {
        Needs {
            groups: true,
            ..Needs::default()
        }
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let b = check_batch(x.image, x.text, "multi_positive")?;
        let Some(groups) = x.groups else {
            candle_core::bail!("multi_positive needs a group id per row");
        };
        if groups.len() != b {
            candle_core::bail!("multi_positive: {} group ids for {b} rows", groups.len());
        }
        let scale = self.temperature.scale()?;
        // The anchors of both directions (this rank's rows, under local losses); the relation
        // is symmetric, so the anchors' rows of the targets serve both.
        let (i2t, t2i, start) = anchor_similarities(x.image, x.text, x.local)?;
        let targets = group_targets(groups, x.image.device())?.narrow(0, start, i2t.dim(0)?)?;
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
        Ok(vec![("logit_scale".into(), self.temperature.value()?)])
    }
}

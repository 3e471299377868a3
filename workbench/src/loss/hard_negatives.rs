//! InfoNCE with hard-negative captions appended as extra text columns.
//!
//! Structure-CLIP (Huang et al., 2024, arXiv:2305.06152) contrasts captions with scene-graph
//! "semantic negative examples"; SVLC (Doveh et al., 2023, arXiv:2211.11733) makes negatives by
//! rule-based manipulation of attributes and relations; NegCLIP (Yuksekgonul et al., 2023)
//! appends them to the batch. For each image `i` the loader supplies `K` captions that are
//! almost right — one colour, shape or size changed, a relation flipped, or two objects'
//! colours swapped (see `data::shapes::negatives`). Image→text is a softmax over the `B` batch
//! captions **and** all `B·K` negatives; text→image is CLIP's:
//!
//! ```text
//! l = exp(t)·x·[y ; n]ᵀ   (B × (B + B·K))
//! L = ½ [ −(1/B) Σ_i log softmax_j(l_i·)_i  −(1/B) Σ_j log softmax_i(l_·j)_j ]
//! ```
//!
//! Scalar `hard_negative_accuracy`: share of images whose own caption scores above all of its
//! own `K` negatives (the compositional test the negatives make).

use super::common::{Temperature, TemperatureConfig, check_batch, similarity};
use super::{LossInputs, LossOutput, Needs, Objective, anchor_similarities, local_cross_entropy};
use crate::Result;
use crate::params::Scope;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

/// Settings of [`HardNegativesLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardNegativesConfig {
    /// Negative captions per image.
    pub per_image: usize,
    /// The temperature (as CLIP).
    pub temperature: TemperatureConfig,
}

impl Default for HardNegativesConfig {
    fn default() -> Self {
        Self {
            per_image: 3,
            temperature: TemperatureConfig::default(),
        }
    }
}

/// InfoNCE with hard negatives. Terms: `image_to_text`, `text_to_image`.
pub struct HardNegativesLoss {
    cfg: HardNegativesConfig,
    temperature: Temperature,
    accuracy: AtomicU32,
}

impl HardNegativesLoss {
    /// Creates (or restores) the temperature.
    pub fn new(cfg: &HardNegativesConfig, s: &Scope) -> Result<Self> {
        if !(1..=16).contains(&cfg.per_image) {
            return Err(crate::Error::config(
                "loss.per_image",
                format!("must be in 1..=16, got {}", cfg.per_image),
            ));
        }
        Ok(Self {
            cfg: cfg.clone(),
            temperature: Temperature::new(&cfg.temperature, s)?,
            accuracy: AtomicU32::new(0),
        })
    }
}

impl Objective for HardNegativesLoss {
    fn name(&self) -> &'static str {
        "hard_negatives"
    }

    fn needs(&self) -> Needs {
        Needs {
            hard_negatives: self.cfg.per_image,
            ..Needs::default()
        }
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let b = check_batch(x.image, x.text, "hard_negatives")?;
        let Some(extra) = x.extra_text else {
            candle_core::bail!("hard_negatives needs negative captions");
        };
        let k = extra.dim(0)? / b;
        if k * b != extra.dim(0)? || k == 0 {
            candle_core::bail!("hard_negatives: {} negatives for {b} images", extra.dim(0)?);
        }
        let scale = self.temperature.scale()?;
        // The anchors of both directions (this rank's rows, under local losses): images
        // against every caption and every negative, captions against every image.
        let (main, t2i, start) = anchor_similarities(x.image, x.text, x.local)?; // (b, B)
        let rows = main.dim(0)?;
        let neg = similarity(&x.image.narrow(0, start, rows)?, extra)?; // (b, B·K)
        let hits = {
            let (m, n) = (
                main.detach().to_vec2::<f32>()?,
                neg.detach().to_vec2::<f32>()?,
            );
            (0..rows)
                .filter(|&i| {
                    let own = start + i;
                    n[i][own * k..(own + 1) * k].iter().all(|&v| m[i][own] > v)
                })
                .count()
        };
        self.accuracy
            .store((hits as f32 / rows as f32).to_bits(), Ordering::Relaxed);
        let logits = Tensor::cat(&[&main, &neg], 1)?.broadcast_mul(&scale)?;
        let i2t = local_cross_entropy(&logits, start)?;
        let t2i = local_cross_entropy(&t2i.broadcast_mul(&scale)?, start)?;
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
                "hard_negative_accuracy".into(),
                f32::from_bits(self.accuracy.load(Ordering::Relaxed)),
            ),
        ])
    }
}

//! InfoNCE with false negatives masked out of the denominators.
//!
//! G-SimCLR (Chakraborty et al., 2020, arXiv:2009.12007): "beneficial to not have images of the
//! same category in the same batch"; UniME (Gu et al., 2025, arXiv:2504.17432): "mitigate false
//! negative contamination". A negative `j` of anchor `i` is *false* when it describes the same
//! content; false negatives are removed from the softmax (their logits set to −∞), the positive
//! stays:
//!
//! ```text
//! F(i) = { j ≠ i : j is a false negative of i }
//! L = ½ [ −(1/B) Σ_i log ( e^{l_ii} / Σ_{j ∉ F(i)} e^{l_ij} )  + same over columns ]
//! ```
//!
//! `by` chooses what makes a false negative: `group` (same group id — e.g. same class or same
//! scene description), `caption` (identical caption text), or `similarity` (the two captions'
//! embeddings have cosine ≥ `threshold`, judged on detached embeddings).

use super::common::{NEG, Temperature, TemperatureConfig, check_batch, similarity};
use super::{LossInputs, LossOutput, Needs, Objective, anchor_similarities, local_cross_entropy};
use crate::Result;
use crate::params::Scope;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// What makes two rows' contents "the same".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FalseNegativeBy {
    /// Equal group ids.
    Group,
    /// Identical caption texts.
    Caption,
    /// Caption embeddings at least `threshold` cosine-similar.
    Similarity,
}

/// Settings of [`FnMaskLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FnMaskConfig {
    /// Criterion.
    pub by: FalseNegativeBy,
    /// Cosine threshold for `by = "similarity"`.
    pub threshold: f64,
    /// The temperature (as CLIP).
    pub temperature: TemperatureConfig,
}

impl Default for FnMaskConfig {
    fn default() -> Self {
        Self {
            by: FalseNegativeBy::Group,
            threshold: 0.95,
            temperature: TemperatureConfig::default(),
        }
    }
}

/// False-negative-masked InfoNCE. Terms: `image_to_text`, `text_to_image`; scalar
/// `masked_fraction` (share of off-diagonal cells masked in the last batch).
pub struct FnMaskLoss {
    cfg: FnMaskConfig,
    temperature: Temperature,
    masked: std::sync::atomic::AtomicU32,
}

impl FnMaskLoss {
    /// Creates (or restores) the temperature.
    pub fn new(cfg: &FnMaskConfig, s: &Scope) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            temperature: Temperature::new(&cfg.temperature, s)?,
            masked: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The false negatives of the anchors `start .. start + rows` against all `b` rows, row
    /// by row (an anchor's own positive is never one).
    fn false_negatives(
        &self,
        x: &LossInputs<'_>,
        b: usize,
        start: usize,
        rows: usize,
    ) -> candle_core::Result<Vec<bool>> {
        let same: Vec<bool> = match self.cfg.by {
            FalseNegativeBy::Group | FalseNegativeBy::Caption => {
                let (ids, what) = match self.cfg.by {
                    FalseNegativeBy::Group => (x.groups, "group ids"),
                    _ => (x.text_ids, "caption ids"),
                };
                let Some(ids) = ids else {
                    candle_core::bail!("fn_mask by {:?} needs {what}", self.cfg.by);
                };
                if ids.len() != b {
                    candle_core::bail!("fn_mask: {} {what} for {b} rows", ids.len());
                }
                (0..rows * b)
                    .map(|k| ids[start + k / b] == ids[k % b])
                    .collect()
            }
            FalseNegativeBy::Similarity => {
                let s = similarity(&x.text.narrow(0, start, rows)?, x.text)?
                    .detach()
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let th = self.cfg.threshold as f32;
                s.into_iter().map(|v| v >= th).collect()
            }
        };
        Ok((0..rows * b)
            .map(|k| start + k / b != k % b && same[k])
            .collect())
    }
}

impl Objective for FnMaskLoss {
    fn name(&self) -> &'static str {
        "fn_mask"
    }

    fn needs(&self) -> Needs {
        Needs {
            groups: self.cfg.by == FalseNegativeBy::Group,
            ..Needs::default()
        }
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let b = check_batch(x.image, x.text, "fn_mask")?;
        // The anchors of both directions (this rank's rows, under local losses).
        let (i2t, t2i, start) = anchor_similarities(x.image, x.text, x.local)?;
        let rows = i2t.dim(0)?;
        let fneg = self.false_negatives(x, b, start, rows)?;
        let count = fneg.iter().filter(|&&f| f).count();
        let frac = count as f32 / (rows * (b - 1)) as f32;
        self.masked
            .store(frac.to_bits(), std::sync::atomic::Ordering::Relaxed);
        let additive: Vec<f32> = fneg
            .iter()
            .map(|&f| if f { NEG as f32 } else { 0.0 })
            .collect();
        let additive = Tensor::from_vec(additive, (rows, b), x.image.device())?;
        let scale = self.temperature.scale()?;
        // The relation is symmetric, so an anchor's false negatives are the same rows whichever
        // side it is on.
        let direction = |s: &Tensor| s.broadcast_mul(&scale)?.add(&additive);
        let i2t = local_cross_entropy(&direction(&i2t)?, start)?;
        let t2i = local_cross_entropy(&direction(&t2i)?, start)?;
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
                "masked_fraction".into(),
                f32::from_bits(self.masked.load(std::sync::atomic::Ordering::Relaxed)),
            ),
        ])
    }
}

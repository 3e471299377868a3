//! Decoupled contrastive learning, and the alignment + uniformity pair.
//!
//! **DCL** (Yeh et al., 2022, "Decoupled Contrastive Learning", arXiv:2110.06848, Eq. 6): the
//! positive is removed from InfoNCE's denominator, decoupling the positive and negative
//! gradients (the InfoLOOB of CLOOB without the Hopfield retrieval):
//!
//! ```text
//! L = ½ [ −(1/B) Σ_i ( l_ii − log Σ_{j≠i} e^{l_ij} )  + same over columns ],   l = x·yᵀ / τ
//! ```
//!
//! The loss is unbounded below, so τ is fixed by default (0.1).
//!
//! **Alignment and uniformity** (Wang & Isola, 2020, "Understanding Contrastive Representation
//! Learning through Alignment and Uniformity on the Hypersphere", arXiv:2005.10242, §4):
//!
//! ```text
//! L_align   = (1/B) Σ_i ‖x_i − y_i‖₂^α
//! L_uniform(u) = log ( 1/(B(B−1)) Σ_{i≠j} e^{−t ‖u_i − u_j‖²} )
//! L = w_align · L_align + w_uniform · ½ (L_uniform(x) + L_uniform(y))
//! ```
//!
//! with the paper's defaults α = 2, t = 2, equal weights.
//!
//! DCL has a local loss (`train.local_loss`); alignment–uniformity has none: `L_uniform` is the
//! log of a mean over every pair of the batch, and no split of it by rows has the ranks' mean
//! equal to it.

use super::cloob::loob_rows_from;
use super::common::{
    NEG, Temperature, TemperatureConfig, check_batch, eye, logsumexp_last, similarity,
};
use super::{LossInputs, LossOutput, Objective, anchor_similarities};
use crate::Result;
use crate::params::Scope;
use candle_core::{D, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Settings of [`DclLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DclConfig {
    /// The temperature (fixed at 0.1 by default).
    pub temperature: TemperatureConfig,
}

impl Default for DclConfig {
    fn default() -> Self {
        Self {
            temperature: TemperatureConfig::fixed(0.1),
        }
    }
}

/// Decoupled contrastive loss. Terms: `image_to_text`, `text_to_image`.
pub struct DclLoss {
    temperature: Temperature,
}

impl DclLoss {
    /// Creates (or restores) the temperature.
    pub fn new(cfg: &DclConfig, s: &Scope) -> Result<Self> {
        Ok(Self {
            temperature: Temperature::new(&cfg.temperature, s)?,
        })
    }
}

impl Objective for DclLoss {
    fn name(&self) -> &'static str {
        "dcl"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "dcl")?;
        let scale = self.temperature.scale()?;
        // The anchors of both directions (this rank's, under local losses), each against every
        // row of the other side.
        let (i2t, t2i, start) = anchor_similarities(x.image, x.text, x.local)?;
        let i2t = loob_rows_from(&i2t.broadcast_mul(&scale)?, start, true)?;
        let t2i = loob_rows_from(&t2i.broadcast_mul(&scale)?, start, true)?;
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

/// Settings of [`AlignUniformLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlignUniformConfig {
    /// Exponent α of the alignment distance.
    pub alpha: f64,
    /// Scale t of the uniformity kernel.
    pub t: f64,
    /// Weight of the alignment term.
    pub align_weight: f64,
    /// Weight of the uniformity term.
    pub uniform_weight: f64,
}

impl Default for AlignUniformConfig {
    fn default() -> Self {
        Self {
            alpha: 2.0,
            t: 2.0,
            align_weight: 1.0,
            uniform_weight: 1.0,
        }
    }
}

/// Alignment + uniformity. Terms: `align`, `uniform_image`, `uniform_text`.
pub struct AlignUniformLoss {
    cfg: AlignUniformConfig,
}

impl AlignUniformLoss {
    /// No learnable parameters.
    pub fn new(cfg: &AlignUniformConfig, _s: &Scope) -> Result<Self> {
        if !(cfg.alpha > 0.0 && cfg.t > 0.0) {
            return Err(crate::Error::config(
                "loss.alpha",
                "alpha and t must be positive",
            ));
        }
        Ok(Self { cfg: cfg.clone() })
    }
}

/// `log mean_{i≠j} exp(−t‖u_i − u_j‖²)` for L2-normalised rows (`‖u_i − u_j‖² = 2 − 2u_i·u_j`).
pub fn uniformity(u: &Tensor, t: f64) -> candle_core::Result<Tensor> {
    let b = u.dim(0)?;
    let sq = ((1.0 - similarity(u, u)?)? * 2.0)?;
    let k = ((sq * -t)? + (eye(b, u.device())? * NEG)?)?;
    let lse = logsumexp_last(&k.flatten_all()?.unsqueeze(0)?)?.squeeze(0)?;
    lse - ((b * (b - 1)) as f64).ln()
}

impl Objective for AlignUniformLoss {
    fn name(&self) -> &'static str {
        "align_uniform"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "align_uniform")?;
        let d2 = (x.image - x.text)?.sqr()?.sum(D::Minus1)?; // ‖x_i − y_i‖²
        let align = if (self.cfg.alpha - 2.0).abs() < f64::EPSILON {
            d2.mean_all()?
        } else {
            (d2 + 1e-12)?.powf(self.cfg.alpha / 2.0)?.mean_all()?
        };
        let ui = uniformity(x.image, self.cfg.t)?;
        let ut = uniformity(x.text, self.cfg.t)?;
        let loss = ((&align * self.cfg.align_weight)?
            + ((&ui + &ut)? * (0.5 * self.cfg.uniform_weight))?)?;
        Ok(LossOutput {
            loss,
            terms: vec![
                ("align".into(), align),
                ("uniform_image".into(), ui),
                ("uniform_text".into(), ut),
            ],
        })
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

//! Cross-modal plus intra-modal contrast (TCL's CMA + IMC terms).
//!
//! Yang et al., 2022, "Vision-Language Pre-Training with Triple Contrastive Learning"
//! (arXiv:2202.10401), §3.2: cross-modal alignment alone fails "to ensure that similar inputs
//! from the same modality stay close by", so TCL adds intra-modal contrast between two views of
//! each image and of each text. Here the second image view is a second augmentation of the
//! image and the second text view is another caption of it (a paraphrase):
//!
//! ```text
//! L = w_cross · InfoNCE(x, y) + w_image · InfoNCE(x, x') + w_text · InfoNCE(y, y')
//! ```
//!
//! each InfoNCE symmetric (as CLIP), all with one learnable temperature. TCL's third term
//! (local mutual information) and its momentum encoders are not part of this objective.

use super::common::{Temperature, TemperatureConfig, check_batch};
use super::{
    LocalRows, LossInputs, LossOutput, Needs, Objective, anchor_similarities, local_cross_entropy,
};
use crate::Result;
use crate::params::Scope;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Settings of [`TclLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TclConfig {
    /// Weight of image–text contrast.
    pub cross_weight: f64,
    /// Weight of image–image contrast.
    pub image_weight: f64,
    /// Weight of text–text contrast.
    pub text_weight: f64,
    /// The temperature (as CLIP), shared by the three terms.
    pub temperature: TemperatureConfig,
}

impl Default for TclConfig {
    fn default() -> Self {
        Self {
            cross_weight: 1.0,
            image_weight: 0.5,
            text_weight: 0.5,
            temperature: TemperatureConfig::default(),
        }
    }
}

/// TCL-style objective. Terms: `cross_modal`, `image_image`, `text_text`.
pub struct TclLoss {
    cfg: TclConfig,
    temperature: Temperature,
}

impl TclLoss {
    /// Creates (or restores) the temperature.
    pub fn new(cfg: &TclConfig, s: &Scope) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            temperature: Temperature::new(&cfg.temperature, s)?,
        })
    }

    /// Symmetric InfoNCE between two views, over the anchors of both (this rank's rows,
    /// under local losses).
    fn contrast(
        &self,
        a: &Tensor,
        b: &Tensor,
        local: Option<LocalRows>,
    ) -> candle_core::Result<Tensor> {
        let scale = self.temperature.scale()?;
        let (ab, ba, start) = anchor_similarities(a, b, local)?;
        let ab = local_cross_entropy(&ab.broadcast_mul(&scale)?, start)?;
        let ba = local_cross_entropy(&ba.broadcast_mul(&scale)?, start)?;
        (ab + ba)? * 0.5
    }
}

impl Objective for TclLoss {
    fn name(&self) -> &'static str {
        "tcl"
    }

    fn needs(&self) -> Needs {
        Needs {
            second_views: true,
            ..Needs::default()
        }
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "tcl")?;
        let (Some(image2), Some(text2)) = (x.image2, x.text2) else {
            candle_core::bail!("tcl needs a second view of every image and a second caption");
        };
        let cross = self.contrast(x.image, x.text, x.local)?;
        let image = self.contrast(x.image, image2, x.local)?;
        let text = self.contrast(x.text, text2, x.local)?;
        let loss = (((&cross * self.cfg.cross_weight)? + (&image * self.cfg.image_weight)?)?
            + (&text * self.cfg.text_weight)?)?;
        Ok(LossOutput {
            loss,
            terms: vec![
                ("cross_modal".into(), cross),
                ("image_image".into(), image),
                ("text_text".into(), text),
            ],
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

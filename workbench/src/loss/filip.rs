//! FILIP: token-wise late interaction.
//!
//! Yao et al., 2022, "FILIP: Fine-grained Interactive Language-Image Pre-Training"
//! (arXiv:2111.07783), §3.1.1, Eq. (4)–(5).
//!
//! With projected, normalised patch embeddings `x_p` (image `i`, `n₁` patches) and token
//! embeddings `y_t` (text `j`, its `n₂` non-padding tokens):
//!
//! ```text
//! s^I_ij = (1/n₁) Σ_p max_t x_p·y_t        (each patch finds its best word)
//! s^T_ij = (1/n₂) Σ_t max_p x_p·y_t        (each word finds its best patch)
//! L = ½ [ CE_rows(s·s^I) + CE_rows(s·(s^T)ᵀ) ]       (image→text over texts, text→image over images)
//! ```
//!
//! with CLIP's learnable temperature `s`. Padding positions never take part: they are excluded
//! from the max over tokens and from the mean over tokens. The BOS position is excluded too — it
//! is the same first token for every caption, so under the causal text tower its embedding is
//! identical for all texts and carries no information. Memory is `O(B²·n₁·n₂)`.

use super::common::{NEG, Temperature, TemperatureConfig, check_batch};
use super::{
    LossInputs, LossOutput, Needs, Objective, local_cross_entropy, symmetric_cross_entropy,
};
use crate::Result;
use crate::params::Scope;
use candle_core::{D, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Settings of [`FilipLoss`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilipConfig {
    /// The temperature (init τ = 0.07, learnable).
    pub temperature: TemperatureConfig,
}

/// FILIP. Terms: `image_to_text`, `text_to_image`.
pub struct FilipLoss {
    temperature: Temperature,
}

impl FilipLoss {
    /// Creates (or restores) `logit_scale` under `s`.
    pub fn new(cfg: &FilipConfig, s: &Scope) -> Result<Self> {
        Ok(Self {
            temperature: Temperature::new(&cfg.temperature, s)?,
        })
    }
}

/// The word mask FILIP uses: the padding mask with the BOS column cleared, `(B, T)`.
pub fn word_mask(text_mask: &Tensor) -> candle_core::Result<Tensor> {
    let t = text_mask.dim(1)?;
    let zero = text_mask.narrow(1, 0, 1)?.zeros_like()?;
    Tensor::cat(&[&zero, &text_mask.narrow(1, 1, t - 1)?], 1)
}

/// `(s^I, s^T)`, both `(B_img, B_txt)`, from patches `(B, N, E)`, tokens `(B', T, E)` and a
/// `(B', T)` 0/1 mask of the tokens that take part.
pub fn late_interaction(
    patches: &Tensor,
    tokens: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (bi, n, e) = patches.dims3()?;
    let (bt, t, _) = tokens.dims3()?;
    let sim = patches
        .reshape((bi * n, e))?
        .matmul(&tokens.reshape((bt * t, e))?.t()?)?
        .reshape((bi, n, bt, t))?; // (Bi, N, Bt, T)
    let m = mask.reshape((1, 1, bt, t))?;
    // Each patch's best non-padding token, averaged over patches.
    let masked = sim.broadcast_add(&((1.0 - &m)? * NEG)?)?;
    let s_i = masked.max(D::Minus1)?.mean(1)?; // (Bi, Bt)
    // Each token's best patch, averaged over the text's own tokens.
    let best_patch = sim.max(1)?; // (Bi, Bt, T)
    let m2 = mask.reshape((1, bt, t))?;
    let count = mask.sum(1)?.reshape((1, bt))?;
    let s_t = best_patch
        .broadcast_mul(&m2)?
        .sum(D::Minus1)?
        .broadcast_div(&count)?; // (Bi, Bt)
    Ok((s_i, s_t))
}

impl Objective for FilipLoss {
    fn name(&self) -> &'static str {
        "filip"
    }

    fn needs(&self) -> Needs {
        Needs {
            tokens: true,
            ..Needs::default()
        }
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "filip")?;
        let (Some(patches), Some(tokens), Some(mask)) =
            (x.image_tokens, x.text_tokens, x.text_mask)
        else {
            candle_core::bail!("filip needs patch and token embeddings with the text mask");
        };
        let scale = self.temperature.scale()?;
        if let Some(l) = x.local {
            // This rank's images against every caption (s_i's rows), and its captions against
            // every image (s_t's columns): two (b, B) blocks instead of (B, B).
            let rows = |t: &Tensor| t.narrow(0, l.start, l.len);
            let (s_i, _) = late_interaction(&rows(patches)?, tokens, &word_mask(mask)?)?;
            let (_, s_t) = late_interaction(patches, &rows(tokens)?, &word_mask(&rows(mask)?)?)?;
            let i2t = local_cross_entropy(&s_i.broadcast_mul(&scale)?, l.start)?;
            let t2i = local_cross_entropy(&s_t.t()?.contiguous()?.broadcast_mul(&scale)?, l.start)?;
            return Ok(LossOutput {
                loss: ((&i2t + &t2i)? * 0.5)?,
                terms: vec![("image_to_text".into(), i2t), ("text_to_image".into(), t2i)],
            });
        }
        let (s_i, s_t) = late_interaction(patches, tokens, &word_mask(mask)?)?;
        let (i2t, _) = symmetric_cross_entropy(&s_i.broadcast_mul(&scale)?)?;
        let (_, t2i) = symmetric_cross_entropy(&s_t.broadcast_mul(&scale)?)?;
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

//! Contrastive objectives.
//!
//! An [`Objective`] receives everything a loss may need ([`LossInputs`]: normalised global
//! embeddings, and optionally per-token embeddings with masks, group ids and extra negatives) and
//! returns the scalar loss **with its named terms** ([`LossOutput`]), each logged as its own curve.
//!
//! An objective owns its learnable parameters (temperature, bias, …). It creates them in the
//! run's parameter store under `loss.<name>.*` when built, with its own init policy; because the
//! store is get-or-create, building the same objective again later restores the trained values.
//! Swapping objectives therefore never touches the model.
//!
//! Built-in objectives are listed in [`LossConfig`] (serde-tagged by `kind`). A user objective
//! is any type implementing [`Objective`], passed to the trainer directly.

pub mod clip;

pub use clip::{ClipLoss, ClipLossConfig};

use crate::Result;
use crate::params::Scope;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// What an objective sees for one batch. Row `i` of `image` and `text` is a positive pair.
#[derive(Clone, Copy, Debug)]
pub struct LossInputs<'a> {
    /// L2-normalised image embeddings `(B, E)`.
    pub image: &'a Tensor,
    /// L2-normalised text embeddings `(B, E)`.
    pub text: &'a Tensor,
    /// L2-normalised projected patch embeddings `(B, N, E)`, when the objective asks for tokens.
    pub image_tokens: Option<&'a Tensor>,
    /// L2-normalised projected token embeddings `(B, T, E)`, when the objective asks for tokens.
    pub text_tokens: Option<&'a Tensor>,
    /// `(B, T)` f32, 1 for real tokens and 0 for padding.
    pub text_mask: Option<&'a Tensor>,
    /// Group id per row (several captions of one image, or class labels).
    pub groups: Option<&'a [u64]>,
    /// Extra negative captions' embeddings `(M, E)`.
    pub extra_text: Option<&'a Tensor>,
}

impl<'a> LossInputs<'a> {
    /// Inputs with only the global embeddings.
    pub fn new(image: &'a Tensor, text: &'a Tensor) -> Self {
        Self {
            image,
            text,
            image_tokens: None,
            text_tokens: None,
            text_mask: None,
            groups: None,
            extra_text: None,
        }
    }
}

/// An objective's value: the total and its named parts.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The scalar to minimise.
    pub loss: Tensor,
    /// Named scalar terms (e.g. `image_to_text`, `text_to_image`), for logging.
    pub terms: Vec<(String, Tensor)>,
}

/// A contrastive objective. Implement it in your own crate or notebook to train with a new loss.
pub trait Objective: Send {
    /// Short stable name (`"clip"`); parameters live under `loss.<name>.*`.
    fn name(&self) -> &str;

    /// Whether [`LossInputs::image_tokens`] / `text_tokens` are needed (costs extra compute).
    fn needs_tokens(&self) -> bool {
        false
    }

    /// The loss and its terms for one batch.
    fn forward(&self, inputs: &LossInputs<'_>) -> candle_core::Result<LossOutput>;

    /// The objective's learnable parameters, by full name, for the optimizer.
    fn parameters(&self) -> Vec<(String, Var)>;

    /// Called after every optimizer step, e.g. to clamp a temperature (open_clip semantics).
    fn after_step(&self) -> candle_core::Result<()> {
        Ok(())
    }

    /// Human-facing values of its parameters to log (e.g. `logit_scale` as `exp(t)`).
    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        Ok(Vec::new())
    }
}

/// Built-in objectives, as written in run configs (`[loss] kind = "clip"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossConfig {
    /// CLIP symmetric InfoNCE with learnable temperature.
    Clip(ClipLossConfig),
}

impl Default for LossConfig {
    fn default() -> Self {
        Self::Clip(ClipLossConfig::default())
    }
}

impl LossConfig {
    /// The objective's stable name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Clip(_) => "clip",
        }
    }

    /// Builds the objective; its parameters are created (or restored) under `loss.<name>`.
    pub fn build(&self, loss_scope: &Scope) -> Result<Box<dyn Objective>> {
        let s = loss_scope.pp(self.name());
        Ok(match self {
            Self::Clip(c) => Box::new(ClipLoss::new(c, &s)?),
        })
    }
}

/// Symmetric cross-entropy of a square logits matrix whose diagonal holds the positives:
/// returns `(mean_i −log softmax_row(i)[i], mean_j −log softmax_col(j)[j])`.
pub fn symmetric_cross_entropy(logits: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let n = logits.dim(0)?;
    let labels = Tensor::arange(0u32, n as u32, logits.device())?.unsqueeze(1)?;
    let diag_nll = |l: &Tensor| -> candle_core::Result<Tensor> {
        crate::model::layers::log_softmax_last(l)?
            .gather(&labels, 1)?
            .mean_all()?
            .neg()
    };
    Ok((diag_nll(logits)?, diag_nll(&logits.t()?.contiguous()?)?))
}

//! Contrastive objectives: the [`Objective`] trait, the built-in zoo, and composition.
//!
//! An objective receives everything a loss may need ([`LossInputs`]: L2-normalised global
//! embeddings; on request per-patch / per-token embeddings with the padding mask, group ids,
//! hard-negative captions, second views) and returns the scalar loss **with its named terms**
//! ([`LossOutput`]), each logged as its own curve. It says what it needs in [`Objective::needs`];
//! the trainer computes only that.
//!
//! An objective owns its learnable parameters (temperature, bias, …). It creates them in the
//! run's parameter store under `loss.<name>.*` when built, with its own init policy; because the
//! store is get-or-create, building the same objective again later restores the trained values.
//! Swapping objectives therefore never touches the model, and swapping back restores them.
//!
//! | `kind` | objective | seed paper |
//! |---|---|---|
//! | `clip` | symmetric InfoNCE, learnable temperature | CLIP (Radford et al., 2021) |
//! | `siglip` | pairwise sigmoid, learnable temperature and bias | SigLIP (Zhai et al., 2023) |
//! | `cloob` | InfoLOOB + modern Hopfield retrieval (both switchable) | CLOOB (Fürst et al., 2022) |
//! | `filip` | token-wise late interaction | FILIP (Yao et al., 2022) |
//! | `focal` | focal loss in place of cross-entropy | RO-ViT (Kim et al., 2023) |
//! | `soft_targets` | softened negatives, ε schedule | PyramidCLIP, LightCLIP |
//! | `triplet` | ranking hinge, random / hardest / semi-hard mining | VSE++ (Faghri et al., 2018) |
//! | `multi_positive` | InfoNCE with every same-group row a positive | DreamLIP, PLIP (SupCon targets) |
//! | `fn_mask` | InfoNCE with false negatives masked out | G-SimCLR, UniME |
//! | `hard_negatives` | InfoNCE with rule-made negative captions as extra columns | Structure-CLIP, SVLC |
//! | `dcl` | decoupled contrastive (positive not in the denominator) | Yeh et al., 2022 |
//! | `align_uniform` | alignment + uniformity | Wang & Isola, 2020 |
//! | `tcl` | cross-modal + image–image + text–text InfoNCE | TCL (Yang et al., 2022) |
//! | `sum` | weighted sum of any of the above | — |
//!
//! A user objective is any type implementing [`Objective`], handed to
//! [`Trainer::set_objective`](crate::train::Trainer::set_objective).

pub mod clip;
pub mod cloob;
pub mod common;
pub mod composite;
pub mod decoupled;
pub mod filip;
pub mod focal;
pub mod hard_negatives;
pub mod intra_modal;
pub mod masking;
pub mod multi_positive;
pub mod siglip;
pub mod smoothing;
pub mod triplet;

pub use clip::{ClipLoss, ClipLossConfig};
pub use common::TemperatureConfig;

use crate::Result;
use crate::model::Kernels;
use crate::params::Scope;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// What an objective needs beyond the global embeddings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    /// Per-patch and per-token projected embeddings (and the text padding mask).
    pub tokens: bool,
    /// A group id per row (rows of one group are positives of each other).
    pub groups: bool,
    /// Rule-made negative captions per image.
    pub hard_negatives: usize,
    /// A second augmented view of every image and a second caption (a paraphrase).
    pub second_views: bool,
}

impl Needs {
    /// Everything either needs.
    #[must_use]
    pub fn union(self, o: Self) -> Self {
        Self {
            tokens: self.tokens || o.tokens,
            groups: self.groups || o.groups,
            hard_negatives: self.hard_negatives.max(o.hard_negatives),
            second_views: self.second_views || o.second_views,
        }
    }
}

/// What an objective sees for one batch. Row `i` of `image` and `text` is a positive pair.
#[derive(Clone, Copy, Debug)]
pub struct LossInputs<'a> {
    /// L2-normalised image embeddings `(B, E)`.
    pub image: &'a Tensor,
    /// L2-normalised text embeddings `(B, E)`.
    pub text: &'a Tensor,
    /// L2-normalised projected patch embeddings `(B, N, E)` (class token excluded).
    pub image_tokens: Option<&'a Tensor>,
    /// L2-normalised projected token embeddings `(B, T, E)`.
    pub text_tokens: Option<&'a Tensor>,
    /// `(B, T)` f32, 1 for real tokens (BOS through EOS) and 0 for padding.
    pub text_mask: Option<&'a Tensor>,
    /// Group id per row: rows with equal ids describe the same content.
    pub groups: Option<&'a [u64]>,
    /// Id per row of the exact caption text (equal texts, equal ids).
    pub text_ids: Option<&'a [u64]>,
    /// Hard-negative caption embeddings `(B·K, E)`: rows `i·K .. (i+1)·K` belong to image `i`.
    pub extra_text: Option<&'a Tensor>,
    /// Embeddings of a second augmented view of each image `(B, E)`.
    pub image2: Option<&'a Tensor>,
    /// Embeddings of a second caption of each image `(B, E)`.
    pub text2: Option<&'a Tensor>,
    /// Fraction of the training schedule completed, in `[0, 1]` (for schedules such as ε).
    pub progress: f64,
    /// Optimizer steps completed (seeds per-step random choices, e.g. random negatives).
    pub step: usize,
    /// On one rank of a data-parallel run with `train.local_loss`: this rank's rows of the
    /// gathered batch. An objective that [`Objective::supports_local_loss`] then computes only
    /// those rows' share of the loss, against every row of the other side (OpenCLIP's
    /// `local_loss`), as the mean over those rows — so that the mean over ranks is the loss of
    /// the whole batch. `None` everywhere else.
    pub local: Option<LocalRows>,
}

/// The rows `start .. start + len` of a gathered batch that belong to one rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRows {
    /// First row.
    pub start: usize,
    /// Number of rows.
    pub len: usize,
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
            text_ids: None,
            extra_text: None,
            image2: None,
            text2: None,
            progress: 0.0,
            step: 0,
            local: None,
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

    /// What the objective needs besides the global embeddings (costs extra compute).
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// The loss and its terms for one batch.
    fn forward(&self, inputs: &LossInputs<'_>) -> candle_core::Result<LossOutput>;

    /// The objective's learnable parameters, by full name, for the optimizer.
    fn parameters(&self) -> Vec<(String, Var)>;

    /// Called after every optimizer step, e.g. to clamp a temperature (open_clip semantics).
    fn after_step(&self) -> candle_core::Result<()> {
        Ok(())
    }

    /// Human-facing values of its parameters and schedules to log (e.g. `logit_scale` = `exp(t)`).
    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        Ok(Vec::new())
    }

    /// Whether [`Objective::forward`] honours [`LossInputs::local`] (`train.local_loss`).
    /// An objective whose loss couples every row with every other (a Hopfield retrieval over the
    /// batch, say) keeps the default, `false`, and cannot be used with `train.local_loss`.
    fn supports_local_loss(&self) -> bool {
        false
    }

    /// Called once when the objective is swapped in mid-run, with the current embeddings of the
    /// probe batch — e.g. SigLIP sets a freshly created bias from the current logits.
    fn on_activate(&self, _inputs: &LossInputs<'_>) -> candle_core::Result<()> {
        Ok(())
    }
}

/// Built-in objectives, as written in run configs (`[loss] kind = "clip"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossConfig {
    /// CLIP symmetric InfoNCE.
    Clip(ClipLossConfig),
    /// SigLIP pairwise sigmoid.
    Siglip(siglip::SiglipConfig),
    /// CLOOB.
    Cloob(cloob::CloobConfig),
    /// FILIP late interaction.
    Filip(filip::FilipConfig),
    /// Focal contrastive.
    Focal(focal::FocalConfig),
    /// Softened negatives with an ε schedule.
    SoftTargets(smoothing::SoftTargetsConfig),
    /// Triplet / ranking hinge.
    Triplet(triplet::TripletConfig),
    /// Multi-positive InfoNCE.
    MultiPositive(multi_positive::MultiPositiveConfig),
    /// InfoNCE with false negatives masked.
    FnMask(masking::FnMaskConfig),
    /// InfoNCE with hard-negative captions.
    HardNegatives(hard_negatives::HardNegativesConfig),
    /// Decoupled contrastive.
    Dcl(decoupled::DclConfig),
    /// Alignment + uniformity.
    AlignUniform(decoupled::AlignUniformConfig),
    /// Cross-modal + intra-modal InfoNCE.
    Tcl(intra_modal::TclConfig),
    /// Weighted sum of objectives.
    Sum(composite::SumConfig),
}

impl Default for LossConfig {
    fn default() -> Self {
        Self::Clip(ClipLossConfig::default())
    }
}

impl LossConfig {
    /// The objective's stable name (its parameters live under `loss.<name>`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Clip(_) => "clip",
            Self::Siglip(_) => "siglip",
            Self::Cloob(_) => "cloob",
            Self::Filip(_) => "filip",
            Self::Focal(_) => "focal",
            Self::SoftTargets(_) => "soft_targets",
            Self::Triplet(_) => "triplet",
            Self::MultiPositive(_) => "multi_positive",
            Self::FnMask(_) => "fn_mask",
            Self::HardNegatives(_) => "hard_negatives",
            Self::Dcl(_) => "dcl",
            Self::AlignUniform(_) => "align_uniform",
            Self::Tcl(_) => "tcl",
            Self::Sum(_) => "sum",
        }
    }

    /// Names of the objectives it consists of (the parts of a sum, else its own name); their
    /// parameters live under `loss.<name>`.
    pub fn names(&self) -> Vec<&'static str> {
        match self {
            Self::Sum(s) => s.parts.iter().flat_map(|p| p.loss.names()).collect(),
            other => vec![other.name()],
        }
    }

    /// Every built-in objective with its default settings (`sum` excluded).
    pub fn builtins() -> Vec<Self> {
        vec![
            Self::Clip(ClipLossConfig::default()),
            Self::Siglip(siglip::SiglipConfig::default()),
            Self::Cloob(cloob::CloobConfig::default()),
            Self::Filip(filip::FilipConfig::default()),
            Self::Focal(focal::FocalConfig::default()),
            Self::SoftTargets(smoothing::SoftTargetsConfig::default()),
            Self::Triplet(triplet::TripletConfig::default()),
            Self::MultiPositive(multi_positive::MultiPositiveConfig::default()),
            Self::FnMask(masking::FnMaskConfig::default()),
            Self::HardNegatives(hard_negatives::HardNegativesConfig::default()),
            Self::Dcl(decoupled::DclConfig::default()),
            Self::AlignUniform(decoupled::AlignUniformConfig::default()),
            Self::Tcl(intra_modal::TclConfig::default()),
        ]
    }

    /// The built-in objective called `name`, with default settings.
    pub fn by_name(name: &str) -> Result<Self> {
        Self::builtins()
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::builtins().iter().map(Self::name).collect();
                crate::Error::config(
                    "loss.kind",
                    format!("unknown objective {name:?}; expected one of {names:?} or \"sum\""),
                )
            })
    }

    /// Builds the objective; its parameters are created (or restored) under `loss.<name>`.
    /// Objectives with a fused kernel (CLIP, SigLIP) use it.
    pub fn build(&self, loss_scope: &Scope) -> Result<Box<dyn Objective>> {
        self.build_with(loss_scope, Kernels::Fused)
    }

    /// As [`LossConfig::build`], with the fused kernels or their references (the run's
    /// `model.kernels`).
    pub fn build_with(&self, loss_scope: &Scope, kernels: Kernels) -> Result<Box<dyn Objective>> {
        let s = loss_scope.pp(self.name());
        Ok(match self {
            Self::Clip(c) => Box::new(ClipLoss::with_kernels(c, &s, kernels)?),
            Self::Siglip(c) => Box::new(siglip::SiglipLoss::with_kernels(c, &s, kernels)?),
            Self::Cloob(c) => Box::new(cloob::CloobLoss::new(c, &s)?),
            Self::Filip(c) => Box::new(filip::FilipLoss::new(c, &s)?),
            Self::Focal(c) => Box::new(focal::FocalLoss::new(c, &s)?),
            Self::SoftTargets(c) => Box::new(smoothing::SoftTargetsLoss::new(c, &s)?),
            Self::Triplet(c) => Box::new(triplet::TripletLoss::new(c, &s)?),
            Self::MultiPositive(c) => Box::new(multi_positive::MultiPositiveLoss::new(c, &s)?),
            Self::FnMask(c) => Box::new(masking::FnMaskLoss::new(c, &s)?),
            Self::HardNegatives(c) => Box::new(hard_negatives::HardNegativesLoss::new(c, &s)?),
            Self::Dcl(c) => Box::new(decoupled::DclLoss::new(c, &s)?),
            Self::AlignUniform(c) => Box::new(decoupled::AlignUniformLoss::new(c, &s)?),
            Self::Tcl(c) => Box::new(intra_modal::TclLoss::new(c, &s)?),
            Self::Sum(c) => Box::new(composite::SumLoss::with_kernels(c, loss_scope, kernels)?),
        })
    }
}

/// Where a `[loss]` TOML table is wrong: the dotted path below `loss` and what is expected.
/// (Serde reports errors inside a tagged enum without their path; this looks again per kind.)
pub fn diagnose_toml(value: &toml::Value) -> Option<(String, String)> {
    fn check<T: serde::de::DeserializeOwned>(v: toml::Value) -> Option<(String, String)> {
        serde_path_to_error::deserialize::<_, T>(v)
            .err()
            .map(|e| (e.path().to_string(), e.into_inner().to_string()))
    }
    let mut table = value.as_table()?.clone();
    let kind = match table.remove("kind") {
        Some(toml::Value::String(k)) => k,
        Some(other) => {
            return Some((
                "kind".into(),
                format!("expected a string, found {}", other.type_str()),
            ));
        }
        None => {
            return Some((
                "kind".into(),
                "missing; name the objective, e.g. kind = \"clip\"".into(),
            ));
        }
    };
    let v = toml::Value::Table(table.clone());
    match kind.as_str() {
        "clip" => check::<ClipLossConfig>(v),
        "siglip" => check::<siglip::SiglipConfig>(v),
        "cloob" => check::<cloob::CloobConfig>(v),
        "filip" => check::<filip::FilipConfig>(v),
        "focal" => check::<focal::FocalConfig>(v),
        "soft_targets" => check::<smoothing::SoftTargetsConfig>(v),
        "triplet" => check::<triplet::TripletConfig>(v),
        "multi_positive" => check::<multi_positive::MultiPositiveConfig>(v),
        "fn_mask" => check::<masking::FnMaskConfig>(v),
        "hard_negatives" => check::<hard_negatives::HardNegativesConfig>(v),
        "dcl" => check::<decoupled::DclConfig>(v),
        "align_uniform" => check::<decoupled::AlignUniformConfig>(v),
        "tcl" => check::<intra_modal::TclConfig>(v),
        "sum" => {
            if let Some(bad) = table.keys().find(|k| *k != "parts") {
                return Some((bad.clone(), "unknown field; a sum has only `parts`".into()));
            }
            let parts = table.get("parts").and_then(toml::Value::as_array)?;
            for (i, part) in parts.iter().enumerate() {
                let Some(t) = part.as_table() else {
                    return Some((
                        format!("parts[{i}]"),
                        "expected a table { weight, loss }".into(),
                    ));
                };
                if let Some(bad) = t.keys().find(|k| *k != "weight" && *k != "loss") {
                    return Some((
                        format!("parts[{i}].{bad}"),
                        "unknown field; expected `weight` or `loss`".into(),
                    ));
                }
                if let Some((p, m)) = t.get("loss").and_then(diagnose_toml) {
                    return Some((format!("parts[{i}].loss.{p}"), m));
                }
            }
            None
        }
        other => {
            let names: Vec<&str> = LossConfig::builtins()
                .iter()
                .map(LossConfig::name)
                .collect();
            Some((
                "kind".into(),
                format!("unknown objective {other:?}; expected one of {names:?} or \"sum\""),
            ))
        }
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

/// Cross-entropy of `(b, B)` logits whose row `i` has its positive in column `start + i`:
/// `mean_i −log softmax_row(i)[start + i]` — one direction of InfoNCE, for the rows of one rank
/// or (`start = 0`, wider logits allowed) for a whole batch.
pub fn local_cross_entropy(logits: &Tensor, start: usize) -> candle_core::Result<Tensor> {
    let (b, n) = logits.dims2()?;
    if start + b > n {
        candle_core::bail!("local rows {start}..{} outside a batch of {n}", start + b);
    }
    let labels = Tensor::arange(start as u32, (start + b) as u32, logits.device())?.unsqueeze(1)?;
    crate::model::layers::log_softmax_last(logits)?
        .gather(&labels, 1)?
        .mean_all()?
        .neg()
}

/// The similarities of both directions for the anchors this call computes, and the column of
/// the first anchor's positive. Over the whole batch (`local` is `None`): `(a·bᵀ, b·aᵀ, 0)`,
/// positives on the diagonal. For one rank's rows under [`LossInputs::local`]: its rows of `a`
/// against every row of `b` and its rows of `b` against every row of `a`, `(len, B)` each, with
/// row `i`'s positive in column `start + i`. An objective written over these rows, normalised
/// by their count, serves both cases: the mean of the ranks' local losses is the whole batch's.
pub fn anchor_similarities(
    a: &Tensor,
    b: &Tensor,
    local: Option<LocalRows>,
) -> candle_core::Result<(Tensor, Tensor, usize)> {
    if local.is_none() {
        // One product, transposed for the other direction.
        let s = common::similarity(a, b)?;
        let t = s.t()?.contiguous()?;
        return Ok((s, t, 0));
    }
    let (forward, start) = anchor_rows(a, b, local)?;
    let (backward, _) = anchor_rows(b, a, local)?;
    Ok((forward, backward, start))
}

/// One direction of [`anchor_similarities`]: this call's rows of `a` against every row of `b`,
/// and the column of the first row's positive.
pub fn anchor_rows(
    a: &Tensor,
    b: &Tensor,
    local: Option<LocalRows>,
) -> candle_core::Result<(Tensor, usize)> {
    let Some(l) = local else {
        return Ok((common::similarity(a, b)?, 0));
    };
    let n = a.dim(0)?;
    if l.start + l.len > n || l.len == 0 {
        candle_core::bail!(
            "local rows {}..{} outside a batch of {n}",
            l.start,
            l.start + l.len
        );
    }
    Ok((
        common::similarity(&a.narrow(0, l.start, l.len)?, b)?,
        l.start,
    ))
}

/// The `(len, n)` 0/1 mask of each anchor's own positive, column `start + i` of row `i`.
pub fn positive_mask(
    len: usize,
    n: usize,
    start: usize,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    common::mask(len, n, device, |i, j| j == start + i)
}

/// `(B, B)` scaled logits `exp(t)·x·yᵀ` and CLIP's two cross-entropy terms, shared by several
/// objectives.
pub fn info_nce(logits: &Tensor) -> candle_core::Result<LossOutput> {
    let (i2t, t2i) = symmetric_cross_entropy(logits)?;
    Ok(LossOutput {
        loss: ((&i2t + &t2i)? * 0.5)?,
        terms: vec![("image_to_text".into(), i2t), ("text_to_image".into(), t2i)],
    })
}

//! The two-tower model: a ViT image tower and a causal text Transformer, each followed by a
//! projection head into a shared embedding space (CLIP, Radford et al., 2021).
//!
//! Parameter names are stable and dotted (`model.vision.blocks.0.attn.qkv.weight`), created in
//! the run's [`Params`](crate::params::Params) store.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use workbench::model::{Capture, ClipModel, ModelConfig};
//! use workbench::params::Params;
//! let params = Params::new(0, &Device::Cpu);
//! let model = ClipModel::new(&ModelConfig::tiny(), 32, 20, 8, &params.scope("model")).unwrap();
//! let images = Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let out = model.encode_image(&images, Capture::ATTENTION).unwrap();
//! assert_eq!(out.embedding.dims(), &[2, 64]);
//! assert_eq!(out.attentions.unwrap()[0].dims(), &[2, 4, 17, 17]); // (B, H, L, L)
//! ```

pub mod layers;
pub mod text;
pub mod vision;

use crate::data::Batch;
use crate::params::Scope;
use crate::{Error, Result};
use candle_core::{D, Tensor};
use layers::{Linear, Probes};
use serde::{Deserialize, Serialize};
pub use text::TextTransformer;
pub use vision::{TowerOutput, VisionTransformer};

/// How the image tower pools its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// The class token (CLIP).
    Cls,
    /// Mean of the patch tokens.
    Mean,
}

/// Projection head from tower width to the shared embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    /// One linear map without bias (CLIP).
    Linear,
    /// Linear → GELU → linear.
    Mlp,
}

/// Which implementation of LayerNorm, softmax, GELU and attention the towers use, and of the
/// CLIP and SigLIP losses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// The fused ops of the `kernels` crate (hand-written forward and backward).
    #[default]
    Fused,
    /// Their readable references made of candle tensor ops (same numbers, slower).
    Reference,
}

/// Image tower hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// Patch side in pixels; must divide the image size.
    pub patch_size: usize,
    /// Token width.
    pub width: usize,
    /// Number of blocks.
    pub layers: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    pub mlp_ratio: usize,
    /// Pooling: class token or mean of patches.
    pub pool: Pool,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            patch_size: 8,
            width: 64,
            layers: 2,
            heads: 4,
            mlp_ratio: 4,
            pool: Pool::Cls,
        }
    }
}

/// Text tower hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// Token width.
    pub width: usize,
    /// Number of blocks.
    pub layers: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    pub mlp_ratio: usize,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            width: 64,
            layers: 2,
            heads: 4,
            mlp_ratio: 4,
        }
    }
}

/// Model hyper-parameters (the `[model]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Size of the shared embedding space.
    pub embed_dim: usize,
    /// Projection head kind.
    pub projection: ProjectionKind,
    /// Image tower.
    pub vision: VisionConfig,
    /// Text tower.
    pub text: TextConfig,
    /// Fused kernels or their references.
    pub kernels: Kernels,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::tiny()
    }
}

impl ModelConfig {
    /// The CPU demo: 32×32 images, patch 8, width 64, 2 + 2 layers, 4 heads.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 64,
            projection: ProjectionKind::Linear,
            vision: VisionConfig::default(),
            text: TextConfig::default(),
            kernels: Kernels::Fused,
        }
    }

    /// Patch 4, width 128, 4 + 4 layers, 4 heads.
    pub fn small() -> Self {
        Self {
            embed_dim: 128,
            projection: ProjectionKind::Linear,
            vision: VisionConfig {
                patch_size: 4,
                width: 128,
                layers: 4,
                heads: 4,
                ..VisionConfig::default()
            },
            text: TextConfig {
                width: 128,
                layers: 4,
                heads: 4,
                mlp_ratio: 4,
            },
            kernels: Kernels::Fused,
        }
    }

    /// Checks the configuration against the data it will see; errors name the field.
    pub fn validate(&self, image_size: usize) -> Result<()> {
        let v = &self.vision;
        if v.patch_size == 0 || !image_size.is_multiple_of(v.patch_size) {
            return Err(Error::config(
                "model.vision.patch_size",
                format!(
                    "{} does not divide data.image_size = {image_size}; pick a divisor such as {}",
                    v.patch_size,
                    (1..=image_size / 2)
                        .rev()
                        .find(|p| image_size.is_multiple_of(*p) && *p <= v.patch_size.max(1))
                        .unwrap_or(1)
                ),
            ));
        }
        for (name, width, heads, layers, ratio) in [
            ("vision", v.width, v.heads, v.layers, v.mlp_ratio),
            (
                "text",
                self.text.width,
                self.text.heads,
                self.text.layers,
                self.text.mlp_ratio,
            ),
        ] {
            if heads == 0 || width == 0 || width % heads != 0 {
                return Err(Error::config(
                    format!("model.{name}.heads"),
                    format!("{heads} heads do not divide width {width}"),
                ));
            }
            if layers == 0 {
                return Err(Error::config(
                    format!("model.{name}.layers"),
                    "must be at least 1",
                ));
            }
            if ratio == 0 {
                return Err(Error::config(
                    format!("model.{name}.mlp_ratio"),
                    "must be at least 1",
                ));
            }
        }
        if self.embed_dim == 0 {
            return Err(Error::config("model.embed_dim", "must be at least 1"));
        }
        Ok(())
    }
}

/// A projection head.
#[derive(Clone, Debug)]
pub enum Head {
    /// `x·Wᵀ`.
    Linear(Linear),
    /// `W₂·gelu(W₁·x + b₁) + b₂`.
    Mlp(Linear, Linear),
}

impl Head {
    fn new(kind: ProjectionKind, width: usize, embed: usize, s: &Scope) -> Result<Self> {
        let std = (width as f64).powf(-0.5);
        Ok(match kind {
            ProjectionKind::Linear => Self::Linear(Linear::new(width, embed, std, false, s)?),
            ProjectionKind::Mlp => Self::Mlp(
                Linear::new(width, width, std, true, &s.pp("fc"))?,
                Linear::new(width, embed, std, true, &s.pp("proj"))?,
            ),
        })
    }

    /// Projects the last dimension.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Linear(l) => l.forward(xs),
            Self::Mlp(a, b) => b.forward(&kernels::gelu(&a.forward(xs)?)?),
        }
    }
}

/// L2-normalises the last dimension.
pub fn l2_normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    let norm = (xs.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    xs.broadcast_div(&norm)
}

/// What to return besides the pooled embeddings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// Attention weights of every layer.
    pub attention: bool,
    /// Projected, normalised embeddings of every patch / text token.
    pub tokens: bool,
}

impl Capture {
    /// Pooled embeddings only.
    pub const NONE: Self = Self {
        attention: false,
        tokens: false,
    };
    /// Plus attention weights.
    pub const ATTENTION: Self = Self {
        attention: true,
        tokens: false,
    };
    /// Plus per-token embeddings.
    pub const TOKENS: Self = Self {
        attention: false,
        tokens: true,
    };
    /// Everything.
    pub const ALL: Self = Self {
        attention: true,
        tokens: true,
    };
}

/// One tower's encoding.
#[derive(Clone, Debug)]
pub struct Encoding {
    /// L2-normalised embedding `(B, E)`.
    pub embedding: Tensor,
    /// L2-normalised projected tokens: image `(B, N, E)` patches (no class token), text `(B, T, E)`.
    pub tokens: Option<Tensor>,
    /// Per layer, attention weights `(B, H, L, L)`.
    pub attentions: Option<Vec<Tensor>>,
    /// The tower's raw output (pooled vector, tokens, per-layer inputs when attention was asked).
    pub tower: TowerOutput,
}

/// Both towers' embeddings for a batch.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// Image side.
    pub image: Encoding,
    /// Text side.
    pub text: Encoding,
}

/// The two-tower model.
#[derive(Clone, Debug)]
pub struct ClipModel {
    vision: VisionTransformer,
    text: TextTransformer,
    image_proj: Head,
    text_proj: Head,
    cfg: ModelConfig,
}

impl ClipModel {
    /// Builds (or, for names already in the store, reuses) every parameter under `s`.
    pub fn new(
        cfg: &ModelConfig,
        image_size: usize,
        vocab_size: usize,
        context_length: usize,
        s: &Scope,
    ) -> Result<Self> {
        cfg.validate(image_size)?;
        Ok(Self {
            vision: VisionTransformer::new(&cfg.vision, image_size, cfg.kernels, &s.pp("vision"))?,
            text: TextTransformer::new(
                &cfg.text,
                vocab_size,
                context_length,
                cfg.kernels,
                &s.pp("text"),
            )?,
            image_proj: Head::new(
                cfg.projection,
                cfg.vision.width,
                cfg.embed_dim,
                &s.pp("image_proj"),
            )?,
            text_proj: Head::new(
                cfg.projection,
                cfg.text.width,
                cfg.embed_dim,
                &s.pp("text_proj"),
            )?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The image tower.
    pub fn vision(&self) -> &VisionTransformer {
        &self.vision
    }

    /// The text tower.
    pub fn text(&self) -> &TextTransformer {
        &self.text
    }

    /// Encodes normalised images `(B, 3, H, W)`.
    pub fn encode_image(&self, images: &Tensor, capture: Capture) -> candle_core::Result<Encoding> {
        self.encode_image_with(images, capture, None)
    }

    /// [`Self::encode_image`] with optional gradient [`Probes`] in the image encoder (the
    /// probed path always uses the reference attention and returns weights and inputs).
    pub fn encode_image_with(
        &self,
        images: &Tensor,
        capture: Capture,
        probes: Option<&Probes>,
    ) -> candle_core::Result<Encoding> {
        let tower = self
            .vision
            .forward_with(images, capture.attention, probes)?;
        let embedding = l2_normalize(&self.image_proj.forward(&tower.pooled)?)?;
        let tokens = if capture.tokens {
            let n = tower.tokens.dim(1)? - 1;
            let patches = tower.tokens.narrow(1, 1, n)?;
            Some(l2_normalize(&self.image_proj.forward(&patches)?)?)
        } else {
            None
        };
        Ok(Encoding {
            embedding,
            tokens,
            attentions: tower.encoder.attentions.clone(),
            tower,
        })
    }

    /// Encodes token ids `(B, T)` pooled at `eos` `(B,)`.
    pub fn encode_text(
        &self,
        tokens: &Tensor,
        eos: &Tensor,
        capture: Capture,
    ) -> candle_core::Result<Encoding> {
        self.encode_text_with(tokens, eos, capture, None)
    }

    /// [`Self::encode_text`] with optional gradient [`Probes`] in the text encoder.
    pub fn encode_text_with(
        &self,
        tokens: &Tensor,
        eos: &Tensor,
        capture: Capture,
        probes: Option<&Probes>,
    ) -> candle_core::Result<Encoding> {
        let tower = self
            .text
            .forward_with(tokens, eos, capture.attention, probes)?;
        let embedding = l2_normalize(&self.text_proj.forward(&tower.pooled)?)?;
        let tokens = if capture.tokens {
            Some(l2_normalize(&self.text_proj.forward(&tower.tokens)?)?)
        } else {
            None
        };
        Ok(Encoding {
            embedding,
            tokens,
            attentions: tower.encoder.attentions.clone(),
            tower,
        })
    }

    /// Encodes both sides of a batch.
    pub fn forward(&self, batch: &Batch, capture: Capture) -> candle_core::Result<Embeddings> {
        Ok(Embeddings {
            image: self.encode_image(&batch.images, capture)?,
            text: self.encode_text(&batch.tokens, &batch.eos, capture)?,
        })
    }
}

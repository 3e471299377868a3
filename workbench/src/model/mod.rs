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

mod config;
pub mod layers;
pub mod pool;
mod precision;
pub mod text;
pub mod vision;

use crate::Result;
use crate::data::Batch;
use crate::params::Scope;
use candle_core::{D, Tensor};
pub use config::{
    Activation, ImageStats, Kernels, ModelConfig, Pool, ProjectionKind, TextConfig, TextPool,
    VisionConfig,
};
use layers::{Linear, Probes};
pub use precision::Precision;
pub use text::TextTransformer;
pub use vision::{TowerOutput, VisionTransformer};

/// A projection head.
#[derive(Clone, Debug)]
pub enum Head {
    /// `x·Wᵀ` (+ `b`).
    Linear(Linear),
    /// `W₂·gelu(W₁·x + b₁) + b₂`.
    Mlp(Linear, Linear),
    /// `x`.
    Identity,
}

impl Head {
    fn new(kind: ProjectionKind, width: usize, embed: usize, s: &Scope) -> Result<Self> {
        let std = (width as f64).powf(-0.5);
        Ok(match kind {
            ProjectionKind::Linear => Self::Linear(Linear::new(width, embed, std, false, s)?),
            ProjectionKind::LinearBias => Self::Linear(Linear::new(width, embed, std, true, s)?),
            ProjectionKind::Identity => Self::Identity,
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
            Self::Identity => Ok(xs.clone()),
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
                cfg.image_head(),
                cfg.vision.width,
                cfg.embed_dim,
                &s.pp("image_proj"),
            )?,
            text_proj: Head::new(
                cfg.text_head(),
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
            let prefix = self.cfg.vision.prefix_tokens();
            let n = tower.tokens.dim(1)? - prefix;
            let patches = tower.tokens.narrow(1, prefix, n)?;
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

//! Model hyper-parameters (the `[model]` table).
//!
//! The defaults describe the workbench's own towers (open_clip layout, GELU with the tanh
//! approximation, LayerNorm `eps = 1e-5`, class token, `ln_pre`, causal text pooled at EOS, bias-free
//! linear heads). The other choices exist so that pretrained CLIP and SigLIP checkpoints run on the
//! same code (see [`crate::pretrained`]); every one of them is `serde(default)`, so configurations
//! and checkpoints written before they existed load and train exactly as before.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the image tower pools its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// The class token (CLIP).
    Cls,
    /// Mean of the patch tokens.
    Mean,
    /// Multi-head attention pooling: a learned probe attends over the tokens, then LayerNorm and
    /// an MLP with a residual (SigLIP's `MultiheadAttentionPoolingHead`).
    Map,
}

/// Where the text tower pools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextPool {
    /// At the explicit EOS position of each text (CLIP).
    #[default]
    Eos,
    /// At the last position of the padded sequence (SigLIP, whose texts are padded to the
    /// context length).
    Last,
}

/// The MLP non-linearity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`; the fused `kernels::gelu`).
    #[default]
    GeluTanh,
    /// `x·σ(1.702·x)` (OpenAI CLIP's `quick_gelu`).
    QuickGelu,
    /// Exact GELU with the error function (`gelu`).
    Gelu,
}

/// Projection head from tower width to the shared embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    /// One linear map without bias (CLIP).
    Linear,
    /// One linear map with bias (SigLIP's text `head`).
    LinearBias,
    /// Linear → GELU → linear.
    Mlp,
    /// No projection: the pooled vector is the embedding (SigLIP's image side); the tower width
    /// must equal `embed_dim`.
    Identity,
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

/// Per-channel statistics an image tower was trained with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageStats {
    /// Mean of each RGB channel, pixels in `[0, 1]`.
    pub mean: [f32; 3],
    /// Standard deviation of each RGB channel.
    pub std: [f32; 3],
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
    /// Pooling: class token, mean of patches or attention pooling.
    pub pool: Pool,
    /// MLP hidden width, when it is not a multiple of `width` (overrides `mlp_ratio`).
    pub mlp_hidden: Option<usize>,
    /// The MLP non-linearity.
    pub activation: Activation,
    /// `eps` of every LayerNorm of the tower.
    pub layer_norm_eps: f64,
    /// A class token before the patches (and a position for it).
    pub class_token: bool,
    /// A LayerNorm after the positions are added (`ln_pre`).
    pub ln_pre: bool,
    /// A bias in the patch embedding.
    pub patch_bias: bool,
    /// Images reach the model normalised with CLIP's mean and std (the data pipeline's
    /// convention). A tower trained with other statistics sets them here and re-normalises its
    /// input first (an exact per-channel affine map).
    pub input_stats: Option<ImageStats>,
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
            mlp_hidden: None,
            activation: Activation::GeluTanh,
            layer_norm_eps: 1e-5,
            class_token: true,
            ln_pre: true,
            patch_bias: false,
            input_stats: None,
        }
    }
}

impl VisionConfig {
    /// The MLP hidden width: `mlp_hidden`, else `mlp_ratio · width`.
    pub fn hidden(&self) -> usize {
        self.mlp_hidden.unwrap_or(self.mlp_ratio * self.width)
    }

    /// Tokens before the first patch (1 with a class token, else 0).
    pub fn prefix_tokens(&self) -> usize {
        usize::from(self.class_token)
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
    /// MLP hidden width, when it is not a multiple of `width` (overrides `mlp_ratio`).
    pub mlp_hidden: Option<usize>,
    /// The MLP non-linearity.
    pub activation: Activation,
    /// `eps` of every LayerNorm of the tower.
    pub layer_norm_eps: f64,
    /// Causal attention (each position sees itself and earlier ones).
    pub causal: bool,
    /// Where the tower pools.
    pub pool: TextPool,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            width: 64,
            layers: 2,
            heads: 4,
            mlp_ratio: 4,
            mlp_hidden: None,
            activation: Activation::GeluTanh,
            layer_norm_eps: 1e-5,
            causal: true,
            pool: TextPool::Eos,
        }
    }
}

impl TextConfig {
    /// The MLP hidden width: `mlp_hidden`, else `mlp_ratio · width`.
    pub fn hidden(&self) -> usize {
        self.mlp_hidden.unwrap_or(self.mlp_ratio * self.width)
    }
}

/// Model hyper-parameters (the `[model]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Size of the shared embedding space.
    pub embed_dim: usize,
    /// Projection head kind of both towers.
    pub projection: ProjectionKind,
    /// The image tower's head, when it differs from `projection`.
    pub image_projection: Option<ProjectionKind>,
    /// The text tower's head, when it differs from `projection`.
    pub text_projection: Option<ProjectionKind>,
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
            image_projection: None,
            text_projection: None,
            vision: VisionConfig::default(),
            text: TextConfig::default(),
            kernels: Kernels::Fused,
        }
    }

    /// Patch 4, width 128, 4 + 4 layers, 4 heads.
    pub fn small() -> Self {
        Self {
            embed_dim: 128,
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
                ..TextConfig::default()
            },
            ..Self::tiny()
        }
    }

    /// The image tower's head.
    pub fn image_head(&self) -> ProjectionKind {
        self.image_projection.unwrap_or(self.projection)
    }

    /// The text tower's head.
    pub fn text_head(&self) -> ProjectionKind {
        self.text_projection.unwrap_or(self.projection)
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
        let t = &self.text;
        for (name, width, heads, layers, ratio, hidden, eps) in [
            (
                "vision",
                v.width,
                v.heads,
                v.layers,
                v.mlp_ratio,
                v.mlp_hidden,
                v.layer_norm_eps,
            ),
            (
                "text",
                t.width,
                t.heads,
                t.layers,
                t.mlp_ratio,
                t.mlp_hidden,
                t.layer_norm_eps,
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
            if ratio == 0 && hidden.is_none() {
                return Err(Error::config(
                    format!("model.{name}.mlp_ratio"),
                    "must be at least 1",
                ));
            }
            if hidden == Some(0) {
                return Err(Error::config(
                    format!("model.{name}.mlp_hidden"),
                    "must be at least 1",
                ));
            }
            if !(eps > 0.0 && eps < 1.0) {
                return Err(Error::config(
                    format!("model.{name}.layer_norm_eps"),
                    format!("{eps} is not in (0, 1)"),
                ));
            }
        }
        if self.embed_dim == 0 {
            return Err(Error::config("model.embed_dim", "must be at least 1"));
        }
        if v.pool == Pool::Cls && !v.class_token {
            return Err(Error::config(
                "model.vision.pool",
                "`cls` pooling needs `class_token = true`",
            ));
        }
        if let Some(s) = &v.input_stats
            && !s.std.iter().all(|x| x.is_finite() && *x > 0.0)
        {
            return Err(Error::config(
                "model.vision.input_stats.std",
                format!("{:?}: every channel must be positive", s.std),
            ));
        }
        for (name, kind, width) in [
            ("image_projection", self.image_head(), v.width),
            ("text_projection", self.text_head(), t.width),
        ] {
            if kind == ProjectionKind::Identity && width != self.embed_dim {
                return Err(Error::config(
                    format!("model.{name}"),
                    format!(
                        "`identity` needs the tower width ({width}) to equal embed_dim ({})",
                        self.embed_dim
                    ),
                ));
            }
        }
        Ok(())
    }
}

//! The image tower: a Vision Transformer (Dosovitskiy et al., 2021, arXiv:2010.11929), laid out
//! like open_clip's `VisionTransformer`: patch embedding, class token, learned positions, `ln_pre`,
//! pre-LN blocks, `ln_post`, pooling. Without a class token and `ln_pre` and with attention
//! pooling it is SigLIP's image tower.

use super::layers::{Encoder, EncoderOutput, LayerNorm, Linear, Probes, Spec};
use super::pool::AttentionPool;
use super::{Kernels, Pool, VisionConfig};
use crate::Result;
use crate::data::image::{CLIP_MEAN, CLIP_STD};
use crate::params::{Init, Scope};
use candle_core::{D, Tensor};

/// ViT over square RGB images.
#[derive(Clone, Debug)]
pub struct VisionTransformer {
    patch_embed: Linear,
    cls: Option<Tensor>,
    pos: Tensor,
    ln_pre: Option<LayerNorm>,
    encoder: Encoder,
    ln_post: LayerNorm,
    map: Option<AttentionPool>,
    /// Per-channel `(scale, offset)` `(1, 3, 1, 1)` taking CLIP-normalised input to the tower's own.
    renorm: Option<(Tensor, Tensor)>,
    patch: usize,
    pool: Pool,
}

/// What a tower returns.
#[derive(Clone, Debug)]
pub struct TowerOutput {
    /// Pooled representation `(B, D)`.
    pub pooled: Tensor,
    /// Every position after the final LayerNorm `(B, L, D)` (image: class token first, if any).
    pub tokens: Tensor,
    /// The encoder's raw output with optional attention weights.
    pub encoder: EncoderOutput,
    /// Attention pooling only: the probe's weights over the tokens `(B, H, 1, L)`.
    pub pool_attention: Option<Tensor>,
}

impl VisionTransformer {
    /// Builds the tower for `image_size`-pixel images.
    pub fn new(cfg: &VisionConfig, image_size: usize, kernels: Kernels, s: &Scope) -> Result<Self> {
        let w = cfg.width;
        let p = cfg.patch_size;
        let n = (image_size / p) * (image_size / p);
        let scale = (w as f64).powf(-0.5);
        let spec = Spec {
            width: w,
            heads: cfg.heads,
            hidden: cfg.hidden(),
            layers: cfg.layers,
            kernels,
            activation: cfg.activation,
            eps: cfg.layer_norm_eps,
        };
        let renorm = match &cfg.input_stats {
            Some(st) => {
                let a: Vec<f32> = (0..3).map(|c| CLIP_STD[c] / st.std[c]).collect();
                let b: Vec<f32> = (0..3)
                    .map(|c| (CLIP_MEAN[c] - st.mean[c]) / st.std[c])
                    .collect();
                Some((
                    Tensor::from_vec(a, (1, 3, 1, 1), s.device())?,
                    Tensor::from_vec(b, (1, 3, 1, 1), s.device())?,
                ))
            }
            None => None,
        };
        Ok(Self {
            // A linear map of flattened (C, p, p) patches = a stride-p convolution.
            patch_embed: Linear::new(
                3 * p * p,
                w,
                (3.0 * (p * p) as f64).powf(-0.5),
                cfg.patch_bias,
                &s.pp("patch_embed"),
            )?
            .with_kernels(kernels),
            cls: if cfg.class_token {
                Some(s.get("cls", w, Init::Normal(scale))?)
            } else {
                None
            },
            pos: s.get("pos", (n + cfg.prefix_tokens(), w), Init::Normal(scale))?,
            ln_pre: if cfg.ln_pre {
                Some(LayerNorm::with_eps(
                    w,
                    cfg.layer_norm_eps,
                    kernels,
                    &s.pp("ln_pre"),
                )?)
            } else {
                None
            },
            encoder: Encoder::new(&spec, s)?,
            ln_post: LayerNorm::with_eps(w, cfg.layer_norm_eps, kernels, &s.pp("ln_post"))?,
            map: if cfg.pool == Pool::Map {
                Some(AttentionPool::new(&spec, &s.pp("map"))?)
            } else {
                None
            },
            renorm,
            patch: p,
            pool: cfg.pool,
        })
    }

    /// Side of a patch in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch
    }

    /// Tokens before the first patch (1 with a class token, else 0).
    pub fn prefix_tokens(&self) -> usize {
        usize::from(self.cls.is_some())
    }

    /// The encoder (for inspection).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// `(B, 3, H, W)` → `(B, N, 3·p·p)`, patches in row-major order.
    pub fn patchify(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        images
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))? // (B, gh, gw, C, p, p)
            .reshape((b, gh * gw, c * p * p))
    }

    /// Encodes `(B, 3, H, W)` images normalised with CLIP's mean and std.
    pub fn forward(&self, images: &Tensor, want_weights: bool) -> candle_core::Result<TowerOutput> {
        self.forward_with(images, want_weights, None)
    }

    /// [`Self::forward`], optionally with gradient [`Probes`] in the encoder.
    pub fn forward_with(
        &self,
        images: &Tensor,
        want_weights: bool,
        probes: Option<&Probes>,
    ) -> candle_core::Result<TowerOutput> {
        let b = images.dim(0)?;
        let images = match &self.renorm {
            Some((a, c)) => images.broadcast_mul(a)?.broadcast_add(c)?,
            None => images.clone(),
        };
        let patches = self.patch_embed.forward(&self.patchify(&images)?)?; // (B, N, D)
        let d = patches.dim(D::Minus1)?;
        let xs = match &self.cls {
            Some(cls) => {
                let cls = cls.reshape((1, 1, d))?.repeat((b, 1, 1))?;
                Tensor::cat(&[&cls, &patches], 1)? // (B, N+1, D)
            }
            None => patches,
        };
        let xs = kernels::add_bias(&xs, &self.pos)?;
        let xs = match &self.ln_pre {
            Some(ln) => ln.forward(&xs)?,
            None => xs,
        };
        let encoder = match probes {
            Some(p) => self.encoder.forward_probed(&xs, false, p)?,
            None => self.encoder.forward(&xs, false, want_weights)?,
        };
        let tokens = self.ln_post.forward(&encoder.hidden)?;
        let prefix = self.prefix_tokens();
        let (pooled, pool_attention) = match (&self.map, self.pool) {
            (Some(map), _) => {
                let (pooled, w) = map.forward(&tokens)?;
                (pooled, want_weights.then_some(w))
            }
            (None, Pool::Mean) => {
                let n = tokens.dim(1)? - prefix;
                (tokens.narrow(1, prefix, n)?.mean(1)?, None)
            }
            (None, _) => (tokens.narrow(1, 0, 1)?.squeeze(1)?, None),
        };
        Ok(TowerOutput {
            pooled,
            tokens,
            encoder,
            pool_attention,
        })
    }
}

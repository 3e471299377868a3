//! The image tower: a Vision Transformer (Dosovitskiy et al., 2021, arXiv:2010.11929), laid out
//! like open_clip's `VisionTransformer`: patch embedding, class token, learned positions, `ln_pre`,
//! pre-LN blocks, `ln_post`, pooling.

use super::layers::{Encoder, EncoderOutput, LayerNorm, Linear, Probes};
use super::{Kernels, Pool, VisionConfig};
use crate::Result;
use crate::params::{Init, Scope};
use candle_core::{D, Tensor};

/// ViT over square RGB images.
#[derive(Clone, Debug)]
pub struct VisionTransformer {
    patch_embed: Linear,
    cls: Tensor,
    pos: Tensor,
    ln_pre: LayerNorm,
    encoder: Encoder,
    ln_post: LayerNorm,
    patch: usize,
    pool: Pool,
}

/// What a tower returns.
#[derive(Clone, Debug)]
pub struct TowerOutput {
    /// Pooled representation `(B, D)`.
    pub pooled: Tensor,
    /// Every position after the final LayerNorm `(B, L, D)` (image: class token first).
    pub tokens: Tensor,
    /// The encoder's raw output with optional attention weights.
    pub encoder: EncoderOutput,
}

impl VisionTransformer {
    /// Builds the tower for `image_size`-pixel images.
    pub fn new(cfg: &VisionConfig, image_size: usize, kernels: Kernels, s: &Scope) -> Result<Self> {
        let w = cfg.width;
        let p = cfg.patch_size;
        let n = (image_size / p) * (image_size / p);
        let scale = (w as f64).powf(-0.5);
        Ok(Self {
            // A linear map of flattened (C, p, p) patches = a stride-p convolution.
            patch_embed: Linear::new(
                3 * p * p,
                w,
                (3.0 * (p * p) as f64).powf(-0.5),
                false,
                &s.pp("patch_embed"),
            )?,
            cls: s.get("cls", w, Init::Normal(scale))?,
            pos: s.get("pos", (n + 1, w), Init::Normal(scale))?,
            ln_pre: LayerNorm::new(w, kernels, &s.pp("ln_pre"))?,
            encoder: Encoder::new(w, cfg.heads, cfg.mlp_ratio, cfg.layers, kernels, s)?,
            ln_post: LayerNorm::new(w, kernels, &s.pp("ln_post"))?,
            patch: p,
            pool: cfg.pool,
        })
    }

    /// Side of a patch in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch
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

    /// Encodes `(B, 3, H, W)` normalised images.
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
        let patches = self.patch_embed.forward(&self.patchify(images)?)?; // (B, N, D)
        let d = patches.dim(D::Minus1)?;
        let cls = self.cls.reshape((1, 1, d))?.repeat((b, 1, 1))?;
        let xs = kernels::add_bias(&Tensor::cat(&[&cls, &patches], 1)?, &self.pos)?; // (B, N+1, D)
        let xs = self.ln_pre.forward(&xs)?;
        let encoder = match probes {
            Some(p) => self.encoder.forward_probed(&xs, false, p)?,
            None => self.encoder.forward(&xs, false, want_weights)?,
        };
        let tokens = self.ln_post.forward(&encoder.hidden)?;
        let pooled = match self.pool {
            Pool::Cls => tokens.narrow(1, 0, 1)?.squeeze(1)?,
            Pool::Mean => {
                let n = tokens.dim(1)? - 1;
                tokens.narrow(1, 1, n)?.mean(1)?
            }
        };
        Ok(TowerOutput {
            pooled,
            tokens,
            encoder,
        })
    }
}

//! The text tower: a causal Transformer pooled at the explicit EOS position (Radford et al.,
//! 2021, arXiv:2103.00020 §2.4), never at the argmax of the token ids. SigLIP's text tower is the
//! same without the causal mask, pooled at the last position of the padded sequence.

use super::layers::{Encoder, LayerNorm, Probes, Spec};
use super::vision::TowerOutput;
use super::{Kernels, TextConfig, TextPool};
use crate::Result;
use crate::params::{Init, Scope};
use candle_core::Tensor;

/// Transformer over token ids.
#[derive(Clone, Debug)]
pub struct TextTransformer {
    token_embed: Tensor,
    pos: Tensor,
    encoder: Encoder,
    ln_final: LayerNorm,
    causal: bool,
    pool: TextPool,
}

impl TextTransformer {
    /// Builds the tower for `vocab_size` ids and `context_length` positions.
    pub fn new(
        cfg: &TextConfig,
        vocab_size: usize,
        context_length: usize,
        kernels: Kernels,
        s: &Scope,
    ) -> Result<Self> {
        let w = cfg.width;
        let spec = Spec {
            width: w,
            heads: cfg.heads,
            hidden: cfg.hidden(),
            layers: cfg.layers,
            kernels,
            activation: cfg.activation,
            eps: cfg.layer_norm_eps,
        };
        Ok(Self {
            token_embed: s.get("token_embed", (vocab_size, w), Init::Normal(0.02))?,
            pos: s.get("pos", (context_length, w), Init::Normal(0.01))?,
            encoder: Encoder::new(&spec, s)?,
            ln_final: LayerNorm::with_eps(w, cfg.layer_norm_eps, kernels, &s.pp("ln_final"))?,
            causal: cfg.causal,
            pool: cfg.pool,
        })
    }

    /// The encoder (for inspection).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Whether attention is causal.
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// Encodes token ids `(B, T)` u32; pools row `b` at position `eos[b]` (or at `T − 1` when
    /// the tower pools at the last position).
    pub fn forward(
        &self,
        tokens: &Tensor,
        eos: &Tensor,
        want_weights: bool,
    ) -> candle_core::Result<TowerOutput> {
        self.forward_with(tokens, eos, want_weights, None)
    }

    /// [`Self::forward`], optionally with gradient [`Probes`] in the encoder.
    pub fn forward_with(
        &self,
        tokens: &Tensor,
        eos: &Tensor,
        want_weights: bool,
        probes: Option<&Probes>,
    ) -> candle_core::Result<TowerOutput> {
        let (b, t) = tokens.dims2()?;
        let d = self.token_embed.dim(1)?;
        let xs = self
            .token_embed
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let xs = kernels::add_bias(&xs, &self.pos.narrow(0, 0, t)?)?;
        let encoder = match probes {
            Some(p) => self.encoder.forward_probed(&xs, self.causal, p)?,
            None => self.encoder.forward(&xs, self.causal, want_weights)?,
        };
        let tokens_out = self.ln_final.forward(&encoder.hidden)?;
        let pooled = match self.pool {
            TextPool::Last => tokens_out.narrow(1, t - 1, 1)?.squeeze(1)?,
            TextPool::Eos => {
                // Row-wise gather at EOS: flatten to (B·T, D) and pick b·T + eos[b].
                let offsets = Tensor::arange_step(0u32, (b * t) as u32, t as u32, tokens.device())?;
                let idx = (offsets + eos.to_dtype(candle_core::DType::U32)?)?;
                tokens_out.reshape((b * t, d))?.index_select(&idx, 0)?
            }
        };
        Ok(TowerOutput {
            pooled,
            tokens: tokens_out,
            encoder,
            pool_attention: None,
        })
    }
}

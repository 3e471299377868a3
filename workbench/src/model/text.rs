//! The text tower: a causal Transformer pooled at the explicit EOS position (Radford et al.,
//! 2021, arXiv:2103.00020 §2.4), never at the argmax of the token ids.

use super::layers::{Encoder, LayerNorm, Probes};
use super::vision::TowerOutput;
use super::{Kernels, TextConfig};
use crate::Result;
use crate::params::{Init, Scope};
use candle_core::Tensor;

/// Causal Transformer over token ids.
#[derive(Clone, Debug)]
pub struct TextTransformer {
    token_embed: Tensor,
    pos: Tensor,
    encoder: Encoder,
    ln_final: LayerNorm,
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
        Ok(Self {
            token_embed: s.get("token_embed", (vocab_size, w), Init::Normal(0.02))?,
            pos: s.get("pos", (context_length, w), Init::Normal(0.01))?,
            encoder: Encoder::new(w, cfg.heads, cfg.mlp_ratio, cfg.layers, kernels, s)?,
            ln_final: LayerNorm::new(w, kernels, &s.pp("ln_final"))?,
        })
    }

    /// The encoder (for inspection).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Encodes token ids `(B, T)` u32; pools row `b` at position `eos[b]`.
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
            Some(p) => self.encoder.forward_probed(&xs, true, p)?,
            None => self.encoder.forward(&xs, true, want_weights)?,
        };
        let tokens_out = self.ln_final.forward(&encoder.hidden)?;
        // Row-wise gather at EOS: flatten to (B·T, D) and pick b·T + eos[b].
        let offsets = Tensor::arange_step(0u32, (b * t) as u32, t as u32, tokens.device())?;
        let idx = (offsets + eos.to_dtype(candle_core::DType::U32)?)?;
        let pooled = tokens_out.reshape((b * t, d))?.index_select(&idx, 0)?;
        Ok(TowerOutput {
            pooled,
            tokens: tokens_out,
            encoder,
        })
    }
}

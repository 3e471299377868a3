//! CLOOB: InfoLOOB with modern-Hopfield retrieval of both modalities.
//!
//! Fürst et al., 2022, "CLOOB: Modern Hopfield Networks with InfoLOOB Outperform CLIP"
//! (arXiv:2110.11316), §3 and Algorithm 1; reference code ml-jku/cloob (`cloob_training/loss.py`).
//!
//! With image embeddings `U = (x_i)` and text embeddings `V = (y_i)` of the batch as the stored
//! patterns, Hopfield retrieval with inverse temperature β maps a query `ξ` to
//! `normalize(Σ_k softmax_k(β ξ·s_k) s_k)`. Four retrievals:
//!
//! ```text
//! U_x = retrieve(U; x)   U_y = retrieve(U; y)     (from the image store, by images / by texts)
//! V_y = retrieve(V; y)   V_x = retrieve(V; x)     (from the text store, by texts / by images)
//! LOOB(A, P) = −(1/B) Σ_i [ a_i·p_i/τ − log Σ_{j≠i} exp(a_i·p_j/τ) ]      (positive left out)
//! L = τ · [ LOOB(U_x, U_y) + LOOB(V_y, V_x) ]
//! ```
//!
//! τ is fixed (`inv_tau` = 30 in the paper): InfoLOOB is unbounded below, so a learned
//! temperature would run away. The factor τ follows the reference code. Terms: `image` and
//! `text` (each already multiplied by τ).
//!
//! The 2 × 2 ablation of the paper's §4: `hopfield = false` uses the embeddings themselves
//! (`U_x = x`, `U_y = y`, `V_y = y`, `V_x = x`); `loob = false` puts the positive back into the
//! denominator (InfoNCE). Without the retrieval each anchor's term involves only its own row,
//! so `hopfield = false` has a local loss (`train.local_loss`); with it, every retrieved
//! pattern mixes the whole batch, and it has none.

use super::common::{NEG, check_batch, logsumexp_last, similarity};
use super::{LossInputs, LossOutput, Objective, anchor_similarities, positive_mask};
use crate::Result;
use crate::params::Scope;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Settings of [`CloobLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloobConfig {
    /// Fixed inverse temperature 1/τ of the InfoLOOB terms.
    pub inv_tau: f64,
    /// Inverse temperature β of the Hopfield retrieval.
    pub beta: f64,
    /// Retrieve through the Hopfield memories (false: use the embeddings directly).
    pub hopfield: bool,
    /// Leave the positive out of the denominator (false: InfoNCE).
    pub loob: bool,
}

impl Default for CloobConfig {
    fn default() -> Self {
        Self {
            inv_tau: 30.0,
            beta: 8.0,
            hopfield: true,
            loob: true,
        }
    }
}

/// CLOOB. Terms: `image`, `text`.
pub struct CloobLoss {
    cfg: CloobConfig,
}

impl CloobLoss {
    /// CLOOB has no learnable parameters; `s` is unused but kept for a uniform constructor.
    pub fn new(cfg: &CloobConfig, _s: &Scope) -> Result<Self> {
        if !(cfg.inv_tau > 0.0 && cfg.beta > 0.0) {
            return Err(crate::Error::config(
                "loss.inv_tau",
                "inv_tau and beta must be positive",
            ));
        }
        Ok(Self { cfg: cfg.clone() })
    }
}

/// Modern-Hopfield retrieval: each row of `queries` `(N, E)` becomes the normalised
/// `softmax(β q·Sᵀ)·S` over the stored rows `S` `(M, E)`.
pub fn hopfield_retrieve(
    stored: &Tensor,
    queries: &Tensor,
    beta: f64,
) -> candle_core::Result<Tensor> {
    let attn = kernels::softmax_last(&(similarity(queries, stored)? * beta)?)?;
    crate::model::l2_normalize(&attn.matmul(stored)?)
}

/// `−(1/b) Σ_i [k_{i,s+i} − log Σ_{j≠s+i} exp(k_ij)]` for `(b, B)` logits `k` whose row `i`
/// has its positive in column `s + i` (LOOB; `s = 0` for a whole square batch, a rank's first
/// row under `train.local_loss`), or with the positive included (InfoNCE) when `leave_out` is
/// false. Row-wise: anchors are rows.
pub fn loob_rows_from(k: &Tensor, start: usize, leave_out: bool) -> candle_core::Result<Tensor> {
    let (b, n) = k.dims2()?;
    if start + b > n {
        candle_core::bail!("local rows {start}..{} outside a batch of {n}", start + b);
    }
    let labels = Tensor::arange(start as u32, (start + b) as u32, k.device())?.unsqueeze(1)?;
    let positives = k.gather(&labels, 1)?.squeeze(1)?;
    let denom_in = if leave_out {
        (k + (positive_mask(b, n, start, k.device())? * NEG)?)?
    } else {
        k.clone()
    };
    (logsumexp_last(&denom_in)? - positives)?.mean_all()
}

impl Objective for CloobLoss {
    fn name(&self) -> &'static str {
        "cloob"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "cloob")?;
        let (img, txt) = (x.image, x.text);
        let (image, text, start) = if self.cfg.hopfield {
            if x.local.is_some() {
                candle_core::bail!(
                    "cloob: the Hopfield retrieval couples every row with the whole batch, \
                     so it has no local loss (set hopfield = false)"
                );
            }
            let beta = self.cfg.beta;
            let (u_x, u_y) = (
                hopfield_retrieve(img, img, beta)?,
                hopfield_retrieve(img, txt, beta)?,
            );
            let (v_y, v_x) = (
                hopfield_retrieve(txt, txt, beta)?,
                hopfield_retrieve(txt, img, beta)?,
            );
            (similarity(&u_x, &u_y)?, similarity(&v_y, &v_x)?, 0)
        } else {
            // U_x = x, U_y = y, V_y = y, V_x = x: the image anchors against every caption and
            // the caption anchors against every image (this rank's, under local losses).
            anchor_similarities(img, txt, x.local)?
        };
        let tau = 1.0 / self.cfg.inv_tau;
        let term = |k: &Tensor| -> candle_core::Result<Tensor> {
            loob_rows_from(&(k * self.cfg.inv_tau)?, start, self.cfg.loob)? * tau
        };
        let (image, text) = (term(&image)?, term(&text)?);
        Ok(LossOutput {
            loss: (&image + &text)?,
            terms: vec![("image".into(), image), ("text".into(), text)],
        })
    }

    /// Without the Hopfield retrieval each row's InfoLOOB term involves only its own anchor;
    /// with it, every retrieved pattern mixes the whole batch.
    fn supports_local_loss(&self) -> bool {
        !self.cfg.hopfield
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        Ok(vec![
            ("inv_tau".into(), self.cfg.inv_tau as f32),
            ("beta".into(), self.cfg.beta as f32),
        ])
    }
}

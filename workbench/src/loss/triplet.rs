//! Triplet / ranking hinge loss with negative mining, both retrieval directions.
//!
//! Faghri et al., 2018, "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives"
//! (arXiv:1707.05612), Eq. (3)–(5); the seed papers' "global ranking objective" for image–text
//! matching and the triplet network of Hoffer & Ailon (2015). On cosine similarities
//! `s_ij = x_i·y_j` and margin `m`:
//!
//! ```text
//! image→text, anchor i:  [m − s_ii + s_ij]₊  over negative texts j ≠ i
//! text→image, anchor j:  [m − s_jj + s_ij]₊  over negative images i ≠ j
//! ```
//!
//! Mining chooses which negatives count, per anchor:
//! - `all` — the sum over every negative (VSE0);
//! - `hardest` — the most similar negative only (VSE++'s max of hinges);
//! - `semi_hard` — the most similar negative that is still less similar than the positive
//!   (`s_ii − m < s_ij < s_ii`), falling back to the hardest when there is none (FaceNet);
//! - `random` — one uniformly random negative (seeded by the step).
//!
//! Each direction is averaged over anchors; `loss = image_to_text + text_to_image` as in VSE++.
//! Selection is made on the detached similarities; the chosen cells are differentiated.

use super::common::check_batch;
use super::{LossInputs, LossOutput, Objective, anchor_similarities, positive_mask};
use crate::Result;
use crate::params::Scope;
use crate::rng::Rng;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Negative mining mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mining {
    /// Sum over all negatives.
    All,
    /// The hardest negative.
    Hardest,
    /// The hardest negative that is easier than the positive.
    SemiHard,
    /// One random negative.
    Random,
}

/// Settings of [`TripletLoss`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TripletConfig {
    /// Margin `m` on cosine similarity.
    pub margin: f64,
    /// Which negatives count.
    pub mining: Mining,
}

impl Default for TripletConfig {
    fn default() -> Self {
        Self {
            margin: 0.2,
            mining: Mining::Hardest,
        }
    }
}

/// Ranking hinge loss. Terms: `image_to_text`, `text_to_image`.
pub struct TripletLoss {
    cfg: TripletConfig,
}

impl TripletLoss {
    /// No learnable parameters.
    pub fn new(cfg: &TripletConfig, _s: &Scope) -> Result<Self> {
        if !(cfg.margin >= 0.0 && cfg.margin.is_finite()) {
            return Err(crate::Error::config(
                "loss.margin",
                format!("must be >= 0, got {}", cfg.margin),
            ));
        }
        Ok(Self { cfg: cfg.clone() })
    }

    /// The negative chosen for each anchor (row) of `s` `(rows × n)`, whose row `i` has its
    /// positive in column `start + i`, by the mining mode. Random choices are drawn for all `n`
    /// anchors of the batch in order, so that one rank's rows under local losses get the draws
    /// the whole batch would give them.
    fn select(
        &self,
        s: &[f32],
        (rows, n): (usize, usize),
        start: usize,
        step: usize,
        stream: &str,
    ) -> Vec<u32> {
        let m = self.cfg.margin as f32;
        let random: Vec<usize> = if self.cfg.mining == Mining::Random {
            let mut rng = Rng::derive(step as u64, stream, 0);
            (0..n)
                .map(|i| {
                    let k = rng.below(n - 1);
                    if k >= i { k + 1 } else { k }
                })
                .collect()
        } else {
            Vec::new()
        };
        (0..rows)
            .map(|i| {
                let own = start + i;
                let row = &s[i * n..(i + 1) * n];
                let pos = row[own];
                let hardest = (0..n)
                    .filter(|&j| j != own)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                let j = match self.cfg.mining {
                    Mining::Hardest | Mining::All => hardest,
                    Mining::SemiHard => (0..n)
                        .filter(|&j| j != own && row[j] < pos && row[j] > pos - m)
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .unwrap_or(hardest),
                    Mining::Random => random[own],
                };
                j as u32
            })
            .collect()
    }

    /// Mean hinge over anchors (rows of `s` `(rows × n)`, row `i`'s positive in column
    /// `start + i`).
    fn direction(
        &self,
        s: &Tensor,
        start: usize,
        step: usize,
        stream: &str,
    ) -> candle_core::Result<Tensor> {
        let (rows, n) = s.dims2()?;
        let labels =
            Tensor::arange(start as u32, (start + rows) as u32, s.device())?.unsqueeze(1)?;
        let pos = s.gather(&labels, 1)?.squeeze(1)?;
        if self.cfg.mining == Mining::All {
            let off = (1.0 - positive_mask(rows, n, start, s.device())?)?;
            let hinge = (s.broadcast_sub(&pos.unsqueeze(1)?)? + self.cfg.margin)?.relu()?;
            return (hinge * off)?.sum_all()? / rows as f64;
        }
        let host = s.detach().flatten_all()?.to_vec1::<f32>()?;
        let chosen = self.select(&host, (rows, n), start, step, stream);
        let idx = Tensor::from_vec(chosen, (rows, 1), s.device())?;
        let neg = s.gather(&idx, 1)?.squeeze(1)?;
        ((neg - pos)? + self.cfg.margin)?.relu()?.mean_all()
    }
}

impl Objective for TripletLoss {
    fn name(&self) -> &'static str {
        "triplet"
    }

    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        check_batch(x.image, x.text, "triplet")?;
        // The anchors of both directions (this rank's rows, under local losses).
        let (i2t, t2i, start) = anchor_similarities(x.image, x.text, x.local)?;
        let i2t = self.direction(&i2t, start, x.step, "triplet/image")?;
        let t2i = self.direction(&t2i, start, x.step, "triplet/text")?;
        Ok(LossOutput {
            loss: (&i2t + &t2i)?,
            terms: vec![("image_to_text".into(), i2t), ("text_to_image".into(), t2i)],
        })
    }

    fn supports_local_loss(&self) -> bool {
        true
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    fn scalars(&self) -> candle_core::Result<Vec<(String, f32)>> {
        Ok(vec![("margin".into(), self.cfg.margin as f32)])
    }
}

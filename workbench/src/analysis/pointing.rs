//! The pointing game on data with ground truth: does a word land on its object?
//!
//! For every object a caption names (a [`Mention`](crate::data::Mention)), the projected
//! embedding of the mention's **last** token is compared with every projected patch embedding of
//! the image (with a causal text tower the last token is the first to have read the whole
//! mention, "large red *circle*"). The pointing is a hit when the most similar patch overlaps the
//! object's ground-truth mask. Chance is the share of patches that overlap the mask — what a
//! uniformly random patch would score — averaged over mentions.
//!
//! Chance is not the right bar for a model, though: objects are salient, their patches stand
//! out from the uniform background in any embedding, and pointing with *any* direction tends to
//! land on one (an untrained model scores far above chance). So the report also has a
//! **baseline**: the same game played with a random unit vector in place of each mention's
//! embedding (seeded). What the words add is `accuracy − baseline`.
//!
//! This asks for token-level alignment, which only token-level objectives (FILIP) train
//! directly; with global objectives the projected tokens and patches are a by-product, which is
//! exactly what the game measures.

use crate::data::batch::{images_tensor, text_tensors};
use crate::data::{PairDataset, Split, Tokenizer};
use crate::model::{Capture, ClipModel};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Result of the pointing game.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointingReport {
    /// Images played.
    pub images: usize,
    /// Mentions scored.
    pub mentions: usize,
    /// Mentions whose best patch overlaps the object.
    pub hits: usize,
    /// `hits / mentions`.
    pub accuracy: f32,
    /// Mean over mentions of the share of patches overlapping the object.
    pub chance: f32,
    /// Accuracy when pointing with a random direction instead of the words (image saliency).
    pub baseline: f32,
}

/// Whether the highest of `scores` (one per patch of a `grid × grid` layout of `patch`-pixel
/// squares) falls on a patch overlapping `mask` (row-major, `grid·patch` pixels wide), and the
/// share of patches that overlap it.
pub fn point(scores: &[f32], grid: usize, patch: usize, mask: &[bool]) -> (bool, f32) {
    let width = grid * patch;
    let overlaps = |k: usize| {
        let (r, c) = (k / grid, k % grid);
        (r * patch..(r + 1) * patch)
            .any(|y| (c * patch..(c + 1) * patch).any(|x| mask.get(y * width + x) == Some(&true)))
    };
    let best = (0..scores.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap_or(0);
    let covered = (0..scores.len()).filter(|&k| overlaps(k)).count();
    (overlaps(best), covered as f32 / scores.len().max(1) as f32)
}

/// Plays the pointing game on the first `limit` images of `split` (first caption of each).
pub fn pointing_game(
    model: &ClipModel,
    dataset: &dyn PairDataset,
    split: Split,
    tokenizer: &Tokenizer,
    device: &Device,
    limit: usize,
    chunk: usize,
) -> Result<PointingReport> {
    let n = limit.min(dataset.len(split));
    let patch = model.config().vision.patch_size;
    let grid = dataset.image_size() / patch;
    let (mut mentions, mut hits, mut chance, mut baseline) = (0usize, 0usize, 0f64, 0usize);
    let mut images = 0;
    for start in (0..n).step_by(chunk.max(1)) {
        let samples = (start..(start + chunk.max(1)).min(n))
            .map(|i| dataset.sample(split, i))
            .collect::<Result<Vec<_>>>()?;
        let with_truth: Vec<_> = samples
            .iter()
            .filter(|s| s.truth.is_some() && !s.captions.is_empty())
            .collect();
        if with_truth.is_empty() {
            continue;
        }
        let imgs: Vec<_> = with_truth.iter().map(|s| &s.image).collect();
        let texts: Vec<&str> = with_truth
            .iter()
            .map(|s| s.captions[0].text.as_str())
            .collect();
        let (tokens, eos, _) = text_tensors(&texts, tokenizer, device)?;
        let patches = model
            .encode_image(&images_tensor(&imgs, device)?, Capture::TOKENS)?
            .tokens
            .ok_or_else(|| Error::Data("the image tower returned no patch embeddings".into()))?;
        let words = model
            .encode_text(&tokens, &eos, Capture::TOKENS)?
            .tokens
            .ok_or_else(|| Error::Data("the text tower returned no token embeddings".into()))?;
        for (b, s) in with_truth.iter().enumerate() {
            let caption = &s.captions[0];
            let Some(truth) = &s.truth else { continue };
            let spans: Vec<(usize, usize)> =
                caption.mentions.iter().map(|m| (m.start, m.end)).collect();
            let owner = tokenizer.encode(&caption.text)?.token_spans(&spans);
            let p = patches.get(b)?; // (N, E)
            let w = words.get(b)?; // (T, E)
            for (k, m) in caption.mentions.iter().enumerate() {
                let Some(last) = owner.iter().rposition(|o| *o == Some(k)) else {
                    continue;
                };
                let Some(object) = truth.objects.get(m.object) else {
                    continue;
                };
                let scores = p
                    .matmul(&w.get(last)?.unsqueeze(1)?)?
                    .squeeze(1)?
                    .to_vec1::<f32>()?;
                let (hit, share) = point(&scores, grid, patch, &object.mask);
                let mut rng = Rng::derive(0, "pointing/baseline", mentions as u64);
                let dir = Tensor::from_vec(rng.normal_vec(p.dim(1)?, 1.0), (p.dim(1)?, 1), device)?;
                let random = p.matmul(&dir)?.squeeze(1)?.to_vec1::<f32>()?;
                baseline += usize::from(point(&random, grid, patch, &object.mask).0);
                mentions += 1;
                hits += usize::from(hit);
                chance += f64::from(share);
            }
            images += 1;
        }
    }
    if mentions == 0 {
        return Err(Error::Data(format!(
            "the pointing game needs captions that name objects with ground-truth masks; the {split} split of {} has none",
            dataset.name()
        )));
    }
    Ok(PointingReport {
        images,
        mentions,
        hits,
        accuracy: hits as f32 / mentions as f32,
        chance: (chance / mentions as f64) as f32,
        baseline: baseline as f32 / mentions as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oracle_always_hits_and_chance_is_the_covered_share() {
        // 4 × 4 grid of 2-pixel patches; the object covers pixels (2..4, 0..3): patches (0,1),
        // (1,1) — rows 0..4 of columns 2..3 overlap patch column 1 only.
        let (grid, patch) = (4, 2);
        let width = grid * patch;
        let mut mask = vec![false; width * width];
        for y in 0..3 {
            for x in 2..4 {
                mask[y * width + x] = true;
            }
        }
        let mut oracle = vec![0f32; 16];
        oracle[grid + 1] = 1.0;
        let (hit, chance) = point(&oracle, grid, patch, &mask);
        assert!(hit);
        assert!((chance - 2.0 / 16.0).abs() < 1e-6);
        let mut wrong = vec![0f32; 16];
        wrong[15] = 1.0;
        assert!(!point(&wrong, grid, patch, &mask).0);
        // Random scores hit at the covered share.
        let mut rng = Rng::new(9);
        let trials = 4000;
        let hits = (0..trials)
            .filter(|_| {
                let scores: Vec<f32> = (0..16).map(|_| rng.uniform() as f32).collect();
                point(&scores, grid, patch, &mask).0
            })
            .count();
        let rate = hits as f32 / trials as f32;
        assert!((rate - chance).abs() < 0.02, "{rate} vs {chance}");
    }
}

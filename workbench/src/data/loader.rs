//! The training loader: seeded shuffling, caption choice and augmentation, parallel decoding.
//!
//! The loader walks an endless sequence of positions; position `p` is item `p mod N` of the
//! permutation of epoch `p div N`. The permutation, the caption drawn for the item and its
//! augmentation all derive from `(seed, position)`, so the loader's whole state is one integer
//! ([`LoaderState`]) and a resumed run sees exactly the batches the uninterrupted run would have.

use crate::data::{Batch, PairDataset, RgbImage, Split, Tokenizer, collate};
use crate::rng::Rng;
use crate::{Error, Result};
use candle_core::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Image augmentation for training (off by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Largest random translation in pixels (edges replicated). Relations between objects are kept.
    pub shift: usize,
    /// Standard deviation of extra pixel noise, as a fraction of full scale.
    pub noise: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            shift: 0,
            noise: 0.0,
        }
    }
}

impl AugmentConfig {
    /// Applies the augmentation to `im` with randomness from `rng`.
    pub fn apply(&self, im: &RgbImage, rng: &mut Rng) -> RgbImage {
        let mut out = im.clone();
        if self.shift > 0 {
            let s = self.shift as i64;
            let dx = rng.below(2 * self.shift + 1) as i64 - s;
            let dy = rng.below(2 * self.shift + 1) as i64 - s;
            let (w, h) = (im.width as i64, im.height as i64);
            for y in 0..h {
                for x in 0..w {
                    let sx = (x - dx).clamp(0, w - 1) as usize;
                    let sy = (y - dy).clamp(0, h - 1) as usize;
                    out.set_pixel(x as usize, y as usize, im.pixel(sx, sy));
                }
            }
        }
        if self.noise > 0.0 {
            for v in &mut out.data {
                let n = rng.normal() as f32 * self.noise * 255.0;
                *v = (f32::from(*v) + n).round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

/// Where the loader is in its endless stream; saved in checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Number of items handed out so far.
    pub position: u64,
}

/// Seeded batch loader over the training split of a [`PairDataset`].
pub struct Loader {
    dataset: Arc<dyn PairDataset>,
    tokenizer: Arc<Tokenizer>,
    batch_size: usize,
    seed: u64,
    augment: AugmentConfig,
    device: Device,
    state: LoaderState,
    epoch_perm: Option<(u64, Vec<usize>)>,
}

impl Loader {
    /// A loader at position 0.
    pub fn new(
        dataset: Arc<dyn PairDataset>,
        tokenizer: Arc<Tokenizer>,
        batch_size: usize,
        seed: u64,
        augment: AugmentConfig,
        device: Device,
    ) -> Result<Self> {
        if dataset.is_empty(Split::Train) {
            return Err(Error::Data(format!(
                "dataset {} has no training images",
                dataset.name()
            )));
        }
        Ok(Self {
            dataset,
            tokenizer,
            batch_size,
            seed,
            augment,
            device,
            state: LoaderState::default(),
            epoch_perm: None,
        })
    }

    /// Current position.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continues from a saved position.
    pub fn set_state(&mut self, state: LoaderState) {
        self.state = state;
    }

    /// Pairs per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Items per epoch.
    pub fn epoch_len(&self) -> usize {
        self.dataset.len(Split::Train)
    }

    fn index_at(&mut self, position: u64) -> usize {
        let n = self.epoch_len() as u64;
        let epoch = position / n;
        if self.epoch_perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let perm = Rng::derive(self.seed, "loader/epoch", epoch).permutation(n as usize);
            self.epoch_perm = Some((epoch, perm));
        }
        let perm = self
            .epoch_perm
            .as_ref()
            .map_or(&[][..], |(_, p)| p.as_slice());
        perm[(position % n) as usize]
    }

    /// The next batch; advances the position by the batch size.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let start = self.state.position;
        let positions: Vec<(u64, usize)> = (start..start + self.batch_size as u64)
            .map(|p| (p, self.index_at(p)))
            .collect();
        let rows = positions
            .par_iter()
            .map(|&(p, index)| {
                let sample = self.dataset.sample(Split::Train, index)?;
                let mut rng = Rng::derive(self.seed, "loader/item", p);
                let caption = sample
                    .captions
                    .get(rng.below(sample.captions.len().max(1)))
                    .map(|c| c.text.clone())
                    .ok_or_else(|| Error::Data(format!("train image {index} has no caption")))?;
                Ok((index, self.augment.apply(&sample.image, &mut rng), caption))
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<(usize, &RgbImage, &str)> =
            rows.iter().map(|(i, im, c)| (*i, im, c.as_str())).collect();
        let batch = collate(&refs, &self.tokenizer, &self.device)?;
        self.state.position += self.batch_size as u64;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_moves_content_and_noise_changes_pixels() {
        let mut im = RgbImage::new(4, 4);
        im.set_pixel(1, 1, [200, 0, 0]);
        let aug = AugmentConfig {
            shift: 1,
            noise: 0.0,
        };
        let mut moved = false;
        for seed in 0..20 {
            let out = aug.apply(&im, &mut Rng::new(seed));
            if out != im {
                moved = true;
                assert!(out.data.contains(&200));
            }
        }
        assert!(moved);
        let noisy = AugmentConfig {
            shift: 0,
            noise: 0.1,
        }
        .apply(&im, &mut Rng::new(1));
        assert_ne!(noisy, im);
    }
}

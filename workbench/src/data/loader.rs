//! The training loader: seeded shuffling, caption choice and augmentation, parallel decoding.
//!
//! The loader walks an endless sequence of positions; position `p` is item `p mod N` of the
//! permutation of epoch `p div N`. The permutation, the caption drawn for the item and its
//! augmentation all derive from `(seed, position)`, so the loader's whole state is one integer
//! ([`LoaderState`]) and a resumed run sees exactly the batches the uninterrupted run would have.

use crate::data::{Batch, PairDataset, RgbImage, SecondView, Split, Texts, Tokenizer, collate};
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
    /// Whether the augmentation changes anything.
    pub fn is_identity(&self) -> bool {
        self.shift == 0 && self.noise == 0.0
    }

    /// The augmentation of second views: this one, or a mild default (shift 2, noise 0.02) when
    /// this one is the identity — two identical views would make intra-modal contrast trivial.
    #[must_use]
    pub fn for_second_view(&self) -> Self {
        if self.is_identity() {
            Self {
                shift: 2,
                noise: 0.02,
            }
        } else {
            self.clone()
        }
    }

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

/// What a batch carries beyond images, captions and groups (objectives ask for these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// Hard-negative captions per image (0: none).
    pub hard_negatives: usize,
    /// A second augmented view and a second caption per image.
    pub second_views: bool,
}

/// Where the loader is in its endless stream; saved in checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Number of items handed out so far.
    pub position: u64,
}

/// Seeded batch loader over the training split of a [`PairDataset`].
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn PairDataset>,
    tokenizer: Arc<Tokenizer>,
    batch_size: usize,
    seed: u64,
    augment: AugmentConfig,
    device: Device,
    state: LoaderState,
    epoch_perm: Option<(u64, Vec<usize>)>,
    /// `(rank, world)`: this loader yields rows `rank·b .. (rank+1)·b` of each global batch.
    shard: (usize, usize),
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
            shard: (0, 1),
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

    /// The same loader (dataset, seed, position) building its tensors on `device`.
    #[must_use]
    pub fn on_device(&self, device: Device) -> Self {
        Self {
            device,
            ..self.clone()
        }
    }

    /// The device the batches' tensors are built on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pairs per batch (the global batch when the loader is sharded).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Makes the loader rank `rank` of `world` data-parallel ranks: each batch is its
    /// `batch_size / world` rows `rank·b .. (rank+1)·b` of the global batch the unsharded
    /// loader yields, and the position still advances by the global batch, so the shards of
    /// all ranks together are exactly that batch and a checkpoint's position means the same
    /// thing in either run. The caller checks that `world` divides the batch size.
    pub fn set_shard(&mut self, rank: usize, world: usize) {
        self.shard = (rank, world.max(1));
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
        self.next_batch_with(Extras::default())
    }

    /// The next batch with `extras`. Extras draw from their own random streams, so asking for
    /// them never changes the images and captions of the batch itself.
    pub fn next_batch_with(&mut self, extras: Extras) -> Result<Batch> {
        let (rank, world) = self.shard;
        let local = (self.batch_size / world) as u64;
        let start = self.state.position + rank as u64 * local;
        let positions: Vec<(u64, usize)> = (start..start + local)
            .map(|p| (p, self.index_at(p)))
            .collect();
        let view2 = self.augment.for_second_view();
        // Every row is decoded, and the first failing row in batch order is the error: rayon's
        // short-circuiting collect would return whichever failure its scheduling met first.
        let rows = positions
            .par_iter()
            .map(|&(p, index)| self.row(p, index, extras, &view2))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<(usize, &RgbImage, &str)> = rows
            .iter()
            .map(|r| (r.index, &r.image, r.caption.as_str()))
            .collect();
        let mut batch = collate(&refs, &self.tokenizer, &self.device)?;
        batch.groups = rows.iter().map(|r| r.group).collect();
        if extras.hard_negatives > 0 {
            let texts = rows
                .iter()
                .flat_map(|r| r.negatives.iter().cloned())
                .collect();
            batch.negatives = Some(Texts::new(texts, &self.tokenizer, &self.device)?);
        }
        if extras.second_views {
            let images: Vec<&RgbImage> = rows
                .iter()
                .filter_map(|r| r.second.as_ref().map(|s| &s.0))
                .collect();
            let texts = rows
                .iter()
                .filter_map(|r| r.second.as_ref().map(|s| s.1.clone()))
                .collect();
            batch.second = Some(SecondView {
                images: crate::data::batch::images_tensor(&images, &self.device)?,
                texts: Texts::new(texts, &self.tokenizer, &self.device)?,
            });
        }
        self.state.position += self.batch_size as u64;
        Ok(batch)
    }

    fn row(&self, p: u64, index: usize, extras: Extras, view2: &AugmentConfig) -> Result<Row> {
        // The dataset's own training transform draws from a stream of its own, so datasets
        // without one (shapes) see exactly the draws they always did.
        let sample = self
            .dataset
            .train_sample(index, &mut Rng::derive(self.seed, "loader/transform", p))?;
        if sample.captions.is_empty() {
            return Err(Error::Data(format!("train image {index} has no caption")));
        }
        let mut rng = Rng::derive(self.seed, "loader/item", p);
        let c = rng.below(sample.captions.len());
        let image = self.augment.apply(&sample.image, &mut rng);
        let negatives = if extras.hard_negatives > 0 {
            let mut rng = Rng::derive(self.seed, "loader/negatives", p);
            self.dataset.hard_negatives(
                &sample,
                &sample.captions[c],
                extras.hard_negatives,
                &mut rng,
            )?
        } else {
            Vec::new()
        };
        let second = if extras.second_views {
            let mut rng = Rng::derive(self.seed, "loader/second", p);
            let n = sample.captions.len();
            let c2 = if n > 1 {
                (c + 1 + rng.below(n - 1)) % n
            } else {
                c
            };
            Some((
                view2.apply(&sample.image, &mut rng),
                sample.captions[c2].text.clone(),
            ))
        } else {
            None
        };
        Ok(Row {
            index,
            group: sample.group.unwrap_or(index as u64),
            caption: sample.captions[c].text.clone(),
            image,
            negatives,
            second,
        })
    }
}

struct Row {
    index: usize,
    group: u64,
    caption: String,
    image: RgbImage,
    negatives: Vec<String>,
    second: Option<(RgbImage, String)>,
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

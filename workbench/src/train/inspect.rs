//! The [`Trainer`]'s inspection entry points: the analyses of [`crate::analysis`] on the
//! trainer's model, tokenizer, dataset and device.

use super::Trainer;
use crate::Error;
use crate::Result;
use crate::analysis::{
    Alignment, AttentionView, BatchSimilarity, GapAnalysis, HeadDiagnostics, PointingReport,
    ProbeReport, Relevance, align, analyse_gap, attention, batch_similarity, head_diagnostics,
    pointing_game, probe_images, relevance,
};
use crate::data::{RgbImage, Sample, Split};
use crate::eval::{embed_images, embed_texts};
use crate::events::PROBE_TEMPERATURE;

impl Trainer {
    /// Sample `index` of `split`, with an error naming the split's size when out of range.
    pub fn sample(&self, split: Split, index: usize) -> Result<Sample> {
        let n = self.dataset.len(split);
        if index >= n {
            return Err(Error::Data(format!(
                "sample {index} is out of range: the {split} split of {} has {n} images",
                self.dataset.name()
            )));
        }
        self.dataset.sample(split, index)
    }

    /// The pointing game on the first `images` images of `split` (see
    /// [`crate::analysis::pointing`]).
    pub fn pointing_game(&self, split: Split, images: usize) -> Result<PointingReport> {
        pointing_game(
            &self.model,
            self.dataset.as_ref(),
            split,
            &self.tokenizer,
            &self.device,
            images,
            self.cfg.train.eval_batch_size,
        )
    }

    /// The modality gap on `split` and retrieval / zero-shot after shifting along it by each of
    /// `deltas` (see [`crate::analysis::gap`]).
    pub fn analyse_gap(&mut self, split: Split, deltas: &[f32]) -> Result<GapAnalysis> {
        let chunk = self.cfg.train.eval_batch_size;
        self.eval_set(split)?;
        let set = &self.eval_sets[split.name()];
        analyse_gap(
            &self.model,
            set,
            &self.tokenizer,
            &self.device,
            chunk,
            deltas,
        )
    }

    /// Attention of both towers for `image` and `text` (see [`crate::analysis::attention`](mod@crate::analysis::attention)).
    pub fn attention(&self, image: &RgbImage, text: &str) -> Result<AttentionView> {
        self.check_image(image)?;
        attention(&self.model, &self.tokenizer, image, text, &self.device)
    }

    /// Token × patch similarities of `image` and `text` (see [`crate::analysis::alignment`](mod@crate::analysis::alignment)).
    pub fn align(&self, image: &RgbImage, text: &str) -> Result<Alignment> {
        self.check_image(image)?;
        align(&self.model, &self.tokenizer, image, text, &self.device)
    }

    /// Grad-CAM and gradient × attention relevance (see [`crate::analysis::relevance`](mod@crate::analysis::relevance)).
    pub fn relevance(&self, image: &RgbImage, text: &str) -> Result<Relevance> {
        self.check_image(image)?;
        relevance(&self.model, &self.tokenizer, image, text, &self.device)
    }

    /// No-op-head diagnostics averaged over the first `images` images of `split` with their
    /// first captions.
    pub fn head_diagnostics(&self, split: Split, images: usize) -> Result<HeadDiagnostics> {
        let n = images.min(self.dataset.len(split));
        let samples = (0..n)
            .map(|i| self.dataset.sample(split, i))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<_> = samples
            .iter()
            .filter_map(|s| {
                s.captions
                    .first()
                    .map(|c| (&s.image, c.text.as_str(), s.truth.as_ref()))
            })
            .collect();
        head_diagnostics(&self.model, &self.tokenizer, &pairs, &self.device)
    }

    /// kNN and linear probes on the labelled zero-shot images, before and after the projection
    /// head; `None` when the dataset has no labelled images. Uses the cached validation set's
    /// zero-shot images (materialised once, as for evaluation).
    pub fn probes(&mut self) -> Result<Option<ProbeReport>> {
        self.eval_set(Split::Val)?;
        let Some(zs) = &self.eval_sets[Split::Val.name()].zero_shot else {
            return Ok(None);
        };
        if zs.images.len() < 8 {
            return Ok(None);
        }
        probe_images(
            &self.model,
            &zs.images,
            &zs.labels,
            zs.classes.names.len(),
            &self.device,
        )
        .map(Some)
    }

    /// The similarity matrix, per-pair losses and false-negative candidates of the first `n`
    /// images of `split` with their first captions. The loss uses the objective's learnt
    /// temperature when it reports a `logit_scale`, else the probe's fixed τ.
    pub fn batch_similarity(&self, split: Split, n: usize) -> Result<BatchSimilarity> {
        let n = n.min(self.dataset.len(split));
        let samples = (0..n)
            .map(|i| self.dataset.sample(split, i))
            .collect::<Result<Vec<_>>>()?;
        let captions = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.captions
                    .first()
                    .map(|c| c.text.clone())
                    .ok_or_else(|| Error::Data(format!("{split} image {i} has no caption")))
            })
            .collect::<Result<Vec<_>>>()?;
        let images: Vec<RgbImage> = samples.into_iter().map(|s| s.image).collect();
        let chunk = self.cfg.train.eval_batch_size;
        let img = embed_images(&self.model, &images, chunk, &self.device)?;
        let txt = embed_texts(&self.model, &self.tokenizer, &captions, chunk, &self.device)?;
        let e = img.dim(1)?;
        let temperature = self
            .objective
            .scalars()?
            .iter()
            .find(|(k, _)| k.ends_with("logit_scale"))
            .map_or(PROBE_TEMPERATURE, |(_, s)| 1.0 / s.max(1e-6));
        batch_similarity(
            &img.flatten_all()?.to_vec1::<f32>()?,
            &txt.flatten_all()?.to_vec1::<f32>()?,
            e,
            &captions,
            temperature,
        )
    }

    fn check_image(&self, image: &RgbImage) -> Result<()> {
        let s = self.dataset.image_size();
        if image.width != s || image.height != s {
            return Err(Error::Data(format!(
                "the model takes {s}×{s} images; this one is {}×{} (resize it first)",
                image.width, image.height
            )));
        }
        Ok(())
    }
}

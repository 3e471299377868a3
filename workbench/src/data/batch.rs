//! Stacking samples into tensors.

use crate::data::image::{CLIP_MEAN, CLIP_STD};
use crate::data::{RgbImage, Tokenizer};
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// One minibatch. Row `i` of `images` and of `tokens` is a positive pair.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `(B, 3, H, W)` f32, normalised with the CLIP mean and std.
    pub images: Tensor,
    /// `(B, T)` u32 token ids, padded to the longest caption of the batch.
    pub tokens: Tensor,
    /// `(B,)` u32: position of EOS in each row — where the text tower pools.
    pub eos: Tensor,
    /// `(B, T)` f32: 1 for real tokens (BOS through EOS), 0 for padding.
    pub text_mask: Tensor,
    /// Dataset index of each row.
    pub indices: Vec<usize>,
    /// Caption text of each row.
    pub captions: Vec<String>,
    /// Content group of each row (equal ids: same content; see [`Sample::group`]).
    ///
    /// [`Sample::group`]: crate::data::Sample::group
    pub groups: Vec<u64>,
    /// Id of each row's caption text (equal texts, equal ids).
    pub text_ids: Vec<u64>,
    /// Hard-negative captions, `K` per row: rows `i·K .. (i+1)·K` belong to image `i`.
    pub negatives: Option<Texts>,
    /// A second augmented view of every image with a second caption.
    pub second: Option<SecondView>,
}

/// Tokenised texts, padded to the longest.
#[derive(Clone, Debug)]
pub struct Texts {
    /// `(N, T)` u32 token ids.
    pub tokens: Tensor,
    /// `(N,)` u32 EOS positions.
    pub eos: Tensor,
    /// `(N, T)` f32 padding mask.
    pub mask: Tensor,
    /// The texts.
    pub texts: Vec<String>,
}

impl Texts {
    /// Tokenises `texts`.
    pub fn new(texts: Vec<String>, tokenizer: &Tokenizer, device: &Device) -> Result<Self> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (tokens, eos, mask) = text_tensors(&refs, tokenizer, device)?;
        Ok(Self {
            tokens,
            eos,
            mask,
            texts,
        })
    }
}

/// The second view of a batch (intra-modal objectives).
#[derive(Clone, Debug)]
pub struct SecondView {
    /// `(B, 3, H, W)`: each image augmented again, independently of the first view.
    pub images: Tensor,
    /// Another caption of each image (a different paraphrase when the image has one).
    pub texts: Texts,
}

impl Texts {
    /// The same texts with their tensors on `device` (the texts themselves are kept).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            tokens: self.tokens.to_device(device)?,
            eos: self.eos.to_device(device)?,
            mask: self.mask.to_device(device)?,
            texts: self.texts.clone(),
        })
    }
}

impl Batch {
    /// The same batch with every tensor on `device`; a batch already there is returned as it
    /// is. The values are copied exactly, so a batch built on the CPU and moved equals one built
    /// on the device.
    pub fn to_device(self, device: &Device) -> Result<Self> {
        if self.images.device().same_device(device) {
            return Ok(self);
        }
        Ok(Self {
            images: self.images.to_device(device)?,
            tokens: self.tokens.to_device(device)?,
            eos: self.eos.to_device(device)?,
            text_mask: self.text_mask.to_device(device)?,
            negatives: self
                .negatives
                .as_ref()
                .map(|n| n.to_device(device))
                .transpose()?,
            second: self
                .second
                .as_ref()
                .map(|s| -> Result<SecondView> {
                    Ok(SecondView {
                        images: s.images.to_device(device)?,
                        texts: s.texts.to_device(device)?,
                    })
                })
                .transpose()?,
            ..self
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// `(N, 3, H, W)` normalised image tensor.
pub fn images_tensor(images: &[&RgbImage], device: &Device) -> Result<Tensor> {
    let Some(first) = images.first() else {
        return Err(Error::Data("cannot stack zero images".into()));
    };
    let (h, w) = (first.height, first.width);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for im in images {
        if (im.height, im.width) != (h, w) {
            return Err(Error::Data(format!(
                "images in one batch must share a size: {}x{} vs {w}x{h}",
                im.width, im.height
            )));
        }
        im.extend_chw_normalised(CLIP_MEAN, CLIP_STD, &mut data);
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
}

/// Token ids `(N, T)`, EOS positions `(N,)` and the padding mask `(N, T)` for `texts`.
///
/// `T` is the longest text's length (EOS included), at most the context length: the text tower
/// is causal, so positions after the last EOS cannot change any real token's output and are not
/// computed. A tokenizer that [pads to the context](Tokenizer::pads_to_context) (for a
/// bidirectional tower pooled at the last position) gives `T` = the context length.
pub fn text_tensors(
    texts: &[&str],
    tokenizer: &Tokenizer,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let encodings = texts
        .iter()
        .map(|text| tokenizer.encode(text))
        .collect::<Result<Vec<_>>>()?;
    let t = if tokenizer.pads_to_context() {
        tokenizer.context_length()
    } else {
        encodings.iter().map(|e| e.eos + 1).max().unwrap_or(1)
    };
    let mut ids = Vec::with_capacity(texts.len() * t);
    let mut eos = Vec::with_capacity(texts.len());
    let mut mask = Vec::with_capacity(texts.len() * t);
    for e in &encodings {
        ids.extend_from_slice(&e.ids[..t]);
        mask.extend((0..t).map(|i| if i <= e.eos { 1f32 } else { 0.0 }));
        eos.push(e.eos as u32);
    }
    let n = texts.len();
    Ok((
        Tensor::from_vec(ids, (n, t), device)?,
        Tensor::from_vec(eos, n, device)?,
        Tensor::from_vec(mask, (n, t), device)?,
    ))
}

/// Stacks `(dataset index, image, caption)` triples into a [`Batch`]; each row is its own
/// group, and there are no negatives or second views (the [`Loader`](crate::data::Loader) adds
/// them).
pub fn collate(
    rows: &[(usize, &RgbImage, &str)],
    tokenizer: &Tokenizer,
    device: &Device,
) -> Result<Batch> {
    let images: Vec<&RgbImage> = rows.iter().map(|r| r.1).collect();
    let texts: Vec<&str> = rows.iter().map(|r| r.2).collect();
    let (tokens, eos, text_mask) = text_tensors(&texts, tokenizer, device)?;
    Ok(Batch {
        images: images_tensor(&images, device)?,
        tokens,
        eos,
        text_mask,
        indices: rows.iter().map(|r| r.0).collect(),
        captions: texts.iter().map(ToString::to_string).collect(),
        groups: rows.iter().map(|r| r.0 as u64).collect(),
        text_ids: texts.iter().map(|t| crate::rng::hash_str(t)).collect(),
        negatives: None,
        second: None,
    })
}

//! Patch–text alignment: the cosine similarity of every projected patch with every projected
//! text token, and with the pooled caption (FILIP, Yao et al., 2021, arXiv:2111.07783, reads the
//! same token × patch matrix for its late interaction). Any text works, not only the dataset's
//! captions: choose a word, get a heat map over the image grid.

use super::attention::token_labels;
use crate::data::batch::{images_tensor, text_tensors};
use crate::data::{RgbImage, Tokenizer};
use crate::model::{Capture, ClipModel};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Token × patch similarities of one image and one text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alignment {
    /// The text.
    pub text: String,
    /// Token labels, `<bos>` … `<eos>`.
    pub tokens: Vec<String>,
    /// Patches per side; patch `k` is row `k / grid`, column `k % grid`.
    pub grid: usize,
    /// Row-major `tokens × patches` cosine similarities of the projected, normalised tokens.
    pub token_patch: Vec<f32>,
    /// Cosine of the pooled caption embedding with every projected patch.
    pub caption_patch: Vec<f32>,
    /// Cosine of the pooled image embedding with every projected token.
    pub image_token: Vec<f32>,
    /// Cosine of the pooled image and caption embeddings (the model's score before its scale).
    pub score: f32,
}

impl Alignment {
    /// Number of patches.
    pub fn patches(&self) -> usize {
        self.grid * self.grid
    }

    /// Similarities of token `t` with every patch.
    pub fn token_map(&self, t: usize) -> &[f32] {
        let n = self.patches();
        &self.token_patch[t * n..(t + 1) * n]
    }

    /// The last token whose label equals `word` (case-insensitive) and its map. With a causal
    /// text tower the last token of a phrase is the first to have read all of it.
    pub fn word_map(&self, word: &str) -> Option<(usize, &[f32])> {
        let t = self
            .tokens
            .iter()
            .rposition(|w| w.eq_ignore_ascii_case(word.trim()))?;
        Some((t, self.token_map(t)))
    }
}

/// `tokens × patches` dot products of row-major `(t, e)` and `(n, e)` matrices.
pub fn dot_matrix(tokens: &[f32], patches: &[f32], e: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(tokens.len() / e * (patches.len() / e));
    for a in tokens.chunks(e) {
        for b in patches.chunks(e) {
            out.push(a.iter().zip(b).map(|(x, y)| x * y).sum());
        }
    }
    out
}

fn rows(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Aligns `image` with `text` under `model`.
pub fn align(
    model: &ClipModel,
    tokenizer: &Tokenizer,
    image: &RgbImage,
    text: &str,
    device: &Device,
) -> Result<Alignment> {
    if text.trim().is_empty() {
        return Err(Error::Data("alignment needs a non-empty text".into()));
    }
    let x = images_tensor(&[image], device)?;
    let (ids, eos, _) = text_tensors(&[text], tokenizer, device)?;
    let img = model.encode_image(&x, Capture::TOKENS)?;
    let txt = model.encode_text(&ids, &eos, Capture::TOKENS)?;
    let missing = || Error::Data("the towers returned no token embeddings".into());
    let patches = img.tokens.as_ref().ok_or_else(missing)?.get(0)?; // (N, E)
    let tokens = token_labels(tokenizer, text)?;
    let words = txt
        .tokens
        .as_ref()
        .ok_or_else(missing)?
        .get(0)?
        .narrow(0, 0, tokens.len())?; // (T, E)
    let n = patches.dim(0)?;
    let token_patch = rows(&words.matmul(&patches.t()?)?)?;
    let caption = txt.embedding.get(0)?; // (E,)
    let image_emb = img.embedding.get(0)?;
    let caption_patch = rows(&patches.matmul(&caption.unsqueeze(1)?)?)?;
    let image_token = rows(&words.matmul(&image_emb.unsqueeze(1)?)?)?;
    let score = (caption * image_emb)?.sum_all()?.to_scalar::<f32>()?;
    Ok(Alignment {
        text: text.to_string(),
        tokens,
        grid: (n as f64).sqrt().round() as usize,
        token_patch,
        caption_patch,
        image_token,
        score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matrix_by_hand() {
        let t = [1.0, 0.0, 0.0, 2.0];
        let p = [3.0, 4.0, 1.0, 1.0, 0.0, -1.0];
        assert_eq!(dot_matrix(&t, &p, 2), vec![3.0, 1.0, 0.0, 8.0, 2.0, -2.0]);
    }
}

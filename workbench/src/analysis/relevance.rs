//! Gradient relevance of an image–text score on our own model: which patches and which words
//! make the model call this pair a match.
//!
//! - **Grad-CAM** (Selvaraju et al., 2017, arXiv:1610.02391), read on the tokens entering the last
//!   block: channel weights `α_c = mean_n ∂s/∂x_{n,c}` over the patches (or tokens), then
//!   `cam_n = ReLU(Σ_c α_c · x_{n,c})`.
//! - **Gradient × attention relevance** (Chefer et al., 2021, arXiv:2103.15679, eq. 5–6): start
//!   from `R = I`, and for each layer `R ← R + Ā·R` with `Ā = mean_h (∇A ⊙ A)⁺`. The image's
//!   relevance is the pooled query's row over the patches, the text's the EOS row.
//!
//! Both need the gradient of the score `s = ⟨image embedding, caption embedding⟩` (cosine of the
//! normalised embeddings) with respect to intermediate tensors. candle keeps the gradients of
//! variables only, so the model runs with zero-valued variables added to each block's input and
//! attention weights ([`Probes`]); their gradients are exactly the gradients with respect to
//! those tensors, and the values — the score included — are unchanged (the probed path uses the
//! reference attention, equal to the fused kernel to rounding).

use super::attention::{identity, matmul, pooled_row, rollout, token_labels};
use crate::data::batch::{images_tensor, text_tensors};
use crate::data::{RgbImage, Tokenizer};
use crate::model::layers::Probes;
use crate::model::{Capture, ClipModel, TextPool};
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Relevance maps of one image–text pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relevance {
    /// The text.
    pub text: String,
    /// Token labels, `<bos>` … `<eos>`.
    pub tokens: Vec<String>,
    /// Patches per side.
    pub grid: usize,
    /// The score whose gradient is explained (cosine of the two embeddings).
    pub score: f32,
    /// Grad-CAM over the patches (row-major `grid × grid`).
    pub image_grad_cam: Vec<f32>,
    /// Gradient × attention relevance of the patches.
    pub image_relevance: Vec<f32>,
    /// Attention rollout of the pooled query over the patches (no gradients; for comparison).
    pub image_rollout: Vec<f32>,
    /// Grad-CAM over the tokens.
    pub text_grad_cam: Vec<f32>,
    /// Gradient × attention relevance of the tokens (EOS row).
    pub text_relevance: Vec<f32>,
}

/// Grad-CAM of `rows` (a range of positions) of `x` with gradient `g`, both `(len, d)`
/// row-major.
pub fn grad_cam(x: &[f32], g: &[f32], d: usize, rows: std::ops::Range<usize>) -> Vec<f32> {
    let n = rows.len().max(1) as f32;
    let mut alpha = vec![0f32; d];
    for r in rows.clone() {
        for (a, v) in alpha.iter_mut().zip(&g[r * d..(r + 1) * d]) {
            *a += v / n;
        }
    }
    rows.map(|r| {
        let v: f32 = x[r * d..(r + 1) * d]
            .iter()
            .zip(&alpha)
            .map(|(x, a)| x * a)
            .sum();
        v.max(0.0)
    })
    .collect()
}

/// One step of the gradient × attention rule: `R + Ā·R`, `Ā = mean_h (g ⊙ a)⁺` for `a`, `g`
/// row-major `(heads, len, len)`.
pub fn chefer_step(r: &[f32], a: &[f32], g: &[f32], heads: usize, len: usize) -> Vec<f32> {
    let mut bar = vec![0f32; len * len];
    for h in 0..heads {
        let at = h * len * len;
        for (k, b) in bar.iter_mut().enumerate() {
            *b += (a[at + k] * g[at + k]).max(0.0) / heads as f32;
        }
    }
    let ar = matmul(&bar, r, len);
    r.iter().zip(ar).map(|(x, y)| x + y).collect()
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn grad_of(grads: &GradStore, v: &Var) -> Result<Vec<f32>> {
    match grads.get(v.as_tensor()) {
        Some(g) => host(g),
        // No path from this tensor to the score: its gradient is zero.
        None => Ok(vec![0f32; v.elem_count()]),
    }
}

/// Chefer relevance matrix of one tower from its per-layer weights and their probes.
fn relevance_matrix(
    weights: &[Tensor],
    probes: &Probes,
    grads: &GradStore,
    heads: usize,
    len: usize,
) -> Result<Vec<f32>> {
    let mut r = identity(len);
    for (w, p) in weights.iter().zip(&probes.attention) {
        r = chefer_step(&r, &host(w)?, &grad_of(grads, p)?, heads, len);
    }
    Ok(r)
}

fn last_grad(grads: &GradStore, p: &Probes) -> Result<Vec<f32>> {
    let v = p
        .inputs
        .last()
        .ok_or_else(|| Error::Data("a tower has no layers".into()))?;
    grad_of(grads, v)
}

fn last_input(enc: &crate::model::layers::EncoderOutput) -> Result<&Tensor> {
    enc.inputs
        .as_ref()
        .and_then(|v| v.last())
        .ok_or_else(|| Error::Data("the encoder did not keep its block inputs".into()))
}

/// Explains `model`'s score for `image` and `text`.
pub fn relevance(
    model: &ClipModel,
    tokenizer: &Tokenizer,
    image: &RgbImage,
    text: &str,
    device: &Device,
) -> Result<Relevance> {
    let cfg = model.config();
    let (vc, tc) = (&cfg.vision, &cfg.text);
    let x = images_tensor(&[image], device)?;
    let (ids, eos, _) = text_tensors(&[text], tokenizer, device)?;
    let grid = image.width / vc.patch_size;
    let prefix = vc.prefix_tokens();
    let len = prefix + grid * grid;
    let t = ids.dim(1)?;
    let vp = Probes::zeros(vc.layers, (1, len, vc.width), vc.heads, device)?;
    let tp = Probes::zeros(tc.layers, (1, t, tc.width), tc.heads, device)?;
    let img = model.encode_image_with(&x, Capture::ATTENTION, Some(&vp))?;
    let txt = model.encode_text_with(&ids, &eos, Capture::ATTENTION, Some(&tp))?;
    let score = (&img.embedding * &txt.embedding)?.sum_all()?;
    let grads = score.backward()?;
    let tokens = token_labels(tokenizer, text)?;
    let n_tok = tokens.len();
    if n_tok > t || (tc.pool == TextPool::Eos && n_tok != t) {
        return Err(Error::Data(format!(
            "{n_tok} token labels for {t} positions of {text:?}"
        )));
    }
    // The pooled query: EOS, or the last (padding) position of a tower pooled there.
    let pooled = if tc.pool == TextPool::Last {
        t - 1
    } else {
        n_tok - 1
    };

    let no_weights = || Error::Data("the tower returned no attention weights".into());
    let vw = img.attentions.as_ref().ok_or_else(no_weights)?;
    let tw = txt.attentions.as_ref().ok_or_else(no_weights)?;
    let r_img = relevance_matrix(vw, &vp, &grads, vc.heads, len)?;
    let r_txt = relevance_matrix(tw, &tp, &grads, tc.heads, t)?;
    let means: Vec<Vec<f32>> = vw
        .iter()
        .map(|w| -> Result<Vec<f32>> { host(&w.get(0)?.mean(0)?) })
        .collect::<Result<_>>()?;

    let xi = last_input(&img.tower.encoder)?;
    let image_grad_cam = grad_cam(&host(xi)?, &last_grad(&grads, &vp)?, vc.width, prefix..len);
    let xt = last_input(&txt.tower.encoder)?;
    let text_grad_cam = grad_cam(&host(xt)?, &last_grad(&grads, &tp)?, tc.width, 0..n_tok);

    Ok(Relevance {
        text: text.to_string(),
        grid,
        score: score.to_scalar::<f32>()?,
        image_grad_cam,
        image_relevance: pooled_row(&r_img, len, prefix, vc.pool),
        image_rollout: pooled_row(&rollout(&means, len, true), len, prefix, vc.pool),
        text_relevance: r_txt[pooled * t..pooled * t + n_tok].to_vec(),
        text_grad_cam,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_cam_by_hand() {
        // Rows 1..3 of a (3, 2) activation; gradient mean over rows 1..3 is (1, −1).
        let x = [9.0, 9.0, 2.0, 1.0, 1.0, 3.0];
        let g = [5.0, 5.0, 2.0, -1.0, 0.0, -1.0];
        assert_eq!(grad_cam(&x, &g, 2, 1..3), vec![1.0, 0.0]);
    }

    #[test]
    fn chefer_step_by_hand() {
        // Two heads over 2 positions, R = I: Ā = mean of positive parts of a ⊙ g.
        let a = [0.5, 0.5, 0.0, 1.0, 1.0, 0.0, 0.5, 0.5];
        let g = [2.0, -2.0, 0.0, 1.0, 1.0, 1.0, -4.0, 2.0];
        // head 0: [[1, 0], [0, 1]]; head 1: [[1, 0], [0, 1]] → Ā = [[1, 0], [0, 1]].
        let r = chefer_step(&identity(2), &a, &g, 2, 2);
        assert_eq!(r, vec![2.0, 0.0, 0.0, 2.0]);
        // Negative contributions are dropped: all-negative gradients leave R unchanged.
        let neg: Vec<f32> = g.iter().map(|x| -x.abs()).collect();
        assert_eq!(chefer_step(&identity(2), &a, &neg, 2, 2), identity(2));
    }
}

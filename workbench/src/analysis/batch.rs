//! A batch's similarity matrix, each pair's loss, and the off-diagonal pairs most likely to be
//! false negatives — captions that describe image `i` as well as its own (Chuang et al., 2020,
//! arXiv:2007.00224; the false-negative problem of in-batch contrastive learning).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// One off-diagonal pair the model scores close to (or above) the positive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FalseNegative {
    /// Image row.
    pub image: usize,
    /// Caption column (the positive caption of image `caption`).
    pub caption: usize,
    /// `s[image, caption]`.
    pub similarity: f32,
    /// `s[image, caption] − s[image, image]`: above zero the model prefers the other caption.
    pub margin: f32,
    /// The two captions are the same text — a certain false negative.
    pub same_text: bool,
}

/// Similarities, per-pair losses and false-negative candidates of a batch of `n` pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchSimilarity {
    /// Pairs.
    pub n: usize,
    /// Caption of each pair.
    pub captions: Vec<String>,
    /// Row-major `n × n` cosine similarities, image rows × caption columns.
    pub similarity: Vec<f32>,
    /// Temperature of the per-pair loss.
    pub temperature: f32,
    /// Per pair, the symmetric InfoNCE: `½(CE(row i) + CE(column i))` at `temperature`.
    pub loss: Vec<f32>,
    /// Off-diagonal pairs by decreasing margin (at most `n` of them).
    pub false_negatives: Vec<FalseNegative>,
}

fn lse(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Analyses matched L2-normalised `(n, e)` embeddings (row `i` of each is a pair).
pub fn batch_similarity(
    image: &[f32],
    text: &[f32],
    e: usize,
    captions: &[String],
    temperature: f32,
) -> Result<BatchSimilarity> {
    let n = captions.len();
    if n < 2 || e == 0 || image.len() != n * e || text.len() != n * e || temperature <= 0.0 {
        return Err(Error::Data(format!(
            "batch similarity needs n ≥ 2 pairs of width e > 0 and a positive temperature; got {} image and {} text values for {n} captions, e = {e}, τ = {temperature}",
            image.len(),
            text.len()
        )));
    }
    let similarity: Vec<f32> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            image[i * e..(i + 1) * e]
                .iter()
                .zip(&text[j * e..(j + 1) * e])
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect();
    let s = |i: usize, j: usize| f64::from(similarity[i * n + j]) / f64::from(temperature);
    let loss = (0..n)
        .map(|i| {
            let row = lse((0..n).map(|j| s(i, j))) - s(i, i);
            let col = lse((0..n).map(|j| s(j, i))) - s(i, i);
            (0.5 * (row + col)) as f32
        })
        .collect();
    let mut false_negatives: Vec<FalseNegative> = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| FalseNegative {
            image: i,
            caption: j,
            similarity: similarity[i * n + j],
            margin: similarity[i * n + j] - similarity[i * n + i],
            same_text: captions[i] == captions[j],
        })
        .collect();
    false_negatives.sort_by(|a, b| {
        b.margin
            .total_cmp(&a.margin)
            .then(a.image.cmp(&b.image))
            .then(a.caption.cmp(&b.caption))
    });
    false_negatives.truncate(n);
    Ok(BatchSimilarity {
        n,
        captions: captions.to_vec(),
        similarity,
        temperature,
        loss,
        false_negatives,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_and_candidates_by_hand() {
        // Image 0 = caption 0 = e0; image 1 = e0 too (a duplicate), caption 1 = e1.
        let image = [1.0, 0.0, 1.0, 0.0];
        let text = [1.0, 0.0, 0.0, 1.0];
        let caps = vec!["a".to_string(), "b".to_string()];
        let b = batch_similarity(&image, &text, 2, &caps, 1.0).unwrap();
        assert_eq!(b.similarity, vec![1.0, 0.0, 1.0, 0.0]);
        // Pair 0: row [1, 0] → ln(e + 1) − 1; column [1, 1] → ln 2e − 1.
        let e = std::f64::consts::E;
        let want0 = 0.5 * ((e + 1.0).ln() - 1.0 + (2.0 * e).ln() - 1.0);
        assert!((f64::from(b.loss[0]) - want0).abs() < 1e-6);
        // Pair 1: row [1, 0] vs positive 0 → ln(e + 1); column [0, 0] → ln 2.
        let want1 = 0.5 * ((e + 1.0).ln() + 2f64.ln());
        assert!((f64::from(b.loss[1]) - want1).abs() < 1e-6);
        // Image 1 prefers caption 0 by a margin of 1: the top candidate.
        let top = &b.false_negatives[0];
        assert_eq!((top.image, top.caption, top.margin), (1, 0, 1.0));
        assert!(!top.same_text);
        assert!(batch_similarity(&image, &text, 2, &caps[..1], 1.0).is_err());
    }
}

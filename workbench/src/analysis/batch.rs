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

/// Which way a batch is searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// An image is the query; the captions are ranked.
    ImageToText,
    /// A caption is the query; the images are ranked.
    TextToImage,
}

/// One retrieved item of [`BatchSimilarity::top_k`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Rank, from 1.
    pub rank: usize,
    /// Index of the retrieved caption (image → text) or image (text → image).
    pub index: usize,
    /// Its cosine similarity with the query.
    pub similarity: f32,
    /// It is the query's own pair, or a caption with the same text as the query's pair's.
    pub correct: bool,
}

impl BatchSimilarity {
    /// `s[image, caption]`.
    pub fn at(&self, image: usize, caption: usize) -> f32 {
        self.similarity[image * self.n + caption]
    }

    /// Whether retrieving `retrieved` for `query` is right: the pair itself, or (image → text)
    /// a caption whose text equals the query image's own caption, or (text → image) an image
    /// whose caption equals the query's text.
    fn correct(&self, query: usize, retrieved: usize) -> bool {
        retrieved == query || self.captions[retrieved] == self.captions[query]
    }

    /// The `k` best matches of `query` in the batch, best first (ties by index). `query` is
    /// an image row (image → text) or a caption column (text → image); out of range → empty.
    pub fn top_k(&self, query: usize, direction: Direction, k: usize) -> Vec<Hit> {
        if query >= self.n {
            return Vec::new();
        }
        let score = |j: usize| match direction {
            Direction::ImageToText => self.at(query, j),
            Direction::TextToImage => self.at(j, query),
        };
        let mut order: Vec<usize> = (0..self.n).collect();
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .enumerate()
            .map(|(r, j)| Hit {
                rank: r + 1,
                index: j,
                similarity: score(j),
                correct: self.correct(query, j),
            })
            .collect()
    }

    /// Share of queries whose first correct match ranks within `k` (recall@k inside the
    /// batch; a caption with the same text as the pair's counts as correct).
    pub fn recall_at(&self, direction: Direction, k: usize) -> f32 {
        if self.n == 0 {
            return 0.0;
        }
        let hits = (0..self.n)
            .filter(|&q| self.top_k(q, direction, k).iter().any(|h| h.correct))
            .count();
        hits as f32 / self.n as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_recall_by_hand() {
        // s = [[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.4, 0.6, 0.7]]; captions 1 and 2 are the
        // same text.
        let b = BatchSimilarity {
            n: 3,
            captions: vec!["a".into(), "b".into(), "b".into()],
            similarity: vec![0.9, 0.1, 0.5, 0.2, 0.3, 0.8, 0.4, 0.6, 0.7],
            temperature: 1.0,
            loss: vec![0.0; 3],
            false_negatives: Vec::new(),
        };
        let hits = b.top_k(1, Direction::ImageToText, 2);
        assert_eq!(
            hits.iter().map(|h| (h.rank, h.index)).collect::<Vec<_>>(),
            vec![(1, 2), (2, 1)]
        );
        // Caption 2 has image 1's text: correct although it is not the pair.
        assert!(hits[0].correct && hits[1].correct);
        assert_eq!(hits[0].similarity, 0.8);
        // Column 0 = [0.9, 0.2, 0.4]: images 0, 2, 1.
        let col: Vec<usize> = b
            .top_k(0, Direction::TextToImage, 3)
            .iter()
            .map(|h| h.index)
            .collect();
        assert_eq!(col, vec![0, 2, 1]);
        // Image → text R@1: image 0 → caption 0 ✓, image 1 → caption 2 (same text) ✓,
        // image 2 → caption 2 ✓.
        assert_eq!(b.recall_at(Direction::ImageToText, 1), 1.0);
        // Text → image R@1: caption 0 → image 0 ✓; caption 1 → column [0.1, 0.3, 0.6] → image
        // 2, whose caption is also "b" ✓; caption 2 → [0.5, 0.8, 0.7] → image 1 ✓ (same text).
        assert_eq!(b.recall_at(Direction::TextToImage, 1), 1.0);
        let mut distinct = b.clone();
        distinct.captions = vec!["a".into(), "b".into(), "c".into()];
        // Now image 1 → caption 2 is wrong, caption 1 → image 2 and caption 2 → image 1 too.
        assert!((distinct.recall_at(Direction::ImageToText, 1) - 2.0 / 3.0).abs() < 1e-6);
        assert!((distinct.recall_at(Direction::TextToImage, 1) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(distinct.recall_at(Direction::TextToImage, 3), 1.0);
        assert!(b.top_k(3, Direction::ImageToText, 2).is_empty());
    }

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

//! Metrics as pure functions on plain row-major `f32` matrices — easy to test by hand.

use crate::events::Recall;

/// A dense row-major matrix view.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// `rows × cols` values.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl Matrix<'_> {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// For each row (query), the 0-based rank of its best correct column: the number of columns
/// scoring strictly higher than the highest-scoring correct one. (Ties count in the query's
/// favour; with several correct columns — e.g. duplicate captions — the best one counts, as in
/// COCO retrieval with five captions per image.) Rows with no correct column get rank `cols`.
pub fn ranks(scores: Matrix<'_>, correct: impl Fn(usize, usize) -> bool) -> Vec<usize> {
    (0..scores.rows)
        .map(|i| {
            let row = scores.row(i);
            let best = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| correct(i, j))
                .map(|(_, &s)| s)
                .fold(f32::NEG_INFINITY, f32::max);
            if best == f32::NEG_INFINITY {
                return scores.cols;
            }
            row.iter().filter(|&&s| s > best).count()
        })
        .collect()
}

/// R@1/5/10 and mean/median rank from 0-based ranks (open_clip `_add_rank_metrics`).
pub fn recall(ranks: &[usize]) -> Recall {
    if ranks.is_empty() {
        return Recall::default();
    }
    let n = ranks.len() as f32;
    let at = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f32 / n;
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    let m = sorted.len();
    let median = if m % 2 == 1 {
        sorted[m / 2] as f32
    } else {
        (sorted[m / 2 - 1] + sorted[m / 2]) as f32 / 2.0
    };
    Recall {
        r1: at(1),
        r5: at(5),
        r10: at(10),
        mean_rank: ranks.iter().sum::<usize>() as f32 / n + 1.0,
        median_rank: median.floor() + 1.0,
    }
}

/// Image↔text retrieval where a caption is correct for an image when its text equals one of the
/// image's own captions (synthetic captions repeat across images).
///
/// `scores` is `images × captions`; `image_texts[i]` are the text ids of image `i`'s captions and
/// `caption_text[j]` is the text id of caption `j`. Returns (image→text, text→image).
pub fn retrieval(
    scores: Matrix<'_>,
    image_texts: &[Vec<usize>],
    caption_text: &[usize],
) -> (Recall, Recall) {
    let i2t = ranks(scores, |i, j| image_texts[i].contains(&caption_text[j]));
    let transposed = transpose(scores);
    let t = Matrix {
        data: &transposed,
        rows: scores.cols,
        cols: scores.rows,
    };
    let t2i = ranks(t, |j, i| image_texts[i].contains(&caption_text[j]));
    (recall(&i2t), recall(&t2i))
}

/// The transpose of `m`, row-major.
pub fn transpose(m: Matrix<'_>) -> Vec<f32> {
    let mut out = vec![0.0; m.data.len()];
    for i in 0..m.rows {
        for j in 0..m.cols {
            out[j * m.rows + i] = m.data[i * m.cols + j];
        }
    }
    out
}

/// Index of the largest value of each row.
pub fn argmax_rows(m: Matrix<'_>) -> Vec<usize> {
    (0..m.rows)
        .map(|i| {
            m.row(i)
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (j, &v)| {
                    if v > bv { (j, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

/// Fraction of `predicted` equal to `truth`, over the positions where `keep` holds.
pub fn accuracy(predicted: &[usize], truth: &[usize], keep: impl Fn(usize) -> bool) -> Option<f32> {
    let (hit, n) = predicted
        .iter()
        .zip(truth)
        .filter(|(_, t)| keep(**t))
        .fold((0usize, 0usize), |(h, n), (p, t)| {
            (h + usize::from(p == t), n + 1)
        });
    (n > 0).then(|| hit as f32 / n as f32)
}

/// Column means of a row-major `rows × cols` matrix.
pub fn centroid(m: Matrix<'_>) -> Vec<f32> {
    let mut c = vec![0f64; m.cols];
    for i in 0..m.rows {
        for (acc, &v) in c.iter_mut().zip(m.row(i)) {
            *acc += f64::from(v);
        }
    }
    c.into_iter()
        .map(|v| (v / m.rows.max(1) as f64) as f32)
        .collect()
}

/// Modality gap (Liang et al., 2022, "Mind the Gap", arXiv:2203.02053): the distance between
/// the centroids of the L2-normalised image and text embeddings, `‖mean(x) − mean(y)‖₂`.
pub fn modality_gap(images: Matrix<'_>, texts: Matrix<'_>) -> f32 {
    let a = centroid(images);
    let b = centroid(texts);
    a.iter()
        .zip(&b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_recall_by_hand() {
        // 3 queries × 4 items; correct item of query i is i.
        let s = [
            0.9, 0.1, 0.2, 0.3, // rank 0
            0.5, 0.4, 0.6, 0.0, // two items above → rank 2
            0.1, 0.2, 0.3, 0.4, // one above → rank 1
        ];
        let m = Matrix {
            data: &s,
            rows: 3,
            cols: 4,
        };
        let r = ranks(m, |i, j| i == j);
        assert_eq!(r, vec![0, 2, 1]);
        let rec = recall(&r);
        assert!((rec.r1 - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(rec.r5, 1.0);
        assert!((rec.mean_rank - 2.0).abs() < 1e-6);
        assert_eq!(rec.median_rank, 2.0);
    }

    #[test]
    fn duplicate_caption_text_counts_as_correct() {
        // 2 images, 3 captions; captions 0 and 2 share text id 0 (image 0's caption),
        // caption 1 is image 1's. Image 0 ranks caption 2 first: correct by text equality.
        let s = [0.5, 0.1, 0.9, 0.2, 0.8, 0.1];
        let m = Matrix {
            data: &s,
            rows: 2,
            cols: 3,
        };
        let (i2t, t2i) = retrieval(m, &[vec![0], vec![1]], &[0, 1, 0]);
        assert_eq!(i2t.r1, 1.0);
        assert_eq!(t2i.r1, 1.0);
    }

    #[test]
    fn known_gap() {
        // Images all at e1, texts all at e2: centroids e1 and e2, gap √2.
        let x = [1.0, 0.0, 1.0, 0.0];
        let y = [0.0, 1.0, 0.0, 1.0];
        let g = modality_gap(
            Matrix {
                data: &x,
                rows: 2,
                cols: 2,
            },
            Matrix {
                data: &y,
                rows: 2,
                cols: 2,
            },
        );
        assert!((g - 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn argmax_and_accuracy() {
        let s = [0.1, 0.7, 0.2, 0.9, 0.0, 0.1];
        let p = argmax_rows(Matrix {
            data: &s,
            rows: 2,
            cols: 3,
        });
        assert_eq!(p, vec![1, 0]);
        assert_eq!(accuracy(&p, &[1, 2], |_| true), Some(0.5));
        assert_eq!(accuracy(&p, &[1, 2], |t| t == 2), Some(0.0));
        assert_eq!(accuracy(&p, &[1, 2], |_| false), None);
    }
}

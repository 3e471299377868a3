//! Frozen-feature probes: k-nearest-neighbour and linear (multinomial logistic) classification
//! on image features before and after the projection head (CLIP, Radford et al., 2021, §3.2:
//! linear probes; Wu et al., 2018, arXiv:1805.01978: weighted kNN). How much class information
//! the image tower keeps that the shared space does not show.
//!
//! Features are L2-normalised for kNN (cosine neighbours) and standardised with the training
//! rows' mean and standard deviation for the linear probe, which is trained by full-batch
//! gradient descent with a small L2 penalty — deterministic, no random initialisation.

use crate::data::RgbImage;
use crate::data::batch::images_tensor;
use crate::model::{Capture, ClipModel};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Labelled rows, `(n, d)` row-major.
#[derive(Clone, Debug)]
pub struct Features {
    /// Values.
    pub values: Vec<f32>,
    /// Width.
    pub dim: usize,
    /// Class of each row.
    pub labels: Vec<usize>,
}

impl Features {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Splits into (train, test) rows, stratified: within each class, every `k`-th row of that
    /// class (its `k−1`-th, `2k−1`-th, … occurrence) is a test row, so every class with at least
    /// `k` rows is in both parts whatever order the rows come in.
    pub fn split_every(&self, k: usize) -> (Features, Features) {
        let k = k.max(2);
        let mut seen = std::collections::HashMap::new();
        let is_test: Vec<bool> = self
            .labels
            .iter()
            .map(|&l| {
                let c = seen.entry(l).or_insert(0usize);
                *c += 1;
                *c % k == 0
            })
            .collect();
        let pick = |test: bool| {
            let idx: Vec<usize> = (0..self.len()).filter(|&i| is_test[i] == test).collect();
            Features {
                values: idx.iter().flat_map(|&i| self.row(i).to_vec()).collect(),
                dim: self.dim,
                labels: idx.iter().map(|&i| self.labels[i]).collect(),
            }
        };
        (pick(false), pick(true))
    }
}

fn normalised(x: &[f32]) -> Vec<f32> {
    let n = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    x.iter().map(|v| v / n).collect()
}

/// Accuracy of `k`-nearest-neighbour voting (cosine similarity; each neighbour's vote weighs
/// its similarity; ties go to the lower class index).
pub fn knn_accuracy(train: &Features, test: &Features, k: usize, classes: usize) -> Result<f32> {
    check(train, test, classes)?;
    let tr: Vec<Vec<f32>> = (0..train.len()).map(|i| normalised(train.row(i))).collect();
    let mut correct = 0;
    for i in 0..test.len() {
        let q = normalised(test.row(i));
        let mut sims: Vec<(f32, usize)> = tr
            .iter()
            .enumerate()
            .map(|(j, r)| (r.iter().zip(&q).map(|(a, b)| a * b).sum(), j))
            .collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut votes = vec![0f32; classes];
        for &(s, j) in sims.iter().take(k.max(1)) {
            votes[train.labels[j]] += s.max(0.0) + 1e-6;
        }
        let best = (0..classes)
            .max_by(|&a, &b| votes[a].total_cmp(&votes[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        correct += usize::from(best == test.labels[i]);
    }
    Ok(correct as f32 / test.len() as f32)
}

fn check(train: &Features, test: &Features, classes: usize) -> Result<()> {
    if train.is_empty() || test.is_empty() || train.dim != test.dim || train.dim == 0 {
        return Err(Error::Data(format!(
            "a probe needs non-empty train and test features of one width; got {} × {} and {} × {}",
            train.len(),
            train.dim,
            test.len(),
            test.dim
        )));
    }
    if let Some(l) = train
        .labels
        .iter()
        .chain(&test.labels)
        .find(|&&l| l >= classes)
    {
        return Err(Error::Data(format!(
            "label {l} is out of range for {classes} classes"
        )));
    }
    Ok(())
}

/// Test accuracy of a multinomial logistic regression trained on `train` (standardised
/// features, `steps` full-batch gradient steps of size 0.5 with heavy-ball momentum 0.9, L2
/// penalty `1e-4`).
pub fn linear_probe_accuracy(
    train: &Features,
    test: &Features,
    classes: usize,
    steps: usize,
) -> Result<f32> {
    check(train, test, classes)?;
    let d = train.dim;
    let n = train.len() as f64;
    let mut mean = vec![0f64; d];
    let mut std = vec![0f64; d];
    for i in 0..train.len() {
        for (m, x) in mean.iter_mut().zip(train.row(i)) {
            *m += f64::from(*x) / n;
        }
    }
    for i in 0..train.len() {
        for ((s, x), m) in std.iter_mut().zip(train.row(i)).zip(&mean) {
            *s += (f64::from(*x) - m).powi(2) / n;
        }
    }
    let std: Vec<f64> = std.iter().map(|v| v.sqrt().max(1e-8)).collect();
    let standard = |x: &[f32]| -> Vec<f64> {
        x.iter()
            .zip(&mean)
            .zip(&std)
            .map(|((x, m), s)| (f64::from(*x) - m) / s)
            .collect()
    };
    let xs: Vec<Vec<f64>> = (0..train.len()).map(|i| standard(train.row(i))).collect();
    let mut w = vec![0f64; classes * d];
    let mut b = vec![0f64; classes];
    let logits = |w: &[f64], b: &[f64], x: &[f64]| -> Vec<f64> {
        (0..classes)
            .map(|c| {
                b[c] + w[c * d..(c + 1) * d]
                    .iter()
                    .zip(x)
                    .map(|(a, v)| a * v)
                    .sum::<f64>()
            })
            .collect()
    };
    let (lr, l2, momentum) = (0.5, 1e-4, 0.9);
    let mut vw = vec![0f64; classes * d];
    let mut vb = vec![0f64; classes];
    for _ in 0..steps {
        let mut gw = vec![0f64; classes * d];
        let mut gb = vec![0f64; classes];
        for (x, &y) in xs.iter().zip(&train.labels) {
            let z = logits(&w, &b, x);
            let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            for c in 0..classes {
                let err = e[c] / s - if c == y { 1.0 } else { 0.0 };
                gb[c] += err / n;
                for (g, v) in gw[c * d..(c + 1) * d].iter_mut().zip(x) {
                    *g += err * v / n;
                }
            }
        }
        for ((wi, vi), g) in w.iter_mut().zip(&mut vw).zip(&gw) {
            *vi = momentum * *vi + g + l2 * *wi;
            *wi -= lr * *vi;
        }
        for ((bi, vi), g) in b.iter_mut().zip(&mut vb).zip(&gb) {
            *vi = momentum * *vi + g;
            *bi -= lr * *vi;
        }
    }
    let correct = (0..test.len())
        .filter(|&i| {
            let z = logits(&w, &b, &standard(test.row(i)));
            let best = (0..classes)
                .max_by(|&p, &q| z[p].total_cmp(&z[q]).then(q.cmp(&p)))
                .unwrap_or(0);
            best == test.labels[i]
        })
        .count();
    Ok(correct as f32 / test.len() as f32)
}

/// Gradient steps of the linear probe in [`probe_images`].
pub const PROBE_STEPS: usize = 1000;

/// Probe accuracies on one feature kind.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeScores {
    /// Feature width.
    pub dim: usize,
    /// kNN accuracy.
    pub knn: f32,
    /// Linear-probe accuracy.
    pub linear: f32,
}

/// kNN and linear probes before and after the projection head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Training rows.
    pub train: usize,
    /// Test rows.
    pub test: usize,
    /// Classes.
    pub classes: usize,
    /// Neighbours voting.
    pub k: usize,
    /// On the image tower's pooled output (before the projection head).
    pub pre_projection: ProbeScores,
    /// On the normalised shared-space embedding.
    pub post_projection: ProbeScores,
}

/// The image tower's pooled features and the normalised embeddings of `images`, in chunks.
pub fn image_features(
    model: &ClipModel,
    images: &[RgbImage],
    chunk: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    for c in images.chunks(chunk.max(1)) {
        let refs: Vec<&RgbImage> = c.iter().collect();
        let enc = model.encode_image(&images_tensor(&refs, device)?, Capture::NONE)?;
        pre.push(enc.tower.pooled.detach());
        post.push(enc.embedding.detach());
    }
    Ok((Tensor::cat(&pre, 0)?, Tensor::cat(&post, 0)?))
}

/// Runs both probes on labelled `images`: every 4th image of each class is a test image (every
/// 2nd or 3rd when a class has fewer than 4 images).
pub fn probe_images(
    model: &ClipModel,
    images: &[RgbImage],
    labels: &[usize],
    classes: usize,
    device: &Device,
) -> Result<ProbeReport> {
    if images.len() != labels.len() || images.len() < 8 {
        return Err(Error::Data(format!(
            "probes need at least 8 labelled images; got {} images and {} labels",
            images.len(),
            labels.len()
        )));
    }
    let (pre, post) = image_features(model, images, 256, device)?;
    let k = 10;
    // Every 4th image of a class is held out; with fewer images per class, every 2nd or 3rd.
    let mut counts = std::collections::HashMap::new();
    for &l in labels {
        *counts.entry(l).or_insert(0usize) += 1;
    }
    let every = counts.values().copied().min().unwrap_or(2).clamp(2, 4);
    let mut scores = Vec::new();
    let mut test_rows = 0;
    for t in [&pre, &post] {
        let (_, dim) = t.dims2()?;
        let f = Features {
            values: t.flatten_all()?.to_vec1::<f32>()?,
            dim,
            labels: labels.to_vec(),
        };
        let (train, test) = f.split_every(every);
        test_rows = test.len();
        scores.push(ProbeScores {
            dim,
            knn: knn_accuracy(&train, &test, k, classes)?,
            linear: linear_probe_accuracy(&train, &test, classes, PROBE_STEPS)?,
        });
    }
    Ok(ProbeReport {
        train: images.len() - test_rows,
        test: test_rows,
        classes,
        k,
        pre_projection: scores[0],
        post_projection: scores[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> Features {
        // Three classes at the corners of a triangle, four noisy points each.
        let centres = [[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]];
        let jitter = [[0.05, 0.0], [-0.05, 0.02], [0.0, -0.04], [0.03, 0.03]];
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for j in jitter {
            for (c, centre) in centres.iter().enumerate() {
                values.extend([centre[0] + j[0], centre[1] + j[1]]);
                labels.push(c);
            }
        }
        Features {
            values,
            dim: 2,
            labels,
        }
    }

    #[test]
    fn separable_classes_are_probed_perfectly() {
        let (train, test) = blobs().split_every(4);
        assert_eq!((train.len(), test.len()), (9, 3));
        assert_eq!(knn_accuracy(&train, &test, 3, 3).unwrap(), 1.0);
        assert_eq!(linear_probe_accuracy(&train, &test, 3, 200).unwrap(), 1.0);
    }

    #[test]
    fn the_split_is_stratified_whatever_the_row_order() {
        // Labels cycle with period 4: an unstratified "every 4th row" split would put class 3
        // only in the test part and classes 0–2 only in the training part.
        let f = Features {
            values: (0..32).map(|i| i as f32).collect(),
            dim: 1,
            labels: (0..32).map(|i| i % 4).collect(),
        };
        let (train, test) = f.split_every(4);
        assert_eq!((train.len(), test.len()), (24, 8));
        for c in 0..4 {
            assert_eq!(train.labels.iter().filter(|&&l| l == c).count(), 6);
            assert_eq!(test.labels.iter().filter(|&&l| l == c).count(), 2);
        }
    }

    #[test]
    fn knn_votes_like_a_brute_force_count() {
        // 1-D: train points at 1, 2 (class 0) and −1 (class 1); a query at −0.5 has cosine 1
        // with −1 and −1 with the others: k = 1 → class 1; k = 3 → the two class-0 neighbours
        // carry zero weight each (negative similarity clipped), so class 1 still wins where an
        // unweighted majority would say class 0.
        let train = Features {
            values: vec![1.0, 2.0, -1.0],
            dim: 1,
            labels: vec![0, 0, 1],
        };
        let test = Features {
            values: vec![-0.5],
            dim: 1,
            labels: vec![1],
        };
        assert_eq!(knn_accuracy(&train, &test, 1, 2).unwrap(), 1.0);
        assert_eq!(knn_accuracy(&train, &test, 3, 2).unwrap(), 1.0);
        assert!(knn_accuracy(&train, &test, 1, 1).is_err());
    }
}

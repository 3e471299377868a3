//! Embedding geometry and the modality gap.
//!
//! Liang et al., 2022, "Mind the Gap: Understanding the Modality Gap in Multi-modal Contrastive
//! Representation Learning" (arXiv:2203.02053): the L2-normalised image and text embeddings of a
//! CLIP model occupy two separate cones. [`gap_report`] measures that on matched pairs
//! `(x_i, y_i)`, `i < n`, given as row-major `n × d` host matrices:
//!
//! - the gap vector `Δ = mean(x) − mean(y)`, its length, and the cosine of the two centroids;
//! - each modality's cone: the mean cosine of distinct rows, `1/(n(n−1)) Σ_{i≠j} u_i·u_j`;
//! - linear separability: held-out accuracy of a logistic-regression probe telling image rows
//!   from text rows (even rows train, odd rows test);
//! - histograms of matched (`x_i·y_i`) and unmatched (`x_i·y_j`, `i ≠ j`) cosines;
//! - each modality's covariance spectrum and effective rank `exp(H(λ/Σλ))` (Roy & Vetterli,
//!   2007) — how many directions the embeddings really use.
//!
//! [`shift_along_gap`] is the paper's gap-shift experiment: images move by `−(δ/2)·Δ` and texts
//! by `+(δ/2)·Δ`, then every row is re-normalised; `δ = 1` moves both centroids to their
//! midpoint before re-normalisation, `δ < 0` widens the gap.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Counts of values in equal-width bins over `[lo, hi]` (values outside are clamped in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f32,
    /// Right edge of the last bin.
    pub hi: f32,
    /// Count per bin.
    pub counts: Vec<usize>,
}

impl Histogram {
    /// A histogram of `values` with `bins` bins over `[lo, hi]`.
    pub fn new(values: impl IntoIterator<Item = f32>, lo: f32, hi: f32, bins: usize) -> Self {
        let bins = bins.max(1);
        let mut counts = vec![0; bins];
        for v in values {
            let k = ((v - lo) / (hi - lo) * bins as f32).floor();
            counts[(k.max(0.0) as usize).min(bins - 1)] += 1;
        }
        Self { lo, hi, counts }
    }

    /// Total count.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// The modality gap and the geometry of both embedding sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GapReport {
    /// Pairs measured.
    pub pairs: usize,
    /// Embedding size.
    pub dim: usize,
    /// `mean(image) − mean(text)`.
    pub gap_vector: Vec<f32>,
    /// `‖gap_vector‖₂`.
    pub centroid_distance: f32,
    /// Cosine of the two centroids.
    pub centroid_cosine: f32,
    /// Mean cosine between distinct image rows.
    pub image_cone: f32,
    /// Mean cosine between distinct text rows.
    pub text_cone: f32,
    /// Held-out accuracy of a logistic probe telling images from texts (0.5: inseparable).
    pub separability: f32,
    /// Mean matched cosine `x_i·y_i`.
    pub matched_mean: f32,
    /// Mean unmatched cosine `x_i·y_j`, `i ≠ j`.
    pub unmatched_mean: f32,
    /// Matched cosines, 40 bins over `[−1, 1]`.
    pub matched_cosine: Histogram,
    /// Unmatched cosines, 40 bins over `[−1, 1]`.
    pub unmatched_cosine: Histogram,
    /// Eigenvalues of the image covariance, descending.
    pub image_spectrum: Vec<f32>,
    /// Eigenvalues of the text covariance, descending.
    pub text_spectrum: Vec<f32>,
    /// `exp(entropy)` of the normalised image spectrum.
    pub image_effective_rank: f32,
    /// `exp(entropy)` of the normalised text spectrum.
    pub text_effective_rank: f32,
}

fn check(image: &[f32], text: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 || image.len() != text.len() || !image.len().is_multiple_of(dim) {
        return Err(Error::Data(format!(
            "gap analysis: {} image and {} text values do not form matched n × {dim} matrices",
            image.len(),
            text.len()
        )));
    }
    let n = image.len() / dim;
    if n < 4 {
        return Err(Error::Data(format!(
            "gap analysis needs at least 4 pairs, got {n}"
        )));
    }
    Ok(n)
}

fn row(m: &[f32], i: usize, d: usize) -> &[f32] {
    &m[i * d..(i + 1) * d]
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn mean_rows(m: &[f32], n: usize, d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d];
    for row in m.chunks_exact(d) {
        for (acc, v) in c.iter_mut().zip(row) {
            *acc += f64::from(*v);
        }
    }
    for v in &mut c {
        *v /= n as f64;
    }
    c
}

/// Mean cosine between distinct rows: `(‖Σ u_i‖² − Σ ‖u_i‖²) / (n(n−1))` for unit rows.
fn cone(m: &[f32], n: usize, d: usize) -> f64 {
    let sum: Vec<f64> = mean_rows(m, n, d).iter().map(|v| v * n as f64).collect();
    let total: f64 = sum.iter().map(|v| v * v).sum();
    let diag: f64 = m.chunks_exact(d).map(|r| dot(r, r)).sum();
    (total - diag) / (n * (n - 1)) as f64
}

/// Eigenvalues (descending) of the covariance of the rows.
fn spectrum(m: &[f32], n: usize, d: usize) -> Vec<f64> {
    let mu = mean_rows(m, n, d);
    let mut c = vec![0.0; d * d];
    for row in m.chunks_exact(d) {
        for a in 0..d {
            let xa = f64::from(row[a]) - mu[a];
            for b in a..d {
                c[a * d + b] += xa * (f64::from(row[b]) - mu[b]);
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            c[a * d + b] /= n as f64;
            c[b * d + a] = c[a * d + b];
        }
    }
    let mut ev = symmetric_eigenvalues(c, d);
    ev.sort_by(|a, b| b.total_cmp(a));
    ev
}

/// Eigenvalues of a symmetric `d × d` matrix by cyclic Jacobi rotations.
pub fn symmetric_eigenvalues(a: Vec<f64>, d: usize) -> Vec<f64> {
    jacobi(a, d, false).0
}

/// Eigenvalues of a symmetric `d × d` matrix in decreasing order, with their unit eigenvectors
/// (`vectors[i]` belongs to `values[i]`; each vector's largest-magnitude entry is positive, so
/// the result is deterministic).
pub fn symmetric_eigen(a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (values, v) = jacobi(a, d, true);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]));
    let vectors = order
        .iter()
        .map(|&i| {
            let mut col: Vec<f64> = (0..d).map(|k| v[k * d + i]).collect();
            let big = col
                .iter()
                .copied()
                .fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
            if big < 0.0 {
                for x in &mut col {
                    *x = -*x;
                }
            }
            col
        })
        .collect();
    (order.iter().map(|&i| values[i]).collect(), vectors)
}

/// Cyclic Jacobi: the diagonal after convergence and, if asked, the accumulated rotations
/// (columns are eigenvectors).
fn jacobi(mut a: Vec<f64>, d: usize, vectors: bool) -> (Vec<f64>, Vec<f64>) {
    let mut v = if vectors {
        vec![0.0; d * d]
    } else {
        Vec::new()
    };
    if vectors {
        for i in 0..d {
            v[i * d + i] = 1.0;
        }
    }
    let scale: f64 = a
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|p| (0..d).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * d + q] * a[p * d + q])
            .sum();
        if off.sqrt() <= 1e-14 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                if vectors {
                    for k in 0..d {
                        let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                        v[k * d + p] = c * vkp - s * vkq;
                        v[k * d + q] = s * vkp + c * vkq;
                    }
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// `exp(H(p))` with `p = λ / Σλ` over the positive eigenvalues.
fn effective_rank(ev: &[f64]) -> f64 {
    let pos: Vec<f64> = ev.iter().copied().filter(|&v| v > 1e-12).collect();
    let total: f64 = pos.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = pos.iter().map(|v| v / total).map(|p| -p * p.ln()).sum();
    h.exp()
}

/// Held-out accuracy of an L2-regularised logistic regression (image = 1, text = 0) trained by
/// full-batch gradient descent on the even rows of both sets, tested on the odd rows.
fn separability(image: &[f32], text: &[f32], n: usize, d: usize) -> f64 {
    let rows = |m: &[f32], parity: usize| -> Vec<Vec<f64>> {
        (0..n)
            .filter(|i| i % 2 == parity)
            .map(|i| {
                m[i * d..(i + 1) * d]
                    .iter()
                    .map(|v| f64::from(*v))
                    .collect()
            })
            .collect()
    };
    let train: Vec<(Vec<f64>, f64)> = rows(image, 0)
        .into_iter()
        .map(|x| (x, 1.0))
        .chain(rows(text, 0).into_iter().map(|x| (x, 0.0)))
        .collect();
    let test: Vec<(Vec<f64>, f64)> = rows(image, 1)
        .into_iter()
        .map(|x| (x, 1.0))
        .chain(rows(text, 1).into_iter().map(|x| (x, 0.0)))
        .collect();
    let (mut w, mut b) = (vec![0.0; d], 0.0);
    let (lr, l2) = (2.0, 1e-4);
    for _ in 0..500 {
        let mut gw = vec![0.0; d];
        let mut gb = 0.0;
        for (x, y) in &train {
            let z: f64 = b + x.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
            let err = 1.0 / (1.0 + (-z).exp()) - y;
            gb += err;
            for (g, v) in gw.iter_mut().zip(x) {
                *g += err * v;
            }
        }
        let m = train.len() as f64;
        for (wi, g) in w.iter_mut().zip(&gw) {
            *wi -= lr * (g / m + l2 * *wi);
        }
        b -= lr * gb / m;
    }
    let hits = test
        .iter()
        .filter(|(x, y)| {
            let z: f64 = b + x.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
            (z > 0.0) == (*y > 0.5)
        })
        .count();
    hits as f64 / test.len().max(1) as f64
}

/// Measures the modality gap and the geometry of matched, L2-normalised embeddings
/// (`image` and `text` are row-major `n × dim`; row `i` of each is a pair).
pub fn gap_report(image: &[f32], text: &[f32], dim: usize) -> Result<GapReport> {
    let n = check(image, text, dim)?;
    let (mi, mt) = (mean_rows(image, n, dim), mean_rows(text, n, dim));
    let gap: Vec<f64> = mi.iter().zip(&mt).map(|(a, b)| a - b).collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let centroid_cosine = mi.iter().zip(&mt).map(|(a, b)| a * b).sum::<f64>()
        / (norm(&mi) * norm(&mt)).max(f64::MIN_POSITIVE);
    let matched: Vec<f32> = (0..n)
        .map(|i| dot(row(image, i, dim), row(text, i, dim)) as f32)
        .collect();
    let unmatched: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| dot(row(image, i, dim), row(text, j, dim)) as f32)
        .collect();
    let mean = |v: &[f32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
    let (si, st) = (spectrum(image, n, dim), spectrum(text, n, dim));
    Ok(GapReport {
        pairs: n,
        dim,
        gap_vector: gap.iter().map(|v| *v as f32).collect(),
        centroid_distance: norm(&gap) as f32,
        centroid_cosine: centroid_cosine as f32,
        image_cone: cone(image, n, dim) as f32,
        text_cone: cone(text, n, dim) as f32,
        separability: separability(image, text, n, dim) as f32,
        matched_mean: mean(&matched) as f32,
        unmatched_mean: mean(&unmatched) as f32,
        matched_cosine: Histogram::new(matched, -1.0, 1.0, 40),
        unmatched_cosine: Histogram::new(unmatched, -1.0, 1.0, 40),
        image_effective_rank: effective_rank(&si) as f32,
        text_effective_rank: effective_rank(&st) as f32,
        image_spectrum: si.iter().map(|v| *v as f32).collect(),
        text_spectrum: st.iter().map(|v| *v as f32).collect(),
    })
}

/// Each row of `m` (`n × dim`) moved by `scale · offset` and re-normalised.
pub fn shift_rows(m: &[f32], dim: usize, offset: &[f32], scale: f32) -> Vec<f32> {
    m.chunks_exact(dim)
        .flat_map(|r| {
            let moved: Vec<f64> = r
                .iter()
                .zip(offset)
                .map(|(v, o)| f64::from(*v) + f64::from(scale) * f64::from(*o))
                .collect();
            let norm = moved.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            moved.into_iter().map(move |v| (v / norm) as f32)
        })
        .collect()
}

/// The gap-shift of Liang et al.: images `x − (δ/2)Δ`, texts `y + (δ/2)Δ`, each row then
/// re-normalised; `Δ` is the gap vector of the inputs.
pub fn shift_along_gap(
    image: &[f32],
    text: &[f32],
    dim: usize,
    delta: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = check(image, text, dim)?;
    let (mi, mt) = (mean_rows(image, n, dim), mean_rows(text, n, dim));
    let gap: Vec<f32> = mi.iter().zip(&mt).map(|(a, b)| (a - b) as f32).collect();
    Ok((
        shift_rows(image, dim, &gap, -delta / 2.0),
        shift_rows(text, dim, &gap, delta / 2.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn unit_rows(rng: &mut Rng, n: usize, d: usize, offset: &[f64]) -> Vec<f32> {
        (0..n)
            .flat_map(|_| {
                let v: Vec<f64> = (0..d).map(|k| rng.normal() + offset[k]).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(move |x| (x / norm) as f32)
            })
            .collect()
    }

    #[test]
    fn a_known_gap_is_measured_exactly() {
        // Images are all e0, texts all e1: centroids e0 and e1, gap √2, cosine 0, cones 1,
        // perfectly separable, matched and unmatched cosines 0, zero covariance.
        let n = 6;
        let image: Vec<f32> = (0..n).flat_map(|_| [1.0, 0.0, 0.0]).collect();
        let text: Vec<f32> = (0..n).flat_map(|_| [0.0, 1.0, 0.0]).collect();
        let r = gap_report(&image, &text, 3).unwrap();
        assert_eq!(r.gap_vector, [1.0, -1.0, 0.0]);
        assert!((r.centroid_distance - 2f32.sqrt()).abs() < 1e-6);
        assert!(r.centroid_cosine.abs() < 1e-6);
        assert!((r.image_cone - 1.0).abs() < 1e-6 && (r.text_cone - 1.0).abs() < 1e-6);
        assert_eq!(r.separability, 1.0);
        assert_eq!((r.matched_mean, r.unmatched_mean), (0.0, 0.0));
        assert_eq!(r.matched_cosine.total(), n);
        assert_eq!(r.unmatched_cosine.total(), n * (n - 1));
        assert_eq!(
            r.matched_cosine.counts[20], n,
            "cosine 0 falls in the bin [0, 0.05)"
        );
        assert!(r.image_spectrum.iter().all(|v| v.abs() < 1e-9));
        assert_eq!(r.image_effective_rank, 0.0);
        // Closing the gap fully puts both on (e0 + e1)/√2.
        let (x, y) = shift_along_gap(&image, &text, 3, 1.0).unwrap();
        let s = 0.5f32.sqrt();
        assert!(
            x.chunks(3)
                .chain(y.chunks(3))
                .all(|r| (r[0] - s).abs() < 1e-6 && (r[1] - s).abs() < 1e-6)
        );
        assert_eq!(gap_report(&x, &y, 3).unwrap().centroid_distance, 0.0);
    }

    #[test]
    fn geometry_equals_brute_force_loops() {
        let mut rng = Rng::new(5);
        let (n, d) = (30, 5);
        let image = unit_rows(&mut rng, n, d, &[2.0, 0.0, 0.0, 0.0, 0.0]);
        let text = unit_rows(&mut rng, n, d, &[0.0, 2.0, 0.0, 0.0, 0.0]);
        let r = gap_report(&image, &text, d).unwrap();
        let row = |m: &[f32], i: usize| m[i * d..(i + 1) * d].to_vec();
        let cos =
            |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>();
        let (mut cone_i, mut cone_t, mut unmatched) = (0.0, 0.0, 0.0);
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    cone_i += cos(&row(&image, i), &row(&image, j));
                    cone_t += cos(&row(&text, i), &row(&text, j));
                    unmatched += cos(&row(&image, i), &row(&text, j));
                }
            }
        }
        let pairs = (n * (n - 1)) as f64;
        assert!((f64::from(r.image_cone) - cone_i / pairs).abs() < 1e-5);
        assert!((f64::from(r.text_cone) - cone_t / pairs).abs() < 1e-5);
        assert!((f64::from(r.unmatched_mean) - unmatched / pairs).abs() < 1e-5);
        let mi: Vec<f64> = (0..d)
            .map(|k| (0..n).map(|i| f64::from(image[i * d + k])).sum::<f64>() / n as f64)
            .collect();
        let mt: Vec<f64> = (0..d)
            .map(|k| (0..n).map(|i| f64::from(text[i * d + k])).sum::<f64>() / n as f64)
            .collect();
        let dist = mi
            .iter()
            .zip(&mt)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((f64::from(r.centroid_distance) - dist).abs() < 1e-5);
        // Trace of the covariance = sum of eigenvalues; every eigenvalue ≥ 0.
        let trace: f64 = (0..d)
            .map(|k| {
                (0..n)
                    .map(|i| (f64::from(image[i * d + k]) - mi[k]).powi(2))
                    .sum::<f64>()
                    / n as f64
            })
            .sum();
        let sum: f64 = r.image_spectrum.iter().map(|v| f64::from(*v)).sum();
        assert!((trace - sum).abs() < 1e-5, "{trace} vs {sum}");
        assert!(
            r.image_spectrum
                .windows(2)
                .all(|w| w[0] >= w[1] && w[1] > -1e-6)
        );
        assert!(r.image_effective_rank > 1.0 && r.image_effective_rank <= d as f32);
        assert!(
            r.separability >= 0.85,
            "offset clouds are separable: {}",
            r.separability
        );
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1; diag(5, 4, 1) its diagonal.
        let mut ev = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2);
        ev.sort_by(|a, b| b.total_cmp(a));
        assert!((ev[0] - 3.0).abs() < 1e-12 && (ev[1] - 1.0).abs() < 1e-12);
        let mut ev = symmetric_eigenvalues(vec![5.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 1.0], 3);
        ev.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(ev, [5.0, 4.0, 1.0]);
        // Equal eigenvalues: effective rank = their count.
        assert!((effective_rank(&[2.0, 2.0, 2.0, 0.0]) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn identical_modalities_are_inseparable_and_bad_shapes_are_errors() {
        let mut rng = Rng::new(1);
        let image = unit_rows(&mut rng, 40, 4, &[0.0; 4]);
        let r = gap_report(&image, &image, 4).unwrap();
        assert_eq!(r.centroid_distance, 0.0);
        assert!(r.separability <= 0.6, "{}", r.separability);
        assert!((r.matched_mean - 1.0).abs() < 1e-6);
        assert!(gap_report(&image, &image[..8], 4).is_err());
        assert!(
            gap_report(&image[..8], &image[..8], 4).is_err(),
            "two pairs are too few"
        );
        assert!(gap_report(&image, &image, 0).is_err());
    }
}

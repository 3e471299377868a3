//! Joint 2-D PCA of both modalities: one basis for images and texts together, so the modality
//! gap shows as two separated clouds (Liang et al., 2022, Fig. 1), with a line per pair.

use super::geometry::symmetric_eigen;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Both embedding sets projected on the first two principal axes of their union.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JointPca {
    /// Image `i` in the plane.
    pub image: Vec<[f32; 2]>,
    /// Text `i` (the caption paired with image `i`) in the plane.
    pub text: Vec<[f32; 2]>,
    /// Projected image centroid.
    pub image_centroid: [f32; 2],
    /// Projected text centroid.
    pub text_centroid: [f32; 2],
    /// Share of the joint variance along each axis.
    pub explained: [f32; 2],
}

/// Projects matched `(n, d)` row-major `image` and `text` embeddings (row `i` of each is a
/// pair) onto the top two principal axes of all `2n` rows, centred on their joint mean.
pub fn joint_pca(image: &[f32], text: &[f32], d: usize) -> Result<JointPca> {
    if d < 2 || image.len() != text.len() || image.is_empty() || !image.len().is_multiple_of(d) {
        return Err(Error::Data(format!(
            "joint PCA needs two equal non-empty (n, d ≥ 2) sets; got {} and {} values with d = {d}",
            image.len(),
            text.len()
        )));
    }
    let rows: Vec<&[f32]> = image.chunks(d).chain(text.chunks(d)).collect();
    let m = rows.len() as f64;
    let mut mean = vec![0f64; d];
    for r in &rows {
        for (a, x) in mean.iter_mut().zip(*r) {
            *a += f64::from(*x) / m;
        }
    }
    let mut cov = vec![0f64; d * d];
    for r in &rows {
        let c: Vec<f64> = r
            .iter()
            .zip(&mean)
            .map(|(x, mu)| f64::from(*x) - mu)
            .collect();
        for a in 0..d {
            for b in a..d {
                cov[a * d + b] += c[a] * c[b] / m;
            }
        }
    }
    for a in 0..d {
        for b in 0..a {
            cov[a * d + b] = cov[b * d + a];
        }
    }
    let total: f64 = (0..d).map(|i| cov[i * d + i]).sum();
    let (values, vectors) = symmetric_eigen(cov, d);
    let project = |r: &[f32]| -> [f32; 2] {
        let mut p = [0f32; 2];
        for (k, axis) in vectors.iter().take(2).enumerate() {
            p[k] = r
                .iter()
                .zip(&mean)
                .zip(axis)
                .map(|((x, mu), v)| (f64::from(*x) - mu) * v)
                .sum::<f64>() as f32;
        }
        p
    };
    let image: Vec<[f32; 2]> = image.chunks(d).map(project).collect();
    let text: Vec<[f32; 2]> = text.chunks(d).map(project).collect();
    let centroid = |ps: &[[f32; 2]]| {
        let n = ps.len() as f32;
        [
            ps.iter().map(|p| p[0]).sum::<f32>() / n,
            ps.iter().map(|p| p[1]).sum::<f32>() / n,
        ]
    };
    let share = |i: usize| {
        if total > 0.0 {
            (values[i].max(0.0) / total) as f32
        } else {
            0.0
        }
    };
    Ok(JointPca {
        image_centroid: centroid(&image),
        text_centroid: centroid(&text),
        image,
        text,
        explained: [share(0), share(1)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenvectors_satisfy_the_eigen_equation() {
        // A fixed symmetric 4 × 4 matrix: A·v = λ·v for every pair, vectors orthonormal,
        // values in decreasing order.
        let a = vec![
            4.0, 1.0, 0.5, 0.0, 1.0, 3.0, 0.2, 0.1, 0.5, 0.2, 2.0, 0.3, 0.0, 0.1, 0.3, 1.0,
        ];
        let (values, vectors) = symmetric_eigen(a.clone(), 4);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for (lambda, v) in values.iter().zip(&vectors) {
            for r in 0..4 {
                let av: f64 = (0..4).map(|c| a[r * 4 + c] * v[c]).sum();
                assert!((av - lambda * v[r]).abs() < 1e-10);
            }
        }
        for i in 0..4 {
            for j in 0..4 {
                let d: f64 = (0..4).map(|k| vectors[i][k] * vectors[j][k]).sum();
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn a_known_gap_lies_on_the_first_axis() {
        // Images at x = +1, texts at x = −1, spread ±0.1 along y, nothing along z: the first axis
        // is x (variance 1), the second y (variance 0.01), and the centroids sit at ±1.
        let image = [1.0, 0.1, 0.0, 1.0, -0.1, 0.0];
        let text = [-1.0, 0.1, 0.0, -1.0, -0.1, 0.0];
        let p = joint_pca(&image, &text, 3).unwrap();
        assert!((p.image_centroid[0] - 1.0).abs() < 1e-6, "{p:?}");
        assert!((p.text_centroid[0] + 1.0).abs() < 1e-6);
        assert!(p.image_centroid[1].abs() < 1e-6);
        assert!((p.image[0][1].abs() - 0.1).abs() < 1e-6);
        assert!((p.explained[0] - 1.0 / 1.01).abs() < 1e-5);
        assert!((p.explained[1] - 0.01 / 1.01).abs() < 1e-5);
        assert!(joint_pca(&image, &text[..3], 3).is_err());
    }
}

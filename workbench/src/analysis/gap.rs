//! The modality gap of a model on an evaluation split, and the gap-shift sweep.
//!
//! [`analyse_gap`] embeds every image of the split with its first caption (the matched pairs),
//! measures them with [`gap_report`], then repeats retrieval and zero-shot classification after
//! shifting the embeddings along the gap vector `Δ` of those pairs by each `δ` (Liang et al.,
//! 2022, §4.2: images `x − (δ/2)Δ`, texts — captions and class prompts alike — `y + (δ/2)Δ`, all
//! re-normalised). `δ = 0` reproduces the plain evaluation. The matched pairs are also projected
//! on their joint 2-D PCA.

use super::geometry::{GapReport, gap_report, shift_rows};
use super::projection::{JointPca, joint_pca};
use crate::Result;
use crate::data::{Split, Tokenizer};
use crate::eval::{
    ClassEmbeddings, EvalSet, class_embeddings, classify, embed_images, embed_texts,
};
use crate::metrics::{self, Matrix};
use crate::model::ClipModel;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Metrics after shifting along the gap by `delta`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GapShiftPoint {
    /// The shift, in units of the gap vector (1 closes it, negative widens it).
    pub delta: f32,
    /// Centroid distance of the shifted matched pairs.
    pub centroid_distance: f32,
    /// Image→text R@1 over every caption of the split.
    pub image_to_text_r1: f32,
    /// Text→image R@1.
    pub text_to_image_r1: f32,
    /// Zero-shot accuracy, when the dataset has classes.
    pub zero_shot: Option<f32>,
}

/// The gap report of a split and its gap-shift sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GapAnalysis {
    /// The split measured.
    pub split: Split,
    /// Geometry of the matched pairs.
    pub report: GapReport,
    /// One point per requested shift.
    pub sweep: Vec<GapShiftPoint>,
    /// Both sets of matched embeddings on the first two axes of their joint PCA.
    pub pca: JointPca,
}

fn host(t: &Tensor) -> Result<(Vec<f32>, usize)> {
    let (_, e) = t.dims2()?;
    Ok((t.flatten_all()?.to_vec1::<f32>()?, e))
}

fn matmul_t(a: &[f32], b: &[f32], e: usize) -> Result<(Vec<f32>, usize, usize)> {
    let (n, m) = (a.len() / e, b.len() / e);
    let at = Tensor::from_slice(a, (n, e), &Device::Cpu)?;
    let bt = Tensor::from_slice(b, (m, e), &Device::Cpu)?;
    let s = at.matmul(&bt.t()?)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((s, n, m))
}

/// Measures the modality gap on `set` and sweeps the gap shift over `deltas`.
pub fn analyse_gap(
    model: &ClipModel,
    set: &EvalSet,
    tokenizer: &Tokenizer,
    device: &Device,
    chunk: usize,
    deltas: &[f32],
) -> Result<GapAnalysis> {
    let (img, e) = host(&embed_images(model, &set.images, chunk, device)?)?;
    let (unique, _) = host(&embed_texts(model, tokenizer, &set.texts, chunk, device)?)?;
    let row = |m: &[f32], i: usize| m[i * e..(i + 1) * e].to_vec();
    let paired: Vec<f32> = set
        .image_texts
        .iter()
        .flat_map(|t| row(&unique, t[0]))
        .collect();
    let report = gap_report(&img, &paired, e)?;
    let gap = report.gap_vector.clone();
    let zero_shot = match &set.zero_shot {
        Some(zs) => {
            let classes = class_embeddings(model, tokenizer, &zs.classes, chunk, device)?;
            let (variants, _) = host(&classes.variants)?;
            let (images, _) = host(&embed_images(model, &zs.images, chunk, device)?)?;
            Some((zs, classes, variants, images))
        }
        None => None,
    };
    let mut sweep = Vec::with_capacity(deltas.len());
    for &delta in deltas {
        let img_s = shift_rows(&img, e, &gap, -delta / 2.0);
        let unique_s = shift_rows(&unique, e, &gap, delta / 2.0);
        let gallery: Vec<f32> = set
            .caption_text
            .iter()
            .flat_map(|&t| row(&unique_s, t))
            .collect();
        let (s, rows, cols) = matmul_t(&img_s, &gallery, e)?;
        let (i2t, t2i) = metrics::retrieval(
            Matrix {
                data: &s,
                rows,
                cols,
            },
            &set.image_texts,
            &set.caption_text,
        );
        let paired_s: Vec<f32> = set
            .image_texts
            .iter()
            .flat_map(|t| row(&unique_s, t[0]))
            .collect();
        let zs = match &zero_shot {
            Some((zs, classes, variants, images)) => {
                let v = shift_rows(variants, e, &gap, delta / 2.0);
                let x = shift_rows(images, e, &gap, -delta / 2.0);
                let shifted = ClassEmbeddings {
                    variants: Tensor::from_vec(v, (variants.len() / e, e), &Device::Cpu)?,
                    class_of: classes.class_of.clone(),
                    classes: classes.classes,
                };
                let x = Tensor::from_vec(x, (images.len() / e, e), &Device::Cpu)?;
                let (predicted, _) = classify(&x, &shifted)?;
                metrics::accuracy(&predicted, &zs.labels, |_| true)
            }
            None => None,
        };
        sweep.push(GapShiftPoint {
            delta,
            centroid_distance: metrics::modality_gap(
                Matrix {
                    data: &img_s,
                    rows: set.images.len(),
                    cols: e,
                },
                Matrix {
                    data: &paired_s,
                    rows: set.images.len(),
                    cols: e,
                },
            ),
            image_to_text_r1: i2t.r1,
            text_to_image_r1: t2i.r1,
            zero_shot: zs,
        });
    }
    Ok(GapAnalysis {
        split: set.split,
        pca: joint_pca(&img, &paired, e)?,
        report,
        sweep,
    })
}

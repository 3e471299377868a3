//! Evaluation: retrieval both ways, zero-shot classification, modality gap, loss.

use crate::data::batch::{images_tensor, text_tensors};
use crate::data::{ClassSet, PairDataset, RgbImage, Split, Tokenizer};
use crate::events::{EvalReport, PROBE_TEMPERATURE, ProbeReport, ZeroShot};
use crate::loss::{LossInputs, Objective};
use crate::metrics::{self, Matrix};
use crate::model::{Capture, ClipModel};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::Instant;

/// Labelled single-object images and the classes' prompts.
pub struct ZeroShotSet {
    /// The images.
    pub images: Vec<RgbImage>,
    /// Class index of each image.
    pub labels: Vec<usize>,
    /// Names, prompts and held-out classes.
    pub classes: ClassSet,
}

/// A split materialised for evaluation: images, every caption, and text-equality groups.
pub struct EvalSet {
    /// The split.
    pub split: Split,
    /// Images of the split.
    pub images: Vec<RgbImage>,
    /// Distinct caption texts.
    pub texts: Vec<String>,
    /// For each caption of the gallery (all captions of all images), its text id.
    pub caption_text: Vec<usize>,
    /// For each image, the text ids of its captions.
    pub image_texts: Vec<Vec<usize>>,
    /// Zero-shot images, when the dataset has classes.
    pub zero_shot: Option<ZeroShotSet>,
}

impl EvalSet {
    /// Materialises `split` of `dataset` (all of it, or its first `limit` images).
    pub fn build(dataset: &dyn PairDataset, split: Split, limit: Option<usize>) -> Result<Self> {
        let n = limit.map_or(dataset.len(split), |l| l.min(dataset.len(split)));
        if n == 0 {
            return Err(Error::Data(format!(
                "the {split} split of {} is empty",
                dataset.name()
            )));
        }
        let samples = (0..n)
            .into_par_iter()
            .map(|i| dataset.sample(split, i))
            .collect::<Result<Vec<_>>>()?;
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut texts = Vec::new();
        let mut caption_text = Vec::new();
        let mut image_texts = Vec::with_capacity(n);
        for s in &samples {
            let mut mine = Vec::new();
            for c in &s.captions {
                let id = *ids.entry(c.text.clone()).or_insert_with(|| {
                    texts.push(c.text.clone());
                    texts.len() - 1
                });
                caption_text.push(id);
                if !mine.contains(&id) {
                    mine.push(id);
                }
            }
            if mine.is_empty() {
                return Err(Error::Data(format!(
                    "an image of the {split} split has no caption"
                )));
            }
            image_texts.push(mine);
        }
        let zero_shot = match dataset.classes() {
            Some(classes) if dataset.zero_shot_len() > 0 => {
                let zs = (0..dataset.zero_shot_len())
                    .into_par_iter()
                    .map(|i| dataset.zero_shot_sample(i))
                    .collect::<Result<Vec<_>>>()?;
                let labels = zs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        s.label
                            .ok_or_else(|| Error::Data(format!("zero-shot image {i} has no label")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(ZeroShotSet {
                    images: zs.into_iter().map(|s| s.image).collect(),
                    labels,
                    classes,
                })
            }
            _ => None,
        };
        Ok(Self {
            split,
            images: samples.into_iter().map(|s| s.image).collect(),
            texts,
            caption_text,
            image_texts,
            zero_shot,
        })
    }

    /// Number of gallery captions.
    pub fn captions(&self) -> usize {
        self.caption_text.len()
    }
}

/// L2-normalised embeddings `(N, E)` of `images`, in chunks, detached from the graph.
pub fn embed_images(
    model: &ClipModel,
    images: &[RgbImage],
    chunk: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    for c in images.chunks(chunk.max(1)) {
        let refs: Vec<&RgbImage> = c.iter().collect();
        let x = images_tensor(&refs, device)?;
        parts.push(model.encode_image(&x, Capture::NONE)?.embedding.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// L2-normalised embeddings `(N, E)` of `texts`, in chunks, detached from the graph.
pub fn embed_texts(
    model: &ClipModel,
    tokenizer: &Tokenizer,
    texts: &[String],
    chunk: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    for c in texts.chunks(chunk.max(1)) {
        let refs: Vec<&str> = c.iter().map(String::as_str).collect();
        let (tokens, eos, _) = text_tensors(&refs, tokenizer, device)?;
        parts.push(
            model
                .encode_text(&tokens, &eos, Capture::NONE)?
                .embedding
                .detach(),
        );
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Embeddings of every class variant and the class each belongs to.
pub struct ClassEmbeddings {
    /// `(V, E)`: per variant, the normalised mean of its normalised prompt embeddings.
    pub variants: Tensor,
    /// Class index of each variant.
    pub class_of: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

/// Embeds every variant of every class (prompt ensembling within a variant).
pub fn class_embeddings(
    model: &ClipModel,
    tokenizer: &Tokenizer,
    classes: &ClassSet,
    chunk: usize,
    device: &Device,
) -> Result<ClassEmbeddings> {
    let all: Vec<String> = classes
        .prompts
        .iter()
        .flatten()
        .flatten()
        .cloned()
        .collect();
    let emb = embed_texts(model, tokenizer, &all, chunk, device)?;
    let mut rows = Vec::new();
    let mut class_of = Vec::new();
    let mut start = 0;
    for (c, variants) in classes.prompts.iter().enumerate() {
        for prompts in variants {
            if prompts.is_empty() {
                return Err(Error::Data(format!(
                    "class {:?} has a variant without prompts",
                    classes.names[c]
                )));
            }
            rows.push(emb.narrow(0, start, prompts.len())?.mean(0)?);
            class_of.push(c);
            start += prompts.len();
        }
    }
    Ok(ClassEmbeddings {
        variants: crate::model::l2_normalize(&Tensor::stack(&rows, 0)?)?,
        class_of,
        classes: classes.prompts.len(),
    })
}

/// Zero-shot prediction for L2-normalised image embeddings `(N, E)`: the class whose best
/// variant has the highest cosine similarity. Returns `(predicted class, class scores N × C)`.
pub fn classify(images: &Tensor, classes: &ClassEmbeddings) -> Result<(Vec<usize>, Vec<f32>)> {
    let (s, rows, cols) = to_rows(&images.matmul(&classes.variants.t()?)?)?;
    let mut scores = vec![f32::NEG_INFINITY; rows * classes.classes];
    for i in 0..rows {
        for (v, &c) in classes.class_of.iter().enumerate() {
            let x = &mut scores[i * classes.classes + c];
            *x = x.max(s[i * cols + v]);
        }
    }
    let predicted = metrics::argmax_rows(Matrix {
        data: &scores,
        rows,
        cols: classes.classes,
    });
    Ok((predicted, scores))
}

fn to_rows(t: &Tensor) -> Result<(Vec<f32>, usize, usize)> {
    let (r, c) = t.dims2()?;
    Ok((t.flatten_all()?.to_vec1::<f32>()?, r, c))
}

/// Objective-independent metrics of matched embeddings `(N, E)` (row `i` of each is a pair):
/// symmetric InfoNCE at τ = [`PROBE_TEMPERATURE`], R@1 both ways (equal caption texts count as
/// correct), mean matched and unmatched cosine, and the centroid gap. Computed in f64 on the host.
pub fn probe_report(
    image: &Tensor,
    text: &Tensor,
    captions: &[String],
    step: usize,
    objective: &str,
) -> Result<ProbeReport> {
    let (img, n, e) = to_rows(image)?;
    let (txt, n2, e2) = to_rows(text)?;
    if n != n2 || e != e2 || captions.len() != n || n < 2 {
        return Err(Error::Data(format!(
            "probe: {n}x{e} images, {n2}x{e2} texts and {} captions do not form a batch of pairs",
            captions.len()
        )));
    }
    let sim: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            (0..e)
                .map(|d| f64::from(img[i * e + d]) * f64::from(txt[j * e + d]))
                .sum()
        })
        .collect();
    let at = |i: usize, j: usize| sim[i * n + j];
    let scale = 1.0 / f64::from(PROBE_TEMPERATURE);
    let lse = |vals: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = vals.map(|x| x * scale).collect();
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let (mut nce, mut i2t, mut t2i, mut pos) = (0.0, 0usize, 0usize, 0.0);
    let (mut neg, mut neg_count) = (0.0, 0usize);
    for i in 0..n {
        nce += lse(&mut (0..n).map(|j| at(i, j))) - at(i, i) * scale;
        nce += lse(&mut (0..n).map(|j| at(j, i))) - at(i, i) * scale;
        let best_text = (0..n)
            .max_by(|&a, &b| at(i, a).total_cmp(&at(i, b)))
            .unwrap_or(i);
        let best_image = (0..n)
            .max_by(|&a, &b| at(a, i).total_cmp(&at(b, i)))
            .unwrap_or(i);
        i2t += usize::from(captions[best_text] == captions[i]);
        t2i += usize::from(captions[best_image] == captions[i]);
        pos += at(i, i);
        for j in 0..n {
            if captions[j] != captions[i] {
                neg += at(i, j);
                neg_count += 1;
            }
        }
    }
    let gap = metrics::modality_gap(
        Matrix {
            data: &img,
            rows: n,
            cols: e,
        },
        Matrix {
            data: &txt,
            rows: n,
            cols: e,
        },
    );
    Ok(ProbeReport {
        step,
        objective: objective.to_string(),
        pairs: n,
        info_nce: (nce / (2 * n) as f64) as f32,
        image_to_text_r1: i2t as f32 / n as f32,
        text_to_image_r1: t2i as f32 / n as f32,
        positive_cosine: (pos / n as f64) as f32,
        negative_cosine: if neg_count == 0 {
            0.0
        } else {
            (neg / neg_count as f64) as f32
        },
        modality_gap: gap,
    })
}

/// What [`evaluate`] needs besides the model.
pub struct EvalContext<'a> {
    /// The objective, for the split loss.
    pub objective: &'a dyn Objective,
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Device of the model.
    pub device: &'a Device,
    /// Pairs per forward pass.
    pub chunk: usize,
    /// Pairs per loss batch (the training batch size, so the loss is comparable).
    pub loss_batch: usize,
    /// Steps completed, for the report.
    pub step: usize,
}

/// Evaluates `model` on `set`.
pub fn evaluate(model: &ClipModel, set: &EvalSet, cx: &EvalContext<'_>) -> Result<EvalReport> {
    let t0 = Instant::now();
    let img = embed_images(model, &set.images, cx.chunk, cx.device)?;
    let txt_unique = embed_texts(model, cx.tokenizer, &set.texts, cx.chunk, cx.device)?;
    let ids = Tensor::from_vec(
        set.caption_text
            .iter()
            .map(|&i| i as u32)
            .collect::<Vec<_>>(),
        set.caption_text.len(),
        cx.device,
    )?;
    let txt = txt_unique.index_select(&ids, 0)?; // (captions, E)
    let scores = img.matmul(&txt.t()?)?;
    let (s, rows, cols) = to_rows(&scores)?;
    let (image_to_text, text_to_image) = metrics::retrieval(
        Matrix {
            data: &s,
            rows,
            cols,
        },
        &set.image_texts,
        &set.caption_text,
    );

    // Matched pairs: each image with its first caption.
    let first: Vec<u32> = set.image_texts.iter().map(|t| t[0] as u32).collect();
    let paired =
        txt_unique.index_select(&Tensor::from_vec(first, set.images.len(), cx.device)?, 0)?;
    let (iv, n, e) = to_rows(&img)?;
    let (tv, _, _) = to_rows(&paired)?;
    let modality_gap = metrics::modality_gap(
        Matrix {
            data: &iv,
            rows: n,
            cols: e,
        },
        Matrix {
            data: &tv,
            rows: n,
            cols: e,
        },
    );
    let loss = split_loss(cx.objective, &img, &paired, cx.loss_batch)?;

    let zero_shot = match &set.zero_shot {
        Some(zs) => Some(zero_shot(model, zs, cx)?),
        None => None,
    };
    Ok(EvalReport {
        step: cx.step,
        split: set.split,
        images: set.images.len(),
        captions: set.captions(),
        image_to_text,
        text_to_image,
        zero_shot,
        modality_gap,
        loss,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Mean objective value over consecutive batches of `batch` pairs (a last batch of < 2 pairs is
/// skipped); `None` if the objective needs more than the global embeddings.
fn split_loss(
    objective: &dyn Objective,
    img: &Tensor,
    txt: &Tensor,
    batch: usize,
) -> Result<Option<f32>> {
    if objective.needs() != crate::loss::Needs::default() {
        return Ok(None);
    }
    let n = img.dim(0)?;
    let (mut sum, mut count) = (0f64, 0usize);
    let mut start = 0;
    while start + 2 <= n {
        let len = batch.min(n - start);
        if len < 2 {
            break;
        }
        let (a, b) = (img.narrow(0, start, len)?, txt.narrow(0, start, len)?);
        let out = objective.forward(&LossInputs::new(&a, &b))?;
        sum += f64::from(out.loss.to_scalar::<f32>()?) * len as f64;
        count += len;
        start += len;
    }
    Ok((count > 0).then(|| (sum / count as f64) as f32))
}

fn zero_shot(model: &ClipModel, zs: &ZeroShotSet, cx: &EvalContext<'_>) -> Result<ZeroShot> {
    let classes = class_embeddings(model, cx.tokenizer, &zs.classes, cx.chunk, cx.device)?;
    let img = embed_images(model, &zs.images, cx.chunk, cx.device)?;
    let (predicted, _) = classify(&img, &classes)?;
    let held = &zs.classes.held_out;
    Ok(ZeroShot {
        accuracy: metrics::accuracy(&predicted, &zs.labels, |_| true).unwrap_or(0.0),
        held_out_accuracy: metrics::accuracy(&predicted, &zs.labels, |t| held.contains(&t)),
        images: zs.images.len(),
        classes: zs.classes.names.len(),
    })
}

//! Exporting a model for other tools: its weights as one safetensors file, and embeddings of
//! images and captions as NumPy `.npy` arrays with a `captions.json` that says which row is what.
//!
//! Nothing here needs a run directory: [`export_embeddings`] takes a model, its tokenizer and
//! batches of images with their captions, so a model loaded from elsewhere into a
//! [`ClipModel`] exports the same way. [`dataset_batches`] makes the batches from a split of
//! any [`PairDataset`] (with the evaluation transform).
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | every tensor by its parameter name (`model.vision.…`), f32 |
//! | `image_embeddings.npy` | `(N, D)` float32, C order, L2-normalised, one row per image |
//! | `text_embeddings.npy` | `(M, D)` float32, one row per caption, in image order |
//! | `captions.json` | `images`: row, id; `texts`: row, image row, caption |
//!
//! The `.npy` files are written by [`npy_f32`], a writer of NumPy format version 1.0 that
//! produces the same bytes as `numpy.save`.
//!
//! ```
//! let bytes = workbench::export::npy_f32(&[1, 2], &[0.5, -1.0]).unwrap();
//! assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
//! assert_eq!(bytes.len() % 64, 8 % 64); // 128-byte header, then 2 × 4 bytes of data
//! ```

use crate::data::{PairDataset, RgbImage, Split, Tokenizer};
use crate::eval::{embed_images, embed_texts};
use crate::model::ClipModel;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Extra spaces NumPy reserves in a header so that the first dimension can grow in place.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// A little-endian float32, C-order array of `shape` in NumPy format version 1.0: the magic
/// `\x93NUMPY`, version 1.0, the header length (u16, little-endian), the header dict
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (…), }` padded with spaces and a
/// newline so that the data starts at a multiple of 64 bytes, then the data. The bytes are
/// those `numpy.save` writes for the same array.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Data(format!("npy shape {shape:?} overflows")))?;
    if count != data.len() {
        return Err(Error::Data(format!(
            "npy shape {shape:?} holds {count} values, given {}",
            data.len()
        )));
    }
    let dims = match shape {
        [d] => format!("{d},"),
        _ => shape
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        header.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits)));
    }
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    let pad = 64 - unpadded % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let len = u16::try_from(header.len())
        .map_err(|_| Error::Data(format!("npy header for shape {shape:?} is too long")))?;
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes a `(rows, cols)` float32 matrix as `.npy` (see [`npy_f32`]), atomically.
pub fn save_npy(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    crate::checkpoint::write_atomic(path, &npy_f32(&[rows, cols], data)?)
}

/// Writes named tensors as one safetensors file, every tensor converted to f32 on the CPU
/// (readable by Python's `safetensors.numpy.load_file`).
pub fn save_weights(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let f32s = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    crate::checkpoint::save_tensors(&f32s, path)
}

/// Images with their ids and captions: one batch of what [`export_embeddings`] embeds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportBatch {
    /// An id per image (a file name, a member name, `val/17`), for matching rows.
    pub ids: Vec<String>,
    /// The images, already at the model's size.
    pub images: Vec<RgbImage>,
    /// Each image's captions (any number, possibly none).
    pub captions: Vec<Vec<String>>,
}

/// Batches of `batch_size` images of `split` of `dataset` (its first `limit` images, or all),
/// with the evaluation transform and the dataset's sample ids.
pub fn dataset_batches(
    dataset: &dyn PairDataset,
    split: Split,
    limit: Option<usize>,
    batch_size: usize,
) -> impl Iterator<Item = Result<ExportBatch>> + '_ {
    let n = limit.map_or(dataset.len(split), |l| l.min(dataset.len(split)));
    let step = batch_size.max(1);
    (0..n).step_by(step).map(move |start| {
        let mut b = ExportBatch::default();
        for i in start..(start + step).min(n) {
            let s = dataset.sample(split, i)?;
            b.ids.push(dataset.sample_id(split, i));
            b.images.push(s.image);
            b.captions
                .push(s.captions.into_iter().map(|c| c.text).collect());
        }
        Ok(b)
    })
}

/// One image of `captions.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    /// Row in `image_embeddings.npy`.
    pub row: usize,
    /// The image's id.
    pub id: String,
}

/// One caption of `captions.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextRow {
    /// Row in `text_embeddings.npy`.
    pub row: usize,
    /// Row of its image in `image_embeddings.npy`.
    pub image_row: usize,
    /// The caption.
    pub caption: String,
}

/// What [`export_embeddings`] wrote (also `captions.json`, with `dim` and the file names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportIndex {
    /// Embedding size `D`.
    pub dim: usize,
    /// The images, in row order.
    pub images: Vec<ImageRow>,
    /// The captions, in row order.
    pub texts: Vec<TextRow>,
}

/// Embeds every image and caption of `batches` with `model` and writes
/// `image_embeddings.npy`, `text_embeddings.npy` and `captions.json` into `out` (created if
/// needed). Returns the index written to `captions.json`.
pub fn export_embeddings(
    model: &ClipModel,
    tokenizer: &Tokenizer,
    device: &Device,
    batches: impl IntoIterator<Item = Result<ExportBatch>>,
    out: &Path,
) -> Result<ExportIndex> {
    let (mut image_data, mut text_data) = (Vec::new(), Vec::new());
    let mut index = ExportIndex {
        dim: 0,
        images: Vec::new(),
        texts: Vec::new(),
    };
    for batch in batches {
        let b = batch?;
        if b.ids.len() != b.images.len() || b.captions.len() != b.images.len() {
            return Err(Error::Data(format!(
                "export batch: {} ids, {} images and {} caption lists must match",
                b.ids.len(),
                b.images.len(),
                b.captions.len()
            )));
        }
        if b.images.is_empty() {
            continue;
        }
        let chunk = b.images.len();
        let im = embed_images(model, &b.images, chunk, device)?;
        index.dim = im.dim(1)?;
        image_data.extend(im.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        let mut texts = Vec::new();
        for (id, caps) in b.ids.into_iter().zip(b.captions) {
            let image_row = index.images.len();
            index.images.push(ImageRow { row: image_row, id });
            for caption in caps {
                index.texts.push(TextRow {
                    row: index.texts.len(),
                    image_row,
                    caption: caption.clone(),
                });
                texts.push(caption);
            }
        }
        if !texts.is_empty() {
            let tx = embed_texts(model, tokenizer, &texts, texts.len(), device)?;
            text_data.extend(tx.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    if index.images.is_empty() {
        return Err(Error::Data("export: no images to embed".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let d = index.dim;
    save_npy(
        &out.join("image_embeddings.npy"),
        index.images.len(),
        d,
        &image_data,
    )?;
    save_npy(
        &out.join("text_embeddings.npy"),
        index.texts.len(),
        d,
        &text_data,
    )?;
    let json = serde_json::to_vec_pretty(&index)
        .map_err(|e| Error::Data(format!("cannot serialise captions.json: {e}")))?;
    crate::checkpoint::write_atomic(&out.join("captions.json"), &json)?;
    Ok(index)
}

/// The files [`export_embeddings`] and [`save_weights`] write into `out`.
pub fn export_files(out: &Path) -> [PathBuf; 4] {
    [
        "model.safetensors",
        "image_embeddings.npy",
        "text_embeddings.npy",
        "captions.json",
    ]
    .map(|f| out.join(f))
}

//! Datasets read from files: a folder of images with a captions file (CSV, TSV or JSON Lines),
//! COCO captions, WebDataset tar shards, and an image-classification folder tree.
//!
//! Every format is loaded into the same representation: a list of [`PairRecord`]s (where the
//! image is, its captions, its group id, its class), split into train / val / test by a hash of
//! the image's name, and served by [`FileDataset`], which implements [`PairDataset`]. Images are
//! decoded lazily, when a sample is asked for, and brought to the model's size with CLIP's
//! evaluation transform (shorter side resized, centre crop); the [`crate::data::Loader`] decodes
//! a batch's images in parallel. Several captions of one image become one record, so its group
//! id ties them together for multi-positive objectives.
//!
//! Bad samples follow the [`BadSample`] policy throughout: problems found while opening (rows,
//! annotations, tar members, missing or zero-byte image files) and while decoding (corrupt or
//! truncated images). Under `Skip`, a sample whose image fails to decode is replaced by the next
//! readable one of its split and counted in [`FileDataset::report`].
//!
//! | format | `path` | images |
//! |---|---|---|
//! | [`DatasetFormat::Csv`], [`DatasetFormat::Tsv`] | captions file with a header | `images` folder, default the file's folder |
//! | [`DatasetFormat::Jsonl`] | one `{"image", "caption"}` per line | as above |
//! | [`DatasetFormat::Coco`] | `captions_*.json` | as above |
//! | [`DatasetFormat::WebDataset`] | one `.tar` shard or a folder of them | inside the shards |
//! | [`DatasetFormat::ClassFolder`] | `root/<class>/<image>` | the tree itself |

use crate::data::decode::{DecodeLimits, decode_image, read_image};
use crate::data::policy::{BadSample, BadSampleReport};
pub use crate::data::records::{DEFAULT_TEMPLATES, DatasetFormat, DatasetSpec, load_records};
use crate::data::transform::{RandomCrop, random_resized_crop, resize_and_center_crop};
use crate::data::webdataset::read_member;
use crate::data::{Caption, ClassSet, PairDataset, RgbImage, Sample, Split};
use crate::rng::{Rng, hash_str};
use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Where a sample's encoded image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// A file on disk, read when the sample is asked for.
    File(PathBuf),
    /// A member of a WebDataset shard, read from its offset when the sample is asked for.
    Member {
        /// The shard file.
        shard: PathBuf,
        /// `shard.tar/key.jpg`, for messages.
        name: PathBuf,
        /// Where the member's bytes start in the shard.
        offset: u64,
        /// The member's size in bytes.
        len: u64,
    },
    /// Bytes already in memory, with the name used in messages.
    Memory {
        /// `shard.tar/key.jpg`.
        name: PathBuf,
        /// The encoded image.
        bytes: Arc<[u8]>,
    },
}

impl ImageSource {
    /// The file or member name, for messages.
    pub fn name(&self) -> &Path {
        match self {
            Self::File(p) => p,
            Self::Member { name, .. } | Self::Memory { name, .. } => name,
        }
    }

    /// Encoded image bytes this source holds in memory (0 unless [`ImageSource::Memory`]).
    pub fn buffered_bytes(&self) -> usize {
        match self {
            Self::Memory { bytes, .. } => bytes.len(),
            Self::File(_) | Self::Member { .. } => 0,
        }
    }

    /// Reads and decodes the image.
    pub fn load(&self, limits: &DecodeLimits) -> Result<RgbImage> {
        match self {
            Self::File(p) => read_image(p, limits),
            Self::Member {
                shard,
                name,
                offset,
                len,
            } => {
                if *len > limits.max_file_bytes {
                    return Err(Error::input(
                        name,
                        None,
                        format!(
                            "{len} bytes; image files larger than {} bytes are refused",
                            limits.max_file_bytes
                        ),
                    ));
                }
                let bytes = read_member(shard, *offset, *len, name)?;
                decode_image(&bytes, name, limits)
            }
            Self::Memory { name, bytes } => decode_image(bytes, name, limits),
        }
    }
}

/// One image with its captions, before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairRecord {
    /// Where the image is.
    pub image: ImageSource,
    /// Its captions (at least one).
    pub captions: Vec<String>,
    /// Group id: records with equal ids show the same content.
    pub group: u64,
    /// Class index, for classification folders.
    pub label: Option<usize>,
}

/// What [`FileDataset::check`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSummary {
    /// Images per split: train, val, test.
    pub images: [usize; 3],
    /// Captions over all splits.
    pub captions: usize,
    /// Images decoded successfully (0 when decoding was not asked for).
    pub decoded: usize,
    /// Zero-shot images and classes (class folders).
    pub zero_shot: (usize, usize),
    /// Bad samples skipped, opening and decoding together.
    pub bad: BadSampleReport,
}

/// A dataset of image–caption pairs read from files; see the module docs.
pub struct FileDataset {
    name: String,
    image_size: usize,
    splits: [Vec<PairRecord>; 3],
    zero_shot: Vec<PairRecord>,
    classes: Option<ClassSet>,
    policy: BadSample,
    eval_policy: BadSample,
    train_crop: Option<RandomCrop>,
    limits: DecodeLimits,
    report: Mutex<BadSampleReport>,
}

/// How many following samples `sample` tries when one is unreadable, under `Skip`.
const MAX_SKIPS: usize = 64;

fn split_slot(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Val => 1,
        Split::Test => 2,
    }
}

/// Folders an image's path is taken relative to before it is hashed into a split: the images
/// folder, else the dataset folder (or the folder of its captions file).
fn split_roots(spec: &DatasetSpec) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = spec.images.iter().cloned().collect();
    if spec.path.is_dir() {
        roots.push(spec.path.clone());
    }
    if let Some(parent) = spec.path.parent() {
        roots.push(parent.to_path_buf());
    }
    roots
}

/// The name an image is split by: its path relative to the first root that holds it, with `/`
/// separators, so a dataset keeps its splits when it is moved or copied elsewhere. Shard
/// members and in-memory images are named by their key already.
fn split_key(name: &Path, roots: &[PathBuf]) -> String {
    let relative = roots
        .iter()
        .find_map(|root| name.strip_prefix(root).ok())
        .unwrap_or(name);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

impl FileDataset {
    /// Opens the dataset `spec` describes: parses its files, checks that image files exist,
    /// splits by name hash. Images are decoded later, on demand.
    pub fn open(spec: &DatasetSpec) -> Result<Self> {
        spec.validate()?;
        let mut report = BadSampleReport::default();
        let (records, classes) = load_records(spec, &mut report)?;
        let name = spec
            .path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("files")
            .to_string();
        let mut ds = if let Some(classes) = classes {
            // A class tree is for evaluation: every image is in val, test and zero-shot.
            Self {
                splits: [Vec::new(), records.clone(), records.clone()],
                zero_shot: records,
                classes: Some(classes),
                ..Self::from_records(&name, Vec::new(), spec.image_size, spec.policy)
            }
        } else {
            let mut splits: [Vec<PairRecord>; 3] = Default::default();
            let roots = split_roots(spec);
            for r in records {
                let key = split_key(r.image.name(), &roots);
                let u = (hash_str(&key) % 1_000_000) as f64 / 1e6;
                let slot = if u < spec.val_fraction {
                    1
                } else if u < spec.val_fraction + spec.test_fraction {
                    2
                } else {
                    0
                };
                splits[slot].push(r);
            }
            Self {
                splits,
                ..Self::from_records(&name, Vec::new(), spec.image_size, spec.policy)
            }
        };
        ds.limits = spec.limits;
        ds.report = Mutex::new(report);
        Ok(ds)
    }

    /// A dataset whose training split is `records` (val and test empty; see
    /// [`FileDataset::with_split`]).
    pub fn from_records(
        name: &str,
        records: Vec<PairRecord>,
        image_size: usize,
        policy: BadSample,
    ) -> Self {
        Self {
            name: name.to_string(),
            image_size,
            splits: [records, Vec::new(), Vec::new()],
            zero_shot: Vec::new(),
            classes: None,
            policy,
            eval_policy: policy,
            train_crop: None,
            limits: DecodeLimits::default(),
            report: Mutex::new(BadSampleReport::default()),
        }
    }

    /// Replaces the records of `split`.
    #[must_use]
    pub fn with_split(mut self, split: Split, records: Vec<PairRecord>) -> Self {
        self.splits[split_slot(split)] = records;
        self
    }

    /// Bad images of val, test and the zero-shot set follow `policy` instead of the training
    /// policy (evaluation should fail rather than silently shrink; [`BadSample::for_eval`]).
    /// Problems found while opening belong to no split yet and followed the training policy.
    #[must_use]
    pub fn with_eval_policy(mut self, policy: BadSample) -> Self {
        self.eval_policy = policy;
        self
    }

    /// Training samples ([`PairDataset::train_sample`]) become random-resized crops (and
    /// flips) of the decoded image, drawn from the loader's seeded stream; `None` keeps the
    /// evaluation transform (resize + centre crop), which val, test and zero-shot always use.
    #[must_use]
    pub fn with_train_crop(mut self, crop: Option<RandomCrop>) -> Self {
        self.train_crop = crop;
        self
    }

    /// Takes the zero-shot images and classes of `classes` (a class tree opened with
    /// [`DatasetFormat::ClassFolder`]); its bad-sample report joins this one.
    #[must_use]
    pub fn with_zero_shot_from(mut self, classes: Self) -> Self {
        self.report
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(&classes.report());
        self.zero_shot = classes.zero_shot;
        self.classes = classes.classes;
        self
    }

    /// The random-resized crop of training samples, if any.
    pub fn train_crop(&self) -> Option<&RandomCrop> {
        self.train_crop.as_ref()
    }

    /// The records of the zero-shot set.
    pub fn zero_shot_records(&self) -> &[PairRecord] {
        &self.zero_shot
    }

    /// The records of `split`.
    pub fn records(&self, split: Split) -> &[PairRecord] {
        &self.splits[split_slot(split)]
    }

    /// The policy for bad samples.
    pub fn policy(&self) -> BadSample {
        self.policy
    }

    /// Bad samples skipped so far (opening and decoding), for the run summary.
    pub fn report(&self) -> BadSampleReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record_bad(&self, err: &Error) {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(err);
    }

    fn to_sample(&self, rec: &PairRecord, rng: Option<&mut Rng>) -> Result<Sample> {
        let image = rec.image.load(&self.limits)?;
        let image = match (&self.train_crop, rng) {
            (Some(crop), Some(rng)) => random_resized_crop(&image, self.image_size, crop, rng),
            _ => resize_and_center_crop(&image, self.image_size),
        };
        Ok(Sample {
            image,
            captions: rec
                .captions
                .iter()
                .map(|t| Caption {
                    text: t.clone(),
                    mentions: Vec::new(),
                })
                .collect(),
            label: rec.label,
            truth: None,
            group: Some(rec.group),
        })
    }

    /// The sample at `index` of `recs`; under `Skip`, the next readable one. With `rng`, the
    /// training crop (if any) is drawn from it.
    fn sample_from(
        &self,
        recs: &[PairRecord],
        what: &str,
        index: usize,
        mut rng: Option<&mut Rng>,
    ) -> Result<Sample> {
        let policy = if what == Split::Train.name() {
            self.policy
        } else {
            self.eval_policy
        };
        if index >= recs.len() {
            return Err(Error::Data(format!(
                "{}: {what} index {index} is out of range ({} images)",
                self.name,
                recs.len()
            )));
        }
        let tries = match policy {
            BadSample::Fail => 1,
            BadSample::Skip => recs.len().min(MAX_SKIPS),
        };
        for k in 0..tries {
            let rec = &recs[(index + k) % recs.len()];
            match self.to_sample(rec, rng.as_deref_mut()) {
                Ok(s) => return Ok(s),
                Err(e) if policy == BadSample::Skip => self.record_bad(&e),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Data(format!(
            "{}: {tries} {what} images in a row from index {index} are unreadable; see the \
             bad-sample report",
            self.name
        )))
    }

    /// Counts images and captions per split and, with `decode`, decodes every image in
    /// parallel. Under `Fail` the first unreadable image (in split order) is the error.
    pub fn check(&self, decode: bool) -> Result<CheckSummary> {
        let mut decoded = 0;
        if decode {
            let mut all: Vec<&PairRecord> = self.splits.iter().flatten().collect();
            all.extend(self.zero_shot.iter());
            // A record in several splits (class trees) is decoded once.
            let mut seen = std::collections::HashSet::new();
            all.retain(|r| seen.insert(r.image.name().to_path_buf()));
            let results: Vec<Result<()>> = all
                .par_iter()
                .map(|r| r.image.load(&self.limits).map(|_| ()))
                .collect();
            for r in results {
                match r {
                    Ok(()) => decoded += 1,
                    Err(e) => match self.policy {
                        BadSample::Fail => return Err(e),
                        BadSample::Skip => self.record_bad(&e),
                    },
                }
            }
        }
        Ok(CheckSummary {
            images: [0, 1, 2].map(|i| self.splits[i].len()),
            captions: self.splits.iter().flatten().map(|r| r.captions.len()).sum(),
            decoded,
            zero_shot: (
                self.zero_shot.len(),
                self.classes.as_ref().map_or(0, |c| c.names.len()),
            ),
            bad: self.report(),
        })
    }
}

impl PairDataset for FileDataset {
    fn name(&self) -> &str {
        &self.name
    }

    fn image_size(&self) -> usize {
        self.image_size
    }

    fn len(&self, split: Split) -> usize {
        self.records(split).len()
    }

    fn sample(&self, split: Split, index: usize) -> Result<Sample> {
        self.sample_from(self.records(split), split.name(), index, None)
    }

    fn train_sample(&self, index: usize, rng: &mut Rng) -> Result<Sample> {
        let recs = self.records(Split::Train);
        self.sample_from(recs, Split::Train.name(), index, Some(rng))
    }

    fn corpus(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .splits
            .iter()
            .flatten()
            .flat_map(|r| r.captions.iter().cloned())
            .collect();
        if let Some(c) = &self.classes {
            out.extend(c.prompts.iter().flatten().flatten().cloned());
        }
        out
    }

    fn classes(&self) -> Option<ClassSet> {
        self.classes.clone()
    }

    fn sample_id(&self, split: Split, index: usize) -> String {
        self.records(split).get(index).map_or_else(
            || format!("{split}/{index}"),
            |r| r.image.name().to_string_lossy().into_owned(),
        )
    }

    fn bad_samples(&self) -> Option<BadSampleReport> {
        Some(self.report())
    }

    fn zero_shot_len(&self) -> usize {
        self.zero_shot.len()
    }

    fn zero_shot_sample(&self, index: usize) -> Result<Sample> {
        self.sample_from(&self.zero_shot, "zero-shot", index, None)
    }
}

/// Decodes `sources` in parallel (rayon), each resized and centre-cropped to `size`.
pub fn decode_all(
    sources: &[ImageSource],
    size: usize,
    limits: &DecodeLimits,
) -> Vec<Result<RgbImage>> {
    sources
        .par_iter()
        .map(|s| s.load(limits).map(|im| resize_and_center_crop(&im, size)))
        .collect()
}

/// An iterator whose items are produced ahead on a background thread, at most `depth` ahead.
pub struct Prefetch<T> {
    rx: std::sync::mpsc::Receiver<T>,
}

impl<T> Iterator for Prefetch<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// Runs `iter` on a background thread, keeping up to `depth` items ready: decoding and reading
/// shards overlap with the consumer's work. Dropping the result stops the thread at its next
/// item.
pub fn prefetch<I>(iter: I, depth: usize) -> Prefetch<I::Item>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
    std::thread::spawn(move || {
        for item in iter {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    Prefetch { rx }
}

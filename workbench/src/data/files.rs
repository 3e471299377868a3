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

use crate::data::captions::{
    CsvColumns, ImageCaptions, group_rows, parse_captions_csv, parse_captions_jsonl,
};
use crate::data::coco::parse_coco;
use crate::data::decode::{DecodeLimits, decode_image, is_image_extension, read_image};
use crate::data::policy::{BadSample, BadSampleReport};
use crate::data::transform::resize_and_center_crop;
use crate::data::webdataset::{PairStream, open_shards};
use crate::data::{Caption, ClassSet, PairDataset, RgbImage, Sample, Split};
use crate::rng::hash_str;
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
    /// Bytes already in memory (a WebDataset member), with the name used in messages.
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
            Self::Memory { name, .. } => name,
        }
    }

    /// Reads and decodes the image.
    pub fn load(&self, limits: &DecodeLimits) -> Result<RgbImage> {
        match self {
            Self::File(p) => read_image(p, limits),
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

/// The file formats [`FileDataset::open`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// Comma-separated captions file with a header.
    Csv,
    /// Tab-separated captions file with a header.
    Tsv,
    /// JSON Lines: `{"image": …, "caption": …}` per line.
    Jsonl,
    /// COCO-captions JSON (`images` + `annotations`).
    Coco,
    /// WebDataset tar shards (`key.jpg` + `key.txt`).
    WebDataset,
    /// `root/<class>/<image>`: zero-shot classification with prompt templates.
    ClassFolder,
}

impl DatasetFormat {
    /// Every format with its command-line name.
    pub const ALL: [(&'static str, Self); 6] = [
        ("csv", Self::Csv),
        ("tsv", Self::Tsv),
        ("jsonl", Self::Jsonl),
        ("coco", Self::Coco),
        ("webdataset", Self::WebDataset),
        ("classes", Self::ClassFolder),
    ];

    /// Parses a command-line name (`csv`, `tsv`, `jsonl`, `coco`, `webdataset`, `classes`).
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                Error::config(
                    "data.format",
                    format!(
                        "unknown format {s:?}; expected one of {}",
                        Self::ALL.map(|(n, _)| n).join(", ")
                    ),
                )
            })
    }

    /// Guesses the format from `path`: the extension of a file (`.csv`, `.tsv`, `.jsonl`,
    /// `.json` for COCO, `.tar`), or for a folder, WebDataset if it holds `.tar` files and a
    /// class tree otherwise.
    pub fn detect(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Ok(if shard_paths(path)?.is_empty() {
                Self::ClassFolder
            } else {
                Self::WebDataset
            });
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(Self::Csv),
            "tsv" => Ok(Self::Tsv),
            "jsonl" => Ok(Self::Jsonl),
            "json" => Ok(Self::Coco),
            "tar" => Ok(Self::WebDataset),
            _ => Err(Error::input(
                path,
                None,
                "cannot tell the dataset format from the extension; expected .csv, .tsv, \
                 .jsonl, .json (COCO), .tar or a folder — or name the format",
            )),
        }
    }
}

/// The `.tar` files directly in `dir`, sorted.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar")) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Prompt templates for class folders when none are given; `{}` is the class name.
pub const DEFAULT_TEMPLATES: [&str; 3] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
];

/// How to open a dataset from files.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSpec {
    /// The file format.
    pub format: DatasetFormat,
    /// Captions file, COCO JSON, shard, folder of shards or class-tree root.
    pub path: PathBuf,
    /// Folder the captions file's image paths are relative to (default: the file's folder).
    pub images: Option<PathBuf>,
    /// Header names of the CSV / TSV columns.
    pub columns: CsvColumns,
    /// What to do with bad samples.
    pub policy: BadSample,
    /// Side of the square images the dataset hands out.
    pub image_size: usize,
    /// Share of images (by a hash of their name) in the validation split.
    pub val_fraction: f64,
    /// Share of images in the test split.
    pub test_fraction: f64,
    /// Prompt templates of class folders, each with one `{}`.
    pub templates: Vec<String>,
    /// Size limits for image files.
    pub limits: DecodeLimits,
}

impl DatasetSpec {
    /// A spec for `path` in `format` with the defaults: fail on bad samples, 32-pixel images,
    /// 5 % validation, 5 % test, [`DEFAULT_TEMPLATES`].
    pub fn new(format: DatasetFormat, path: impl Into<PathBuf>) -> Self {
        Self {
            format,
            path: path.into(),
            images: None,
            columns: CsvColumns::default(),
            policy: BadSample::Fail,
            image_size: 32,
            val_fraction: 0.05,
            test_fraction: 0.05,
            templates: DEFAULT_TEMPLATES.iter().map(ToString::to_string).collect(),
            limits: DecodeLimits::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.image_size) {
            return Err(Error::config(
                "data.image_size",
                format!("{} is outside 1..=4096", self.image_size),
            ));
        }
        let f = [self.val_fraction, self.test_fraction];
        if f.iter().any(|v| !(0.0..=1.0).contains(v)) || f[0] + f[1] > 1.0 {
            return Err(Error::config(
                "data.val_fraction",
                format!(
                    "val {} and test {} must be in [0, 1] and sum to at most 1",
                    f[0], f[1]
                ),
            ));
        }
        if let Some(t) = self.templates.iter().find(|t| t.matches("{}").count() != 1) {
            return Err(Error::config(
                "data.templates",
                format!("template {t:?} must contain `{{}}` exactly once (the class name)"),
            ));
        }
        if self.templates.is_empty() {
            return Err(Error::config(
                "data.templates",
                "at least one template is needed",
            ));
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Turns captions-file entries into records, checking that each image file exists and is not
/// empty. `origin` says where an image was named, for messages.
fn records_from_files(
    entries: Vec<ImageCaptions>,
    images_dir: &Path,
    source: &Path,
    origin: impl Fn(&ImageCaptions) -> String,
    policy: BadSample,
    report: &mut BadSampleReport,
) -> Result<Vec<PairRecord>> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let path = images_dir.join(&e.image);
        let problem = match std::fs::metadata(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "missing image ({} of {})",
                origin(&e),
                source.display()
            )),
            Err(err) => Some(format!("cannot read: {err}")),
            Ok(m) if !m.is_file() => Some("is not a regular file".into()),
            Ok(m) if m.len() == 0 => {
                Some("zero-byte file; expected a PNG, JPEG or WebP image".into())
            }
            Ok(_) => None,
        };
        if let Some(msg) = problem {
            policy.handle(report, Error::input(&path, None, msg))?;
            continue;
        }
        let group = out.len() as u64;
        out.push(PairRecord {
            image: ImageSource::File(path),
            captions: e.captions,
            group,
            label: None,
        });
    }
    Ok(out)
}

/// Reads the records of `spec` (no decoding), with the class set for class folders.
pub fn load_records(
    spec: &DatasetSpec,
    report: &mut BadSampleReport,
) -> Result<(Vec<PairRecord>, Option<ClassSet>)> {
    let policy = spec.policy;
    let images_dir = || {
        spec.images.clone().unwrap_or_else(|| {
            spec.path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        })
    };
    let by_line = |e: &ImageCaptions| format!("named on line {}", e.line);
    match spec.format {
        DatasetFormat::Csv | DatasetFormat::Tsv | DatasetFormat::Jsonl => {
            let text = read_file(&spec.path)?;
            let rows = match spec.format {
                DatasetFormat::Csv => {
                    parse_captions_csv(&text, &spec.path, b',', &spec.columns, policy, report)?
                }
                DatasetFormat::Tsv => {
                    parse_captions_csv(&text, &spec.path, b'\t', &spec.columns, policy, report)?
                }
                _ => parse_captions_jsonl(&text, &spec.path, policy, report)?,
            };
            let recs = records_from_files(
                group_rows(rows),
                &images_dir(),
                &spec.path,
                by_line,
                policy,
                report,
            )?;
            Ok((recs, None))
        }
        DatasetFormat::Coco => {
            let text = read_file(&spec.path)?;
            let ims = parse_coco(&text, &spec.path, policy, report)?;
            let by_id = |e: &ImageCaptions| format!("image id {}", e.line);
            let recs = records_from_files(ims, &images_dir(), &spec.path, by_id, policy, report)?;
            Ok((recs, None))
        }
        DatasetFormat::WebDataset => {
            let meta = std::fs::metadata(&spec.path).map_err(|e| Error::io(&spec.path, e))?;
            let shards = if meta.is_dir() {
                let s = shard_paths(&spec.path)?;
                if s.is_empty() {
                    return Err(Error::input(
                        &spec.path,
                        None,
                        "folder holds no .tar shards",
                    ));
                }
                s
            } else {
                vec![spec.path.clone()]
            };
            let mut stream = PairStream::new(open_shards(shards), policy);
            let mut recs = Vec::new();
            for pair in stream.by_ref() {
                let pair = pair?;
                let group = recs.len() as u64;
                recs.push(PairRecord {
                    image: ImageSource::Memory {
                        name: pair.image_name,
                        bytes: pair.image.into(),
                    },
                    captions: vec![pair.caption],
                    group,
                    label: None,
                });
            }
            report.merge(stream.report());
            Ok((recs, None))
        }
        DatasetFormat::ClassFolder => load_class_folder(spec, report),
    }
}

/// A class tree: each sub-folder of `spec.path` is a class, named after the folder (`_` read
/// as a space); its PNG / JPEG / WebP files are the class's images. Captions are the class's
/// prompts.
fn load_class_folder(
    spec: &DatasetSpec,
    report: &mut BadSampleReport,
) -> Result<(Vec<PairRecord>, Option<ClassSet>)> {
    let root = &spec.path;
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let p = entry.map_err(|e| Error::io(root, e))?.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if p.is_dir() && !hidden {
            dirs.push(p);
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        return Err(Error::input(
            root,
            None,
            "no class folders; expected one sub-folder of images per class",
        ));
    }
    let mut names = Vec::new();
    let mut prompts = Vec::new();
    let mut recs = Vec::new();
    for dir in &dirs {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            spec.policy.handle(
                report,
                Error::input(dir, None, "class folder name is not UTF-8"),
            )?;
            continue;
        };
        let class = name.replace('_', " ");
        let label = names.len();
        let texts: Vec<String> = spec
            .templates
            .iter()
            .map(|t| t.replacen("{}", &class, 1))
            .collect();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let p = entry.map_err(|e| Error::io(dir, e))?.path();
            if p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(is_image_extension)
            {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            spec.policy.handle(
                report,
                Error::input(
                    dir,
                    None,
                    "class folder holds no .png, .jpg, .jpeg or .webp files",
                ),
            )?;
        }
        for p in files {
            let len = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            if len == 0 {
                spec.policy.handle(
                    report,
                    Error::input(
                        &p,
                        None,
                        "zero-byte file; expected a PNG, JPEG or WebP image",
                    ),
                )?;
                continue;
            }
            recs.push(PairRecord {
                image: ImageSource::File(p),
                captions: texts.clone(),
                group: label as u64,
                label: Some(label),
            });
        }
        names.push(class);
        prompts.push(vec![texts]);
    }
    let classes = ClassSet {
        names,
        prompts,
        held_out: Vec::new(),
    };
    Ok((recs, Some(classes)))
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
            for r in records {
                let u = (hash_str(&r.image.name().to_string_lossy()) % 1_000_000) as f64 / 1e6;
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

    fn to_sample(&self, rec: &PairRecord) -> Result<Sample> {
        let image = rec.image.load(&self.limits)?;
        Ok(Sample {
            image: resize_and_center_crop(&image, self.image_size),
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

    /// The sample at `index` of `recs`; under `Skip`, the next readable one.
    fn sample_from(&self, recs: &[PairRecord], what: &str, index: usize) -> Result<Sample> {
        if index >= recs.len() {
            return Err(Error::Data(format!(
                "{}: {what} index {index} is out of range ({} images)",
                self.name,
                recs.len()
            )));
        }
        let tries = match self.policy {
            BadSample::Fail => 1,
            BadSample::Skip => recs.len().min(MAX_SKIPS),
        };
        for k in 0..tries {
            let rec = &recs[(index + k) % recs.len()];
            match self.to_sample(rec) {
                Ok(s) => return Ok(s),
                Err(e) if self.policy == BadSample::Skip => self.record_bad(&e),
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
        self.sample_from(self.records(split), split.name(), index)
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

    fn zero_shot_len(&self) -> usize {
        self.zero_shot.len()
    }

    fn zero_shot_sample(&self, index: usize) -> Result<Sample> {
        self.sample_from(&self.zero_shot, "zero-shot", index)
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

//! Reading a file dataset's index: the formats, how to open one ([`DatasetSpec`]), and the
//! records each format yields ([`load_records`]), before any image is decoded.
//!
//! Captions files and COCO JSON are parsed whole (they are small next to their images); image
//! files are only checked to exist and not be empty. WebDataset shards are indexed: each pair
//! keeps its caption and where its image lies in the shard ([`ImageSource::Member`]), never the
//! image bytes, so opening a dataset holds captions and offsets only.

use crate::data::ClassSet;
use crate::data::captions::{
    CsvColumns, ImageCaptions, group_rows, parse_captions_csv, parse_captions_jsonl,
};
use crate::data::coco::parse_coco;
use crate::data::decode::{DecodeLimits, is_image_extension};
use crate::data::files::{ImageSource, PairRecord};
use crate::data::policy::{BadSample, BadSampleReport};
use crate::data::webdataset::{PairStream, open_shards};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file formats [`FileDataset::open`](crate::data::FileDataset::open) reads.
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

    /// Checks the settings that need no file access; the error names the `data.*` field.
    pub fn validate(&self) -> Result<()> {
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
            // An index: captions and offsets only; images are read from the shard on demand.
            let mut stream = PairStream::indexing(open_shards(shards.clone()), policy);
            let mut recs = Vec::new();
            for pair in stream.by_ref() {
                let pair = pair?;
                let group = recs.len() as u64;
                let shard = shards
                    .iter()
                    .find(|s| pair.image_name.starts_with(s))
                    .cloned()
                    .unwrap_or_else(|| spec.path.clone());
                recs.push(PairRecord {
                    image: ImageSource::Member {
                        shard,
                        name: pair.image_name,
                        offset: pair.image_offset,
                        len: pair.image_len,
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

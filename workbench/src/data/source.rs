//! A run's dataset from its configuration: the synthetic `shapes` set by default, or image–caption
//! files when the `[data.files]` table is present.
//!
//! ```toml
//! [data]
//! image_size = 32                  # the model's input side, for either source
//!
//! [data.files]
//! path = "data/captions.csv"       # captions file, COCO JSON, .tar shard(s) or a class tree
//! format = "auto"                  # or csv, tsv, jsonl, coco, webdataset, classes
//! bad_samples = "skip"             # training: skip and count (the default)
//! eval_bad_samples = "fail"        # val / test / zero-shot: stop (the default)
//! zero_shot = "data/classes"       # optional class tree for zero-shot evaluation
//!
//! [data.files.augment]             # training split only; CLIP's defaults
//! scale = [0.9, 1.0]
//! flip = 0.0
//! ```
//!
//! Relative paths are read from the working directory. The tokenizer is the `[tokenizer]`
//! table's: a Hugging Face `tokenizer.json` (`file`) or a word-level one fitted on the
//! dataset's captions and prompts, with `context_length` positions. Training images get a
//! random-resized crop (and flip, if asked) drawn from the loader's seeded stream; val, test and
//! zero-shot images are resized and centre-cropped.

use crate::data::captions::CsvColumns;
use crate::data::records::{DEFAULT_TEMPLATES, DatasetFormat, DatasetSpec};
use crate::data::transform::RandomCrop;
use crate::data::{BadSample, FileDataset, PairDataset, Shapes, ShapesConfig};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Training augmentation of a file dataset (`[data.files.augment]`): a random-resized crop
/// and a horizontal flip. The defaults are open_clip's training transform (area 90–100 %,
/// aspect ratio 3/4–4/3, no flip: captions that say "left of" would lie after a flip).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileAugment {
    /// Whether training images are random-resized crops (`false`: resize + centre crop).
    pub random_crop: bool,
    /// Range of the crop's area as a share of the image's, within (0, 1].
    pub scale: [f64; 2],
    /// Range of the crop's aspect ratio (width / height), drawn log-uniformly.
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub flip: f64,
}

impl Default for FileAugment {
    fn default() -> Self {
        let crop = RandomCrop::default();
        Self {
            random_crop: true,
            scale: crop.scale,
            ratio: crop.ratio,
            flip: 0.0,
        }
    }
}

impl FileAugment {
    /// The crop the training split uses, `None` when switched off (and no flip).
    pub fn crop(&self) -> Option<RandomCrop> {
        if self.random_crop {
            Some(RandomCrop {
                scale: self.scale,
                ratio: self.ratio,
                flip: self.flip,
            })
        } else if self.flip > 0.0 {
            // A flip alone: the whole image (scale and ratio pinned) then the flip.
            Some(RandomCrop {
                scale: [1.0, 1.0],
                ratio: [1.0, 1.0],
                flip: self.flip,
            })
        } else {
            None
        }
    }

    fn validate(&self) -> Result<()> {
        let [s0, s1] = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(Error::config(
                "data.files.augment.scale",
                format!("[{s0}, {s1}]: expected 0 < min <= max <= 1 (shares of the image area)"),
            ));
        }
        let [r0, r1] = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(Error::config(
                "data.files.augment.ratio",
                format!("[{r0}, {r1}]: expected 0 < min <= max (width / height)"),
            ));
        }
        if !(0.0..=1.0).contains(&self.flip) {
            return Err(Error::config(
                "data.files.augment.flip",
                format!("{}: expected a probability in [0, 1]", self.flip),
            ));
        }
        Ok(())
    }
}

/// A dataset from files (`[data.files]`); see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Captions file (.csv, .tsv, .jsonl), COCO .json, a .tar shard, a folder of shards, or a
    /// class tree.
    pub path: PathBuf,
    /// `auto` (from the extension or the folder's contents, as `check-data` does), `csv`,
    /// `tsv`, `jsonl`, `coco`, `webdataset` or `classes`.
    pub format: String,
    /// Folder the captions file's image paths are relative to (default: the file's folder).
    pub images: Option<PathBuf>,
    /// Header of the image column of CSV / TSV files.
    pub image_column: String,
    /// Header of the caption column of CSV / TSV files.
    pub caption_column: String,
    /// Bad training samples: `skip` (count them, default) or `fail`. Problems found while
    /// opening the files, before splitting, follow this policy too.
    pub bad_samples: BadSample,
    /// Bad val / test / zero-shot images: `fail` (default) or `skip`.
    pub eval_bad_samples: BadSample,
    /// Share of images (by a hash of their name) in the validation split.
    pub val_fraction: f64,
    /// Share of images in the test split.
    pub test_fraction: f64,
    /// Prompt templates for class trees, each with one `{}` for the class name.
    pub templates: Vec<String>,
    /// A class tree (`root/<class>/<image>`) for zero-shot evaluation.
    pub zero_shot: Option<PathBuf>,
    /// Training augmentation.
    pub augment: FileAugment,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            format: "auto".into(),
            images: None,
            image_column: "image".into(),
            caption_column: "caption".into(),
            bad_samples: BadSample::for_training(),
            eval_bad_samples: BadSample::for_eval(),
            val_fraction: 0.05,
            test_fraction: 0.05,
            templates: DEFAULT_TEMPLATES.iter().map(ToString::to_string).collect(),
            zero_shot: None,
            augment: FileAugment::default(),
        }
    }
}

/// Renames the field of a [`Error::Config`] from `data.x` to `data.files.x`.
fn under_files(e: Error) -> Error {
    match e {
        Error::Config { field, msg } => Error::Config {
            field: field.replacen("data.", "data.files.", 1),
            msg,
        },
        other => other,
    }
}

impl FilesConfig {
    /// Checks the settings that need no file access; the error names the `data.files.*` field.
    pub fn validate(&self, image_size: usize) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config(
                "data.files.path",
                "missing: name a captions file, COCO JSON, .tar shard, folder of shards or \
                 class tree",
            ));
        }
        if self.format != "auto" {
            DatasetFormat::parse(&self.format).map_err(under_files)?;
        }
        for (field, v) in [
            ("image_column", &self.image_column),
            ("caption_column", &self.caption_column),
        ] {
            if v.trim().is_empty() {
                return Err(Error::config(
                    format!("data.files.{field}"),
                    "must not be empty",
                ));
            }
        }
        self.augment.validate()?;
        self.spec(DatasetFormat::Csv, self.path.clone(), image_size)
            .validate()
            .map_err(under_files)
    }

    /// The format: as named, or detected from the path.
    pub fn resolved_format(&self) -> Result<DatasetFormat> {
        if self.format == "auto" {
            DatasetFormat::detect(&self.path)
        } else {
            DatasetFormat::parse(&self.format).map_err(under_files)
        }
    }

    fn spec(&self, format: DatasetFormat, path: PathBuf, image_size: usize) -> DatasetSpec {
        let mut spec = DatasetSpec::new(format, path);
        spec.images.clone_from(&self.images);
        spec.columns = CsvColumns {
            image: self.image_column.clone(),
            caption: self.caption_column.clone(),
        };
        spec.policy = self.bad_samples;
        spec.image_size = image_size;
        spec.val_fraction = self.val_fraction;
        spec.test_fraction = self.test_fraction;
        spec.templates.clone_from(&self.templates);
        spec
    }

    /// Opens the dataset: training split with the training policy and crop, evaluation splits
    /// with the evaluation policy, the zero-shot class tree when one is named.
    pub fn open(&self, image_size: usize) -> Result<FileDataset> {
        self.validate(image_size)?;
        let spec = self.spec(self.resolved_format()?, self.path.clone(), image_size);
        let mut ds = FileDataset::open(&spec)?
            .with_eval_policy(self.eval_bad_samples)
            .with_train_crop(self.augment.crop());
        if let Some(root) = &self.zero_shot {
            let mut zs = self.spec(DatasetFormat::ClassFolder, root.clone(), image_size);
            zs.policy = self.eval_bad_samples;
            ds = ds.with_zero_shot_from(FileDataset::open(&zs)?);
        }
        Ok(ds)
    }
}

/// The dataset `[data]` describes: files when `data.files` is set, else the synthetic set.
pub fn open_dataset(data: &ShapesConfig) -> Result<Arc<dyn PairDataset>> {
    Ok(match &data.files {
        Some(files) => Arc::new(files.open(data.image_size)?),
        None => Arc::new(Shapes::new(data.clone())?),
    })
}

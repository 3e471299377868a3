//! Image–caption data: the [`PairDataset`] trait, samples with ground truth, tokenizer and batching.
//!
//! A dataset hands out [`Sample`]s — plain data, no tensors: an RGB image, one or more captions
//! (paraphrases of the same content, like COCO's five captions per image), and where the dataset
//! knows it, ground truth (objects, masks, which caption words name which object). The
//! [`Loader`] turns samples into tensor [`Batch`]es.
//!
//! The embedded default is [`shapes::Shapes`], a procedural, seeded image–caption set that needs no
//! files. Real datasets implement the same trait: [`files::FileDataset`] reads a folder of images
//! with a captions file ([`captions`]: CSV, TSV, JSON Lines), COCO captions ([`coco`]),
//! WebDataset tar shards ([`webdataset`]) or an image-classification folder tree, decodes images
//! on demand ([`decode`]) and brings them to the model's size ([`transform`]); bad samples stop
//! the run or are skipped and counted, per the [`policy`].

pub mod batch;
pub mod captions;
pub mod coco;
pub mod decode;
pub mod files;
pub mod image;
pub mod loader;
pub mod pairs;
pub mod policy;
pub mod prefetch;
pub mod records;
pub mod shapes;
pub mod source;
pub mod tokenizer;
pub mod transform;
pub mod webdataset;

pub use batch::{Batch, SecondView, Texts, collate};
pub use files::{DatasetFormat, DatasetSpec, FileDataset, ImageSource, PairRecord};
pub use image::RgbImage;
pub use loader::{Extras, Loader, LoaderState};
pub use pairs::Pairs;
pub use policy::{BadSample, BadSampleReport};
pub use prefetch::Prefetcher;
pub use shapes::{Shapes, ShapesConfig};
pub use source::{FileAugment, FilesConfig, open_dataset};
pub use tokenizer::{Encoding, Tokenizer};

use serde::{Deserialize, Serialize};

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Used for optimisation.
    Train,
    /// Used for periodic evaluation during training.
    Val,
    /// Held back for final numbers.
    Test,
}

impl Split {
    /// Lower-case name, as used in configs and stream seeds.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A span of a caption (byte offsets into [`Caption::text`]) that names object `object`
/// of the sample's [`SceneTruth`], e.g. "large red circle".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mention {
    /// Index into [`SceneTruth::objects`].
    pub object: usize,
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
}

/// One caption of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caption {
    /// The caption text.
    pub text: String,
    /// Which spans of the text name which ground-truth object (empty when unknown).
    pub mentions: Vec<Mention>,
}

/// Ground truth of one object in a synthetic scene.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectTruth {
    /// Shape name, e.g. "circle".
    pub shape: String,
    /// Colour name, e.g. "red".
    pub colour: String,
    /// Size word, "small" or "large".
    pub size: String,
    /// Bounding box in pixels: `[x0, y0, x1, y1)`, end-exclusive.
    pub bbox: [usize; 4],
    /// Row-major `height × width` pixel mask (coverage ≥ 0.5).
    pub mask: Vec<bool>,
}

impl ObjectTruth {
    /// The words naming this object, e.g. "large red circle".
    pub fn description(&self) -> String {
        format!("{} {} {}", self.size, self.colour, self.shape)
    }
}

/// Ground truth of a synthetic scene.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SceneTruth {
    /// The objects, in the order the captions' [`Mention`]s refer to them.
    pub objects: Vec<ObjectTruth>,
}

/// One image with its captions and whatever ground truth the dataset knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image, RGB, 8 bits per channel.
    pub image: RgbImage,
    /// Paraphrases describing the same image; training draws one per step.
    pub captions: Vec<Caption>,
    /// Zero-shot class index, when the image has one (see [`PairDataset::classes`]).
    pub label: Option<usize>,
    /// Objects, masks and boxes, for localisation scores (synthetic data only).
    pub truth: Option<SceneTruth>,
    /// Content id: samples with equal ids show the same content (for `shapes`, the same canonical
    /// scene description). Multi-positive and false-negative objectives use it; `None` makes
    /// every image its own group.
    pub group: Option<u64>,
}

/// Classes for zero-shot classification.
///
/// A class may look several ways (its *variants*: the synthetic set's "red circle" is drawn small
/// or large, and captions always say which). Each variant has prompt templates that paraphrase
/// it; their normalised text embeddings are averaged into one variant embedding (CLIP's prompt
/// ensembling), and an image scores a class by its best-matching variant. Averaging across
/// variants instead would blend different visual concepts into one vector. A class with a single
/// variant is plain CLIP zero-shot classification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassSet {
    /// Class names, e.g. "red circle".
    pub names: Vec<String>,
    /// For each class, its variants; for each variant, the prompt texts to embed and average.
    pub prompts: Vec<Vec<Vec<String>>>,
    /// Classes never seen in training (compositional hold-out), by index.
    pub held_out: Vec<usize>,
}

/// A source of image–caption pairs.
///
/// Implement it to train on other data: `len` and `sample` per split, plus optionally the
/// zero-shot classes and a labelled image stream for them. Samples must be deterministic for
/// a given `(split, index)`; randomness belongs to the loader.
pub trait PairDataset: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &str;
    /// Image size (side of the square images it produces).
    fn image_size(&self) -> usize;
    /// Number of images in `split`.
    fn len(&self, split: Split) -> usize;
    /// Whether `split` is empty.
    fn is_empty(&self, split: Split) -> bool {
        self.len(split) == 0
    }
    /// The `index`-th image of `split`, with its captions.
    fn sample(&self, split: Split, index: usize) -> crate::Result<Sample>;
    /// The `index`-th training image as the loader hands it to the model: datasets with a
    /// training-only transform (e.g. [`FileDataset`]'s random-resized crop and flip) draw it from
    /// `rng`, a stream of the loader's seed and position. The default is
    /// `sample(Split::Train, index)`, ignoring `rng`.
    fn train_sample(&self, index: usize, rng: &mut crate::rng::Rng) -> crate::Result<Sample> {
        let _ = rng;
        self.sample(Split::Train, index)
    }
    /// Texts to fit a word-level tokenizer on (every word the captions and prompts can use).
    fn corpus(&self) -> Vec<String>;
    /// A stable id of the `index`-th image of `split`, for matching exported rows (a file or
    /// member name for datasets from files); default `split/index`.
    fn sample_id(&self, split: Split, index: usize) -> String {
        format!("{split}/{index}")
    }
    /// Bad samples skipped so far, for datasets that can meet them (files); `None` otherwise.
    /// Counted when read, by whichever loader read them (the prefetch thread's included).
    fn bad_samples(&self) -> Option<BadSampleReport> {
        None
    }
    /// Zero-shot classes, if the dataset has them.
    fn classes(&self) -> Option<ClassSet> {
        None
    }
    /// Number of labelled images for zero-shot evaluation.
    fn zero_shot_len(&self) -> usize {
        0
    }
    /// `k` captions that almost describe `sample` but not quite (one attribute or relation
    /// changed), made from `caption` by rule, for hard-negative objectives. None of them may be
    /// a true caption of the sample. Datasets without ground truth cannot make them.
    fn hard_negatives(
        &self,
        sample: &Sample,
        caption: &Caption,
        k: usize,
        rng: &mut crate::rng::Rng,
    ) -> crate::Result<Vec<String>> {
        let _ = (sample, caption, k, rng);
        Err(crate::Error::Data(format!(
            "dataset {} cannot make hard-negative captions",
            self.name()
        )))
    }
    /// The `index`-th labelled image for zero-shot evaluation ([`Sample::label`] set).
    fn zero_shot_sample(&self, index: usize) -> crate::Result<Sample> {
        Err(crate::Error::Data(format!(
            "dataset {} has no zero-shot images (asked for {index})",
            self.name()
        )))
    }
}

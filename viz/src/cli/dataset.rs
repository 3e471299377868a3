//! `workbench check-data`: open a dataset from files, count its pairs, decode every image, and
//! report bad samples per the chosen policy.

use super::say;
use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;
use workbench::data::captions::CsvColumns;
use workbench::data::{BadSample, DatasetFormat, DatasetSpec, FileDataset};

/// `workbench check-data`.
#[derive(Debug, Args)]
pub struct CheckDataArgs {
    /// Captions file (.csv, .tsv, .jsonl), COCO .json, a .tar shard, a folder of shards, or a
    /// class-tree root.
    pub path: PathBuf,
    /// Format; guessed from the extension (or folder contents) when not given.
    #[arg(long, value_parser = ["csv", "tsv", "jsonl", "coco", "webdataset", "classes"])]
    pub format: Option<String>,
    /// Folder the captions file's image paths are relative to (default: the file's folder).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Bad samples: `fail` stops at the first, `skip` counts them and lists the first few.
    #[arg(long, default_value = "fail", value_parser = ["fail", "skip"])]
    pub policy: String,
    /// Header of the image column of CSV / TSV files.
    #[arg(long, default_value = "image")]
    pub image_column: String,
    /// Header of the caption column of CSV / TSV files.
    #[arg(long, default_value = "caption")]
    pub caption_column: String,
    /// Only parse and look for the files; do not decode the images.
    #[arg(long)]
    pub no_decode: bool,
    /// How many bad samples to list.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
}

/// Runs `check-data`.
pub fn check_data(a: &CheckDataArgs) -> Result<()> {
    let format = match &a.format {
        Some(f) => DatasetFormat::parse(f)?,
        None => DatasetFormat::detect(&a.path)?,
    };
    let mut spec = DatasetSpec::new(format, &a.path);
    spec.images.clone_from(&a.images);
    spec.policy = BadSample::parse(&a.policy)?;
    spec.columns = CsvColumns {
        image: a.image_column.clone(),
        caption: a.caption_column.clone(),
    };
    let ds = FileDataset::open(&spec)?;
    let sum = ds.check(!a.no_decode)?;
    let [train, val, test] = sum.images;
    say(&format!(
        "{}: {format:?}, {} images (train {train}, val {val}, test {test}), {} captions",
        a.path.display(),
        train + val + test,
        sum.captions
    ))?;
    if sum.zero_shot.1 > 0 {
        say(&format!(
            "zero-shot: {} images in {} classes",
            sum.zero_shot.0, sum.zero_shot.1
        ))?;
    }
    if !a.no_decode {
        say(&format!("decoded: {} images", sum.decoded))?;
    }
    let mut bad = sum.bad.clone();
    bad.examples.truncate(a.show);
    say(&bad.summary())?;
    if train + val + test + sum.zero_shot.0 == 0 {
        bail!("{}: no usable image–caption pairs", a.path.display());
    }
    Ok(())
}

//! `workbench data` (look at a run's dataset) and `workbench check-data` (open a dataset from
//! files, count its pairs, decode every image, and report bad samples per the chosen policy).

use super::{DataArgs, say};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::path::PathBuf;
use workbench::config::RunConfig;
use workbench::data::captions::CsvColumns;
use workbench::data::{BadSample, DatasetFormat, DatasetSpec, FileDataset, Split};

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

/// Runs `data`.
pub(super) fn data(a: &DataArgs) -> Result<()> {
    use workbench::data::open_dataset;
    let cfg = match (&a.config, &a.preset) {
        (Some(path), _) => RunConfig::load(path)?,
        (None, Some(p)) => RunConfig::preset(p)?,
        (None, None) => RunConfig::default(),
    };
    if !(1..=4096).contains(&a.count) || !(1..=32).contains(&a.scale) {
        bail!("--count must be in 1..=4096 and --scale in 1..=32");
    }
    let ds = open_dataset(&cfg.data)?;
    let len = match a.split.as_str() {
        "zero-shot" => ds.zero_shot_len(),
        "val" => ds.len(Split::Val),
        "test" => ds.len(Split::Test),
        _ => ds.len(Split::Train),
    };
    let end = (a.start + a.count).min(len);
    if a.start >= end {
        bail!(
            "--start {} is past the end of the {} split ({len} samples)",
            a.start,
            a.split
        );
    }
    let classes = ds.classes();
    let mut images = Vec::new();
    for i in a.start..end {
        let s = match a.split.as_str() {
            "zero-shot" => ds.zero_shot_sample(i)?,
            "val" => ds.sample(Split::Val, i)?,
            "test" => ds.sample(Split::Test, i)?,
            _ => ds.sample(Split::Train, i)?,
        };
        let label = s
            .label
            .and_then(|l| {
                classes
                    .as_ref()
                    .map(|c| format!("  [class {l}: {}]", c.names[l]))
            })
            .unwrap_or_default();
        say(&format!("{i:>6}{label}"))?;
        for c in &s.captions {
            say(&format!("        {}", c.text))?;
        }
        images.push(s.image);
    }
    if let Some(out) = &a.out {
        contact_sheet(&images, a.scale)?
            .save(out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {} ({} images)", out.display(), images.len());
    }
    Ok(())
}

/// Images side by side, 8 per row, each upscaled `scale` times (nearest neighbour) with a
/// 2-pixel white gutter.
fn contact_sheet(images: &[workbench::data::RgbImage], scale: usize) -> Result<image::RgbImage> {
    let Some(first) = images.first() else {
        bail!("no images")
    };
    let (w, h) = (first.width * scale, first.height * scale);
    let cols = images.len().min(8);
    let rows = images.len().div_ceil(8);
    let gutter = 2;
    let width = u32::try_from(cols * (w + gutter) + gutter)?;
    let height = u32::try_from(rows * (h + gutter) + gutter)?;
    let mut sheet = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    for (k, im) in images.iter().enumerate() {
        let (ox, oy) = (
            gutter + (k % 8) * (w + gutter),
            gutter + (k / 8) * (h + gutter),
        );
        for y in 0..h {
            for x in 0..w {
                let p = im.pixel(x / scale, y / scale);
                sheet.put_pixel(
                    u32::try_from(ox + x)?,
                    u32::try_from(oy + y)?,
                    image::Rgb(p),
                );
            }
        }
    }
    Ok(sheet)
}

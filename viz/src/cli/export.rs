//! `workbench export`: a run's weights as one safetensors file and embeddings of a split as
//! NumPy arrays, for use outside the workbench.

use super::say;
use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::path::PathBuf;
use workbench::config::parse_device;
use workbench::data::Split;
use workbench::export::{dataset_batches, export_embeddings, export_files, save_weights};
use workbench::train::Trainer;

/// `workbench export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory or its `checkpoint/`.
    #[arg(long, alias = "checkpoint")]
    pub run: PathBuf,
    /// Folder to write `model.safetensors`, `image_embeddings.npy`, `text_embeddings.npy` and
    /// `captions.json` into (created; must be empty if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Split whose images and captions to embed (evaluation transform for every split).
    #[arg(long, default_value = "val", value_parser = ["train", "val", "test"])]
    pub split: String,
    /// Embed only the first N images of the split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// cpu, cuda or cuda:N (default: as trained).
    #[arg(long)]
    pub device: Option<String>,
}

/// Runs `export`.
pub fn export(a: &ExportArgs) -> Result<()> {
    if a.out.exists() && a.out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{}: directory exists and is not empty; choose another --out",
            a.out.display()
        );
    }
    if a.batch == 0 || a.limit == Some(0) {
        bail!("--batch and --limit must be at least 1");
    }
    let device = a.device.as_deref().map(parse_device).transpose()?;
    let trainer = Trainer::resume(&a.run, device)?;
    let split = match a.split.as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        _ => Split::Val,
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let [weights, ..] = export_files(&a.out);
    save_weights(&trainer.params().tensors(), &weights)?;
    let batches = dataset_batches(trainer.dataset().as_ref(), split, a.limit, a.batch);
    let index = export_embeddings(
        trainer.model(),
        trainer.tokenizer(),
        trainer.device(),
        batches,
        &a.out,
    )?;
    say(&format!(
        "exported {} parameters, {} images and {} captions of {split} (dimension {}) to {}",
        trainer.params().all().len(),
        index.images.len(),
        index.texts.len(),
        index.dim,
        a.out.display()
    ))?;
    for f in export_files(&a.out) {
        say(&format!("  {}", f.display()))?;
    }
    Ok(())
}

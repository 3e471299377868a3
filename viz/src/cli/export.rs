//! `workbench export`: a run's or a pretrained model's weights as one safetensors file and
//! embeddings of a split as NumPy arrays, for use outside the workbench.

use super::say;
use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::path::PathBuf;
use workbench::config::parse_device;
use workbench::data::{Split, open_dataset};
use workbench::export::{
    ExportIndex, dataset_batches, export_embeddings, export_files, save_weights,
};
use workbench::train::Trainer;

/// `workbench export`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["run", "model"])))]
pub struct ExportArgs {
    /// A run directory or its `checkpoint/`.
    #[arg(long, alias = "checkpoint")]
    pub run: Option<PathBuf>,
    /// A pretrained Hugging Face CLIP or SigLIP directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`): its weights under the workbench's names, and embeddings of the dataset
    /// of `--config`.
    #[arg(long, requires = "config")]
    pub model: Option<PathBuf>,
    /// With `--model`: a TOML run configuration whose `[data]` (e.g. `[data.files]`) names the
    /// dataset to embed; images are sized to the model's input unless it sets `data.image_size`.
    #[arg(long, requires = "model")]
    pub config: Option<PathBuf>,
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
    /// cpu, cuda or cuda:N (default: as trained; cpu for `--model`).
    #[arg(long)]
    pub device: Option<String>,
}

/// Weights and embeddings of the pretrained model in `dir` on the dataset of `config`.
fn export_pretrained(
    dir: &std::path::Path,
    config: &std::path::Path,
    a: &ExportArgs,
    split: Split,
    device: Option<candle_core::Device>,
) -> Result<(usize, ExportIndex)> {
    let device = device.unwrap_or(candle_core::Device::Cpu);
    let pre = super::pretrained::load(dir, &device)?;
    let cfg = super::pretrained::pretrained_config(&pre, Some(config))?;
    let dataset = open_dataset(&cfg.data)
        .with_context(|| format!("cannot open the dataset of {}", config.display()))?;
    if dataset.image_size() != pre.preprocess.image_size {
        bail!(
            "dataset `{}` of {} has {} px images; the pretrained model in {} takes {} px",
            dataset.name(),
            config.display(),
            dataset.image_size(),
            dir.display(),
            pre.preprocess.image_size
        );
    }
    let (model, params) = pre.build(&device)?;
    create_out(a)?;
    let [weights, ..] = export_files(&a.out);
    save_weights(&params.tensors(), &weights)?;
    let batches = dataset_batches(dataset.as_ref(), split, a.limit, a.batch);
    let index = export_embeddings(&model, &pre.tokenizer, &device, batches, &a.out)?;
    Ok((params.all().len(), index))
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
    let split = match a.split.as_str() {
        "train" => Split::Train,
        "test" => Split::Test,
        _ => Split::Val,
    };
    let (parameters, index) = match (&a.run, &a.model, &a.config) {
        (_, Some(dir), Some(config)) => export_pretrained(dir, config, a, split, device)?,
        (Some(run), None, _) => {
            let trainer = Trainer::resume(run, device)?;
            create_out(a)?;
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
            (trainer.params().all().len(), index)
        }
        _ => bail!("give --run (a run directory) or --model (a pretrained model) with --config"),
    };
    say(&format!(
        "exported {parameters} parameters, {} images and {} captions of {split} (dimension {}) to {}",
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

fn create_out(a: &ExportArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))
}

//! A pretrained model from the command line: the run configuration that fine-tunes or embeds
//! with it (`train --pretrained`, `export --model`).

use anyhow::{Context as _, Result, bail};
use std::path::Path;
use workbench::config::RunConfig;
use workbench::pretrained::Pretrained;

/// The run configuration for `pre`: [`Pretrained::run_config`] with, from the TOML file at
/// `config` if given, its `[data]` and `[train]` sections and its `[loss]` when it has one (else
/// the checkpoint's own objective). The model and tokenizer are the checkpoint's; the file may
/// only choose `model.kernels`. Without `data.image_size` in the file the images are sized to
/// the model's input.
pub fn pretrained_config(pre: &Pretrained, config: Option<&Path>) -> Result<RunConfig> {
    let mut cfg = pre.run_config();
    let Some(path) = config else {
        return Ok(cfg);
    };
    let file = RunConfig::load(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
    if table.contains_key("tokenizer") {
        bail!(
            "{}: [tokenizer] comes from the pretrained model in {}; remove it",
            path.display(),
            pre.dir.display()
        );
    }
    if let Some(model) = table.get("model") {
        let other = model
            .as_table()
            .and_then(|t| t.keys().find(|k| k.as_str() != "kernels").cloned());
        if other.is_some() || !model.is_table() {
            bail!(
                "{}: field `model.{}`: the architecture comes from the pretrained model in {}; only `model.kernels` may be set",
                path.display(),
                other.unwrap_or_default(),
                pre.dir.display()
            );
        }
        cfg.model.kernels = file.model.kernels;
    }
    let sized = table
        .get("data")
        .and_then(toml::Value::as_table)
        .is_some_and(|d| d.contains_key("image_size"));
    cfg.data = file.data;
    if !sized {
        cfg.data.image_size = pre.preprocess.image_size;
    }
    if cfg.data.image_size != pre.preprocess.image_size {
        bail!(
            "{}: field `data.image_size` is {}, but the pretrained model in {} takes {} px images",
            path.display(),
            cfg.data.image_size,
            pre.dir.display(),
            pre.preprocess.image_size
        );
    }
    cfg.train = file.train;
    if table.contains_key("loss") {
        cfg.loss = file.loss;
    }
    if table.contains_key("preset") {
        cfg.preset = file.preset;
    }
    Ok(cfg)
}

/// Loads the pretrained model in `dir`, naming it in the error.
pub fn load(dir: &Path, device: &candle_core::Device) -> Result<Pretrained> {
    workbench::pretrained::load(dir, device)
        .with_context(|| format!("cannot load the pretrained model {}", dir.display()))
}

//! Pretrained Hugging Face CLIP and SigLIP checkpoints, loaded into the workbench's own model.
//!
//! A checkpoint is a local directory as `transformers` saves it (`CLIPModel`, model type `clip`;
//! `SiglipModel`, model type `siglip`):
//!
//! | file | used for |
//! |---|---|
//! | `config.json` | tower sizes, activation, LayerNorm `eps`, image and patch size, vocabulary |
//! | `model.safetensors` | the weights (f32, f16 or bf16), mapped to the workbench's names |
//! | `tokenizer.json` | the tokenizer (context length = `max_position_embeddings`) |
//! | `preprocessor_config.json` (optional) | `image_mean` / `image_std`; without it CLIP's OpenAI statistics or SigLIP's 0.5 / 0.5 |
//!
//! Nothing is downloaded at run time. Fetch a checkpoint once with the Hugging Face CLI:
//!
//! ```text
//! huggingface-cli download openai/clip-vit-base-patch32 --local-dir models/clip-b32
//! huggingface-cli download google/siglip-base-patch16-224 --local-dir models/siglip-b16
//! ```
//!
//! [`load`] returns a [`Pretrained`]: the [`ModelConfig`] that reproduces the architecture on the
//! workbench's towers, the tokenizer, the image statistics and every tensor under its workbench
//! name (`model.*`, and `loss.clip.logit_scale` or `loss.siglip.{logit_scale,logit_bias}` for
//! the objective the model was trained with). [`Pretrained::build`] makes a ready
//! [`ClipModel`]; [`Trainer::from_pretrained`](crate::train::Trainer::from_pretrained) makes a
//! trainer on any dataset, so inspection, evaluation and fine-tuning with any objective run
//! unchanged.
//!
//! ```no_run
//! use candle_core::Device;
//! use workbench::model::Capture;
//! let pre = workbench::pretrained::load("models/clip-b32".as_ref(), &Device::Cpu)?;
//! let (model, _params) = pre.build(&Device::Cpu)?;
//! let (ids, eos, _) = workbench::data::batch::text_tensors(
//!     &["a photo of a cat"], &pre.tokenizer, &Device::Cpu)?;
//! let text = model.encode_text(&ids, &eos, Capture::NONE)?.embedding; // (1, 512), L2-normalised
//! # Ok::<(), workbench::Error>(())
//! ```
//!
//! How the two architectures map onto the workbench's towers:
//!
//! - **CLIP**: patch embedding without bias, class token, positions, `ln_pre`, pre-LN blocks
//!   (`quick_gelu` unless `hidden_act` says otherwise), `ln_post` on the class token, bias-free
//!   projections; causal text tower pooled at EOS. `transformers` pools a config with the legacy
//!   `eos_token_id = 2` at the argmax of the ids, otherwise at the first `eos_token_id`; the
//!   workbench pools at the tokenizer's EOS position, which is the same position whenever EOS is
//!   the largest id (OpenAI's vocabulary) or the config names the real EOS id.
//! - **SigLIP**: patch embedding with bias, no class token, no `ln_pre`, `ln_post` on every
//!   token, then attention pooling ([`Pool::Map`](crate::model::Pool::Map)); no image projection;
//!   a bidirectional text tower over texts without BOS padded to the full context, pooled at the
//!   last position and projected by a linear head with bias; GELU (tanh), `eps = 1e-6`.
//!
//! Images are fed as everywhere in the workbench — decoded, resized to fill the model's
//! `image_size` (triangle filter) and centre-cropped, normalised with CLIP's statistics — and
//! the image tower re-normalises them to the checkpoint's own statistics
//! ([`VisionConfig::input_stats`](crate::model::VisionConfig::input_stats)). Resizing differs in
//! filter from PIL's bicubic, so embeddings of images not already at the model's size differ
//! slightly from those of `transformers`' image processors.

mod config;
mod weights;

pub use config::HfConfig;

use crate::config::{RunConfig, TokenizerConfig};
use crate::data::Tokenizer;
use crate::loss::{ClipLossConfig, LossConfig, TemperatureConfig, siglip::SiglipConfig};
use crate::model::{ClipModel, ImageStats, ModelConfig};
use crate::params::Params;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The architecture family of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// OpenAI CLIP (`CLIPModel`).
    Clip,
    /// SigLIP (`SiglipModel`).
    Siglip,
}

/// How images must be prepared for the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// Side of the square input in pixels.
    pub image_size: usize,
    /// Per-channel statistics the model was trained with.
    pub stats: ImageStats,
    /// Whether they came from `preprocessor_config.json` (else the family's defaults).
    pub from_file: bool,
}

/// A loaded checkpoint: everything needed to build, run, inspect and fine-tune it.
#[derive(Clone, Debug)]
pub struct Pretrained {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// What `config.json` says.
    pub config: HfConfig,
    /// The model configuration (with the checkpoint's image statistics in
    /// `vision.input_stats`).
    pub model: ModelConfig,
    /// The tokenizer, laid out as the model expects.
    pub tokenizer: Tokenizer,
    /// Image preparation.
    pub preprocess: Preprocess,
    /// The objective the model was trained with, starting at its learned scale (and bias).
    pub loss: LossConfig,
    /// Every parameter under its workbench name, f32.
    pub tensors: BTreeMap<String, Tensor>,
}

/// Reads the checkpoint in `dir` onto `device`. Errors name the file and the field or tensor.
pub fn load(dir: &Path, device: &Device) -> Result<Pretrained> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a directory; expected a pretrained model directory with config.json, model.safetensors and tokenizer.json",
            ),
        ));
    }
    let config = config::read(&dir.join("config.json"))?;
    let (stats, from_file) = config::read_stats(dir, config.family)?;
    let tokenizer_cfg = tokenizer_config(dir, &config);
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = tokenizer_cfg.load(&tok_path)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::Tokenizer {
            path: Some(tok_path),
            msg: format!(
                "has {} ids but the model embeds {} (config.json `text_config.vocab_size`)",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        });
    }
    // transformers pools CLIP text at the first `eos_token_id` (or, for the legacy value 2, at
    // the argmax of the ids); the workbench pools at the tokenizer's EOS. They must agree.
    if let Some(id) = config.eos_token_id
        && config.family == Family::Clip
        && id != 2
        && id != i64::from(tokenizer.eos_id())
    {
        return Err(Error::input(
            dir.join("config.json"),
            None,
            format!(
                "field `text_config.eos_token_id` is {id}, but the end-of-text token of tokenizer.json is {}; the text would be pooled at another position than transformers pools it",
                tokenizer.eos_id()
            ),
        ));
    }
    let tensors = weights::read(&dir.join("model.safetensors"), &config, device)?;
    let mut model = config.model.clone();
    model.vision.input_stats = (stats != CLIP_STATS).then_some(stats);
    let scale_of =
        |name: &str| -> Result<f64> { Ok(f64::from(tensors[name].to_scalar::<f32>()?.exp())) };
    let temperature = |scale: f64| TemperatureConfig {
        init: 1.0 / scale,
        learnable: true,
        max_scale: scale.max(100.0),
    };
    let loss = match config.family {
        Family::Clip => LossConfig::Clip(ClipLossConfig {
            temperature: temperature(scale_of("loss.clip.logit_scale")?),
        }),
        Family::Siglip => LossConfig::Siglip(SiglipConfig {
            temperature: temperature(scale_of("loss.siglip.logit_scale")?),
            init_bias: f64::from(tensors["loss.siglip.logit_bias"].to_scalar::<f32>()?),
            ..SiglipConfig::default()
        }),
    };
    Ok(Pretrained {
        dir: dir.to_path_buf(),
        preprocess: Preprocess {
            image_size: config.image_size,
            stats,
            from_file,
        },
        config,
        model,
        tokenizer,
        loss,
        tensors,
    })
}

const CLIP_STATS: ImageStats = ImageStats {
    mean: crate::data::image::CLIP_MEAN,
    std: crate::data::image::CLIP_STD,
};

fn tokenizer_config(dir: &Path, config: &HfConfig) -> TokenizerConfig {
    let siglip = config.family == Family::Siglip;
    TokenizerConfig {
        context_length: config.context_length,
        file: Some(dir.join("tokenizer.json")),
        bos: !siglip,
        pad_to_context: siglip,
    }
}

impl Pretrained {
    /// A parameter store holding the checkpoint's tensors (model and objective), on `device`.
    pub fn params(&self, seed: u64, device: &Device) -> Result<Params> {
        let params = Params::new(seed, device);
        params.insert_all(&self.tensors)?;
        Ok(params)
    }

    /// The model with the checkpoint's weights, and the store that holds them.
    pub fn build(&self, device: &Device) -> Result<(ClipModel, Params)> {
        let params = self.params(0, device)?;
        let model = ClipModel::new(
            &self.model,
            self.preprocess.image_size,
            self.config.vocab_size,
            self.config.context_length,
            &params.scope("model"),
        )?;
        check_complete(&params, &self.tensors, &self.dir)?;
        Ok((model, params))
    }

    /// A run configuration for fine-tuning: the `tiny` preset's training settings with this
    /// model, its tokenizer layout and its objective. The synthetic set is sized to the model
    /// when it can be (16 to 128 pixels).
    pub fn run_config(&self) -> RunConfig {
        let mut cfg = RunConfig {
            model: self.model.clone(),
            tokenizer: tokenizer_config(&self.dir, &self.config),
            loss: self.loss.clone(),
            ..RunConfig::default()
        };
        let size = self.preprocess.image_size;
        if (16..=128).contains(&size) {
            cfg.data.image_size = size;
        }
        cfg
    }
}

/// Every model parameter must come from the checkpoint: none may have been made up.
pub(crate) fn check_complete(
    params: &Params,
    tensors: &BTreeMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    if let Some((name, _)) = params
        .with_prefix("model.")
        .into_iter()
        .find(|(n, _)| !tensors.contains_key(n))
    {
        return Err(Error::input(
            dir.join("model.safetensors"),
            None,
            format!("nothing in the checkpoint maps to the model's parameter `{name}`"),
        ));
    }
    Ok(())
}

//! Run configuration: presets in code, overrides from TOML, validation with named fields.
//!
//! A config file starts from a preset (`preset = "tiny"` by default) and overrides any field:
//!
//! ```toml
//! preset = "tiny"
//! [train]
//! steps = 500
//! [model.vision]
//! pool = "mean"
//! ```
//!
//! Unknown fields, wrong types and impossible values are errors that name the file, the line and
//! the dotted field, and say what was expected.

use crate::data::ShapesConfig;
use crate::data::loader::AugmentConfig;
use crate::loss::LossConfig;
use crate::model::{ModelConfig, Precision};
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Names of the built-in presets.
pub const PRESETS: [&str; 2] = ["tiny", "small"];

/// Tokenizer settings (the `[tokenizer]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Positions per caption, BOS and EOS included.
    pub context_length: usize,
    /// An existing `tokenizer.json` to use instead of fitting a word-level one.
    pub file: Option<PathBuf>,
    /// Texts start with BOS (false for SigLIP's tokenizer, which has none).
    pub bos: bool,
    /// Batches are padded to the full context length (SigLIP's bidirectional text tower pools at
    /// the last position, so it sees the padding); else to the longest text.
    pub pad_to_context: bool,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            context_length: 32,
            file: None,
            bos: true,
            pad_to_context: false,
        }
    }
}

impl TokenizerConfig {
    /// Loads `path` (a Hugging Face `tokenizer.json`) with this context length and layout.
    pub fn load(&self, path: &Path) -> Result<crate::data::Tokenizer> {
        crate::data::Tokenizer::from_file_with(
            path,
            self.context_length,
            self.bos,
            self.pad_to_context,
        )
    }
}

/// Optimisation and bookkeeping (the `[train]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed for initialisation, shuffling, caption choice and augmentation.
    pub seed: u64,
    /// Optimizer steps.
    pub steps: usize,
    /// Pairs per batch.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (tensors with ≥ 2 dims only).
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Evaluate every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// Pairs per forward pass during evaluation.
    pub eval_batch_size: usize,
    /// Measure the fixed probe batch every this many steps and at every objective swap (0 = only
    /// at swaps). Probe metrics do not depend on the objective, so curves compare across swaps.
    pub probe_every: usize,
    /// Validation pairs in the probe batch.
    pub probe_size: usize,
    /// `"cpu"`, `"cuda"` or `"cuda:N"`.
    pub device: String,
    /// `"f32"`, or `"bf16"`: the model's matrix products on bf16 operands with f32 master
    /// weights, optimizer state and loss reductions ([`Precision`]).
    pub precision: Precision,
    /// Image augmentation.
    pub augment: AugmentConfig,
    /// Batches a background thread builds ahead of the step, so that decoding and augmentation
    /// overlap the model's compute (0: load each batch in the step; at most
    /// [`MAX_PREFETCH`](crate::data::prefetch::MAX_PREFETCH)). Changes no number: the batches,
    /// the checkpointed loader position and a resume are the same with any value.
    pub prefetch: usize,
    /// Data parallel only: each rank computes the loss of its own rows of the gathered batch
    /// against all of the other side's (OpenCLIP's `local_loss`) — `W` times less loss compute,
    /// the same gradients and reported loss. For objectives that
    /// [support it](crate::loss::Objective::supports_local_loss): every built-in objective but
    /// `align_uniform` and `cloob` with `hopfield = true`, whose losses couple every row with the
    /// whole batch, and sums of them. No effect on one device.
    pub local_loss: bool,
    /// Splits each step's batch (each rank's share of it, in a data-parallel run) into this
    /// many micro-batches that pass through the model one at a time, so that activations need
    /// the memory of one micro-batch, while the loss still contrasts the whole batch: the
    /// embeddings of every micro-batch are computed first without keeping activations, the
    /// loss and its gradient with respect to them over the whole batch, then each micro-batch
    /// again with its activations to carry that gradient into the model (GradCache; OpenCLIP's
    /// `--accum-freq`). The gradients are those of the whole batch, for one more forward pass
    /// per micro-batch. 1 (the default) is a plain step; the batch must divide evenly.
    pub micro_batches: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 2_000,
            batch_size: 128,
            lr: 2e-3,
            min_lr_ratio: 0.05,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            grad_clip: 1.0,
            eval_every: 500,
            checkpoint_every: 0,
            eval_batch_size: 500,
            probe_every: 50,
            probe_size: 256,
            device: "cpu".into(),
            precision: Precision::F32,
            augment: AugmentConfig::default(),
            prefetch: 2,
            local_loss: false,
            micro_batches: 1,
        }
    }
}

/// Everything a run needs (one TOML file; saved as `config.toml` in the run directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The preset the file's values override.
    pub preset: String,
    /// The synthetic dataset.
    pub data: ShapesConfig,
    /// Tokenizer.
    pub tokenizer: TokenizerConfig,
    /// Model.
    pub model: ModelConfig,
    /// Objective.
    pub loss: LossConfig,
    /// Optimisation.
    pub train: TrainConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            data: ShapesConfig::default(),
            tokenizer: TokenizerConfig::default(),
            model: ModelConfig::tiny(),
            loss: LossConfig::default(),
            train: TrainConfig::default(),
        }
    }
}

impl RunConfig {
    /// A built-in preset: `tiny` (the CPU demo) or `small`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::default()),
            "small" => Ok(Self {
                preset: "small".into(),
                model: ModelConfig::small(),
                train: TrainConfig {
                    steps: 4_000,
                    lr: 1e-3,
                    ..TrainConfig::default()
                },
                ..Self::default()
            }),
            other => Err(Error::config(
                "preset",
                format!("unknown preset {other:?}; expected one of {PRESETS:?}"),
            )),
        }
    }

    /// Parses TOML text (`path` is only used in messages).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let file_err = |msg: String| Error::ConfigFile {
            path: path.to_path_buf(),
            msg,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| file_err(e.to_string()))?;
        let preset = match table.get("preset") {
            None => "tiny".to_string(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(file_err(format!(
                    "{}field `preset`: expected a string such as \"tiny\", found {}",
                    line_of(text, "preset"),
                    other.type_str()
                )));
            }
        };
        let base = Self::preset(&preset)
            .map_err(|e| file_err(format!("{}{e}", line_of(text, "preset"))))?;
        let mut merged = toml::Value::try_from(&base)
            .map_err(|e| file_err(format!("cannot represent preset {preset}: {e}")))?;
        merge(&mut merged, toml::Value::Table(table));
        let loss_table = merged.get("loss").cloned();
        let cfg: Self = serde_path_to_error::deserialize(merged).map_err(|e| {
            let mut field = e.path().to_string();
            let mut msg = e.into_inner().to_string();
            // Objectives are a tagged enum, whose errors lose the path; look again, per kind.
            if field.starts_with("loss")
                && let Some((path, m)) = loss_table.as_ref().and_then(crate::loss::diagnose_toml)
            {
                field = format!("loss.{path}");
                msg = m;
            }
            let key = field.rsplit('.').next().unwrap_or(&field).to_string();
            file_err(format!("{}field `{field}`: {msg}", line_of(text, &key)))
        })?;
        cfg.validate().map_err(|e| match e {
            Error::Config { field, msg } => {
                let key = field.rsplit('.').next().unwrap_or(&field).to_string();
                file_err(format!("{}field `{field}`: {msg}", line_of(text, &key)))
            }
            other => other,
        })?;
        Ok(cfg)
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, path)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Data(format!("cannot write config: {e}")))
    }

    /// Writes `config.toml` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(path, self.to_toml()?.as_bytes())
    }

    /// Checks every section; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        self.validate_for(self.data.image_size)
    }

    /// [`RunConfig::validate`] for a model that will see `image_size`-pixel images (those of
    /// the dataset it is given, which need not be the synthetic set of `data`).
    pub fn validate_for(&self, image_size: usize) -> Result<()> {
        if !PRESETS.contains(&self.preset.as_str()) {
            return Err(Error::config(
                "preset",
                format!(
                    "unknown preset {:?}; expected one of {PRESETS:?}",
                    self.preset
                ),
            ));
        }
        self.data.validate()?;
        self.model.validate(image_size)?;
        if self.tokenizer.context_length < 3 {
            return Err(Error::config(
                "tokenizer.context_length",
                "must be at least 3",
            ));
        }
        let t = &self.train;
        let checks: [(&str, bool, &str); 10] = [
            ("train.steps", t.steps >= 1, "must be at least 1"),
            (
                "train.batch_size",
                t.batch_size >= 2,
                "must be at least 2 (a contrastive batch needs negatives)",
            ),
            (
                "train.lr",
                t.lr.is_finite() && t.lr > 0.0,
                "must be a positive number",
            ),
            (
                "train.min_lr_ratio",
                (0.0..=1.0).contains(&t.min_lr_ratio),
                "must be in 0..=1",
            ),
            (
                "train.weight_decay",
                t.weight_decay >= 0.0 && t.weight_decay.is_finite(),
                "must be >= 0",
            ),
            (
                "train.beta1",
                (0.0..1.0).contains(&t.beta1),
                "must be in [0, 1)",
            ),
            (
                "train.beta2",
                (0.0..1.0).contains(&t.beta2),
                "must be in [0, 1)",
            ),
            ("train.eps", t.eps > 0.0, "must be > 0"),
            (
                "train.eval_batch_size",
                t.eval_batch_size >= 1,
                "must be at least 1",
            ),
            ("train.probe_size", t.probe_size >= 2, "must be at least 2"),
        ];
        for (field, ok, msg) in checks {
            if !ok {
                return Err(Error::config(field, msg));
            }
        }
        if t.micro_batches == 0 || !t.batch_size.is_multiple_of(t.micro_batches) {
            return Err(Error::config(
                "train.micro_batches",
                format!(
                    "must be at least 1 and divide train.batch_size ({}), got {}",
                    t.batch_size, t.micro_batches
                ),
            ));
        }
        if t.grad_clip < 0.0 || !t.grad_clip.is_finite() {
            return Err(Error::config(
                "train.grad_clip",
                "must be >= 0 (0 turns clipping off)",
            ));
        }
        if t.prefetch > crate::data::prefetch::MAX_PREFETCH {
            return Err(Error::config(
                "train.prefetch",
                format!(
                    "{} batches ahead is too many; expected 0 (load in the step) to {}",
                    t.prefetch,
                    crate::data::prefetch::MAX_PREFETCH
                ),
            ));
        }
        parse_device(&t.device)?;
        // Building the objective in a scratch store checks every loss setting.
        let scratch = crate::params::Params::new(0, &candle_core::Device::Cpu);
        self.loss.build(&scratch.scope("loss"))?;
        Ok(())
    }
}

/// `"  line N: "` for the first line that assigns `key` (or opens a table named `key`).
fn line_of(text: &str, key: &str) -> String {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.starts_with(&format!("[{key}]"))
                || l.contains(&format!(".{key}]"))
        })
        .map(|i| format!("line {}: ", i + 1))
        .unwrap_or_default()
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    // A different loss kind replaces the whole table instead of mixing fields.
                    Some(slot) if k == "loss" && kind_differs(slot, &v) => *slot = v,
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn kind_differs(a: &toml::Value, b: &toml::Value) -> bool {
    match (a.get("kind"), b.get("kind")) {
        (Some(x), Some(y)) => x != y,
        _ => false,
    }
}

/// Parses `"cpu"`, `"cuda"` or `"cuda:N"` into a candle device.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::config("train.device", format!("{s:?}: expected cuda:<index>"))
                })?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::config(
                    "train.device",
                    format!(
                        "{s:?}: this binary was built without CUDA; rebuild with `--features cuda`"
                    ),
                ));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| Error::config("train.device", format!("{s:?}: {e}")))
        }
        other => Err(Error::config(
            "train.device",
            format!("{other:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_toml() {
        for p in PRESETS {
            let cfg = RunConfig::preset(p).unwrap();
            let back = RunConfig::from_toml(&cfg.to_toml().unwrap(), Path::new("x.toml")).unwrap();
            assert_eq!(cfg, back);
        }
    }

    #[test]
    fn file_overrides_the_preset() {
        let text = "preset = \"small\"\n[train]\nsteps = 7\n[model.vision]\npool = \"mean\"\n";
        let cfg = RunConfig::from_toml(text, Path::new("x.toml")).unwrap();
        assert_eq!(cfg.train.steps, 7);
        assert_eq!(cfg.model.vision.width, 128);
        assert_eq!(cfg.model.vision.pool, crate::model::Pool::Mean);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = RunConfig::from_toml("[model.vision]\nwidht = 3\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.toml") && e.contains("line 2") && e.contains("widht"),
            "{e}"
        );
        let e = RunConfig::from_toml("[model.vision]\npatch_size = 5\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.vision.patch_size")
                && e.contains("line 2")
                && e.contains("does not divide"),
            "{e}"
        );
        let e = RunConfig::from_toml("preset = \"huge\"\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown preset") && e.contains("line 1"), "{e}");
        let e = RunConfig::from_toml("[train\nsteps = 1", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.toml") && e.contains("line 1"), "{e}");
        let e = RunConfig::from_toml("[train]\nsteps = \"many\"\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.steps") && e.contains("line 2"), "{e}");
    }
}

//! Checkpoints: what they hold, writing them, and resuming from them bit-identically.

use super::{ObjectiveFactory, Trainer};
use crate::checkpoint::{self, FORMAT_VERSION};
use crate::config::{RunConfig, parse_device};
use crate::data::{LoaderState, open_dataset};
use crate::events::Event;
use crate::loss::Objective;
use crate::params::Scope;
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// What `state.json` of a checkpoint holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Layout version.
    pub format: u32,
    /// Steps completed.
    pub step: usize,
    /// Loader position: the next batch the trainer takes, whatever was built ahead of it.
    pub loader: LoaderState,
    /// AdamW step count per parameter.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// Name of the active objective.
    pub objective: String,
    /// Training wall time so far, seconds.
    pub train_seconds: f64,
    /// The run configuration (its `loss` is the active objective, with live edits applied).
    pub config: RunConfig,
    /// Frozen parameter-name prefixes.
    #[serde(default)]
    pub frozen: BTreeSet<String>,
    /// Clamped parameter-name prefixes and their `[min, max]`.
    #[serde(default)]
    pub clamps: BTreeMap<String, [f64; 2]>,
}

impl CheckpointState {
    /// Parses and checks a `state.json` (`path` names it in messages): JSON that does not match
    /// the layout is an error naming the dotted field (`config.train.lr`, `step`), an unsupported
    /// format version or an invalid configuration likewise. Never panics, whatever the bytes.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let state: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let at = if field == "." {
                String::new()
            } else {
                format!("field `{field}`: ")
            };
            Error::checkpoint(
                path,
                format!("not a valid state file: {at}{}", e.into_inner()),
            )
        })?;
        de.end().map_err(|e| {
            Error::checkpoint(path, format!("not a valid state file: trailing bytes: {e}"))
        })?;
        if state.format != FORMAT_VERSION {
            return Err(Error::checkpoint(
                path,
                format!(
                    "format {} is not supported (this build reads {FORMAT_VERSION})",
                    state.format
                ),
            ));
        }
        // The device is checked when the run is rebuilt (a resume may move it to another one).
        let mut cfg = state.config.clone();
        cfg.train.device = "cpu".into();
        cfg.validate().map_err(|e| match e {
            Error::Config { field, msg } => {
                Error::checkpoint(path, format!("field `config.{field}`: {msg}"))
            }
            other => Error::checkpoint(path, other.to_string()),
        })?;
        Ok(state)
    }
}

impl Trainer {
    /// Saves the checkpoint into the run directory (if any) and reports it.
    pub(crate) fn checkpoint_event(
        &mut self,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<()> {
        if let Some(dir) = &self.run_dir {
            let path = dir.join("checkpoint");
            self.save_checkpoint(&path)?;
            let _ = on_event(&Event::Checkpoint {
                step: self.step,
                path,
            });
        }
        Ok(())
    }

    /// Writes a checkpoint directory (atomically; see [`crate::checkpoint`]).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let state = CheckpointState {
            format: FORMAT_VERSION,
            step: self.step,
            loader: self.loader.state(),
            optimizer_steps: self.opt.steps(),
            objective: self.objective.name().to_string(),
            train_seconds: self.train_seconds,
            config: self.cfg.clone(),
            frozen: self.frozen.clone(),
            clamps: self.clamps.clone(),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::Data(format!("cannot serialise checkpoint state: {e}")))?;
        checkpoint::write_dir(
            dir,
            &[
                (
                    "model.safetensors",
                    checkpoint::tensors_to_bytes(&self.params.tensors())?,
                ),
                (
                    "optimizer.safetensors",
                    checkpoint::tensors_to_bytes(&self.opt.state_tensors()?)?,
                ),
                ("tokenizer.json", self.tokenizer.to_json()?.into_bytes()),
                ("state.json", json),
            ],
        )
    }

    /// Reads `state.json` of a checkpoint (a run directory or its `checkpoint/`).
    pub fn read_state(dir: &Path) -> Result<(PathBuf, CheckpointState)> {
        let dir = resolve_checkpoint(dir)?;
        let path = dir.join("state.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Ok((dir, CheckpointState::from_json(&bytes, &path)?))
    }

    /// Rebuilds a trainer from a checkpoint on `device` (default: the configured device); training
    /// continues bit-identically on CPU.
    pub fn resume(dir: &Path, device: Option<Device>) -> Result<Self> {
        Self::resume_with(dir, device, |_| {})
    }

    /// Like [`Trainer::resume`], after `edit` changes the stored configuration — e.g. more
    /// `train.steps` (which stretches the learning-rate schedule) or another evaluation cadence.
    /// Changes to the model or data make loading fail with the tensor that no longer fits.
    pub fn resume_with(
        dir: &Path,
        device: Option<Device>,
        edit: impl FnOnce(&mut RunConfig),
    ) -> Result<Self> {
        Self::resume_inner(dir, device, edit, None)
    }

    /// Resumes a run whose active objective was your own: `make` rebuilds it (creating its
    /// parameters under the given `loss` scope, as when it was first set); the checkpoint's
    /// values are then loaded into them.
    pub fn resume_with_objective(
        dir: &Path,
        device: Option<Device>,
        make: impl FnOnce(&Scope) -> Result<Box<dyn Objective>>,
    ) -> Result<Self> {
        Self::resume_inner(dir, device, |_| {}, Some(Box::new(make)))
    }

    fn resume_inner(
        dir: &Path,
        device: Option<Device>,
        edit: impl FnOnce(&mut RunConfig),
        make_objective: Option<ObjectiveFactory<'_>>,
    ) -> Result<Self> {
        let (dir, state) = Self::read_state(dir)?;
        let mut cfg = state.config.clone();
        edit(&mut cfg);
        cfg.validate()
            .map_err(|e| Error::checkpoint(dir.join("state.json"), e.to_string()))?;
        let dataset = open_dataset(&cfg.data)?;
        let tokenizer = cfg.tokenizer.load(&dir.join("tokenizer.json"))?;
        let device = match device {
            Some(d) => d,
            None => parse_device(&cfg.train.device)?,
        };
        let mut trainer = Self::assemble(cfg, dataset, tokenizer, device, make_objective, None)?;
        trainer.load_state(&dir, &state)?;
        Ok(trainer)
    }

    fn load_state(&mut self, dir: &Path, state: &CheckpointState) -> Result<()> {
        if state.objective != self.objective.name() {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "was trained with objective `{}`, the config builds `{}`",
                    state.objective,
                    self.objective.name()
                ),
            ));
        }
        self.params.load(&dir.join("model.safetensors"), true)?;
        let opt_path = dir.join("optimizer.safetensors");
        let tensors = checkpoint::load_tensors(&opt_path, &self.device)?;
        self.opt.load(
            &tensors,
            &state.optimizer_steps,
            &self.params.all(),
            &opt_path,
        )?;
        self.loader.set_state(state.loader);
        self.step = state.step;
        self.train_seconds = state.train_seconds;
        self.frozen.clone_from(&state.frozen);
        self.clamps.clone_from(&state.clamps);
        Ok(())
    }
}

/// The checkpoint directory for `path`: a checkpoint itself or a run directory holding one.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if !path.join("state.json").is_file()
        && (path.join("checkpoint").is_dir() || path.join("checkpoint.prev").is_dir())
    {
        return checkpoint::resolve_dir(&path.join("checkpoint"));
    }
    checkpoint::resolve_dir(path)
}

//! The trainer: one readable loop over data → model → objective → optimizer → events.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use workbench::{config::RunConfig, train::Trainer};
//! let mut cfg = RunConfig::preset("tiny")?;
//! cfg.train.steps = 100;
//! let mut trainer = Trainer::new(cfg)?;
//! trainer.fit(|event| {
//!     println!("{}", serde_json::to_string(event).unwrap());
//!     ControlFlow::Continue(())
//! })?;
//! # Ok::<(), workbench::Error>(())
//! ```

use crate::checkpoint::{self, FORMAT_VERSION};
use crate::config::{RunConfig, parse_device};
use crate::data::{Batch, Loader, LoaderState, PairDataset, Shapes, Split, Tokenizer};
use crate::eval::{EvalContext, EvalSet, evaluate};
use crate::events::{EvalReport, Event, StepStats};
use crate::loss::{LossInputs, Objective};
use crate::model::{Capture, ClipModel};
use crate::optim::{AdamW, AdamWParams, clip_factor, grad_norm, lr_at};
use crate::params::Params;
use crate::{Error, Result};
use candle_core::{Device, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// How [`Trainer::fit`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum FitOutcome {
    /// All planned steps done.
    Finished,
    /// Stopped early (by the caller, or by a non-finite value), last good state kept.
    Paused(String),
}

/// What `state.json` of a checkpoint holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Layout version.
    pub format: u32,
    /// Steps completed.
    pub step: usize,
    /// Loader position.
    pub loader: LoaderState,
    /// AdamW step count per parameter.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// Name of the active objective.
    pub objective: String,
    /// Training wall time so far, seconds.
    pub train_seconds: f64,
    /// The run configuration.
    pub config: RunConfig,
}

/// Owns everything a run needs: data, tokenizer, parameters, model, objective, optimizer.
pub struct Trainer {
    cfg: RunConfig,
    device: Device,
    dataset: Arc<dyn PairDataset>,
    tokenizer: Arc<Tokenizer>,
    params: Params,
    model: ClipModel,
    objective: Box<dyn Objective>,
    opt: AdamW,
    loader: Loader,
    step: usize,
    train_seconds: f64,
    eval_sets: BTreeMap<&'static str, EvalSet>,
    run_dir: Option<PathBuf>,
}

impl Trainer {
    /// A trainer on the synthetic `shapes` set with a tokenizer fitted on its captions
    /// (or loaded from `tokenizer.file`), on the configured device.
    pub fn new(cfg: RunConfig) -> Result<Self> {
        cfg.validate()?;
        let dataset: Arc<dyn PairDataset> = Arc::new(Shapes::new(cfg.data.clone())?);
        let tokenizer = match &cfg.tokenizer.file {
            Some(path) => Tokenizer::from_file(path, cfg.tokenizer.context_length)?,
            None => Tokenizer::fit_word_level(&dataset.corpus(), cfg.tokenizer.context_length)?,
        };
        let device = parse_device(&cfg.train.device)?;
        Self::with_parts(cfg, dataset, tokenizer, device)
    }

    /// A trainer on any dataset and tokenizer.
    pub fn with_parts(
        cfg: RunConfig,
        dataset: Arc<dyn PairDataset>,
        tokenizer: Tokenizer,
        device: Device,
    ) -> Result<Self> {
        cfg.validate()?;
        kernels::cpu::tune_allocator();
        check_context(&tokenizer, dataset.as_ref())?;
        let tokenizer = Arc::new(tokenizer);
        let params = Params::new(cfg.train.seed, &device);
        let model = ClipModel::new(
            &cfg.model,
            dataset.image_size(),
            tokenizer.vocab_size(),
            tokenizer.context_length(),
            &params.scope("model"),
        )?;
        let objective = cfg.loss.build(&params.scope("loss"))?;
        let t = &cfg.train;
        let opt = AdamW::new(AdamWParams {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
        });
        let loader = Loader::new(
            dataset.clone(),
            tokenizer.clone(),
            t.batch_size,
            t.seed,
            t.augment.clone(),
            device.clone(),
        )?;
        Ok(Self {
            cfg,
            device,
            dataset,
            tokenizer,
            params,
            model,
            objective,
            opt,
            loader,
            step: 0,
            train_seconds: 0.0,
            eval_sets: BTreeMap::new(),
            run_dir: None,
        })
    }

    /// Writes checkpoints under `dir/checkpoint` during [`Trainer::fit`].
    pub fn set_run_dir(&mut self, dir: impl Into<PathBuf>) {
        self.run_dir = Some(dir.into());
    }

    /// Replaces the objective (a built-in one or your own [`Objective`]).
    pub fn set_objective(&mut self, objective: Box<dyn Objective>) {
        self.objective = objective;
    }

    /// The configuration.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }
    /// The model.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }
    /// The parameter store (model and objectives).
    pub fn params(&self) -> &Params {
        &self.params
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn PairDataset> {
        &self.dataset
    }
    /// The active objective.
    pub fn objective(&self) -> &dyn Objective {
        self.objective.as_ref()
    }
    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Steps completed.
    pub fn completed_steps(&self) -> usize {
        self.step
    }
    /// Training wall time so far (evaluations excluded), seconds.
    pub fn train_seconds(&self) -> f64 {
        self.train_seconds
    }

    /// The next training batch (advances the loader).
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.loader.next_batch()
    }

    /// Parameters the optimizer updates: the model's and the active objective's, sorted.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut v = self.params.with_prefix("model.");
        v.extend(self.objective.parameters());
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// One step on the next batch of the loader. On a non-finite loss or gradient nothing is
    /// updated (the loader is rewound too) and [`Error::NonFinite`] names the step and term.
    pub fn step(&mut self) -> Result<StepStats> {
        let t0 = Instant::now();
        let before = self.loader.state();
        let batch = self.loader.next_batch()?;
        let result = self.update(&batch, t0);
        if result.is_err() {
            self.loader.set_state(before);
        }
        result
    }

    /// One step on a given batch (e.g. to overfit it).
    pub fn step_on(&mut self, batch: &Batch) -> Result<StepStats> {
        self.update(batch, Instant::now())
    }

    fn update(&mut self, batch: &Batch, t0: Instant) -> Result<StepStats> {
        let t = &self.cfg.train;
        let next = self.step + 1;
        let lr = lr_at(self.step, t.lr, t.warmup_steps, t.steps, t.min_lr_ratio);
        let capture = Capture {
            attention: false,
            tokens: self.objective.needs_tokens(),
        };
        let emb = self.model.forward(batch, capture)?;
        let inputs = LossInputs {
            image_tokens: emb.image.tokens.as_ref(),
            text_tokens: emb.text.tokens.as_ref(),
            text_mask: Some(&batch.text_mask),
            ..LossInputs::new(&emb.image.embedding, &emb.text.embedding)
        };
        let out = self.objective.forward(&inputs)?;
        let mut terms = BTreeMap::new();
        for (name, value) in &out.terms {
            let v = value.to_scalar::<f32>()?;
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    step: next,
                    term: name.clone(),
                });
            }
            terms.insert(name.clone(), v);
        }
        let loss = out.loss.to_scalar::<f32>()?;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                step: next,
                term: "loss".into(),
            });
        }
        let grads = out.loss.backward()?;
        let trainable = self.trainable();
        let (norm, bad) = grad_norm(&trainable, &grads)?;
        if let Some(which) = bad {
            return Err(Error::NonFinite {
                step: next,
                term: format!("grad:{which}"),
            });
        }
        self.opt.step(
            &trainable,
            &grads,
            lr,
            clip_factor(norm, self.cfg.train.grad_clip),
        )?;
        self.objective.after_step()?;
        self.step = next;
        let seconds = t0.elapsed().as_secs_f64();
        self.train_seconds += seconds;
        Ok(StepStats {
            step: self.step,
            loss,
            terms,
            scalars: self.objective.scalars()?.into_iter().collect(),
            lr,
            grad_norm: norm as f32,
            batch_size: batch.len(),
            seconds,
        })
    }

    /// Evaluates on `split` (retrieval, zero-shot, gap, loss).
    pub fn evaluate(&mut self, split: Split) -> Result<EvalReport> {
        if !self.eval_sets.contains_key(split.name()) {
            let set = EvalSet::build(self.dataset.as_ref(), split, None)?;
            self.eval_sets.insert(split.name(), set);
        }
        let set = &self.eval_sets[split.name()];
        let cx = EvalContext {
            objective: self.objective.as_ref(),
            tokenizer: &self.tokenizer,
            device: &self.device,
            chunk: self.cfg.train.eval_batch_size,
            loss_batch: self.cfg.train.batch_size,
            step: self.step,
        };
        evaluate(&self.model, set, &cx)
    }

    /// Trains until `train.steps`, evaluating every `train.eval_every` steps and at the end, and
    /// checkpointing (when a run directory is set). `on_event` sees every event and may stop the
    /// run by returning `Break`; a non-finite loss or gradient pauses it. Either way the trainer
    /// keeps its last good state, and `fit` can be called again to continue.
    pub fn fit(
        &mut self,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<FitOutcome> {
        let started = Event::RunStarted {
            config: Box::new(self.cfg.clone()),
            step: self.step,
            model_parameters: self.params.count("model."),
            objective: self.objective.name().to_string(),
            device: format!("{:?}", self.device),
        };
        if on_event(&started).is_break() {
            return self.pause(&mut on_event, "stopped by the caller".into());
        }
        let (steps, every, ck_every) = (
            self.cfg.train.steps,
            self.cfg.train.eval_every,
            self.cfg.train.checkpoint_every,
        );
        while self.step < steps {
            let stats = match self.step() {
                Ok(s) => s,
                Err(e @ Error::NonFinite { .. }) => {
                    return self.pause(&mut on_event, e.to_string());
                }
                Err(e) => return Err(e),
            };
            let step = stats.step;
            if on_event(&Event::Step(stats)).is_break() {
                return self.pause(&mut on_event, "stopped by the caller".into());
            }
            if every > 0 && step % every == 0 && step < steps {
                let report = self.evaluate(Split::Val)?;
                if on_event(&Event::Eval(report)).is_break() {
                    return self.pause(&mut on_event, "stopped by the caller".into());
                }
            }
            if ck_every > 0 && step % ck_every == 0 && step < steps {
                self.checkpoint_event(&mut on_event)?;
            }
        }
        let report = self.evaluate(Split::Val)?;
        let _ = on_event(&Event::Eval(report));
        self.checkpoint_event(&mut on_event)?;
        let pairs = (self.step * self.cfg.train.batch_size) as f64;
        let _ = on_event(&Event::RunFinished {
            step: self.step,
            train_seconds: self.train_seconds,
            pairs_per_second: pairs / self.train_seconds.max(1e-9),
        });
        Ok(FitOutcome::Finished)
    }

    fn pause(
        &mut self,
        on_event: &mut impl FnMut(&Event) -> ControlFlow<()>,
        reason: String,
    ) -> Result<FitOutcome> {
        self.checkpoint_event(on_event)?;
        let _ = on_event(&Event::Paused {
            step: self.step,
            reason: reason.clone(),
        });
        Ok(FitOutcome::Paused(reason))
    }

    fn checkpoint_event(
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
        let state: CheckpointState = serde_json::from_slice(&bytes)
            .map_err(|e| Error::checkpoint(&path, format!("not a valid state file: {e}")))?;
        if state.format != FORMAT_VERSION {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "format {} is not supported (this build reads {FORMAT_VERSION})",
                    state.format
                ),
            ));
        }
        Ok((dir, state))
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
        let (dir, state) = Self::read_state(dir)?;
        let mut cfg = state.config.clone();
        edit(&mut cfg);
        cfg.validate()
            .map_err(|e| Error::checkpoint(dir.join("state.json"), e.to_string()))?;
        let dataset: Arc<dyn PairDataset> = Arc::new(Shapes::new(cfg.data.clone())?);
        let tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json"), cfg.tokenizer.context_length)?;
        let device = match device {
            Some(d) => d,
            None => parse_device(&cfg.train.device)?,
        };
        let mut trainer = Self::with_parts(cfg, dataset, tokenizer, device)?;
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

/// Every caption and prompt of the dataset must fit the context; truncation would silently cut
/// words the model needs.
fn check_context(tokenizer: &Tokenizer, dataset: &dyn PairDataset) -> Result<()> {
    for text in dataset.corpus() {
        if tokenizer.encode(&text)?.truncated {
            return Err(Error::config(
                "tokenizer.context_length",
                format!(
                    "{} positions cannot hold the caption {text:?} with BOS and EOS; raise it",
                    tokenizer.context_length()
                ),
            ));
        }
    }
    Ok(())
}

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
use crate::control::{Command, RunHandle};
use crate::data::{
    Batch, Extras, Loader, LoaderState, PairDataset, Shapes, Split, Tokenizer, collate,
};
use crate::eval::{EvalContext, EvalSet, evaluate, probe_report};
use crate::events::{EvalReport, Event, ProbeReport, StepStats};
use crate::loss::{LossConfig, LossInputs, Needs, Objective};
use crate::model::{Capture, ClipModel};
use crate::optim::{AdamW, AdamWParams, clip_factor, grad_norm, lr_at};
use crate::params::{Params, Scope};
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

/// Builds an objective in the `loss` scope of a run's parameter store.
type ObjectiveFactory<'a> = Box<dyn FnOnce(&Scope) -> Result<Box<dyn Objective>> + 'a>;

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
    /// The run configuration (its `loss` is the active objective, with live edits applied).
    pub config: RunConfig,
    /// Frozen parameter-name prefixes.
    #[serde(default)]
    pub frozen: BTreeSet<String>,
    /// Clamped parameter-name prefixes and their `[min, max]`.
    #[serde(default)]
    pub clamps: BTreeMap<String, [f64; 2]>,
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
    frozen: BTreeSet<String>,
    clamps: BTreeMap<String, [f64; 2]>,
    probe: Option<Batch>,
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
        Self::assemble(cfg, dataset, tokenizer, device, None)
    }

    fn assemble(
        cfg: RunConfig,
        dataset: Arc<dyn PairDataset>,
        tokenizer: Tokenizer,
        device: Device,
        make_objective: Option<ObjectiveFactory<'_>>,
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
        let objective = match make_objective {
            Some(make) => make(&params.scope("loss"))?,
            None => cfg.loss.build(&params.scope("loss"))?,
        };
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
            frozen: BTreeSet::new(),
            clamps: BTreeMap::new(),
            probe: None,
        })
    }

    /// Writes checkpoints under `dir/checkpoint` during [`Trainer::fit`].
    pub fn set_run_dir(&mut self, dir: impl Into<PathBuf>) {
        self.run_dir = Some(dir.into());
    }

    /// Replaces the objective with your own [`Objective`] (built-in ones: [`Command::Swap`] or
    /// [`Trainer::swap_objective`]). Its parameters must live in [`Trainer::params`] to be
    /// checkpointed; a checkpoint of a run with a custom objective resumes through
    /// [`Trainer::resume_with_objective`].
    pub fn set_objective(&mut self, objective: Box<dyn Objective>) -> Result<Event> {
        self.activate(objective, None, &BTreeSet::new())
    }

    /// Switches to a built-in objective between two steps (what [`Command::Swap`] does).
    pub fn swap_objective(&mut self, loss: LossConfig) -> Result<Event> {
        let before: BTreeSet<String> = self.params.all().into_iter().map(|p| p.0).collect();
        let objective = loss.build(&self.params.scope("loss"))?;
        self.activate(objective, Some(loss), &before)
    }

    fn activate(
        &mut self,
        objective: Box<dyn Objective>,
        loss: Option<LossConfig>,
        before: &BTreeSet<String>,
    ) -> Result<Event> {
        let (img, txt, _) = self.probe_embeddings()?;
        objective.on_activate(&LossInputs {
            progress: self.progress(),
            step: self.step,
            ..LossInputs::new(&img, &txt)
        })?;
        let names: Vec<String> = match &loss {
            Some(l) => l.names().iter().map(|n| format!("loss.{n}.")).collect(),
            None => vec![format!("loss.{}.", objective.name())],
        };
        let mut params = BTreeMap::new();
        for prefix in names {
            for (name, var) in self.params.with_prefix(&prefix) {
                params.insert(name, var.as_tensor().mean_all()?.to_scalar::<f32>()?);
            }
        }
        let restored = params
            .keys()
            .filter(|k| before.contains(*k))
            .cloned()
            .collect();
        let to = objective.name().to_string();
        let from = std::mem::replace(&mut self.objective, objective);
        if let Some(l) = &loss {
            self.cfg.loss = l.clone();
        }
        Ok(Event::ObjectiveSwapped {
            step: self.step,
            from: from.name().to_string(),
            to,
            config: loss,
            params,
            restored,
        })
    }

    /// Applies a live command now (between steps); [`Trainer::fit_with`] calls this for every
    /// command it receives. `Stop` is a no-op here.
    pub fn apply(&mut self, command: &Command) -> Result<Event> {
        let step = self.step;
        let edited = |params: BTreeMap<String, f32>| Event::Edited {
            step,
            command: command.clone(),
            params,
        };
        match command {
            Command::Swap { loss } => self.swap_objective(loss.clone()),
            Command::SetWeight { part, weight } => {
                let LossConfig::Sum(mut sum) = self.cfg.loss.clone() else {
                    return Err(Error::config(
                        "command.set_weight",
                        format!(
                            "the active objective `{}` is not a sum",
                            self.objective.name()
                        ),
                    ));
                };
                let Some(p) = sum.parts.iter_mut().find(|p| p.loss.name() == part) else {
                    return Err(Error::config(
                        "command.set_weight.part",
                        format!("the active sum has no part `{part}`"),
                    ));
                };
                p.weight = *weight;
                let loss = LossConfig::Sum(sum);
                self.objective = loss.build(&self.params.scope("loss"))?;
                self.cfg.loss = loss;
                Ok(edited(BTreeMap::from([(
                    format!("{part}/weight"),
                    *weight as f32,
                )])))
            }
            Command::SetTemperature { objective, tau } => {
                if !(tau.is_finite() && *tau > 0.0) {
                    return Err(Error::config(
                        "command.set_temperature.tau",
                        format!("must be > 0, got {tau}"),
                    ));
                }
                let name = format!("loss.{objective}.logit_scale");
                self.set_param(&name, (1.0 / tau).ln())?;
                Ok(edited(self.values(&name)?))
            }
            Command::SetParam { name, value } => {
                if !name.starts_with("loss.") {
                    return Err(Error::config(
                        "command.set_param.name",
                        format!("only objective parameters (`loss.*`) can be set, not `{name}`"),
                    ));
                }
                self.set_param(name, *value)?;
                Ok(edited(self.values(name)?))
            }
            Command::Freeze { prefix, frozen } => {
                let values = self.values(prefix)?;
                if *frozen {
                    self.frozen.insert(prefix.clone());
                } else if !self.frozen.remove(prefix) {
                    return Err(Error::config(
                        "command.freeze.prefix",
                        format!("`{prefix}` is not frozen"),
                    ));
                }
                Ok(edited(values))
            }
            Command::Clamp { prefix, range } => {
                match range {
                    Some([lo, hi]) if lo <= hi => {
                        self.values(prefix)?;
                        self.clamps.insert(prefix.clone(), [*lo, *hi]);
                        self.apply_clamps()?;
                    }
                    Some(r) => {
                        return Err(Error::config(
                            "command.clamp.range",
                            format!("need min <= max, got {r:?}"),
                        ));
                    }
                    None => {
                        if self.clamps.remove(prefix).is_none() {
                            return Err(Error::config(
                                "command.clamp.prefix",
                                format!("`{prefix}` is not clamped"),
                            ));
                        }
                    }
                }
                Ok(edited(self.values(prefix)?))
            }
            Command::Stop => Ok(edited(BTreeMap::new())),
        }
    }

    fn set_param(&self, name: &str, value: f64) -> Result<()> {
        let var = self
            .params
            .get(name)
            .ok_or_else(|| Error::config("command", format!("there is no parameter `{name}`")))?;
        var.set(&var.as_tensor().ones_like()?.affine(0.0, value)?)?;
        Ok(())
    }

    /// Mean value of every parameter matching `prefix` (an error if none does).
    fn values(&self, prefix: &str) -> Result<BTreeMap<String, f32>> {
        let mut out = BTreeMap::new();
        for (name, var) in self.params.all() {
            if name_matches(&name, prefix) {
                out.insert(name, var.as_tensor().mean_all()?.to_scalar::<f32>()?);
            }
        }
        if out.is_empty() {
            return Err(Error::config(
                "command",
                format!("no parameter is called `{prefix}` or starts with `{prefix}.`"),
            ));
        }
        Ok(out)
    }

    fn apply_clamps(&self) -> Result<()> {
        for (prefix, [lo, hi]) in &self.clamps {
            for (name, var) in self.params.all() {
                if name_matches(&name, prefix) {
                    var.set(&var.as_tensor().clamp(*lo, *hi)?)?;
                }
            }
        }
        Ok(())
    }

    /// Frozen parameter-name prefixes.
    pub fn frozen(&self) -> &BTreeSet<String> {
        &self.frozen
    }

    /// Clamped parameter-name prefixes.
    pub fn clamps(&self) -> &BTreeMap<String, [f64; 2]> {
        &self.clamps
    }

    fn progress(&self) -> f64 {
        self.step as f64 / self.cfg.train.steps.max(1) as f64
    }

    /// The fixed probe batch: the first `train.probe_size` validation images with their first
    /// caption.
    pub fn probe_batch(&mut self) -> Result<&Batch> {
        if self.probe.is_none() {
            let n = self.cfg.train.probe_size.min(self.dataset.len(Split::Val));
            if n < 2 {
                return Err(Error::config(
                    "train.probe_size",
                    format!(
                        "the probe needs at least 2 validation images; the val split has {}",
                        self.dataset.len(Split::Val)
                    ),
                ));
            }
            let samples = (0..n)
                .map(|i| self.dataset.sample(Split::Val, i))
                .collect::<Result<Vec<_>>>()?;
            let mut rows = Vec::with_capacity(n);
            for (i, s) in samples.iter().enumerate() {
                let caption = s
                    .captions
                    .first()
                    .ok_or_else(|| Error::Data(format!("val image {i} has no caption")))?;
                rows.push((i, &s.image, caption.text.as_str()));
            }
            let mut batch = collate(&rows, &self.tokenizer, &self.device)?;
            batch.groups = samples
                .iter()
                .enumerate()
                .map(|(i, s)| s.group.unwrap_or(i as u64))
                .collect();
            self.probe = Some(batch);
        }
        self.probe
            .as_ref()
            .ok_or_else(|| Error::Data("probe batch missing".into()))
    }

    /// Detached embeddings of the probe batch and its captions.
    fn probe_embeddings(&mut self) -> Result<(Tensor, Tensor, Vec<String>)> {
        let batch = self.probe_batch()?.clone();
        let emb = self.model.forward(&batch, Capture::NONE)?;
        Ok((
            emb.image.embedding.detach(),
            emb.text.embedding.detach(),
            batch.captions,
        ))
    }

    /// Objective-independent metrics on the fixed probe batch.
    pub fn probe(&mut self) -> Result<ProbeReport> {
        let (img, txt, captions) = self.probe_embeddings()?;
        probe_report(&img, &txt, &captions, self.step, self.objective.name())
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

    /// Parameters the optimizer updates: the model's and the active objective's, sorted, less
    /// the frozen ones.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut v = self.params.with_prefix("model.");
        v.extend(self.objective.parameters());
        v.retain(|(n, _)| !self.frozen.iter().any(|p| name_matches(n, p)));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn extras(&self) -> Extras {
        let needs = self.objective.needs();
        Extras {
            hard_negatives: needs.hard_negatives,
            second_views: needs.second_views,
        }
    }

    /// One step on the next batch of the loader. On a non-finite loss or gradient nothing is
    /// updated (the loader is rewound too) and [`Error::NonFinite`] names the step and term.
    pub fn step(&mut self) -> Result<StepStats> {
        let t0 = Instant::now();
        let before = self.loader.state();
        let batch = self.loader.next_batch_with(self.extras())?;
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
        let needs = self.objective.needs();
        let capture = Capture {
            attention: false,
            tokens: needs.tokens,
        };
        let emb = self.model.forward(batch, capture)?;
        let (extra_text, second) = self.encode_extras(batch, needs)?;
        let inputs = LossInputs {
            image_tokens: emb.image.tokens.as_ref(),
            text_tokens: emb.text.tokens.as_ref(),
            text_mask: Some(&batch.text_mask),
            groups: Some(&batch.groups),
            text_ids: Some(&batch.text_ids),
            extra_text: extra_text.as_ref(),
            image2: second.as_ref().map(|s| &s.0),
            text2: second.as_ref().map(|s| &s.1),
            progress: self.progress(),
            step: self.step,
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
        self.apply_clamps()?;
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
            objective: self.objective.name().to_string(),
            seconds,
        })
    }

    /// Embeddings of the hard negatives and of the second views, when the objective needs them.
    #[allow(clippy::type_complexity, reason = "a private pair of optional tensors")]
    fn encode_extras(
        &self,
        batch: &Batch,
        needs: Needs,
    ) -> Result<(Option<Tensor>, Option<(Tensor, Tensor)>)> {
        let name = self.objective.name();
        let extra = if needs.hard_negatives > 0 {
            let n = batch.negatives.as_ref().ok_or_else(|| {
                Error::Data(format!(
                    "objective `{name}` needs hard-negative captions; the batch has none"
                ))
            })?;
            Some(
                self.model
                    .encode_text(&n.tokens, &n.eos, Capture::NONE)?
                    .embedding,
            )
        } else {
            None
        };
        let second = if needs.second_views {
            let v = batch.second.as_ref().ok_or_else(|| {
                Error::Data(format!(
                    "objective `{name}` needs second views; the batch has none"
                ))
            })?;
            Some((
                self.model.encode_image(&v.images, Capture::NONE)?.embedding,
                self.model
                    .encode_text(&v.texts.tokens, &v.texts.eos, Capture::NONE)?
                    .embedding,
            ))
        } else {
            None
        };
        Ok((extra, second))
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
    pub fn fit(&mut self, on_event: impl FnMut(&Event) -> ControlFlow<()>) -> Result<FitOutcome> {
        let (_keep, commands) = mpsc::channel();
        self.fit_with(&commands, on_event)
    }

    /// [`Trainer::fit`] taking live [`Command`]s from `commands` between steps: each is applied
    /// and logged (`objective_swapped`, `edited`, or `command_rejected` — a command that cannot
    /// apply never stops the run). A swap is followed by a probe event.
    pub fn fit_with(
        &mut self,
        commands: &Receiver<Command>,
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
        let (steps, every, ck_every, probe_every) = (
            self.cfg.train.steps,
            self.cfg.train.eval_every,
            self.cfg.train.checkpoint_every,
            self.cfg.train.probe_every,
        );
        if probe_every > 0 && self.step < steps {
            let report = self.probe()?;
            if on_event(&Event::Probe(report)).is_break() {
                return self.pause(&mut on_event, "stopped by the caller".into());
            }
        }
        while self.step < steps {
            let mut stop = false;
            for command in commands.try_iter() {
                if command == Command::Stop {
                    stop = true;
                    continue;
                }
                let event = self
                    .apply(&command)
                    .unwrap_or_else(|e| Event::CommandRejected {
                        step: self.step,
                        command: command.clone(),
                        reason: e.to_string(),
                    });
                let swapped = matches!(event, Event::ObjectiveSwapped { .. });
                if on_event(&event).is_break() {
                    return self.pause(&mut on_event, "stopped by the caller".into());
                }
                if swapped && on_event(&Event::Probe(self.probe()?)).is_break() {
                    return self.pause(&mut on_event, "stopped by the caller".into());
                }
            }
            if stop {
                return self.pause(&mut on_event, "stopped by a command".into());
            }
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
            if probe_every > 0 && step % probe_every == 0 {
                let report = self.probe()?;
                if on_event(&Event::Probe(report)).is_break() {
                    return self.pause(&mut on_event, "stopped by the caller".into());
                }
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

    /// Runs [`Trainer::fit_with`] on a background thread; the handle sends commands, streams
    /// events and gives the trainer back when the run ends (see [`crate::control`]).
    pub fn spawn(mut self) -> RunHandle {
        let (command_tx, command_rx) = mpsc::channel();
        let (event_tx, event_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let outcome = self.fit_with(&command_rx, |event| {
                // A dropped receiver only means nobody listens any more; training goes on.
                let _ = event_tx.send(event.clone());
                ControlFlow::Continue(())
            });
            (self, outcome)
        });
        RunHandle::new(command_tx, event_rx, thread)
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
        let dataset: Arc<dyn PairDataset> = Arc::new(Shapes::new(cfg.data.clone())?);
        let tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json"), cfg.tokenizer.context_length)?;
        let device = match device {
            Some(d) => d,
            None => parse_device(&cfg.train.device)?,
        };
        let mut trainer = Self::assemble(cfg, dataset, tokenizer, device, make_objective)?;
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

/// Whether parameter `name` is `prefix` or lies under it (`model.vision` matches
/// `model.vision.blocks.0.attn.qkv.weight`, not `model.vision_proj`).
fn name_matches(name: &str, prefix: &str) -> bool {
    name == prefix
        || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'.'))
        || prefix.ends_with('.') && name.starts_with(prefix)
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

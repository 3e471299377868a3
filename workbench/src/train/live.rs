//! Steering a run between two steps: objective swaps, live edits, the fixed probe batch.

use super::Trainer;
use crate::control::Command;
use crate::data::{Batch, Split, collate};
use crate::eval::probe_report;
use crate::events::{Event, ProbeReport};
use crate::loss::{LossConfig, LossInputs, Objective};
use crate::model::Capture;
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

impl Trainer {
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
        let objective = loss.build_with(&self.params.scope("loss"), self.cfg.model.kernels)?;
        self.activate(objective, Some(loss), &before)
    }

    fn activate(
        &mut self,
        objective: Box<dyn Objective>,
        loss: Option<LossConfig>,
        before: &BTreeSet<String>,
    ) -> Result<Event> {
        self.check_local_loss(objective.as_ref())?;
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
                self.objective =
                    loss.build_with(&self.params.scope("loss"), self.cfg.model.kernels)?;
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
            Command::SetMicroBatches { micro_batches } => {
                self.set_micro_batches(*micro_batches)?;
                Ok(edited(BTreeMap::from([(
                    "train.micro_batches".to_string(),
                    *micro_batches as f32,
                )])))
            }
            Command::Stop => Ok(edited(BTreeMap::new())),
        }
    }

    /// Passes each step's batch through the model in `n` micro-batches from the next step on
    /// (`train.micro_batches`; the same gradients, in the memory of one micro-batch). `n` must
    /// divide the pairs this trainer encodes per step (its share, on one rank of several).
    pub fn set_micro_batches(&mut self, n: usize) -> Result<()> {
        let rows = self.cfg.train.batch_size / self.world_size();
        if n == 0 || !rows.is_multiple_of(n) {
            return Err(Error::config(
                "command.set_micro_batches.micro_batches",
                format!(
                    "must be at least 1 and divide the {rows} pairs each step passes through \
                     this model, got {n}"
                ),
            ));
        }
        self.cfg.train.micro_batches = n;
        Ok(())
    }

    /// A live command between two steps, as a fit applies it: applied, or rejected without
    /// changing anything (`command_rejected`), and reported to `report` when given — after a
    /// swap followed by a probe. `Break` when `report` asked to stop.
    pub(crate) fn apply_live<F: FnMut(&Event) -> ControlFlow<()> + ?Sized>(
        &mut self,
        command: &Command,
        report: Option<&mut F>,
    ) -> Result<ControlFlow<()>> {
        let event = self
            .apply(command)
            .unwrap_or_else(|e| Event::CommandRejected {
                step: self.step,
                command: command.clone(),
                reason: e.to_string(),
            });
        let Some(report) = report else {
            return Ok(ControlFlow::Continue(()));
        };
        let swapped = matches!(event, Event::ObjectiveSwapped { .. });
        if report(&event).is_break() || swapped && report(&Event::Probe(self.probe()?)).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
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

    pub(super) fn apply_clamps(&self) -> Result<()> {
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

    pub(super) fn progress(&self) -> f64 {
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
}

/// Whether parameter `name` is `prefix` or lies under it (`model.vision` matches
/// `model.vision.blocks.0.attn.qkv.weight`, not `model.vision_proj`).
pub(super) fn name_matches(name: &str, prefix: &str) -> bool {
    name == prefix
        || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'.'))
        || prefix.ends_with('.') && name.starts_with(prefix)
}

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

use crate::config::{RunConfig, parse_device};
use crate::data::{
    Batch, Extras, Loader, LoaderState, PairDataset, Prefetcher, Split, Tokenizer, open_dataset,
};
use crate::eval::{EvalContext, EvalSet, evaluate};
use crate::events::{EvalReport, StepStats};
use crate::loss::{LossInputs, Objective};
use crate::model::ClipModel;
use crate::optim::{AdamW, AdamWParams, clip_factor, grad_norm, lr_at};
use crate::parallel::Communicator;
use crate::params::{Params, Scope};
use crate::{Error, Result};
use candle_core::{Device, Var};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

mod distributed;
mod fit;
mod inspect;
mod live;
mod micro;
mod pretrained;
mod resume;

pub(crate) use fit::{Lockstep, run_loop};
use live::name_matches;
pub use resume::{CheckpointState, resolve_checkpoint};

/// What one [`Trainer::tick`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tick {
    /// A step was taken (and its scheduled probe / evaluation / checkpoint emitted).
    Stepped,
    /// The run paused without a step's update: the reason (a non-finite value, or the caller).
    Paused(String),
}

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
    loader: Prefetcher,
    step: usize,
    train_seconds: f64,
    eval_sets: BTreeMap<&'static str, EvalSet>,
    run_dir: Option<PathBuf>,
    frozen: BTreeSet<String>,
    clamps: BTreeMap<String, [f64; 2]>,
    probe: Option<Batch>,
    comm: Option<Arc<dyn Communicator>>,
}

impl Trainer {
    /// A trainer on the configured dataset — the synthetic `shapes` set, or files when
    /// `[data.files]` is set ([`crate::data::source`]) — with a tokenizer fitted on its captions
    /// (or loaded from `tokenizer.file`), on the configured device.
    pub fn new(cfg: RunConfig) -> Result<Self> {
        cfg.validate()?;
        let dataset = open_dataset(&cfg.data)?;
        let tokenizer = match &cfg.tokenizer.file {
            Some(path) => cfg.tokenizer.load(path)?,
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
        Self::assemble(cfg, dataset, tokenizer, device, None, None)
    }

    /// Builds the run. `preset` holds parameters set before the model and objective are built
    /// (a pretrained checkpoint's); the text embedding then keeps its own number of rows.
    fn assemble(
        cfg: RunConfig,
        dataset: Arc<dyn PairDataset>,
        tokenizer: Tokenizer,
        device: Device,
        make_objective: Option<ObjectiveFactory<'_>>,
        preset: Option<Params>,
    ) -> Result<Self> {
        cfg.validate_for(dataset.image_size())?;
        kernels::cpu::tune_allocator();
        check_context(&tokenizer, dataset.as_ref())?;
        let tokenizer = Arc::new(tokenizer);
        let params = preset.unwrap_or_else(|| Params::new(cfg.train.seed, &device));
        let vocab = params
            .get("model.text.token_embed")
            .map_or(tokenizer.vocab_size(), |v| v.dims()[0]);
        let model = ClipModel::new(
            &cfg.model,
            dataset.image_size(),
            vocab,
            tokenizer.context_length(),
            &params.scope("model").with_precision(cfg.train.precision),
        )?;
        let objective = match make_objective {
            Some(make) => make(&params.scope("loss"))?,
            None => cfg
                .loss
                .build_with(&params.scope("loss"), cfg.model.kernels)?,
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
        let loader = Prefetcher::new(loader, t.prefetch);
        let trainer = Self {
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
            comm: None,
        };
        trainer.check_local_loss(trainer.objective.as_ref())?;
        Ok(trainer)
    }

    /// Writes checkpoints under `dir/checkpoint` during [`Trainer::fit`].
    pub fn set_run_dir(&mut self, dir: impl Into<PathBuf>) {
        self.run_dir = Some(dir.into());
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

    /// The loader's position: the next batch a step takes, whatever was built ahead.
    pub fn loader_state(&self) -> LoaderState {
        self.loader.state()
    }

    /// The next training batch (advances the loader), without the extras of the objective.
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.loader.next_batch_with(Extras::default())
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

    /// One step on the next batch of the loader (built ahead when `train.prefetch` > 0; the
    /// wait is [`StepStats::data_seconds`]). On a non-finite loss or gradient nothing is updated
    /// (the loader is rewound: the next step takes the same batch) and [`Error::NonFinite`]
    /// names the step and term. A loader error comes from the step that would take the batch
    /// (in a data-parallel run it stops every rank at that step). A device that runs out of
    /// memory is [`Error::OutOfMemory`], with what to lower; nothing is updated then either.
    pub fn step(&mut self) -> Result<StepStats> {
        let t0 = Instant::now();
        let before = self.loader.state();
        let batch = self.loader.next_batch_with(self.extras());
        let batch = match self.agree_batch(batch) {
            Ok(b) => b,
            Err(e) => {
                self.loader.set_state(before);
                return Err(e);
            }
        };
        let data_seconds = t0.elapsed().as_secs_f64();
        let result = self.update(&batch, t0, data_seconds);
        if result.is_err() {
            self.loader.set_state(before);
        }
        result.map_err(|e| {
            let t = &self.cfg.train;
            let remedy = format!(
                "raise train.micro_batches (now {}) to keep the batch of {} in less memory, \
                 lower train.batch_size, set train.precision = \"bf16\", or choose a smaller \
                 model",
                t.micro_batches, t.batch_size
            );
            e.out_of_memory(&self.device, || format!("step {}", self.step + 1), &remedy)
        })
    }

    /// One step on a given batch (e.g. to overfit it).
    pub fn step_on(&mut self, batch: &Batch) -> Result<StepStats> {
        self.update(batch, Instant::now(), 0.0)
    }

    fn update(&mut self, batch: &Batch, t0: Instant, data_seconds: f64) -> Result<StepStats> {
        let t = &self.cfg.train;
        let next = self.step + 1;
        let lr = lr_at(self.step, t.lr, t.warmup_steps, t.steps, t.min_lr_ratio);
        let needs = self.objective.needs();
        let encoding = self.encode_batch(batch, needs)?;
        let emb = &encoding.encoded;
        let inputs = LossInputs {
            image_tokens: emb.image_tokens.as_ref(),
            text_tokens: emb.text_tokens.as_ref(),
            text_mask: Some(&batch.text_mask),
            groups: Some(&batch.groups),
            text_ids: Some(&batch.text_ids),
            extra_text: emb.extra_text.as_ref(),
            image2: emb.second.as_ref().map(|s| &s.0),
            text2: emb.second.as_ref().map(|s| &s.1),
            progress: self.progress(),
            step: self.step,
            ..LossInputs::new(&emb.image, &emb.text)
        };
        let gathered = self.gather_inputs(&inputs)?;
        let out = match &gathered {
            Some(g) => self.objective.forward(&self.global_inputs(g, &inputs))?,
            None => self.objective.forward(&inputs)?,
        };
        let mut values = Vec::with_capacity(out.terms.len() + 1);
        let mut bad = None;
        for (name, value) in &out.terms {
            let v = value.to_scalar::<f32>()?;
            if !v.is_finite() && bad.is_none() {
                bad = Some(name.clone());
            }
            values.push(v);
        }
        let loss = out.loss.to_scalar::<f32>()?;
        let bad = bad.or_else(|| (!loss.is_finite()).then(|| "loss".to_string()));
        if let Some(term) = self.agree_non_finite(bad)? {
            return Err(Error::NonFinite { step: next, term });
        }
        values.push(loss);
        let mut values = self.report_values(values)?;
        let loss = values.pop().unwrap_or(loss);
        let terms: BTreeMap<String, f32> = out
            .terms
            .iter()
            .map(|(name, _)| name.clone())
            .zip(values)
            .collect();
        let mut grads = out.loss.backward()?;
        drop((out, gathered));
        self.backward_micro_batches(batch, needs, encoding, &mut grads)?;
        let trainable = self.trainable();
        self.reduce_gradients(&trainable, &mut grads)?;
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
            scalars: self
                .report_scalars(self.objective.scalars()?)?
                .into_iter()
                .collect(),
            lr,
            grad_norm: norm as f32,
            batch_size: batch.len() * self.world_size(),
            objective: self.objective.name().to_string(),
            seconds,
            data_seconds,
            device_memory: crate::devices::memory(&self.device).ok().flatten(),
        })
    }

    /// Evaluates on `split` (retrieval, zero-shot, gap, loss).
    pub fn evaluate(&mut self, split: Split) -> Result<EvalReport> {
        self.eval_set(split)?;
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

    /// Materialises an evaluation split once; later calls find it in `eval_sets`.
    fn eval_set(&mut self, split: Split) -> Result<()> {
        if !self.eval_sets.contains_key(split.name()) {
            let set = EvalSet::build(self.dataset.as_ref(), split, None)?;
            self.eval_sets.insert(split.name(), set);
        }
        Ok(())
    }
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

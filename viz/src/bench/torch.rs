//! `workbench bench torch`: training throughput and forward-only embedding time of our model
//! beside the same model written independently in PyTorch (`viz/bench/torch_clip.py`, compiled
//! into the binary), measured in one run on one machine.
//!
//! - **Same model and step.** The script builds OpenCLIP-style towers from the dimensions of our
//!   run (image size, patch, widths, depths, heads, MLP ratio, vocabulary, context, projection,
//!   pooling) and trains them with the same objective (symmetric InfoNCE with a learnable,
//!   clamped log-scale), AdamW hyper-parameters and decay groups, gradient clipping and schedule.
//!   Both sides report their parameter counts, in all and weight-decayed, and the run stops if
//!   they differ.
//! - **Same data.** Batches are built by our loader before timing and written to raw files that
//!   the script reads, so both sides train on the same tensors; data generation is excluded from
//!   both measurements.
//! - **Same conditions.** Both use the same number of threads (rayon's global pool here,
//!   `torch.set_num_threads` there). After warm-up steps on each side, rounds alternate the two
//!   (ours, PyTorch; then PyTorch, ours; …) so that drift in machine load hits both.
//!
//! - **Same device and precision.** `--device cuda:N` puts our trainer on that candle device and
//!   the script's model on `torch.device("cuda:N")`; both synchronise the device before reading
//!   the clock. `--precision bf16` trains ours with `[train] precision = "bf16"` and runs the
//!   script's towers under `torch.autocast(device_type, dtype=torch.bfloat16)`, with f32 master
//!   weights, the same AdamW, and the L2 normalisation and loss in f32 on both sides.
//! - **Peak memory** is measured over the warm-up steps of each side ([`memory`]): on CUDA ours
//!   from the driver's used memory, PyTorch's from its allocator's statistics; on the CPU the
//!   peak resident set of each process.
//!
//! The embedding measurement times `chunks` forward passes of both towers over a pre-built chunk
//! of images and captions, with no autograd (our evaluation path; `torch.inference_mode()` on
//! the other side).
//!
//! Our half alone (the PyTorch half is [`Torch`], started with the script and a specification
//! written by [`Ours::spec`]; [`compare`] runs both):
//!
//! ```
//! use viz::bench::torch::Ours;
//! let mut ours = Ours::new("tiny", 4, 4, 1)?;
//! assert_eq!(ours.parameter_counts().total, ours.parameter_counts().decayed + 3_777);
//! let t = ours.train(1)?; // one full step on a pre-built batch of 4 pairs
//! assert!(t.seconds > 0.0 && t.loss.is_finite());
//! # anyhow::Ok(())
//! ```

pub mod memory;
mod process;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
pub use process::{Torch, TorchPeak, install_torch};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use workbench::config::RunConfig;
use workbench::data::{Batch, Loader};
use workbench::model::{Capture, Precision};
use workbench::train::Trainer;

/// The PyTorch reference, written next to the run's batch files when the benchmark starts.
pub const SCRIPT: &str = include_str!("../../bench/torch_clip.py");

/// Parameter counts of one implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    /// Scalars in all trained tensors.
    pub total: usize,
    /// Scalars in the weight-decayed tensors (two or more dimensions).
    pub decayed: usize,
}

/// Time and last loss of a number of training steps.
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Loss of the last step.
    pub loss: f32,
}

/// Our side: a trainer on a preset with pre-built batches.
pub struct Ours {
    trainer: Trainer,
    batches: Vec<Batch>,
    embed: Batch,
    next: usize,
}

impl Ours {
    /// A trainer on `preset` (built-in synthetic data, CPU, f32) at `batch` pairs per step,
    /// with `prebuilt` training batches and one embedding chunk of `embed_batch` pairs made now.
    pub fn new(preset: &str, batch: usize, embed_batch: usize, prebuilt: usize) -> Result<Self> {
        Self::on(preset, batch, embed_batch, prebuilt, "cpu", Precision::F32)
    }

    /// [`Ours::new`] on `device` (`cpu`, `cuda`, `cuda:N`) in `precision`.
    pub fn on(
        preset: &str,
        batch: usize,
        embed_batch: usize,
        prebuilt: usize,
        device: &str,
        precision: Precision,
    ) -> Result<Self> {
        if batch == 0 || embed_batch == 0 || prebuilt == 0 {
            bail!(
                "batch ({batch}), embedding batch ({embed_batch}) and pre-built batches ({prebuilt}) must be at least 1"
            );
        }
        let mut cfg = RunConfig::preset(preset)?;
        cfg.train.batch_size = batch;
        cfg.train.device = device.into();
        cfg.train.precision = precision;
        let mut trainer = Trainer::new(cfg)?;
        let batches = (0..prebuilt)
            .map(|_| trainer.next_batch())
            .collect::<workbench::Result<Vec<_>>>()?;
        let t = &trainer.config().train;
        let mut loader = Loader::new(
            trainer.dataset().clone(),
            Arc::new(trainer.tokenizer().clone()),
            embed_batch,
            t.seed + 1,
            t.augment.clone(),
            trainer.device().clone(),
        )?;
        let embed = loader.next_batch()?;
        Ok(Self {
            trainer,
            batches,
            embed,
            next: 0,
        })
    }

    /// Passes each step's batch through the model in `n` micro-batches from now on
    /// ([`Trainer::set_micro_batches`]).
    pub fn set_micro_batches(&mut self, n: usize) -> Result<()> {
        Ok(self.trainer.set_micro_batches(n)?)
    }

    /// The run's configuration.
    pub fn config(&self) -> &RunConfig {
        self.trainer.config()
    }

    /// Our parameter counts: the trainable tensors of the model and the objective.
    pub fn parameter_counts(&self) -> ParamCounts {
        let mut c = ParamCounts {
            total: 0,
            decayed: 0,
        };
        for (_, v) in self.trainer.trainable() {
            c.total += v.elem_count();
            if workbench::optim::decays(v.rank()) {
                c.decayed += v.elem_count();
            }
        }
        c
    }

    /// `steps` full training steps (forward, loss, backward, clipping, AdamW), cycling through
    /// the pre-built batches. The device is synchronised before the clock starts and stops.
    pub fn train(&mut self, steps: usize) -> Result<Timed> {
        let device = self.trainer.device().clone();
        let mut loss = f32::NAN;
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..steps {
            let b = &self.batches[self.next % self.batches.len()];
            self.next += 1;
            loss = self.trainer.step_on(b)?.loss;
        }
        device.synchronize()?;
        Ok(Timed {
            seconds: start.elapsed().as_secs_f64(),
            loss,
        })
    }

    /// [`Ours::train`] with the peak memory over the steps ([`memory`]): on the CPU this
    /// process's peak resident set, on CUDA the peak of the device's used memory minus
    /// `baseline` (a [`memory::device_used`] reading taken before this trainer was built).
    pub fn train_measured(
        &mut self,
        steps: usize,
        baseline: Option<u64>,
    ) -> Result<(Timed, Option<u64>)> {
        let device = self.trainer.device().clone();
        if matches!(device, Device::Cpu) {
            let reset = memory::reset_peak_rss();
            let t = self.train(steps)?;
            return Ok((t, reset.then(memory::peak_rss).flatten()));
        }
        let sampler = memory::DeviceSampler::start(&device);
        let t = self.train(steps);
        let peak = sampler.stop()?;
        Ok((t?, peak.map(|p| p.saturating_sub(baseline.unwrap_or(0)))))
    }

    /// `chunks` forward passes of both towers over the embedding chunk, without gradients
    /// (the evaluation path: embeddings detached from the graph); seconds.
    pub fn embed(&self, chunks: usize) -> Result<f64> {
        let model = self.trainer.model();
        let b = &self.embed;
        let device = self.trainer.device();
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..chunks {
            let image = model
                .encode_image(&b.images, Capture::NONE)?
                .embedding
                .detach();
            let text = model
                .encode_text(&b.tokens, &b.eos, Capture::NONE)?
                .embedding
                .detach();
            std::hint::black_box((image, text));
        }
        device.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Writes the pre-built batches to `dir` and returns the script's specification.
    pub fn spec(&self, dir: &Path, threads: usize) -> Result<Value> {
        let cfg = self.config();
        let batches = self
            .batches
            .iter()
            .enumerate()
            .map(|(k, b)| write_batch(b, dir, &format!("train{k}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(json!({
            "seed": cfg.train.seed,
            "threads": threads,
            "image_size": self.trainer.dataset().image_size(),
            "vocab_size": self.trainer.tokenizer().vocab_size(),
            "context_length": self.trainer.tokenizer().context_length(),
            "loss": cfg.loss.name(),
            "model": serde_json::to_value(&cfg.model)?,
            "train": serde_json::to_value(&cfg.train)?,
            "batches": batches,
            "embed": write_batch(&self.embed, dir, "embed")?,
        }))
    }
}

/// Writes images (f32), token ids and EOS positions (i64), little-endian, as `dir/name.*`.
fn write_batch(b: &Batch, dir: &Path, name: &str) -> Result<Value> {
    let write = |ext: &str, bytes: Vec<u8>| -> Result<String> {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.to_string_lossy().into_owned())
    };
    let f32s = |t: &Tensor| -> Result<Vec<u8>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect())
    };
    let ids = |t: &Tensor| -> Result<Vec<u8>> {
        Ok(t.flatten_all()?
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|&x| i64::from(x).to_le_bytes())
            .collect())
    };
    Ok(json!({
        "images": write("images.f32", f32s(&b.images)?)?,
        "images_shape": b.images.dims(),
        "tokens": write("tokens.i64", ids(&b.tokens)?)?,
        "tokens_shape": b.tokens.dims(),
        "eos": write("eos.i64", ids(&b.eos)?)?,
    }))
}

/// Makes rayon's global pool (our CPU ops and matrix products) use `threads` threads.
pub fn set_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    if built.is_err() && rayon::current_num_threads() != threads {
        bail!(
            "rayon's thread pool already runs {} threads, not {threads}; set RAYON_NUM_THREADS={threads}",
            rayon::current_num_threads()
        );
    }
    Ok(())
}

/// Settings of one comparison.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `tiny` or `small`.
    pub preset: String,
    /// Pairs per training step.
    pub batch: usize,
    /// Timed rounds; each times `steps` steps of both sides.
    pub rounds: usize,
    /// Steps per side and round.
    pub steps: usize,
    /// Untimed steps per side before the first round (at least one runs: peak memory is
    /// measured over them).
    pub warmup: usize,
    /// Threads of both sides.
    pub threads: usize,
    /// `cpu`, `cuda` or `cuda:N`: our candle device, and the PyTorch side's `torch.device`.
    pub device: String,
    /// f32, or bf16 matrix products (ours: `[train] precision`; PyTorch: `torch.autocast`).
    pub precision: Precision,
    /// Images and captions to embed per side and round (0: no embedding measurement).
    pub embed: usize,
    /// Pairs per embedding chunk.
    pub embed_batch: usize,
}

/// What one comparison measured.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The settings.
    pub settings: Settings,
    /// Parameter counts (equal on both sides).
    pub counts: ParamCounts,
    /// `torch.__version__`.
    pub torch_version: String,
    /// Our training throughput per round, pairs/s.
    pub ours: Vec<f64>,
    /// PyTorch's training throughput per round, pairs/s.
    pub torch: Vec<f64>,
    /// Last training loss of each side.
    pub losses: (f32, f32),
    /// Our embedding throughput per round, pairs (image + caption) per second.
    pub ours_embed: Vec<f64>,
    /// PyTorch's embedding throughput per round.
    pub torch_embed: Vec<f64>,
    /// Our peak memory over the warm-up steps, bytes ([`memory`] says what it measures).
    pub ours_peak: Option<u64>,
    /// PyTorch's peak memory over the warm-up steps.
    pub torch_peak: TorchPeak,
}

impl Comparison {
    /// Median of our throughput over PyTorch's.
    pub fn ratio(&self) -> f64 {
        super::median(&mut self.ours.clone()) / super::median(&mut self.torch.clone())
    }

    /// Median embedding throughput ratio, ours / PyTorch (NaN when not measured).
    pub fn embed_ratio(&self) -> f64 {
        super::median(&mut self.ours_embed.clone()) / super::median(&mut self.torch_embed.clone())
    }
}

/// Writes the script and its specification to `dir`, starts the PyTorch side and checks that
/// it built the same model with the same number of threads.
fn start_torch(
    s: &Settings,
    ours: &Ours,
    python: &Path,
    dir: &Path,
    say: &mut impl FnMut(&str) -> Result<()>,
) -> Result<Torch> {
    let script = dir.join("torch_clip.py");
    std::fs::write(&script, SCRIPT)
        .with_context(|| format!("cannot write {}", script.display()))?;
    let spec_path = dir.join("spec.json");
    let spec = ours.spec(dir, s.threads)?;
    std::fs::write(&spec_path, serde_json::to_string_pretty(&spec)?)
        .with_context(|| format!("cannot write {}", spec_path.display()))?;
    let torch = Torch::start(python, &script, &spec_path)?;
    let counts = ours.parameter_counts();
    say(&format!(
        "{} at batch {}, {} on {}: ours {} parameters ({} weight-decayed), PyTorch {} ({}) — torch {}, {} threads each",
        s.preset,
        s.batch,
        s.precision,
        s.device,
        counts.total,
        counts.decayed,
        torch.counts.total,
        torch.counts.decayed,
        torch.version,
        s.threads
    ))?;
    if torch.counts != counts {
        bail!(
            "the two models differ: ours has {} parameters ({} weight-decayed), PyTorch's {} ({})",
            counts.total,
            counts.decayed,
            torch.counts.total,
            torch.counts.decayed
        );
    }
    if torch.threads != s.threads {
        bail!("PyTorch runs {} threads, not {}", torch.threads, s.threads);
    }
    Ok(torch)
}

/// Runs one comparison; `python` runs the script, `dir` (which must exist) receives the script,
/// its specification and the batch files; progress lines go to `say`.
pub fn compare(
    s: &Settings,
    python: &Path,
    dir: &Path,
    mut say: impl FnMut(&str) -> Result<()>,
) -> Result<Comparison> {
    if s.rounds == 0 || s.steps == 0 {
        bail!("--rounds and --steps must be at least 1");
    }
    set_threads(s.threads)?;
    // Device memory in use before our trainer exists (CUDA only; the context included).
    let baseline = memory::device_used(&workbench::config::parse_device(&s.device)?)?;
    let mut ours = Ours::on(
        &s.preset,
        s.batch,
        s.embed_batch,
        s.steps.clamp(1, 4),
        &s.device,
        s.precision,
    )?;
    // Our warm-up, measuring peak memory, before the PyTorch process holds any of the device.
    let (_, ours_peak) = ours.train_measured(s.warmup.max(1), baseline)?;
    let mut torch = start_torch(s, &ours, python, dir, &mut say)?;
    let counts = ours.parameter_counts();
    let (_, torch_peak) = torch.train_measured(s.warmup.max(1))?;
    let pairs = (s.batch * s.steps) as f64;
    let (mut ours_rate, mut torch_rate, mut losses) = (Vec::new(), Vec::new(), (0.0, 0.0));
    for r in 0..s.rounds {
        // Alternate who goes first, so that neither always runs on a warmer (or busier) machine.
        for side in [r % 2, 1 - r % 2] {
            if side == 0 {
                let t = ours.train(s.steps)?;
                ours_rate.push(pairs / t.seconds);
                losses.0 = t.loss;
            } else {
                let t = torch.train(s.steps)?;
                torch_rate.push(pairs / t.seconds);
                losses.1 = t.loss;
            }
        }
        say(&format!(
            "  round {}: training ours {:.0} pairs/s, PyTorch {:.0} pairs/s",
            r + 1,
            ours_rate[r],
            torch_rate[r]
        ))?;
    }
    let (mut ours_embed, mut torch_embed) = (Vec::new(), Vec::new());
    if s.embed > 0 {
        let chunks = s.embed.div_ceil(s.embed_batch);
        let n = (chunks * s.embed_batch) as f64;
        ours.embed(1)?;
        torch.embed(1)?;
        for r in 0..s.rounds {
            for side in [r % 2, 1 - r % 2] {
                if side == 0 {
                    ours_embed.push(n / ours.embed(chunks)?);
                } else {
                    torch_embed.push(n / torch.embed(chunks)?);
                }
            }
            say(&format!(
                "  round {}: embedding ours {:.0} pairs/s, PyTorch {:.0} pairs/s",
                r + 1,
                ours_embed[r],
                torch_embed[r]
            ))?;
        }
    }
    Ok(Comparison {
        settings: s.clone(),
        counts,
        torch_version: torch.version.clone(),
        ours: ours_rate,
        torch: torch_rate,
        losses,
        ours_embed,
        torch_embed,
        ours_peak,
        torch_peak,
    })
}

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

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;
use workbench::config::RunConfig;
use workbench::data::{Batch, Loader};
use workbench::model::Capture;
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
    /// A trainer on `preset` (built-in synthetic data, CPU) at `batch` pairs per step, with
    /// `prebuilt` training batches and one embedding chunk of `embed_batch` pairs made now.
    pub fn new(preset: &str, batch: usize, embed_batch: usize, prebuilt: usize) -> Result<Self> {
        if batch == 0 || embed_batch == 0 || prebuilt == 0 {
            bail!(
                "batch ({batch}), embedding batch ({embed_batch}) and pre-built batches ({prebuilt}) must be at least 1"
            );
        }
        let mut cfg = RunConfig::preset(preset)?;
        cfg.train.batch_size = batch;
        cfg.train.device = "cpu".into();
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
    /// the pre-built batches.
    pub fn train(&mut self, steps: usize) -> Result<Timed> {
        let mut loss = f32::NAN;
        let start = Instant::now();
        for _ in 0..steps {
            let b = &self.batches[self.next % self.batches.len()];
            self.next += 1;
            loss = self.trainer.step_on(b)?.loss;
        }
        Ok(Timed {
            seconds: start.elapsed().as_secs_f64(),
            loss,
        })
    }

    /// `chunks` forward passes of both towers over the embedding chunk, without gradients
    /// (the evaluation path: embeddings detached from the graph); seconds.
    pub fn embed(&self, chunks: usize) -> Result<f64> {
        let model = self.trainer.model();
        let b = &self.embed;
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

/// The PyTorch side: the script running in a child process, answering one command per line.
pub struct Torch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    python: PathBuf,
    /// Its parameter counts.
    pub counts: ParamCounts,
    /// `torch.__version__`.
    pub version: String,
    /// `torch.get_num_threads()`.
    pub threads: usize,
}

impl Torch {
    /// Starts `script` under `python` with the specification file `spec`; waits until the model
    /// is built. Errors say whether the interpreter is missing or torch cannot be imported.
    pub fn start(python: &Path, script: &Path, spec: &Path) -> Result<Self> {
        let mut child = Command::new(python)
            .arg(script)
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run the Python interpreter `{}`: {e}; pass --python PATH to one that has torch, or --install-torch DIR to create one",
                    python.display()
                )
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the pipes to `{}` were not opened", python.display());
        };
        let mut torch = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            python: python.to_path_buf(),
            counts: ParamCounts {
                total: 0,
                decayed: 0,
            },
            version: String::new(),
            threads: 0,
        };
        let ready = torch.read().map_err(|e| {
            if e.to_string().contains("torch is not importable") {
                e.context(format!(
                    "`{}` has no torch; pass --python PATH to an interpreter that has it, or --install-torch DIR",
                    python.display()
                ))
            } else {
                e
            }
        })?;
        let field = |k: &str| {
            ready
                .get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    anyhow::anyhow!("the PyTorch script's first answer lacks `{k}`: {ready}")
                })
        };
        torch.counts = ParamCounts {
            total: field("params")?,
            decayed: field("decayed")?,
        };
        torch.threads = field("threads")?;
        torch.version = ready
            .get("torch")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        Ok(torch)
    }

    /// Reads one JSON answer; `{"error": …}`, a closed pipe or other text are errors.
    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line)?;
        if n == 0 {
            let status = self.child.wait()?;
            bail!(
                "`{}` exited ({status}) without answering the PyTorch script",
                self.python.display()
            );
        }
        let v: Value = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "`{}` answered {:?}, not a JSON line of the PyTorch script",
                self.python.display(),
                line.trim()
            )
        })?;
        if let Some(msg) = v.get("error").and_then(Value::as_str) {
            bail!(
                "the PyTorch script under `{}`: {msg}",
                self.python.display()
            );
        }
        Ok(v)
    }

    fn call(&mut self, cmd: &Value) -> Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.read()
    }

    fn seconds(v: &Value) -> Result<f64> {
        v.get("seconds")
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow::anyhow!("the PyTorch script's answer lacks `seconds`: {v}"))
    }

    /// `steps` training steps, timed inside the script.
    pub fn train(&mut self, steps: usize) -> Result<Timed> {
        let v = self.call(&json!({"op": "train", "steps": steps}))?;
        Ok(Timed {
            seconds: Self::seconds(&v)?,
            loss: v.get("loss").and_then(Value::as_f64).unwrap_or(f64::NAN) as f32,
        })
    }

    /// `chunks` forward passes of both towers under `torch.inference_mode()`; seconds.
    pub fn embed(&mut self, chunks: usize) -> Result<f64> {
        let v = self.call(&json!({"op": "embed", "chunks": chunks}))?;
        Self::seconds(&v)
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        if !matches!(self.child.wait(), Ok(s) if s.success()) {
            let _ = self.child.kill();
        }
    }
}

/// Creates a virtual environment in `dir` with `base` (e.g. `python3`) and installs torch from
/// PyPI into it, unless it already imports torch. Returns the environment's interpreter.
pub fn install_torch(dir: &Path, base: &Path) -> Result<PathBuf> {
    let python = dir.join("bin").join("python");
    let has_torch = |p: &Path| {
        Command::new(p)
            .args(["-c", "import torch"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has_torch(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<()> {
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {what} ({cmd:?})"))?;
        if !status.success() {
            bail!("{what} failed ({status}): {cmd:?}");
        }
        Ok(())
    };
    if !python.exists() {
        run(
            Command::new(base).args(["-m", "venv"]).arg(dir),
            "creating the virtual environment",
        )?;
    }
    run(
        Command::new(&python).args(["-m", "pip", "install", "torch"]),
        "installing torch from PyPI",
    )?;
    if !has_torch(&python) {
        bail!(
            "torch was installed into {} but does not import",
            dir.display()
        );
    }
    Ok(python)
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
    /// Untimed steps per side before the first round.
    pub warmup: usize,
    /// Threads of both sides.
    pub threads: usize,
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
    let mut ours = Ours::new(&s.preset, s.batch, s.embed_batch, s.steps.clamp(1, 4))?;
    let script = dir.join("torch_clip.py");
    std::fs::write(&script, SCRIPT)
        .with_context(|| format!("cannot write {}", script.display()))?;
    let spec_path = dir.join("spec.json");
    let spec = ours.spec(dir, s.threads)?;
    std::fs::write(&spec_path, serde_json::to_string_pretty(&spec)?)
        .with_context(|| format!("cannot write {}", spec_path.display()))?;
    let mut torch = Torch::start(python, &script, &spec_path)?;
    let counts = ours.parameter_counts();
    say(&format!(
        "{} at batch {}: ours {} parameters ({} weight-decayed), PyTorch {} ({}) — torch {}, {} threads each",
        s.preset,
        s.batch,
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
    if s.warmup > 0 {
        ours.train(s.warmup)?;
        torch.train(s.warmup)?;
    }
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
    })
}

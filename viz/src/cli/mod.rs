//! The `workbench` command line: `train`, `eval`, `data`, `check-data`, `bench`, `gap`, `point`,
//! `inspect`, `export` and `devices`.
//!
//! The binary is a thin wrapper around [`run`], which tests call directly.

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use workbench::config::{RunConfig, parse_device};
use workbench::data::Split;
use workbench::events::EvalReport;
use workbench::loss::LossConfig;
use workbench::model::Precision;
use workbench::train::Trainer;

mod bench;
mod dataset;
mod export;
mod inspect;
mod parallel;
mod pretrained;
mod train;

pub use bench::BenchArgs;
pub use dataset::CheckDataArgs;
pub use export::ExportArgs;
pub use inspect::{InspectArgs, load_image};

/// Train small CLIP-like image–text models and look inside them.
#[derive(Debug, Parser)]
#[command(name = "workbench", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (default: the `tiny` preset on the embedded synthetic shapes set, CPU).
    Train(TrainArgs),
    /// Evaluate a checkpoint: retrieval both ways, zero-shot accuracy, modality gap.
    Eval(EvalArgs),
    /// Look at a dataset: print samples' captions and objects, write a contact sheet PNG.
    Data(DataArgs),
    /// Check a dataset from files (captions folder, COCO, WebDataset, class tree): count pairs,
    /// decode every image, report bad samples.
    CheckData(CheckDataArgs),
    /// Benchmarks: `bench losses` times every objective's forward + backward pass; `bench
    /// infonce` the fused InfoNCE and sigmoid losses against their references; `bench torch` our
    /// training step beside PyTorch's; `bench loader` training on PNG files with and without
    /// batches built ahead.
    Bench(BenchArgs),
    /// Modality gap of a checkpoint: geometry of both embedding sets and the gap-shift sweep.
    Gap(GapArgs),
    /// Pointing game: does each object's word land on the object's patches?
    Point(PointArgs),
    /// Look inside a model for one image and text: attention, alignment, relevance figures.
    Inspect(InspectArgs),
    /// Export a run: weights as one `model.safetensors`, embeddings of a split's images and
    /// captions as `.npy` with `captions.json` to match rows.
    Export(ExportArgs),
    /// What this build can train on: the CPU, and each CUDA device with its name, compute
    /// capability and memory, checked by running a fused kernel and a cuBLAS product on it.
    Devices(DevicesArgs),
}

/// `workbench devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print the survey as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `workbench point`.
#[derive(Debug, Args)]
pub struct PointArgs {
    /// A run directory or its `checkpoint/`.
    #[arg(long, alias = "run")]
    pub checkpoint: PathBuf,
    /// Split to play on.
    #[arg(long, default_value = "val", value_parser = ["val", "test"])]
    pub split: String,
    /// Images to play (from the start of the split).
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a figure (`pointing.png` / `.svg`) and `pointing.json` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: as trained).
    #[arg(long)]
    pub device: Option<String>,
}

/// `workbench gap`.
#[derive(Debug, Args)]
pub struct GapArgs {
    /// A run directory or its `checkpoint/`.
    #[arg(long, alias = "run")]
    pub checkpoint: PathBuf,
    /// Split to measure.
    #[arg(long, default_value = "val", value_parser = ["val", "test"])]
    pub split: String,
    /// Shifts along the gap vector to evaluate (1 closes the gap, negative widens it); write a
    /// list that starts with a negative value as `--deltas=-0.5,0,1`.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true,
          default_values_t = [-0.5f32, 0.0, 0.25, 0.5, 0.75, 1.0])]
    pub deltas: Vec<f32>,
    /// Write the full analysis (spectra, histograms, sweep) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the figures (cosine histograms, spectra, sweep, joint PCA) and `gap.json` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: as trained).
    #[arg(long)]
    pub device: Option<String>,
}

/// `workbench data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// TOML run configuration whose `[data]` to show.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Preset whose data to show when no config file is given.
    #[arg(long)]
    pub preset: Option<String>,
    /// Split to show.
    #[arg(long, default_value = "train", value_parser = ["train", "val", "test", "zero-shot"])]
    pub split: String,
    /// First sample index.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Number of samples.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Write a contact sheet (8 images per row, upscaled) to this PNG file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Upscaling factor of the contact sheet.
    #[arg(long, default_value_t = 4)]
    pub scale: usize,
}

/// `workbench train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML run configuration (fields override its `preset`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Preset to start from when no config file is given: tiny or small.
    #[arg(long)]
    pub preset: Option<String>,
    /// Number of optimizer steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Pairs per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Training seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Batches built ahead on a background thread (0: load in the step; default 2).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// f32, or bf16 (matrix products on bf16 operands, f32 master weights and losses).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Data parallel: one rank per device, e.g. `cpu,cpu` or `cuda:0,cuda:1` (NCCL, feature
    /// `nccl`). The batch size is the global batch and must divide by the number of devices.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Vec<String>,
    /// With `--devices`: each rank computes the loss of its own rows against the whole
    /// gathered batch (OpenCLIP's `local_loss`; `train.local_loss`) — the same gradients for
    /// less loss compute. Every objective but `align_uniform` and `cloob` with its Hopfield
    /// retrieval.
    #[arg(long, requires = "devices")]
    pub local_loss: bool,
    /// Pass each step's batch through the model in N micro-batches (`train.micro_batches`):
    /// the activation memory of one, the gradients of the whole batch, one more forward pass
    /// per micro-batch. N must divide the batch (each rank's share of it with `--devices`).
    #[arg(long, value_name = "N")]
    pub micro_batches: Option<usize>,
    /// Run directory (default: `runs/<preset>`, numbered if taken).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Objective to train with (clip, siglip, cloob, filip, focal, soft_targets, triplet,
    /// multi_positive, fn_mask, hard_negatives, dcl, align_uniform, tcl), default settings.
    /// A resumed run keeps its objective; use `--swap` to change it.
    #[arg(long, conflicts_with = "resume")]
    pub loss: Option<String>,
    /// Switch objective live at a step, `STEP:NAME` (repeatable), e.g. `--swap 1000:siglip`.
    #[arg(long, value_parser = parse_swap)]
    pub swap: Vec<(usize, String)>,
    /// Continue the run in this directory from its checkpoint (`--steps` may extend it).
    #[arg(long, conflicts_with_all = ["config", "preset", "out", "batch_size", "seed"])]
    pub resume: Option<PathBuf>,
    /// Fine-tune a pretrained Hugging Face CLIP or SigLIP directory: its architecture, tokenizer
    /// and objective, with `[data]`, `[train]` and any `[loss]` of `--config` (default: the
    /// synthetic set at the model's size). The run directory resumes and is read by `eval`,
    /// `inspect --run` and `export --run` like any other (default: `runs/<model directory>`).
    #[arg(long, conflicts_with_all = ["resume", "preset"])]
    pub pretrained: Option<PathBuf>,
    /// No progress bar; one line per evaluation.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_swap(s: &str) -> std::result::Result<(usize, String), String> {
    let (step, name) = s
        .split_once(':')
        .ok_or_else(|| format!("expected STEP:NAME, e.g. 1000:siglip, got {s:?}"))?;
    let step = step
        .parse()
        .map_err(|_| format!("STEP must be a step number, got {step:?}"))?;
    LossConfig::by_name(name).map_err(|e| e.to_string())?;
    Ok((step, name.to_string()))
}

/// `workbench eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run directory or its `checkpoint/`.
    #[arg(long, alias = "run")]
    pub checkpoint: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "val", value_parser = ["val", "test"])]
    pub split: String,
    /// cpu, cuda or cuda:N (default: as trained).
    #[arg(long)]
    pub device: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Pairs in the batch whose similarity matrix, pair losses and false negatives are shown.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Write the batch-similarity figures and `eval.json` / `batch.json` here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Parses `args` (program name first) and runs the command; returns the process exit code.
/// Errors are printed to stderr with their causes; nothing panics on bad input.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`workbench data | head`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to standard output, reporting a closed pipe as an error instead of panicking.
fn say(line: &str) -> Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) if !a.devices.is_empty() => parallel::train(&a),
        Command::Train(a) => train::train(&a),
        Command::Eval(a) => eval(&a),
        Command::Data(a) => dataset::data(&a),
        Command::CheckData(a) => dataset::check_data(&a),
        Command::Bench(a) => bench::bench(&a),
        Command::Gap(a) => gap(&a),
        Command::Point(a) => point(&a),
        Command::Inspect(a) => inspect::inspect(&a),
        Command::Export(a) => export::export(&a),
        Command::Devices(a) => devices(&a),
    }
}

/// The configuration `train` would use: file or preset, then command-line overrides.
pub fn train_config(a: &TrainArgs) -> Result<RunConfig> {
    let mut cfg = match (&a.config, &a.preset) {
        (Some(path), _) => RunConfig::load(path)?,
        (None, Some(p)) => RunConfig::preset(p)?,
        (None, None) => RunConfig::default(),
    };
    if let (Some(_), Some(p)) = (&a.config, &a.preset)
        && *p != cfg.preset
    {
        bail!(
            "--preset {p} conflicts with preset = {:?} in the config file",
            cfg.preset
        );
    }
    apply_overrides(&mut cfg, a);
    if let Some(name) = &a.loss {
        cfg.loss = LossConfig::by_name(name).context("--loss")?;
    }
    cfg.validate().context("invalid command-line value")?;
    Ok(cfg)
}

fn apply_overrides(cfg: &mut RunConfig, a: &TrainArgs) {
    let t = &mut cfg.train;
    if let Some(v) = a.steps {
        t.steps = v;
    }
    if let Some(v) = a.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = a.lr {
        t.lr = v;
    }
    if let Some(v) = a.seed {
        t.seed = v;
    }
    if let Some(v) = a.eval_every {
        t.eval_every = v;
    }
    if let Some(v) = a.checkpoint_every {
        t.checkpoint_every = v;
    }
    if let Some(v) = &a.device {
        t.device.clone_from(v);
    }
    if let Some(v) = a.prefetch {
        t.prefetch = v;
    }
    if let Some(v) = a.precision {
        t.precision = v;
    }
    if a.local_loss {
        t.local_loss = true;
    }
    if let Some(v) = a.micro_batches {
        t.micro_batches = v;
    }
}

/// One line summarising an evaluation.
pub fn eval_line(r: &EvalReport) -> String {
    let zs = r.zero_shot.as_ref().map_or(String::new(), |z| {
        let held = z
            .held_out_accuracy
            .map_or(String::new(), |h| format!(" (held-out {h:.3})"));
        format!(" · zero-shot {:.3}{held}", z.accuracy)
    });
    format!(
        "eval @ {:>6} [{}]: image→text R@1 {:.3} R@5 {:.3} · text→image R@1 {:.3} R@5 {:.3}{zs} · gap {:.3}{}",
        r.step,
        r.split,
        r.image_to_text.r1,
        r.image_to_text.r5,
        r.text_to_image.r1,
        r.text_to_image.r5,
        r.modality_gap,
        r.loss.map_or(String::new(), |l| format!(" · loss {l:.4}"))
    )
}

/// A small table of an evaluation report.
pub fn report_table(r: &EvalReport) -> String {
    let row = |name: &str, x: &workbench::events::Recall| {
        format!(
            "{name:<12} {:>6.3} {:>6.3} {:>6.3} {:>9.1} {:>11.1}",
            x.r1, x.r5, x.r10, x.mean_rank, x.median_rank
        )
    };
    let mut s = format!(
        "{} split · {} images · {} captions · step {}\n{:<12} {:>6} {:>6} {:>6} {:>9} {:>11}\n{}\n{}\n",
        r.split,
        r.images,
        r.captions,
        r.step,
        "",
        "R@1",
        "R@5",
        "R@10",
        "mean rank",
        "median rank",
        row("image→text", &r.image_to_text),
        row("text→image", &r.text_to_image),
    );
    if let Some(z) = &r.zero_shot {
        let _ = write!(
            s,
            "zero-shot accuracy {:.3} ({} images, {} classes)",
            z.accuracy, z.images, z.classes
        );
        if let Some(h) = z.held_out_accuracy {
            let _ = write!(s, ", held-out classes {h:.3}");
        }
        s.push('\n');
    }
    let _ = write!(s, "modality gap {:.3}", r.modality_gap);
    if let Some(l) = r.loss {
        let _ = write!(s, " · loss {l:.4}");
    }
    s
}

fn eval(a: &EvalArgs) -> Result<()> {
    let device = a.device.as_deref().map(parse_device).transpose()?;
    let mut trainer = Trainer::resume(&a.checkpoint, device)?;
    let split = if a.split == "test" {
        Split::Test
    } else {
        Split::Val
    };
    let report = trainer.evaluate(split)?;
    if a.json {
        say(&serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    say(&report_table(&report))?;
    inspect::eval_extras(&mut trainer, a, split)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(
            dir.join("eval.json"),
            serde_json::to_string_pretty(&report)?,
        )
        .with_context(|| format!("cannot write {}", dir.join("eval.json").display()))?;
    }
    Ok(())
}

fn gap(a: &GapArgs) -> Result<()> {
    let device = a.device.as_deref().map(parse_device).transpose()?;
    let mut trainer = Trainer::resume(&a.checkpoint, device)?;
    let split = if a.split == "test" {
        Split::Test
    } else {
        Split::Val
    };
    let g = trainer.analyse_gap(split, &a.deltas)?;
    let r = &g.report;
    say(&format!(
        "modality gap on {split} ({} pairs, {} dims) after {} steps",
        r.pairs,
        r.dim,
        trainer.completed_steps()
    ))?;
    say(&format!(
        "  centroid distance {:.3} · centroid cosine {:.3} · image cone {:.3} · text cone {:.3}",
        r.centroid_distance, r.centroid_cosine, r.image_cone, r.text_cone
    ))?;
    say(&format!(
        "  separability (held-out logistic probe) {:.3} · matched cosine {:.3} · unmatched {:.3}",
        r.separability, r.matched_mean, r.unmatched_mean
    ))?;
    say(&format!(
        "  effective rank: image {:.1}, text {:.1} (of {})",
        r.image_effective_rank, r.text_effective_rank, r.dim
    ))?;
    say("      δ   gap   i→t R@1  t→i R@1  zero-shot")?;
    for p in &g.sweep {
        let zs = p.zero_shot.map_or("—".to_string(), |z| format!("{z:.3}"));
        say(&format!(
            "  {:>5.2} {:>5.3}  {:>7.3}  {:>7.3}  {zs:>9}",
            p.delta, p.centroid_distance, p.image_to_text_r1, p.text_to_image_r1
        ))?;
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&g)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        say(&format!("wrote {}", path.display()))?;
    }
    inspect::gap_out(a, &g)
}

fn point(a: &PointArgs) -> Result<()> {
    let device = a.device.as_deref().map(parse_device).transpose()?;
    let trainer = Trainer::resume(&a.checkpoint, device)?;
    let split = if a.split == "test" {
        Split::Test
    } else {
        Split::Val
    };
    let r = trainer.pointing_game(split, a.images)?;
    if let Some(dir) = &a.out {
        inspect::pointing_out(&r, dir)?;
    }
    if a.json {
        return say(&serde_json::to_string_pretty(&r)?);
    }
    say(&format!(
        "pointing game on {split}: {} of {} mentions in {} images land on their object: accuracy {:.3} (random direction {:.3}, random patch {:.3})",
        r.hits, r.mentions, r.images, r.accuracy, r.baseline, r.chance
    ))
}

/// `workbench devices`: the survey, as text or JSON; fails when a CUDA device is present but its
/// check failed, so scripts can stop before training.
fn devices(a: &DevicesArgs) -> Result<()> {
    let survey = workbench::devices::survey();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&survey)?);
    } else {
        println!("{survey}");
    }
    if let Ok(devices) = &survey.cuda
        && let Some(d) = devices
            .iter()
            .find(|d| d.check.as_ref().is_some_and(Result::is_err))
    {
        bail!("cuda:{} failed its check", d.ordinal);
    }
    Ok(())
}

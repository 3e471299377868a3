//! `workbench bench`: objectives, fused pairwise losses, and our training step beside PyTorch's.

use super::say;
use crate::bench::torch::{Comparison, Settings};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;
use workbench::model::Precision;

/// `workbench bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure: every objective (`losses`), the fused pairwise losses against their
    /// references (`infonce`), training and embedding throughput of our model beside the
    /// same model in PyTorch (`torch`; needs a Python interpreter with torch), or training on
    /// PNG files with the batches loaded in the step and built ahead on a thread (`loader`), or
    /// training throughput and peak memory in micro-batches against the whole batch at once
    /// (`micro`).
    #[arg(value_parser = ["losses", "infonce", "torch", "loader", "micro"])]
    pub what: String,
    /// Batch sizes, comma-separated [default: 256,1024,4096 for losses, 1024,16384 for infonce,
    /// 256 for torch and micro, 128 for loader].
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Embedding sizes for `infonce`, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 512])]
    pub dim: Vec<usize>,
    /// Timed repetitions per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Skip a measurement whose estimated memory exceeds this many GiB.
    #[arg(long, default_value_t = 8.0)]
    pub max_memory_gb: f64,
    /// `micro`: micro-batch counts to compare, comma-separated (each must divide the batch).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
    pub micro: Vec<usize>,
    /// `torch`, `micro`: presets to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["tiny".to_string(), "small".to_string()])]
    pub preset: Vec<String>,
    /// `torch`, `loader`: timed rounds; each round times both sides, alternating which goes
    /// first.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// `torch`, `loader`: timed training steps per side and round.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// `torch`, `loader`: untimed warm-up steps per side (`loader`: per side and round;
    /// `torch`: at least one runs, peak memory is measured over them).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// `torch`: the device of both sides: cpu, cuda or cuda:N (ours needs a build with
    /// `--features cuda`, PyTorch a CUDA build of torch). `loader`: where the model trains (the
    /// batches are built on the CPU either way; on a GPU the data wait is device idle time).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `torch`: precisions to compare, comma-separated: f32, bf16 (ours `[train] precision`,
    /// PyTorch `torch.autocast` to bfloat16; f32 master weights on both sides).
    #[arg(long, value_delimiter = ',', default_values_t = [Precision::F32])]
    pub precision: Vec<Precision>,
    /// `torch`: threads of both sides (rayon here, `torch.set_num_threads` there).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// `torch`: images and captions to embed, forward only, per side and round (0: skip).
    #[arg(long, default_value_t = 10_000)]
    pub embed: usize,
    /// `torch`: pairs per embedding forward pass.
    #[arg(long, default_value_t = 500)]
    pub embed_batch: usize,
    /// `torch`: the Python interpreter that runs the PyTorch side.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// `torch`: create a virtual environment in DIR (with `--python` as the base interpreter),
    /// install torch into it from PyPI and use it. The PyPI wheel pulls NVIDIA's CUDA libraries,
    /// about 3 GB; an existing environment that imports torch is reused as it is.
    #[arg(long, value_name = "DIR")]
    pub install_torch: Option<PathBuf>,
    /// `loader`: PNG files written for the benchmark.
    #[arg(long, default_value_t = 512)]
    pub images: usize,
    /// `loader`: side of each PNG in pixels (resized to the model's image size when loaded).
    #[arg(long, default_value_t = 128)]
    pub image_side: usize,
    /// `loader`: batches the prefetching side builds ahead (the other side loads in the step).
    #[arg(long, default_value_t = 2)]
    pub prefetch: usize,
}

/// Runs `workbench bench`.
pub fn bench(a: &BenchArgs) -> Result<()> {
    match a.what.as_str() {
        "torch" => torch(a),
        "infonce" => infonce(a),
        "loader" => loader(a),
        "micro" => micro(a),
        _ => losses(a),
    }
}

fn infonce(a: &BenchArgs) -> Result<()> {
    let max_bytes = (a.max_memory_gb * f64::from(1u32 << 30)) as usize;
    let threads = rayon::current_num_threads();
    let batch = if a.batch.is_empty() {
        vec![1024, 16384]
    } else {
        a.batch.clone()
    };
    say(&format!(
        "forward + backward (all inputs, scale and bias included) of the fused pairwise losses and their B×B references; random unit rows, scale 100; median of {} runs, CPU, {}; ratios are reference / fused",
        a.repeats,
        threads_and_load(threads)
    ))?;
    let load = warn_if_busy(threads)?;
    say(crate::bench::PAIRWISE_HEADER)?;
    let mut failed = None;
    crate::bench::run_pairwise(&batch, &a.dim, a.repeats.max(1), max_bytes, |row| {
        if let Err(e) = say(&crate::bench::pairwise_line(row)) {
            failed.get_or_insert(e);
        }
    })?;
    report_end_load(load, threads)?;
    failed.map_or(Ok(()), Err)
}

/// `"N threads; load average L at start"` (what the CPU ops use, `RAYON_NUM_THREADS` included).
fn threads_and_load(threads: usize) -> String {
    format!(
        "{threads} thread{}; load average {} at start",
        if threads == 1 { "" } else { "s" },
        crate::bench::load_average().map_or_else(|| "?".into(), |l| format!("{l:.2}"))
    )
}

/// Prints the busy-machine warning if the load already reaches the thread count; returns the
/// load average at the start.
fn warn_if_busy(threads: usize) -> Result<Option<f64>> {
    let load = crate::bench::load_average();
    if let Some(w) = load.and_then(|l| crate::bench::busy_warning(l, threads)) {
        say(&w)?;
    }
    Ok(load)
}

/// Prints the load average at the end, and the warning if the machine became busy meanwhile.
fn report_end_load(start: Option<f64>, threads: usize) -> Result<()> {
    if let Some(end) = crate::bench::load_average() {
        say(&format!("load average {end:.2} at the end"))?;
        // Warned once at the start already, or warned now.
        if start.is_some_and(|l| l < threads as f64)
            && let Some(w) = crate::bench::busy_warning(end, threads)
        {
            say(&w)?;
        }
    }
    Ok(())
}

fn losses(a: &BenchArgs) -> Result<()> {
    let max_bytes = (a.max_memory_gb * f64::from(1u32 << 30)) as usize;
    // What the CPU ops use (`RAYON_NUM_THREADS` included).
    let threads = rayon::current_num_threads();
    let batch = if a.batch.is_empty() {
        vec![256, 1024, 4096]
    } else {
        a.batch.clone()
    };
    say(&format!(
        "forward + backward of every objective on random tiny-preset-shaped inputs; one warm-up, then median of {} runs; CPU, {}",
        a.repeats,
        threads_and_load(threads)
    ))?;
    let load = warn_if_busy(threads)?;
    say(crate::bench::HEADER)?;
    let mut clip = std::collections::HashMap::new();
    let mut failed = None;
    crate::bench::run(
        &batch,
        a.repeats.max(1),
        max_bytes,
        crate::bench::Shapes::default(),
        |row| {
            if row.objective == "clip" {
                clip.insert(row.batch, row.forward_ms + row.backward_ms);
            }
            if let Err(e) = say(&crate::bench::line(row, clip.get(&row.batch).copied())) {
                failed.get_or_insert(e);
            }
        },
    )?;
    report_end_load(load, threads)?;
    failed.map_or(Ok(()), Err)
}

fn loader(a: &BenchArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let s = crate::bench::loader::Settings {
        batch: a.batch.first().copied().unwrap_or(128),
        steps: a.steps,
        warmup: a.warmup,
        rounds: a.rounds,
        prefetch: a.prefetch,
        device: a.device.clone(),
    };
    say(&format!(
        "training steps of tiny at batch {} on {} PNGs of {}×{} px (decoded, resized, cropped and flipped per batch on the CPU), batches loaded in the step (prefetch 0) and built ahead (prefetch {}); {} warm-up + {} timed steps per side and round, {} rounds alternating; training on {}; CPU: {}",
        s.batch,
        a.images,
        a.image_side,
        a.image_side,
        s.prefetch,
        s.warmup,
        s.steps,
        s.rounds,
        s.device,
        threads_and_load(threads)
    ))?;
    let load = warn_if_busy(threads)?;
    let scratch = Scratch::new("loader")?;
    let captions = crate::bench::loader::write_images(&scratch.0, a.images, a.image_side)?;
    let c = crate::bench::loader::compare(&s, &captions, say)?;
    say("")?;
    for line in c.summary().lines() {
        say(line)?;
    }
    report_end_load(load, threads)
}

fn micro(a: &BenchArgs) -> Result<()> {
    use crate::bench::micro::{HEADER, Settings, line, measure};
    let threads = rayon::current_num_threads();
    let batches = if a.batch.is_empty() {
        vec![256]
    } else {
        a.batch.clone()
    };
    say(&format!(
        "training steps (forward, loss, backward, clipping, AdamW) with each batch in micro-batches (train.micro_batches) against the whole batch at once; device {}; batches pre-built; {} warm-up steps per setting (peak memory measured over them), then the median of {} runs of {} steps; settings from the most micro-batches to the fewest; CPU: {}",
        a.device,
        a.warmup.max(1),
        a.rounds,
        a.steps,
        threads_and_load(threads)
    ))?;
    let load = warn_if_busy(threads)?;
    let mut table = Vec::new();
    for (preset, batch, precision) in grid(a, &batches) {
        let s = Settings {
            preset: preset.clone(),
            batch,
            micro: a.micro.clone(),
            rounds: a.rounds,
            steps: a.steps,
            warmup: a.warmup,
            device: a.device.clone(),
            precision,
        };
        say(&format!("{preset}, batch {batch}, {}:", precision.name()))?;
        let rows = measure(&s, say)?;
        let whole = rows.iter().find(|r| r.micro == 1).copied();
        table.extend(rows.iter().map(|r| line(&s, r, whole.as_ref())));
    }
    say("")?;
    say(HEADER)?;
    for l in &table {
        say(l)?;
    }
    say(if a.device == "cpu" {
        "peak: this process's peak resident set over the warm-up steps of each setting"
    } else {
        "peak: the device's used memory (driver total − free, sampled every ms) over the warm-up steps of each setting, minus the reading before the trainer was built"
    })?;
    report_end_load(load, threads)
}

/// Every (preset, batch, precision) of `torch` and `micro`, presets outermost.
fn grid<'a>(
    a: &'a BenchArgs,
    batches: &'a [usize],
) -> impl Iterator<Item = (&'a String, usize, Precision)> + 'a {
    a.preset.iter().flat_map(move |p| {
        batches
            .iter()
            .flat_map(move |&b| a.precision.iter().map(move |&q| (p, b, q)))
    })
}

/// A fresh scratch directory for the script and the batch files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("workbench-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn torch(a: &BenchArgs) -> Result<()> {
    let python = match &a.install_torch {
        Some(dir) => crate::bench::torch::install_torch(dir, &a.python)?,
        None => a.python.clone(),
    };
    let batches = if a.batch.is_empty() {
        vec![256]
    } else {
        a.batch.clone()
    };
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    say(&format!(
        "training steps (forward, loss, backward, clipping, AdamW) and forward-only embedding, ours beside PyTorch eager; device {}, {} CPU threads each; batches pre-built (data generation excluded from both); {} warm-up steps (peak memory measured over them), then {} rounds of {} steps per side, alternating; load average {load} at start",
        a.device,
        a.threads,
        a.warmup.max(1),
        a.rounds,
        a.steps
    ))?;
    let scratch = Scratch::new("torch")?;
    let mut results: Vec<Comparison> = Vec::new();
    for (preset, batch, precision) in grid(a, &batches) {
        let s = Settings {
            preset: preset.clone(),
            batch,
            rounds: a.rounds,
            steps: a.steps,
            warmup: a.warmup,
            threads: a.threads,
            embed: a.embed,
            embed_batch: a.embed_batch,
            device: a.device.clone(),
            precision,
        };
        results.push(crate::bench::torch::compare(&s, &python, &scratch.0, say)?);
    }
    say("")?;
    say(crate::bench::TORCH_HEADER)?;
    for c in &results {
        say(&crate::bench::torch_line(c))?;
    }
    say(if a.device == "cpu" {
        "peak: each process's peak resident set over the warm-up steps"
    } else {
        "peak: ours = peak of the device's used memory (driver total − free, sampled every ms) over the warm-up steps minus the reading before our trainer was built; PyTorch = torch.cuda.max_memory_allocated / max_memory_reserved over its warm-up steps"
    })?;
    Ok(())
}

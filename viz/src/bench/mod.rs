//! `workbench bench losses`: forward + backward time and peak memory of every objective;
//! `workbench bench infonce`: the fused pairwise losses (InfoNCE, sigmoid) beside their `B × B`
//! references; `workbench bench torch` ([`torch`]): our training step and embedding beside the
//! same model in PyTorch; `workbench bench loader` ([`loader`]): training on PNG files with the
//! batches loaded in the step and built ahead on a thread.
//!
//! Inputs of `losses` and `infonce` are random L2-normalised embeddings shaped like the `tiny` preset's (embedding size
//! 64, 16 patches, 12 text tokens, 3 hard negatives per image, groups of about 4 rows). Each
//! measurement is the median of `repeats` runs after one warm-up, all objectives side by side in
//! one process, so ratios hold up under moderate noise. A machine whose load average reaches
//! the thread count is another matter: see [`busy_warning`].
//! Peak memory is what the process allocated on top of the inputs during forward and backward
//! (the binary counts allocations; see [`kernels::alloc::CountingAllocator`]).

pub mod loader;
pub mod micro;
pub mod torch;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use workbench::loss::{LossConfig, LossInputs};
use workbench::params::Params;
use workbench::rng::Rng;

/// One measurement.
#[derive(Clone, Debug)]
pub struct Row {
    /// Objective name.
    pub objective: String,
    /// Pairs per batch.
    pub batch: usize,
    /// Median forward time, ms.
    pub forward_ms: f64,
    /// Median backward time, ms.
    pub backward_ms: f64,
    /// Peak bytes allocated on top of the inputs.
    pub peak_bytes: usize,
    /// Why it was not measured.
    pub skipped: Option<String>,
}

/// Shapes of the benchmark inputs.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    /// Embedding size.
    pub dim: usize,
    /// Patches per image.
    pub patches: usize,
    /// Tokens per caption.
    pub tokens: usize,
    /// Hard negatives per image.
    pub negatives: usize,
}

impl Default for Shapes {
    fn default() -> Self {
        Self {
            dim: 64,
            patches: 16,
            tokens: 12,
            negatives: 3,
        }
    }
}

fn unit_rows(rng: &mut Rng, shape: &[usize], dev: &Device) -> Result<Var> {
    let n: usize = shape.iter().product();
    let t = Tensor::from_vec(rng.normal_vec(n, 1.0), shape, dev)?;
    let norm = t.sqr()?.sum_keepdim(shape.len() - 1)?.sqrt()?;
    Ok(Var::from_tensor(&t.broadcast_div(&norm)?)?)
}

/// Peak bytes FILIP needs: its `(B, N, B, T)` f32 similarity tensor times the 14 copies of
/// that size forward and backward keep alive (masked similarities, max selections, gradients;
/// measured at batch 256: 682 MiB).
pub fn filip_estimate(batch: usize, s: Shapes) -> usize {
    batch * s.patches * batch * s.tokens * 4 * 14
}

/// Measures every built-in objective at every batch size.
pub fn run(
    batches: &[usize],
    repeats: usize,
    max_bytes: usize,
    shapes: Shapes,
    mut each: impl FnMut(&Row),
) -> Result<Vec<Row>> {
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    for &b in batches {
        let mut rng = Rng::new(b as u64);
        let s = shapes;
        let image = unit_rows(&mut rng, &[b, s.dim], &dev)?;
        let text = unit_rows(&mut rng, &[b, s.dim], &dev)?;
        let image2 = unit_rows(&mut rng, &[b, s.dim], &dev)?;
        let text2 = unit_rows(&mut rng, &[b, s.dim], &dev)?;
        let extra = unit_rows(&mut rng, &[b * s.negatives, s.dim], &dev)?;
        let patches = unit_rows(&mut rng, &[b, s.patches, s.dim], &dev)?;
        let tokens = unit_rows(&mut rng, &[b, s.tokens, s.dim], &dev)?;
        let lengths: Vec<usize> = (0..b).map(|_| 4 + rng.below(s.tokens - 3)).collect();
        let mask: Vec<f32> = (0..b * s.tokens)
            .map(|k| {
                if k % s.tokens < lengths[k / s.tokens] {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (b, s.tokens), &dev)?;
        let groups: Vec<u64> = (0..b)
            .map(|_| rng.below(b.div_ceil(4).max(2)) as u64)
            .collect();
        let text_ids = groups.clone();
        for cfg in LossConfig::builtins() {
            let name = cfg.name().to_string();
            if name == "filip" && filip_estimate(b, s) > max_bytes {
                let row = Row {
                    objective: name,
                    batch: b,
                    forward_ms: f64::NAN,
                    backward_ms: f64::NAN,
                    peak_bytes: 0,
                    skipped: Some(format!(
                        "needs about {:.1} GiB (> --max-memory-gb)",
                        filip_estimate(b, s) as f64 / f64::from(1u32 << 30)
                    )),
                };
                each(&row);
                rows.push(row);
                continue;
            }
            let params = Params::new(0, &dev);
            let objective = cfg.build(&params.scope("loss"))?;
            let inputs = LossInputs {
                image_tokens: Some(patches.as_tensor()),
                text_tokens: Some(tokens.as_tensor()),
                text_mask: Some(&mask),
                groups: Some(&groups),
                text_ids: Some(&text_ids),
                extra_text: Some(extra.as_tensor()),
                image2: Some(image2.as_tensor()),
                text2: Some(text2.as_tensor()),
                progress: 0.5,
                step: 1,
                ..LossInputs::new(image.as_tensor(), text.as_tensor())
            };
            let (mut fwd, mut bwd, mut peak) = (Vec::new(), Vec::new(), 0);
            for r in 0..=repeats {
                let base = kernels::alloc::reset_peak();
                let t0 = Instant::now();
                let out = objective.forward(&inputs)?;
                let _ = out.loss.to_scalar::<f32>()?;
                let t1 = Instant::now();
                let grads = out.loss.backward()?;
                let t2 = Instant::now();
                peak = peak.max(kernels::alloc::peak().saturating_sub(base));
                drop(grads);
                if r > 0 {
                    fwd.push((t1 - t0).as_secs_f64() * 1e3);
                    bwd.push((t2 - t1).as_secs_f64() * 1e3);
                }
            }
            let row = Row {
                objective: name,
                batch: b,
                forward_ms: median(&mut fwd),
                backward_ms: median(&mut bwd),
                peak_bytes: peak,
                skipped: None,
            };
            each(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The 1-minute load average (`/proc/loadavg`), where the system reports one.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A warning when the load average reaches the number of threads (two or more) the benchmark
/// uses: the CPU ops fork work onto every thread and join, so each join waits for whichever
/// worker the scheduler has set aside for another process. On a 2-core machine at load average 4 the same
/// binary timed focal at batch 256 at 5.5 ms in one run and 140 ms in the next, and a load of
/// 5–9 made DCL 40× slower than on a quiet machine, while the fused CLIP loss barely moved and
/// single-threaded runs stayed within 2× of each other.
pub fn busy_warning(load: f64, threads: usize) -> Option<String> {
    // One thread waits for nobody: it runs slower by the share it gets, not by a multiple.
    (threads > 1 && load >= threads as f64).then(|| {
        format!(
            "warning: load average {load:.2} on {threads} threads: other processes hold the cores, \
             and multi-threaded ops wait for descheduled workers, so times (and the ratios between \
             them) can be many times too high; measure on a quiet machine, or with RAYON_NUM_THREADS=1"
        )
    })
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// The table header.
pub const HEADER: &str =
    "objective         batch   forward ms  backward ms   total ms  ×clip   peak MiB";

/// One table line; `clip_total` is CLIP's forward + backward at the same batch.
pub fn line(r: &Row, clip_total: Option<f64>) -> String {
    if let Some(why) = &r.skipped {
        return format!("{:<16} {:>6}   skipped: {why}", r.objective, r.batch);
    }
    let total = r.forward_ms + r.backward_ms;
    let ratio = clip_total.map_or("     —".to_string(), |c| format!("{:>6.2}", total / c));
    format!(
        "{:<16} {:>6} {:>12.2} {:>12.2} {:>10.2} {ratio} {:>10.1}",
        r.objective,
        r.batch,
        r.forward_ms,
        r.backward_ms,
        total,
        r.peak_bytes as f64 / f64::from(1u32 << 20)
    )
}

/// Time and peak memory of one forward + backward.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median forward + backward time, ms.
    pub total_ms: f64,
    /// Peak bytes allocated on top of the inputs.
    pub peak_bytes: usize,
}

/// One line of `workbench bench infonce`: a pairwise loss, fused beside its `B × B` reference.
#[derive(Clone, Debug)]
pub struct KernelRow {
    /// `infonce` or `sigmoid_pairwise`.
    pub loss: &'static str,
    /// Pairs per batch.
    pub batch: usize,
    /// Embedding size.
    pub dim: usize,
    /// The fused kernel.
    pub fused: Timing,
    /// The reference, or why it was skipped.
    pub reference: std::result::Result<Timing, String>,
}

type PairLoss = fn(&Tensor, &Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// The two pairwise losses, fused and reference, all taking `(image, text, scale, bias)`.
const PAIR_LOSSES: [(&str, PairLoss, PairLoss); 2] = [
    (
        "infonce",
        |i, t, s, _| kernels::infonce(i, t, s),
        |i, t, s, _| kernels::infonce_reference(i, t, s),
    ),
    (
        "sigmoid_pairwise",
        kernels::sigmoid_pairwise,
        kernels::sigmoid_pairwise_reference,
    ),
];

/// Median forward + backward time and peak memory of `f` (gradients for all four inputs),
/// both over the timed runs.
fn time_pair_loss(f: PairLoss, inputs: &[Var; 4], repeats: usize) -> Result<Timing> {
    let (mut times, mut peak) = (Vec::new(), 0);
    let t = |k: usize| inputs[k].as_tensor();
    for r in 0..=repeats {
        let base = kernels::alloc::reset_peak();
        let t0 = Instant::now();
        let loss = f(t(0), t(1), t(2), t(3))?.sum_all()?;
        let grads = loss.backward()?;
        let _ = loss.to_scalar::<f32>()?;
        let elapsed = t0.elapsed();
        drop(grads);
        // The warm-up also pays one-time allocations (thread pools, gemm's buffers).
        if r > 0 {
            peak = peak.max(kernels::alloc::peak().saturating_sub(base));
            times.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    Ok(Timing {
        total_ms: median(&mut times),
        peak_bytes: peak,
    })
}

/// Measures both pairwise losses, fused and reference, at every batch size and embedding size
/// (scale 100, bias −10; random unit rows). The reference is skipped where its peak memory,
/// extrapolated as `B²` from its measurement at the largest smaller batch (before any, from a
/// first guess of 48 bytes per logit), would exceed `max_bytes`.
pub fn run_pairwise(
    batches: &[usize],
    dims: &[usize],
    repeats: usize,
    max_bytes: usize,
    mut each: impl FnMut(&KernelRow),
) -> Result<Vec<KernelRow>> {
    // A first guess of the reference's bytes per logit (a dozen f32 `B × B` tensors).
    const REF_BYTES_PER_CELL: f64 = 48.0;
    let dev = Device::Cpu;
    let mut sorted = batches.to_vec();
    sorted.sort_unstable();
    let mut rows = Vec::new();
    for (name, fused, reference) in PAIR_LOSSES {
        for &dim in dims {
            let mut per_cell = REF_BYTES_PER_CELL;
            for &b in &sorted {
                let mut rng = Rng::new((b * 31 + dim) as u64);
                let inputs = [
                    unit_rows(&mut rng, &[b, dim], &dev)?,
                    unit_rows(&mut rng, &[b, dim], &dev)?,
                    Var::new(100f32, &dev)?,
                    Var::new(-10f32, &dev)?,
                ];
                let fused = time_pair_loss(fused, &inputs, repeats)?;
                let cells = (b * b) as f64;
                let estimate = per_cell * cells;
                let reference = if estimate > max_bytes as f64 {
                    Err(format!(
                        "needs about {:.1} GiB (> --max-memory-gb)",
                        estimate / f64::from(1u32 << 30)
                    ))
                } else {
                    let t = time_pair_loss(reference, &inputs, repeats)?;
                    per_cell = t.peak_bytes as f64 / cells;
                    Ok(t)
                };
                let row = KernelRow {
                    loss: name,
                    batch: b,
                    dim,
                    fused,
                    reference,
                };
                each(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// The header of the `bench infonce` table.
pub const PAIRWISE_HEADER: &str =
    "loss               batch   dim   fused ms    ref ms  ×time   fused MiB     ref MiB  ×memory";

/// One line of the `bench infonce` table; the ratios are reference / fused.
pub fn pairwise_line(r: &KernelRow) -> String {
    let mib = |b: usize| b as f64 / f64::from(1u32 << 20);
    let head = format!(
        "{:<16} {:>7} {:>5} {:>10.1}",
        r.loss, r.batch, r.dim, r.fused.total_ms
    );
    match &r.reference {
        Ok(t) => format!(
            "{head} {:>9.1} {:>6.2} {:>11.1} {:>11.1} {:>8.1}",
            t.total_ms,
            t.total_ms / r.fused.total_ms,
            mib(r.fused.peak_bytes),
            mib(t.peak_bytes),
            t.peak_bytes as f64 / r.fused.peak_bytes.max(1) as f64
        ),
        Err(why) => format!(
            "{head} {:>9} {:>6} {:>11.1}   reference skipped: {why}",
            "—",
            "—",
            mib(r.fused.peak_bytes)
        ),
    }
}

/// The header of the `bench torch` summary.
pub const TORCH_HEADER: &str = "preset   batch  prec    train ours  train torch  ×torch   embed ours  embed torch  ×torch   peak ours  peak torch  (pairs/s, medians over rounds; peak MiB)";

/// One summary line: median throughputs and the ratios ours / PyTorch, and each side's peak
/// memory over the warm-up steps (PyTorch on CUDA: allocated / reserved).
pub fn torch_line(c: &torch::Comparison) -> String {
    let med = |v: &[f64]| median(&mut v.to_vec());
    let embed = if c.ours_embed.is_empty() {
        format!("{:>12} {:>12} {:>7}", "—", "—", "—")
    } else {
        format!(
            "{:>12.0} {:>12.0} {:>7.2}",
            med(&c.ours_embed),
            med(&c.torch_embed),
            c.embed_ratio()
        )
    };
    let mib = |b: Option<u64>| {
        b.map_or_else(
            || "—".to_string(),
            |b| format!("{:.0}", b as f64 / f64::from(1u32 << 20)),
        )
    };
    let torch_peak = match c.torch_peak.reserved {
        Some(r) => format!("{}/{}", mib(c.torch_peak.allocated), mib(Some(r))),
        None => mib(c.torch_peak.allocated),
    };
    format!(
        "{:<7} {:>6}  {:<5} {:>12.0} {:>12.0} {:>7.2} {embed} {:>11} {:>11}",
        c.settings.preset,
        c.settings.batch,
        c.settings.precision.name(),
        med(&c.ours),
        med(&c.torch),
        c.ratio(),
        mib(c.ours_peak),
        torch_peak
    )
}

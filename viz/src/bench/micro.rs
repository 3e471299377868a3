//! `workbench bench micro`: training throughput and peak memory of a step whose batch passes
//! through the model in micro-batches (`train.micro_batches`), beside the whole batch at once,
//! on one trainer in one run.
//!
//! Each setting is measured on the same pre-built batches: its warm-up steps give the peak
//! memory ([`super::torch::memory`]: the process's peak resident set on the CPU, the sampled
//! peak of the device's used memory on CUDA, minus the reading before the trainer was built),
//! then `rounds` timed runs of `steps` steps give the median throughput. Settings run from the
//! most micro-batches to the fewest: memory an allocator keeps after a setting (glibc's heap,
//! the CUDA driver's pool) then never exceeds what the next setting needs, so each peak is that
//! setting's own.
//!
//! ```
//! use viz::bench::micro::{Settings, measure};
//! let s = Settings { preset: "tiny".into(), batch: 8, micro: vec![1, 4], ..Settings::default() };
//! let rows = measure(&s, |_| Ok(()))?;
//! assert_eq!(rows.iter().map(|r| r.micro).collect::<Vec<_>>(), [1, 4]);
//! assert!(rows.iter().all(|r| r.pairs_per_second > 0.0));
//! # anyhow::Ok(())
//! ```

use super::torch::{Ours, memory};
use anyhow::{Result, bail};
use workbench::model::Precision;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The preset.
    pub preset: String,
    /// Pairs per step.
    pub batch: usize,
    /// Micro-batch counts to compare (each must divide the batch).
    pub micro: Vec<usize>,
    /// Timed runs per setting; the median is reported.
    pub rounds: usize,
    /// Steps per timed run.
    pub steps: usize,
    /// Untimed steps per setting, over which the peak memory is measured (at least one).
    pub warmup: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// f32 or bf16.
    pub precision: Precision,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            preset: "small".into(),
            batch: 256,
            micro: vec![1, 2, 4, 8],
            rounds: 3,
            steps: 3,
            warmup: 1,
            device: "cpu".into(),
            precision: Precision::F32,
        }
    }
}

/// One setting's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    /// Micro-batches per step.
    pub micro: usize,
    /// Median training throughput, pairs per second.
    pub pairs_per_second: f64,
    /// Peak memory over the warm-up steps, bytes (`None` where it cannot be read).
    pub peak: Option<u64>,
}

/// Measures every setting of `s`, reporting progress to `say`; rows in the order of `s.micro`.
pub fn measure(s: &Settings, mut say: impl FnMut(&str) -> Result<()>) -> Result<Vec<Row>> {
    if s.rounds == 0 || s.steps == 0 || s.micro.is_empty() {
        bail!("--rounds, --steps and --micro must be at least 1 / not empty");
    }
    let baseline = memory::device_used(&workbench::config::parse_device(&s.device)?)?;
    let mut ours = Ours::on(&s.preset, s.batch, 1, 2, &s.device, s.precision)?;
    let mut order = s.micro.clone();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.dedup();
    let mut rows = Vec::new();
    for &m in &order {
        ours.set_micro_batches(m)?;
        let (_, peak) = ours.train_measured(s.warmup.max(1), baseline)?;
        let mut rates = Vec::new();
        for _ in 0..s.rounds {
            let t = ours.train(s.steps)?;
            rates.push((s.batch * s.steps) as f64 / t.seconds);
        }
        let row = Row {
            micro: m,
            pairs_per_second: super::median(&mut rates),
            peak,
        };
        say(&format!(
            "  {} micro-batch{}: {:.0} pairs/s, peak {}",
            m,
            if m == 1 { "" } else { "es" },
            row.pairs_per_second,
            mib(row.peak)
        ))?;
        rows.push(row);
    }
    Ok(s.micro
        .iter()
        .filter_map(|m| rows.iter().find(|r| r.micro == *m).copied())
        .collect())
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(
        || "–".into(),
        |b| format!("{:.0} MiB", b as f64 / f64::from(1u32 << 20)),
    )
}

/// The table header of [`line()`].
pub const HEADER: &str = "preset   batch  prec   micro   pairs/s  ×whole   peak MiB  ×whole";

/// One row of the table: its figures and their ratios to the whole batch at once (`whole`,
/// the row with one micro-batch, when measured).
pub fn line(s: &Settings, r: &Row, whole: Option<&Row>) -> String {
    let ratio = |a: f64, b: f64| format!("{:.2}", a / b);
    let speed = whole.map_or_else(
        || "–".into(),
        |w| ratio(r.pairs_per_second, w.pairs_per_second),
    );
    let memory = match (r.peak, whole.and_then(|w| w.peak)) {
        (Some(a), Some(b)) if b > 0 => ratio(a as f64, b as f64),
        _ => "–".into(),
    };
    format!(
        "{:<8} {:>5}  {:<5} {:>6} {:>9.0} {:>7} {:>10} {:>7}",
        s.preset,
        s.batch,
        s.precision.name(),
        r.micro,
        r.pairs_per_second,
        speed,
        r.peak.map_or_else(
            || "–".into(),
            |b| format!("{:.0}", b as f64 / f64::from(1u32 << 20))
        ),
        memory
    )
}

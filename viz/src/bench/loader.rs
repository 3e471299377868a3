//! `workbench bench loader`: training steps of the `tiny` preset on image files that need real
//! decoding, with each batch loaded in the step (`train.prefetch = 0`) and built ahead on a
//! background thread (`train.prefetch = d`), measured in one run.
//!
//! - **Data.** `images` PNGs of `side × side` pixels (smooth colour ramps under pixel noise, so
//!   the decoder does real work) with one caption each, written to a scratch directory and read
//!   as a captions folder: every batch decodes its PNGs, resizes them to the model's image size,
//!   and takes a seeded random-resized crop and flip.
//! - **Rounds.** Each round builds a fresh trainer per side (same seed, so the same batches and
//!   the same arithmetic), takes `warmup` untimed steps, then `steps` timed ones, and drops it —
//!   which stops its loading thread, so no side loads while the other is timed. The sides
//!   alternate which goes first. A side's figures are medians over rounds.
//! - **Figures.** Steps per second (wall time of the timed steps) and the share of step time
//!   spent waiting for data ([`workbench::events::StepStats::data_seconds`] over
//!   `seconds`, summed); the ratio is prefetching over loading in the step. The warm-up leaves
//!   the prefetching side's queue full, a head start of at most `d` batches over `steps` steps.
//!
//! ```no_run
//! use viz::bench::loader::{Settings, compare, write_images};
//! let dir = std::env::temp_dir().join("loader-bench-doc");
//! let captions = write_images(&dir, 64, 96)?;
//! let s = Settings { batch: 32, steps: 4, ..Settings::default() };
//! let c = compare(&s, &captions, |line| { println!("{line}"); Ok(()) })?;
//! println!("prefetch speed-up ×{:.2}", c.ratio());
//! # anyhow::Ok(())
//! ```

use anyhow::{Context as _, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
use workbench::config::RunConfig;
use workbench::data::decode::encode_png;
use workbench::data::{FilesConfig, RgbImage};
use workbench::rng::Rng;
use workbench::train::Trainer;

/// What one `bench loader` run measures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Pairs per batch.
    pub batch: usize,
    /// Timed steps per side and round.
    pub steps: usize,
    /// Untimed steps per side and round before the timed ones.
    pub warmup: usize,
    /// Rounds.
    pub rounds: usize,
    /// Batches the prefetching side builds ahead (the other loads in the step).
    pub prefetch: usize,
    /// Where the model trains: `cpu`, `cuda` or `cuda:N`. The batches are always built on the
    /// CPU; on a GPU the share of step time waiting for data is time the device sits idle.
    pub device: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch: 128,
            steps: 20,
            warmup: 2,
            rounds: 3,
            prefetch: 2,
            device: "cpu".into(),
        }
    }
}

/// One side's figures per round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Side {
    /// `train.prefetch` of this side.
    pub prefetch: usize,
    /// Timed steps per second, per round.
    pub steps_per_second: Vec<f64>,
    /// Share of step time waiting for data, per round (0..=1).
    pub data_fraction: Vec<f64>,
}

impl Side {
    /// Median steps per second over the rounds.
    pub fn median_steps_per_second(&self) -> f64 {
        super::median(&mut self.steps_per_second.clone())
    }

    /// Median share of step time waiting for data over the rounds.
    pub fn median_data_fraction(&self) -> f64 {
        super::median(&mut self.data_fraction.clone())
    }
}

/// Both sides of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// What was measured.
    pub settings: Settings,
    /// Loading in the step (`train.prefetch = 0`).
    pub sync: Side,
    /// Loading ahead (`train.prefetch = settings.prefetch`).
    pub ahead: Side,
}

impl Comparison {
    /// Median steps per second with prefetching over median without.
    pub fn ratio(&self) -> f64 {
        self.ahead.median_steps_per_second() / self.sync.median_steps_per_second()
    }

    /// The summary lines: each side's medians and the ratio.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for side in [&self.sync, &self.ahead] {
            let _ = writeln!(
                s,
                "prefetch {}: {:.2} steps/s, {:.1} % of step time waiting for data (medians over {} rounds)",
                side.prefetch,
                side.median_steps_per_second(),
                side.median_data_fraction() * 100.0,
                side.steps_per_second.len()
            );
        }
        let _ = write!(
            s,
            "prefetch {} / prefetch 0: ×{:.2} steps/s",
            self.ahead.prefetch,
            self.ratio()
        );
        s
    }
}

/// Writes `n` PNGs of `side × side` pixels under `dir/img/` and `dir/captions.csv` naming them;
/// returns the captions file.
pub fn write_images(dir: &Path, n: usize, side: usize) -> Result<PathBuf> {
    if n < 8 || side < 8 {
        bail!("the benchmark needs at least 8 images of at least 8 × 8 pixels");
    }
    let img = dir.join("img");
    std::fs::create_dir_all(&img).with_context(|| format!("cannot create {}", img.display()))?;
    let colours = [
        "red", "green", "blue", "amber", "violet", "teal", "grey", "rose",
    ];
    let mut csv = String::from("image,caption\n");
    for i in 0..n {
        let mut rng = Rng::derive(17, "bench/loader", i as u64);
        let base = [rng.below(256), rng.below(256), rng.below(256)];
        let mut im = RgbImage::new(side, side);
        for y in 0..side {
            for x in 0..side {
                let ramp = (x + y) * 128 / (2 * side);
                let px = base.map(|b| ((b + ramp + rng.below(48)) % 256) as u8);
                im.set_pixel(x, y, px);
            }
        }
        let path = img.join(format!("{i}.png"));
        std::fs::write(&path, encode_png(&im)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let _ = writeln!(
            csv,
            "img/{i}.png,a {} picture number {i}",
            colours[i % colours.len()]
        );
    }
    let captions = dir.join("captions.csv");
    std::fs::write(&captions, csv)
        .with_context(|| format!("cannot write {}", captions.display()))?;
    Ok(captions)
}

/// The `tiny` preset on the captions file `captions`, with `prefetch` batches built ahead, training
/// on `device`.
pub fn config(captions: &Path, batch: usize, prefetch: usize, device: &str) -> Result<RunConfig> {
    let mut cfg = RunConfig::preset("tiny")?;
    cfg.data.files = Some(FilesConfig {
        path: captions.to_path_buf(),
        val_fraction: 0.05,
        test_fraction: 0.0,
        ..FilesConfig::default()
    });
    cfg.train.batch_size = batch;
    cfg.train.prefetch = prefetch;
    cfg.train.device = device.to_string();
    cfg.train.steps = 1_000_000;
    cfg.train.warmup_steps = 10;
    cfg.validate()?;
    Ok(cfg)
}

/// Steps per second and the share of step time waiting for data of `steps` timed steps after
/// `warmup` untimed ones, on a fresh trainer (dropped at the end, which stops its thread).
fn time_side(cfg: &RunConfig, warmup: usize, steps: usize) -> Result<(f64, f64)> {
    let mut trainer = Trainer::new(cfg.clone())?;
    for _ in 0..warmup {
        trainer.step()?;
    }
    let (mut wait, mut total) = (0.0, 0.0);
    let t0 = Instant::now();
    for _ in 0..steps {
        let s = trainer.step()?;
        wait += s.data_seconds;
        total += s.seconds;
    }
    let wall = t0.elapsed().as_secs_f64();
    Ok((steps as f64 / wall, wait / total.max(1e-12)))
}

/// Runs both sides on the captions file `captions` (see the module docs), handing a line per
/// side and round to `say`.
pub fn compare(
    s: &Settings,
    captions: &Path,
    mut say: impl FnMut(&str) -> Result<()>,
) -> Result<Comparison> {
    if s.rounds == 0 || s.steps == 0 || s.prefetch == 0 {
        bail!("--rounds, --steps and --prefetch must be at least 1");
    }
    let cfgs = [
        config(captions, s.batch, 0, &s.device)?,
        config(captions, s.batch, s.prefetch, &s.device)?,
    ];
    let mut sides = [
        Side {
            prefetch: 0,
            ..Side::default()
        },
        Side {
            prefetch: s.prefetch,
            ..Side::default()
        },
    ];
    for round in 0..s.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let (sps, wait) = time_side(&cfgs[k], s.warmup, s.steps)?;
            sides[k].steps_per_second.push(sps);
            sides[k].data_fraction.push(wait);
            say(&format!(
                "round {}: prefetch {}: {sps:.2} steps/s, {:.1} % of step time waiting for data",
                round + 1,
                sides[k].prefetch,
                wait * 100.0
            ))?;
        }
    }
    let [sync, ahead] = sides;
    Ok(Comparison {
        settings: s.clone(),
        sync,
        ahead,
    })
}

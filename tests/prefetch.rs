//! Loading ahead (`train.prefetch`): batches, training, checkpoints and resumes are bit-identical
//! to loading in the step; a non-finite step takes the same batch again; an objective swap that
//! changes the extras discards the batches built for the old one; a loader error reaches the
//! step that would have taken the batch; dropping the trainer stops the thread; the wait for
//! data is measured and old metrics without it still read.

use crate::datasets::{png, write};
use crate::file_runs::{captions_folder, files_toml};
use crate::util::{snapshot, tiny_config, tmpdir};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use workbench::Error;
use workbench::config::RunConfig;
use workbench::control::Command;
use workbench::data::PairDataset;
use workbench::data::{Batch, LoaderState};
use workbench::events::{Event, StepStats};
use workbench::loss::{LossConfig, LossInputs, LossOutput, Objective};
use workbench::train::Trainer;

fn with_prefetch(mut cfg: RunConfig, prefetch: usize) -> RunConfig {
    cfg.train.prefetch = prefetch;
    cfg
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_same_batch(a: &Batch, b: &Batch, what: &str) {
    assert_eq!(a.indices, b.indices, "{what}: indices");
    assert_eq!(a.captions, b.captions, "{what}: captions");
    assert_eq!(a.groups, b.groups, "{what}: groups");
    assert_eq!(values(&a.images), values(&b.images), "{what}: images");
    assert_eq!(values(&a.tokens), values(&b.tokens), "{what}: tokens");
    assert_eq!(values(&a.eos), values(&b.eos), "{what}: eos");
    assert_eq!(values(&a.text_mask), values(&b.text_mask), "{what}: mask");
}

/// A run on a captions folder of PNGs, with a random-resized crop and flip in training.
fn augmented_files(name: &str) -> RunConfig {
    let d = tmpdir(name);
    let captions = captions_folder(&d, 40);
    let extra = "[data.files.augment]\nscale = [0.3, 0.9]\nflip = 0.5";
    let mut cfg = RunConfig::from_toml(&files_toml(&captions, extra), Path::new("r.toml")).unwrap();
    cfg.train.steps = 20;
    cfg
}

#[test]
fn batches_and_training_are_bit_identical_with_and_without_prefetch() {
    for (what, cfg) in [
        ("shapes", tiny_config()),
        ("files", augmented_files("prefetch-files")),
    ] {
        // `Trainer::next_batch`, past an epoch boundary of the file set (27 training images).
        let mut sync = Trainer::new(with_prefetch(cfg.clone(), 0)).unwrap();
        let mut ahead = Trainer::new(with_prefetch(cfg.clone(), 3)).unwrap();
        for k in 0..5 {
            let (a, b) = (sync.next_batch().unwrap(), ahead.next_batch().unwrap());
            assert_same_batch(&a, &b, &format!("{what} batch {k}"));
        }
        // Training steps: the same losses and parameters, bit for bit.
        let mut sync = Trainer::new(with_prefetch(cfg.clone(), 0)).unwrap();
        let mut ahead = Trainer::new(with_prefetch(cfg.clone(), 2)).unwrap();
        for _ in 0..4 {
            let (a, b) = (sync.step().unwrap(), ahead.step().unwrap());
            assert_eq!((a.step, a.loss, a.grad_norm), (b.step, b.loss, b.grad_norm));
            assert!(
                b.data_seconds >= 0.0 && b.data_seconds <= b.seconds,
                "{b:?}"
            );
        }
        assert_eq!(snapshot(&sync), snapshot(&ahead), "{what}");
    }
}

#[test]
fn checkpoints_hold_the_consumed_position_and_resume_identically_in_both_modes() {
    let mut cfg = tiny_config();
    cfg.train.steps = 8;
    // The reference: 8 steps without prefetching.
    let mut whole = Trainer::new(with_prefetch(cfg.clone(), 0)).unwrap();
    let losses: Vec<f32> = (0..8).map(|_| whole.step().unwrap().loss).collect();
    for (saved_with, resumed_with) in [(4, 0), (4, 2), (0, 2), (0, 0)] {
        let dir = tmpdir(&format!("prefetch-resume-{saved_with}-{resumed_with}"));
        let mut t = Trainer::new(with_prefetch(cfg.clone(), saved_with)).unwrap();
        for _ in 0..4 {
            t.step().unwrap();
        }
        // The producer has built up to 4 batches beyond; the checkpoint holds what was taken.
        std::thread::sleep(Duration::from_millis(50));
        t.save_checkpoint(&dir).unwrap();
        let (_, state) = Trainer::read_state(&dir).unwrap();
        assert_eq!(state.loader, LoaderState { position: 4 * 16 });
        drop(t);
        let mut r = Trainer::resume_with(&dir, None, |c| c.train.prefetch = resumed_with).unwrap();
        assert_eq!(r.config().train.prefetch, resumed_with);
        let rest: Vec<f32> = (0..4).map(|_| r.step().unwrap().loss).collect();
        assert_eq!(
            rest,
            losses[4..],
            "saved with {saved_with}, resumed with {resumed_with}"
        );
        assert_eq!(snapshot(&r), snapshot(&whole));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// InfoNCE at a fixed temperature that turns NaN at one call and records every call's image
/// embeddings (which, with the parameters unchanged, identify the batch).
struct Poisoned {
    at: usize,
    calls: AtomicUsize,
    seen: Arc<Mutex<Vec<Vec<f32>>>>,
}

impl Objective for Poisoned {
    fn name(&self) -> &'static str {
        "poisoned"
    }
    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(x.image.flatten_all()?.to_vec1()?);
        }
        let logits = (x.image.matmul(&x.text.t()?)? * 10.0)?;
        let (i2t, t2i) = workbench::loss::symmetric_cross_entropy(&logits)?;
        let mut loss = ((&i2t + &t2i)? / 2.0)?;
        if n == self.at {
            loss = (loss * f64::NAN)?;
        }
        Ok(LossOutput {
            terms: vec![("contrastive".into(), loss.clone())],
            loss,
        })
    }
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}

#[test]
fn a_non_finite_step_takes_the_same_batch_again() {
    let mut runs = Vec::new();
    for prefetch in [0, 2] {
        let mut t = Trainer::new(with_prefetch(tiny_config(), prefetch)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        t.set_objective(Box::new(Poisoned {
            at: 2,
            calls: AtomicUsize::new(0),
            seen: seen.clone(),
        }))
        .unwrap();
        let mut losses = vec![t.step().unwrap().loss, t.step().unwrap().loss];
        assert!(matches!(
            t.step().unwrap_err(),
            Error::NonFinite { step: 3, .. }
        ));
        let rewound = LoaderState { position: 2 * 16 };
        assert_eq!(t.loader_state(), rewound, "rewound to the failed batch");
        losses.extend((0..3).map(|_| t.step().unwrap().loss));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 6);
        assert_eq!(
            seen[2], seen[3],
            "prefetch {prefetch}: the failed batch is taken again"
        );
        runs.push((losses, seen, snapshot(&t)));
    }
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn a_swap_to_other_extras_discards_batches_built_for_the_old_ones() {
    // clip (no extras) → tcl (second views) → hard_negatives (negative captions) → clip.
    let plan = [(3, "clip"), (2, "tcl"), (2, "hard_negatives"), (2, "clip")];
    let mut runs = Vec::new();
    for prefetch in [0, 3] {
        let mut t = Trainer::new(with_prefetch(tiny_config(), prefetch)).unwrap();
        let mut steps: Vec<(String, f32)> = Vec::new();
        for (n, name) in plan {
            if t.objective().name() != name {
                let loss = LossConfig::by_name(name).unwrap();
                t.apply(&Command::Swap { loss }).unwrap();
            }
            for _ in 0..n {
                let s = t.step().unwrap();
                steps.push((s.objective.clone(), s.loss));
            }
        }
        runs.push((steps, snapshot(&t)));
    }
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].1, runs[1].1);
    assert_eq!(runs[0].0[4].0, "tcl");
}

#[test]
fn a_loader_error_reaches_the_step_that_would_take_the_batch() {
    let d = tmpdir("prefetch-bad");
    let mut csv = String::from("image,caption\n");
    for i in 0..24u8 {
        write(&d, &format!("img/{i}.png"), &png(i));
        writeln!(csv, "img/{i}.png,picture number {i}").unwrap();
    }
    for i in 0..6u8 {
        write(&d, &format!("img/bad{i}.png"), &png(i)[..60]);
        writeln!(csv, "img/bad{i}.png,broken picture {i}").unwrap();
    }
    let captions = write(&d, "captions.csv", csv.as_bytes());
    let text = files_toml(&captions, "bad_samples = \"fail\"");
    let cfg = RunConfig::from_toml(&text, Path::new("r.toml")).unwrap();
    let failure = |prefetch| {
        let mut t = Trainer::new(with_prefetch(cfg.clone(), prefetch)).unwrap();
        let mut losses = Vec::new();
        let err = loop {
            match t.step() {
                Ok(s) => losses.push(s.loss),
                Err(e) => break e.to_string(),
            }
            assert!(losses.len() < 20, "no bad image met");
        };
        // The position did not move: the next step meets the same image.
        let again = t.step().unwrap_err().to_string();
        (losses, err, again)
    };
    let (sync, ahead) = (failure(0), failure(2));
    assert_eq!(sync, ahead);
    assert!(
        sync.1.contains("bad") && sync.1.contains(".png"),
        "{}",
        sync.1
    );
    assert_eq!(sync.1, sync.2);
}

#[test]
fn dropping_the_trainer_stops_its_loading_thread() {
    let cfg = with_prefetch(augmented_files("prefetch-drop"), 4);
    let mut t = Trainer::new(cfg).unwrap();
    let dataset: Arc<dyn PairDataset> = t.dataset().clone();
    // The thread starts with the first batch and holds the dataset while it runs.
    let before = Arc::strong_count(&dataset);
    t.step().unwrap();
    assert_eq!(Arc::strong_count(&dataset), before + 1);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        drop(t);
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("dropping the trainer hung");
    assert_eq!(
        Arc::strong_count(&dataset),
        1,
        "the loading thread outlived the trainer"
    );
    // A trainer that never loaded has no thread to stop.
    drop(Trainer::new(with_prefetch(tiny_config(), 2)).unwrap());
}

#[test]
fn the_data_wait_is_recorded_and_old_metrics_still_read() {
    let mut t = Trainer::new(with_prefetch(tiny_config(), 0)).unwrap();
    let s = t.step().unwrap();
    assert!(s.data_seconds > 0.0 && s.data_seconds < s.seconds, "{s:?}");
    let mut json = serde_json::to_value(Event::Step(s.clone())).unwrap();
    // A step line written before the field existed.
    let removed = json.as_object_mut().unwrap().remove("data_seconds");
    assert_eq!(removed, Some(serde_json::json!(s.data_seconds)));
    let old = json.to_string();
    let Event::Step(back) = serde_json::from_str::<Event>(&old).unwrap() else {
        panic!("not a step")
    };
    assert_eq!(back.data_seconds, 0.0);
    // Device memory: absent on the CPU, and absent from the line (old lines read as the CPU's).
    assert_eq!(s.device_memory, None);
    assert!(!old.contains("device_memory") && back.device_memory.is_none());
    // On a GPU the step carries it, and it reads back.
    let on_gpu = StepStats {
        device_memory: Some(workbench::devices::DeviceMemory {
            used_bytes: 3 << 30,
            total_bytes: 80 << 30,
        }),
        ..s.clone()
    };
    let line = serde_json::to_string(&Event::Step(on_gpu.clone())).unwrap();
    assert!(
        line.contains(r#""device_memory":{"used_bytes":3221225472,"total_bytes":85899345920}"#),
        "{line}"
    );
    let Event::Step(read) = serde_json::from_str::<Event>(&line).unwrap() else {
        panic!("not a step")
    };
    assert_eq!(read.device_memory, on_gpu.device_memory);
    assert_eq!(
        on_gpu.device_memory.unwrap().to_string(),
        "3.0 of 80.0 GiB in use"
    );
    let mut history = viz::session::RunHistory::default();
    history.push(&Event::Step(back));
    // The command line's summary: mean wait per step and its share of step time.
    let mut wait = viz::session::DataWait::default();
    assert_eq!(wait.line(), None);
    let step = |seconds, data_seconds| StepStats {
        seconds,
        data_seconds,
        ..s.clone()
    };
    wait.add(&step(0.2, 0.05));
    wait.add(&step(0.3, 0.0));
    assert_eq!(
        wait.line().unwrap(),
        "data wait 25.0 ms per step · 10.0 % of step time (device idle waiting for data)"
    );
    // The app's status: the same figures over the last 20 steps of a history (the 5 steps
    // before them waited far longer, and do not count).
    let mut history = viz::session::RunHistory::default();
    for i in 0..25 {
        let waited = if i < 5 { 0.1 } else { 0.002 };
        history.push(&Event::Step(StepStats {
            step: i + 1,
            ..step(0.02, waited)
        }));
    }
    let (ms, share) = history.data_wait().figures().unwrap();
    assert_eq!(history.data_wait().steps, 20);
    assert!(
        (ms - 2.0).abs() < 1e-9 && (share - 10.0).abs() < 1e-9,
        "{ms} ms, {share} %"
    );
    assert_eq!(
        viz::session::RunHistory::default().data_wait().figures(),
        None
    );
    // `train.prefetch` is checked.
    let bad = RunConfig::from_toml("[train]\nprefetch = 100\n", Path::new("p.toml"));
    let e = bad.map_or_else(|e| e.to_string(), |c| c.validate().unwrap_err().to_string());
    assert!(e.contains("train.prefetch") && e.contains("64"), "{e}");
}

#[test]
fn bench_loader_measures_both_sides() {
    use clap::Parser as _;
    let cli = viz::cli::Cli::try_parse_from(["workbench", "bench", "loader"]).unwrap();
    let viz::cli::Command::Bench(a) = cli.command else {
        panic!("not bench")
    };
    assert_eq!(
        (a.what.as_str(), a.images, a.image_side),
        ("loader", 512, 128)
    );
    assert_eq!(a.prefetch, 2);

    let d = tmpdir("prefetch-bench");
    let captions = viz::bench::loader::write_images(&d, 24, 40).unwrap();
    let s = viz::bench::loader::Settings {
        batch: 8,
        steps: 2,
        warmup: 1,
        rounds: 2,
        prefetch: 2,
        device: "cpu".into(),
    };
    let mut lines = Vec::new();
    let c = viz::bench::loader::compare(&s, &captions, |l| {
        lines.push(l.to_string());
        Ok(())
    })
    .unwrap();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for side in [&c.sync, &c.ahead] {
        assert_eq!(side.steps_per_second.len(), 2);
        assert!(side.steps_per_second.iter().all(|&v| v > 0.0));
        assert!(side.data_fraction.iter().all(|f| (0.0..=1.0).contains(f)));
    }
    assert!(c.ratio() > 0.0);
    assert!(c.summary().contains("prefetch 2 / prefetch 0"));
    assert!(viz::bench::loader::write_images(&d, 2, 40).is_err());
    let _ = std::fs::remove_dir_all(d);
}

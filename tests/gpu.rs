//! Training end to end on a CUDA device (a `cuda` build with a GPU): the first steps equal the
//! CPU's from the same seed, every built-in objective trains, objectives swap live, checkpoints
//! move between GPU and CPU in both directions, bf16 stays within the f32 bounds of
//! `tests/amp.rs`, inspection gives the CPU's maps, and the desktop app's session trains,
//! swaps, answers and forks on the GPU. Without a usable GPU every test prints
//! that it was skipped and why, and checks nothing.

use crate::util::{tiny_config, tmpdir};
use candle_core::Device;
use serde_json::Value;
use workbench::config::RunConfig;
use workbench::data::Split;
use workbench::loss::LossConfig;
use workbench::model::Precision;
use workbench::train::Trainer;

/// The first CUDA device, or `None` after printing why the test is skipped.
fn gpu(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let e = e.to_string();
            eprintln!(
                "{test}: skipped, no usable CUDA device ({})",
                e.lines().next().unwrap_or_default()
            );
            None
        }
    }
}

fn on(device: &str, mut cfg: RunConfig) -> Trainer {
    cfg.train.device = device.into();
    Trainer::new(cfg).unwrap()
}

/// One step of each; their losses.
fn step_both(g: &mut Trainer, c: &mut Trainer) -> (f32, f32) {
    (g.step().unwrap().loss, c.step().unwrap().loss)
}

/// Asserts `|a − b| ≤ tol`, printing the figure (run with `--nocapture` to record it).
fn assert_near(a: f32, b: f32, tol: f32, what: &str) {
    eprintln!(
        "{what}: GPU {a}, CPU {b}, |Δ| {:e} (tolerance {tol:e})",
        (a - b).abs()
    );
    assert!(
        (a - b).abs() <= tol,
        "{what}: GPU {a} vs CPU {b} (tolerance {tol})"
    );
}

/// Largest absolute difference between the numbers of two JSON documents of the same shape.
fn json_diff(a: &Value, b: &Value, path: &str) -> f64 {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(f64::NAN)).abs()
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths differ");
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (x, y))| json_diff(x, y, &format!("{path}[{i}]")))
                .fold(0.0, f64::max)
        }
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .map(|(k, v)| json_diff(v, &y[k], &format!("{path}.{k}")))
            .fold(0.0, f64::max),
        (x, y) => {
            assert_eq!(x, y, "{path}");
            0.0
        }
    }
}

#[test]
fn first_steps_on_the_gpu_equal_the_cpu_from_the_same_seed() {
    let Some(_) = gpu("first_steps_on_the_gpu_equal_the_cpu_from_the_same_seed") else {
        return;
    };
    let (mut g, mut c) = (on("cuda", tiny_config()), on("cpu", tiny_config()));
    assert!(g.device().is_cuda());
    let (sg, sc) = (g.step().unwrap(), c.step().unwrap());
    // The step reports the device's memory on the GPU, nothing on the CPU.
    let m = sg
        .device_memory
        .expect("a GPU step reports the device's memory");
    eprintln!("GPU memory after the first tiny step: {m}");
    assert!(m.used_bytes > 0 && m.used_bytes <= m.total_bytes, "{m:?}");
    assert_eq!(sc.device_memory, None);
    // The bound for the first step in f32: same seed, same batch, same initial weights.
    assert_near(sg.loss, sc.loss, 1e-4, "first-step loss");
    assert_near(
        sg.grad_norm,
        sc.grad_norm,
        1e-3 * sc.grad_norm,
        "first-step gradient norm",
    );
    for step in 2..=5 {
        let (lg, lc) = step_both(&mut g, &mut c);
        assert_near(lg, lc, 1e-3, &format!("loss at step {step}"));
    }
}

#[test]
fn bf16_on_the_gpu_stays_within_the_documented_tolerance_of_f32() {
    let Some(_) = gpu("bf16_on_the_gpu_stays_within_the_documented_tolerance_of_f32") else {
        return;
    };
    let run = |precision| {
        let mut t = on("cuda", crate::amp::learning_run(precision));
        (0..30)
            .map(|_| t.step().unwrap().loss)
            .collect::<Vec<f32>>()
    };
    let (lf, lb) = (run(Precision::F32), run(Precision::Bf16));
    // The bounds of tests/amp.rs (bf16 against f32 on the CPU).
    let rel = ((lb[0] - lf[0]) / lf[0]).abs();
    eprintln!(
        "GPU first-step loss: f32 {}, bf16 {}, relative {rel:e} (bound 3e-3)",
        lf[0], lb[0]
    );
    assert!(lf[0] != lb[0], "bf16 must actually round something");
    assert!(
        rel < 3e-3,
        "first-step loss: f32 {} vs bf16 {}",
        lf[0],
        lb[0]
    );
    let tail = |l: &[f32]| l[25..].iter().sum::<f32>() / 5.0;
    let (tf, tb) = (tail(&lf), tail(&lb));
    eprintln!("GPU mean of the last 5 of 30 losses: f32 {tf}, bf16 {tb} (bound 3 %)");
    assert!(tb < lb[0] * 0.85, "bf16 loss fell from {} to {tb}", lb[0]);
    assert!(((tb - tf) / tf).abs() < 0.03, "f32 {tf}, bf16 {tb}");
}

#[test]
fn every_builtin_objective_trains_on_the_gpu() {
    let Some(_) = gpu("every_builtin_objective_trains_on_the_gpu") else {
        return;
    };
    for loss in LossConfig::builtins() {
        let name = loss.name();
        let mut cfg = tiny_config();
        cfg.loss = loss.clone();
        let (mut g, mut c) = (on("cuda", cfg.clone()), on("cpu", cfg));
        let (lg, lc) = step_both(&mut g, &mut c);
        assert_near(
            lg,
            lc,
            1e-4 * lc.abs().max(1.0),
            &format!("{name}: first-step loss"),
        );
        for _ in 0..3 {
            assert!(g.step().unwrap().loss.is_finite(), "{name} on the GPU");
        }
    }
}

#[test]
fn objectives_swap_live_on_the_gpu() {
    let Some(_) = gpu("objectives_swap_live_on_the_gpu") else {
        return;
    };
    let (mut g, mut c) = (on("cuda", tiny_config()), on("cpu", tiny_config()));
    for name in ["siglip", "cloob", "clip"] {
        let loss = LossConfig::by_name(name).unwrap();
        g.swap_objective(loss.clone()).unwrap();
        c.swap_objective(loss).unwrap();
        for _ in 0..2 {
            let (lg, lc) = step_both(&mut g, &mut c);
            assert_near(
                lg,
                lc,
                1e-3 * lc.abs().max(1.0),
                &format!("after swapping to {name}"),
            );
        }
    }
}

#[test]
fn checkpoints_move_between_gpu_and_cpu_in_both_directions() {
    let Some(dev) = gpu("checkpoints_move_between_gpu_and_cpu_in_both_directions") else {
        return;
    };
    let dir = tmpdir("gpu-checkpoint");
    // Written on the GPU, resumed on the CPU (and on the GPU): the next step agrees.
    let mut g = on("cuda", tiny_config());
    for _ in 0..3 {
        g.step().unwrap();
    }
    g.save_checkpoint(&dir.join("from-gpu")).unwrap();
    let mut on_cpu = Trainer::resume(&dir.join("from-gpu"), Some(Device::Cpu)).unwrap();
    assert!(matches!(on_cpu.device(), Device::Cpu));
    assert_eq!(on_cpu.completed_steps(), 3);
    let (lg, lc) = step_both(&mut g, &mut on_cpu);
    assert_near(lg, lc, 1e-4, "step 4 after a GPU → CPU resume");
    // Written on the CPU, resumed on the GPU.
    on_cpu.save_checkpoint(&dir.join("from-cpu")).unwrap();
    let mut back = Trainer::resume(&dir.join("from-cpu"), Some(dev)).unwrap();
    assert!(back.device().is_cuda());
    let (lb, lc) = step_both(&mut back, &mut on_cpu);
    assert_near(lb, lc, 1e-4, "step 5 after a CPU → GPU resume");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn inspection_and_evaluation_on_the_gpu_equal_the_cpu() {
    let Some(_) = gpu("inspection_and_evaluation_on_the_gpu_equal_the_cpu") else {
        return;
    };
    let (mut g, mut c) = (on("cuda", tiny_config()), on("cpu", tiny_config()));
    for _ in 0..3 {
        g.step().unwrap();
        c.step().unwrap();
    }
    let sample = c.sample(Split::Val, 0).unwrap();
    let text = sample.captions[0].text.clone();
    let pairs = [
        (
            "attention",
            serde_json::to_value(g.attention(&sample.image, &text).unwrap()).unwrap(),
            serde_json::to_value(c.attention(&sample.image, &text).unwrap()).unwrap(),
        ),
        (
            "alignment",
            serde_json::to_value(g.align(&sample.image, &text).unwrap()).unwrap(),
            serde_json::to_value(c.align(&sample.image, &text).unwrap()).unwrap(),
        ),
        (
            "relevance",
            serde_json::to_value(g.relevance(&sample.image, &text).unwrap()).unwrap(),
            serde_json::to_value(c.relevance(&sample.image, &text).unwrap()).unwrap(),
        ),
    ];
    for (what, a, b) in pairs {
        let d = json_diff(&a, &b, what);
        eprintln!("{what}: largest |Δ| GPU vs CPU {d:e} (tolerance 1e-3)");
        assert!(d <= 1e-3, "{what} on the GPU differs from the CPU by {d:e}");
    }
    let (eg, ec) = (
        g.evaluate(Split::Val).unwrap(),
        c.evaluate(Split::Val).unwrap(),
    );
    assert_near(eg.loss.unwrap(), ec.loss.unwrap(), 1e-3, "validation loss");
    assert_near(eg.modality_gap, ec.modality_gap, 1e-4, "modality gap");
    assert_near(
        eg.image_to_text.r1,
        ec.image_to_text.r1,
        2.0 / eg.images as f32,
        "image → text R@1",
    );
}

#[test]
fn devices_finds_the_gpu_and_its_kernels_agree_with_the_cpu() {
    let Some(_) = gpu("devices_finds_the_gpu_and_its_kernels_agree_with_the_cpu") else {
        return;
    };
    let survey = workbench::devices::survey();
    eprintln!("{survey}");
    // Events name the device as the user does, with the driver's name for it.
    let named = workbench::devices::describe(&Device::new_cuda(0).unwrap());
    assert!(named.starts_with("cuda:0 ("), "{named}");
    match on("cuda", tiny_config()).started_event() {
        workbench::events::Event::RunStarted { device, .. } => assert_eq!(device, named),
        other => panic!("{other:?}"),
    }
    let devices = survey.cuda.unwrap();
    assert!(!devices.is_empty());
    for d in &devices {
        assert!(d.total_bytes > 0 && d.free_bytes <= d.total_bytes, "{d:?}");
        assert!(d.compute_capability.0 >= 5, "{d:?}");
        let c = d.check.as_ref().unwrap().as_ref().unwrap();
        assert!(c.gelu_max_diff <= 1e-5, "cuda:{}: GELU {c:?}", d.ordinal);
        assert!(
            c.matmul_max_rel_diff <= 1e-4,
            "cuda:{}: product {c:?}",
            d.ordinal
        );
    }
}

#[test]
fn a_session_on_the_gpu_steps_swaps_answers_and_forks_like_the_cpu() {
    use crate::session::{drive, losses, wait_for};
    use viz::session::{Reply, Request, Session};
    let Some(_) = gpu("a_session_on_the_gpu_steps_swaps_answers_and_forks_like_the_cpu") else {
        return;
    };
    let mut cfg = tiny_config();
    cfg.train.steps = 50;
    cfg.train.probe_every = 0;
    let script = [
        Request::Step,
        Request::Step,
        Request::Control(workbench::control::Command::Swap {
            loss: LossConfig::by_name("siglip").unwrap(),
        }),
        Request::Attention {
            split: Split::Val,
            index: 3,
        },
        Request::Step,
    ];
    // The trainer is built on this thread and trains on the session's: the CUDA context
    // follows it.
    let mut g = Session::start_on(cfg.clone(), &["cuda:0"], "gpu").unwrap();
    let mut c = Session::start_on(cfg, &["cpu"], "cpu").unwrap();
    assert!(
        g.history().device.starts_with("cuda:0"),
        "{}",
        g.history().device
    );
    let replies = drive(&mut g, &script, 3);
    drive(&mut c, &script, 3);
    assert!(
        replies
            .iter()
            .any(|r| matches!(r, Reply::Attention(a) if a.sample == (Split::Val, 3))),
        "{replies:?}"
    );
    for (step, (lg, lc)) in losses(&g).into_iter().zip(losses(&c)).enumerate() {
        assert_near(
            lg,
            lc,
            1e-3 * lc.abs().max(1.0),
            &format!("session step {}", step + 1),
        );
    }
    let m = g.history().steps.last().and_then(|s| s.device_memory);
    assert!(m.is_some_and(|m| m.used_bytes > 0), "{m:?}");
    // A fork resumes on the GPU and continues like its parent.
    g.send(Request::Fork);
    let r = wait_for(&mut g, "the fork", |_, r| !r.is_empty());
    let Reply::Forked(dir) = &r[0] else {
        panic!("{r:?}")
    };
    let mut fork = Session::resume_on(dir, &["cuda:0"], "fork").unwrap();
    drive(&mut g, &[Request::Step], 4);
    drive(&mut fork, &[Request::Step], 4);
    let (lf, lg) = (losses(&fork)[0], losses(&g)[3]);
    assert_near(
        lf,
        lg,
        1e-5 * lg.abs().max(1.0),
        "the fork's first step (GPU, both)",
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn running_out_of_gpu_memory_is_named_and_leaves_the_run_intact() {
    let Some(dev) = gpu("running_out_of_gpu_memory") else {
        return;
    };
    let mut cfg = tiny_config();
    cfg.train.batch_size = 256;
    let mut t = on("cuda", cfg);
    let before = crate::util::snapshot(&t);
    // Take all but 16 MiB of what is free: the model is on the device already, its first
    // step's activations are not.
    let free = workbench::devices::memory(&dev)
        .unwrap()
        .map(|m| m.total_bytes - m.used_bytes)
        .unwrap();
    let hog_floats = (free.saturating_sub(16 << 20) / 4) as usize;
    let hog = candle_core::Tensor::zeros(hog_floats, candle_core::DType::F32, &dev).unwrap();
    let e = t.step().unwrap_err();
    eprintln!("out of memory, as the run reports it: {e}");
    let workbench::Error::OutOfMemory { during, memory, .. } = &e else {
        panic!("expected OutOfMemory, got {e}")
    };
    assert_eq!(during, "step 1");
    assert!(memory.contains("GiB in use"), "{memory}");
    assert!(
        e.to_string()
            .contains("train.micro_batches (now 1) to keep the batch of 256"),
        "{e}"
    );
    assert_eq!(t.completed_steps(), 0);
    assert!(crate::util::snapshot(&t) == before, "parameters untouched");
    // With the memory back, the same run takes the same batch and trains.
    drop(hog);
    let s = t.step().unwrap();
    assert_eq!(s.step, 1);
    let mut c = on("cpu", {
        let mut cfg = tiny_config();
        cfg.train.batch_size = 256;
        cfg
    });
    assert_near(
        s.loss,
        c.step().unwrap().loss,
        1e-4,
        "the first step after the failure",
    );
}

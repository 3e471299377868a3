//! Training: overfitting, determinism, checkpoints, resume, non-finite values, user objectives.

use crate::util::{CUDA_OUT_OF_MEMORY, FailsAtCall, snapshot, tiny_config, tmpdir};
use candle_core::{Tensor, Var};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use workbench::Error;
use workbench::events::Event;
use workbench::loss::{LossInputs, LossOutput, Objective};
use workbench::train::{FitOutcome, Trainer};

fn losses(t: &mut Trainer, n: usize) -> Vec<f32> {
    (0..n).map(|_| t.step().unwrap().loss).collect()
}

#[test]
fn overfitting_one_batch_drives_the_loss_near_zero() {
    let mut cfg = tiny_config();
    cfg.train.lr = 3e-3;
    cfg.train.steps = 300;
    cfg.train.warmup_steps = 10;
    cfg.train.weight_decay = 0.0;
    let mut t = Trainer::new(cfg).unwrap();
    let batch = t.next_batch().unwrap();
    let first = t.step_on(&batch).unwrap().loss;
    let mut last = first;
    for _ in 0..250 {
        last = t.step_on(&batch).unwrap().loss;
    }
    assert!(
        first > 2.0,
        "a random model starts near ln(16) ≈ 2.77, got {first}"
    );
    assert!(last < 0.05, "loss after overfitting one batch: {last}");
}

#[test]
fn same_seed_gives_the_same_loss_sequence() {
    let a = losses(&mut Trainer::new(tiny_config()).unwrap(), 8);
    let b = losses(&mut Trainer::new(tiny_config()).unwrap(), 8);
    assert_eq!(a, b, "bit-identical on CPU");
    let mut cfg = tiny_config();
    cfg.train.seed = 1;
    assert_ne!(a, losses(&mut Trainer::new(cfg).unwrap(), 8));
}

#[test]
fn checkpoint_round_trip_restores_everything() {
    let dir = tmpdir("roundtrip");
    let mut t = Trainer::new(tiny_config()).unwrap();
    losses(&mut t, 3);
    t.save_checkpoint(&dir.join("checkpoint")).unwrap();
    let r = Trainer::resume(&dir, None).unwrap();
    assert_eq!(r.completed_steps(), 3);
    assert_eq!(snapshot(&r), snapshot(&t));
    assert_eq!(r.config(), t.config());
    assert_eq!(
        r.tokenizer().to_json().unwrap(),
        t.tokenizer().to_json().unwrap()
    );
    // The weights file is plain safetensors with every parameter by name.
    let st = workbench::checkpoint::load_tensors(
        &dir.join("checkpoint/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(st.len(), t.params().all().len());
    assert!(st.contains_key("loss.clip.logit_scale"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn resume_after_n_steps_equals_the_uninterrupted_run() {
    let dir = tmpdir("resume");
    let mut straight = Trainer::new(tiny_config()).unwrap();
    let all = losses(&mut straight, 10);
    let mut first = Trainer::new(tiny_config()).unwrap();
    let head = losses(&mut first, 4);
    first.save_checkpoint(&dir.join("checkpoint")).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir.join("checkpoint"), None).unwrap();
    let tail = losses(&mut resumed, 6);
    assert_eq!([head, tail].concat(), all, "bit-identical continuation");
    assert_eq!(snapshot(&resumed), snapshot(&straight));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fit_reports_events_evaluates_and_checkpoints() {
    let dir = tmpdir("fit");
    let mut cfg = tiny_config();
    cfg.train.steps = 12;
    cfg.train.eval_every = 5;
    cfg.train.checkpoint_every = 6;
    let mut t = Trainer::new(cfg).unwrap();
    t.set_run_dir(&dir);
    let mut events = Vec::new();
    let outcome = t.fit(|e| {
        events.push(e.clone());
        ControlFlow::Continue(())
    });
    assert_eq!(outcome.unwrap(), FitOutcome::Finished);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Event::RunStarted { .. } => "start",
            Event::Step(_) => "step",
            Event::Eval(_) => "eval",
            Event::Checkpoint { .. } => "ckpt",
            Event::Paused { .. } => "paused",
            Event::RunFinished { .. } => "finished",
            Event::Probe(_) => "probe",
            Event::ObjectiveSwapped { .. }
            | Event::Edited { .. }
            | Event::CommandRejected { .. } => "control",
        })
        .collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert_eq!(kinds.iter().filter(|k| **k == "control").count(), 0);
    assert_eq!(
        kinds.iter().filter(|k| **k == "probe").count(),
        1,
        "at the start (probe_every = 50 > 12 steps): {kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "step").count(), 12);
    assert_eq!(
        kinds.iter().filter(|k| **k == "eval").count(),
        3,
        "at 5, 10 and the end: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "ckpt").count(),
        2,
        "at 6 and the end"
    );
    assert_eq!(kinds.last(), Some(&"finished"));
    let Some(Event::Eval(r)) = events.iter().rev().find(|e| matches!(e, Event::Eval(_))) else {
        panic!()
    };
    assert_eq!((r.images, r.captions), (64, 192));
    let z = r.zero_shot.as_ref().unwrap();
    assert_eq!((z.images, z.classes), (72, 36));
    assert!(r.modality_gap > 0.0 && r.modality_gap < 2.0);
    // Events round-trip through JSON.
    for e in &events {
        let back: Event = serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap();
        assert_eq!(&back, e);
    }
    assert!(dir.join("checkpoint/state.json").is_file());
    // Stopping from the callback pauses with the state intact and can continue.
    let mut cfg = tiny_config();
    cfg.train.steps = 10;
    let mut t = Trainer::new(cfg).unwrap();
    let out = t.fit(|e| {
        if matches!(e, Event::Step(s) if s.step == 3) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(out.unwrap(), FitOutcome::Paused(_)));
    assert_eq!(t.completed_steps(), 3);
    assert_eq!(
        t.fit(|_| ControlFlow::Continue(())).unwrap(),
        FitOutcome::Finished
    );
    assert_eq!(t.completed_steps(), 10);
    let _ = std::fs::remove_dir_all(dir);
}

/// A user-defined objective, declared here and not in the library: InfoNCE with a fixed
/// temperature of 0.1, plus a term that turns NaN on request.
struct FixedTemperature {
    poison_at_call: Option<usize>,
    calls: AtomicUsize,
}

impl Objective for FixedTemperature {
    fn name(&self) -> &'static str {
        "fixed_temperature"
    }
    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let logits = (x.image.matmul(&x.text.t()?)? * 10.0)?;
        let (i2t, t2i) = workbench::loss::symmetric_cross_entropy(&logits)?;
        let mut loss = ((&i2t + &t2i)? / 2.0)?;
        if self.poison_at_call == Some(n) {
            loss = (loss * f64::NAN)?;
        }
        Ok(LossOutput {
            terms: vec![("contrastive".into(), loss.clone())],
            loss,
        })
    }
    fn parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

#[test]
fn a_user_defined_objective_trains_through_the_same_api() {
    let mut t = Trainer::new(tiny_config()).unwrap();
    t.set_objective(Box::new(FixedTemperature {
        poison_at_call: None,
        calls: AtomicUsize::new(0),
    }))
    .unwrap();
    let batch = t.next_batch().unwrap();
    let first = t.step_on(&batch).unwrap();
    assert!(first.terms.contains_key("contrastive"));
    let mut last = first.loss;
    for _ in 0..40 {
        last = t.step_on(&batch).unwrap().loss;
    }
    assert!(last < first.loss * 0.5, "{} -> {last}", first.loss);
}

#[test]
fn a_non_finite_loss_stops_the_update_and_names_step_and_term() {
    let mut t = Trainer::new(tiny_config()).unwrap();
    t.set_objective(Box::new(FixedTemperature {
        poison_at_call: Some(3),
        calls: AtomicUsize::new(0),
    }))
    .unwrap();
    losses(&mut t, 3);
    let before = snapshot(&t);
    let err = t.step().unwrap_err();
    match &err {
        Error::NonFinite { step, term } => assert_eq!((*step, term.as_str()), (4, "contrastive")),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("step 4") && err.to_string().contains("contrastive"));
    assert_eq!(snapshot(&t), before, "parameters untouched");
    assert_eq!(t.completed_steps(), 3);
    // The batch that failed is served again (the loader rewound), and training can go on.
    let again = t.step().unwrap();
    assert_eq!(again.step, 4);
}

#[test]
fn fit_pauses_on_non_finite_values_with_a_checkpoint_of_the_last_good_state() {
    let dir = tmpdir("nan");
    let mut t = Trainer::new(tiny_config()).unwrap();
    t.set_run_dir(&dir);
    t.set_objective(Box::new(FixedTemperature {
        poison_at_call: Some(5),
        calls: AtomicUsize::new(0),
    }))
    .unwrap();
    let mut paused = None;
    let out = t.fit(|e| {
        if let Event::Paused { step, reason } = e {
            paused = Some((*step, reason.clone()));
        }
        ControlFlow::Continue(())
    });
    let FitOutcome::Paused(reason) = out.unwrap() else {
        panic!("expected a pause")
    };
    assert!(
        reason.contains("step 6") && reason.contains("contrastive"),
        "{reason}"
    );
    assert_eq!(paused.unwrap().0, 5);
    let (_, state) = Trainer::read_state(&dir).unwrap();
    assert_eq!(state.step, 5);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gradients_of_inactive_parameters_are_not_applied() {
    // Freezing the temperature removes it from the optimizer: it keeps its value.
    let mut cfg = tiny_config();
    cfg.loss = workbench::loss::LossConfig::Clip(workbench::loss::ClipLossConfig {
        temperature: workbench::loss::TemperatureConfig {
            learnable: false,
            ..Default::default()
        },
    });
    let mut t = Trainer::new(cfg).unwrap();
    let before = t
        .params()
        .get("loss.clip.logit_scale")
        .unwrap()
        .as_tensor()
        .to_scalar::<f32>()
        .unwrap();
    losses(&mut t, 3);
    let after = t
        .params()
        .get("loss.clip.logit_scale")
        .unwrap()
        .as_tensor()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(before, after);
    let _ = Tensor::new(0f32, t.device()).unwrap();
}

#[test]
fn a_short_run_learns_far_above_chance() {
    let mut cfg = tiny_config();
    cfg.train.steps = 150;
    cfg.train.batch_size = 32;
    cfg.train.lr = 3e-3;
    cfg.train.warmup_steps = 10;
    let mut t = Trainer::new(cfg).unwrap();
    let before = t.evaluate(workbench::data::Split::Val).unwrap();
    for _ in 0..150 {
        t.step().unwrap();
    }
    let after = t.evaluate(workbench::data::Split::Val).unwrap();
    // 64 images and 192 captions: chance R@1 is a few percent.
    assert!(before.image_to_text.r1 < 0.15, "{:?}", before.image_to_text);
    assert!(after.image_to_text.r1 > 0.3, "{:?}", after.image_to_text);
    assert!(after.text_to_image.r5 > 0.6, "{:?}", after.text_to_image);
    let (l0, l1) = (before.loss.unwrap(), after.loss.unwrap());
    assert!(l1 < l0 * 0.7, "{l0} -> {l1}");
    let zs = |r: &workbench::events::EvalReport| r.zero_shot.as_ref().unwrap().accuracy;
    assert!(
        zs(&after) > zs(&before) + 0.1,
        "{} -> {}",
        zs(&before),
        zs(&after)
    );
}

#[test]
fn a_device_out_of_memory_names_the_step_and_what_to_lower_and_changes_nothing() {
    let mut t = Trainer::new(tiny_config()).unwrap();
    t.set_objective(FailsAtCall::boxed(3, CUDA_OUT_OF_MEMORY))
        .unwrap();
    losses(&mut t, 3);
    let before = snapshot(&t);
    let err = t.step().unwrap_err();
    let Error::OutOfMemory {
        device,
        during,
        memory,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((device.as_str(), during.as_str()), ("cpu", "step 4"));
    assert_eq!(memory, "", "the CPU reports no device memory");
    let msg = err.to_string();
    assert!(
        msg.contains("train.micro_batches (now 1) to keep the batch of 16") && msg.contains("bf16"),
        "{msg}"
    );
    assert_eq!(snapshot(&t), before, "parameters untouched");
    assert_eq!(t.completed_steps(), 3);
    // Other errors are left as they are.
    t.set_objective(FailsAtCall::boxed(0, "the objective fails"))
        .unwrap();
    let other = t.step().unwrap_err();
    assert!(matches!(other, Error::Candle(_)), "{other}");
    // The failed batch is served again, and training goes on.
    assert_eq!(t.step().unwrap().step, 4);
}

#[test]
fn a_run_that_fails_keeps_its_last_good_state_in_a_checkpoint() {
    let dir = tmpdir("fails-mid-run");
    let mut cfg = tiny_config();
    cfg.train.steps = 10;
    cfg.train.checkpoint_every = 0;
    let mut t = Trainer::new(cfg.clone()).unwrap();
    t.set_run_dir(&dir);
    t.set_objective(FailsAtCall::boxed(
        5,
        "the objective fails at its sixth call",
    ))
    .unwrap();
    let mut saved = None;
    let e = t
        .fit(|e| {
            if let Event::Checkpoint { step, .. } = e {
                saved = Some(*step);
            }
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(e.to_string().contains("sixth call"), "{e}");
    assert_eq!(saved, Some(5));
    let (_, state) = Trainer::read_state(&dir).unwrap();
    assert_eq!(state.step, 5);
    assert_eq!(state.objective, "fails_at_call");
    let _ = std::fs::remove_dir_all(&dir);

    // Two ranks, the second failing inside its sixth step while rank 0 waits for it in a
    // collective: the group ends with rank 1's error, and rank 0 saves step 5.
    let e = workbench::parallel::DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .fit_with(
            |rank, _| {
                let mut t = Trainer::new(cfg.clone())?;
                if rank == 0 {
                    t.set_run_dir(&dir);
                    t.set_objective(FailsAtCall::boxed(usize::MAX, ""))?;
                } else {
                    t.set_objective(FailsAtCall::boxed(5, "rank 1's objective fails"))?;
                }
                Ok(t)
            },
            |_| ControlFlow::Continue(()),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rank 1's objective fails"), "{e}");
    let (_, state) = Trainer::read_state(&dir).unwrap();
    assert_eq!(state.step, 5);
    let _ = std::fs::remove_dir_all(&dir);
}

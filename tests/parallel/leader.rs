//! [`Leader`]: the data-parallel group stepped tick by tick, as the desktop app and notebooks
//! step it, with rank 0 answering inspections between ticks. Held against one process sent
//! the same commands at the same steps (the bounds and the script of `equivalence.rs`), and
//! against the errors a group must survive.

use super::equivalence::{
    LOSS_RTOL, PARAM_ATOL, command_log, config, max_param_diff, script, scripted_single_run,
};
use crate::util::{snapshot, tiny_config, tmpdir};
use std::ops::ControlFlow;
use workbench::data::Split;
use workbench::events::Event;
use workbench::parallel::{DataParallel, Leader};
use workbench::train::{Tick, Trainer};

fn losses(events: &[Event]) -> Vec<f32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s.loss),
            _ => None,
        })
        .collect()
}

/// Every inspection the session offers, asked of rank 0 between two ticks.
fn inspect(t: &mut Trainer) {
    let s = t.sample(Split::Val, 1).unwrap();
    let text = &s.captions[0].text;
    t.attention(&s.image, text).unwrap();
    t.align(&s.image, text).unwrap();
    t.relevance(&s.image, text).unwrap();
    t.analyse_gap(Split::Val, &[0.0, 0.5]).unwrap();
    t.batch_similarity(Split::Val, 8).unwrap();
    t.pointing_game(Split::Val, 4).unwrap();
    t.evaluate(Split::Val).unwrap();
    t.probe().unwrap();
}

/// A group on `devices`, led tick by tick with the script's commands and every inspection
/// between ticks, against one process on `devices[0]` sent the same commands at the same
/// steps: the events and losses must agree (to [`LOSS_RTOL`]) and the ranks be identical.
/// Returns how far rank 0's parameters are from the single process's.
pub(super) fn led_against_one_process(devices: &[&str]) -> f32 {
    let mut cfg = config(r#"kind = "clip""#);
    cfg.train.steps = 5;
    cfg.train.device = devices[0].to_string();
    let (single_events, single) = scripted_single_run(&cfg);

    let mut group = DataParallel::new(devices)
        .unwrap()
        .lead(move |_, device| {
            let mut cfg = cfg.clone();
            cfg.train.device = device.to_string();
            Trainer::new(cfg)
        })
        .unwrap();
    assert_eq!(group.world_size(), devices.len());
    let mut events = Vec::new();
    let mut record = |e: &Event| {
        events.push(e.clone());
        ControlFlow::Continue(())
    };
    for step in 1..=5 {
        assert!(matches!(group.tick(&mut record).unwrap(), Tick::Stepped));
        inspect(group.trainer_mut());
        for command in script(step) {
            group.command(&command, &mut record).unwrap();
        }
    }
    let log = command_log(&events);
    assert_eq!(log, command_log(&single_events));
    assert_eq!(log.len(), 5, "{log:?}");
    let (a, b) = (losses(&events), losses(&single_events));
    assert_eq!(a.len(), 5);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= LOSS_RTOL * y.abs(), "{a:?} vs {b:?}");
    }
    let ranks = group.into_trainers().unwrap();
    let snaps: Vec<_> = ranks.iter().map(snapshot).collect();
    for (r, snap) in snaps.iter().enumerate() {
        assert!(*snap == snaps[0], "rank {r} differs from rank 0");
    }
    for t in &ranks {
        assert_eq!(t.completed_steps(), 5);
        assert_eq!(t.objective().name(), "hard_negatives");
        assert!(t.frozen().contains("model.vision"));
    }
    max_param_diff(&snaps[0], &snapshot(&single))
}

#[test]
fn a_led_group_trains_like_one_process_with_inspections_between_ticks() {
    let dp = led_against_one_process(&["cpu", "cpu"]);
    assert!(dp <= PARAM_ATOL, "parameters differ by {dp:e}");
    let group = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .lead(|_, _| Trainer::new(tiny_config()))
        .unwrap();
    let Event::RunStarted { device, .. } = group.started_event() else {
        panic!("not a run_started event");
    };
    assert_eq!(device, "2 ranks: cpu, cpu");
}

#[test]
fn a_solo_leader_is_a_plain_trainer() {
    let cfg = config(r#"kind = "siglip""#);
    let mut plain = Trainer::new(cfg.clone()).unwrap();
    let mut solo = Leader::solo(Trainer::new(cfg).unwrap());
    assert_eq!(solo.world_size(), 1);
    assert_eq!(solo.devices(), ["cpu"]);
    for _ in 0..3 {
        plain.tick(|_| ControlFlow::Continue(())).unwrap();
        solo.tick(|_| ControlFlow::Continue(())).unwrap();
    }
    let solo = solo.into_trainers().unwrap();
    assert!(snapshot(&solo[0]) == snapshot(&plain));
}

#[test]
fn a_rank_that_fails_to_build_fails_the_group_with_its_error() {
    let cfg = tiny_config();
    let e = DataParallel::new(&["cpu", "cpu", "cpu", "cpu"])
        .unwrap()
        .lead(move |rank, _| {
            let mut c = cfg.clone();
            if rank == 2 {
                c.train.lr = -1.0;
            }
            Trainer::new(c)
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("train.lr"), "{e}");
}

#[test]
fn a_rank_that_fails_mid_run_ends_the_group_and_rank_0_keeps_its_state() {
    // Rank 1 reads a folder of broken images; its first batch fails.
    let dir = tmpdir("leader-bad-batch");
    let configs = [
        super::folder_config(&dir.join("good"), 24, false),
        super::folder_config(&dir.join("bad"), 24, true),
    ];
    let mut group = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .lead(move |rank, _| Trainer::new(configs[rank].clone()))
        .unwrap();
    let e = group
        .tick(|_| ControlFlow::Continue(()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(".png") && !e.contains("left the group"),
        "the cause: {e}"
    );
    assert!(group.broken().is_some_and(|b| b.contains(".png")));
    // Later ticks and commands say why they cannot run, and change nothing.
    let again = group
        .tick(|_| ControlFlow::Continue(()))
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("group stopped") && again.contains(".png"),
        "{again}"
    );
    let stop = workbench::control::Command::SetTemperature {
        objective: "clip".into(),
        tau: 0.1,
    };
    assert!(group.command(&stop, |_| ControlFlow::Continue(())).is_err());
    // Rank 0 still answers, and its last good state can be checkpointed (a fork).
    assert_eq!(group.trainer().completed_steps(), 0);
    group.trainer().sample(Split::Val, 0).unwrap();
    group.trainer().save_checkpoint(&dir.join("ck")).unwrap();
    assert!(Trainer::resume(&dir.join("ck"), None).is_ok());
    assert!(group.into_trainers().is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_rank_whose_build_panics_is_an_error_not_a_hang() {
    for bad in [0, 1] {
        let cfg = tiny_config();
        let build = move |rank: usize, _: &str| {
            assert!(rank != bad, "a deliberate panic building rank {rank}");
            Trainer::new(cfg.clone())
        };
        let ddp = DataParallel::new(&["cpu", "cpu"]).unwrap();
        let e = ddp.lead(build.clone()).err().unwrap().to_string();
        assert!(
            e.contains(&format!("rank {bad} (cpu): building its trainer panicked")),
            "{e}"
        );
        let e = ddp
            .fit_with(build, |_| ControlFlow::Continue(()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("panicked"), "{e}");
    }
}

/// A user's objective (a CLIP loss at a fixed temperature) that panics at its third forward
/// pass when `.0` (on one rank only: a bug that shows on one shard).
struct PanicsAtStep3(bool, std::sync::atomic::AtomicUsize);

impl workbench::loss::Objective for PanicsAtStep3 {
    fn name(&self) -> &'static str {
        "panics_at_step_3"
    }
    fn forward(
        &self,
        inputs: &workbench::loss::LossInputs<'_>,
    ) -> candle_core::Result<workbench::loss::LossOutput> {
        let calls = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(!self.0 || calls < 2, "a deliberate panic in the objective");
        let logits = (inputs.image.matmul(&inputs.text.t()?)? * 10.0)?;
        let (i2t, t2i) = workbench::loss::symmetric_cross_entropy(&logits)?;
        Ok(workbench::loss::LossOutput {
            loss: ((i2t + t2i)? * 0.5)?,
            terms: Vec::new(),
        })
    }
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}

#[test]
fn a_rank_that_panics_mid_run_ends_the_group_with_an_error() {
    let cfg = tiny_config();
    let build = move |rank: usize, _: &str| {
        let mut t = Trainer::new(cfg.clone())?;
        t.set_objective(Box::new(PanicsAtStep3(rank == 1, 0.into())))?;
        Ok(t)
    };
    let mut group = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .lead(build.clone())
        .unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(
            group
                .tick(|_| ControlFlow::Continue(()))
                .map_err(|e| e.to_string()),
        );
    }
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok(), "{outcomes:?}");
    let e = outcomes[2].as_ref().unwrap_err();
    assert!(e.contains("rank 1 panicked"), "{e}");
    assert_eq!(group.trainer().completed_steps(), 2);
    // The same through the loop of fit_live, whose ranks run on scoped threads.
    let e = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .fit_with(build, |_| ControlFlow::Continue(()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rank 1 panicked"), "{e}");
}

#[test]
fn a_leader_of_one_rank_reports_a_failed_step_and_goes_on() {
    // A step that runs out of device memory (the driver's words, from the objective), alone:
    // nobody waits for this rank, and a failed step changes nothing, so the leader reports
    // the error and the next tick trains the same batch.
    let mut t = Trainer::new(tiny_config()).unwrap();
    t.set_objective(crate::util::FailsAtCall::boxed(
        1,
        crate::util::CUDA_OUT_OF_MEMORY,
    ))
    .unwrap();
    let mut group = workbench::parallel::Leader::solo(t);
    group.tick(|_| ControlFlow::Continue(())).unwrap();
    let before = crate::util::snapshot(group.trainer());
    let e = group.tick(|_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(e, workbench::Error::OutOfMemory { .. }), "{e}");
    assert!(group.broken().is_none());
    assert!(crate::util::snapshot(group.trainer()) == before);
    // The remedy it names, as a live command, then the step again.
    let set = workbench::control::Command::SetMicroBatches { micro_batches: 4 };
    group.command(&set, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(group.trainer().config().train.micro_batches, 4);
    group.tick(|_| ControlFlow::Continue(())).unwrap();
    assert_eq!(group.trainer().completed_steps(), 2);
}

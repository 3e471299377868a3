//! Live control: swapping objectives mid-run, live edits, the probe batch, resume after a swap.

use crate::util::{snapshot, tiny_config, tmpdir};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::mpsc;
use workbench::config::RunConfig;
use workbench::control::Command;
use workbench::data::{Extras, Loader, PairDataset, Shapes, Split, Tokenizer};
use workbench::events::Event;
use workbench::loss::{LossConfig, composite::SumConfig, composite::SumPart};
use workbench::rng::Rng;
use workbench::train::{FitOutcome, Trainer};

/// The objective of each 10-step segment of the 200-step run: every built-in in a seeded random
/// order, then more of them in another random order.
fn schedule() -> Vec<LossConfig> {
    let mut rng = Rng::new(2024);
    let mut out = Vec::new();
    while out.len() < 20 {
        let mut all = LossConfig::builtins();
        rng.shuffle(&mut all);
        out.extend(all);
    }
    out.truncate(20);
    out
}

fn swap_config() -> RunConfig {
    let mut cfg = tiny_config();
    cfg.train.steps = 200;
    cfg.train.warmup_steps = 10;
    cfg.train.probe_every = 50;
    cfg.train.probe_size = 32;
    cfg.loss = schedule()[0].clone();
    cfg
}

/// Runs `fit_with`, swapping to the next objective of the schedule after every 10th step, until
/// the run ends or `stop_at` steps are done. Returns every event.
fn run_swapping(trainer: &mut Trainer, stop_at: Option<usize>) -> (FitOutcome, Vec<Event>) {
    let plan = schedule();
    let (tx, rx) = mpsc::channel();
    let mut events = Vec::new();
    let outcome = trainer
        .fit_with(&rx, |e| {
            events.push(e.clone());
            if let Event::Step(s) = e {
                if s.step % 10 == 0 && s.step < 200 {
                    tx.send(Command::Swap {
                        loss: plan[s.step / 10].clone(),
                    })
                    .unwrap();
                }
                if Some(s.step) == stop_at {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    (outcome, events)
}

fn step_losses(events: &[Event]) -> BTreeMap<usize, f32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some((s.step, s.loss)),
            _ => None,
        })
        .collect()
}

#[test]
fn swapping_through_every_builtin_every_10_steps_trains_and_resumes_bit_identically() {
    let plan = schedule();
    let names: Vec<&str> = plan.iter().map(LossConfig::name).collect();
    for b in LossConfig::builtins() {
        assert!(
            names.contains(&b.name()),
            "{} missing from the schedule",
            b.name()
        );
    }

    // The uninterrupted run.
    let mut straight = Trainer::new(swap_config()).unwrap();
    let (outcome, events) = run_swapping(&mut straight, None);
    assert_eq!(outcome, FitOutcome::Finished);
    let all = step_losses(&events);
    assert_eq!(all.len(), 200);
    for (step, loss) in &all {
        assert!(loss.is_finite(), "step {step}: loss {loss}");
    }
    for e in &events {
        if let Event::Step(s) = e {
            assert_eq!(
                s.objective,
                plan[(s.step - 1) / 10].name(),
                "step {}",
                s.step
            );
            assert!(s.terms.values().all(|v| v.is_finite()), "{s:?}");
        }
    }
    let swaps: Vec<(usize, String, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ObjectiveSwapped { step, from, to, .. } => {
                Some((*step, from.clone(), to.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(swaps.len(), 19, "{swaps:?}");
    for (k, (step, from, to)) in swaps.iter().enumerate() {
        assert_eq!(*step, 10 * (k + 1));
        assert_eq!(from, plan[k].name());
        assert_eq!(to, plan[k + 1].name());
    }
    // Every swap is followed by a probe at the same step, and probes are comparable numbers.
    for (step, ..) in &swaps {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Probe(p) if p.step == *step))
        );
    }
    let probes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Probe(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert!(
        probes
            .iter()
            .all(|p| p.info_nce.is_finite() && p.pairs == 32)
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Paused { .. } | Event::CommandRejected { .. }))
    );

    // Stop at step 105 (after the swap at 100), checkpoint, resume, finish: bit-identical.
    let dir = tmpdir("swap-resume");
    let mut first = Trainer::new(swap_config()).unwrap();
    first.set_run_dir(&dir);
    let (outcome, head) = run_swapping(&mut first, Some(105));
    assert!(matches!(outcome, FitOutcome::Paused(_)));
    drop(first);
    let (_, state) = Trainer::read_state(&dir).unwrap();
    assert_eq!(state.step, 105);
    assert_eq!(state.objective, plan[10].name());
    let mut resumed = Trainer::resume(&dir, None).unwrap();
    assert_eq!(resumed.objective().name(), plan[10].name());
    let (outcome, tail) = run_swapping(&mut resumed, None);
    assert_eq!(outcome, FitOutcome::Finished);
    let mut joined = step_losses(&head);
    joined.extend(step_losses(&tail));
    assert_eq!(
        joined, all,
        "resumed run differs from the uninterrupted one"
    );
    assert_eq!(snapshot(&resumed), snapshot(&straight));
    let _ = std::fs::remove_dir_all(dir);
}

fn value(t: &Trainer, name: &str) -> f32 {
    t.params()
        .get(name)
        .unwrap()
        .as_tensor()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn swapping_back_restores_the_objectives_own_parameters_and_never_touches_the_model() {
    let mut t = Trainer::new(tiny_config()).unwrap();
    for _ in 0..3 {
        t.step().unwrap();
    }
    let clip_scale = value(&t, "loss.clip.logit_scale");
    assert_ne!(clip_scale, (1.0f32 / 0.07).ln(), "the temperature trained");
    let model: Vec<_> = t
        .params()
        .with_prefix("model.")
        .into_iter()
        .map(|p| p.0)
        .collect();
    let event = t
        .swap_objective(LossConfig::by_name("siglip").unwrap())
        .unwrap();
    let Event::ObjectiveSwapped {
        from,
        to,
        params,
        restored,
        config,
        ..
    } = event
    else {
        panic!("{event:?}")
    };
    assert_eq!((from.as_str(), to.as_str()), ("clip", "siglip"));
    assert!(restored.is_empty());
    assert!(config.is_some());
    assert_eq!(
        params.keys().collect::<Vec<_>>(),
        ["loss.siglip.logit_bias", "loss.siglip.logit_scale"]
    );
    // Swapped in mid-run, the fresh bias is set from the probe logits, not left at −10.
    assert!(params["loss.siglip.logit_bias"] > -10.0 + 0.1, "{params:?}");
    for _ in 0..3 {
        t.step().unwrap();
    }
    assert_eq!(
        value(&t, "loss.clip.logit_scale"),
        clip_scale,
        "outgoing parameters are kept"
    );
    let siglip_bias = value(&t, "loss.siglip.logit_bias");
    let Event::ObjectiveSwapped { restored, .. } = t
        .swap_objective(LossConfig::by_name("clip").unwrap())
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(restored, ["loss.clip.logit_scale"]);
    assert_eq!(value(&t, "loss.clip.logit_scale"), clip_scale);
    let Event::ObjectiveSwapped { params, .. } = t
        .swap_objective(LossConfig::by_name("siglip").unwrap())
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        params["loss.siglip.logit_bias"], siglip_bias,
        "a restored bias is left alone"
    );
    let model_after: Vec<_> = t
        .params()
        .with_prefix("model.")
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(model, model_after, "swapping never changes the model");
}

#[test]
fn live_edits_apply_between_steps_and_bad_ones_are_rejected_without_stopping() {
    let dir = tmpdir("edits");
    let mut cfg = tiny_config();
    cfg.train.steps = 12;
    cfg.loss = LossConfig::Sum(SumConfig {
        parts: vec![
            SumPart {
                weight: 1.0,
                loss: LossConfig::by_name("clip").unwrap(),
            },
            SumPart {
                weight: 0.5,
                loss: LossConfig::by_name("filip").unwrap(),
            },
        ],
    });
    let mut t = Trainer::new(cfg).unwrap();
    t.set_run_dir(&dir);
    let (tx, rx) = mpsc::channel();
    let commands = [
        Command::SetWeight {
            part: "filip".into(),
            weight: 0.0,
        },
        Command::SetTemperature {
            objective: "clip".into(),
            tau: 0.05,
        },
        Command::Freeze {
            prefix: "loss.clip.logit_scale".into(),
            frozen: true,
        },
        Command::Clamp {
            prefix: "loss.filip.logit_scale".into(),
            range: Some([1.0, 2.0]),
        },
        Command::SetWeight {
            part: "siglip".into(),
            weight: 1.0,
        },
        Command::SetParam {
            name: "model.vision.class_token".into(),
            value: 0.0,
        },
        Command::Freeze {
            prefix: "no.such".into(),
            frozen: true,
        },
    ];
    for c in &commands {
        tx.send(c.clone()).unwrap();
    }
    let mut events = Vec::new();
    let mut sent_stop = false;
    let outcome = t
        .fit_with(&rx, |e| {
            events.push(e.clone());
            if matches!(e, Event::Step(s) if s.step == 4) && !sent_stop {
                tx.send(Command::Stop).unwrap();
                sent_stop = true;
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(outcome, FitOutcome::Paused("stopped by a command".into()));
    assert_eq!(t.completed_steps(), 4);
    let edited = events
        .iter()
        .filter(|e| matches!(e, Event::Edited { .. }))
        .count();
    let rejected: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::CommandRejected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(edited, 4, "{events:?}");
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(rejected[0].contains("siglip"), "{rejected:?}");
    assert!(rejected[1].contains("loss.*"), "{rejected:?}");
    assert!(rejected[2].contains("no.such"), "{rejected:?}");
    // The frozen temperature kept its set value through four updates; the clamp held.
    assert!((value(&t, "loss.clip.logit_scale") - (1.0f32 / 0.05).ln()).abs() < 1e-6);
    let filip = value(&t, "loss.filip.logit_scale");
    assert!((1.0..=2.0).contains(&filip), "{filip}");
    // The weight edit is part of the configuration, so the checkpoint has it; and so do the
    // freeze and the clamp.
    let (_, state) = Trainer::read_state(&dir).unwrap();
    let LossConfig::Sum(sum) = &state.config.loss else {
        panic!()
    };
    assert_eq!(sum.parts[1].weight, 0.0);
    assert!(state.frozen.contains("loss.clip.logit_scale"));
    assert_eq!(state.clamps["loss.filip.logit_scale"], [1.0, 2.0]);
    let resumed = Trainer::resume(&dir, None).unwrap();
    assert_eq!(resumed.frozen(), t.frozen());
    assert_eq!(resumed.clamps(), t.clamps());
    assert!(
        resumed
            .trainable()
            .iter()
            .all(|(n, _)| n != "loss.clip.logit_scale"),
        "frozen parameters are not trained"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_background_run_takes_commands_and_hands_the_trainer_back() {
    let mut cfg = tiny_config();
    cfg.train.steps = 30;
    let run = Trainer::new(cfg).unwrap().spawn();
    let mut seen_swap = false;
    for e in run.events() {
        if let Event::Step(s) = &e
            && s.step == 5
        {
            assert!(run.send(Command::Swap {
                loss: LossConfig::by_name("cloob").unwrap()
            }));
        }
        if let Event::ObjectiveSwapped { to, .. } = &e {
            assert_eq!(to, "cloob");
            seen_swap = true;
        }
    }
    assert!(seen_swap);
    let (trainer, outcome) = run.join().unwrap();
    assert_eq!(outcome.unwrap(), FitOutcome::Finished);
    assert_eq!(trainer.completed_steps(), 30);
    assert_eq!(trainer.objective().name(), "cloob");
    assert_eq!(trainer.config().loss.name(), "cloob");
}

#[test]
fn the_loader_adds_hard_negatives_groups_and_second_views_without_changing_the_batch() {
    let cfg = tiny_config();
    let data: std::sync::Arc<dyn PairDataset> =
        std::sync::Arc::new(Shapes::new(cfg.data.clone()).unwrap());
    let tok = std::sync::Arc::new(
        Tokenizer::fit_word_level(&data.corpus(), cfg.tokenizer.context_length).unwrap(),
    );
    let loader = || {
        Loader::new(
            data.clone(),
            tok.clone(),
            8,
            3,
            workbench::data::loader::AugmentConfig::default(),
            candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let plain = loader().next_batch().unwrap();
    let rich = loader()
        .next_batch_with(Extras {
            hard_negatives: 3,
            second_views: true,
        })
        .unwrap();
    assert_eq!(plain.captions, rich.captions);
    assert_eq!(
        plain
            .images
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        rich.images.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert_eq!(plain.groups, rich.groups);
    let negatives = rich.negatives.unwrap();
    assert_eq!(negatives.texts.len(), 24);
    for (i, caption) in rich.captions.iter().enumerate() {
        let sample = data.sample(Split::Train, rich.indices[i]).unwrap();
        for n in &negatives.texts[3 * i..3 * i + 3] {
            assert!(
                sample.captions.iter().all(|c| &c.text != n),
                "negative {n:?} is a true caption of image {}",
                rich.indices[i]
            );
            assert_eq!(
                n.split(' ').count(),
                caption.split(' ').count(),
                "{n:?} vs {caption:?}"
            );
        }
    }
    let second = rich.second.unwrap();
    assert_eq!(second.texts.texts.len(), 8);
    assert_ne!(
        second
            .images
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        rich.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "the second view is augmented"
    );
    // Groups: same canonical description ⇔ same id.
    let describe = |split: Split, i: usize| data.sample(split, i).unwrap().group.unwrap();
    let ids: Vec<u64> = (0..200).map(|i| describe(Split::Train, i)).collect();
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert!(
        distinct.len() < ids.len(),
        "some scenes share a description"
    );
    assert!(distinct.len() > ids.len() / 4);
}

/// A user-defined objective with a learnable parameter of its own, declared here and not in the
/// library: InfoNCE whose temperature is learned as `softplus(u)` with `u` under `loss.user.u`.
struct SoftplusTemperature {
    u: candle_core::Var,
}

impl SoftplusTemperature {
    fn boxed(
        s: &workbench::params::Scope,
    ) -> workbench::Result<Box<dyn workbench::loss::Objective>> {
        let u = s
            .pp("user")
            .var("u", (), workbench::params::Init::Const(0.1))?;
        Ok(Box::new(Self { u }))
    }
}

impl workbench::loss::Objective for SoftplusTemperature {
    fn name(&self) -> &'static str {
        "user"
    }
    fn forward(
        &self,
        x: &workbench::loss::LossInputs<'_>,
    ) -> candle_core::Result<workbench::loss::LossOutput> {
        let tau = (self.u.as_tensor().exp()? + 1.0)?.log()?;
        let logits = x.image.matmul(&x.text.t()?)?.broadcast_div(&tau)?;
        let out = workbench::loss::info_nce(&logits)?;
        Ok(out)
    }
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        vec![("loss.user.u".into(), self.u.clone())]
    }
}

#[test]
fn a_user_objective_swaps_in_trains_its_parameter_and_resumes() {
    let dir = tmpdir("user-objective");
    let mut cfg = tiny_config();
    cfg.train.steps = 12;
    let run = |t: &mut Trainer, stop: Option<usize>| {
        let mut losses = BTreeMap::new();
        let (_tx, rx) = mpsc::channel();
        t.fit_with(&rx, |e| {
            if let Event::Step(s) = e {
                losses.insert(s.step, s.loss);
                if Some(s.step) == stop {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        losses
    };
    let mut straight = Trainer::new(cfg.clone()).unwrap();
    for _ in 0..2 {
        straight.step().unwrap();
    }
    let event = straight
        .set_objective(SoftplusTemperature::boxed(&straight.params().scope("loss")).unwrap())
        .unwrap();
    assert!(matches!(&event, Event::ObjectiveSwapped { to, config: None, .. } if to == "user"));
    let all = run(&mut straight, None);
    assert_eq!(straight.objective().name(), "user");
    assert_ne!(
        value(&straight, "loss.user.u"),
        0.1,
        "its parameter trained"
    );

    let mut first = Trainer::new(cfg).unwrap();
    first.set_run_dir(&dir);
    for _ in 0..2 {
        first.step().unwrap();
    }
    first
        .set_objective(SoftplusTemperature::boxed(&first.params().scope("loss")).unwrap())
        .unwrap();
    let head = run(&mut first, Some(7));
    assert!(
        Trainer::resume(&dir, None).is_err(),
        "the config alone cannot rebuild it"
    );
    let mut resumed =
        Trainer::resume_with_objective(&dir, None, SoftplusTemperature::boxed).unwrap();
    let mut joined = head;
    joined.extend(run(&mut resumed, None));
    assert_eq!(joined, all);
    assert_eq!(
        value(&resumed, "loss.user.u"),
        value(&straight, "loss.user.u")
    );
    let _ = std::fs::remove_dir_all(dir);
}

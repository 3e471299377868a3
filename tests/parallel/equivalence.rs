//! W ranks with a global batch of B pairs against one process with batch B: the same loss,
//! the same gradients and, after three AdamW steps, the same parameters — for objectives that
//! use the global embeddings only (CLIP, SigLIP), per-token embeddings (FILIP), groups
//! (multi-positive), hard-negative captions and second views (TCL). Measured (tiny model,
//! B = 16, W = 2 and 4; 2-core x86-64, 2026-12-01): losses and terms agree to ≤ 2.3e-7
//! relative, gradient norms to ≤ 1.5e-6 relative, every gradient to ≤ 1.3e-6 of its largest
//! entry, the parameters after three AdamW steps to ≤ 2.1e-6 absolute. The differences are
//! summation order (ranks add gradients over their rows, then over ranks), and the tolerances
//! below leave about 5× room.

use super::on_ranks;
use crate::util::{snapshot, tiny_config};
use candle_core::Tensor;
use std::ops::ControlFlow;
use std::sync::Arc;
use workbench::config::RunConfig;
use workbench::control::Command;
use workbench::events::{Event, StepStats};
use workbench::loss::{LossConfig, LossInputs, LossOutput, Objective};
use workbench::model::Capture;
use workbench::parallel::{Communicator, DataParallel, GatheredInputs, Solo, all_reduce_gradients};
use workbench::train::{FitOutcome, Trainer};

pub(super) const LOSS_RTOL: f32 = 1e-5;
pub(super) const PARAM_ATOL: f32 = 1e-5;
/// Relative to the largest |∂L/∂θ| of the parameter.
const GRAD_RTOL: f32 = 1e-5;

pub(super) fn config(loss: &str) -> RunConfig {
    let mut cfg = tiny_config(); // global batch 16, 512 training images
    cfg.train.steps = 3;
    cfg.train.probe_every = 0;
    cfg.loss = toml::from_str(loss).unwrap();
    cfg
}

pub(super) fn plain_run(cfg: &RunConfig) -> (Vec<StepStats>, Trainer) {
    let mut t = Trainer::new(cfg.clone()).unwrap();
    let stats = (0..cfg.train.steps).map(|_| t.step().unwrap()).collect();
    (stats, t)
}

pub(super) fn parallel_run(
    cfg: &RunConfig,
    w: usize,
) -> (Vec<StepStats>, Vec<Trainer>, FitOutcome) {
    let mut stats = Vec::new();
    let run = DataParallel::new(&vec!["cpu"; w])
        .unwrap()
        .fit(cfg, None, |e| {
            if let Event::Step(s) = e {
                stats.push(s.clone());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    (stats, run.trainers, run.outcome)
}

/// Largest |Δ| over every parameter of two snapshots.
pub(super) fn max_param_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut d = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            d = d.max((x - y).abs());
        }
    }
    d
}

#[test]
fn w_ranks_train_exactly_like_one_process_with_the_global_batch() {
    let objectives = [
        r#"kind = "clip""#,
        r#"kind = "siglip""#,
        r#"kind = "filip""#,
        r#"kind = "hard_negatives""#,
        r#"kind = "tcl""#,
    ];
    for loss in objectives {
        ranks_against_one_process(&config(loss), loss);
    }
}

/// `cfg` on 2 and on 4 ranks against one process: the loss, every term and the gradient norm
/// of each of its 3 steps to [`LOSS_RTOL`], the parameters after them to [`PARAM_ATOL`], and
/// every rank identical to rank 0.
pub(super) fn ranks_against_one_process(cfg: &RunConfig, what: &str) {
    let (single, reference) = plain_run(cfg);
    let want = snapshot(&reference);
    for w in [2, 4] {
        let (stats, trainers, outcome) = parallel_run(cfg, w);
        assert_eq!(outcome, FitOutcome::Finished);
        assert_eq!(stats.len(), 3, "{what} W={w}");
        let (mut dl, mut dn) = (0f32, 0f32);
        for (s, p) in stats.iter().zip(&single) {
            assert_eq!(s.batch_size, 16);
            dl = dl.max((s.loss - p.loss).abs() / p.loss.abs());
            dn = dn.max((s.grad_norm - p.grad_norm).abs() / p.grad_norm);
            assert_eq!(s.terms.len(), p.terms.len(), "{what} W={w}");
            for (name, v) in &p.terms {
                let d = (s.terms[name] - v).abs() / v.abs().max(1e-3);
                assert!(
                    d <= LOSS_RTOL,
                    "{what} W={w} term {name}: {} vs {v}",
                    s.terms[name]
                );
            }
            assert_eq!(s.scalars.len(), p.scalars.len(), "{what} W={w}");
            for (name, v) in &p.scalars {
                let d = (s.scalars[name] - v).abs() / v.abs().max(1e-3);
                assert!(
                    d <= LOSS_RTOL,
                    "{what} W={w} scalar {name}: {} vs {v}",
                    s.scalars[name]
                );
            }
        }
        let ranks: Vec<_> = trainers.iter().map(snapshot).collect();
        let dp = max_param_diff(&ranks[0], &want);
        eprintln!("{what} W={w}: loss rel {dl:e}, grad-norm rel {dn:e}, params |Δ| {dp:e}");
        assert!(
            dl <= LOSS_RTOL && dn <= LOSS_RTOL,
            "{what} W={w}: {dl:e} {dn:e}"
        );
        assert!(
            dp <= PARAM_ATOL,
            "{what} W={w}: parameters differ by {dp:e}"
        );
        for (r, snap) in ranks.iter().enumerate() {
            assert!(
                *snap == ranks[0],
                "{what} W={w}: rank {r} differs from rank 0"
            );
        }
        assert!(trainers.iter().all(|t| t.completed_steps() == 3));
    }
}

/// One rank's gradients of the first batch, through the trainer's building blocks.
fn gradients(mut t: Trainer, comm: Option<&Arc<dyn Communicator>>) -> (f32, Vec<(String, Tensor)>) {
    if let Some(c) = comm {
        t.set_communicator(c.clone()).unwrap();
    }
    let batch = t.next_batch().unwrap();
    let needs = t.objective().needs();
    let capture = Capture {
        tokens: needs.tokens,
        ..Capture::NONE
    };
    let emb = t.model().forward(&batch, capture).unwrap();
    let local = LossInputs {
        image_tokens: emb.image.tokens.as_ref(),
        text_tokens: emb.text.tokens.as_ref(),
        text_mask: Some(&batch.text_mask),
        groups: Some(&batch.groups),
        text_ids: Some(&batch.text_ids),
        ..LossInputs::new(&emb.image.embedding, &emb.text.embedding)
    };
    let gathered = comm.map(|c| GatheredInputs::new(&local, c).unwrap());
    let out = match &gathered {
        Some(g) => t.objective().forward(&g.inputs(&local)),
        None => t.objective().forward(&local),
    }
    .unwrap();
    let mut grads = out.loss.backward().unwrap();
    let trainable = t.trainable();
    if let Some(c) = comm {
        all_reduce_gradients(c.as_ref(), &trainable, &mut grads).unwrap();
    }
    let g = trainable
        .iter()
        .map(|(n, v)| (n.clone(), grads.get(v).unwrap().clone()))
        .collect();
    (out.loss.to_scalar().unwrap(), g)
}

#[test]
fn gathered_gradients_equal_the_single_process_gradients() {
    for loss in [
        r#"kind = "clip""#,
        r#"kind = "siglip""#,
        r#"kind = "filip""#,
        r#"kind = "multi_positive""#,
    ] {
        let cfg = config(loss);
        let (want_loss, want) = gradients(Trainer::new(cfg.clone()).unwrap(), None);
        for w in [2, 4] {
            let ranks = on_ranks(w, |comm| {
                gradients(Trainer::new(cfg.clone()).unwrap(), Some(&comm))
            });
            let mut worst = 0f32;
            for (rank, (l, grads)) in ranks.iter().enumerate() {
                assert!(
                    (l - want_loss).abs() <= LOSS_RTOL * want_loss.abs(),
                    "{loss} rank {rank}"
                );
                assert_eq!(grads.len(), want.len());
                for ((n, g), (_, h)) in grads.iter().zip(&want) {
                    let scale = crate::util::max_abs(h) as f32;
                    let d = kernels::check::max_abs_diff(g, h).unwrap() as f32 / scale.max(1e-6);
                    assert!(
                        d <= GRAD_RTOL,
                        "{loss} W={w} rank {rank}: ∂/∂{n} differs by {d:e}"
                    );
                    worst = worst.max(d);
                }
            }
            eprintln!("{loss} W={w}: gradients |Δ| / max |∂L/∂θ| ≤ {worst:e}");
        }
    }
}

#[test]
fn one_rank_is_bit_identical_to_a_plain_run() {
    let cfg = config(r#"kind = "filip""#);
    let (single, reference) = plain_run(&cfg);
    // The driver with one cpu device (a one-thread group) …
    let (stats, trainers, _) = parallel_run(&cfg, 1);
    for (s, p) in stats.iter().zip(&single) {
        assert_eq!(s.loss.to_bits(), p.loss.to_bits());
        assert_eq!(s.grad_norm.to_bits(), p.grad_norm.to_bits());
    }
    assert!(snapshot(&trainers[0]) == snapshot(&reference));
    // … and a trainer given the `Solo` communicator.
    let mut solo = Trainer::new(cfg.clone()).unwrap();
    solo.set_communicator(Arc::new(Solo)).unwrap();
    for p in &single {
        assert_eq!(solo.step().unwrap().loss.to_bits(), p.loss.to_bits());
    }
    assert!(snapshot(&solo) == snapshot(&reference));
}

#[test]
fn a_stop_from_the_caller_stops_every_rank_at_the_same_step() {
    let mut cfg = config(r#"kind = "clip""#);
    cfg.train.steps = 10;
    let run = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .fit(&cfg, None, |e| match e {
            Event::Step(s) if s.step == 2 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .unwrap();
    assert!(matches!(run.outcome, FitOutcome::Paused(ref r) if r.contains("caller")));
    assert!(run.trainers.iter().all(|t| t.completed_steps() == 2));
    assert!(snapshot(&run.trainers[0]) == snapshot(&run.trainers[1]));
}

/// A user objective whose loss turns NaN at one step.
struct NanAt(usize);

impl Objective for NanAt {
    fn name(&self) -> &'static str {
        "nan_at"
    }
    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<LossOutput> {
        let mut loss = (x.image * x.text)?.sum_all()?.neg()?;
        if x.step == self.0 {
            loss = (loss * f64::NAN)?;
        }
        Ok(LossOutput {
            loss,
            terms: Vec::new(),
        })
    }
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}

#[test]
fn a_non_finite_loss_pauses_every_rank_at_the_same_step() {
    let cfg = config(r#"kind = "clip""#);
    let mut paused = None;
    let run = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .fit_with(
            |_, _| {
                let mut t = Trainer::new(cfg.clone())?;
                t.set_objective(Box::new(NanAt(1)))?;
                Ok(t)
            },
            |e| {
                if let Event::Paused { reason, .. } = e {
                    paused = Some(reason.clone());
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert!(matches!(run.outcome, FitOutcome::Paused(_)));
    let reason = paused.unwrap();
    assert!(
        reason.contains("step 2") && reason.contains("loss"),
        "{reason}"
    );
    assert!(run.trainers.iter().all(|t| t.completed_steps() == 1));
    assert!(snapshot(&run.trainers[0]) == snapshot(&run.trainers[1]));
}

/// The live commands both runs below receive, by the step after which they are sent: a swap
/// and a temperature, a swap to an objective with extra batch inputs (hard-negative captions),
/// then a freeze and a command that cannot apply.
pub(super) fn script(step: usize) -> Vec<Command> {
    let loss = |name| LossConfig::by_name(name).unwrap();
    match step {
        1 => vec![
            Command::Swap {
                loss: loss("siglip"),
            },
            Command::SetTemperature {
                objective: "siglip".into(),
                tau: 0.05,
            },
        ],
        2 => vec![Command::Swap {
            loss: loss("hard_negatives"),
        }],
        3 => vec![
            Command::Freeze {
                prefix: "model.vision".into(),
                frozen: true,
            },
            Command::SetWeight {
                part: "clip".into(),
                weight: 0.5,
            },
        ],
        _ => Vec::new(),
    }
}

pub(super) fn send_script(send: &std::sync::mpsc::Sender<Command>, step: usize) {
    for command in script(step) {
        send.send(command).unwrap();
    }
}

/// One process trained on `cfg`, sent the [`script`]'s commands after each step: its events
/// and its trainer.
pub(super) fn scripted_single_run(cfg: &RunConfig) -> (Vec<Event>, Trainer) {
    let (send, commands) = std::sync::mpsc::channel();
    let mut events = Vec::new();
    let mut single = Trainer::new(cfg.clone()).unwrap();
    single
        .fit_with(&commands, |e| {
            if let Event::Step(s) = e {
                send_script(&send, s.step);
            }
            events.push(e.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
    (events, single)
}

/// What the events of a live run say happened, step and kind, without the numbers.
pub(super) fn command_log(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ObjectiveSwapped { step, to, .. } => Some(format!("{step} swap {to}")),
            Event::Edited { step, command, .. } => Some(format!("{step} edit {command:?}")),
            Event::CommandRejected { step, reason, .. } => Some(format!("{step} reject {reason}")),
            Event::Paused { step, reason } => Some(format!("{step} paused {reason}")),
            _ => None,
        })
        .collect()
}

#[test]
fn live_commands_change_every_rank_as_they_change_one_process() {
    let mut cfg = config(r#"kind = "clip""#);
    cfg.train.steps = 5;
    let (single_events, single) = scripted_single_run(&cfg);
    let (send, commands) = std::sync::mpsc::channel();
    let mut events = Vec::new();
    let run = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .fit_live(
            |_, _| Trainer::new(cfg.clone()),
            &commands,
            |e| {
                if let Event::Step(s) = e {
                    send_script(&send, s.step);
                }
                events.push(e.clone());
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert!(matches!(run.outcome, FitOutcome::Finished));
    let log = command_log(&events);
    assert_eq!(log, command_log(&single_events));
    assert_eq!(log.len(), 5, "{log:?}");
    assert!(log[4].contains("not a sum"), "{log:?}");
    let losses = |ev: &[Event]| -> Vec<f32> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Step(s) => Some(s.loss),
                _ => None,
            })
            .collect()
    };
    let (a, b) = (losses(&events), losses(&single_events));
    assert_eq!(a.len(), 5);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= LOSS_RTOL * y.abs(), "{a:?} vs {b:?}");
    }
    let ranks: Vec<_> = run.trainers.iter().map(snapshot).collect();
    let dp = max_param_diff(&ranks[0], &snapshot(&single));
    assert!(dp <= PARAM_ATOL, "parameters differ by {dp:e}");
    assert!(ranks[1] == ranks[0], "rank 1 differs from rank 0");
    for t in &run.trainers {
        assert_eq!(t.objective().name(), "hard_negatives");
        assert!(t.frozen().contains("model.vision"));
    }
}

#[test]
fn a_stop_command_pauses_every_rank_at_the_same_step() {
    let mut cfg = config(r#"kind = "clip""#);
    cfg.train.steps = 10;
    let (send, commands) = std::sync::mpsc::channel();
    let mut paused = None;
    let run = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .fit_live(
            |_, _| Trainer::new(cfg.clone()),
            &commands,
            |e| {
                match e {
                    Event::Step(s) if s.step == 2 => {
                        // Applied before the stop, as in one process.
                        send.send(Command::SetTemperature {
                            objective: "clip".into(),
                            tau: 0.1,
                        })
                        .unwrap();
                        send.send(Command::Stop).unwrap();
                    }
                    Event::Paused { reason, .. } => paused = Some(reason.clone()),
                    _ => {}
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert!(matches!(run.outcome, FitOutcome::Paused(ref r) if r.contains("command")));
    assert!(paused.unwrap().contains("command"));
    for t in &run.trainers {
        assert_eq!(t.completed_steps(), 2);
        let scale = t.params().get("loss.clip.logit_scale").unwrap();
        let v = scale
            .as_tensor()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((v - 10f32.ln()).abs() < 1e-6, "{v}");
    }
    assert!(snapshot(&run.trainers[0]) == snapshot(&run.trainers[1]));
}

#[test]
fn a_spawned_data_parallel_run_takes_commands_and_streams_events() {
    let mut cfg = config(r#"kind = "clip""#);
    cfg.train.steps = 4;
    let run = DataParallel::new(&["cpu", "cpu"])
        .unwrap()
        .spawn(move |_, _| Trainer::new(cfg.clone()));
    // Sent while the ranks are being built, so applied before the first step (building two
    // trainers takes far longer than this send); any step before the last would do as well.
    assert!(run.send(Command::Swap {
        loss: LossConfig::by_name("siglip").unwrap(),
    }));
    let events: Vec<Event> = run.events().collect();
    let log = command_log(&events);
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].ends_with("swap siglip"), "{log:?}");
    let steps = events
        .iter()
        .filter(|e| matches!(e, Event::Step(_)))
        .count();
    assert_eq!(steps, 4);
    assert!(matches!(events.last(), Some(Event::RunFinished { .. })));
    let done = run.join().unwrap().unwrap();
    assert!(matches!(done.outcome, FitOutcome::Finished));
    for t in &done.trainers {
        assert_eq!(t.objective().name(), "siglip");
    }
    assert!(snapshot(&done.trainers[0]) == snapshot(&done.trainers[1]));
}

//! The desktop app, driven headless by widget labels (egui_kittest, no renderer): play, pause,
//! step, an objective swap from the picker, a caption word's map, a fork. Training runs on the
//! session's thread, so each check polls frames until its condition holds or 30 s pass.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use viz::app::{Tab, WorkbenchApp};

use crate::util::tiny_config;
use workbench::model::Precision;

fn app() -> Harness<'static, WorkbenchApp> {
    let mut cfg = tiny_config();
    cfg.train.steps = 200;
    cfg.train.probe_every = 0;
    cfg.train.probe_size = 32;
    Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_eframe(move |cc| {
            cc.egui_ctx.set_fonts(viz::app::fonts());
            WorkbenchApp::with_config(cfg).unwrap()
        })
}

/// Runs frames until `done` holds; fails after 30 s naming `what` and the app's messages.
fn wait(h: &mut Harness<'_, WorkbenchApp>, what: &str, done: impl Fn(&WorkbenchApp) -> bool) {
    let start = Instant::now();
    loop {
        h.step();
        if done(h.state()) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; messages: {:?}",
            h.state().messages()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn step(app: &WorkbenchApp) -> usize {
    app.session().map_or(0, viz::session::Session::step)
}

fn playing(app: &WorkbenchApp) -> bool {
    app.session().is_some_and(viz::session::Session::playing)
}

fn click(h: &mut Harness<'_, WorkbenchApp>, label: &str) {
    h.get_by_label(label).click();
    h.step();
    h.step();
}

#[test]
fn play_pause_and_step() {
    let mut h = app();
    h.run_steps(3);
    assert_eq!(step(h.state()), 0, "a session starts paused");

    assert!(h.query_by_label_contains("data wait").is_none());
    click(&mut h, "Step");
    wait(&mut h, "one step", |a| step(a) == 1);
    h.step();
    // The status names how long the step waited for its batch.
    let _ = h.get_by_label_contains("data wait");

    click(&mut h, "Play");
    wait(&mut h, "steps to advance after Play", |a| step(a) >= 6);

    click(&mut h, "Pause");
    wait(&mut h, "the run to report it paused", |a| !playing(a));
    let paused_at = step(h.state());
    std::thread::sleep(Duration::from_millis(400));
    h.run_steps(5);
    assert_eq!(
        step(h.state()),
        paused_at,
        "the step count advanced while paused"
    );
    assert!(paused_at < 200, "the run finished before it was paused");
}

#[test]
fn choosing_siglip_swaps_the_objective_and_marks_the_curves() {
    let mut h = app();
    h.run_steps(2);
    click(&mut h, "Play");
    wait(&mut h, "a few steps", |a| step(a) >= 3);

    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Objective")
        .click();
    h.step();
    h.step();
    click(&mut h, "siglip");

    let swapped = |a: &WorkbenchApp| {
        a.session().is_some_and(|s| {
            s.history().objective == "siglip"
                && s.history()
                    .markers
                    .iter()
                    .any(|m| m.label.contains("siglip"))
        })
    };
    wait(&mut h, "a swap marker", swapped);
    assert_eq!(h.state().state().tab, Tab::Curves);
    wait(&mut h, "the curves panel to draw the swap marker", |a| {
        a.drawn_markers().iter().any(|m| m.contains("siglip"))
    });
    wait(&mut h, "steps under siglip", |a| {
        a.session()
            .and_then(|s| s.history().steps.last())
            .is_some_and(|s| s.objective == "siglip")
    });
    click(&mut h, "Pause");
}

#[test]
fn clicking_a_caption_word_shows_its_map() {
    let mut h = app();
    h.run_steps(2);
    click(&mut h, "Alignment");
    assert_eq!(h.state().state().tab, Tab::Alignment);
    wait(&mut h, "the alignment answer", |a| {
        !a.alignment_words().is_empty()
    });

    let (label, before) = h.state().alignment_map().unwrap();
    assert_eq!(label, "whole caption");
    let words = h.state().alignment_words();
    // A word that occurs once and is not also the label of another widget.
    let word = words
        .iter()
        .find(|w| w.len() > 2 && words.iter().filter(|v| v == w).count() == 1)
        .unwrap_or_else(|| panic!("no distinctive word in {words:?}"))
        .clone();

    click(&mut h, &word);
    let (label, after) = h.state().alignment_map().unwrap();
    assert_eq!(label, word);
    assert_eq!(h.state().state().word.as_deref(), Some(word.as_str()));
    assert_eq!(after.len(), before.len());
    assert_ne!(after, before, "the word's map equals the caption's");

    click(&mut h, "whole caption");
    assert_eq!(h.state().alignment_map().unwrap().0, "whole caption");
}

#[test]
fn fork_adds_a_second_run() {
    let mut h = app();
    h.run_steps(2);
    click(&mut h, "Play");
    wait(&mut h, "a few steps", |a| step(a) >= 3);

    click(&mut h, "Fork");
    wait(&mut h, "the fork", |a| a.sessions().len() == 2);
    click(&mut h, "Pause");

    click(&mut h, "Runs");
    let fork = h.state().sessions()[1].name().to_owned();
    assert!(fork.starts_with("fork of run 1"), "{fork}");
    h.get_by_role_and_label(egui::accesskit::Role::Button, &fork);
    h.get_by_role_and_label(egui::accesskit::Role::Button, "run 1");
}

#[test]
fn batch_panel_retrieves_in_both_directions() {
    use workbench::analysis::Direction;
    let mut h = app();
    h.run_steps(2);
    click(&mut h, "Batch");
    wait(&mut h, "the batch answer", |a| a.batch().is_some());
    h.run_steps(2);
    let b = h.state().batch().unwrap().similarity.clone();
    assert_eq!(h.state().batch().unwrap().images.len(), b.n);

    // Image 0's best caption is listed with its text.
    let top = &b.top_k(0, Direction::ImageToText, 5)[0];
    let row = format!("caption {}: {}", top.index, b.captions[top.index]);
    assert!(
        !h.query_all_by_label(&row).collect::<Vec<_>>().is_empty(),
        "no row {row:?} in the retrieval list"
    );

    click(&mut h, "text → image");
    assert_eq!(h.state().state().batch_direction, Direction::TextToImage);
    let top = &b.top_k(0, Direction::TextToImage, 5)[0];
    h.get_by_label(&format!("1. image {}", top.index));
}

#[test]
fn attention_grid_click_selects_a_layer_and_head() {
    let mut h = app();
    h.run_steps(2);
    click(&mut h, "Attention");
    wait(&mut h, "the attention answer", |a| {
        a.attention_map().is_some()
    });
    h.run_steps(2);
    let rollout = h.state().attention_map().unwrap();
    assert_eq!(
        h.state().state().layer,
        None,
        "the panel opens on the rollout"
    );

    click(&mut h, "layer 0, head 1");
    assert_eq!(
        (h.state().state().layer, h.state().state().head),
        (Some(0), Some(1))
    );
    let cell = h.state().attention_map().unwrap();
    assert_eq!(cell.len(), rollout.len());
    assert_ne!(cell, rollout, "layer 0, head 1 shows the rollout's map");

    click(&mut h, "Text tower");
    assert!(h.state().state().text_tower);
    let text = h.state().attention_map().unwrap();
    assert_ne!(text, cell);

    // The text tower's grid selects as well.
    click(&mut h, "layer 1, head 0");
    assert_eq!(
        (h.state().state().layer, h.state().state().head),
        (Some(1), Some(0))
    );
    assert_ne!(h.state().attention_map().unwrap(), text);
}

#[test]
fn closing_the_gap_shrinks_the_centroid_distance() {
    let mut h = app();
    h.run_steps(2);
    click(&mut h, "Modality gap");
    wait(&mut h, "the gap answer", |a| a.gap().is_some());
    let before = h.state().gap().unwrap().report.centroid_distance;
    assert!(before > 0.0);

    click(&mut h, "δ = 1 (close the gap)");
    wait(&mut h, "the answer at δ = 1", |a| {
        a.gap()
            .is_some_and(|g| g.sweep.first().is_some_and(|p| p.delta == 1.0))
    });
    let after = h.state().gap().unwrap().sweep[0].centroid_distance;
    assert!(
        after < 0.5 * before,
        "centroid distance {before} → {after} after closing the gap"
    );
}

#[test]
fn terms_and_temperature_controls_send_live_edits() {
    let mut h = app();
    h.run_steps(2);
    click(&mut h, "Step");
    wait(&mut h, "one step", |a| step(a) == 1);
    h.run_steps(2);

    // Add FILIP as a term: the objective becomes the sum clip + 0.5 filip.
    h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Add term")
        .click();
    h.step();
    h.step();
    click(&mut h, "filip");
    click(&mut h, "Add");
    let parts = |a: &WorkbenchApp| -> Vec<(String, f64)> {
        match a.session().and_then(|s| s.history().loss.clone()) {
            Some(workbench::loss::LossConfig::Sum(s)) => s
                .parts
                .iter()
                .map(|p| (p.loss.name().to_owned(), p.weight))
                .collect(),
            _ => Vec::new(),
        }
    };
    wait(&mut h, "the swap to a sum", |a| {
        parts(a) == [("clip".to_owned(), 1.0), ("filip".to_owned(), 0.5)]
    });

    // Edit a weight and apply it.
    click(&mut h, "Step");
    wait(&mut h, "a step under the sum", |a| step(a) == 2);
    h.run_steps(2);
    h.state_mut()
        .state_mut()
        .weights
        .insert("filip".into(), 2.0);
    h.run_steps(2);
    click(&mut h, "Apply weights");
    wait(&mut h, "the new weight", |a| {
        parts(a).contains(&("filip".to_owned(), 2.0))
    });

    // Clamp the temperature (the sum has two; the controls act on the first).
    click(&mut h, "Clamp τ");
    wait(&mut h, "a clamp marker", |a| {
        a.session().is_some_and(|s| {
            s.history()
                .markers
                .iter()
                .any(|m| m.label.starts_with("clamp loss.clip.logit_scale"))
        })
    });
}

#[test]
fn a_run_on_a_missing_device_reports_why() {
    let mut h = app();
    h.run_steps(2);
    if candle_core::utils::cuda_is_available() {
        return;
    }
    h.state_mut().state_mut().device = "cuda:0".into();
    click(&mut h, "Reset");
    wait(&mut h, "the error", |a| {
        a.messages().iter().any(|m| m.contains("without CUDA"))
    });
    assert_eq!(h.state().sessions().len(), 1, "the old run was dropped");
}

#[test]
fn the_new_run_form_chooses_the_precision_and_micro_batches() {
    let mut h = app();
    h.run_steps(2);
    let _ = h.get_by_label("precision");
    let _ = h.get_by_label("micro-batches");
    assert_eq!(h.state().state().precision, Precision::F32);
    assert_eq!(h.state().state().micro_batches, 1);
    h.state_mut().state_mut().precision = Precision::Bf16;
    h.state_mut().state_mut().micro_batches = 4;
    click(&mut h, "Reset");
    wait(&mut h, "the bf16 run in micro-batches", |a| {
        a.sessions().first().is_some_and(|s| {
            let t = &s.config().train;
            t.precision == Precision::Bf16 && t.micro_batches == 4
        })
    });
    click(&mut h, "Step");
    wait(&mut h, "a step in micro-batches", |a| step(a) == 1);
    // The run's micro-batches shown, set live between two steps, and logged.
    let _ = h.get_by_label("micro-batches 4 →");
    h.state_mut().state_mut().live_micro_batches = 8;
    click(&mut h, "Set micro-batches");
    wait(&mut h, "the edit in the event log", |a| {
        a.session().is_some_and(|s| {
            let history = s.history();
            history.micro_batches == 8
                && history.log.iter().any(|l| l.contains("micro-batches = 8"))
        })
    });
    click(&mut h, "Step");
    wait(&mut h, "a step in 8 micro-batches", |a| step(a) == 2);
    let _ = h.get_by_label("micro-batches 8 →");
}

#[test]
fn the_new_run_form_trains_on_several_ranks_and_forks_onto_them() {
    let mut h = app();
    h.run_steps(2);
    let _ = h.get_by_label("ranks");
    assert_eq!(h.state().state().ranks, 1);
    // Three ranks cannot split a batch of 16: the form says so and keeps the old run.
    h.state_mut().state_mut().ranks = 3;
    click(&mut h, "Reset");
    wait(&mut h, "the refusal", |a| {
        a.messages().iter().any(|m| m.contains("train.batch_size"))
    });
    h.state_mut().state_mut().ranks = 2;
    h.step();
    click(&mut h, "local loss");
    assert!(h.state().state().local_loss);
    click(&mut h, "Reset");
    wait(&mut h, "the two-rank run", |a| {
        a.sessions()
            .first()
            .is_some_and(|s| s.devices() == ["cpu", "cpu"] && s.config().train.local_loss)
    });
    click(&mut h, "Step");
    wait(&mut h, "a step on both ranks", |a| step(a) == 1);
    // Rank 0 answers the panels, with the others waiting.
    click(&mut h, "Alignment");
    wait(&mut h, "rank 0's alignment", |a| {
        !a.alignment_words().is_empty()
    });
    click(&mut h, "Attention");
    wait(&mut h, "rank 0's attention", |a| {
        a.attention_map().is_some()
    });
    click(&mut h, "Fork");
    wait(&mut h, "the fork", |a| a.sessions().len() == 2);
    assert_eq!(h.state().sessions()[1].devices(), ["cpu", "cpu"]);
    click(&mut h, "Runs");
    assert_eq!(h.query_all_by_label("2 ranks: cpu, cpu").count(), 2);
}

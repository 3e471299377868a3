//! The left panel: the run's status, play / pause / step, the objective, the temperature, the
//! new-run form (`new_run.rs`), and the latest notable events.

use egui::{DragValue, RichText};
use workbench::control::Command;
use workbench::loss::LossConfig;
use workbench::loss::composite::{SumConfig, SumPart};

use super::WorkbenchApp;
use crate::session::Request;

/// Draws the run-control panel.
pub fn show(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    ui.heading("Run");
    if let Some(run) = app.runs.get(app.active) {
        let s = &run.session;
        let h = s.history();
        ui.label(RichText::new(s.name()).strong());
        ui.label(format!("step {} / {}", s.step(), h.total_steps));
        ui.label(format!("objective: {}", h.objective));
        let speed = h
            .pairs_per_second()
            .map_or_else(|| "–".to_owned(), |p| format!("{p:.0}"));
        let status = if h.finished {
            "finished"
        } else if s.playing() {
            "training"
        } else {
            "paused"
        };
        ui.label(format!("{status}, {speed} pairs/s"));
        if let Some((ms, share)) = h.data_wait().figures() {
            ui.label(format!("data wait {ms:.1} ms/step ({share:.1} %)"))
                .on_hover_text(
                    "Over the last 20 steps: how long each step waited for its batch, during \
                     which the device idles (train.prefetch builds batches ahead)",
                );
        }
        if let Some(m) = h.steps.last().and_then(|s| s.device_memory) {
            ui.label(format!("GPU memory: {m}")).on_hover_text(
                "After the last step, as the driver reports it: every process on the device \
                 (rank 0's GPU in a data-parallel run)",
            );
        }
        if let Some(last) = h.steps.last() {
            ui.label(format!("loss {:.4}", last.loss));
        }
    } else if app.starting() {
        ui.label("starting…");
    }

    let has_run = app.active < app.runs.len();
    ui.horizontal(|ui| {
        ui.add_enabled_ui(has_run, |ui| {
            if ui.button("Play").clicked() {
                app.runs[app.active].send(Request::Play);
            }
            if ui.button("Pause").clicked() {
                app.runs[app.active].send(Request::Pause);
            }
            if ui.button("Step").clicked() {
                app.runs[app.active].send(Request::Step);
            }
        });
    });

    if has_run {
        objective(app, ui);
        terms(app, ui);
        ui.separator();
        temperature(app, ui);
        bias(app, ui);
        micro_batches(app, ui);
    }

    ui.separator();
    super::new_run::show(app, ui);

    ui.separator();
    ui.label(RichText::new("Events").strong());
    let mut lines: Vec<String> = app
        .runs
        .get(app.active)
        .map(|r| {
            r.session
                .history()
                .log
                .iter()
                .rev()
                .take(8)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    lines.reverse();
    for l in lines {
        ui.label(RichText::new(l).small());
    }
    for m in app.messages().iter().rev().take(4) {
        ui.label(RichText::new(m).small().color(ui.visuals().error_fg_color));
    }
}

/// The objective picker: choosing one swaps it in between two steps.
fn objective(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let run = &app.runs[app.active];
    let current = run.session.history().objective.clone();
    let mut chosen = None;
    egui::ComboBox::from_label("Objective")
        .selected_text(&current)
        .show_ui(ui, |ui| {
            for loss in LossConfig::builtins() {
                let name = loss.name();
                if ui.selectable_label(current == name, name).clicked() && current != name {
                    chosen = Some(loss);
                }
            }
        });
    if let Some(loss) = chosen {
        run.send(Request::Control(Command::Swap { loss }));
    }
}

/// The objective's terms: each part of a sum with its weight (applied live), and a picker
/// that adds a term to the current objective (a swap to the sum of both).
fn terms(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let run = &app.runs[app.active];
    let Some(loss) = run.session.history().loss.clone() else {
        ui.label("a user-defined objective: its terms cannot be edited here");
        return;
    };
    let parts: Vec<SumPart> = match &loss {
        LossConfig::Sum(s) => s.parts.clone(),
        other => vec![SumPart {
            weight: 1.0,
            loss: other.clone(),
        }],
    };
    let state = &mut app.state;
    if let LossConfig::Sum(_) = loss {
        ui.label(RichText::new("Term weights").strong());
        let mut edits = Vec::new();
        egui::Grid::new("term_weights")
            .num_columns(2)
            .show(ui, |ui| {
                for p in &parts {
                    let name = p.loss.name();
                    let w = state.weights.entry(name.to_owned()).or_insert(p.weight);
                    let l = ui.label(format!("{name} (now {:.3})", p.weight));
                    ui.add(DragValue::new(w).range(0.0..=100.0).speed(0.01))
                        .labelled_by(l.id);
                    ui.end_row();
                    if (*w - p.weight).abs() > 1e-12 {
                        edits.push((name.to_owned(), *w));
                    }
                }
            });
        if ui
            .add_enabled(!edits.is_empty(), egui::Button::new("Apply weights"))
            .clicked()
        {
            for (part, weight) in edits {
                run.send(Request::Control(Command::SetWeight { part, weight }));
            }
        }
    } else {
        state.weights.clear();
    }
    let present: Vec<&str> = parts.iter().map(|p| p.loss.name()).collect();
    let candidates: Vec<LossConfig> = LossConfig::builtins()
        .into_iter()
        .filter(|l| !present.contains(&l.name()))
        .collect();
    if !candidates.iter().any(|c| c.name() == state.term) {
        state.term = candidates
            .first()
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
    }
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("Add term")
            .selected_text(&state.term)
            .show_ui(ui, |ui| {
                for c in &candidates {
                    ui.selectable_value(&mut state.term, c.name().to_owned(), c.name());
                }
            });
    });
    ui.horizontal(|ui| {
        let l = ui.label("weight");
        ui.add(
            DragValue::new(&mut state.term_weight)
                .range(0.0..=100.0)
                .speed(0.01),
        )
        .labelled_by(l.id);
        let add = ui
            .add_enabled(!state.term.is_empty(), egui::Button::new("Add"))
            .on_hover_text("Swap to the sum of the current objective and this term");
        if add.clicked()
            && let Some(extra) = candidates.into_iter().find(|c| c.name() == state.term)
        {
            let mut parts = parts;
            parts.push(SumPart {
                weight: state.term_weight,
                loss: extra,
            });
            state.weights.clear();
            let loss = LossConfig::Sum(SumConfig { parts });
            run.send(Request::Control(Command::Swap { loss }));
        }
    });
}

/// The latest value of every scalar called `key` (`"logit_scale"`, `"logit_bias"`) with the
/// objective it belongs to: `key` for a single objective, `<part>/key` in a sum.
fn scalars_named(app: &WorkbenchApp, key: &str) -> Vec<(String, f32)> {
    let h = app.runs[app.active].session.history();
    let Some(last) = h.steps.last() else {
        return Vec::new();
    };
    last.scalars
        .iter()
        .filter_map(|(k, &v)| {
            let objective = match k.split_once('/') {
                Some((part, name)) if name == key => part.to_owned(),
                None if k == key => h.objective.clone(),
                _ => return None,
            };
            Some((objective, v))
        })
        .collect()
}

/// With several objectives carrying `what`, a picker of the one the controls below act on.
fn target(ui: &mut egui::Ui, id: &str, options: &[String], chosen: &mut String) -> String {
    if !options.contains(chosen) {
        chosen.clone_from(&options[0]);
    }
    if options.len() > 1 {
        egui::ComboBox::from_id_salt(id)
            .selected_text(format!("acts on {chosen}"))
            .show_ui(ui, |ui| {
                for o in options {
                    ui.selectable_value(chosen, o.clone(), o);
                }
            });
    }
    chosen.clone()
}

/// The objective's temperature(s): shown, set, frozen and clamped to a range.
fn temperature(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let temps: Vec<(String, f32)> = scalars_named(app, "logit_scale")
        .into_iter()
        .map(|(o, scale)| (o, 1.0 / scale))
        .collect();
    if temps.is_empty() {
        if !app.runs[app.active].session.history().steps.is_empty() {
            ui.label("this objective has no temperature");
        }
        return;
    }
    ui.label(RichText::new("Temperature").strong());
    for (objective, tau) in &temps {
        ui.label(format!("τ ({objective}) = {tau:.4}"));
    }
    let names: Vec<String> = temps.iter().map(|t| t.0.clone()).collect();
    let state = &mut app.state;
    let objective = target(ui, "tau_target", &names, &mut state.param_target);
    let run = &mut app.runs[app.active];
    let param = format!("loss.{objective}.logit_scale");
    ui.horizontal(|ui| {
        let l = ui.label("τ");
        ui.add(
            DragValue::new(&mut state.tau)
                .range(1e-3..=10.0)
                .speed(0.001)
                .max_decimals(4),
        )
        .labelled_by(l.id);
        if ui.button("Set τ").clicked() {
            run.send(Request::Control(Command::SetTemperature {
                objective: objective.clone(),
                tau: state.tau,
            }));
        }
    });
    let mut frozen = run.tau_frozen;
    if ui.checkbox(&mut frozen, "Freeze τ").changed() {
        run.tau_frozen = frozen;
        run.send(Request::Control(Command::Freeze {
            prefix: param.clone(),
            frozen,
        }));
    }
    // The parameter is ln(1/τ): τ ∈ [lo, hi] ⇔ parameter ∈ [ln(1/hi), ln(1/lo)].
    ui.horizontal(|ui| {
        let l = ui.label("τ range");
        let [lo, hi] = &mut state.tau_range;
        ui.add(
            DragValue::new(lo)
                .range(1e-3..=10.0)
                .speed(0.001)
                .max_decimals(4),
        )
        .labelled_by(l.id);
        ui.add(
            DragValue::new(hi)
                .range(1e-3..=10.0)
                .speed(0.001)
                .max_decimals(4),
        );
    });
    ui.horizontal(|ui| {
        let [lo, hi] = state.tau_range;
        let valid = lo > 0.0 && hi > lo;
        if ui
            .add_enabled(valid, egui::Button::new("Clamp τ"))
            .on_hover_text("Keep τ within the range after every step")
            .clicked()
        {
            run.send(Request::Control(Command::Clamp {
                prefix: param.clone(),
                range: Some([(1.0 / hi).ln(), (1.0 / lo).ln()]),
            }));
        }
        if ui.button("Unclamp τ").clicked() {
            run.send(Request::Control(Command::Clamp {
                prefix: param.clone(),
                range: None,
            }));
        }
    });
}

/// The objective's logit bias (SigLIP): shown, set, frozen and clamped to a range.
fn bias(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let biases = scalars_named(app, "logit_bias");
    if biases.is_empty() {
        return;
    }
    ui.label(RichText::new("Bias").strong());
    for (objective, b) in &biases {
        ui.label(format!("b ({objective}) = {b:.4}"));
    }
    let names: Vec<String> = biases.iter().map(|t| t.0.clone()).collect();
    let state = &mut app.state;
    let objective = target(ui, "bias_target", &names, &mut state.param_target);
    let run = &mut app.runs[app.active];
    let param = format!("loss.{objective}.logit_bias");
    ui.horizontal(|ui| {
        let l = ui.label("b");
        ui.add(
            DragValue::new(&mut state.bias)
                .range(-100.0..=100.0)
                .speed(0.05)
                .max_decimals(3),
        )
        .labelled_by(l.id);
        if ui.button("Set b").clicked() {
            run.send(Request::Control(Command::SetParam {
                name: param.clone(),
                value: state.bias,
            }));
        }
    });
    let mut frozen = run.bias_frozen;
    if ui.checkbox(&mut frozen, "Freeze b").changed() {
        run.bias_frozen = frozen;
        run.send(Request::Control(Command::Freeze {
            prefix: param.clone(),
            frozen,
        }));
    }
    ui.horizontal(|ui| {
        let l = ui.label("b range");
        let [lo, hi] = &mut state.bias_range;
        ui.add(DragValue::new(lo).range(-100.0..=100.0).speed(0.05))
            .labelled_by(l.id);
        ui.add(DragValue::new(hi).range(-100.0..=100.0).speed(0.05));
    });
    ui.horizontal(|ui| {
        let [lo, hi] = state.bias_range;
        if ui
            .add_enabled(hi > lo, egui::Button::new("Clamp b"))
            .clicked()
        {
            run.send(Request::Control(Command::Clamp {
                prefix: param.clone(),
                range: Some([lo, hi]),
            }));
        }
        if ui.button("Unclamp b").clicked() {
            run.send(Request::Control(Command::Clamp {
                prefix: param.clone(),
                range: None,
            }));
        }
    });
}

/// The micro-batches of the active run's steps, set between two steps (a step that ran out
/// of device memory suggests more).
fn micro_batches(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let Some(run) = app.runs.get(app.active) else {
        return;
    };
    let now = run.session.history().micro_batches.max(1);
    let state = &mut app.state;
    ui.horizontal(|ui| {
        let l = ui.label(format!("micro-batches {now} →"));
        ui.add(DragValue::new(&mut state.live_micro_batches).range(1..=256))
            .labelled_by(l.id);
        if ui
            .button("Set micro-batches")
            .on_hover_text(
                "From the next step, pass each batch through the model in this many parts: \
                 the same gradients in less memory, one more forward pass per part",
            )
            .clicked()
        {
            run.send(Request::Control(Command::SetMicroBatches {
                micro_batches: state.live_micro_batches,
            }));
        }
    });
}

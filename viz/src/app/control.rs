//! The left panel: the run's status, play / pause / step, the objective, the temperature, a
//! new run and a fork, and the latest notable events.

use egui::{DragValue, RichText};
use workbench::control::Command;
use workbench::loss::LossConfig;

use super::WorkbenchApp;
use crate::session::Request;

/// Presets a new run can start from.
const PRESETS: [&str; 2] = ["tiny", "small"];

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
        temperature(app, ui);
    }

    ui.separator();
    new_run(app, ui);

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

/// The objective's temperature(s), a field to set one and a freeze toggle.
fn temperature(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let run = &mut app.runs[app.active];
    let h = run.session.history();
    let Some(last) = h.steps.last() else {
        return;
    };
    // Scalars are `logit_scale` (= 1/τ) for a single objective, `<part>/logit_scale` in a sum.
    let temps: Vec<(String, f32)> = last
        .scalars
        .iter()
        .filter_map(|(k, &v)| {
            let objective = match k.split_once('/') {
                Some((part, "logit_scale")) => part.to_owned(),
                None if k == "logit_scale" => h.objective.clone(),
                _ => return None,
            };
            Some((objective, 1.0 / v))
        })
        .collect();
    if temps.is_empty() {
        ui.label("this objective has no temperature");
        return;
    }
    for (objective, tau) in &temps {
        ui.label(format!("τ ({objective}) = {tau:.4}"));
    }
    let objective = temps[0].0.clone();
    let state = &mut app.state;
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
            prefix: format!("loss.{objective}.logit_scale"),
            frozen,
        }));
    }
}

/// Settings of a new run, Reset and Fork.
fn new_run(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    ui.label(RichText::new("New run").strong());
    let s = &mut app.state;
    egui::Grid::new("new_run").num_columns(2).show(ui, |ui| {
        let l = ui.label("preset");
        egui::ComboBox::from_id_salt("preset")
            .selected_text(&s.preset)
            .show_ui(ui, |ui| {
                for p in PRESETS {
                    ui.selectable_value(&mut s.preset, p.to_owned(), p);
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("batch size");
        ui.add(DragValue::new(&mut s.batch_size).range(2..=4096))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("learning rate");
        ui.add(
            DragValue::new(&mut s.lr)
                .range(1e-6..=1.0)
                .speed(1e-4)
                .max_decimals(6),
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("seed");
        ui.add(DragValue::new(&mut s.seed)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("steps");
        ui.add(DragValue::new(&mut s.steps).range(1..=1_000_000).speed(10))
            .labelled_by(l.id);
        ui.end_row();
    });
    ui.horizontal(|ui| {
        if ui
            .button("Reset")
            .on_hover_text("Replace this run with a new one of these settings")
            .clicked()
        {
            app.reset(false);
        }
        let forking = app.runs.get(app.active).is_some_and(|r| r.fork_pending);
        let fork = ui.add_enabled(
            app.active < app.runs.len() && !forking,
            egui::Button::new("Fork"),
        );
        if fork
            .on_hover_text("Checkpoint this run now and continue it as a second run")
            .clicked()
            && let Some(run) = app.runs.get_mut(app.active)
        {
            run.fork_pending = true;
            run.send(Request::Fork);
        }
    });
}

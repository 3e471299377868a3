//! The left panel: the run's status, play / pause / step, the objective, the temperature, a
//! new run and a fork, and the latest notable events.

use egui::{DragValue, RichText};
use workbench::control::Command;
use workbench::data::shapes::render::{COLOUR_NAMES, SHAPE_NAMES};
use workbench::loss::LossConfig;
use workbench::loss::composite::{SumConfig, SumPart};
use workbench::model::Precision;

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
        terms(app, ui);
        ui.separator();
        temperature(app, ui);
        bias(app, ui);
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
        device_rows(s, ui);
        let l = ui.label("precision");
        egui::ComboBox::from_id_salt("precision")
            .selected_text(s.precision.name())
            .show_ui(ui, |ui| {
                for p in Precision::ALL {
                    ui.selectable_value(&mut s.precision, p, p.name());
                }
            })
            .response
            .labelled_by(l.id)
            .on_hover_text(
                "bf16: matrix products on bf16 operands; weights, optimizer and losses stay f32",
            );
        ui.end_row();
    });
    egui::CollapsingHeader::new("Dataset (synthetic shapes)")
        .id_salt("dataset")
        .show(ui, |ui| dataset(&mut s.data, &mut s.holdout_text, ui));
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

/// The new-run form's device and data-parallel ranks (two rows of its grid).
fn device_rows(s: &mut super::UiState, ui: &mut egui::Ui) {
    let l = ui.label("device");
    egui::ComboBox::from_id_salt("device")
        .selected_text(&s.device)
        .show_ui(ui, |ui| {
            for (value, label) in &devices().choices {
                ui.selectable_value(&mut s.device, value.clone(), label);
            }
        })
        .response
        .labelled_by(l.id)
        .on_hover_text(&devices().note);
    ui.end_row();
    let l = ui.label("ranks");
    let most = most_ranks(&s.device);
    s.ranks = s.ranks.clamp(1, most);
    ui.add_enabled(most > 1, DragValue::new(&mut s.ranks).range(1..=most))
        .labelled_by(l.id)
        .on_hover_text(
            "Data parallel: one rank per device (the CPU repeated, or consecutive GPUs \
             from the chosen one), each on its share of the batch; the batch size must \
             divide by the ranks",
        )
        .on_disabled_hover_text(if cfg!(feature = "nccl") {
            "Data parallel needs a GPU after this one"
        } else {
            "Data parallel on GPUs goes through NCCL: this build lacks the `nccl` feature"
        });
    ui.end_row();
}

/// The device choices of the new-run form: the CPU, and the GPUs when this binary has CUDA.
struct Devices {
    /// `(value, label)`: `cpu`, then each CUDA device with its name and memory.
    choices: Vec<(String, String)>,
    /// The hover text: how many GPUs were found, or why none can be used.
    note: String,
}

/// The devices this build can train on, looked up once (opening each GPU takes a moment).
fn devices() -> &'static Devices {
    static DEVICES: std::sync::OnceLock<Devices> = std::sync::OnceLock::new();
    DEVICES.get_or_init(|| {
        let mut choices = vec![("cpu".to_owned(), "cpu".to_owned())];
        let note = match workbench::devices::cuda_devices(false) {
            Ok(gpus) => {
                choices.extend(gpus.iter().map(|g| {
                    let gib = workbench::devices::gib(g.total_bytes);
                    (
                        format!("cuda:{}", g.ordinal),
                        format!("cuda:{} · {} · {gib:.0} GiB", g.ordinal, g.name),
                    )
                }));
                format!("{} CUDA device(s) found", gpus.len())
            }
            Err(why) => format!("no GPU: {why}"),
        };
        Devices { choices, note }
    })
}

/// The most data-parallel ranks a run on `device` can have: 8 threads on the CPU; on a GPU,
/// it and the GPUs numbered after it.
fn most_ranks(device: &str) -> usize {
    if device == "cpu" {
        return 8;
    }
    if !cfg!(feature = "nccl") {
        return 1; // data parallel on GPUs goes through NCCL
    }
    let first = device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let gpus = devices().choices.len() - 1;
    gpus.saturating_sub(first).max(1)
}

/// The synthetic set's knobs (checked when the run starts: a bad value is reported there).
fn dataset(d: &mut workbench::data::ShapesConfig, holdout: &mut String, ui: &mut egui::Ui) {
    egui::Grid::new("dataset").num_columns(2).show(ui, |ui| {
        let l = ui.label("image side (px)");
        ui.add(DragValue::new(&mut d.image_size).range(16..=128).speed(1))
            .labelled_by(l.id);
        ui.end_row();
        let mut colours = d.colours.len();
        let l = ui.label("colours");
        if ui
            .add(DragValue::new(&mut colours).range(1..=COLOUR_NAMES.len()))
            .labelled_by(l.id)
            .on_hover_text(COLOUR_NAMES.join(", "))
            .changed()
        {
            d.colours = COLOUR_NAMES[..colours]
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        ui.end_row();
        let mut shapes = d.shapes.len();
        let l = ui.label("shapes");
        if ui
            .add(DragValue::new(&mut shapes).range(1..=SHAPE_NAMES.len()))
            .labelled_by(l.id)
            .on_hover_text(SHAPE_NAMES.join(", "))
            .changed()
        {
            d.shapes = SHAPE_NAMES[..shapes]
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        ui.end_row();
        let l = ui.label("objects per image");
        ui.horizontal(|ui| {
            ui.add(DragValue::new(&mut d.min_objects).range(1..=3))
                .labelled_by(l.id);
            ui.label("to");
            ui.add(DragValue::new(&mut d.max_objects).range(1..=3));
        });
        ui.end_row();
        let l = ui.label("noise");
        ui.add(
            DragValue::new(&mut d.noise)
                .range(0.0..=0.5)
                .speed(0.005)
                .max_decimals(3),
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("captions per image");
        ui.add(DragValue::new(&mut d.captions_per_image).range(1..=5))
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("training images");
        ui.add(
            DragValue::new(&mut d.train_size)
                .range(64..=1_000_000)
                .speed(100),
        )
        .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("data seed");
        ui.add(DragValue::new(&mut d.seed)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("held-out pairs");
        if ui
            .text_edit_singleline(holdout)
            .labelled_by(l.id)
            .on_hover_text("colour–shape pairs never shown in training, e.g. red circle, blue star")
            .changed()
        {
            d.holdout = holdout
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(ToOwned::to_owned)
                .collect();
        }
        ui.end_row();
    });
}

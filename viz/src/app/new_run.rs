//! The new-run form of the left panel: preset, batch, learning rate, seed, steps, device and
//! data-parallel ranks, precision, the synthetic dataset's knobs; Reset and Fork.

use egui::{DragValue, RichText};
use workbench::data::shapes::render::{COLOUR_NAMES, SHAPE_NAMES};
use workbench::model::Precision;

use super::{UiState, WorkbenchApp};
use crate::session::Request;

/// Presets a new run can start from.
const PRESETS: [&str; 2] = ["tiny", "small"];

/// Settings of a new run, Reset and Fork.
pub fn show(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
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
        let l = ui.label("micro-batches");
        ui.add(DragValue::new(&mut s.micro_batches).range(1..=256))
            .labelled_by(l.id)
            .on_hover_text(
                "Pass each step's batch through the model in this many parts, so that the \
                 activations need the memory of one part; the loss still contrasts the whole \
                 batch and the gradients are the same (one more forward pass per part). It \
                 must divide the batch (each rank's share of it on several ranks)",
            );
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
fn device_rows(s: &mut UiState, ui: &mut egui::Ui) {
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
    ui.label("");
    ui.add_enabled(
        s.ranks > 1,
        egui::Checkbox::new(&mut s.local_loss, "local loss"),
    )
    .on_hover_text(
        "Each rank computes the loss of its own rows against the whole gathered batch \
             (OpenCLIP's local_loss): the same gradients for less loss compute. Every \
             objective but align_uniform and CLOOB with its Hopfield retrieval",
    );
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
pub(super) fn most_ranks(device: &str) -> usize {
    if device == "cpu" {
        return 8;
    }
    if !cfg!(feature = "nccl") {
        return 1; // data parallel on GPUs goes through NCCL
    }
    let gpus = devices().choices.len() - 1;
    gpus.saturating_sub(gpu_ordinal(device).unwrap_or(0)).max(1)
}

/// `N` of `cuda:N` (`cuda` is 0); `None` for anything else.
fn gpu_ordinal(device: &str) -> Option<usize> {
    match device.strip_prefix("cuda") {
        Some("") => Some(0),
        Some(rest) => rest.strip_prefix(':')?.parse().ok(),
        None => None,
    }
}

/// One device per rank for a run on `device` with `ranks` ranks (as the form shows them, at
/// most [`most_ranks`]): `cpu` repeated, or consecutive GPUs from the chosen one.
pub(super) fn rank_devices(device: &str, ranks: usize) -> anyhow::Result<Vec<String>> {
    let ranks = ranks.clamp(1, most_ranks(device));
    if device == "cpu" {
        return Ok(vec![device.to_owned(); ranks]);
    }
    let first = gpu_ordinal(device)
        .ok_or_else(|| anyhow::anyhow!("device {device:?}: expected cpu or cuda:N"))?;
    Ok((first..first + ranks)
        .map(|n| format!("cuda:{n}"))
        .collect())
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

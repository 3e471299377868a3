//! The runs: every session (the first run, resets, forks), which one the panels show, and
//! whose loss the curves panel overlays.

use egui::RichText;

use super::WorkbenchApp;

/// Draws the runs panel.
pub fn show(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    ui.label("Select the run the panels show; forks start paused from their parent's checkpoint.");
    egui::Grid::new("runs")
        .striped(true)
        .num_columns(7)
        .show(ui, |ui| {
            ui.label(RichText::new("run").strong());
            ui.label(RichText::new("step").strong());
            ui.label(RichText::new("objective").strong());
            ui.label(RichText::new("loss").strong());
            ui.label(RichText::new("state").strong());
            ui.label(RichText::new("device").strong());
            ui.label(RichText::new("overlay").strong());
            ui.end_row();
            let mut chosen = None;
            for (i, run) in app.runs.iter_mut().enumerate() {
                let s = &run.session;
                let h = s.history();
                if ui.selectable_label(i == app.active, s.name()).clicked() {
                    chosen = Some(i);
                }
                ui.label(format!("{} / {}", s.step(), h.total_steps));
                ui.label(&h.objective);
                ui.label(
                    h.steps
                        .last()
                        .map_or_else(|| "–".to_owned(), |l| format!("{:.4}", l.loss)),
                );
                ui.label(if h.finished {
                    "finished"
                } else if s.playing() {
                    "training"
                } else {
                    "paused"
                });
                ui.label(&h.device);
                ui.add_enabled(
                    i != app.active,
                    egui::Checkbox::without_text(&mut run.overlay),
                )
                .on_hover_text(format!("overlay the loss of {} on the curves", s.name()));
                ui.end_row();
            }
            if let Some(i) = chosen {
                app.active = i;
            }
        });
    if app.starting() {
        ui.label("starting a run…");
    }
}

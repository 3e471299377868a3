//! A batch of validation pairs: the image × caption similarity matrix, each pair's loss and
//! the likeliest false negatives.

use egui::RichText;
use egui_plot::{Bar, BarChart, Plot};
use workbench::analysis::BatchSimilarity;

use super::UiState;
use super::paint::{HeatMap, role};
use super::run::Run;
use crate::figure::{Colormap, Role};
use crate::session::Request;

/// Pairs in the inspected batch.
pub const PAIRS: usize = 32;

/// Draws the batch panel, asking for the matrix when needed.
pub fn show(run: &mut Run, state: &mut UiState, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        if ui.button("Refresh batch").clicked() {
            run.batch.invalidate();
        }
        if run.batch.pending() {
            ui.label("computing…");
        }
    });
    let refresh = (run.session.playing() && state.refresh_every > 0).then_some(state.refresh_every);
    if run.batch.want(&PAIRS, run.step(), refresh) {
        run.send(Request::Batch { n: PAIRS });
    }
    let Some(b) = run.batch.value() else {
        ui.label("Waiting for the first answer…");
        return;
    };
    egui::ScrollArea::vertical().show(ui, |ui| batch_ui(b, ui));
}

fn batch_ui(b: &BatchSimilarity, ui: &mut egui::Ui) {
    ui.label(format!(
        "{} validation pairs: cosine similarity of every image (rows) with every caption \
         (columns); the diagonal holds the positives. τ = {:.4}.",
        b.n, b.temperature
    ));
    let labels: Vec<String> = (0..b.n).map(|i| i.to_string()).collect();
    let outline: Vec<(usize, usize)> = b
        .false_negatives
        .iter()
        .map(|f| (f.image, f.caption))
        .collect();
    ui.horizontal_top(|ui| {
        let hovered = HeatMap {
            values: &b.similarity,
            rows: b.n,
            cols: b.n,
            colormap: Colormap::Diverging,
            range: None,
            cell: 12.0,
            row_labels: &labels,
            col_labels: &labels,
            outline: &outline,
        }
        .show(ui);
        ui.vertical(|ui| {
            ui.set_max_width(420.0);
            match hovered {
                Some((r, c)) => {
                    ui.label(format!("image {r}: {}", caption(b, r)));
                    ui.label(format!("caption {c}: {}", caption(b, c)));
                    if let Some(v) = b.similarity.get(r * b.n + c) {
                        ui.label(format!("cosine {v:.4}"));
                    }
                }
                None => {
                    ui.label(
                        "Point at a cell to read its captions; outlined cells are the \
                              likeliest false negatives.",
                    );
                }
            }
        });
    });

    ui.add_space(8.0);
    ui.label(RichText::new("Per-pair loss (symmetric InfoNCE)").strong());
    let bars: Vec<Bar> = b
        .loss
        .iter()
        .enumerate()
        .map(|(i, &l)| Bar::new(i as f64, f64::from(l)).width(0.8))
        .collect();
    Plot::new("batch_loss")
        .height(160.0)
        .x_axis_label("pair")
        .y_axis_label("loss")
        .show(ui, |p| {
            p.bar_chart(BarChart::new("pair loss", bars).color(role(Role::Image)));
        });

    ui.add_space(8.0);
    ui.label(RichText::new("Likeliest false negatives").strong());
    if b.false_negatives.is_empty() {
        ui.label("none");
        return;
    }
    egui::Grid::new("false_negatives")
        .striped(true)
        .num_columns(5)
        .show(ui, |ui| {
            ui.label("image");
            ui.label("its caption");
            ui.label("other caption");
            ui.label("cosine");
            ui.label("margin");
            ui.end_row();
            for f in &b.false_negatives {
                let same = f.same_text;
                let text = |t: String| {
                    let t = RichText::new(t);
                    if same {
                        t.color(role(Role::Positive)).strong()
                    } else {
                        t
                    }
                };
                ui.label(f.image.to_string());
                ui.label(text(caption(b, f.image)));
                ui.label(text(format!(
                    "{}: {}{}",
                    f.caption,
                    caption(b, f.caption),
                    if same { " (same text)" } else { "" }
                )));
                ui.label(format!("{:.3}", f.similarity));
                ui.label(format!("{:+.3}", f.margin));
                ui.end_row();
            }
        });
}

fn caption(b: &BatchSimilarity, i: usize) -> String {
    b.captions.get(i).cloned().unwrap_or_default()
}

//! The modality gap on the validation split: the joint 2-D PCA of matched pairs, the gap's
//! geometry, and retrieval / zero-shot after shifting along the gap by δ.

use egui::{Color32, RichText};
use egui_plot::{Legend, Line, MarkerShape, Plot, Points};
use workbench::analysis::GapAnalysis;

use super::UiState;
use super::paint::role;
use super::run::Run;
use crate::figure::Role;
use crate::session::Request;

/// Pair lines drawn in the scatter plot.
const PAIR_LINES: usize = 150;

/// Draws the gap panel, asking for the analysis at the chosen δ when needed.
pub fn show(run: &mut Run, state: &mut UiState, ui: &mut egui::Ui) {
    let mut released = false;
    ui.horizontal(|ui| {
        let l = ui.label("Gap shift δ");
        let r = ui
            .add(egui::Slider::new(&mut state.delta, -0.5..=1.0).step_by(0.05))
            .labelled_by(l.id);
        released = !r.dragged();
        for (d, label) in [(0.0, "δ = 0"), (1.0, "δ = 1 (close the gap)")] {
            if ui.button(label).clicked() {
                state.delta = d;
            }
        }
        if ui.button("Refresh").clicked() {
            run.gap.invalidate();
        }
        if run.gap.pending() {
            ui.label("computing…");
        }
    });
    ui.label(
        RichText::new(
            "Images move by −δ/2·Δ and texts by +δ/2·Δ along the gap vector Δ, then are \
             re-normalised: δ = 1 closes the gap, δ < 0 widens it.",
        )
        .weak(),
    );
    let key = (state.delta * 1000.0).round() as i32;
    if released && run.gap.want(&key, run.step(), None) {
        run.send(Request::Gap {
            deltas: vec![key as f32 / 1000.0],
        });
    }
    let Some(g) = run.gap.value() else {
        ui.label("Waiting for the first answer…");
        return;
    };
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(300.0);
            numbers(ui, g);
        });
        scatter(ui, g);
    });
}

fn numbers(ui: &mut egui::Ui, g: &GapAnalysis) {
    let r = &g.report;
    ui.label(RichText::new(format!("{} matched pairs ({})", r.pairs, g.split)).strong());
    egui::Grid::new("gap_numbers")
        .num_columns(2)
        .show(ui, |ui| {
            let mut row = |name: &str, v: String| {
                ui.label(name);
                ui.label(v);
                ui.end_row();
            };
            row(
                "centroid distance ‖Δ‖",
                format!("{:.4}", r.centroid_distance),
            );
            row("centroid cosine", format!("{:.4}", r.centroid_cosine));
            row("image cone (mean cos)", format!("{:.4}", r.image_cone));
            row("text cone (mean cos)", format!("{:.4}", r.text_cone));
            row("separability", format!("{:.3}", r.separability));
            row("matched cosine", format!("{:.4}", r.matched_mean));
            row("unmatched cosine", format!("{:.4}", r.unmatched_mean));
        });
    ui.add_space(8.0);
    for p in &g.sweep {
        ui.label(RichText::new(format!("After shifting by δ = {:.2}", p.delta)).strong());
        egui::Grid::new(("gap_shift", (p.delta * 1000.0) as i32))
            .num_columns(2)
            .show(ui, |ui| {
                let mut row = |name: &str, v: String| {
                    ui.label(name);
                    ui.label(v);
                    ui.end_row();
                };
                row("image→text R@1", format!("{:.3}", p.image_to_text_r1));
                row("text→image R@1", format!("{:.3}", p.text_to_image_r1));
                row(
                    "zero-shot accuracy",
                    p.zero_shot
                        .map_or_else(|| "–".into(), |z| format!("{z:.3}")),
                );
                row("centroid distance", format!("{:.4}", p.centroid_distance));
            });
    }
}

fn scatter(ui: &mut egui::Ui, g: &GapAnalysis) {
    let p = &g.pca;
    let pts = |v: &[[f32; 2]]| -> Vec<[f64; 2]> {
        v.iter()
            .map(|q| [f64::from(q[0]), f64::from(q[1])])
            .collect()
    };
    let (images, texts) = (pts(&p.image), pts(&p.text));
    let at = |c: [f32; 2]| vec![[f64::from(c[0]), f64::from(c[1])]];
    ui.vertical(|ui| {
        ui.label(format!(
            "Joint PCA: PC 1 {:.0} %, PC 2 {:.0} % of the variance; lines join pairs",
            100.0 * p.explained[0],
            100.0 * p.explained[1]
        ));
        Plot::new("gap_pca")
            .data_aspect(1.0)
            .legend(Legend::default())
            .x_axis_label("PC 1")
            .y_axis_label("PC 2")
            .show(ui, |plot| {
                let line = Color32::from_gray(190);
                for (a, b) in images.iter().zip(&texts).take(PAIR_LINES) {
                    plot.line(
                        Line::new("pairs", vec![*a, *b])
                            .color(line)
                            .width(0.5)
                            .allow_hover(false),
                    );
                }
                plot.points(
                    Points::new("images", images.clone())
                        .color(role(Role::Image))
                        .radius(2.0),
                );
                plot.points(
                    Points::new("captions", texts.clone())
                        .color(role(Role::Text))
                        .radius(2.0),
                );
                plot.points(
                    Points::new("image centroid", at(p.image_centroid))
                        .color(role(Role::Image))
                        .shape(MarkerShape::Diamond)
                        .radius(7.0),
                );
                plot.points(
                    Points::new("text centroid", at(p.text_centroid))
                        .color(role(Role::Text))
                        .shape(MarkerShape::Diamond)
                        .radius(7.0),
                );
            });
    });
}

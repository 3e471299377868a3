//! Where each word lands: a validation image with the cosine of one word's token embedding
//! with every patch blended over it; the caption as clickable words, free text, and the
//! pointing game.

use egui::RichText;
use workbench::analysis::Alignment;
use workbench::data::Split;

use super::UiState;
use super::attention::sample_picker;
use super::paint;
use super::run::Run;
use crate::figure::{Colormap, Role};
use crate::session::Request;

/// Images the pointing game plays.
pub const POINTING_IMAGES: usize = 200;

/// The label of the whole-caption map.
pub const WHOLE_CAPTION: &str = "whole caption";

/// The words of the aligned text (its tokens without the special ones), in order.
pub fn words(a: &Alignment) -> Vec<String> {
    a.tokens
        .iter()
        .filter(|t| !t.starts_with('<'))
        .cloned()
        .collect()
}

/// The map shown for `word` (`None`, or a word not in the text: the whole caption's).
pub fn selected_map(a: &Alignment, word: Option<&str>) -> (String, Vec<f32>) {
    word.and_then(|w| a.word_map(w).map(|(_, m)| (w.to_owned(), m.to_vec())))
        .unwrap_or_else(|| (WHOLE_CAPTION.to_owned(), a.caption_patch.clone()))
}

/// Draws the alignment panel, asking for the alignment when needed.
pub fn show(run: &mut Run, state: &mut UiState, ui: &mut egui::Ui) {
    if sample_picker(ui, state, run) {
        state.align_text.clear();
    }
    let typed = (!state.align_text.trim().is_empty()).then(|| state.align_text.trim().to_owned());
    let key = (state.sample, typed.clone());
    let refresh = (run.session.playing() && state.refresh_every > 0).then_some(state.refresh_every);
    if run.alignment.want(&key, run.step(), refresh) {
        run.send(Request::Align {
            split: Split::Val,
            index: state.sample,
            text: typed,
        });
    }
    text_field(ui, state, run);

    let generation = run.alignment.generation();
    let ctx = ui.ctx().clone();
    let Some(reply) = run.alignment.value() else {
        ui.label("Waiting for the first answer…");
        return;
    };
    let a = &reply.alignment;
    ui.label(format!("text: {:?} — score {:.3}", a.text, a.score));
    ui.horizontal_wrapped(|ui| {
        ui.label("Words:");
        for w in words(a) {
            let selected = state.word.as_deref() == Some(w.as_str());
            if ui.add(egui::Button::new(&w).selected(selected)).clicked() {
                state.word = Some(w);
            }
        }
        let whole = state.word.as_ref().is_none_or(|w| a.word_map(w).is_none());
        if ui
            .add(egui::Button::new(WHOLE_CAPTION).selected(whole))
            .clicked()
        {
            state.word = None;
        }
    });
    let (label, map) = selected_map(a, state.word.as_deref());
    let tex =
        run.textures
            .alignment
            .get(&ctx, "alignment", (generation, Some(label.clone())), || {
                paint::overlay(&reply.image, &map, a.grid, Colormap::Diverging, None)
            });
    ui.horizontal_top(|ui| {
        paint::show_texture(ui, tex, 256.0);
        ui.vertical(|ui| {
            ui.label(format!("{label:?}: cosine with each patch"));
            let (lo, hi) = map
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            if lo.is_finite() {
                ui.label(format!("from {lo:.3} (blue) to {hi:.3} (red)"));
            }
            if reply.captions.len() > 1 {
                ui.add_space(6.0);
                ui.label("Other captions of this image:");
                for c in &reply.captions {
                    if ui.link(c).clicked() {
                        state.align_text.clone_from(c);
                    }
                }
            }
        });
    });

    ui.add_space(10.0);
    pointing(ui, run);
}

fn text_field(ui: &mut egui::Ui, state: &mut UiState, run: &mut Run) {
    ui.horizontal(|ui| {
        ui.label("Any text:");
        ui.add(
            egui::TextEdit::singleline(&mut state.align_text)
                .hint_text("e.g. a red circle")
                .desired_width(260.0),
        );
        if ui
            .button("Caption")
            .on_hover_text("Back to the sample's own caption")
            .clicked()
        {
            state.align_text.clear();
        }
        if ui.button("Refresh").clicked() {
            run.alignment.invalidate();
        }
        if run.alignment.pending() {
            ui.label("computing…");
        }
    });
}

fn pointing(ui: &mut egui::Ui, run: &mut Run) {
    ui.label(RichText::new("Pointing game").strong());
    ui.horizontal(|ui| {
        if ui.button("Play the pointing game").clicked() {
            run.pointing.invalidate();
            if run.pointing.want(&POINTING_IMAGES, run.step(), None) {
                run.send(Request::Pointing {
                    images: POINTING_IMAGES,
                });
            }
        }
        if run.pointing.pending() {
            ui.label("computing…");
        }
    });
    match run.pointing.value() {
        Some(p) => {
            ui.label(format!(
                "{} object words in {} images: the best patch lies on the object for {:.1} % \
                 (a random direction: {:.1} %, a random patch: {:.1} %)",
                p.mentions,
                p.images,
                100.0 * p.accuracy,
                100.0 * p.baseline,
                100.0 * p.chance
            ));
            let bar = |ui: &mut egui::Ui, name: &str, v: f32, c| {
                ui.horizontal(|ui| {
                    ui.add_sized([130.0, 14.0], egui::Label::new(name));
                    ui.add(
                        egui::ProgressBar::new(v)
                            .desired_width(240.0)
                            .fill(paint::role(c))
                            .text(format!("{:.1} %", 100.0 * v)),
                    );
                });
            };
            bar(ui, "object words", p.accuracy, Role::Positive);
            bar(ui, "random direction", p.baseline, Role::Neutral);
            bar(ui, "random patch", p.chance, Role::Neutral);
        }
        None => {
            ui.label(format!(
                "Do object words land on their object? Plays {POINTING_IMAGES} validation images."
            ));
        }
    }
}

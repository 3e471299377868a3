//! A batch of validation pairs: the image × caption similarity matrix, top-k retrieval in
//! either direction with the images shown, each pair's loss and the likeliest false negatives.

use egui::RichText;
use egui_plot::{Bar, BarChart, Plot};
use workbench::analysis::{BatchSimilarity, Direction};

use super::UiState;
use super::paint::{Cached, HeatMap, color_image, role, show_texture};
use super::run::Run;
use crate::figure::{Colormap, Role};
use crate::session::{BatchReply, Request};

/// Pairs in the inspected batch.
pub const PAIRS: usize = 32;

/// Matches listed by the retrieval view.
pub const TOP_K: usize = 5;

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
    let generation = run.batch.generation();
    let Some(b) = run.batch.value() else {
        ui.label("Waiting for the first answer…");
        return;
    };
    let thumbs = &mut run.textures.thumbnails;
    thumbs.resize_with(b.images.len(), Cached::default);
    let mut panel = Panel {
        b,
        thumbs,
        generation,
        ctx: ui.ctx().clone(),
    };
    egui::ScrollArea::vertical().show(ui, |ui| panel.show(state, ui));
}

/// What the panel draws from: the answer and the thumbnails' textures.
struct Panel<'a> {
    b: &'a BatchReply,
    thumbs: &'a mut Vec<Cached<u64>>,
    generation: u64,
    ctx: egui::Context,
}

impl Panel<'_> {
    /// The thumbnail of pair `i`'s image, `side` points wide.
    fn thumbnail(&mut self, ui: &mut egui::Ui, i: usize, side: f32) {
        let (Some(image), Some(cached)) = (self.b.images.get(i), self.thumbs.get_mut(i)) else {
            return;
        };
        let texture = cached.get(
            &self.ctx,
            &format!("batch image {i}"),
            self.generation,
            || color_image(image),
        );
        show_texture(ui, texture, side).on_hover_text(format!("image {i}"));
    }

    fn show(&mut self, state: &mut UiState, ui: &mut egui::Ui) {
        let reply: &BatchReply = self.b;
        let b = &reply.similarity;
        ui.label(format!(
            "{} validation pairs: cosine similarity of every image (rows) with every caption \
             (columns); the diagonal holds the positives. τ = {:.4}. Click a cell to make its \
             row (image → text) or column (text → image) the retrieval query.",
            b.n, b.temperature
        ));
        ui.label(format!(
            "In this batch: image→text R@1 {:.3}, R@{TOP_K} {:.3}; text→image R@1 {:.3}, \
             R@{TOP_K} {:.3} (a caption with the same text counts as correct).",
            b.recall_at(Direction::ImageToText, 1),
            b.recall_at(Direction::ImageToText, TOP_K),
            b.recall_at(Direction::TextToImage, 1),
            b.recall_at(Direction::TextToImage, TOP_K),
        ));
        let labels: Vec<String> = (0..b.n).map(|i| i.to_string()).collect();
        let outline: Vec<(usize, usize)> = b
            .false_negatives
            .iter()
            .map(|f| (f.image, f.caption))
            .collect();
        ui.horizontal_top(|ui| {
            let pointer = HeatMap {
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
            .show_clickable(ui);
            let hovered = pointer.hovered;
            if let Some((r, c)) = pointer.clicked {
                state.batch_query = match state.batch_direction {
                    Direction::ImageToText => r,
                    Direction::TextToImage => c,
                };
            }
            ui.vertical(|ui| {
                ui.set_max_width(420.0);
                match hovered {
                    Some((r, c)) => {
                        ui.label(format!("image {r}: {}", caption(b, r)));
                        ui.label(format!("caption {c}: {}", caption(b, c)));
                        ui.label(format!("cosine {:.4}", b.at(r, c)));
                    }
                    None => {
                        ui.label(
                            "Point at a cell to read its captions; outlined cells are the \
                             likeliest false negatives.",
                        );
                    }
                }
                ui.add_space(8.0);
                self.retrieval(state, ui);
            });
        });

        ui.add_space(8.0);
        loss_bars(b, ui);
        ui.add_space(8.0);
        self.false_negatives(ui);
    }

    /// The query (an image or a caption) and its top-k matches.
    fn retrieval(&mut self, state: &mut UiState, ui: &mut egui::Ui) {
        let reply: &BatchReply = self.b;
        let b = &reply.similarity;
        ui.label(RichText::new(format!("Top-{TOP_K} retrieval")).strong());
        ui.horizontal(|ui| {
            ui.radio_value(
                &mut state.batch_direction,
                Direction::ImageToText,
                "image → text",
            );
            ui.radio_value(
                &mut state.batch_direction,
                Direction::TextToImage,
                "text → image",
            );
        });
        state.batch_query = state.batch_query.min(b.n.saturating_sub(1));
        ui.horizontal(|ui| {
            let l = ui.label("query");
            ui.add(egui::DragValue::new(&mut state.batch_query).range(0..=b.n.saturating_sub(1)))
                .labelled_by(l.id);
        });
        let q = state.batch_query;
        let hits = b.top_k(q, state.batch_direction, TOP_K);
        match state.batch_direction {
            Direction::ImageToText => {
                ui.horizontal(|ui| {
                    self.thumbnail(ui, q, 96.0);
                    ui.label(format!("image {q}\nits caption: {}", caption(b, q)));
                });
                egui::Grid::new("top_captions")
                    .striped(true)
                    .num_columns(3)
                    .show(ui, |ui| {
                        for h in &hits {
                            ui.label(format!("{}.", h.rank));
                            ui.label(mark(
                                format!("caption {}: {}", h.index, caption(b, h.index)),
                                h.correct,
                            ));
                            ui.label(format!("{:.3}", h.similarity));
                            ui.end_row();
                        }
                    });
            }
            Direction::TextToImage => {
                ui.label(format!("caption {q}: {}", caption(b, q)));
                ui.horizontal_top(|ui| {
                    for h in &hits {
                        ui.vertical(|ui| {
                            self.thumbnail(ui, h.index, 64.0);
                            ui.label(mark(format!("{}. image {}", h.rank, h.index), h.correct));
                            ui.label(format!("{:.3}", h.similarity));
                        });
                    }
                });
            }
        }
        ui.label(
            RichText::new("green: the query's own pair, or a caption with the same text")
                .small()
                .weak(),
        );
    }

    fn false_negatives(&mut self, ui: &mut egui::Ui) {
        let reply: &BatchReply = self.b;
        let b = &reply.similarity;
        ui.label(RichText::new("Likeliest false negatives").strong());
        if b.false_negatives.is_empty() {
            ui.label("none");
            return;
        }
        egui::Grid::new("false_negatives")
            .striped(true)
            .num_columns(6)
            .show(ui, |ui| {
                ui.label("");
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
                    self.thumbnail(ui, f.image, 32.0);
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
}

/// A retrieved item's text, green when it is a correct match.
fn mark(text: String, correct: bool) -> RichText {
    let t = RichText::new(text);
    if correct {
        t.color(role(Role::Positive)).strong()
    } else {
        t
    }
}

fn loss_bars(b: &BatchSimilarity, ui: &mut egui::Ui) {
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
}

fn caption(b: &BatchSimilarity, i: usize) -> String {
    b.captions.get(i).cloned().unwrap_or_default()
}

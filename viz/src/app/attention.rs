//! Attention of both towers for one validation sample: the pooled query's attention over the
//! patches blended over the image (one layer and head, or the rollout), the text tower's
//! token × token matrix, and the whole layers × heads grid.

use egui::RichText;
use workbench::analysis::AttentionView;
use workbench::data::Split;

use super::UiState;
use super::paint::{self, Cached, HeatMap};
use super::run::Run;
use crate::figure::Colormap;
use crate::session::{AttentionReply, Request};

/// Sample picker shared by the attention and alignment panels; returns whether it changed.
pub fn sample_picker(ui: &mut egui::Ui, state: &mut UiState, run: &Run) -> bool {
    let last = run.session.config().data.val_size.saturating_sub(1);
    let before = state.sample;
    ui.horizontal(|ui| {
        let l = ui.label("Validation sample");
        ui.add(egui::DragValue::new(&mut state.sample).range(0..=last))
            .labelled_by(l.id);
        if ui
            .small_button("◀")
            .on_hover_text("previous sample")
            .clicked()
        {
            state.sample = state.sample.saturating_sub(1);
        }
        if ui.small_button("▶").on_hover_text("next sample").clicked() {
            state.sample = (state.sample + 1).min(last);
        }
    });
    state.sample = state.sample.min(last);
    state.sample != before
}

/// The map over the patches for (layer, head); `None` layer = rollout, `None` head = mean.
pub(super) fn image_map(
    view: &AttentionView,
    pool: workbench::model::Pool,
    layer: Option<usize>,
    head: Option<usize>,
) -> Vec<f32> {
    match (layer, head) {
        (None, _) => view.rollout_to_patches(pool),
        (Some(l), Some(h)) => view.cls_to_patches(l, h, pool),
        (Some(l), None) => {
            let heads = view.vision.heads.max(1);
            let mut mean = view.cls_to_patches(l, 0, pool);
            for h in 1..heads {
                for (m, v) in mean.iter_mut().zip(view.cls_to_patches(l, h, pool)) {
                    *m += v;
                }
            }
            for m in &mut mean {
                *m /= heads as f32;
            }
            mean
        }
    }
}

/// The text matrix for (layer, head), as above.
pub(super) fn text_map(
    view: &AttentionView,
    layer: Option<usize>,
    head: Option<usize>,
) -> Vec<f32> {
    let st = &view.text_attention;
    match (layer, head) {
        (None, _) => view.text_rollout.clone(),
        (Some(l), Some(h)) => st.map(l, h).to_vec(),
        (Some(l), None) => st.head_mean(l),
    }
}

/// Draws the attention panel, asking for the sample's attention when needed.
pub fn show(run: &mut Run, state: &mut UiState, ui: &mut egui::Ui) {
    sample_picker(ui, state, run);
    let refresh = (run.session.playing() && state.refresh_every > 0).then_some(state.refresh_every);
    if run.attention.want(&state.sample, run.step(), refresh) {
        run.send(Request::Attention {
            split: Split::Val,
            index: state.sample,
        });
    }
    ui.horizontal(|ui| {
        ui.selectable_value(&mut state.text_tower, false, "Image tower");
        ui.selectable_value(&mut state.text_tower, true, "Text tower");
        if ui.button("Refresh").clicked() {
            run.attention.invalidate();
        }
        if run.attention.pending() {
            ui.label("computing…");
        }
    });
    let generation = run.attention.generation();
    let Some(reply) = run.attention.value() else {
        ui.label("Waiting for the first answer…");
        return;
    };
    let (layers, heads) = if state.text_tower {
        (
            reply.view.text_attention.layers,
            reply.view.text_attention.heads,
        )
    } else {
        (reply.view.vision.layers, reply.view.vision.heads)
    };
    if state.layer.is_some_and(|l| l >= layers) {
        state.layer = None;
    }
    if state.head.is_some_and(|h| h >= heads) {
        state.head = None;
    }
    ui.horizontal(|ui| {
        let name =
            |l: Option<usize>, none: &str| l.map_or_else(|| none.to_owned(), |l| l.to_string());
        egui::ComboBox::from_label("layer")
            .selected_text(name(state.layer, "rollout"))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut state.layer, None, "rollout");
                for l in 0..layers {
                    ui.selectable_value(&mut state.layer, Some(l), l.to_string());
                }
            });
        ui.add_enabled_ui(state.layer.is_some(), |ui| {
            egui::ComboBox::from_label("head")
                .selected_text(name(state.head, "mean"))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut state.head, None, "mean");
                    for h in 0..heads {
                        ui.selectable_value(&mut state.head, Some(h), h.to_string());
                    }
                });
        });
    });
    ui.label(format!("caption: {:?}", reply.text));
    let ctx = ui.ctx().clone();
    let textures = &mut run.textures;
    egui::ScrollArea::vertical().show(ui, |ui| {
        if state.text_tower {
            text_ui(ui, reply, state);
        } else {
            image_ui(ui, &ctx, reply, generation, textures, state);
        }
    });
}

/// The image tower: the selected map over the image, then every layer and head.
fn image_ui(
    ui: &mut egui::Ui,
    ctx: &egui::Context,
    reply: &AttentionReply,
    generation: u64,
    textures: &mut super::run::Textures,
    state: &mut UiState,
) {
    let key = (generation, false, state.layer, state.head);
    let tex = textures.attention.get(ctx, "attention", key, || {
        let map = image_map(&reply.view, reply.pool, state.layer, state.head);
        paint::overlay(&reply.image, &map, reply.view.grid, Colormap::Viridis, None)
    });
    ui.horizontal_top(|ui| {
        paint::show_texture(ui, tex, 256.0);
        let what = match (state.layer, state.head) {
            (None, _) => "rollout over all layers".to_owned(),
            (Some(l), Some(h)) => format!("layer {l}, head {h}"),
            (Some(l), None) => format!("layer {l}, mean over heads"),
        };
        let query = match reply.pool {
            workbench::model::Pool::Cls => "class token",
            workbench::model::Pool::Mean | workbench::model::Pool::Map => "mean of patch queries",
        };
        ui.label(format!(
            "{query} → patches, {what}\n(colours span this map's own range)"
        ));
    });
    ui.add_space(8.0);
    ui.label(
        RichText::new("Every layer (rows) and head (columns); click one to select it").strong(),
    );
    image_grid(
        ui,
        ctx,
        reply,
        generation,
        &mut textures.attention_grid,
        state,
    );
}

fn image_grid(
    ui: &mut egui::Ui,
    ctx: &egui::Context,
    reply: &AttentionReply,
    generation: u64,
    cache: &mut Vec<Cached<u64>>,
    state: &mut UiState,
) {
    let (layers, heads) = (reply.view.vision.layers, reply.view.vision.heads);
    cache.resize_with(layers * heads, Cached::default);
    pick_grid(ui, "attention_grid", layers, heads, state, |ui, l, h| {
        let tex = cache[l * heads + h].get(ctx, "attention cell", generation, || {
            let map = reply.view.cls_to_patches(l, h, reply.pool);
            paint::overlay(&reply.image, &map, reply.view.grid, Colormap::Viridis, None)
        });
        paint::show_texture(ui, tex, 72.0)
    });
}

/// A layers × heads grid of cells drawn by `cell`, each a button labelled "layer l, head h";
/// a click selects that layer and head.
fn pick_grid(
    ui: &mut egui::Ui,
    id: &str,
    layers: usize,
    heads: usize,
    state: &mut UiState,
    mut cell: impl FnMut(&mut egui::Ui, usize, usize) -> egui::Response,
) {
    egui::Grid::new(id).show(ui, |ui| {
        for l in 0..layers {
            for h in 0..heads {
                let name = format!("layer {l}, head {h}");
                let r = ui
                    .push_id((l, h), |ui| cell(ui, l, h))
                    .inner
                    .interact(egui::Sense::click());
                r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &name));
                if r.on_hover_text(&name).clicked() {
                    state.layer = Some(l);
                    state.head = Some(h);
                }
            }
            ui.end_row();
        }
    });
}

fn text_ui(ui: &mut egui::Ui, reply: &AttentionReply, state: &mut UiState) {
    let view = &reply.view;
    let st = &view.text_attention;
    let tokens: Vec<String> = view.tokens.iter().take(st.len).cloned().collect();
    ui.label("Query tokens (rows) attend to key tokens (columns); causal, so the upper triangle is empty.");
    HeatMap {
        values: &text_map(view, state.layer, state.head),
        rows: st.len,
        cols: st.len,
        colormap: Colormap::Viridis,
        range: Some((0.0, 1.0)),
        cell: 22.0,
        row_labels: &tokens,
        col_labels: &tokens,
        outline: &[],
    }
    .show(ui);
    ui.add_space(8.0);
    ui.label(
        RichText::new("Every layer (rows) and head (columns); click one to select it").strong(),
    );
    pick_grid(
        ui,
        "text_attention_grid",
        st.layers,
        st.heads,
        state,
        |ui, l, h| {
            ui.scope(|ui| {
                HeatMap {
                    values: st.map(l, h),
                    rows: st.len,
                    cols: st.len,
                    colormap: Colormap::Viridis,
                    range: Some((0.0, 1.0)),
                    cell: 5.0,
                    row_labels: &[],
                    col_labels: &[],
                    outline: &[],
                }
                .show(ui);
            })
            .response
        },
    );
}

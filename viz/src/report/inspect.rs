//! Figures of one image–caption pair (attention, alignment, relevance), of the head
//! diagnostics and of a batch's similarity matrix.

use super::rgb;
use crate::figure::{
    BarChart, BarSeries, Colormap, Figure, FigureError, Heatmap, Overlay, OverlayGrid,
};
use workbench::analysis::{Alignment, AttentionView, BatchSimilarity, HeadDiagnostics, Relevance};
use workbench::data::RgbImage;
use workbench::model::Pool;

fn panel(title: String, image: Option<&RgbImage>, map: Vec<f32>, grid: usize) -> Overlay {
    Overlay {
        title,
        image: image.map(rgb),
        map,
        grid: (grid, grid),
        range: None,
    }
}

/// A layers × heads grid of the pooled query's attention over the patches, blended over the
/// image, with the attention rollout in a last row.
pub fn attention_grid(
    view: &AttentionView,
    image: &RgbImage,
    pool: Pool,
) -> Result<Figure, FigureError> {
    let g = view.grid;
    let mut panels = Vec::new();
    for l in 0..view.vision.layers {
        for h in 0..view.vision.heads {
            panels.push(panel(
                format!("layer {l} head {h}"),
                Some(image),
                view.cls_to_patches(l, h, pool),
                g,
            ));
        }
    }
    panels.push(panel(
        "rollout".into(),
        Some(image),
        view.rollout_to_patches(pool),
        g,
    ));
    let query = match pool {
        Pool::Cls => "class token",
        Pool::Mean | Pool::Map => "mean of patch queries",
    };
    OverlayGrid {
        title: format!("Image attention, {query} → patches (layers × heads; last: rollout)"),
        panels,
        columns: view.vision.heads,
        colormap: Colormap::Viridis,
        shared_range: false,
        colorbar_label: "attention weight (per-panel range)".into(),
        panel_size: 128,
    }
    .render()
}

/// A layers × heads grid of the text tower's causal token × token maps (rows: queries).
pub fn text_attention_grid(view: &AttentionView) -> Result<Figure, FigureError> {
    let st = &view.text_attention;
    let mut panels = Vec::new();
    for l in 0..st.layers {
        for h in 0..st.heads {
            panels.push(Overlay {
                title: format!("layer {l} head {h}"),
                image: None,
                map: st.map(l, h).to_vec(),
                grid: (st.len, st.len),
                range: None,
            });
        }
    }
    OverlayGrid {
        title: format!("Text attention (query rows × key columns): {:?}", view.text),
        panels,
        columns: st.heads,
        colormap: Colormap::Viridis,
        shared_range: true,
        colorbar_label: "attention weight".into(),
        panel_size: 128,
    }
    .render()
}

/// One labelled token × token matrix of the text tower: layer `layer` averaged over heads, or
/// the rollout when `layer` is `None`.
pub fn text_attention(view: &AttentionView, layer: Option<usize>) -> Result<Figure, FigureError> {
    let st = &view.text_attention;
    let (values, what) = match layer {
        Some(l) if l < st.layers => (st.head_mean(l), format!("layer {l}, mean over heads")),
        Some(l) => {
            return Err(FigureError::input(
                "layer",
                format!("a layer index below {}", st.layers),
                l,
            ));
        }
        None => (view.text_rollout.clone(), "rollout over all layers".into()),
    };
    Heatmap {
        title: format!("Text attention, {what}"),
        values,
        rows: st.len,
        cols: st.len,
        row_labels: view.tokens.clone(),
        col_labels: view.tokens.clone(),
        x_label: "key token".into(),
        y_label: "query token".into(),
        colormap: Colormap::Viridis,
        range: Some((0.0, 1.0)),
        annotate: st.len <= 12,
        width: 640,
        height: 560,
    }
    .render()
}

/// Per head: mass on the first position (class token / BOS), on background patches (image) or
/// kept by the EOS query (text), and the normalised entropy.
pub fn head_mass_bars(d: &HeadDiagnostics, vision: bool) -> Result<Figure, FigureError> {
    let heads = if vision { &d.vision } else { &d.text };
    let (sink, second) = if vision {
        ("mass on class token", "mass on background patches")
    } else {
        ("mass on BOS", "EOS query's mass on itself")
    };
    BarChart {
        title: format!(
            "{} tower heads over {} pairs (no-op heads park their mass)",
            if vision { "Image" } else { "Text" },
            d.pairs
        ),
        y_label: "share of attention".into(),
        categories: heads
            .iter()
            .map(|m| format!("L{}H{}", m.layer, m.head))
            .collect(),
        series: vec![
            BarSeries {
                name: sink.into(),
                values: heads.iter().map(|m| f64::from(m.sink)).collect(),
            },
            BarSeries {
                name: second.into(),
                values: heads
                    .iter()
                    .map(|m| m.background.map_or(f64::NAN, f64::from))
                    .collect(),
            },
            BarSeries {
                name: "entropy / log(keys)".into(),
                values: heads.iter().map(|m| f64::from(m.entropy)).collect(),
            },
        ],
        log_y: false,
        width: 720,
        height: 400,
    }
    .render()
}

/// Per layer, both towers: the residual stream's max |activation| and its kurtosis.
pub fn activation_bars(d: &HeadDiagnostics) -> Result<(Figure, Figure), FigureError> {
    let layers = d.vision_activations.len().max(d.text_activations.len());
    let categories: Vec<String> = (0..layers).map(|l| format!("layer {l}")).collect();
    let series = |pick: fn(&workbench::analysis::attention::ActivationStats) -> f32| {
        vec![
            BarSeries {
                name: "image tower".into(),
                values: (0..layers)
                    .map(|l| {
                        d.vision_activations
                            .get(l)
                            .map_or(f64::NAN, |a| f64::from(pick(a)))
                    })
                    .collect(),
            },
            BarSeries {
                name: "text tower".into(),
                values: (0..layers)
                    .map(|l| {
                        d.text_activations
                            .get(l)
                            .map_or(f64::NAN, |a| f64::from(pick(a)))
                    })
                    .collect(),
            },
        ]
    };
    let max_abs = BarChart {
        title: format!("Largest |activation| per block output ({} pairs)", d.pairs),
        y_label: "max |x|".into(),
        categories: categories.clone(),
        series: series(|a| a.max_abs),
        log_y: false,
        width: 560,
        height: 380,
    }
    .render()?;
    let kurtosis = BarChart {
        title: "Kurtosis of block outputs (Gaussian = 3)".into(),
        y_label: "kurtosis".into(),
        categories,
        series: series(|a| a.kurtosis),
        log_y: false,
        width: 560,
        height: 380,
    }
    .render()?;
    Ok((max_abs, kurtosis))
}

/// The token × patch cosine matrix, with the pooled caption as a last row.
pub fn alignment_matrix(a: &Alignment) -> Result<Figure, FigureError> {
    let n = a.patches();
    let mut values = a.token_patch.clone();
    values.extend_from_slice(&a.caption_patch);
    let mut rows = a.tokens.clone();
    rows.push("[caption]".into());
    Heatmap {
        title: format!("Token × patch cosine similarity: {:?}", a.text),
        values,
        rows: rows.len(),
        cols: n,
        row_labels: rows,
        col_labels: (0..n)
            .map(|k| format!("{},{}", k / a.grid, k % a.grid))
            .collect(),
        x_label: "patch (row, column)".into(),
        y_label: "token".into(),
        colormap: Colormap::Diverging,
        range: None,
        annotate: false,
        width: 760,
        height: 420,
    }
    .render()
}

/// For every word of the text, its similarity with each patch over the image, then the pooled
/// caption's.
pub fn word_maps(a: &Alignment, image: &RgbImage) -> Result<Figure, FigureError> {
    let mut panels: Vec<Overlay> = a
        .tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.starts_with('<'))
        .map(|(i, t)| {
            panel(
                format!("{t:?}"),
                Some(image),
                a.token_map(i).to_vec(),
                a.grid,
            )
        })
        .collect();
    panels.push(panel(
        "whole caption".into(),
        Some(image),
        a.caption_patch.clone(),
        a.grid,
    ));
    OverlayGrid {
        title: format!(
            "Where each word lands (cosine with every patch); score {:.3}",
            a.score
        ),
        columns: panels.len().min(5),
        panels,
        colormap: Colormap::Diverging,
        shared_range: true,
        colorbar_label: "cosine similarity".into(),
        panel_size: 128,
    }
    .render()
}

/// Grad-CAM, gradient × attention relevance and rollout over the image.
pub fn relevance_maps(r: &Relevance, image: &RgbImage) -> Result<Figure, FigureError> {
    let panels = vec![
        panel(
            "Grad-CAM".into(),
            Some(image),
            r.image_grad_cam.clone(),
            r.grid,
        ),
        panel(
            "gradient × attention".into(),
            Some(image),
            r.image_relevance.clone(),
            r.grid,
        ),
        panel(
            "rollout".into(),
            Some(image),
            r.image_rollout.clone(),
            r.grid,
        ),
    ];
    OverlayGrid {
        title: format!("Why the score is {:.3}: {:?}", r.score, r.text),
        panels,
        columns: 3,
        colormap: Colormap::Viridis,
        shared_range: false,
        colorbar_label: "relevance (per-panel range)".into(),
        panel_size: 160,
    }
    .render()
}

fn unit_max(v: &[f32]) -> Vec<f64> {
    let m = v.iter().copied().fold(0f32, f32::max);
    v.iter()
        .map(|x| if m > 0.0 { f64::from(x / m) } else { 0.0 })
        .collect()
}

/// Per token: gradient × attention relevance (EOS row) and Grad-CAM, each scaled to max 1.
pub fn text_relevance_bars(r: &Relevance) -> Result<Figure, FigureError> {
    BarChart {
        title: format!("Which words carry the score: {:?}", r.text),
        y_label: "relevance / max".into(),
        categories: r.tokens.clone(),
        series: vec![
            BarSeries {
                name: "gradient × attention".into(),
                values: unit_max(&r.text_relevance),
            },
            BarSeries {
                name: "Grad-CAM".into(),
                values: unit_max(&r.text_grad_cam),
            },
        ],
        log_y: false,
        width: 640,
        height: 380,
    }
    .render()
}

/// The batch's image × caption cosine matrix.
pub fn batch_similarity_heatmap(b: &BatchSimilarity) -> Result<Figure, FigureError> {
    let labels: Vec<String> = (0..b.n).map(|i| i.to_string()).collect();
    Heatmap {
        title: format!("Batch similarity ({} pairs; diagonal = positives)", b.n),
        values: b.similarity.clone(),
        rows: b.n,
        cols: b.n,
        row_labels: labels.clone(),
        col_labels: labels,
        x_label: "caption".into(),
        y_label: "image".into(),
        colormap: Colormap::Diverging,
        range: None,
        annotate: b.n <= 8,
        width: 640,
        height: 560,
    }
    .render()
}

/// Each pair's symmetric InfoNCE loss in the batch.
pub fn batch_loss_bars(b: &BatchSimilarity) -> Result<Figure, FigureError> {
    BarChart {
        title: format!(
            "Per-pair loss, symmetric InfoNCE at τ = {:.4}",
            b.temperature
        ),
        y_label: "loss".into(),
        categories: (0..b.n).map(|i| i.to_string()).collect(),
        series: vec![BarSeries {
            name: "pair loss".into(),
            values: b.loss.iter().map(|&v| f64::from(v)).collect(),
        }],
        log_y: false,
        width: 720,
        height: 360,
    }
    .render()
}

/// Pointing-game accuracy against the random-direction baseline and random-patch chance.
pub fn pointing_bars(r: &workbench::analysis::PointingReport) -> Result<Figure, FigureError> {
    BarChart {
        title: format!(
            "Pointing game: {} mentions in {} images",
            r.mentions, r.images
        ),
        y_label: "share of mentions whose best patch is on the object".into(),
        categories: vec![
            "object words".into(),
            "random direction".into(),
            "random patch".into(),
        ],
        series: vec![BarSeries {
            name: "hit rate".into(),
            values: vec![
                f64::from(r.accuracy),
                f64::from(r.baseline),
                f64::from(r.chance),
            ],
        }],
        log_y: false,
        width: 560,
        height: 380,
    }
    .render()
}

//! Live curves: loss and its terms, learning rate, gradient norm, temperature, the probe
//! batch's metrics and the evaluations, with a labelled vertical line at every marker (swap,
//! live edit, rejected command) and the other runs' loss overlaid.

use egui::{Align2, Color32, Id, RichText};
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoint, Points, Text, VLine};

use super::paint::series;
use super::{UiState, run::Run};
use crate::session::RunHistory;

/// Points drawn per curve at most: longer curves keep each bucket's minimum and maximum, in
/// step order, so spikes survive.
pub const MAX_POINTS: usize = 4_000;

/// Curves as (legend name, `[step, value]` points).
type Curves = Vec<(String, Vec<[f64; 2]>)>;

/// One plot: a title and its curves as (legend name, points).
#[derive(Clone, Debug, PartialEq)]
struct Chart {
    title: &'static str,
    curves: Curves,
    /// Draw points (sparse curves: probes, evaluations) as well as lines.
    points: bool,
}

/// The curves of a history, grouped into plots.
fn charts(h: &RunHistory) -> Vec<Chart> {
    let names = h.series_names();
    let with = |prefix: &str| -> Vec<String> {
        names
            .iter()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    };
    let named = |pairs: &[(&str, &str)]| -> Curves {
        pairs
            .iter()
            .map(|(key, label)| ((*label).to_owned(), h.series(key)))
            .filter(|(_, p)| !p.is_empty())
            .collect()
    };
    let mut loss = vec![("loss".to_owned(), h.series("loss"))];
    for t in with("term:") {
        let points = h.series(&t);
        loss.push((t.trim_start_matches("term:").to_owned(), points));
    }
    // The probe batch's InfoNCE at a fixed temperature: comparable across objectives.
    let probe_loss = h.series("probe:info_nce");
    if !probe_loss.is_empty() {
        loss.push(("probe InfoNCE (τ = 0.07)".to_owned(), probe_loss));
    }
    let (temperature, bias, other) = parameter_curves(h);
    let mut charts = vec![
        Chart {
            title: "Loss and its terms",
            curves: loss,
            points: false,
        },
        Chart {
            title: "Temperature",
            curves: temperature,
            points: false,
        },
        Chart {
            title: "Probe batch (fixed validation pairs)",
            curves: named(&[
                ("probe:i2t_r1", "image→text R@1"),
                ("probe:t2i_r1", "text→image R@1"),
                ("probe:gap", "modality gap"),
            ]),
            points: true,
        },
        Chart {
            title: "Evaluation (validation split)",
            curves: named(&[
                ("eval:i2t_r1", "image→text R@1"),
                ("eval:t2i_r1", "text→image R@1"),
                ("eval:i2t_r5", "image→text R@5"),
                ("eval:t2i_r5", "text→image R@5"),
                ("eval:i2t_r10", "image→text R@10"),
                ("eval:t2i_r10", "text→image R@10"),
                ("eval:zero_shot", "zero-shot accuracy"),
                ("eval:gap", "modality gap"),
            ]),
            points: true,
        },
        Chart {
            title: "Learning rate",
            curves: named(&[("lr", "learning rate")]),
            points: false,
        },
        Chart {
            title: "Gradient norm (before clipping)",
            curves: named(&[("grad_norm", "gradient norm")]),
            points: false,
        },
    ];
    if !bias.is_empty() {
        charts.insert(
            2,
            Chart {
                title: "Logit bias",
                curves: bias,
                points: false,
            },
        );
    }
    if !other.is_empty() {
        charts.push(Chart {
            title: "Other objective parameters",
            curves: other,
            points: false,
        });
    }
    charts
}

/// The objective's parameter curves, split into temperatures (`τ = 1/logit_scale`), logit
/// biases and the rest.
fn parameter_curves(h: &RunHistory) -> (Curves, Curves, Curves) {
    let mut temperature = Vec::new();
    let mut bias = Vec::new();
    let mut other = Vec::new();
    for s in h.series_names() {
        let Some(name) = s.strip_prefix("scalar:").map(ToOwned::to_owned) else {
            continue;
        };
        let points = h.series(&s);
        if name.ends_with("logit_scale") {
            let tau = points
                .iter()
                .filter(|p| p[1] > 0.0)
                .map(|p| [p[0], 1.0 / p[1]])
                .collect();
            temperature.push((format!("τ = 1/{name}"), tau));
        } else if name.ends_with("logit_bias") {
            bias.push((name, points));
        } else {
            other.push((name, points));
        }
    }
    (temperature, bias, other)
}

/// `log10` of the positive values (the others have no logarithm and are left out).
fn log10(points: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    points
        .into_iter()
        .filter(|p| p[1] > 0.0)
        .map(|p| [p[0], p[1].log10()])
        .collect()
}

/// What the cached charts were built from: the active run, every run's event counts and
/// overlay flag, the log scale and the overlay switch.
type Key = (usize, Vec<[usize; 5]>, bool, bool);

/// The charts of the last frame, rebuilt only when the histories grow or a choice changes
/// (building them walks every step of every run).
#[derive(Default)]
pub struct Cache {
    key: Option<Key>,
    charts: Vec<Chart>,
}

impl Cache {
    fn charts(&mut self, runs: &[Run], active: usize, state: &UiState) -> &[Chart] {
        let key: Key = (
            active,
            runs.iter()
                .map(|r| {
                    let h = r.session.history();
                    [
                        h.steps.len(),
                        h.evals.len(),
                        h.probes.len(),
                        h.markers.len(),
                        usize::from(r.overlay),
                    ]
                })
                .collect(),
            state.log_scale,
            state.overlay_runs,
        );
        if self.key.as_ref() != Some(&key) {
            self.charts = build(runs, active, state);
            self.key = Some(key);
        }
        &self.charts
    }
}

/// Every chart of the active run, transformed and thinned for drawing.
fn build(runs: &[Run], active: usize, state: &UiState) -> Vec<Chart> {
    let Some(run) = runs.get(active) else {
        return Vec::new();
    };
    let mut charts = charts(run.session.history());
    if state.overlay_runs {
        for (i, other) in runs.iter().enumerate() {
            if i != active && other.overlay {
                let o = other.session.history();
                charts[0]
                    .curves
                    .push((format!("loss ({})", other.session.name()), o.series("loss")));
            }
        }
    }
    for chart in &mut charts {
        for (_, points) in &mut chart.curves {
            let p = std::mem::take(points);
            let p = if state.log_scale { log10(p) } else { p };
            *points = thin(p, MAX_POINTS);
        }
    }
    charts
}

/// At most about `max` points: each of `max / 2` buckets of consecutive points keeps its
/// lowest and highest, in their order.
fn thin(points: Vec<[f64; 2]>, max: usize) -> Vec<[f64; 2]> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let buckets = max / 2;
    let size = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(2 * buckets);
    for chunk in points.chunks(size) {
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p[1] < chunk[lo][1] {
                lo = i;
            }
            if p[1] > chunk[hi][1] {
                hi = i;
            }
        }
        out.push(chunk[lo.min(hi)]);
        if lo != hi {
            out.push(chunk[lo.max(hi)]);
        }
    }
    out
}

/// Draws the curves panel; `drawn` receives the labels of the markers drawn.
pub fn show(
    runs: &[Run],
    active: usize,
    state: &mut UiState,
    cache: &mut Cache,
    drawn: &mut Vec<String>,
    ui: &mut egui::Ui,
) {
    drawn.clear();
    let Some(run) = runs.get(active) else {
        return;
    };
    let h = run.session.history();
    ui.horizontal(|ui| {
        ui.checkbox(&mut state.log_scale, "Log scale (log10 y)");
        ui.add_enabled(
            runs.len() > 1,
            egui::Checkbox::new(&mut state.overlay_runs, "Overlay the other runs' loss"),
        );
    });
    if h.steps.is_empty() {
        ui.label("No step yet: press Play or Step.");
    }
    let charts = cache.charts(runs, active, state);
    let log = state.log_scale;
    let width = ui.available_width();
    let columns = if width > 900.0 { 2 } else { 1 };
    let plot_w = (width / columns as f32 - 12.0).max(200.0);
    egui::ScrollArea::vertical().show(ui, |ui| {
        for (r, row) in charts.chunks(columns).enumerate() {
            ui.horizontal(|ui| {
                for (c, chart) in row.iter().enumerate() {
                    ui.vertical(|ui| {
                        ui.set_width(plot_w);
                        let shown = chart_ui(ui, chart, h, log, plot_w);
                        if shown && r == 0 && c == 0 {
                            drawn.extend(h.markers.iter().map(|m| m.label.clone()));
                        }
                    });
                }
            });
        }
    });
}

fn chart_ui(ui: &mut egui::Ui, chart: &Chart, h: &RunHistory, log: bool, width: f32) -> bool {
    ui.label(RichText::new(chart.title).strong());
    if chart.curves.iter().all(|(_, p)| p.is_empty()) {
        ui.label(RichText::new("no data yet").weak());
        return false;
    }
    let curves = &chart.curves;
    let top = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q[1]))
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let markers = &h.markers;
    let sparse = chart.points;
    Plot::new(chart.title)
        .width(width)
        .height(200.0)
        .legend(Legend::default())
        .link_axis(Id::unique("curves_x"), [true, false])
        .y_axis_label(if log { "log10(value)" } else { "value" })
        .x_axis_label("step")
        .show(ui, |p| {
            for (i, (name, points)) in curves.iter().enumerate() {
                let colour = series(i);
                if sparse {
                    p.points(
                        Points::new(name.clone(), points.clone())
                            .color(colour)
                            .radius(2.5),
                    );
                }
                p.line(Line::new(name.clone(), points.clone()).color(colour));
            }
            for m in markers {
                let x = m.step as f64;
                p.vline(
                    VLine::new("markers", x)
                        .color(Color32::from_gray(110))
                        .style(LineStyle::dashed_dense()),
                );
                if top.is_finite() {
                    p.text(
                        Text::new("markers", PlotPoint::new(x, top), m.label.clone())
                            .anchor(Align2::LEFT_TOP)
                            .color(Color32::from_gray(80)),
                    );
                }
            }
        });
    true
}

#[cfg(test)]
mod tests {
    use super::thin;

    #[test]
    fn thinning_keeps_extremes_in_order() {
        let points: Vec<[f64; 2]> = (0..10_000)
            .map(|i| {
                [
                    f64::from(i),
                    if i == 5_003 { 100.0 } else { f64::from(i % 7) },
                ]
            })
            .collect();
        let t = thin(points.clone(), 1_000);
        assert!(t.len() <= 1_000, "{} points", t.len());
        assert!(
            t.iter().any(|p| (p[1] - 100.0).abs() < 1e-9),
            "the spike was dropped"
        );
        assert!(t.windows(2).all(|w| w[0][0] < w[1][0]), "out of step order");
        let lowest = t.iter().map(|p| p[1]).fold(f64::INFINITY, f64::min);
        assert!(lowest.abs() < 1e-12, "the lows were dropped: {lowest}");
        let short = points[..500].to_vec();
        assert_eq!(thin(short.clone(), 1_000), short);
    }
}

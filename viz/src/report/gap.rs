//! Figures of the modality-gap analysis.

use crate::figure::{
    BarChart, BarSeries, Figure, FigureError, HistSeries, Histograms, LineChart, Mark, PointGroup,
    Role, Scatter, Series,
};
use workbench::analysis::{GapAnalysis, GapReport, JointPca};

/// Matched vs unmatched image–text cosines (densities, so the two sets compare).
pub fn cosine_histograms(r: &GapReport) -> Result<Figure, FigureError> {
    let series = |name: &str, h: &workbench::analysis::Histogram| HistSeries {
        name: name.into(),
        lo: f64::from(h.lo),
        hi: f64::from(h.hi),
        counts: h.counts.iter().map(|&c| c as u64).collect(),
        normalise: true,
    };
    Histograms {
        title: format!(
            "Image–text cosine: matched (mean {:.3}) vs unmatched (mean {:.3})",
            r.matched_mean, r.unmatched_mean
        ),
        x_label: "cosine similarity".into(),
        y_label: "density".into(),
        series: vec![
            series("matched pairs", &r.matched_cosine),
            series("unmatched pairs", &r.unmatched_cosine),
        ],
        width: 640,
        height: 400,
    }
    .render()
}

/// Covariance spectra of both modalities (log scale), with effective ranks in the title.
pub fn spectra(r: &GapReport) -> Result<Figure, FigureError> {
    let d = r.image_spectrum.len();
    BarChart {
        title: format!(
            "Covariance spectrum: effective rank {:.1} (image) / {:.1} (text) of {d}",
            r.image_effective_rank, r.text_effective_rank
        ),
        y_label: "eigenvalue".into(),
        categories: (1..=d).map(|i| i.to_string()).collect(),
        series: vec![
            BarSeries {
                name: "image".into(),
                values: r.image_spectrum.iter().map(|&v| f64::from(v)).collect(),
            },
            BarSeries {
                name: "text".into(),
                values: r.text_spectrum.iter().map(|&v| f64::from(v)).collect(),
            },
        ],
        log_y: true,
        width: 760,
        height: 400,
    }
    .render()
}

/// Retrieval, zero-shot and centroid distance against the gap shift δ.
pub fn gap_sweep(g: &GapAnalysis) -> Result<Figure, FigureError> {
    let pts = |f: &dyn Fn(&workbench::analysis::GapShiftPoint) -> Option<f32>| {
        g.sweep
            .iter()
            .filter_map(|p| f(p).map(|v| (f64::from(p.delta), f64::from(v))))
            .collect::<Vec<_>>()
    };
    let mut series = vec![
        Series {
            name: "image→text R@1".into(),
            points: pts(&|p| Some(p.image_to_text_r1)),
        },
        Series {
            name: "text→image R@1".into(),
            points: pts(&|p| Some(p.text_to_image_r1)),
        },
        Series {
            name: "centroid distance".into(),
            points: pts(&|p| Some(p.centroid_distance)),
        },
    ];
    let zs = pts(&|p| p.zero_shot);
    if !zs.is_empty() {
        series.push(Series {
            name: "zero-shot accuracy".into(),
            points: zs,
        });
    }
    LineChart {
        title: format!(
            "Gap shift on {}: images −δ/2·Δ, texts +δ/2·Δ (δ = 1 closes the gap)",
            g.split
        ),
        x_label: "δ".into(),
        y_label: "metric".into(),
        series,
        y_range: None,
        markers: true,
        width: 640,
        height: 420,
    }
    .render()
}

/// Joint 2-D PCA: images and texts, a thin line per pair (at most `max_pairs`), centroids.
pub fn joint_pca(p: &JointPca, max_pairs: usize) -> Result<Figure, FigureError> {
    let pts = |v: &[[f32; 2]]| -> Vec<(f64, f64)> {
        v.iter()
            .map(|q| (f64::from(q[0]), f64::from(q[1])))
            .collect()
    };
    let (img, txt) = (pts(&p.image), pts(&p.text));
    let segments = img
        .iter()
        .zip(&txt)
        .take(max_pairs)
        .map(|(a, b)| [*a, *b])
        .collect();
    let at = |c: [f32; 2]| (f64::from(c[0]), f64::from(c[1]));
    Scatter {
        title: format!("Joint PCA of {} pairs (lines join pairs)", p.image.len()),
        x_label: format!("PC 1 ({:.0}% of variance)", 100.0 * p.explained[0]),
        y_label: format!("PC 2 ({:.0}% of variance)", 100.0 * p.explained[1]),
        groups: vec![
            PointGroup {
                name: "images".into(),
                points: img,
                colour: Role::Image,
            },
            PointGroup {
                name: "captions".into(),
                points: txt,
                colour: Role::Text,
            },
        ],
        segments,
        marks: vec![
            Mark {
                label: "image centroid".into(),
                at: at(p.image_centroid),
                colour: Role::Image,
            },
            Mark {
                label: "text centroid".into(),
                at: at(p.text_centroid),
                colour: Role::Text,
            },
        ],
        width: 600,
        height: 520,
    }
    .render()
}

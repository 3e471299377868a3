//! Overlaid histograms with densities, for comparing distributions of different sizes.

use plotters::coord::Shift;
use plotters::element::Rectangle;
use plotters::prelude::{DrawingArea, DrawingBackend, LineSeries};
use plotters::style::Color;

use super::chart::{Occupied, build, legend, mesh, plot_rect, x_area, y_area};
use super::draw::{self, TICK_SIZE};
use super::theme::series_colour;
use super::{Drawing, Figure, FigureError, PixelRect};

/// One histogram of a [`Histograms`] figure: `counts.len()` equal bins over `[lo, hi)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistSeries {
    /// Shown in the legend.
    pub name: String,
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Count per bin (at least one bin).
    pub counts: Vec<u64>,
    /// Draw densities (count / (total · bin width)) so histograms of different sizes compare.
    pub normalise: bool,
}

/// Overlaid histograms (e.g. cosine similarity of matched vs unmatched pairs): translucent
/// bars with a solid step outline per series, and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Histograms {
    /// Drawn at the top.
    pub title: String,
    /// Caption of the x axis.
    pub x_label: String,
    /// Caption of the y axis.
    pub y_label: String,
    /// The histograms, coloured with [`series_colour`](super::series_colour) in order.
    pub series: Vec<HistSeries>,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: Vec::new(),
            width: 640,
            height: 400,
        }
    }
}

impl HistSeries {
    /// The height of each bin as drawn: counts, or densities when `normalise` is set.
    pub fn heights(&self) -> Vec<f64> {
        let total: u64 = self.counts.iter().sum();
        let width = (self.hi - self.lo) / self.counts.len().max(1) as f64;
        self.counts
            .iter()
            .map(|&c| {
                if !self.normalise {
                    c as f64
                } else if total == 0 {
                    0.0
                } else {
                    c as f64 / (total as f64 * width)
                }
            })
            .collect()
    }
}

impl Histograms {
    /// Checks the spec and draws it.
    pub fn render(&self) -> Result<Figure, FigureError> {
        if self.series.is_empty() {
            return Err(FigureError::input(
                "Histograms.series",
                "at least one series",
                "none",
            ));
        }
        for (i, h) in self.series.iter().enumerate() {
            if h.counts.is_empty() {
                return Err(FigureError::input(
                    format!("Histograms.series[{i}].counts"),
                    "at least one bin",
                    "none",
                ));
            }
            if !(h.lo.is_finite() && h.hi.is_finite() && h.lo < h.hi) {
                return Err(FigureError::input(
                    format!("Histograms.series[{i}].lo/hi"),
                    "finite edges with lo < hi",
                    format!("({}, {})", h.lo, h.hi),
                ));
            }
        }
        super::check_size("Histograms.width", self.width)?;
        super::check_size("Histograms.height", self.height)?;
        let lo = self
            .series
            .iter()
            .map(|h| h.lo)
            .fold(f64::INFINITY, f64::min);
        let hi = self
            .series
            .iter()
            .map(|h| h.hi)
            .fold(f64::NEG_INFINITY, f64::max);
        let top = self
            .series
            .iter()
            .flat_map(HistSeries::heights)
            .fold(0.0, f64::max);
        let top = if top > 0.0 { top * 1.08 } else { 1.0 };
        let drawing = Bins {
            spec: self,
            x: (lo, hi),
            y: (0.0, top),
        };
        super::render(&self.title, (self.width, self.height), &drawing)
    }
}

struct Bins<'a> {
    spec: &'a Histograms,
    x: (f64, f64),
    y: (f64, f64),
}

impl Drawing for Bins<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<PixelRect>, FigureError> {
        let s = self.spec;
        let areas = (
            x_area(draw::text_height(TICK_SIZE), &s.x_label),
            y_area(self.y, &s.y_label),
        );
        let (x, y) = (self.x, self.y);
        let mut chart = build(root, &s.title, areas, x.0..x.1, y.0..y.1)?;
        mesh(&mut chart, (&s.x_label, &s.y_label), (x.1 - x.0, y.1 - y.0))?;
        let mut occupied = Occupied::default();
        for (i, h) in s.series.iter().enumerate() {
            let rgb = draw::colour(series_colour(i));
            let heights = h.heights();
            let bin = (h.hi - h.lo) / heights.len() as f64;
            let edge = |k: usize| h.lo + k as f64 * bin;
            for (k, &v) in heights.iter().enumerate() {
                let a = chart.backend_coord(&(edge(k), 0.0));
                occupied.area(a, chart.backend_coord(&(edge(k + 1), v)));
            }
            let bars = heights.iter().enumerate().map(|(k, &v)| {
                Rectangle::new([(edge(k), 0.0), (edge(k + 1), v)], rgb.mix(0.3).filled())
            });
            chart.draw_series(bars).map_err(FigureError::draw)?;
            let mut outline = vec![(h.lo, 0.0)];
            for (k, &v) in heights.iter().enumerate() {
                outline.push((edge(k), v));
                outline.push((edge(k + 1), v));
            }
            outline.push((h.hi, 0.0));
            let line = rgb.stroke_width(2);
            chart
                .draw_series(LineSeries::new(outline, line))
                .map_err(FigureError::draw)?
                .label(h.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], rgb.mix(0.5).filled())
                });
        }
        let names: Vec<&str> = s.series.iter().map(|h| h.name.as_str()).collect();
        legend(&mut chart, &names, &occupied)?;
        Ok(vec![plot_rect(&chart)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densities_integrate_to_one() {
        let h = HistSeries {
            name: "x".into(),
            lo: -1.0,
            hi: 1.0,
            counts: vec![1, 3, 0, 4],
            normalise: true,
        };
        let area: f64 = h.heights().iter().map(|d| d * 0.5).sum();
        assert!((area - 1.0).abs() < 1e-12);
    }
}

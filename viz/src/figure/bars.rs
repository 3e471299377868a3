//! Grouped bar charts over named categories, on a linear or logarithmic y axis.

use plotters::chart::ChartContext;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::element::Rectangle;
use plotters::prelude::{Cartesian2d, DrawingArea, DrawingBackend, IntoLogRange};
use plotters::style::Color;
use plotters::style::text_anchor::{HPos, VPos};

use super::chart::{self, Occupied, axis_label, finite_bounds};
use super::draw::{self, Anchor, LABEL_SIZE, TICK_SIZE};
use super::theme::{INK, series_colour};
use super::{Drawing, Figure, FigureError, PixelRect};

/// One series of a [`BarChart`]: a name and one value per category.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarSeries {
    /// Shown in the legend.
    pub name: String,
    /// One value per category; non-finite values (and, on a log axis, values ≤ 0) draw no bar.
    pub values: Vec<f64>,
}

/// The name the analyses use for [`BarSeries`].
pub type Series1 = BarSeries;

/// Grouped bars: one group per category, one bar per series, with a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Drawn at the top.
    pub title: String,
    /// Caption of the y axis.
    pub y_label: String,
    /// One label per group; long labels are set vertically and thinned when crowded.
    pub categories: Vec<String>,
    /// The series, coloured with [`series_colour`] in order.
    pub series: Vec<BarSeries>,
    /// A logarithmic y axis (for spectra and values spanning decades).
    pub log_y: bool,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for BarChart {
    fn default() -> Self {
        Self {
            title: String::new(),
            y_label: String::new(),
            categories: Vec::new(),
            series: Vec::new(),
            log_y: false,
            width: 640,
            height: 400,
        }
    }
}

/// Longest category label, in pixels, before it is shortened.
const MAX_LABEL_WIDTH: u32 = 120;
/// Labels up to this wide are thinned rather than set vertically.
const SHORT_LABEL: u32 = 32;

/// Width of the y label area: decade labels on a log axis, round values otherwise.
fn y_area(log_y: bool, (lo, hi): (f64, f64), caption: &str) -> u32 {
    if log_y {
        let (first, last) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
        let labels = (first..=last).map(|k| chart::log_label(10f64.powi(k)));
        chart::y_area_for(labels, caption)
    } else {
        chart::y_area((lo, hi), caption)
    }
}

struct Bars<'a> {
    spec: &'a BarChart,
    labels: Vec<String>,
    y: (f64, f64),
    vertical: bool,
    every: usize,
    label_height: u32,
}

impl BarChart {
    /// A legend is drawn for several series, or for one with a name.
    fn has_legend(&self) -> bool {
        self.series.len() > 1 || self.series.first().is_some_and(|s| !s.name.is_empty())
    }

    /// Checks the spec and draws it.
    pub fn render(&self) -> Result<Figure, FigureError> {
        let n = self.categories.len();
        if n == 0 {
            return Err(FigureError::input(
                "BarChart.categories",
                "at least one category",
                "none",
            ));
        }
        if self.series.is_empty() {
            return Err(FigureError::input(
                "BarChart.series",
                "at least one series",
                "none",
            ));
        }
        for (i, s) in self.series.iter().enumerate() {
            if s.values.len() != n {
                return Err(FigureError::input(
                    format!("BarChart.series[{i}].values"),
                    format!("one value per category ({n})"),
                    s.values.len(),
                ));
            }
        }
        super::check_size("BarChart.width", self.width)?;
        super::check_size("BarChart.height", self.height)?;
        let values = || self.series.iter().flat_map(|s| s.values.iter().copied());
        let y = if self.log_y {
            let Some((lo, hi)) = finite_bounds(values().filter(|v| *v > 0.0)) else {
                return Err(FigureError::input(
                    "BarChart.series",
                    "at least one positive value on a log axis",
                    "none",
                ));
            };
            // Whole decades, nudged outwards so that their end points are labelled.
            let lo = 10f64.powf(lo.log10().floor());
            let hi = 10f64.powf((hi.log10() + 0.05).ceil()).max(lo * 10.0);
            (lo * (1.0 - 1e-6), hi * (1.0 + 1e-6))
        } else {
            let (lo, hi) = finite_bounds(values()).unwrap_or((0.0, 1.0));
            let (lo, hi) = (lo.min(0.0), hi.max(0.0));
            let pad = if hi > lo { (hi - lo) * 0.08 } else { 1.0 };
            // Headroom above the tallest bar for the legend.
            let top = if self.has_legend() { pad * 3.0 } else { pad };
            (if lo < 0.0 { lo - pad } else { 0.0 }, hi + top)
        };

        let labels: Vec<String> = self
            .categories
            .iter()
            .map(|c| draw::fit(c, TICK_SIZE, MAX_LABEL_WIDTH))
            .collect();
        let widest = labels
            .iter()
            .map(|l| draw::text_width(l, TICK_SIZE))
            .max()
            .unwrap_or(0);
        let line = draw::text_height(TICK_SIZE);
        // The plot is roughly the figure less the label areas; good enough to choose a layout.
        let slot = self
            .width
            .saturating_sub(y_area(self.log_y, y, &self.y_label) + 40) as f32
            / n as f32;
        let slot = slot.max(1.0);
        let (vertical, every, label_height) = if widest as f32 + 8.0 <= slot {
            (false, 1, line)
        } else if widest <= SHORT_LABEL {
            // Short labels (layer or rank numbers) stay horizontal; every k-th is shown.
            (false, ((widest as f32 + 8.0) / slot).ceil() as usize, line)
        } else {
            let every = ((line as f32 + 4.0) / slot).ceil().max(1.0) as usize;
            (true, every, widest)
        };
        let drawing = Bars {
            spec: self,
            labels,
            y,
            vertical,
            every,
            label_height,
        };
        super::render(&self.title, (self.width, self.height), &drawing)
    }
}

impl Bars<'_> {
    /// Bars, mesh and labels on a chart with any y coordinate.
    fn fill<'a, DB: DrawingBackend + 'a, Y>(
        &self,
        root: &DrawingArea<DB, Shift>,
        mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
        base: f64,
    ) -> Result<Vec<PixelRect>, FigureError>
    where
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let s = self.spec;
        let span = self.y.1 - self.y.0;
        let y_fmt = move |v: &f64| {
            if s.log_y {
                chart::log_label(*v)
            } else {
                axis_label(*v, span / 20.0)
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(s.y_label.as_str())
            .label_style(draw::font(TICK_SIZE))
            .axis_desc_style(draw::font(LABEL_SIZE))
            .bold_line_style(draw::colour((225, 225, 225)))
            .max_light_lines(0)
            .y_labels(6)
            .y_label_formatter(&y_fmt)
            .draw()
            .map_err(FigureError::draw)?;

        let m = s.series.len() as f64;
        let width = 0.8 / m;
        let mut occupied = Occupied::default();
        for (i, series) in s.series.iter().enumerate() {
            let fill = draw::colour(series_colour(i));
            let corners: Vec<((f64, f64), (f64, f64))> = series
                .values
                .iter()
                .enumerate()
                .filter(|&(_, &v)| v.is_finite() && (!s.log_y || v > 0.0))
                .map(|(c, &v)| {
                    let x0 = c as f64 + 0.1 + i as f64 * width;
                    ((x0, base), (x0 + width, v))
                })
                .collect();
            for (a, b) in &corners {
                occupied.area(chart.backend_coord(a), chart.backend_coord(b));
            }
            let bars = corners
                .into_iter()
                .map(|(a, b)| Rectangle::new([a, b], fill.filled()));
            chart
                .draw_series(bars)
                .map_err(FigureError::draw)?
                .label(series.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], fill.filled()));
        }
        if s.has_legend() {
            let names: Vec<&str> = s.series.iter().map(|s| s.name.as_str()).collect();
            chart::legend(&mut chart, &names, &occupied)?;
        }

        let plot = chart::plot_rect(&chart);
        let bottom = (plot.y + plot.height) as i32 + 6;
        for (c, label) in self.labels.iter().enumerate() {
            if c % self.every != 0 {
                continue;
            }
            let (x, _) = chart.backend_coord(&(c as f64 + 0.5, base));
            let anchor = if self.vertical {
                Anchor::vertical(HPos::Right, VPos::Center)
            } else {
                Anchor::new(HPos::Center, VPos::Top)
            };
            draw::text(root, label, (x, bottom), TICK_SIZE, anchor, INK)?;
        }
        Ok(vec![plot])
    }
}

impl Drawing for Bars<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<PixelRect>, FigureError> {
        let s = self.spec;
        let areas = (
            chart::x_area(self.label_height, ""),
            y_area(s.log_y, self.y, &s.y_label),
        );
        let x = 0.0..s.categories.len() as f64;
        let (lo, hi) = self.y;
        if s.log_y {
            let y = (lo..hi).log_scale();
            let chart = chart::build(root, &s.title, areas, x, y)?;
            self.fill(root, chart, lo)
        } else {
            let chart = chart::build(root, &s.title, areas, x, lo..hi)?;
            self.fill(root, chart, 0.0)
        }
    }
}

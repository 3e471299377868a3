//! Line charts, and the axes, legend and range helpers every chart shares.

use plotters::chart::{ChartBuilder, ChartContext};
use plotters::coord::Shift;
use plotters::coord::ranged1d::AsRangedCoord;
use plotters::coord::types::RangedCoordf64;
use plotters::element::{Circle, PathElement};
use plotters::prelude::{Cartesian2d, CoordTranslate, DrawingArea, DrawingBackend, LineSeries};
use plotters::style::Color;

use super::draw::{self, LABEL_SIZE, MARGIN, TICK_SIZE, TITLE_BAND};
pub(crate) use super::legend::{Occupied, legend};
use super::theme::series_colour;
use super::{Drawing, Figure, FigureError, PixelRect};

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points break the line and are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis (loss curves, metrics over steps, sweeps), with a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Drawn at the top.
    pub title: String,
    /// Caption of the x axis.
    pub x_label: String,
    /// Caption of the y axis.
    pub y_label: String,
    /// The lines, coloured with [`series_colour`] in order.
    pub series: Vec<Series>,
    /// The y range; `None` spans the finite points with a 5% margin.
    pub y_range: Option<(f64, f64)>,
    /// Draw a dot at every point.
    pub markers: bool,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for LineChart {
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: Vec::new(),
            y_range: None,
            markers: false,
            width: 640,
            height: 400,
        }
    }
}

/// The smallest and largest of the finite values, if any.
pub(crate) fn finite_bounds(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| {
            Some(acc.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v))))
        })
}

/// `(lo, hi)` widened by `frac` of its span on each side; a single value is widened so that it
/// sits in the middle.
pub(crate) fn padded((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.5 };
        (lo - pad, hi + pad)
    }
}

/// A tick label: the fewest decimals (up to 6) that show `value` exactly enough for a `span`.
pub(crate) fn axis_label(value: f64, span: f64) -> String {
    let value = if value.abs() < span * 1e-9 {
        0.0
    } else {
        value
    };
    if value != 0.0 && (value.abs() >= 1e5 || span < 1e-3) {
        return format!("{value:.2e}");
    }
    let tolerance = span * 1e-6;
    let decimals = (0..=6)
        .find(|&d| {
            let scale = 10f64.powi(d);
            ((value * scale).round() / scale - value).abs() <= tolerance
        })
        .unwrap_or(6) as usize;
    format!("{value:.decimals$}")
}

/// Width to reserve left of the plot for y tick labels over `(lo, hi)` and the axis caption.
pub(crate) fn y_area(range: (f64, f64), caption: &str) -> u32 {
    let (ticks, step) = draw::nice_ticks(range.0, range.1);
    y_area_for(ticks.iter().map(|&t| axis_label(t, step / 2.0)), caption)
}

/// Width to reserve left of the plot for these y tick labels and the axis caption.
pub(crate) fn y_area_for(labels: impl Iterator<Item = String>, caption: &str) -> u32 {
    let widest = labels
        .map(|l| draw::text_width(&l, TICK_SIZE))
        .max()
        .unwrap_or(0);
    let caption = if caption.is_empty() {
        0
    } else {
        draw::text_height(LABEL_SIZE) + 12
    };
    widest + 18 + caption
}

/// A tick label on a logarithmic axis: plain for powers of ten from 0.001 to 10000, `1e-5`
/// beyond.
pub(crate) fn log_label(value: f64) -> String {
    if !(value > 0.0 && value.is_finite()) {
        return format!("{value}");
    }
    let k = value.log10().round();
    if (value / 10f64.powf(k) - 1.0).abs() > 1e-6 {
        format!("{value:.0e}")
    } else if (-3.0..=4.0).contains(&k) {
        let decimals = (-k).max(0.0) as usize;
        format!("{:.decimals$}", 10f64.powf(k))
    } else {
        format!("1e{}", k as i32)
    }
}

/// Height to reserve under the plot for `labels` pixels of tick labels and the axis caption.
pub(crate) fn x_area(labels: u32, caption: &str) -> u32 {
    let caption = if caption.is_empty() {
        0
    } else {
        draw::text_height(LABEL_SIZE) + 10
    };
    labels + 12 + caption
}

/// The chart [`build`] returns for x and y ranges of types `X` and `Y`.
pub(crate) type Chart<'a, DB, X, Y> = ChartContext<
    'a,
    DB,
    Cartesian2d<<X as AsRangedCoord>::CoordDescType, <Y as AsRangedCoord>::CoordDescType>,
>;

/// Draws the title and builds a chart whose label areas are `x_area` and `y_area` pixels.
pub(crate) fn build<'a, DB: DrawingBackend, X: AsRangedCoord, Y: AsRangedCoord>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    (x_area, y_area): (u32, u32),
    x: X,
    y: Y,
) -> Result<Chart<'a, DB, X, Y>, FigureError> {
    let (width, _) = root.dim_in_pixel();
    draw::title(root, title, width)?;
    let top = if title.is_empty() { MARGIN } else { TITLE_BAND };
    ChartBuilder::on(root)
        .margin(MARGIN)
        .margin_right(MARGIN + 8)
        .margin_top(top)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(x, y)
        .map_err(FigureError::draw)
}

/// The plotting area of `chart` in figure pixels.
pub(crate) fn plot_rect<DB: DrawingBackend, CT: CoordTranslate>(
    chart: &ChartContext<'_, DB, CT>,
) -> PixelRect {
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    PixelRect {
        x: xs.start.max(0) as u32,
        y: ys.start.max(0) as u32,
        width: (xs.end - xs.start).max(0) as u32,
        height: (ys.end - ys.start).max(0) as u32,
    }
}

/// Draws a numeric mesh with round tick labels and axis captions.
pub(crate) fn mesh<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    (x_label, y_label): (&str, &str),
    (x_span, y_span): (f64, f64),
) -> Result<(), FigureError> {
    let x_fmt = move |v: &f64| axis_label(*v, x_span / 20.0);
    let y_fmt = move |v: &f64| axis_label(*v, y_span / 20.0);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(draw::font(TICK_SIZE))
        .axis_desc_style(draw::font(LABEL_SIZE))
        .bold_line_style(draw::colour((225, 225, 225)))
        .max_light_lines(0)
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .draw()
        .map_err(FigureError::draw)
}

impl LineChart {
    /// Checks the spec and draws it.
    pub fn render(&self) -> Result<Figure, FigureError> {
        if self.series.is_empty() {
            return Err(FigureError::input(
                "LineChart.series",
                "at least one series",
                "none",
            ));
        }
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let Some(x) = finite_bounds(points().filter(|p| p.1.is_finite()).map(|p| p.0)) else {
            return Err(FigureError::input(
                "LineChart.series",
                "at least one finite point",
                "none",
            ));
        };
        if let Some((lo, hi)) = self.y_range
            && !(lo.is_finite() && hi.is_finite() && lo < hi)
        {
            return Err(FigureError::input(
                "LineChart.y_range",
                "a finite range with lo < hi",
                format!("({lo}, {hi})"),
            ));
        }
        super::check_size("LineChart.width", self.width)?;
        super::check_size("LineChart.height", self.height)?;
        let y = self.y_range.unwrap_or_else(|| {
            let y = finite_bounds(points().filter(|p| p.0.is_finite()).map(|p| p.1));
            padded(y.unwrap_or((0.0, 1.0)), 0.05)
        });
        let x = if x.1 > x.0 { x } else { padded(x, 0.05) };
        let drawing = Lines { spec: self, x, y };
        super::render(&self.title, (self.width, self.height), &drawing)
    }
}

struct Lines<'a> {
    spec: &'a LineChart,
    x: (f64, f64),
    y: (f64, f64),
}

/// The runs of consecutive finite points.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            if let Some(run) = runs.last_mut() {
                run.push((x, y));
            }
        } else if runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

impl Drawing for Lines<'_> {
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
        for (i, series) in s.series.iter().enumerate() {
            let style = draw::colour(series_colour(i)).stroke_width(2);
            let runs = finite_runs(&series.points);
            for run in &runs {
                let pixels: Vec<(i32, i32)> = run.iter().map(|p| chart.backend_coord(p)).collect();
                occupied.point(pixels[0]);
                for pair in pixels.windows(2) {
                    occupied.segment(pair[0], pair[1]);
                }
            }
            let first = runs.first().cloned().unwrap_or_default();
            chart
                .draw_series(LineSeries::new(first, style))
                .map_err(FigureError::draw)?
                .label(series.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            for run in runs.iter().skip(1) {
                chart
                    .draw_series(LineSeries::new(run.clone(), style))
                    .map_err(FigureError::draw)?;
            }
            if s.markers {
                let dot = draw::colour(series_colour(i)).filled();
                chart
                    .draw_series(runs.iter().flatten().map(|&p| Circle::new(p, 3, dot)))
                    .map_err(FigureError::draw)?;
            }
        }
        let names: Vec<&str> = s.series.iter().map(|s| s.name.as_str()).collect();
        legend(&mut chart, &names, &occupied)?;
        Ok(vec![plot_rect(&chart)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_break_at_non_finite_points() {
        let runs = finite_runs(&[(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)]);
        assert_eq!(runs, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
        assert!(finite_runs(&[(f64::NAN, 0.0)]).is_empty());
    }

    #[test]
    fn axis_labels_drop_needless_decimals() {
        assert_eq!(axis_label(0.5, 0.05), "0.5");
        assert_eq!(axis_label(2.0, 0.05), "2");
        assert_eq!(axis_label(0.25, 0.01), "0.25");
        assert_eq!(axis_label(1e-17, 0.1), "0");
        assert_eq!(log_label(0.001), "0.001");
        assert_eq!(log_label(1e-5), "1e-5");
        assert_eq!(log_label(1e6), "1e6");
        assert_eq!(log_label(100.0), "100");
    }
}

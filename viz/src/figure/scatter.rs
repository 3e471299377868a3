//! Scatter plots of 2-D projections (image and text embeddings), with pair segments and
//! labelled marks (centroids, class prototypes).

use plotters::coord::Shift;
use plotters::element::{Circle, Cross, EmptyElement, PathElement, Rectangle, Text};
use plotters::prelude::{DrawingArea, DrawingBackend};
use plotters::style::{Color, WHITE};

use super::chart::{self, Occupied, finite_bounds, padded};
use super::draw::{self, LABEL_SIZE, SMALL_SIZE, TICK_SIZE};
use super::theme::{LIGHT_GREY, Role};
use super::{Drawing, Figure, FigureError, PixelRect};

/// A set of points drawn in one colour, with one legend entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PointGroup {
    /// Shown in the legend.
    pub name: String,
    /// `(x, y)` points; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// The group's colour.
    pub colour: Role,
}

/// A single labelled point drawn as a large cross (a centroid, a class prototype).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mark {
    /// Written beside the cross.
    pub label: String,
    /// Where the cross goes.
    pub at: (f64, f64),
    /// Its colour.
    pub colour: Role,
}

/// Points in groups, thin grey segments under them (e.g. one per image–caption pair), and
/// labelled marks on top; with a legend of the groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Scatter {
    /// Drawn at the top.
    pub title: String,
    /// Caption of the x axis.
    pub x_label: String,
    /// Caption of the y axis.
    pub y_label: String,
    /// The point groups.
    pub groups: Vec<PointGroup>,
    /// Line segments drawn first, light grey and thin.
    pub segments: Vec<[(f64, f64); 2]>,
    /// Labelled crosses drawn last.
    pub marks: Vec<Mark>,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for Scatter {
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            groups: Vec::new(),
            segments: Vec::new(),
            marks: Vec::new(),
            width: 560,
            height: 480,
        }
    }
}

struct Points<'a> {
    spec: &'a Scatter,
    x: (f64, f64),
    y: (f64, f64),
}

fn finite(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

impl Scatter {
    /// Checks the spec and draws it.
    pub fn render(&self) -> Result<Figure, FigureError> {
        let all: Vec<(f64, f64)> = self
            .groups
            .iter()
            .flat_map(|g| g.points.iter().copied())
            .chain(self.marks.iter().map(|m| m.at))
            .chain(self.segments.iter().flatten().copied())
            .filter(|&p| finite(p))
            .collect();
        if all.is_empty() {
            return Err(FigureError::input(
                "Scatter.groups",
                "at least one finite point or mark",
                "none",
            ));
        }
        super::check_size("Scatter.width", self.width)?;
        super::check_size("Scatter.height", self.height)?;
        let bounds = |f: fn(&(f64, f64)) -> f64| {
            padded(finite_bounds(all.iter().map(f)).unwrap_or((0.0, 1.0)), 0.06)
        };
        let drawing = Points {
            spec: self,
            x: bounds(|p| p.0),
            y: bounds(|p| p.1),
        };
        super::render(&self.title, (self.width, self.height), &drawing)
    }
}

impl Drawing for Points<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<PixelRect>, FigureError> {
        let s = self.spec;
        let areas = (
            chart::x_area(draw::text_height(TICK_SIZE), &s.x_label),
            chart::y_area(self.y, &s.y_label),
        );
        let (x, y) = (self.x, self.y);
        let mut chart = chart::build(root, &s.title, areas, x.0..x.1, y.0..y.1)?;
        let (x_span, y_span) = (x.1 - x.0, y.1 - y.0);
        let x_fmt = move |v: &f64| chart::axis_label(*v, x_span / 20.0);
        let y_fmt = move |v: &f64| chart::axis_label(*v, y_span / 20.0);
        chart
            .configure_mesh()
            .x_desc(s.x_label.as_str())
            .y_desc(s.y_label.as_str())
            .label_style(draw::font(TICK_SIZE))
            .axis_desc_style(draw::font(LABEL_SIZE))
            .bold_line_style(draw::colour((235, 235, 235)))
            .max_light_lines(0)
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .draw()
            .map_err(FigureError::draw)?;

        let grey = draw::colour(LIGHT_GREY).stroke_width(1);
        chart
            .draw_series(
                s.segments
                    .iter()
                    .filter(|[a, b]| finite(*a) && finite(*b))
                    .map(|&[a, b]| PathElement::new(vec![a, b], grey)),
            )
            .map_err(FigureError::draw)?;

        let mut occupied = Occupied::default();
        for group in &s.groups {
            for &p in group.points.iter().filter(|&&p| finite(p)) {
                occupied.point(chart.backend_coord(&p));
            }
        }
        for m in s.marks.iter().filter(|m| finite(m.at)) {
            let (x, y) = chart.backend_coord(&m.at);
            let w = draw::text_width(&m.label, SMALL_SIZE) as i32;
            occupied.area((x - 12, y - 24), (x + 16 + w, y + 24));
        }
        for group in &s.groups {
            let rgb = draw::colour(group.colour.rgb());
            let dot = rgb.mix(0.85).filled();
            chart
                .draw_series(
                    group
                        .points
                        .iter()
                        .filter(|&&p| finite(p))
                        .map(|&p| Circle::new(p, 3, dot)),
                )
                .map_err(FigureError::draw)?
                .label(group.name.clone())
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, rgb.filled()));
        }

        // Labels alternate above and below their cross, so that nearby marks stay legible.
        for (i, mark) in s.marks.iter().filter(|m| finite(m.at)).enumerate() {
            let rgb = draw::colour(mark.colour.rgb());
            let halo = draw::colour((255, 255, 255)).stroke_width(6);
            let label = draw::font(SMALL_SIZE).color(&draw::colour((0, 0, 0)));
            let (w, h) = (
                draw::text_width(&mark.label, SMALL_SIZE) as i32,
                draw::text_height(SMALL_SIZE) as i32,
            );
            let top = if i % 2 == 0 { -12 - h } else { 12 };
            let backing = WHITE.mix(0.8).filled();
            let element = EmptyElement::at(mark.at)
                + Cross::new((0, 0), 8, halo)
                + Cross::new((0, 0), 8, rgb.stroke_width(3))
                + Circle::new((0, 0), 11, rgb.stroke_width(2))
                + Rectangle::new([(12, top - 2), (16 + w, top + h + 3)], backing)
                + Text::new(mark.label.clone(), (14, top), label);
            chart
                .draw_series(std::iter::once(element))
                .map_err(FigureError::draw)?;
        }

        if s.groups.iter().any(|g| !g.name.is_empty()) {
            let names: Vec<&str> = s.groups.iter().map(|g| g.name.as_str()).collect();
            chart::legend(&mut chart, &names, &occupied)?;
        }
        Ok(vec![chart::plot_rect(&chart)])
    }
}

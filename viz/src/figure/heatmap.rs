//! Heat maps: a matrix of values as coloured cells, with row and column labels and a colour bar.

use plotters::coord::Shift;
use plotters::prelude::{DrawingArea, DrawingBackend};
use plotters::style::text_anchor::{HPos, VPos};

use super::colormap::{self, BarTicks, Colormap};
use super::draw::{self, Anchor, LABEL_SIZE, MARGIN, SMALL_SIZE, TICK_SIZE, TITLE_BAND};
use super::theme::{DARK_GREY, INK};
use super::{Drawing, Figure, FigureError, PixelRect};

/// A matrix of values drawn as coloured cells (row 0 at the top), with a colour bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Drawn at the top.
    pub title: String,
    /// `rows * cols` values, row-major; NaN cells are drawn grey and do not set the range.
    pub values: Vec<f32>,
    /// Number of rows (at least 1).
    pub rows: usize,
    /// Number of columns (at least 1).
    pub cols: usize,
    /// One label per row, or empty for the row indices.
    pub row_labels: Vec<String>,
    /// One label per column, or empty for the column indices. Long labels are set vertically
    /// and, when columns are narrow, only every k-th is shown.
    pub col_labels: Vec<String>,
    /// Caption under the column labels.
    pub x_label: String,
    /// Caption left of the row labels.
    pub y_label: String,
    /// How values become colours.
    pub colormap: Colormap,
    /// The colour range; `None` spans the finite values (see [`Colormap::range`]).
    pub range: Option<(f32, f32)>,
    /// Print each value in its cell when the cell is large enough.
    pub annotate: bool,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for Heatmap {
    fn default() -> Self {
        Self {
            title: String::new(),
            values: Vec::new(),
            rows: 0,
            cols: 0,
            row_labels: Vec::new(),
            col_labels: Vec::new(),
            x_label: String::new(),
            y_label: String::new(),
            colormap: Colormap::Viridis,
            range: None,
            annotate: false,
            width: 640,
            height: 480,
        }
    }
}

/// Where everything goes, computed once and replayed on both backends.
struct Layout<'a> {
    spec: &'a Heatmap,
    plot: PixelRect,
    range: (f32, f32),
    row_labels: Vec<String>,
    col_labels: Vec<String>,
    row_every: usize,
    col_every: usize,
    col_vertical: bool,
}

/// The longest label is cut to this width.
const MAX_LABEL_WIDTH: u32 = 140;

impl Heatmap {
    /// Checks the spec and draws it.
    pub fn render(&self) -> Result<Figure, FigureError> {
        self.validate()?;
        let layout = self.layout()?;
        super::render(&self.title, (self.width, self.height), &layout)
    }

    fn validate(&self) -> Result<(), FigureError> {
        if self.rows == 0 {
            return Err(FigureError::input("Heatmap.rows", "at least 1 row", 0));
        }
        if self.cols == 0 {
            return Err(FigureError::input("Heatmap.cols", "at least 1 column", 0));
        }
        let cells = self.rows.checked_mul(self.cols);
        if cells != Some(self.values.len()) {
            return Err(FigureError::input(
                "Heatmap.values",
                format!("rows × cols = {} × {} values", self.rows, self.cols),
                self.values.len(),
            ));
        }
        for (field, labels, n) in [
            ("Heatmap.row_labels", &self.row_labels, self.rows),
            ("Heatmap.col_labels", &self.col_labels, self.cols),
        ] {
            if !labels.is_empty() && labels.len() != n {
                return Err(FigureError::input(
                    field,
                    format!("none or {n} labels"),
                    labels.len(),
                ));
            }
        }
        colormap::check_range("Heatmap.range", self.range)?;
        super::check_size("Heatmap.width", self.width)?;
        super::check_size("Heatmap.height", self.height)
    }

    fn layout(&self) -> Result<Layout<'_>, FigureError> {
        let range = self.colormap.range(&self.values, self.range);
        let labels = |given: &[String], n: usize| -> Vec<String> {
            if given.is_empty() {
                (0..n).map(|i| i.to_string()).collect()
            } else {
                given
                    .iter()
                    .map(|l| draw::fit(l, TICK_SIZE, MAX_LABEL_WIDTH))
                    .collect()
            }
        };
        let row_labels = labels(&self.row_labels, self.rows);
        let col_labels = labels(&self.col_labels, self.cols);
        let widest = |l: &[String]| {
            l.iter()
                .map(|s| draw::text_width(s, TICK_SIZE))
                .max()
                .unwrap_or(0)
        };
        let line = draw::text_height(TICK_SIZE);
        let caption = |s: &str| {
            if s.is_empty() {
                0
            } else {
                draw::text_height(LABEL_SIZE) + 8
            }
        };

        let top = if self.title.is_empty() {
            MARGIN
        } else {
            TITLE_BAND + 6
        };
        let left = MARGIN + caption(&self.y_label) + widest(&row_labels) + 8;
        let right = colormap::colourbar_width(BarTicks::Values(range), "") + MARGIN;
        let plot_w = self.width.saturating_sub(left + right);
        if plot_w < 16 || (plot_w as usize) < self.cols {
            return Err(FigureError::input(
                "Heatmap.width",
                format!(
                    "room for {} columns beside labels and colour bar",
                    self.cols
                ),
                self.width,
            ));
        }
        let cell_w = plot_w as f32 / self.cols as f32;
        let col_w = widest(&col_labels);
        let (col_vertical, col_every) = if col_w as f32 + 6.0 <= cell_w {
            (false, 1)
        } else if self.col_labels.is_empty() {
            (false, ((col_w as f32 + 6.0) / cell_w).ceil() as usize)
        } else {
            (true, ((line as f32 + 4.0) / cell_w).ceil() as usize)
        };
        let bottom =
            6 + if col_vertical { col_w } else { line } + 6 + caption(&self.x_label) + MARGIN;
        let plot_h = self.height.saturating_sub(top + bottom);
        if plot_h < 16 || (plot_h as usize) < self.rows {
            return Err(FigureError::input(
                "Heatmap.height",
                format!("room for {} rows above the labels", self.rows),
                self.height,
            ));
        }
        let cell_h = plot_h as f32 / self.rows as f32;
        let row_every = ((line as f32 + 2.0) / cell_h).ceil().max(1.0) as usize;
        Ok(Layout {
            spec: self,
            plot: PixelRect {
                x: left,
                y: top,
                width: plot_w,
                height: plot_h,
            },
            range,
            row_labels,
            col_labels,
            row_every,
            col_every: col_every.max(1),
            col_vertical,
        })
    }
}

/// Black or white, whichever reads better on `rgb`.
fn ink_on((r, g, b): (u8, u8, u8)) -> (u8, u8, u8) {
    let l = 0.2126 * f32::from(r) + 0.7152 * f32::from(g) + 0.0722 * f32::from(b);
    if l < 140.0 { (255, 255, 255) } else { INK }
}

impl Layout<'_> {
    /// The coloured cells and, if asked for, their values.
    fn cells<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), FigureError> {
        let s = self.spec;
        let (plot, rows, cols) = (self.plot, s.rows, s.cols);
        for r in 0..rows {
            for c in 0..cols {
                let cell = plot.cell(r, c, rows, cols);
                let value = s.values[r * cols + c];
                let rgb = s.colormap.map(value, self.range);
                draw::fill(root, cell, rgb)?;
                if !(s.annotate && value.is_finite()) {
                    continue;
                }
                let text = draw::format_value(f64::from(value));
                if draw::text_width(&text, SMALL_SIZE) + 4 <= cell.width
                    && draw::text_height(SMALL_SIZE) + 2 <= cell.height
                {
                    let (x, y) = cell.centre();
                    let at = (x as i32, y as i32);
                    draw::text(root, &text, at, SMALL_SIZE, Anchor::CENTRE, ink_on(rgb))?;
                }
            }
        }
        draw::frame(root, plot, DARK_GREY)
    }

    /// Row and column labels with their tick marks.
    fn ticks<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), FigureError> {
        let (plot, rows, cols) = (self.plot, self.spec.rows, self.spec.cols);
        let bottom = plot.y + plot.height;
        let anchor = if self.col_vertical {
            Anchor::vertical(HPos::Right, VPos::Center)
        } else {
            Anchor::new(HPos::Center, VPos::Top)
        };
        for (c, label) in self.col_labels.iter().enumerate() {
            if c % self.col_every != 0 {
                continue;
            }
            let (x, _) = plot.cell(0, c, rows, cols).centre();
            let tick = PixelRect {
                x,
                y: bottom + 1,
                width: 1,
                height: 3,
            };
            draw::fill(root, tick, DARK_GREY)?;
            let at = (x as i32, (bottom + 6) as i32);
            draw::text(root, label, at, TICK_SIZE, anchor, INK)?;
        }
        let anchor = Anchor::new(HPos::Right, VPos::Center);
        for (r, label) in self.row_labels.iter().enumerate() {
            if r % self.row_every != 0 {
                continue;
            }
            let (_, y) = plot.cell(r, 0, rows, cols).centre();
            let tick = PixelRect {
                x: plot.x - 4,
                y,
                width: 3,
                height: 1,
            };
            draw::fill(root, tick, DARK_GREY)?;
            let at = ((plot.x - 7) as i32, y as i32);
            draw::text(root, label, at, TICK_SIZE, anchor, INK)?;
        }
        Ok(())
    }

    /// The axis captions.
    fn captions<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), FigureError> {
        let (s, plot) = (self.spec, self.plot);
        let line = draw::text_height(LABEL_SIZE);
        if !s.x_label.is_empty() {
            let shown = draw::fit(&s.x_label, LABEL_SIZE, plot.width + 2 * MARGIN);
            let at = (
                (plot.x + plot.width / 2) as i32,
                (s.height - MARGIN - line / 2) as i32,
            );
            draw::text(root, &shown, at, LABEL_SIZE, Anchor::CENTRE, INK)?;
        }
        if !s.y_label.is_empty() {
            let shown = draw::fit(&s.y_label, LABEL_SIZE, plot.height);
            let at = (
                (MARGIN + line / 2) as i32,
                (plot.y + plot.height / 2) as i32,
            );
            let anchor = Anchor::vertical(HPos::Center, VPos::Center);
            draw::text(root, &shown, at, LABEL_SIZE, anchor, INK)?;
        }
        Ok(())
    }
}

impl Drawing for Layout<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<PixelRect>, FigureError> {
        let s = self.spec;
        draw::title(root, &s.title, s.width)?;
        self.cells(root)?;
        self.ticks(root)?;
        self.captions(root)?;
        let ticks = BarTicks::Values(self.range);
        colormap::draw_colourbar(root, self.plot, s.colormap, ticks, "")?;
        Ok(vec![self.plot])
    }
}

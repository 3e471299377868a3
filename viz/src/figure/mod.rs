//! Figures: heat maps, attention overlays, line charts, histograms, bar charts and scatter
//! plots, each rendered once to SVG text and to an RGB bitmap (PNG on request).
//!
//! Every figure kind is a plain-data spec with public fields and a `render` method that
//! validates it (bad input is an error naming the field, never a panic) and returns a
//! [`Figure`]. The drawing code is generic over the plotters backend and runs once per
//! backend, so the SVG and the bitmap show the same picture. Rendering is deterministic: the
//! same spec gives byte-identical SVG and pixels. Text uses a built-in font; no system font
//! is needed.
//!
//! - [`Heatmap`]: a matrix of values with row and column labels and a colour bar.
//! - [`OverlayGrid`]: small maps (attention, rollout, Grad-CAM, similarity) blended over images.
//! - [`LineChart`], [`Histograms`], [`BarChart`], [`Scatter`]: charts with axes and legends.
//! - [`Colormap`] and [`theme`]: the colours every figure shares.
//!
//! A figure can be saved ([`Figure::save`] writes PNG and SVG side by side) or shown inline in
//! a Jupyter notebook running the evcxr Rust kernel ([`Figure::evcxr_display`]).
//!
//! ```
//! use viz::figure::{Colormap, Heatmap};
//!
//! let figure = Heatmap {
//!     title: "Image-text similarity".into(),
//!     values: vec![0.9, 0.1, 0.2, 0.8],
//!     rows: 2,
//!     cols: 2,
//!     x_label: "caption".into(),
//!     y_label: "image".into(),
//!     colormap: Colormap::Viridis,
//!     annotate: true,
//!     width: 320,
//!     height: 240,
//!     ..Heatmap::default()
//! }
//! .render()?;
//! assert_eq!(figure.size(), (320, 240));
//! assert_eq!(figure.rgb().len(), 320 * 240 * 3);
//! assert!(figure.svg().starts_with("<svg"));
//! # Ok::<(), viz::figure::FigureError>(())
//! ```

mod bars;
mod chart;
mod colormap;
mod draw;
mod encode;
mod heatmap;
mod histogram;
mod legend;
mod overlay;
mod scatter;
mod text;
pub mod theme;

use std::fmt;
use std::path::PathBuf;

use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, DrawingBackend, IntoDrawingArea, SVGBackend};
use plotters::style::WHITE;

pub use bars::{BarChart, BarSeries, Series1};
pub use chart::{LineChart, Series};
pub use colormap::{Colormap, NAN_GREY};
pub use encode::base64_encode;
pub use heatmap::Heatmap;
pub use histogram::{HistSeries, Histograms};
pub use overlay::{OVERLAY_ALPHA, Overlay, OverlayGrid, RgbImage};
pub use scatter::{Mark, PointGroup, Scatter};
pub use theme::{Role, series_colour};

/// What went wrong while building, rendering or writing a figure.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// The spec is invalid: `field` names the offending field (e.g. `Heatmap.values`).
    #[error("{field}: expected {expected}, got {got}")]
    Input {
        /// The field, as `Spec.field` or `Spec.field[index].inner`.
        field: String,
        /// What the field should hold.
        expected: String,
        /// What it holds.
        got: String,
    },
    /// The plotting library reported an error while drawing.
    #[error("drawing failed: {0}")]
    Draw(String),
    /// Encoding the bitmap as PNG failed.
    #[error("PNG encoding failed: {0}")]
    Encode(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl FigureError {
    /// An [`FigureError::Input`] error.
    pub(crate) fn input(
        field: impl Into<String>,
        expected: impl Into<String>,
        got: impl fmt::Display,
    ) -> Self {
        Self::Input {
            field: field.into(),
            expected: expected.into(),
            got: got.to_string(),
        }
    }

    /// Wraps a plotting-library error.
    pub(crate) fn draw(e: impl fmt::Display) -> Self {
        Self::Draw(e.to_string())
    }
}

/// A rectangle in figure pixels: `x..x + width` by `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PixelRect {
    /// Left edge (inclusive).
    pub x: u32,
    /// Top edge (inclusive).
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl PixelRect {
    /// The pixel at the centre (rounded towards the top left).
    pub fn centre(&self) -> (u32, u32) {
        (self.x + self.width / 2, self.y + self.height / 2)
    }

    /// Cell `(row, col)` of a `rows × cols` grid laid over this rectangle: cell boundaries are
    /// at `x + col * width / cols` and `y + row * height / rows` (integer division), which is
    /// how heat maps and overlay maps place their cells.
    #[must_use]
    pub fn cell(&self, row: usize, col: usize, rows: usize, cols: usize) -> PixelRect {
        let (rows, cols) = (rows.max(1) as u64, cols.max(1) as u64);
        let edge = |origin: u32, extent: u32, i: u64, n: u64| -> u32 {
            origin + (i.min(n) * u64::from(extent) / n) as u32
        };
        let (x0, x1) = (
            edge(self.x, self.width, col as u64, cols),
            edge(self.x, self.width, col as u64 + 1, cols),
        );
        let (y0, y1) = (
            edge(self.y, self.height, row as u64, rows),
            edge(self.y, self.height, row as u64 + 1, rows),
        );
        PixelRect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }
}

/// A rendered figure: the same drawing as SVG text and as an RGB bitmap.
#[derive(Clone)]
pub struct Figure {
    title: String,
    width: u32,
    height: u32,
    svg: String,
    rgb: Vec<u8>,
    plot_areas: Vec<PixelRect>,
}

impl fmt::Debug for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Figure")
            .field("title", &self.title)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("svg_bytes", &self.svg.len())
            .field("plot_areas", &self.plot_areas)
            .finish_non_exhaustive()
    }
}

impl Figure {
    /// The title drawn at the top.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// `(width, height)` in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The figure as a standalone SVG document.
    pub fn svg(&self) -> &str {
        &self.svg
    }

    /// The figure as packed RGB pixels, row by row: `width * height * 3` bytes.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The RGB value of pixel `(x, y)`, or `None` outside the figure.
    pub fn pixel(&self, x: u32, y: u32) -> Option<(u8, u8, u8)> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some((self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]))
    }

    /// The data area: the cell grid of a heat map, the first panel of an overlay grid, the
    /// plotting area (inside the axes) of a chart.
    pub fn plot_area(&self) -> Option<PixelRect> {
        self.plot_areas.first().copied()
    }

    /// Every data area: one per panel for an overlay grid (in panel order), one otherwise.
    pub fn plot_areas(&self) -> &[PixelRect] {
        &self.plot_areas
    }
}

/// Figure sizes accepted by every spec that takes a width and height.
const SIZE_LIMITS: (u32, u32) = (64, 8192);

/// Checks a requested figure dimension.
pub(crate) fn check_size(field: &str, value: u32) -> Result<(), FigureError> {
    let (lo, hi) = SIZE_LIMITS;
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(FigureError::input(
            field,
            format!("a size between {lo} and {hi} pixels"),
            value,
        ))
    }
}

/// A drawing that can be replayed on any plotters backend.
pub(crate) trait Drawing {
    /// Draws onto `root` (already filled white) and returns the data areas.
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<PixelRect>, FigureError>;
}

/// Draws `drawing` once to SVG and once to an RGB buffer.
pub(crate) fn render(
    title: &str,
    (width, height): (u32, u32),
    drawing: &impl Drawing,
) -> Result<Figure, FigureError> {
    check_size("Figure.width", width)?;
    check_size("Figure.height", height)?;
    draw::ensure_fonts()?;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(FigureError::draw)?;
        drawing.draw(&root)?;
        root.present().map_err(FigureError::draw)?;
    }

    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    let plot_areas = {
        let root = text::CrispText(BitMapBackend::with_buffer(&mut rgb, (width, height)))
            .into_drawing_area();
        root.fill(&WHITE).map_err(FigureError::draw)?;
        let areas = drawing.draw(&root)?;
        root.present().map_err(FigureError::draw)?;
        areas
    };

    Ok(Figure {
        title: title.to_owned(),
        width,
        height,
        svg,
        rgb,
        plot_areas,
    })
}

#[cfg(test)]
mod tests {
    use super::PixelRect;

    #[test]
    fn cells_tile_the_rectangle() {
        let r = PixelRect {
            x: 10,
            y: 20,
            width: 101,
            height: 7,
        };
        let mut covered = 0;
        for row in 0..3 {
            for col in 0..4 {
                let c = r.cell(row, col, 3, 4);
                covered += c.width * c.height;
            }
        }
        assert_eq!(covered, 101 * 7);
        assert_eq!(r.cell(2, 3, 3, 4).x + r.cell(2, 3, 3, 4).width, 111);
    }
}

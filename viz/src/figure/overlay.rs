//! Overlay grids: small maps (attention, rollout, similarity, Grad-CAM, relevance) blended
//! over the images they explain, one panel per map.
//!
//! Each panel is `panel_size × panel_size` pixels. The image is upscaled by nearest neighbour
//! (crisp pixels), each map cell becomes a rectangle (cell boundaries as in
//! [`PixelRect::cell`]), and the two are blended here, not by the backend:
//! `out = round(α · map + (1 − α) · image)` with α = [`OVERLAY_ALPHA`]. Without an image the
//! map is drawn opaque. The panel is emitted as rectangles of constant colour, so the SVG stays
//! small and both backends show the same pixels.

use plotters::coord::Shift;
use plotters::prelude::{DrawingArea, DrawingBackend};
use plotters::style::text_anchor::{HPos, VPos};

use super::colormap::{self, BarTicks, Colormap};
use super::draw::{self, Anchor, MARGIN, SMALL_SIZE, TITLE_BAND};
use super::theme::{DARK_GREY, INK};
use super::{Drawing, Figure, FigureError, PixelRect};

/// The map's weight in the blend over an image.
pub const OVERLAY_ALPHA: f32 = 0.55;

/// An RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// One panel: a map over a grid of cells, optionally over an image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Overlay {
    /// Drawn above the panel (shortened if wider than the panel).
    pub title: String,
    /// The picture under the map; `None` draws the map opaque.
    pub image: Option<RgbImage>,
    /// `grid.0 * grid.1` values, row-major; NaN cells are grey.
    pub map: Vec<f32>,
    /// `(rows, cols)` of the map.
    pub grid: (usize, usize),
    /// This panel's colour range; `None` spans its finite values.
    pub range: Option<(f32, f32)>,
}

/// Panels in a grid, with one colour bar.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayGrid {
    /// Drawn at the top.
    pub title: String,
    /// The panels, filled row by row.
    pub panels: Vec<Overlay>,
    /// Panels per row (at least 1).
    pub columns: usize,
    /// How map values become colours.
    pub colormap: Colormap,
    /// One colour range over all panels (the colour bar shows its values); otherwise each panel
    /// spans its own range, printed under it, and the colour bar reads "min" to "max".
    pub shared_range: bool,
    /// Caption of the colour bar.
    pub colorbar_label: String,
    /// Side of each square panel in pixels (16 to 1024).
    pub panel_size: u32,
}

impl Default for OverlayGrid {
    fn default() -> Self {
        Self {
            title: String::new(),
            panels: Vec::new(),
            columns: 4,
            colormap: Colormap::Viridis,
            shared_range: true,
            colorbar_label: String::new(),
            panel_size: 128,
        }
    }
}

const GAP_X: u32 = 12;
const GAP_Y: u32 = 10;
const MIN_BAR: u32 = 100;

/// Where everything goes, computed once and replayed on both backends.
struct Layout<'a> {
    spec: &'a OverlayGrid,
    size: (u32, u32),
    panels: Vec<PixelRect>,
    ranges: Vec<(f32, f32)>,
    bar_beside: PixelRect,
    bar_ticks: BarTicks,
}

impl OverlayGrid {
    /// Checks the spec and draws it; the figure's size follows from the panels.
    pub fn render(&self) -> Result<Figure, FigureError> {
        self.validate()?;
        let layout = self.layout();
        super::render(&self.title, layout.size, &layout)
    }

    fn validate(&self) -> Result<(), FigureError> {
        if self.panels.is_empty() {
            return Err(FigureError::input(
                "OverlayGrid.panels",
                "at least one panel",
                "none",
            ));
        }
        if self.columns == 0 {
            return Err(FigureError::input(
                "OverlayGrid.columns",
                "at least 1 column",
                0,
            ));
        }
        if !(16..=1024).contains(&self.panel_size) {
            return Err(FigureError::input(
                "OverlayGrid.panel_size",
                "16 to 1024 pixels",
                self.panel_size,
            ));
        }
        for (i, p) in self.panels.iter().enumerate() {
            let field = |f: &str| format!("OverlayGrid.panels[{i}].{f}");
            let (rows, cols) = p.grid;
            if rows == 0 || cols == 0 {
                return Err(FigureError::input(
                    field("grid"),
                    "at least 1 × 1 cells",
                    format!("{rows} × {cols}"),
                ));
            }
            if rows.checked_mul(cols) != Some(p.map.len()) {
                return Err(FigureError::input(
                    field("map"),
                    format!("grid {rows} × {cols} values"),
                    p.map.len(),
                ));
            }
            if let Some(img) = &p.image {
                let want = img.width as usize * img.height as usize * 3;
                if img.width == 0 || img.height == 0 || img.pixels.len() != want {
                    return Err(FigureError::input(
                        field("image.pixels"),
                        format!("{} × {} × 3 bytes, non-empty", img.width, img.height),
                        img.pixels.len(),
                    ));
                }
            }
            colormap::check_range(&field("range"), p.range)?;
        }
        Ok(())
    }

    fn layout(&self) -> Layout<'_> {
        let n = self.panels.len();
        let columns = self.columns.min(n) as u32;
        let grid_rows = n.div_ceil(columns as usize) as u32;
        let p = self.panel_size;
        let title_band = draw::text_height(SMALL_SIZE) + 6;
        let under_band = if self.shared_range { 0 } else { title_band };
        let top = if self.title.is_empty() {
            MARGIN
        } else {
            TITLE_BAND + 4
        };

        let panels: Vec<PixelRect> = (0..n as u32)
            .map(|i| PixelRect {
                x: MARGIN + (i % columns) * (p + GAP_X),
                y: top + (i / columns) * (title_band + p + under_band + GAP_Y) + title_band,
                width: p,
                height: p,
            })
            .collect();

        let ranges: Vec<(f32, f32)> = if self.shared_range {
            let union = self
                .panels
                .iter()
                .filter_map(|o| {
                    o.range.or_else(|| {
                        let finite = || o.map.iter().copied().filter(|v| v.is_finite());
                        let lo = finite().reduce(f32::min)?;
                        let hi = finite().reduce(f32::max)?;
                        Some((lo, hi))
                    })
                })
                .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)));
            vec![self.colormap.range(&[], union); n]
        } else {
            self.panels
                .iter()
                .map(|o| self.colormap.range(&o.map, o.range))
                .collect()
        };
        let bar_ticks = if self.shared_range {
            BarTicks::Values(ranges[0])
        } else {
            BarTicks::Relative
        };

        let grid_w = columns * p + (columns - 1) * GAP_X;
        let data_h = grid_rows * (title_band + p + under_band) + (grid_rows - 1) * GAP_Y
            - title_band
            - under_band;
        let bar_beside = PixelRect {
            x: MARGIN,
            y: top + title_band,
            width: grid_w,
            height: data_h.max(MIN_BAR),
        };
        let width =
            (MARGIN + grid_w + colormap::colourbar_width(bar_ticks, &self.colorbar_label) + MARGIN)
                .max(draw::text_width(&self.title, draw::TITLE_SIZE) + 2 * MARGIN);
        let height = top + title_band + data_h.max(MIN_BAR) + under_band + MARGIN;
        Layout {
            spec: self,
            size: (width, height),
            panels,
            ranges,
            bar_beside,
            bar_ticks,
        }
    }
}

/// Runs of panel pixels `[start, end)` that see the same image pixel and the same map cell.
fn segments(size: u32, image: u32, cells: usize) -> Vec<(u32, u32, usize, usize)> {
    let mut out: Vec<(u32, u32, usize, usize)> = Vec::new();
    for p in 0..size {
        let src = (u64::from(p) * u64::from(image) / u64::from(size)) as usize;
        let cell = (u64::from(p) * cells as u64 / u64::from(size)) as usize;
        match out.last_mut() {
            Some(last) if last.2 == src && last.3 == cell => last.1 = p + 1,
            _ => out.push((p, p + 1, src, cell)),
        }
    }
    out
}

/// `round(α · map + (1 − α) · image)` per channel.
fn blend(map: (u8, u8, u8), image: (u8, u8, u8)) -> (u8, u8, u8) {
    let mix = |m: u8, i: u8| {
        (OVERLAY_ALPHA * f32::from(m) + (1.0 - OVERLAY_ALPHA) * f32::from(i)).round() as u8
    };
    (
        mix(map.0, image.0),
        mix(map.1, image.1),
        mix(map.2, image.2),
    )
}

/// Draws one panel's pixels into `rect`.
fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rect: PixelRect,
    overlay: &Overlay,
    colormap: Colormap,
    range: (f32, f32),
) -> Result<(), FigureError> {
    let (rows, cols) = overlay.grid;
    let (img_w, img_h) = overlay
        .image
        .as_ref()
        .map_or((1, 1), |i| (i.width, i.height));
    let xs = segments(rect.width, img_w, cols);
    let ys = segments(rect.height, img_h, rows);
    for &(y0, y1, sy, row) in &ys {
        let mut run: Option<(u32, u32, (u8, u8, u8))> = None;
        for &(x0, x1, sx, col) in &xs {
            let map = colormap.map(overlay.map[row * cols + col], range);
            let rgb = match &overlay.image {
                Some(img) => {
                    let i = (sy * img.width as usize + sx) * 3;
                    blend(map, (img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]))
                }
                None => map,
            };
            run = match run {
                Some((start, _, c)) if c == rgb => Some((start, x1, c)),
                Some((start, end, c)) => {
                    fill_span(root, rect, (start, end), (y0, y1), c)?;
                    Some((x0, x1, rgb))
                }
                None => Some((x0, x1, rgb)),
            };
        }
        if let Some((start, end, c)) = run {
            fill_span(root, rect, (start, end), (y0, y1), c)?;
        }
    }
    Ok(())
}

fn fill_span<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rect: PixelRect,
    (x0, x1): (u32, u32),
    (y0, y1): (u32, u32),
    rgb: (u8, u8, u8),
) -> Result<(), FigureError> {
    let span = PixelRect {
        x: rect.x + x0,
        y: rect.y + y0,
        width: x1 - x0,
        height: y1 - y0,
    };
    draw::fill(root, span, rgb)
}

impl Drawing for Layout<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<PixelRect>, FigureError> {
        let s = self.spec;
        draw::title(root, &s.title, self.size.0)?;
        let line = draw::text_height(SMALL_SIZE);
        for ((overlay, &rect), &range) in s.panels.iter().zip(&self.panels).zip(&self.ranges) {
            draw_panel(root, rect, overlay, s.colormap, range)?;
            draw::frame(root, rect, DARK_GREY)?;
            let title = draw::fit(&overlay.title, SMALL_SIZE, rect.width + GAP_X - 2);
            let centre = (rect.x + rect.width / 2) as i32;
            draw::text(
                root,
                &title,
                (centre, (rect.y - 4) as i32),
                SMALL_SIZE,
                Anchor::new(HPos::Center, VPos::Bottom),
                INK,
            )?;
            if !s.shared_range {
                let under = format!(
                    "min {}  max {}",
                    draw::format_value(f64::from(range.0)),
                    draw::format_value(f64::from(range.1))
                );
                let under = draw::fit(&under, SMALL_SIZE, rect.width + GAP_X - 2);
                let y = rect.y + rect.height + 4 + line / 2;
                draw::text(
                    root,
                    &under,
                    (centre, y as i32),
                    SMALL_SIZE,
                    Anchor::CENTRE,
                    INK,
                )?;
            }
        }
        colormap::draw_colourbar(
            root,
            self.bar_beside,
            s.colormap,
            self.bar_ticks,
            &s.colorbar_label,
        )?;
        Ok(self.panels.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_at_image_pixels_and_cells() {
        // 8 panel pixels, a 2-pixel image and a 4-cell map: cells are finer, so 4 runs.
        let s = segments(8, 2, 4);
        assert_eq!(
            s,
            vec![(0, 2, 0, 0), (2, 4, 0, 1), (4, 6, 1, 2), (6, 8, 1, 3)]
        );
        // 6 panel pixels, a 3-pixel image and 2 cells: boundaries at 2, 3 and 4.
        assert_eq!(segments(6, 3, 2).len(), 4);
    }

    #[test]
    fn blend_weights_the_map_by_alpha() {
        assert_eq!(blend((200, 100, 0), (0, 0, 0)), (110, 55, 0));
        assert_eq!(blend((0, 0, 0), (100, 100, 100)), (45, 45, 45));
    }
}

//! Drawing helpers shared by the panels: colours, textures from images and maps, heat maps.

use egui::{Color32, ColorImage, Rect, Sense, TextureHandle, TextureOptions, Vec2, pos2, vec2};
use workbench::data::RgbImage;

use crate::figure::{Colormap, OVERLAY_ALPHA, Role, series_colour};

/// An `(r, g, b)` triple as an egui colour.
pub fn colour((r, g, b): (u8, u8, u8)) -> Color32 {
    Color32::from_rgb(r, g, b)
}

/// The colour of a role (images blue, texts orange, …), as in the figures.
pub fn role(r: Role) -> Color32 {
    colour(r.rgb())
}

/// The `i`-th generic series colour.
pub fn series(i: usize) -> Color32 {
    colour(series_colour(i))
}

/// A dataset image as an egui image, pixel for pixel.
pub fn color_image(image: &RgbImage) -> ColorImage {
    if image.data.len() == image.width * image.height * 3 {
        ColorImage::from_rgb([image.width, image.height], &image.data)
    } else {
        ColorImage::filled([1, 1], Color32::GRAY)
    }
}

/// `map` (a `grid × grid` array of patch values, row-major) coloured with `colormap` and
/// blended over `image` with the figures' overlay weight. `range: None` spans the map's values.
pub fn overlay(
    image: &RgbImage,
    map: &[f32],
    grid: usize,
    colormap: Colormap,
    range: Option<(f32, f32)>,
) -> ColorImage {
    let (w, h) = (image.width, image.height);
    if grid == 0 || map.len() != grid * grid || image.data.len() != w * h * 3 {
        return color_image(image);
    }
    let range = colormap.range(map, range);
    let mut pixels = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let cell = (y * grid / h) * grid + x * grid / w;
            let (r, g, b) = colormap.map(map[cell], range);
            let i = (y * w + x) * 3;
            let blend = |m: u8, p: u8| {
                (OVERLAY_ALPHA * f32::from(m) + (1.0 - OVERLAY_ALPHA) * f32::from(p)).round() as u8
            };
            pixels.push(Color32::from_rgb(
                blend(r, image.data[i]),
                blend(g, image.data[i + 1]),
                blend(b, image.data[i + 2]),
            ));
        }
    }
    ColorImage::new([w, h], pixels)
}

/// A texture that is rebuilt only when its key changes.
pub struct Cached<K> {
    key: Option<K>,
    texture: Option<TextureHandle>,
}

impl<K> Default for Cached<K> {
    fn default() -> Self {
        Self {
            key: None,
            texture: None,
        }
    }
}

impl<K: PartialEq> Cached<K> {
    /// The texture for `key`, made by `make` if the key changed since the last call.
    pub fn get(
        &mut self,
        ctx: &egui::Context,
        name: &str,
        key: K,
        make: impl FnOnce() -> ColorImage,
    ) -> &TextureHandle {
        if self.key.as_ref() != Some(&key) || self.texture.is_none() {
            self.texture = None;
            self.key = Some(key);
        }
        self.texture
            .get_or_insert_with(|| ctx.load_texture(name, make(), TextureOptions::NEAREST))
    }
}

/// Shows a texture scaled to `side` points wide (aspect kept).
pub fn show_texture(ui: &mut egui::Ui, texture: &TextureHandle, side: f32) -> egui::Response {
    let [w, h] = texture.size();
    let scale = side / w.max(1) as f32;
    ui.add(egui::Image::from_texture((
        texture.id(),
        vec2(w as f32 * scale, h as f32 * scale),
    )))
}

/// A `(row, column)` of a [`HeatMap`].
pub type Cell = (usize, usize);

/// Where the pointer is on a [`HeatMap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pointer {
    /// The cell under the pointer.
    pub hovered: Option<Cell>,
    /// The cell clicked this frame.
    pub clicked: Option<Cell>,
}

/// A matrix drawn as coloured cells, with optional row and column labels, the value under
/// the pointer in a tooltip; returns the hovered cell, if any.
pub struct HeatMap<'a> {
    /// Row-major values, `rows * cols`.
    pub values: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Colours.
    pub colormap: Colormap,
    /// Value range (`None`: the values' own, symmetric for a diverging map).
    pub range: Option<(f32, f32)>,
    /// Side of one cell, in points.
    pub cell: f32,
    /// Labels left of the rows (may be empty).
    pub row_labels: &'a [String],
    /// Labels above the columns (may be empty).
    pub col_labels: &'a [String],
    /// Cells to outline, as `(row, col)`.
    pub outline: &'a [Cell],
}

impl HeatMap<'_> {
    /// Draws the matrix; returns the cell under the pointer.
    pub fn show(&self, ui: &mut egui::Ui) -> Option<Cell> {
        self.draw(ui, Sense::hover()).hovered
    }

    /// Draws the matrix; returns the cell under the pointer and the cell clicked this frame.
    pub fn show_clickable(&self, ui: &mut egui::Ui) -> Pointer {
        self.draw(ui, Sense::click())
    }

    fn draw(&self, ui: &mut egui::Ui, sense: Sense) -> Pointer {
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || cols == 0 || self.values.len() != rows * cols {
            ui.label("(empty matrix)");
            return Pointer::default();
        }
        // Room for the labels: about 6.5 points per character, plus a margin.
        let extent = |labels: &[String]| {
            labels
                .iter()
                .map(|l| l.chars().count())
                .max()
                .map_or(0.0, |n| 8.0 + 6.5 * n as f32)
        };
        let (label_w, label_h) = (extent(self.row_labels), extent(self.col_labels));
        let size = vec2(
            label_w + cols as f32 * self.cell,
            label_h + rows as f32 * self.cell,
        );
        let (rect, response) = ui.allocate_exact_size(size, sense);
        let painter = ui.painter_at(rect);
        let origin = rect.min + vec2(label_w, label_h);
        let range = self.colormap.range(self.values, self.range);
        for r in 0..rows {
            for c in 0..cols {
                let v = self.values[r * cols + c];
                let min = origin + vec2(c as f32 * self.cell, r as f32 * self.cell);
                painter.rect_filled(
                    Rect::from_min_size(min, Vec2::splat(self.cell)),
                    0.0,
                    colour(self.colormap.map(v, range)),
                );
            }
        }
        for &(r, c) in self.outline {
            if r < rows && c < cols {
                let min = origin + vec2(c as f32 * self.cell, r as f32 * self.cell);
                painter.rect_stroke(
                    Rect::from_min_size(min, Vec2::splat(self.cell)),
                    0.0,
                    egui::Stroke::new(1.5, Color32::BLACK),
                    egui::StrokeKind::Inside,
                );
            }
        }
        self.labels(ui, &painter, origin);
        let cell_at = |p: egui::Pos2| {
            let d = p - origin;
            if d.x < 0.0 || d.y < 0.0 {
                return None;
            }
            let (r, c) = ((d.y / self.cell) as usize, (d.x / self.cell) as usize);
            (r < rows && c < cols).then_some((r, c))
        };
        let hovered = response.hover_pos().and_then(cell_at);
        let clicked = if response.clicked() {
            response.interact_pointer_pos().and_then(cell_at)
        } else {
            None
        };
        if let Some((r, c)) = hovered {
            let name = |labels: &[String], i: usize| {
                labels.get(i).cloned().unwrap_or_else(|| i.to_string())
            };
            response.on_hover_text(format!(
                "{} × {}: {:.4}",
                name(self.row_labels, r),
                name(self.col_labels, c),
                self.values[r * cols + c]
            ));
        }
        Pointer { hovered, clicked }
    }

    /// Row labels left of the rows, column labels written upwards above the columns.
    fn labels(&self, ui: &egui::Ui, painter: &egui::Painter, origin: egui::Pos2) {
        let font = egui::FontId::proportional(11.0);
        let text = ui.visuals().text_color();
        for (r, l) in self.row_labels.iter().enumerate().take(self.rows) {
            painter.text(
                pos2(origin.x - 4.0, origin.y + (r as f32 + 0.5) * self.cell),
                egui::Align2::RIGHT_CENTER,
                l,
                font.clone(),
                text,
            );
        }
        for (c, l) in self.col_labels.iter().enumerate().take(self.cols) {
            // Column labels are written upwards, centred on their column.
            let x = origin.x + (c as f32 + 0.5) * self.cell;
            let galley = painter.layout_no_wrap(l.clone(), font.clone(), text);
            let shape = egui::epaint::TextShape::new(
                pos2(x - galley.size().y / 2.0, origin.y - 4.0),
                galley,
                text,
            )
            .with_angle(-std::f32::consts::FRAC_PI_2);
            painter.add(shape);
        }
    }
}

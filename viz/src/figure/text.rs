//! Text on bitmaps, set the way the SVG sets it.
//!
//! plotters' own bitmap text drops each glyph's side bearing and rounds the pen position per
//! glyph, which leaves uneven gaps inside words ("Covarian ce"). [`CrispText`] wraps a backend
//! and replaces only `draw_text`: glyphs are laid out with their advances and kerning at
//! sub-pixel positions and rasterised with their true bounds; symbols the text face lacks
//! (arrows) come from a second built-in face. Size and anchoring follow the
//! SVG backend (font size `size / 1.24` px; top, centre and bottom anchors at `0.76 em`,
//! `0.5 ex` and `−0.5 ex` from the baseline), so both outputs place text alike. Every other
//! drawing call goes straight to the wrapped backend.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::style::FontTransform;
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// The built-in fonts, parsed once: the text face, and a fallback for the symbols it lacks
/// (arrows, for one).
fn fonts() -> Option<&'static [FontRef<'static>; 2]> {
    static FONTS: OnceLock<Option<[FontRef<'static>; 2]>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let text = FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT).ok()?;
            let symbols = FontRef::try_from_slice(epaint_default_fonts::HACK_REGULAR).ok()?;
            Some([text, symbols])
        })
        .as_ref()
}

/// The scale at which `font`'s em square is `em` pixels.
fn scale_for(font: &FontRef<'static>, em: f32) -> PxScale {
    let units = font.units_per_em().unwrap_or(1000.0);
    PxScale::from(em * font.height_unscaled() / units)
}

/// A backend whose text is set with correct glyph spacing.
pub(crate) struct CrispText<B>(pub B);

impl<B: DrawingBackend> DrawingBackend for CrispText<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        self.0.estimate_text_size(text, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let Some(fonts) = fonts() else {
            return self.0.draw_text(text, style, pos);
        };
        let colour = style.color();
        if colour.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let em = (style.size() / 1.24) as f32;
        let scales = [scale_for(&fonts[0], em), scale_for(&fonts[1], em)];

        // Pen positions along the baseline, with kerning; each glyph from the first font
        // that has it.
        let mut glyphs = Vec::with_capacity(text.len());
        let mut pen = 0.0f32;
        let mut previous = None;
        for c in text.chars() {
            let f = usize::from(fonts[0].glyph_id(c).0 == 0 && fonts[1].glyph_id(c).0 != 0);
            let scaled = fonts[f].as_scaled(scales[f]);
            let id = scaled.glyph_id(c);
            if let Some((pf, p)) = previous
                && pf == f
            {
                pen += scaled.kern(p, id);
            }
            glyphs.push((f, id.with_scale_and_position(scales[f], point(pen, 0.0))));
            pen += scaled.h_advance(id);
            previous = Some((f, id));
        }
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -pen / 2.0,
            HPos::Right => -pen,
        };
        let ex = x_height(&fonts[0], scales[0]).unwrap_or(em * 0.5);
        let dy = match anchor.v_pos {
            VPos::Top => 0.76 * em,
            VPos::Center => 0.5 * ex,
            VPos::Bottom => -0.5 * ex,
        };

        let transform = style.transform();
        let (w, h) = self.get_size();
        for (f, glyph) in glyphs {
            let Some(outline) = fonts[f].outline_glyph(glyph) else {
                continue;
            };
            // Whole-pixel offsets per glyph, so that its rows and columns stay contiguous.
            let bounds = outline.px_bounds();
            let (ox, oy) = (
                (bounds.min.x + dx).round() as i32,
                (bounds.min.y + dy).round() as i32,
            );
            let mut result = Ok(());
            outline.draw(|x, y, coverage| {
                if result.is_err() || coverage <= 0.0 {
                    return;
                }
                let (lx, ly) = (ox + x as i32, oy + y as i32);
                let (tx, ty) = rotate(&transform, lx, ly);
                let (px, py) = (pos.0 + tx, pos.1 + ty);
                if px >= 0 && py >= 0 && (px as u32) < w && (py as u32) < h {
                    let alpha = colour.alpha * f64::from(coverage.min(1.0));
                    let c = BackendColor {
                        alpha,
                        rgb: colour.rgb,
                    };
                    result = self.0.draw_pixel((px, py), c);
                }
            });
            result?;
        }
        Ok(())
    }
}

/// The height of a lower-case x above the baseline, in pixels.
fn x_height(font: &FontRef<'static>, scale: PxScale) -> Option<f32> {
    let scaled = font.as_scaled(scale);
    let x = scaled
        .glyph_id('x')
        .with_scale_and_position(scale, point(0.0, 0.0));
    let outline = font.outline_glyph(x)?;
    Some(-outline.px_bounds().min.y)
}

/// Turns text-local pixel offsets as the transform asks (same convention as plotters).
fn rotate(transform: &FontTransform, x: i32, y: i32) -> (i32, i32) {
    match transform {
        FontTransform::None => (x, y),
        FontTransform::Rotate90 => (-y, x),
        FontTransform::Rotate180 => (-x, -y),
        FontTransform::Rotate270 => (y, -x),
    }
}

#[cfg(test)]
mod tests {
    use plotters::prelude::{BitMapBackend, IntoDrawingArea, IntoFont};
    use plotters::style::BLACK;

    use super::{CrispText, Font};

    /// Dark pixels after drawing `text` at size 24 on a white 80 × 30 bitmap.
    fn ink(text: &str) -> usize {
        crate::figure::draw::ensure_fonts().unwrap_or_default();
        let mut buf = vec![255u8; 80 * 30 * 3];
        {
            let root =
                CrispText(BitMapBackend::with_buffer(&mut buf, (80, 30))).into_drawing_area();
            let style = ("sans-serif", 24.0).into_font().color(&BLACK);
            root.draw_text(text, &style, (4, 4)).unwrap_or_default();
        }
        buf.chunks(3).filter(|p| p[0] < 128).count()
    }

    #[test]
    fn symbols_missing_from_the_text_face_still_draw() {
        let Some(fonts) = super::fonts() else {
            panic!("the built-in fonts parse");
        };
        assert_eq!(fonts[0].glyph_id('→').0, 0, "the text face has no arrow");
        // A missing glyph draws the text face's empty box; the arrow must not be that box.
        let tofu = ink("\u{E000}");
        assert!(
            ink("→") > 5 && ink("→") != tofu,
            "arrow {} vs box {tofu}",
            ink("→")
        );
        assert!(ink("ab") > 20);
        assert_eq!(ink(""), 0);
    }
}

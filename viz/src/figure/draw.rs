//! Shared drawing helpers: the built-in font, text placement and measurement, tick values
//! and number formatting.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::element::Rectangle;
use plotters::prelude::{DrawingArea, DrawingBackend};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{
    FontDesc, FontStyle, FontTransform, IntoFont, RGBColor, ShapeStyle, TextStyle, register_font,
};

use super::{FigureError, PixelRect};

/// The font family every figure uses; registered from bytes compiled into the binary.
pub(crate) const FAMILY: &str = "sans-serif";

/// Font sizes (plotters sizes: about 1.24 × the em height in pixels).
pub(crate) const TITLE_SIZE: f64 = 22.0;
pub(crate) const LABEL_SIZE: f64 = 16.0;
pub(crate) const TICK_SIZE: f64 = 14.0;
pub(crate) const SMALL_SIZE: f64 = 13.0;

/// Margin around every figure.
pub(crate) const MARGIN: u32 = 10;
/// Height of the band the title sits in.
pub(crate) const TITLE_BAND: u32 = 34;

/// Registers the built-in font once for the process.
pub(crate) fn ensure_fonts() -> Result<(), FigureError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(
            FAMILY,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(FigureError::Draw(
            "the built-in font could not be loaded".into(),
        ))
    }
}

/// The font at `size`.
pub(crate) fn font(size: f64) -> FontDesc<'static> {
    (FAMILY, size).into_font()
}

/// A plotters colour from an `(r, g, b)` triple.
pub(crate) fn colour((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

/// Width in pixels of `text` set horizontally at `size`.
pub(crate) fn text_width(text: &str, size: f64) -> u32 {
    font(size).box_size(text).map_or(
        (text.chars().count() as f64 * size * 0.5) as u32,
        |(w, _)| w,
    )
}

/// Height in pixels of one line of text at `size`.
pub(crate) fn text_height(size: f64) -> u32 {
    (size / 1.24).ceil() as u32
}

/// `text` shortened with "..." so that it is at most `max_width` pixels wide at `size`.
pub(crate) fn fit(text: &str, size: f64, max_width: u32) -> String {
    if text_width(text, size) <= max_width {
        return text.to_owned();
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (0..chars.len()).rev() {
        let candidate: String = chars[..keep].iter().collect::<String>() + "...";
        if text_width(&candidate, size) <= max_width {
            return candidate;
        }
    }
    String::new()
}

/// How a piece of text is anchored and oriented.
#[derive(Clone, Copy)]
pub(crate) struct Anchor {
    pub h: HPos,
    pub v: VPos,
    /// Rotated a quarter turn anticlockwise (reads bottom to top).
    pub vertical: bool,
}

impl Anchor {
    pub(crate) const CENTRE: Self = Self::new(HPos::Center, VPos::Center);
    pub(crate) const fn new(h: HPos, v: VPos) -> Self {
        Self {
            h,
            v,
            vertical: false,
        }
    }
    pub(crate) const fn vertical(h: HPos, v: VPos) -> Self {
        Self {
            h,
            v,
            vertical: true,
        }
    }
}

/// Draws `text` at figure pixel `at`.
pub(crate) fn text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    at: (i32, i32),
    size: f64,
    anchor: Anchor,
    rgb: (u8, u8, u8),
) -> Result<(), FigureError> {
    if text.is_empty() {
        return Ok(());
    }
    let c = colour(rgb);
    let mut style: TextStyle<'_> = font(size).color(&c).pos(Pos::new(anchor.h, anchor.v));
    if anchor.vertical {
        style = style.transform(FontTransform::Rotate270);
    }
    root.draw_text(text, &style, at).map_err(FigureError::draw)
}

/// Fills `rect` with one colour.
pub(crate) fn fill<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rect: PixelRect,
    rgb: (u8, u8, u8),
) -> Result<(), FigureError> {
    if rect.width == 0 || rect.height == 0 {
        return Ok(());
    }
    let style: ShapeStyle = colour(rgb).into();
    root.draw(&Rectangle::new(
        [
            (rect.x as i32, rect.y as i32),
            ((rect.x + rect.width) as i32, (rect.y + rect.height) as i32),
        ],
        style.filled(),
    ))
    .map_err(FigureError::draw)
}

/// Draws a one-pixel frame just outside `rect`.
pub(crate) fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rect: PixelRect,
    rgb: (u8, u8, u8),
) -> Result<(), FigureError> {
    let (x0, y0) = (rect.x as i32 - 1, rect.y as i32 - 1);
    let (x1, y1) = ((rect.x + rect.width) as i32, (rect.y + rect.height) as i32);
    for [a, b] in [
        [(x0, y0), (x1 + 1, y0 + 1)],
        [(x0, y1), (x1 + 1, y1 + 1)],
        [(x0, y0), (x0 + 1, y1 + 1)],
        [(x1, y0), (x1 + 1, y1 + 1)],
    ] {
        let style: ShapeStyle = colour(rgb).into();
        root.draw(&Rectangle::new([a, b], style.filled()))
            .map_err(FigureError::draw)?;
    }
    Ok(())
}

/// The title centred in the title band.
pub(crate) fn title<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    width: u32,
) -> Result<(), FigureError> {
    let shown = fit(title, TITLE_SIZE, width.saturating_sub(2 * MARGIN));
    text(
        root,
        &shown,
        ((width / 2) as i32, (TITLE_BAND / 2 + 2) as i32),
        TITLE_SIZE,
        Anchor::CENTRE,
        (0, 0, 0),
    )
}

/// Three to five round tick values in `[lo, hi]` (six in rare cases), and their spacing.
pub(crate) fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return (vec![lo], 1.0);
    }
    let span = hi - lo;
    let magnitude = 10f64.powf(span.log10().floor());
    let mut best: Option<(usize, f64)> = None;
    for scale in [0.01, 0.1, 1.0, 10.0] {
        for mantissa in [1.0, 2.0, 2.5, 5.0] {
            let step = magnitude * scale * mantissa;
            let first = (lo / step - 1e-9).ceil() as i64;
            let last = (hi / step + 1e-9).floor() as i64;
            let count = (last - first + 1).max(0) as usize;
            let score = match count {
                4 | 5 => 0,
                3 => 1,
                6 => 2,
                _ => continue,
            };
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, step));
            }
        }
    }
    let step = best.map_or(span / 2.0, |(_, step)| step);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let ticks = (first..=last)
        .map(|k| {
            let v = k as f64 * step;
            if v == 0.0 { 0.0 } else { v }
        })
        .collect();
    (ticks, step)
}

/// A tick value printed with as many decimals as the spacing `step` needs.
pub(crate) fn format_tick(value: f64, step: f64) -> String {
    let value = if value == 0.0 { 0.0 } else { value };
    if value != 0.0 && (value.abs() >= 1e5 || step < 1e-3) {
        return format!("{value:.1e}");
    }
    let decimals = (0..=6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(6) as usize;
    format!("{value:.decimals$}")
}

/// A value printed compactly (about three significant digits) for cell annotations.
pub(crate) fn format_value(value: f64) -> String {
    let a = value.abs();
    if !value.is_finite() {
        "nan".into()
    } else if value == 0.0 {
        "0".into()
    } else if !(0.01..1000.0).contains(&a) {
        format!("{value:.1e}")
    } else if a >= 100.0 {
        format!("{value:.0}")
    } else if a >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_in_range() {
        for (lo, hi) in [
            (0.0, 1.0),
            (-1.0, 1.0),
            (0.013, 0.071),
            (3.0, 1234.0),
            (-0.2, 0.9),
            (0.0, 0.5),
            (1e-5, 3e-5),
        ] {
            let (ticks, step) = nice_ticks(lo, hi);
            assert!((3..=6).contains(&ticks.len()), "{lo}..{hi}: {ticks:?}");
            assert!(ticks.iter().all(|t| *t >= lo - 1e-12 && *t <= hi + 1e-12));
            assert!(step > 0.0);
        }
        assert_eq!(nice_ticks(0.0, 1.0).0, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn tick_labels_use_the_decimals_the_step_needs() {
        assert_eq!(format_tick(0.25, 0.25), "0.25");
        assert_eq!(format_tick(0.5, 0.25), "0.50");
        assert_eq!(format_tick(-0.0, 0.5), "0.0");
        assert_eq!(format_tick(200.0, 100.0), "200");
        assert_eq!(format_value(0.123_45), "0.12");
        assert_eq!(format_value(f64::NAN), "nan");
    }
}

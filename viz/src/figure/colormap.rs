//! Colour maps, value ranges and the colour bar every colour-mapped figure carries.

use plotters::coord::Shift;
use plotters::prelude::{DrawingArea, DrawingBackend};
use plotters::style::text_anchor::{HPos, VPos};

use super::draw::{self, Anchor, SMALL_SIZE, TICK_SIZE};
use super::theme::{DARK_GREY, INK};
use super::{FigureError, PixelRect};

/// The colour of a missing (NaN) value: a neutral grey that neither colour map uses.
pub const NAN_GREY: (u8, u8, u8) = (150, 150, 150);

/// Viridis sampled at 17 evenly spaced points (dark purple → blue → green → yellow).
const VIRIDIS: [(u8, u8, u8); 17] = [
    (68, 1, 84),
    (72, 26, 108),
    (71, 47, 125),
    (65, 68, 135),
    (59, 82, 139),
    (53, 95, 141),
    (44, 114, 142),
    (39, 127, 142),
    (33, 145, 140),
    (31, 160, 136),
    (40, 174, 128),
    (63, 188, 115),
    (94, 201, 98),
    (132, 212, 75),
    (173, 220, 48),
    (216, 226, 25),
    (253, 231, 37),
];

/// Blue → white → red (ColorBrewer RdBu, reversed), 11 stops.
const DIVERGING: [(u8, u8, u8); 11] = [
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
];

/// How values become colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Colormap {
    /// Sequential, perceptually ordered: dark purple (low) to yellow (high).
    #[default]
    Viridis,
    /// Blue (negative), white (zero), red (positive); its range is always symmetric about 0.
    Diverging,
}

impl Colormap {
    /// The colour at `t ∈ [0, 1]` (clamped; NaN gives [`NAN_GREY`]).
    pub fn rgb(self, t: f32) -> (u8, u8, u8) {
        if t.is_nan() {
            return NAN_GREY;
        }
        let stops: &[(u8, u8, u8)] = match self {
            Colormap::Viridis => &VIRIDIS,
            Colormap::Diverging => &DIVERGING,
        };
        let pos = t.clamp(0.0, 1.0) * (stops.len() - 1) as f32;
        let i = (pos.floor() as usize).min(stops.len() - 2);
        let f = pos - i as f32;
        let (a, b) = (stops[i], stops[i + 1]);
        let lerp = |x: u8, y: u8| (f32::from(x) + (f32::from(y) - f32::from(x)) * f).round() as u8;
        (lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
    }

    /// The range the colours span: `explicit` if given, else the finite values' min and max.
    /// [`Colormap::Diverging`] makes it symmetric, `±max|v|`. A range of one value is widened
    /// so that value maps to the middle colour; no finite values give `(0, 1)`.
    pub fn range(self, values: &[f32], explicit: Option<(f32, f32)>) -> (f32, f32) {
        let (lo, hi) = explicit.unwrap_or_else(|| {
            values
                .iter()
                .filter(|v| v.is_finite())
                .fold(None, |acc: Option<(f32, f32)>, &v| {
                    Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
                })
                .unwrap_or((0.0, 1.0))
        });
        let (lo, hi) = match self {
            Colormap::Viridis => (lo, hi),
            Colormap::Diverging => {
                let m = lo.abs().max(hi.abs());
                (-m, m)
            }
        };
        if hi > lo {
            (lo, hi)
        } else {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.5 };
            (lo - pad, hi + pad)
        }
    }

    /// The colour of `value` within `range` (NaN gives [`NAN_GREY`]).
    pub fn map(self, value: f32, (lo, hi): (f32, f32)) -> (u8, u8, u8) {
        if value.is_nan() {
            return NAN_GREY;
        }
        self.rgb((value - lo) / (hi - lo))
    }
}

/// Checks an explicit colour range: finite, `lo < hi`.
pub(crate) fn check_range(field: &str, range: Option<(f32, f32)>) -> Result<(), FigureError> {
    match range {
        Some((lo, hi)) if !(lo.is_finite() && hi.is_finite() && lo < hi) => {
            Err(FigureError::input(
                field,
                "a finite range with lo < hi",
                format!("({lo}, {hi})"),
            ))
        }
        _ => Ok(()),
    }
}

/// What the colour bar's ticks show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BarTicks {
    /// Round values of this range.
    Values((f32, f32)),
    /// Only "min" and "max": each panel has its own range.
    Relative,
}

/// Gap between the data and the colour bar, the bar's width, and its tick length.
const BAR_GAP: u32 = 16;
const BAR_WIDTH: u32 = 14;
const TICK_LENGTH: u32 = 4;

/// The tick labels and their positions `t ∈ [0, 1]` along the bar.
fn ticks(kind: BarTicks) -> Vec<(f32, String)> {
    match kind {
        BarTicks::Relative => vec![(0.0, "min".into()), (1.0, "max".into())],
        BarTicks::Values((lo, hi)) => {
            let (values, step) = draw::nice_ticks(f64::from(lo), f64::from(hi));
            values
                .into_iter()
                .map(|v| {
                    let t = (v - f64::from(lo)) / f64::from(hi - lo);
                    (t as f32, draw::format_tick(v, step))
                })
                .collect()
        }
    }
}

/// Width to reserve right of the data for a colour bar with these ticks and label.
pub(crate) fn colourbar_width(kind: BarTicks, label: &str) -> u32 {
    let labels = ticks(kind)
        .iter()
        .map(|(_, s)| draw::text_width(s, TICK_SIZE))
        .max()
        .unwrap_or(0);
    let label_band = if label.is_empty() {
        0
    } else {
        draw::text_height(SMALL_SIZE) + 8
    };
    BAR_GAP + BAR_WIDTH + TICK_LENGTH + 4 + labels + label_band
}

/// Draws a vertical colour bar beside the data area `beside` (low values at the bottom).
pub(crate) fn draw_colourbar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    beside: PixelRect,
    colormap: Colormap,
    kind: BarTicks,
    label: &str,
) -> Result<(), FigureError> {
    let bar = PixelRect {
        x: beside.x + beside.width + BAR_GAP,
        y: beside.y,
        width: BAR_WIDTH,
        height: beside.height,
    };
    let bands = bar.height.clamp(1, 128) as usize;
    for i in 0..bands {
        let cell = bar.cell(i, 0, bands, 1);
        let t = 1.0 - (i as f32 + 0.5) / bands as f32;
        draw::fill(root, cell, colormap.rgb(t))?;
    }
    draw::frame(root, bar, DARK_GREY)?;

    let right = (bar.x + bar.width) as i32;
    let mut widest = 0;
    for (t, text) in ticks(kind) {
        let y = (bar.y + bar.height) as i32 - (t * bar.height as f32).round() as i32;
        let y = y.clamp(bar.y as i32, (bar.y + bar.height) as i32 - 1);
        draw::fill(
            root,
            PixelRect {
                x: right as u32,
                y: y as u32,
                width: TICK_LENGTH,
                height: 1,
            },
            DARK_GREY,
        )?;
        draw::text(
            root,
            &text,
            (right + TICK_LENGTH as i32 + 3, y),
            TICK_SIZE,
            Anchor::new(HPos::Left, VPos::Center),
            INK,
        )?;
        widest = widest.max(draw::text_width(&text, TICK_SIZE));
    }
    if !label.is_empty() {
        let x = right + TICK_LENGTH as i32 + 4 + widest as i32 + 4;
        let shown = draw::fit(label, SMALL_SIZE, bar.height);
        draw::text(
            root,
            &shown,
            (x, (bar.y + bar.height / 2) as i32),
            SMALL_SIZE,
            Anchor::vertical(HPos::Center, VPos::Top),
            INK,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luminance((r, g, b): (u8, u8, u8)) -> f32 {
        0.2126 * f32::from(r) + 0.7152 * f32::from(g) + 0.0722 * f32::from(b)
    }

    #[test]
    fn viridis_runs_dark_purple_to_yellow_with_rising_luminance() {
        assert_eq!(Colormap::Viridis.rgb(0.0), (68, 1, 84));
        assert_eq!(Colormap::Viridis.rgb(1.0), (253, 231, 37));
        assert_eq!(Colormap::Viridis.rgb(2.0), Colormap::Viridis.rgb(1.0));
        let mut last = -1.0;
        for i in 0..=100 {
            let l = luminance(Colormap::Viridis.rgb(i as f32 / 100.0));
            assert!(l > last, "luminance falls at {i}");
            last = l;
        }
    }

    #[test]
    fn diverging_is_white_at_zero_and_symmetric() {
        let cmap = Colormap::Diverging;
        assert_eq!(cmap.range(&[-0.2, 0.5], None), (-0.5, 0.5));
        assert_eq!(cmap.map(0.0, (-0.5, 0.5)), (247, 247, 247));
        let (r, _, b) = cmap.map(0.5, (-0.5, 0.5));
        assert!(r > b);
        let (r, _, b) = cmap.map(-0.5, (-0.5, 0.5));
        assert!(b > r);
    }

    #[test]
    fn ranges_skip_nan_and_widen_constants() {
        let cmap = Colormap::Viridis;
        assert_eq!(cmap.range(&[f32::NAN, 1.0, 3.0], None), (1.0, 3.0));
        assert_eq!(cmap.range(&[2.0, 2.0], None), (1.0, 3.0));
        assert_eq!(cmap.range(&[f32::NAN], None), (0.0, 1.0));
        assert_eq!(cmap.map(f32::NAN, (0.0, 1.0)), NAN_GREY);
    }
}

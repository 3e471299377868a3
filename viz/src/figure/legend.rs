//! Legends placed where they hide the least data.

use plotters::chart::{ChartContext, SeriesLabelPosition};
use plotters::prelude::{CoordTranslate, DrawingBackend};
use plotters::style::{Color, WHITE};

use super::FigureError;
use super::chart::plot_rect;
use super::draw::{self, SMALL_SIZE};
use super::theme::DARK_GREY;

/// Pixels covered by data, sampled, so the legend can avoid them.
#[derive(Debug, Default)]
pub(crate) struct Occupied(Vec<(i32, i32)>);

impl Occupied {
    /// Spacing of the samples along lines and across areas, in pixels.
    const STEP: i32 = 4;

    pub(crate) fn point(&mut self, p: (i32, i32)) {
        self.0.push(p);
    }

    pub(crate) fn segment(&mut self, a: (i32, i32), b: (i32, i32)) {
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) / Self::STEP).max(1);
        for i in 0..=n {
            self.0
                .push((a.0 + (b.0 - a.0) * i / n, a.1 + (b.1 - a.1) * i / n));
        }
    }

    pub(crate) fn area(&mut self, a: (i32, i32), b: (i32, i32)) {
        let (x0, x1) = (a.0.min(b.0), a.0.max(b.0));
        let (y0, y1) = (a.1.min(b.1), a.1.max(b.1));
        for x in (x0..=x1).step_by(Self::STEP as usize) {
            for y in (y0..=y1).step_by(Self::STEP as usize) {
                self.0.push((x, y));
            }
        }
    }
}

/// Draws the legend of the labelled series (`names`) in the corner of the plot that covers the
/// fewest `occupied` pixels; upper right on a tie.
pub(crate) fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    names: &[&str],
    occupied: &Occupied,
) -> Result<(), FigureError> {
    const MARGIN: i32 = 8;
    let plot = plot_rect(chart);
    let (x0, y0) = (plot.x as i32, plot.y as i32);
    let (x1, y1) = (x0 + plot.width as i32, y0 + plot.height as i32);
    let widest = names
        .iter()
        .map(|n| draw::text_width(n, SMALL_SIZE))
        .max()
        .unwrap_or(0) as i32;
    let w = widest + 30 + 2 * MARGIN;
    let h = (names.len() as f64 * SMALL_SIZE * 1.25).ceil() as i32 + 2 * MARGIN;
    let covered = |left: i32, top: i32| {
        occupied
            .0
            .iter()
            .filter(|&&(x, y)| {
                x >= left - 4 && x <= left + w + 4 && y >= top - 4 && y <= top + h + 4
            })
            .count()
    };
    let corners = [
        (SeriesLabelPosition::UpperRight, x1 - w - 5, y0 + 5),
        (SeriesLabelPosition::UpperLeft, x0 + 5, y0 + 5),
        (SeriesLabelPosition::LowerRight, x1 - w - 5, y1 - h - 5),
        (SeriesLabelPosition::LowerLeft, x0 + 5, y1 - h - 5),
    ];
    let mut best = (SeriesLabelPosition::UpperRight, usize::MAX);
    for (position, left, top) in corners {
        let n = covered(left, top);
        if n < best.1 {
            best = (position, n);
        }
    }
    chart
        .configure_series_labels()
        .position(best.0)
        .margin(MARGIN)
        .label_font(draw::font(SMALL_SIZE))
        .background_style(WHITE.mix(0.85))
        .border_style(draw::colour(DARK_GREY))
        .draw()
        .map_err(FigureError::draw)
}

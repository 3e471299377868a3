//! Analyses of a trained model, as plain data (no tensors, no figures): embedding geometry, the
//! modality gap and the pointing game so far. Figures and the CLI build on these functions.

pub mod gap;
pub mod geometry;
pub mod pointing;

pub use gap::{GapAnalysis, GapShiftPoint, analyse_gap};
pub use geometry::{GapReport, Histogram, gap_report, shift_along_gap, shift_rows};
pub use pointing::{PointingReport, point, pointing_game};

//! Analyses of a trained model, as plain data (no tensors, no figures): embedding geometry and
//! the modality gap so far. Figures and the CLI build on these functions.

pub mod gap;
pub mod geometry;

pub use gap::{GapAnalysis, GapShiftPoint, analyse_gap};
pub use geometry::{GapReport, Histogram, gap_report, shift_along_gap, shift_rows};

//! Analyses of a trained model, as plain data (no tensors, no figures): attention and rollout,
//! no-op-head diagnostics, patch–text alignment, gradient relevance, the pointing game,
//! embedding geometry and the modality gap, joint PCA, frozen-feature probes and a batch's
//! similarity matrix. The figures (`viz::figure`), the CLI and the notebooks build on these.

pub mod alignment;
pub mod attention;
pub mod batch;
pub mod gap;
pub mod geometry;
pub mod pointing;
pub mod probes;
pub mod projection;
pub mod relevance;

pub use alignment::{Alignment, align};
pub use attention::{
    AttentionStack, AttentionView, HeadDiagnostics, HeadMass, attention, head_diagnostics, rollout,
};
pub use batch::{BatchSimilarity, Direction, FalseNegative, Hit, batch_similarity};
pub use gap::{GapAnalysis, GapShiftPoint, analyse_gap};
pub use geometry::{GapReport, Histogram, gap_report, shift_along_gap, shift_rows};
pub use pointing::{PointingReport, point, pointing_game};
pub use probes::{ProbeReport, ProbeScores, probe_images};
pub use projection::{JointPca, joint_pca};
pub use relevance::{Relevance, relevance};

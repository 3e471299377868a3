//! # Contrastive Workbench — figures, desktop app and command line
//!
//! # Brief overview
//!
//! - `app` (feature `gui`, on by default): the desktop workbench that `workbench` opens when
//!   started without arguments.
//! - [`cli`]: the `workbench` command line (`train`, `eval`, `data`, `bench`), callable in-process via
//!   [`cli::main_with_args`].
//! - [`bench`](mod@bench): the objectives benchmark behind `workbench bench losses`.
//! - [`session`]: a run on a background thread for interactive front ends, with a UI-free history.
//! - [`notebook`]: owned handles for evcxr notebook cells (a finished [`notebook::Run`], a live
//!   [`notebook::Live`] session), curves of runs and HTML tables, all shown inline.
//! - [`report`]: the figures of each analysis (attention, alignment, relevance, gap, batch).
//! - [`figure`]: heat maps, attention overlays, line charts, histograms, bar charts and scatter
//!   plots, rendered to PNG and SVG or shown inline in evcxr notebooks.

#[cfg(feature = "gui")]
pub mod app;
pub mod bench;
pub mod cli;
pub mod figure;
pub mod notebook;
pub mod report;
pub mod session;

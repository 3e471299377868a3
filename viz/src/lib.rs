//! # Contrastive Workbench — figures, desktop app and command line
//!
//! # Brief overview
//!
//! - [`cli`]: the `workbench` command line (`train`, `eval`), callable in-process via
//!   [`cli::main_with_args`].

pub mod cli;

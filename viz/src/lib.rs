//! # Contrastive Workbench — figures, desktop app and command line
//!
//! # Brief overview
//!
//! - [`cli`]: the `workbench` command line (`train`, `eval`, `data`, `bench`), callable in-process via
//!   [`cli::main_with_args`].
//! - [`bench`](mod@bench): the objectives benchmark behind `workbench bench losses`.

pub mod bench;
pub mod cli;

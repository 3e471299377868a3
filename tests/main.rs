//! Integration tests of Contrastive Workbench — one binary.
// Scenario tests (a 200-step run with swaps and a resume) read best as one function each.
#![allow(
    clippy::unwrap_used,
    clippy::float_cmp,
    clippy::too_many_lines,
    missing_docs
)]

// Shared helpers: small configurations, temporary directories, tensor comparison.
mod util;

// The synthetic dataset, the tokenizer and the loader.
mod data;
// Every fused kernel equals its reference, forward and backward.
mod kernels;
// The two towers: attention weights, pooling, fused vs reference.
mod model;
// Objectives against hand-checked values, gradient checks, invariances.
mod losses;
// Training: overfitting, determinism, checkpoints, resume, non-finite values.
mod training;
// Live control: objective swaps, edits, probe, resume after a swap.
mod swap;
// Analyses: the modality gap and the gap-shift sweep.
mod analysis;
// Inspection: attention, alignment, relevance, head diagnostics, probes, batch similarity.
mod inspect;
// The interactive session behind the desktop app: requests, history, fork.
mod session;
// The command line: a real run, and every bad-input case.
mod cli;
// Figures: PNG and SVG output, cell colours, overlay blending, bad input, saving.
mod figures;
// Notebook helpers: evcxr output blocks, finished runs, a live session driven from cells.
mod notebook;
// The desktop app, driven by widget labels: play, pause, step, swap, word maps, fork.
mod gui;

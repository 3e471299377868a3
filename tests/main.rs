//! Integration tests of Contrastive Workbench — one binary.
#![allow(clippy::unwrap_used, clippy::float_cmp, missing_docs)]

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
// The command line: a real run, and every bad-input case.
mod cli;

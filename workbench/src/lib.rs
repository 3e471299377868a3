//! # Contrastive Workbench — core library
//!
//! Train small CLIP-like image–text models and look inside them.
//!
//! # Brief overview
//!
//! - [`data`]: the [`PairDataset`](data::PairDataset) trait, the embedded synthetic set
//!   [`Shapes`](data::Shapes), the [`Tokenizer`](data::Tokenizer) and the seeded
//!   [`Loader`](data::Loader).
//! - [`model`]: [`ClipModel`](model::ClipModel) — a ViT and a causal text Transformer with
//!   projection heads; attention weights and per-token embeddings on request.
//! - [`loss`]: the [`Objective`](loss::Objective) trait and built-in objectives.
//! - [`train`]: the [`Trainer`](train::Trainer) — `step()` and `fit(on_event)`.
//! - [`events`]: plain-data [`Event`](events::Event)s that the CLI, GUI and notebooks consume.
//! - [`eval`] and [`metrics`]: retrieval, zero-shot accuracy, modality gap.
//! - [`params`], [`optim`], [`checkpoint`], [`config`], [`rng`]: the machinery.
//!
//! # Example
//!
//! ```no_run
//! use workbench::{config::RunConfig, data::Split, train::Trainer};
//! let mut cfg = RunConfig::preset("tiny")?;
//! cfg.train.steps = 200;
//! let mut trainer = Trainer::new(cfg)?;
//! for _ in 0..200 {
//!     let stats = trainer.step()?;
//!     if stats.step % 50 == 0 {
//!         println!("step {} loss {:.3}", stats.step, stats.loss);
//!     }
//! }
//! let report = trainer.evaluate(Split::Val)?;
//! println!("image→text R@1 {:.2}", report.image_to_text.r1);
//! # Ok::<(), workbench::Error>(())
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::float_cmp))]

pub mod analysis;
pub mod checkpoint;
pub mod config;
pub mod control;
pub mod data;
pub mod devices;
mod error;
pub mod eval;
pub mod events;
pub mod export;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod pretrained;
pub mod rng;
pub mod train;

pub use error::{Error, Result};

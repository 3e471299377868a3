//! Figures of the analyses: each function turns one result of [`workbench::analysis`] into a
//! [`Figure`] (PNG + SVG, inline in a notebook through [`Figure::evcxr_display`]). The CLI's
//! `inspect`, `gap` and `eval --out` write them; the notebooks and the desktop app show them.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use workbench::data::Split;
//! use workbench::train::Trainer;
//! let trainer = Trainer::new(workbench::config::RunConfig::preset("tiny")?)?;
//! let sample = trainer.sample(Split::Val, 0)?;
//! let view = trainer.attention(&sample.image, &sample.captions[0].text)?;
//! let figure = viz::report::attention_grid(&view, &sample.image, trainer.model().config().vision.pool)?;
//! figure.save(std::path::Path::new("figures"), "attention")?;
//! # Ok(()) }
//! ```

mod gap;
mod inspect;

pub use gap::{cosine_histograms, gap_sweep, joint_pca, spectra};
pub use inspect::{
    activation_bars, alignment_matrix, attention_grid, batch_loss_bars, batch_similarity_heatmap,
    head_mass_bars, pointing_bars, relevance_maps, text_attention, text_attention_grid,
    text_relevance_bars, word_maps,
};

use crate::figure::{Figure, FigureError, RgbImage};

/// The figure library's view of a dataset image.
pub fn rgb(image: &workbench::data::RgbImage) -> RgbImage {
    RgbImage {
        width: image.width as u32,
        height: image.height as u32,
        pixels: image.data.clone(),
    }
}

/// Saves `figures` under `dir` as `<stem>.png` / `<stem>.svg`; returns the PNG paths.
pub fn save_all(
    dir: &std::path::Path,
    figures: &[(String, Figure)],
) -> Result<Vec<std::path::PathBuf>, FigureError> {
    figures
        .iter()
        .map(|(stem, f)| f.save(dir, stem).map(|[png, _]| png))
        .collect()
}

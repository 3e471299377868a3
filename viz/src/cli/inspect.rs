//! `workbench inspect`, and the figure-writing parts of `gap` and `eval`.

use super::{EvalArgs, GapArgs, say};
use anyhow::{Context as _, Result, bail};
use candle_core::Device;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use workbench::analysis::GapAnalysis;
use workbench::config::parse_device;
use workbench::data::{Pairs, RgbImage, Split};
use workbench::train::Trainer;

use crate::figure::Figure;
use crate::report;

/// `workbench inspect`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["run", "model"])))]
pub struct InspectArgs {
    /// A run directory or its `checkpoint/`.
    #[arg(long, alias = "checkpoint")]
    pub run: Option<PathBuf>,
    /// A pretrained Hugging Face CLIP or SigLIP directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`; e.g. from `huggingface-cli download openai/clip-vit-base-patch32
    /// --local-dir DIR`). Needs `--image` and `--text`.
    #[arg(long, requires_all = ["image", "text"])]
    pub model: Option<PathBuf>,
    /// An image file (PNG, JPEG or WebP), centre-cropped and resized to the model's input.
    #[arg(long, conflicts_with = "sample")]
    pub image: Option<PathBuf>,
    /// A sample of `--split` (default: sample 0).
    #[arg(long)]
    pub sample: Option<usize>,
    /// Split the sample comes from.
    #[arg(long, default_value = "val", value_parser = ["val", "test", "train"])]
    pub split: String,
    /// Any text (default: the sample's first caption; required with `--image`).
    #[arg(long)]
    pub text: Option<String>,
    /// Directory for the figures (PNG + SVG) and `inspect.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Image–caption pairs averaged for the head diagnostics.
    #[arg(long, default_value_t = 64)]
    pub heads_over: usize,
    /// cpu, cuda or cuda:N (default: as trained).
    #[arg(long)]
    pub device: Option<String>,
}

fn split_of(name: &str) -> Split {
    match name {
        "test" => Split::Test,
        "train" => Split::Train,
        _ => Split::Val,
    }
}

/// Reads an image file and fits it to `size × size`: centre crop to a square, then a
/// triangle-filter resize.
pub fn load_image(path: &Path, size: usize) -> Result<RgbImage> {
    let img =
        image::open(path).with_context(|| format!("cannot read the image {}", path.display()))?;
    let side = u32::try_from(size)?;
    let fitted = img
        .resize_to_fill(side, side, image::imageops::FilterType::Triangle)
        .to_rgb8();
    Ok(RgbImage {
        width: size,
        height: size,
        data: fitted.into_raw(),
    })
}

/// Writes every `(stem, figure)` under `dir` and prints the PNG paths.
fn write_figures(dir: &Path, figures: &[(String, Figure)]) -> Result<()> {
    let paths = report::save_all(dir, figures)
        .with_context(|| format!("cannot write figures to {}", dir.display()))?;
    for p in paths {
        say(&format!("wrote {} (+ .svg)", p.display()))?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    say(&format!("wrote {}", path.display()))
}

/// The image, the text and a description of where the image came from.
fn resolve_input(
    trainer: &Trainer,
    a: &InspectArgs,
    split: Split,
) -> Result<(RgbImage, String, String)> {
    if let Some(path) = &a.image {
        let Some(text) = &a.text else {
            bail!("--image needs --text: the words to look for in it");
        };
        let image = load_image(path, trainer.dataset().image_size())?;
        return Ok((image, text.clone(), path.display().to_string()));
    }
    let index = a.sample.unwrap_or(0);
    let s = trainer.sample(split, index)?;
    let text = match &a.text {
        Some(t) => t.clone(),
        None => s
            .captions
            .first()
            .map(|c| c.text.clone())
            .with_context(|| format!("{split} sample {index} has no caption"))?,
    };
    Ok((s.image, text, format!("{split} sample {index}")))
}

/// Every number `inspect` computed, as written to `inspect.json`.
#[derive(serde::Serialize)]
struct Numbers<'a> {
    source: &'a str,
    attention: &'a workbench::analysis::AttentionView,
    alignment: &'a workbench::analysis::Alignment,
    relevance: &'a workbench::analysis::Relevance,
    heads: &'a workbench::analysis::HeadDiagnostics,
}

/// A trainer on the pretrained model in `dir` whose only data is `--image` with `--text`.
fn pretrained_trainer(dir: &Path, a: &InspectArgs, device: Option<Device>) -> Result<Trainer> {
    let device = device.unwrap_or(Device::Cpu);
    let pre = workbench::pretrained::load(dir, &device)
        .with_context(|| format!("cannot load the pretrained model {}", dir.display()))?;
    let (Some(path), Some(text)) = (&a.image, &a.text) else {
        bail!("--model needs --image and --text");
    };
    let stats = &pre.preprocess.stats;
    say(&format!(
        "{:?} model from {}: {} px input, mean {:?} std {:?} ({})",
        pre.config.family,
        dir.display(),
        pre.preprocess.image_size,
        stats.mean,
        stats.std,
        if pre.preprocess.from_file {
            "from preprocessor_config.json"
        } else {
            "the family's defaults"
        }
    ))?;
    let image = load_image(path, pre.preprocess.image_size)?;
    let pairs = Pairs::new("input", vec![(image, vec![text.clone()])])?;
    let cfg = pre.run_config();
    Ok(Trainer::from_pretrained(
        &pre,
        cfg,
        Arc::new(pairs),
        device,
    )?)
}

/// Runs `workbench inspect`.
pub fn inspect(a: &InspectArgs) -> Result<()> {
    let device = a.device.as_deref().map(parse_device).transpose()?;
    let trainer = match (&a.run, &a.model) {
        (_, Some(dir)) => pretrained_trainer(dir, a, device)?,
        (Some(run), None) => Trainer::resume(run, device)?,
        (None, None) => bail!("give --run (a run directory) or --model (a pretrained model)"),
    };
    let split = split_of(&a.split);
    let (image, text, source) = resolve_input(&trainer, a, split)?;
    if text.trim().is_empty() {
        bail!("--text is empty");
    }
    say(&format!("inspecting {source} with {text:?}"))?;
    let pool = trainer.model().config().vision.pool;
    let view = trainer.attention(&image, &text)?;
    let alignment = trainer.align(&image, &text)?;
    let relevance = trainer.relevance(&image, &text)?;
    let heads = trainer.head_diagnostics(split, a.heads_over.max(1))?;
    let (max_abs, kurtosis) = report::activation_bars(&heads)?;
    let last = view.text_attention.layers.saturating_sub(1);
    let figures = vec![
        (
            "attention_image".to_string(),
            report::attention_grid(&view, &image, pool)?,
        ),
        (
            "attention_text_heads".into(),
            report::text_attention_grid(&view)?,
        ),
        (
            format!("attention_text_layer{last}"),
            report::text_attention(&view, Some(last))?,
        ),
        (
            "attention_text_rollout".into(),
            report::text_attention(&view, None)?,
        ),
        ("heads_image".into(), report::head_mass_bars(&heads, true)?),
        ("heads_text".into(), report::head_mass_bars(&heads, false)?),
        ("activations_max".into(), max_abs),
        ("activations_kurtosis".into(), kurtosis),
        (
            "alignment_matrix".into(),
            report::alignment_matrix(&alignment)?,
        ),
        (
            "alignment_words".into(),
            report::word_maps(&alignment, &image)?,
        ),
        (
            "relevance_image".into(),
            report::relevance_maps(&relevance, &image)?,
        ),
        (
            "relevance_text".into(),
            report::text_relevance_bars(&relevance)?,
        ),
    ];
    say(&format!(
        "score {:.3} · {} tokens · {}×{} patches · head diagnostics over {} pairs",
        alignment.score,
        alignment.tokens.len(),
        alignment.grid,
        alignment.grid,
        heads.pairs
    ))?;
    write_figures(&a.out, &figures)?;
    write_json(
        &a.out.join("inspect.json"),
        &Numbers {
            source: &source,
            attention: &view,
            alignment: &alignment,
            relevance: &relevance,
            heads: &heads,
        },
    )
}

/// Writes the gap figures and `gap.json` under `dir`.
pub fn gap_figures(g: &GapAnalysis, dir: &Path) -> Result<()> {
    let figures = vec![
        (
            "gap_cosines".to_string(),
            report::cosine_histograms(&g.report)?,
        ),
        ("gap_spectra".into(), report::spectra(&g.report)?),
        ("gap_sweep".into(), report::gap_sweep(g)?),
        ("gap_pca".into(), report::joint_pca(&g.pca, 300)?),
    ];
    write_figures(dir, &figures)?;
    write_json(&dir.join("gap.json"), g)
}

/// Probes, batch similarity (and its figures under `--out`) for `workbench eval`.
pub fn eval_extras(trainer: &mut Trainer, a: &EvalArgs, split: Split) -> Result<()> {
    if !(2..=4096).contains(&a.batch) {
        bail!("--batch must be in 2..=4096, got {}", a.batch);
    }
    if let Some(p) = trainer.probes()? {
        say(&format!(
            "probes on {} labelled images ({} train / {} test, {} classes, k = {}):",
            p.train + p.test,
            p.train,
            p.test,
            p.classes,
            p.k
        ))?;
        for (name, s) in [
            ("before projection", p.pre_projection),
            ("after projection", p.post_projection),
        ] {
            say(&format!(
                "  {name:<18} ({:>3} dims): kNN {:.3} · linear {:.3}",
                s.dim, s.knn, s.linear
            ))?;
        }
    }
    let b = trainer.batch_similarity(split, a.batch)?;
    let mean = b.loss.iter().sum::<f32>() / b.n as f32;
    say(&format!(
        "batch of the first {} {split} pairs: mean pair loss {mean:.4} (τ = {:.4}); likeliest false negatives:",
        b.n, b.temperature
    ))?;
    for f in b.false_negatives.iter().take(5) {
        say(&format!(
            "  image {:>3} ~ caption {:>3}: cosine {:.3} (margin {:+.3}{}) {:?}",
            f.image,
            f.caption,
            f.similarity,
            f.margin,
            if f.same_text { ", same text" } else { "" },
            b.captions[f.caption]
        ))?;
    }
    if let Some(dir) = &a.out {
        let figures = vec![
            (
                "batch_similarity".to_string(),
                report::batch_similarity_heatmap(&b)?,
            ),
            ("batch_loss".into(), report::batch_loss_bars(&b)?),
        ];
        write_figures(dir, &figures)?;
        write_json(&dir.join("batch.json"), &b)?;
    }
    Ok(())
}

/// `point --out`: the pointing figure and `pointing.json`.
pub fn pointing_out(r: &workbench::analysis::PointingReport, dir: &Path) -> Result<()> {
    write_figures(dir, &[("pointing".to_string(), report::pointing_bars(r)?)])?;
    write_json(&dir.join("pointing.json"), r)
}

/// `gap --out`: validated here so the message names the flag.
pub fn gap_out(a: &GapArgs, g: &GapAnalysis) -> Result<()> {
    if let Some(dir) = &a.out {
        gap_figures(g, dir)?;
    }
    Ok(())
}

//! Events: what the trainer reports, as plain serialisable data (no tensors).
//!
//! The CLI writes them to `metrics.jsonl`, one JSON object per line; the GUI and notebooks consume
//! the same events. Every event carries an `"event"` tag naming its kind.

use crate::config::RunConfig;
use crate::data::Split;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

/// Statistics of one optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Steps completed (1 after the first update).
    pub step: usize,
    /// The objective's value before the update.
    pub loss: f32,
    /// The objective's named terms.
    pub terms: BTreeMap<String, f32>,
    /// Values of the objective's parameters after the update (e.g. `logit_scale`).
    pub scalars: BTreeMap<String, f32>,
    /// Learning rate used for the update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Pairs in the batch.
    pub batch_size: usize,
    /// The objective that made this step.
    pub objective: String,
    /// Wall time of the step (data, forward, backward, update), seconds.
    pub seconds: f64,
    /// Of `seconds`, the time the step waited for its batch: the whole loading time without
    /// prefetching, only what the background thread had not finished ahead with it. The device
    /// idles for this long (0 in metrics written before it was recorded).
    #[serde(default)]
    pub data_seconds: f64,
    /// The device's memory after the step, as its driver reports it (every process on the
    /// device); absent on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<crate::devices::DeviceMemory>,
}

/// Retrieval quality in one direction (open_clip definitions): `R@k = mean(rank < k)`,
/// ranks 0-based; `mean_rank = mean(rank) + 1`; `median_rank = floor(median(rank)) + 1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Recall at 1.
    pub r1: f32,
    /// Recall at 5.
    pub r5: f32,
    /// Recall at 10.
    pub r10: f32,
    /// Mean rank, 1-based.
    pub mean_rank: f32,
    /// Median rank, 1-based.
    pub median_rank: f32,
}

/// Zero-shot classification result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZeroShot {
    /// Top-1 accuracy over all labelled images.
    pub accuracy: f32,
    /// Top-1 accuracy on classes held out from training (compositional hold-out), if any.
    pub held_out_accuracy: Option<f32>,
    /// Number of images.
    pub images: usize,
    /// Number of classes.
    pub classes: usize,
}

/// Evaluation on a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Steps completed when evaluated.
    pub step: usize,
    /// Split evaluated.
    pub split: Split,
    /// Images in the gallery.
    pub images: usize,
    /// Captions in the gallery.
    pub captions: usize,
    /// Image → text retrieval.
    pub image_to_text: Recall,
    /// Text → image retrieval.
    pub text_to_image: Recall,
    /// Zero-shot classification, when the dataset has classes.
    pub zero_shot: Option<ZeroShot>,
    /// ‖mean(image) − mean(text)‖ over L2-normalised embeddings of matched pairs (Liang et al., 2022).
    pub modality_gap: f32,
    /// Mean loss of the objective over the split's pairs (first caption per image); `None` when
    /// the objective needs more than global embeddings (tokens, groups, negatives, second views).
    pub loss: Option<f32>,
    /// Wall time of the evaluation, seconds.
    pub seconds: f64,
}

/// Objective-independent metrics on the fixed probe batch (the same validation pairs every
/// time), so that curves stay comparable when the objective changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Steps completed.
    pub step: usize,
    /// The objective active at this step.
    pub objective: String,
    /// Pairs in the probe batch.
    pub pairs: usize,
    /// Symmetric InfoNCE at the fixed temperature [`PROBE_TEMPERATURE`].
    pub info_nce: f32,
    /// Image→text R@1 (a caption with the ground-truth text counts as correct).
    pub image_to_text_r1: f32,
    /// Text→image R@1 (an image whose caption has the query's text counts as correct).
    pub text_to_image_r1: f32,
    /// Mean cosine of matched pairs.
    pub positive_cosine: f32,
    /// Mean cosine of unmatched pairs (different caption texts).
    pub negative_cosine: f32,
    /// ‖mean(image) − mean(text)‖ of the normalised embeddings.
    pub modality_gap: f32,
}

/// The fixed temperature of [`ProbeReport::info_nce`].
pub const PROBE_TEMPERATURE: f32 = 0.07;

/// Everything the trainer reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Training (re)starts.
    RunStarted {
        /// The full configuration.
        config: Box<RunConfig>,
        /// Step the run starts from (non-zero after a resume).
        step: usize,
        /// Number of trainable scalars in the model.
        model_parameters: usize,
        /// Active objective.
        objective: String,
        /// The device: `cpu`, or `cuda:N (name)` ([`crate::devices::describe`]).
        device: String,
    },
    /// One optimizer step finished.
    Step(StepStats),
    /// An evaluation finished.
    Eval(EvalReport),
    /// A checkpoint was written.
    Checkpoint {
        /// Step it holds.
        step: usize,
        /// Its directory.
        path: PathBuf,
    },
    /// Training stopped before the planned step count, keeping its last good state.
    Paused {
        /// Last completed step.
        step: usize,
        /// Why.
        reason: String,
    },
    /// The objective was switched between two steps.
    ObjectiveSwapped {
        /// Steps completed when it happened (the next step uses `to`).
        step: usize,
        /// The outgoing objective.
        from: String,
        /// The incoming objective.
        to: String,
        /// The incoming objective's full settings (`None` for a user-defined objective).
        config: Option<crate::loss::LossConfig>,
        /// The incoming objective's learnable parameters after the swap (scalars as values,
        /// larger tensors as their mean).
        params: BTreeMap<String, f32>,
        /// Of those, the ones restored from an earlier time on that objective.
        restored: Vec<String>,
    },
    /// A live edit was applied between two steps (weight, parameter value, freeze, clamp).
    Edited {
        /// Steps completed when it happened.
        step: usize,
        /// The edit.
        command: crate::control::Command,
        /// Values of the affected parameters after the edit.
        params: BTreeMap<String, f32>,
    },
    /// A command could not be applied; the run goes on unchanged.
    CommandRejected {
        /// Steps completed when it arrived.
        step: usize,
        /// The command.
        command: crate::control::Command,
        /// Why.
        reason: String,
    },
    /// Metrics on the fixed probe batch.
    Probe(ProbeReport),
    /// The planned steps are done.
    RunFinished {
        /// Steps completed.
        step: usize,
        /// Training wall time (evaluations excluded), seconds.
        train_seconds: f64,
        /// Pairs per second over the training steps.
        pairs_per_second: f64,
        /// Bad samples skipped (datasets from files): the count and the first few messages,
        /// each naming the file and the problem. Counted when an image is read, so an image in
        /// a batch the prefetch thread built ahead counts even if the run stopped before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bad_samples: Option<crate::data::BadSampleReport>,
    },
}

/// Appends events to a JSONL file.
pub struct JsonlWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl JsonlWriter {
    /// Opens `path` for appending (creating it).
    pub fn append(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
        })
    }

    /// Writes one event as a line and flushes it.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        let line = serde_json::to_string(event)
            .map_err(|e| Error::Data(format!("cannot serialise event: {e}")))?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads every event of a JSONL file; a bad line is an error naming its number.
pub fn read_jsonl(path: &Path) -> Result<Vec<Event>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            msg: format!("line {}: not an event: {e}", i + 1),
        })?);
    }
    Ok(out)
}

//! A step's pass through the model: the whole batch at once, or in micro-batches
//! (`train.micro_batches`) that keep the activations of one micro-batch at a time while the loss
//! still contrasts the whole batch.
//!
//! In micro-batches (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under
//! Memory Limited Setup", arXiv:2101.06983 — GradCache; OpenCLIP's `--accum-freq`):
//!
//! 1. each micro-batch is encoded and only its embeddings are kept (detached, so its
//!    activations are freed at once);
//! 2. the embeddings of all micro-batches, as leaves of a new graph, go to the objective, and
//!    the loss's backward pass gives the gradient with respect to each embedding (and the
//!    objective's own parameters);
//! 3. each micro-batch is encoded again, with its activations, and the backward pass of
//!    `Σ embedding · its gradient` carries that gradient into the model; the model's gradients
//!    of the micro-batches add up to those of the whole batch.
//!
//! The model has no dropout or other randomness in training, so step 3 recomputes exactly the
//! embeddings of step 1.

use super::Trainer;
use crate::data::Batch;
use crate::loss::Needs;
use crate::model::Capture;
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::ops::Range;

/// What the objective reads of some rows of a batch, computed by the model.
pub(super) struct Encoded {
    pub image: Tensor,
    pub text: Tensor,
    pub image_tokens: Option<Tensor>,
    pub text_tokens: Option<Tensor>,
    /// Hard-negative captions, `K` rows per batch row.
    pub extra_text: Option<Tensor>,
    /// Second image view and second caption.
    pub second: Option<(Tensor, Tensor)>,
}

impl Encoded {
    /// Every tensor, in one fixed order (absent ones skipped).
    fn parts(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.image, &self.text];
        v.extend(self.image_tokens.iter());
        v.extend(self.text_tokens.iter());
        v.extend(self.extra_text.iter());
        if let Some((a, b)) = &self.second {
            v.extend([a, b]);
        }
        v
    }

    /// The same fields, each made by `f` from its tensors in every element of `all`.
    fn zip_with(all: &[Self], f: impl Fn(&[&Tensor]) -> Result<Tensor>) -> Result<Self> {
        let Some(first) = all.first() else {
            return Err(Error::Data("no micro-batch to encode".into()));
        };
        let field = |get: &dyn Fn(&Self) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            if get(first).is_none() {
                return Ok(None);
            }
            let ts: Vec<&Tensor> = all.iter().filter_map(get).collect();
            f(&ts).map(Some)
        };
        let required = |get: &dyn Fn(&Self) -> Option<&Tensor>| -> Result<Tensor> {
            field(get)?.ok_or_else(|| Error::Data("a micro-batch lacks an embedding".into()))
        };
        Ok(Self {
            image: required(&|e| Some(&e.image))?,
            text: required(&|e| Some(&e.text))?,
            image_tokens: field(&|e| e.image_tokens.as_ref())?,
            text_tokens: field(&|e| e.text_tokens.as_ref())?,
            extra_text: field(&|e| e.extra_text.as_ref())?,
            second: match (
                field(&|e| e.second.as_ref().map(|s| &s.0))?,
                field(&|e| e.second.as_ref().map(|s| &s.1))?,
            ) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            },
        })
    }
}

/// The whole batch's embeddings for the objective, and in micro-batches the leaves they are
/// (in [`Encoded::parts`] order), whose gradients [`Trainer::backward_micro_batches`] needs.
pub(super) struct BatchEncoding {
    pub encoded: Encoded,
    leaves: Option<Vec<Var>>,
}

impl Trainer {
    /// Encodes rows `rows` of `batch` for an objective with `needs`.
    fn encode_rows(&self, batch: &Batch, rows: Range<usize>, needs: Needs) -> Result<Encoded> {
        let (start, len) = (rows.start, rows.len());
        let cut = |t: &Tensor, per_row: usize| t.narrow(0, start * per_row, len * per_row);
        let capture = Capture {
            attention: false,
            tokens: needs.tokens,
        };
        let image = self.model.encode_image(&cut(&batch.images, 1)?, capture)?;
        let text =
            self.model
                .encode_text(&cut(&batch.tokens, 1)?, &cut(&batch.eos, 1)?, capture)?;
        let name = self.objective.name();
        let extra_text = if needs.hard_negatives > 0 {
            let n = batch.negatives.as_ref().ok_or_else(|| {
                Error::Data(format!(
                    "objective `{name}` needs hard-negative captions; the batch has none"
                ))
            })?;
            let k = n.tokens.dim(0)? / batch.len().max(1);
            let t = self
                .model
                .encode_text(&cut(&n.tokens, k)?, &cut(&n.eos, k)?, Capture::NONE)?;
            Some(t.embedding)
        } else {
            None
        };
        let second = if needs.second_views {
            let v = batch.second.as_ref().ok_or_else(|| {
                Error::Data(format!(
                    "objective `{name}` needs second views; the batch has none"
                ))
            })?;
            let image = self
                .model
                .encode_image(&cut(&v.images, 1)?, Capture::NONE)?;
            let text = self.model.encode_text(
                &cut(&v.texts.tokens, 1)?,
                &cut(&v.texts.eos, 1)?,
                Capture::NONE,
            )?;
            Some((image.embedding, text.embedding))
        } else {
            None
        };
        Ok(Encoded {
            image: image.embedding,
            text: text.embedding,
            image_tokens: image.tokens,
            text_tokens: text.tokens,
            extra_text,
            second,
        })
    }

    /// The embeddings of the whole batch: in one pass, or with `train.micro_batches` > 1 one
    /// micro-batch at a time, keeping no activations (step 1 of the module's description).
    pub(super) fn encode_batch(&self, batch: &Batch, needs: Needs) -> Result<BatchEncoding> {
        let rows = batch.len();
        let micro = self.cfg.train.micro_batches.max(1);
        if micro == 1 {
            return Ok(BatchEncoding {
                encoded: self.encode_rows(batch, 0..rows, needs)?,
                leaves: None,
            });
        }
        if !rows.is_multiple_of(micro) {
            return Err(Error::config(
                "train.micro_batches",
                format!("a batch of {rows} pairs does not split into {micro} micro-batches"),
            ));
        }
        let len = rows / micro;
        let parts = (0..micro)
            .map(|c| {
                let e = self.encode_rows(batch, c * len..(c + 1) * len, needs)?;
                Encoded::zip_with(&[e], |t| Ok(t[0].detach()))
            })
            .collect::<Result<Vec<_>>>()?;
        let whole = Encoded::zip_with(&parts, |ts| Ok(Tensor::cat(ts, 0)?))?;
        drop(parts);
        let leaves = whole
            .parts()
            .into_iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut it = leaves.iter().map(|v| v.as_tensor().clone());
        let mut next = || it.next();
        let encoded = Encoded {
            image: next().ok_or_else(missing)?,
            text: next().ok_or_else(missing)?,
            image_tokens: whole.image_tokens.as_ref().and_then(|_| next()),
            text_tokens: whole.text_tokens.as_ref().and_then(|_| next()),
            extra_text: whole.extra_text.as_ref().and_then(|_| next()),
            second: match whole.second {
                Some(_) => next().zip(next()),
                None => None,
            },
        };
        Ok(BatchEncoding {
            encoded,
            leaves: Some(leaves),
        })
    }

    /// After the loss's backward pass in micro-batches: encodes each micro-batch again with
    /// its activations and carries the loss's gradient with respect to its embeddings into the
    /// model, adding the model's gradients to `grads` (step 3). Nothing to do for a batch
    /// encoded in one pass.
    pub(super) fn backward_micro_batches(
        &self,
        batch: &Batch,
        needs: Needs,
        encoding: BatchEncoding,
        grads: &mut GradStore,
    ) -> Result<()> {
        let BatchEncoding {
            encoded,
            leaves: Some(leaves),
        } = encoding
        else {
            return Ok(());
        };
        drop(encoded);
        // The loss's gradient with respect to every embedding (zero where it has none).
        let upstream = leaves
            .iter()
            .map(|v| match grads.remove(v.as_tensor()) {
                Some(g) => Ok(g),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        drop(leaves);
        let micro = self.cfg.train.micro_batches;
        let len = batch.len() / micro;
        let trainable = self.trainable();
        for c in 0..micro {
            let e = self.encode_rows(batch, c * len..(c + 1) * len, needs)?;
            let mut surrogate: Option<Tensor> = None;
            for (t, g) in e.parts().into_iter().zip(&upstream) {
                let n = t.dim(0)?;
                let term = (t * g.narrow(0, c * n, n)?)?.sum_all()?;
                surrogate = Some(match surrogate {
                    None => term,
                    Some(s) => (s + term)?,
                });
            }
            let Some(surrogate) = surrogate else { continue };
            let mine = surrogate.backward()?;
            for (_, var) in &trainable {
                if let Some(g) = mine.get(var) {
                    let total = match grads.get(var) {
                        Some(sum) => (sum + g)?,
                        None => g.clone(),
                    };
                    grads.insert(var, total);
                }
            }
        }
        Ok(())
    }
}

fn missing() -> Error {
    Error::Data("a micro-batch lacks an embedding".into())
}

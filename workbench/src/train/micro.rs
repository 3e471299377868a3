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

    /// The same fields, filled from `parts` in [`Encoded::parts`] order.
    fn with_parts(&self, parts: Vec<Tensor>) -> Result<Self> {
        let n = parts.len();
        if n != self.parts().len() {
            return Err(Error::Data(format!(
                "{n} tensors for a micro-batch's {} embeddings",
                self.parts().len()
            )));
        }
        let mut it = parts.into_iter();
        let mut take = |present: bool| if present { it.next() } else { None };
        Ok(Self {
            image: take(true).ok_or_else(|| short(n))?,
            text: take(true).ok_or_else(|| short(n))?,
            image_tokens: take(self.image_tokens.is_some()),
            text_tokens: take(self.text_tokens.is_some()),
            extra_text: take(self.extra_text.is_some()),
            second: take(self.second.is_some()).zip(take(self.second.is_some())),
        })
    }
}

fn short(n: usize) -> Error {
    Error::Data(format!(
        "{n} tensors do not fill a micro-batch's embeddings"
    ))
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
        // Each part's embeddings, detached: its activations are freed as it is dropped.
        let parts = (0..micro)
            .map(|c| {
                let e = self.encode_rows(batch, c * len..(c + 1) * len, needs)?;
                e.with_parts(e.parts().into_iter().map(Tensor::detach).collect())
            })
            .collect::<Result<Vec<_>>>()?;
        // Their concatenation, part by part, as the leaves of the loss's graph.
        let leaves = (0..parts[0].parts().len())
            .map(|k| {
                let column: Vec<&Tensor> = parts.iter().map(|p| p.parts()[k]).collect();
                Var::from_tensor(&Tensor::cat(&column, 0)?)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let encoded =
            parts[0].with_parts(leaves.iter().map(|v| v.as_tensor().clone()).collect())?;
        drop(parts);
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

//! Objectives: reference values, gradient checks, invariances, parameter ownership.
//!
//! Every expected literal comes from `tests/fixtures/loss_reference.py`: PyTorch (float64)
//! implementations written from each paper's formula, not from the Rust code; CLIP and SigLIP
//! are also run through open_clip's own `ClipLoss` / `SigLipLoss`. Regenerate them with
//! `python3 tests/fixtures/loss_reference.py` (any Python with torch, plus
//! open_clip for the cross-check). Both sides start from the same integer rows, L2-normalised
//! in f64 and rounded to f32 ([`unit`]), and a temperature τ enters as the stored f32 log-scale
//! `t = ln(1/τ)`, used as `exp(t)` — so the only difference left is the f32 arithmetic here.
//!
//! Per objective: a reference test (the loss and every named term), a finite-difference
//! gradient check w.r.t. every input it reads and every learnable parameter, and batch
//! permutation invariance. Then parameter ownership, composition and bad inputs. This file holds
//! the shared inputs and checks; the tests are in `losses/`, by family.

mod clip_family;
mod decoupled;
mod parameters;
mod targets;

// The configurations other families' tests reuse.
use clip_family::{clip_config, filip_config, siglip_config};
use decoupled::{sum_config, tcl_config};
use targets::{fn_mask_config, hard_negatives_config, multi_positive_config, triplet_config};

use crate::util::assert_close;
use candle_core::{DType, Device, Tensor, Var};
use kernels::check::finite_difference_grad;
use workbench::loss::cloob::CloobConfig;
use workbench::loss::composite::{SumConfig, SumPart};
use workbench::loss::decoupled::{AlignUniformConfig, DclConfig};
use workbench::loss::filip::FilipConfig;
use workbench::loss::focal::{FocalConfig, FocalVariant};
use workbench::loss::hard_negatives::HardNegativesConfig;
use workbench::loss::intra_modal::TclConfig;
use workbench::loss::masking::{FalseNegativeBy, FnMaskConfig};
use workbench::loss::multi_positive::MultiPositiveConfig;
use workbench::loss::siglip::SiglipConfig;
use workbench::loss::smoothing::{Schedule, SoftTargetsConfig};
use workbench::loss::triplet::{Mining, TripletConfig};
use workbench::loss::{ClipLossConfig, LossConfig, LossInputs, Objective, TemperatureConfig};
use workbench::params::Params;

// ---------------------------------------------------------------------------------------------
// Inputs (the same integers are in tests/fixtures/loss_reference.py)
// ---------------------------------------------------------------------------------------------

/// B = 4, E = 4. Every similarity gap and every triplet hinge argument is ≥ 0.06 away from a
/// tie or a kink, so piecewise objectives are smooth under the finite-difference steps.
const IMG: [[i8; 4]; 4] = [
    [-1, -3, -3, -4],
    [-1, 0, -4, 1],
    [-1, 1, -3, -2],
    [1, -3, 0, 0],
];
const TXT: [[i8; 4]; 4] = [
    [1, -2, -5, -3],
    [-2, 1, -2, 3],
    [-3, -1, -3, 0],
    [2, -5, 2, 0],
];
/// Second views for TCL.
const IMG2: [[i8; 4]; 4] = [
    [-2, -3, -2, -4],
    [-1, 1, -4, 2],
    [0, 1, -3, -2],
    [1, -3, 1, -1],
];
const TXT2: [[i8; 4]; 4] = [
    [1, -3, -4, -3],
    [-2, 2, -2, 2],
    [-3, 0, -3, 1],
    [3, -4, 2, 1],
];
/// K = 2 hard-negative captions per image: rows 2i and 2i + 1 belong to image i.
const EXTRA: [[i8; 4]; 8] = [
    [1, -2, -5, 3],
    [2, -2, -5, -3],
    [-2, 1, 2, 3],
    [-2, -1, -2, 3],
    [-3, -1, 3, 0],
    [-3, 1, -3, 0],
    [2, -5, -2, 0],
    [-2, -5, 2, 0],
];
/// Rows 0 and 2 describe the same content.
const GROUPS: [u64; 4] = [7, 3, 7, 5];
/// Captions 1 and 3 are the same text.
const TEXT_IDS: [u64; 4] = [1, 2, 3, 2];

/// FILIP: B = 3 images of N = 4 patches and 3 texts of T = 5 token slots, E = 3. Every max over
/// patches or words wins by ≥ 0.12.
const PATCHES: [[[i8; 3]; 4]; 3] = [
    [[-1, 1, 0], [-1, 1, -3], [-1, 3, 1], [3, 1, 2]],
    [[2, 0, -3], [0, 2, -2], [3, 3, 3], [-2, -2, -1]],
    [[2, -1, -1], [0, -2, 0], [-1, 1, -1], [-1, 1, -3]],
];
const TOKENS: [[[i8; 3]; 5]; 3] = [
    [[-3, -3, 0], [-3, -1, 2], [2, 3, -3], [2, 2, 1], [-3, -3, 2]],
    [[-3, 1, -3], [0, 3, 1], [2, 2, 1], [-3, 2, 2], [-3, -1, 3]],
    [
        [0, -1, 0],
        [1, 2, -3],
        [2, -2, -1],
        [0, -3, -1],
        [-2, 0, -3],
    ],
];
/// 1 for BOS..EOS (slot 0 is BOS), 0 for padding.
const TEXT_MASK: [[f32; 5]; 3] = [
    [1.0, 1.0, 1.0, 1.0, 1.0],
    [1.0, 1.0, 1.0, 0.0, 0.0],
    [1.0, 1.0, 1.0, 1.0, 0.0],
];

/// Forward values against the float64 references (the f32 round-off seen is ≤ 3e-7).
const TOL: f64 = 1e-6;
/// Finite-difference step on f32 inputs, and the tolerance of the gradient checks (with
/// Richardson extrapolation the differences seen are ≤ 3e-5, on gradients of order 1).
const FD_STEP: f64 = 1e-2;
const GRAD_TOL: f64 = 1e-4;

/// Integer rows L2-normalised in f64, rounded to f32 (exactly as the Python `unit`).
fn unit<const E: usize>(rows: &[[i8; E]]) -> Tensor {
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            let n = r
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt();
            r.iter().map(move |&v| (f64::from(v) / n) as f32)
        })
        .collect();
    Tensor::from_vec(data, (rows.len(), E), &Device::Cpu).unwrap()
}

/// `(B, N, E)` blocks of integer rows, each row normalised.
fn unit3<const N: usize, const E: usize>(blocks: &[[[i8; E]; N]]) -> Tensor {
    let rows: Vec<[i8; E]> = blocks.iter().flatten().copied().collect();
    unit(&rows).reshape((blocks.len(), N, E)).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// A learnable temperature τ (scale `exp(t)`, `t = ln 1/τ`).
fn temp(tau: f64) -> TemperatureConfig {
    TemperatureConfig {
        init: tau,
        ..TemperatureConfig::default()
    }
}

/// Builds `cfg` into a fresh parameter store.
fn build(cfg: &LossConfig) -> Box<dyn Objective> {
    cfg.build(&Params::new(0, &Device::Cpu).scope("loss"))
        .unwrap()
}

/// The inputs a [`LossInputs`] borrows, owned.
#[derive(Clone)]
struct Batch {
    image: Tensor,
    text: Tensor,
    image_tokens: Option<Tensor>,
    text_tokens: Option<Tensor>,
    text_mask: Option<Tensor>,
    groups: Option<Vec<u64>>,
    text_ids: Option<Vec<u64>>,
    extra_text: Option<Tensor>,
    image2: Option<Tensor>,
    text2: Option<Tensor>,
    progress: f64,
    step: usize,
}

/// An input tensor a gradient is checked against.
#[derive(Clone, Copy, Debug)]
enum Field {
    Image,
    Text,
    ImageTokens,
    TextTokens,
    ExtraText,
    Image2,
    Text2,
}

impl Batch {
    fn new(image: Tensor, text: Tensor) -> Self {
        Self {
            image,
            text,
            image_tokens: None,
            text_tokens: None,
            text_mask: None,
            groups: None,
            text_ids: None,
            extra_text: None,
            image2: None,
            text2: None,
            progress: 0.0,
            step: 0,
        }
    }

    /// The B = 4 batch with every per-row input: groups, caption ids, K = 2 hard negatives,
    /// second views.
    fn standard() -> Self {
        Self {
            groups: Some(GROUPS.to_vec()),
            text_ids: Some(TEXT_IDS.to_vec()),
            extra_text: Some(unit(&EXTRA)),
            image2: Some(unit(&IMG2)),
            text2: Some(unit(&TXT2)),
            ..Self::new(unit(&IMG), unit(&TXT))
        }
    }

    /// The B = 3 token-level batch (text 1 has two padding slots, text 2 one).
    fn tokens() -> Self {
        Self {
            image_tokens: Some(unit3(&PATCHES)),
            text_tokens: Some(unit3(&TOKENS)),
            text_mask: Some(Tensor::new(&TEXT_MASK, &Device::Cpu).unwrap()),
            ..Self::new(unit(&IMG[..3]), unit(&TXT[..3]))
        }
    }

    fn inputs(&self) -> LossInputs<'_> {
        LossInputs {
            image_tokens: self.image_tokens.as_ref(),
            text_tokens: self.text_tokens.as_ref(),
            text_mask: self.text_mask.as_ref(),
            groups: self.groups.as_deref(),
            text_ids: self.text_ids.as_deref(),
            extra_text: self.extra_text.as_ref(),
            image2: self.image2.as_ref(),
            text2: self.text2.as_ref(),
            progress: self.progress,
            step: self.step,
            ..LossInputs::new(&self.image, &self.text)
        }
    }

    fn get(&self, f: Field) -> Tensor {
        let t = match f {
            Field::Image => Some(&self.image),
            Field::Text => Some(&self.text),
            Field::ImageTokens => self.image_tokens.as_ref(),
            Field::TextTokens => self.text_tokens.as_ref(),
            Field::ExtraText => self.extra_text.as_ref(),
            Field::Image2 => self.image2.as_ref(),
            Field::Text2 => self.text2.as_ref(),
        };
        t.unwrap_or_else(|| panic!("the batch has no {f:?}"))
            .clone()
    }

    /// A copy with `f` replaced by `t`.
    fn with(&self, f: Field, t: Tensor) -> Self {
        let mut b = self.clone();
        match f {
            Field::Image => b.image = t,
            Field::Text => b.text = t,
            Field::ImageTokens => b.image_tokens = Some(t),
            Field::TextTokens => b.text_tokens = Some(t),
            Field::ExtraText => b.extra_text = Some(t),
            Field::Image2 => b.image2 = Some(t),
            Field::Text2 => b.text2 = Some(t),
        }
        b
    }

    /// Rows reordered by `perm`, every per-row input alike (hard negatives in blocks of K).
    fn permuted(&self, perm: &[usize]) -> Self {
        let index = |ix: Vec<usize>| {
            let n = ix.len();
            Tensor::from_vec(
                ix.into_iter().map(|i| i as u32).collect::<Vec<_>>(),
                n,
                &Device::Cpu,
            )
            .unwrap()
        };
        let rows = index(perm.to_vec());
        let take = |t: &Tensor| t.index_select(&rows, 0).unwrap();
        let ids = |v: &Vec<u64>| perm.iter().map(|&p| v[p]).collect::<Vec<_>>();
        let extra = self.extra_text.as_ref().map(|e| {
            let k = e.dim(0).unwrap() / perm.len();
            e.index_select(
                &index(perm.iter().flat_map(|&p| p * k..(p + 1) * k).collect()),
                0,
            )
            .unwrap()
        });
        Self {
            image: take(&self.image),
            text: take(&self.text),
            image_tokens: self.image_tokens.as_ref().map(take),
            text_tokens: self.text_tokens.as_ref().map(take),
            text_mask: self.text_mask.as_ref().map(take),
            groups: self.groups.as_ref().map(ids),
            text_ids: self.text_ids.as_ref().map(ids),
            extra_text: extra,
            image2: self.image2.as_ref().map(take),
            text2: self.text2.as_ref().map(take),
            ..self.clone()
        }
    }
}

/// `("loss", value)` followed by the named terms, as f64.
fn evaluate(obj: &dyn Objective, batch: &Batch) -> Vec<(String, f64)> {
    let out = obj.forward(&batch.inputs()).unwrap();
    std::iter::once(("loss".to_string(), out.loss))
        .chain(out.terms)
        .map(|(name, t)| (name, scalar(&t)))
        .collect()
}

/// The loss and its terms — names in order, values to `tol` — equal the reference.
fn assert_reference(obj: &dyn Objective, batch: &Batch, expected: &[(&str, f64)], tol: f64) {
    let got = evaluate(obj, batch);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want, "{}: loss and term names", obj.name());
    for ((name, v), (_, e)) in got.iter().zip(expected) {
        let d = (v - e).abs();
        assert!(
            d <= tol,
            "{} {name}: {v} vs reference {e} (|Δ| = {d:e} > {tol:e})",
            obj.name()
        );
    }
}

/// The objective's logged scalar called `name`.
fn scalar_named(obj: &dyn Objective, name: &str) -> f64 {
    let all = obj.scalars().unwrap();
    let found = all.iter().find(|(n, _)| n == name);
    f64::from(
        found
            .unwrap_or_else(|| panic!("{}: no scalar {name} in {all:?}", obj.name()))
            .1,
    )
}

/// Central differences at `h` and `2h` combined by Richardson extrapolation (error O(h⁴)),
/// which keeps an f32 check tight.
fn numeric_grad(f: &impl Fn(&Tensor) -> candle_core::Result<Tensor>, x: &Tensor) -> Tensor {
    let d1 = finite_difference_grad(f, x, FD_STEP).unwrap();
    let d2 = finite_difference_grad(f, x, 2.0 * FD_STEP).unwrap();
    (((d1 * 4.0).unwrap() - d2).unwrap() / 3.0).unwrap()
}

/// Autograd equals finite differences w.r.t. each of `fields` and every learnable parameter.
fn check_gradients(obj: &dyn Objective, batch: &Batch, fields: &[Field]) {
    let vars: Vec<Var> = fields
        .iter()
        .map(|&f| Var::from_tensor(&batch.get(f)).unwrap())
        .collect();
    let tracked = fields
        .iter()
        .zip(&vars)
        .fold(batch.clone(), |b, (&f, v)| b.with(f, v.as_tensor().clone()));
    let grads = obj
        .forward(&tracked.inputs())
        .unwrap()
        .loss
        .backward()
        .unwrap();
    for (&f, v) in fields.iter().zip(&vars) {
        let loss_at = |x: &Tensor| {
            obj.forward(&batch.with(f, x.clone()).inputs())
                .map(|o| o.loss)
        };
        let analytic = grads
            .get(v)
            .unwrap_or_else(|| panic!("{}: no gradient reaches {f:?}", obj.name()));
        assert_close(
            analytic,
            &numeric_grad(&loss_at, &batch.get(f)),
            GRAD_TOL,
            &format!("{} d/d {f:?}", obj.name()),
        );
    }
    for (name, var) in obj.parameters() {
        let analytic = grads.get(&var).map_or(0.0, scalar);
        let base = var.as_tensor().to_scalar::<f32>().unwrap();
        let loss_at = |v: f64| {
            var.set(&Tensor::new(v as f32, &Device::Cpu).unwrap())
                .unwrap();
            scalar(&obj.forward(&batch.inputs()).unwrap().loss)
        };
        let (b, h) = (f64::from(base), FD_STEP);
        let numeric = (8.0 * (loss_at(b + h) - loss_at(b - h))
            - (loss_at(b + 2.0 * h) - loss_at(b - 2.0 * h)))
            / (12.0 * h);
        var.set(&Tensor::new(base, &Device::Cpu).unwrap()).unwrap();
        assert!(
            (analytic - numeric).abs() <= GRAD_TOL,
            "d/d {name}: autograd {analytic} vs numeric {numeric}"
        );
    }
}

/// Reordering the batch (every per-row input alike) changes neither the loss nor any term.
fn check_permutation(obj: &dyn Objective, batch: &Batch) {
    let perm: &[usize] = if batch.image.dim(0).unwrap() == 3 {
        &[2, 0, 1]
    } else {
        &[2, 0, 3, 1]
    };
    let (a, b) = (evaluate(obj, batch), evaluate(obj, &batch.permuted(perm)));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() < 1e-5,
            "{} {name}: {x} vs {y} after permuting the batch",
            obj.name()
        );
    }
}

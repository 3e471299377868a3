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
//! permutation invariance. Then parameter ownership, composition and bad inputs.

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

// ---------------------------------------------------------------------------------------------
// CLIP — Radford et al. 2021, Fig. 3; open_clip `ClipLoss`
// ---------------------------------------------------------------------------------------------

fn clip_config() -> LossConfig {
    LossConfig::Clip(ClipLossConfig {
        temperature: temp(0.2),
    })
}

/// ```python
/// s = math.exp(f32(math.log(1 / 0.2)))               # the stored log-scale, used as exp(t)
/// open_clip.loss.ClipLoss()(img, txt, s)             # loss          0.569_117_043_9
/// F.cross_entropy(s * img @ txt.T, arange(4))        # image_to_text 0.609_072_025_9
/// F.cross_entropy(s * txt @ img.T, arange(4))        # text_to_image 0.529_162_061_8
/// ```
#[test]
fn clip_matches_open_clip() {
    let obj = build(&clip_config());
    // clip(IMG, TXT, scale(0.2)), asserted equal to open_clip's ClipLoss to 1e-12
    let expected = [
        ("loss", 0.569_117_043_9),
        ("image_to_text", 0.609_072_025_9),
        ("text_to_image", 0.529_162_061_8),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    assert!((scalar_named(&*obj, "logit_scale") - 5.0).abs() < 1e-5);
}

#[test]
fn clip_gradients_and_permutation() {
    let obj = build(&clip_config());
    check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
    check_permutation(&*obj, &Batch::standard());
}

// ---------------------------------------------------------------------------------------------
// SigLIP — Zhai et al. 2023, Algorithm 1; open_clip `SigLipLoss`
// ---------------------------------------------------------------------------------------------

fn siglip_config(tau: f64, bias: f64) -> LossConfig {
    LossConfig::Siglip(SiglipConfig {
        temperature: temp(tau),
        init_bias: bias,
        ..SiglipConfig::default()
    })
}

/// ```python
/// logits = s * img @ txt.T + b; labels = 2 * torch.eye(4) - 1
/// open_clip.loss.SigLipLoss()(img, txt, s, b)       # loss
/// ll = F.logsigmoid(labels * logits)                 # loss = -ll.sum() / 4
/// -ll.diagonal().sum() / 4                            # positive
/// -(ll.sum() - ll.diagonal().sum()) / 4               # negative
/// ```
#[test]
fn siglip_matches_open_clip() {
    // The paper's initialisation (default config): s = 10, b = -10.
    let obj = build(&LossConfig::Siglip(SiglipConfig::default()));
    // siglip(IMG, TXT, scale(0.1), f32(-10.0)), asserted equal to open_clip's SigLipLoss
    let expected = [
        ("loss", 2.310_098_720_8),
        ("positive", 2.247_173_668_5),
        ("negative", 0.062_925_052_3),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    // s = 4, b = -1.5: the negatives dominate.
    let obj = build(&siglip_config(0.25, -1.5));
    // siglip(IMG, TXT, scale(0.25), f32(-1.5)), asserted equal to open_clip's SigLipLoss
    let expected = [
        ("loss", 2.149_901_163_3),
        ("positive", 0.185_113_787_7),
        ("negative", 1.964_787_375_6),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
}

#[test]
fn siglip_gradients_and_permutation() {
    let obj = build(&siglip_config(0.25, -1.5));
    assert_eq!(obj.parameters().len(), 2, "logit_scale and logit_bias");
    check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
    check_permutation(&*obj, &Batch::standard());
}

#[test]
fn siglip_initialises_like_the_paper() {
    let obj = build(&LossConfig::Siglip(SiglipConfig::default()));
    let p = obj.parameters();
    assert_eq!(p[0].0, "loss.siglip.logit_scale");
    assert!(
        (scalar(p[0].1.as_tensor()) - 10f64.ln()).abs() < 1e-6,
        "t' = ln 10"
    );
    assert_eq!(p[1].0, "loss.siglip.logit_bias");
    assert_eq!(scalar(p[1].1.as_tensor()), -10.0, "b = -10");
}

/// `on_activate` sets a freshly created bias to the minimiser of the loss on the probe batch.
/// ```python
/// def dldb(b):
///     bt = torch.tensor(b, requires_grad=True); siglip(img, txt, s, bt)["loss"].backward()
///     return bt.grad
/// bisect dldb on [-60, 60]                           # -7.392_900_692_1 at s = 10
/// ```
#[test]
fn siglip_on_activate_sets_a_fresh_bias_to_the_minimiser() {
    let params = Params::new(0, &Device::Cpu);
    let cfg = LossConfig::Siglip(SiglipConfig::default());
    let obj = cfg.build(&params.scope("loss")).unwrap();
    let batch = Batch::standard();
    obj.on_activate(&batch.inputs()).unwrap();
    let bias = params.get("loss.siglip.logit_bias").unwrap();
    let b = scalar(bias.as_tensor());
    assert!((b + 7.392_900_692_1).abs() < 1e-4, "bias {b}");
    // dL/db ≈ 0 there.
    let grads = obj
        .forward(&batch.inputs())
        .unwrap()
        .loss
        .backward()
        .unwrap();
    let slope = scalar(grads.get(&bias).unwrap());
    assert!(slope.abs() < 1e-5, "dL/db = {slope} after on_activate");

    // A bias restored from an earlier time on this objective is left alone.
    bias.set(&Tensor::new(-3f32, &Device::Cpu).unwrap())
        .unwrap();
    let again = cfg.build(&params.scope("loss")).unwrap();
    again.on_activate(&batch.inputs()).unwrap();
    assert_eq!(scalar(bias.as_tensor()), -3.0);

    // bias_from_logits = false leaves a fresh bias at its init.
    let off = LossConfig::Siglip(SiglipConfig {
        bias_from_logits: false,
        ..SiglipConfig::default()
    });
    let fresh = Params::new(0, &Device::Cpu);
    off.build(&fresh.scope("loss"))
        .unwrap()
        .on_activate(&batch.inputs())
        .unwrap();
    assert_eq!(
        scalar(fresh.get("loss.siglip.logit_bias").unwrap().as_tensor()),
        -10.0
    );
}

/// CLIP and SigLIP compute with the fused kernels by default (memory linear in the batch) and
/// with the `B × B` composition under `model.kernels = "reference"`: same loss, terms and
/// gradients, for inputs and parameters, at a batch spanning several row strips of the kernel.
#[test]
fn clip_and_siglip_fused_equal_their_references() {
    use workbench::model::Kernels;
    let (b, e) = (150, 24);
    let rows = |seed| {
        let x = Tensor::from_vec(
            workbench::rng::Rng::new(seed).normal_vec(b * e, 1.0),
            (b, e),
            &Device::Cpu,
        )
        .unwrap();
        x.broadcast_div(&x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
            .unwrap()
    };
    let (image, text) = (
        Var::from_tensor(&rows(1)).unwrap(),
        Var::from_tensor(&rows(2)).unwrap(),
    );
    for cfg in [clip_config(), siglip_config(0.05, -4.0)] {
        let mut runs = Vec::new();
        for kernels in [Kernels::Fused, Kernels::Reference] {
            let obj = cfg
                .build_with(&Params::new(0, &Device::Cpu).scope("loss"), kernels)
                .unwrap();
            let out = obj
                .forward(&LossInputs::new(image.as_tensor(), text.as_tensor()))
                .unwrap();
            let grads = out.loss.backward().unwrap();
            let mut values = vec![out.loss.clone()];
            values.extend(out.terms.iter().map(|(_, t)| t.clone()));
            values.push(grads.get(&image).unwrap().clone());
            values.push(grads.get(&text).unwrap().clone());
            for (_, p) in obj.parameters() {
                values.push(grads.get(&p).unwrap().clone());
            }
            runs.push(values);
        }
        assert_eq!(runs[0].len(), runs[1].len());
        for (k, (f, r)) in runs[0].iter().zip(&runs[1]).enumerate() {
            assert_close(f, r, 2e-5, &format!("{} value {k}", cfg.name()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CLOOB — Fürst et al. 2022, Algorithm 1; ml-jku/cloob `infoLOOB_loss`, `hopfield_retrieval`
// ---------------------------------------------------------------------------------------------

fn cloob_config(hopfield: bool, loob: bool) -> LossConfig {
    LossConfig::Cloob(CloobConfig {
        inv_tau: 10.0,
        beta: 4.0,
        hopfield,
        loob,
    })
}

/// ```python
/// def hopfield(state, stored, beta):        # U = X softmax(β Xᵀ ξ), normalised (column vectors)
///     U = stored.T @ torch.softmax(beta * stored @ state.T, dim=0); return (U / U.norm(dim=0)).T
/// def info_loob(a, p, inv_tau):             # τ · mean_i [log Σ_{j≠i} e^{a_i·p_j/τ} − a_i·p_i/τ]
///     k = inv_tau * a @ p.T
///     return (torch.logsumexp(k.masked_fill(eye, -inf), 1) - k.diagonal()).mean() / inv_tau
/// image = info_loob(hopfield(img, img, 4), hopfield(txt, img, 4), 10)
/// text  = info_loob(hopfield(txt, txt, 4), hopfield(img, txt, 4), 10)
/// # hopfield=False: the embeddings themselves; loob=False: logsumexp over k unmasked (InfoNCE)
/// ```
#[test]
fn cloob_matches_reference_in_all_four_ablations() {
    let cases = [
        // cloob(IMG, TXT, inv_tau=10.0, beta=4.0, hopfield_on=True, loob=True)
        (
            true,
            true,
            [
                ("loss", -0.535_000_995_9),
                ("image", -0.221_172_554_5),
                ("text", -0.313_828_441_4),
            ],
        ),
        // cloob(IMG, TXT, inv_tau=10.0, beta=4.0, hopfield_on=True, loob=False)
        (
            true,
            false,
            [
                ("loss", 0.090_081_655_5),
                ("image", 0.037_963_691_3),
                ("text", 0.052_117_964_2),
            ],
        ),
        // cloob(IMG, TXT, inv_tau=10.0, beta=4.0, hopfield_on=False, loob=True)
        (
            false,
            true,
            [
                ("loss", -0.465_974_055_5),
                ("image", -0.166_710_973_4),
                ("text", -0.299_263_082_1),
            ],
        ),
        // cloob(IMG, TXT, inv_tau=10.0, beta=4.0, hopfield_on=False, loob=False)
        (
            false,
            false,
            [
                ("loss", 0.120_644_817_8),
                ("image", 0.066_052_156_3),
                ("text", 0.054_592_661_5),
            ],
        ),
    ];
    for (hopfield, loob, expected) in cases {
        let obj = build(&cloob_config(hopfield, loob));
        assert_reference(&*obj, &Batch::standard(), &expected, TOL);
        assert!(obj.parameters().is_empty(), "CLOOB's τ and β are fixed");
    }
}

#[test]
fn cloob_gradients_and_permutation() {
    for (hopfield, loob) in [(true, true), (true, false), (false, true), (false, false)] {
        let obj = build(&cloob_config(hopfield, loob));
        check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
        check_permutation(&*obj, &Batch::standard());
    }
}

// ---------------------------------------------------------------------------------------------
// FILIP — Yao et al. 2022, §3.1.1, Eq. (4)–(5)
// ---------------------------------------------------------------------------------------------

fn filip_config() -> LossConfig {
    LossConfig::Filip(FilipConfig {
        temperature: temp(0.2),
    })
}

/// ```python
/// for i, j in product(range(3), range(3)):
///     words = [t for t in range(1, 5) if mask[j][t] == 1]      # no BOS, no padding
///     sim = patches[i] @ tokens[j, words].T                      # (N, n₂)
///     s_i[i, j] = sim.max(dim=1).values.mean()                   # each patch's best word
///     s_t[i, j] = sim.max(dim=0).values.mean()                   # each word's best patch
/// i2t = F.cross_entropy(s * s_i, arange(3)); t2i = F.cross_entropy((s * s_t).T, arange(3))
/// ```
#[test]
fn filip_matches_reference() {
    let obj = build(&filip_config());
    // filip(PATCHES, TOKENS, TEXT_MASK, scale(0.2))
    let expected = [
        ("loss", 1.308_996_114_9),
        ("image_to_text", 1.546_159_510_1),
        ("text_to_image", 1.071_832_719_7),
    ];
    assert_reference(&*obj, &Batch::tokens(), &expected, TOL);
}

#[test]
fn filip_gradients_and_permutation() {
    let obj = build(&filip_config());
    check_gradients(
        &*obj,
        &Batch::tokens(),
        &[Field::ImageTokens, Field::TextTokens],
    );
    check_permutation(&*obj, &Batch::tokens());
}

#[test]
fn filip_ignores_padding_and_bos_tokens() {
    let obj = build(&filip_config());
    let batch = Batch::tokens();
    // The same texts with every BOS and padding slot replaced by another vector.
    let mut edited = TOKENS;
    for (text, mask) in edited.iter_mut().zip(TEXT_MASK) {
        for (t, token) in text.iter_mut().enumerate() {
            if t == 0 || mask[t] == 0.0 {
                *token = [1, 1, 1];
            }
        }
    }
    assert_ne!(edited, TOKENS);
    let before = evaluate(&*obj, &batch);
    let after = evaluate(&*obj, &batch.with(Field::TextTokens, unit3(&edited)));
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert!((a - b).abs() < 1e-6, "{name}: {a} vs {b}");
    }
}

// ---------------------------------------------------------------------------------------------
// Focal — RO-ViT (Kim et al. 2023) §3.2 with the focal loss of Lin et al. 2017
// ---------------------------------------------------------------------------------------------

fn focal_config(variant: FocalVariant, gamma: f64, tau: f64) -> LossConfig {
    LossConfig::Focal(FocalConfig {
        gamma,
        variant,
        temperature: temp(tau),
        init_bias: -1.0,
    })
}

/// ```python
/// # sigmoid (γ = 2, s = 4, b = -1)
/// p = torch.sigmoid((2 * eye - 1) * (s * img @ txt.T + b)); cell = -(1 - p) ** 2 * torch.log(p)
/// positive = cell.diagonal().sum() / 4; negative = (cell.sum() - cell.diagonal().sum()) / 4
/// # softmax (γ = 2, s = 5)
/// p = torch.softmax(s * img @ txt.T, dim=1).diagonal()   # dim=0 for text_to_image
/// i2t = (-(1 - p) ** 2 * torch.log(p)).mean()
/// ```
#[test]
fn focal_matches_reference_in_both_variants() {
    let obj = build(&focal_config(FocalVariant::Sigmoid, 2.0, 0.25));
    // focal_sigmoid(IMG, TXT, scale(0.25), f32(-1.0), gamma=2.0)
    let expected = [
        ("loss", 1.544_281_726_0),
        ("positive", 0.002_066_352_4),
        ("negative", 1.542_215_373_6),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    let obj = build(&focal_config(FocalVariant::Softmax, 2.0, 0.2));
    // focal_softmax(IMG, TXT, scale(0.2), gamma=2.0)
    let expected = [
        ("loss", 0.229_711_294_1),
        ("image_to_text", 0.231_508_531_8),
        ("text_to_image", 0.227_914_056_4),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    // γ = 0 is SigLIP: focal_sigmoid(IMG, TXT, scale(0.25), f32(-1.0), gamma=0.0), asserted
    // equal to siglip(IMG, TXT, scale(0.25), f32(-1.0)) in the reference
    let obj = build(&focal_config(FocalVariant::Sigmoid, 0.0, 0.25));
    let expected = [
        ("loss", 2.706_212_857_1),
        ("positive", 0.116_919_252_2),
        ("negative", 2.589_293_604_9),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    // γ = 0 softmax is CLIP: clip(IMG, TXT, scale(0.2))
    let obj = build(&focal_config(FocalVariant::Softmax, 0.0, 0.2));
    let expected = [
        ("loss", 0.569_117_043_9),
        ("image_to_text", 0.609_072_025_9),
        ("text_to_image", 0.529_162_061_8),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
}

#[test]
fn focal_gradients_and_permutation() {
    for variant in [FocalVariant::Sigmoid, FocalVariant::Softmax] {
        let obj = build(&focal_config(variant, 2.0, 0.25));
        check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
        check_permutation(&*obj, &Batch::standard());
    }
}

/// γ < 1 with confidently classified cells (p = 1 in f32 at scale 100): `(1 − p)^γ` has an
/// infinite derivative at 0, which must not turn the gradients into NaN.
#[test]
fn focal_gradients_stay_finite_for_confident_cells() {
    for variant in [FocalVariant::Sigmoid, FocalVariant::Softmax] {
        let obj = build(&LossConfig::Focal(FocalConfig {
            gamma: 0.5,
            variant,
            temperature: temp(0.01),
            init_bias: -10.0,
        }));
        let batch = Batch::standard();
        let (vi, vt) = (
            Var::from_tensor(&batch.image).unwrap(),
            Var::from_tensor(&batch.text).unwrap(),
        );
        let out = obj
            .forward(&LossInputs::new(vi.as_tensor(), vt.as_tensor()))
            .unwrap();
        assert!(scalar(&out.loss).is_finite());
        let grads = out.loss.backward().unwrap();
        for (what, g) in [("image", grads.get(&vi)), ("text", grads.get(&vt))] {
            let g = g.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{variant:?} d/d {what}: {g:?}"
            );
        }
        for (name, var) in obj.parameters() {
            assert!(
                scalar(grads.get(&var).unwrap()).is_finite(),
                "{variant:?} d/d {name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Soft targets — PyramidCLIP / LightCLIP, ε schedule
// ---------------------------------------------------------------------------------------------

fn soft_targets_config(schedule: Schedule) -> SoftTargetsConfig {
    SoftTargetsConfig {
        epsilon_start: 0.1,
        epsilon_end: 0.3,
        schedule,
        temperature: temp(0.2),
    }
}

/// ```python
/// eps = {"constant": 0.1, "linear": 0.1 + 0.2 * p,
///        "cosine": 0.3 + (0.1 - 0.3) * (1 + cos(pi * p)) / 2}
/// q = torch.full((4, 4), eps / 3); q.fill_diagonal_(1 - eps)          # probability targets
/// i2t = F.cross_entropy(s * img @ txt.T, q); t2i = F.cross_entropy(s * txt @ img.T, q)
/// ```
#[test]
fn soft_targets_match_reference_under_each_schedule() {
    let cases = [
        // soft_targets(IMG, TXT, scale(0.2), epsilon("constant", 0.1, 0.3, p=0.5))
        (
            Schedule::Constant,
            0.5,
            0.1,
            [
                ("loss", 0.889_515_766_0),
                ("image_to_text", 0.929_470_748_0),
                ("text_to_image", 0.849_560_784_0),
            ],
        ),
        // soft_targets(IMG, TXT, scale(0.2), epsilon("linear", 0.1, 0.3, p=0.5))
        (
            Schedule::Linear,
            0.5,
            0.2,
            [
                ("loss", 1.209_914_488_2),
                ("image_to_text", 1.249_869_470_2),
                ("text_to_image", 1.169_959_506_1),
            ],
        ),
        // soft_targets(IMG, TXT, scale(0.2), epsilon("cosine", 0.1, 0.3, p=0.3))
        (
            Schedule::Cosine,
            0.3,
            0.141_221_474_8,
            [
                ("loss", 1.021_588_844_4),
                ("image_to_text", 1.061_543_826_5),
                ("text_to_image", 0.981_633_862_4),
            ],
        ),
    ];
    for (schedule, progress, epsilon, expected) in cases {
        let cfg = soft_targets_config(schedule);
        assert!(
            (cfg.epsilon(progress) - epsilon).abs() < 1e-9,
            "{schedule:?}"
        );
        let obj = build(&LossConfig::SoftTargets(cfg));
        let batch = Batch {
            progress,
            ..Batch::standard()
        };
        assert_reference(&*obj, &batch, &expected, TOL);
        assert!(
            (scalar_named(&*obj, "epsilon") - epsilon).abs() < 1e-7,
            "{schedule:?}"
        );
    }
    // The ends of the schedule.
    let cfg = soft_targets_config(Schedule::Cosine);
    assert!((cfg.epsilon(0.0) - 0.1).abs() < 1e-12 && (cfg.epsilon(1.0) - 0.3).abs() < 1e-12);
}

#[test]
fn soft_targets_gradients_and_permutation() {
    let obj = build(&LossConfig::SoftTargets(soft_targets_config(
        Schedule::Linear,
    )));
    let batch = Batch {
        progress: 0.5,
        ..Batch::standard()
    };
    check_gradients(&*obj, &batch, &[Field::Image, Field::Text]);
    check_permutation(&*obj, &batch);
}

// ---------------------------------------------------------------------------------------------
// Triplet — VSE++ (Faghri et al. 2018) Eq. (3)–(5)
// ---------------------------------------------------------------------------------------------

fn triplet_config(mining: Mining) -> LossConfig {
    LossConfig::Triplet(TripletConfig {
        margin: 0.2,
        mining,
    })
}

/// Random mining draws from `Rng::derive(step, "triplet/image" | "triplet/text", 0)`; the
/// reference reproduces xoshiro256** to pick the same negatives.
/// ```python
/// s = img @ txt.T (and s.T for text_to_image); hinge_ij = clamp(0.2 - s_ii + s_ij, min=0)
/// all:       mean_i Σ_{j≠i} hinge_ij
/// hardest:   mean_i hinge_{i, argmax_{j≠i} s_ij}
/// semi_hard: mean_i hinge_{i, argmax {j : s_ii - 0.2 < s_ij < s_ii}}   (else the hardest)
/// random:    k = rng.below(3); mean_i hinge_{i, k + (k >= i)}
/// ```
#[test]
fn triplet_matches_reference_for_every_mining() {
    let cases = [
        // triplet(IMG, TXT, margin=0.2, mining="all", step=7)
        (
            Mining::All,
            [
                ("loss", 0.307_715_071_9),
                ("image_to_text", 0.165_792_097_1),
                ("text_to_image", 0.141_922_974_8),
            ],
        ),
        // triplet(IMG, TXT, margin=0.2, mining="hardest", step=7)
        (
            Mining::Hardest,
            [
                ("loss", 0.254_777_546_0),
                ("image_to_text", 0.145_377_383_0),
                ("text_to_image", 0.109_400_163_0),
            ],
        ),
        // triplet(IMG, TXT, margin=0.2, mining="semi_hard", step=7)
        (
            Mining::SemiHard,
            [
                ("loss", 0.145_613_017_9),
                ("image_to_text", 0.093_570_875_3),
                ("text_to_image", 0.052_042_142_6),
            ],
        ),
        // triplet(IMG, TXT, margin=0.2, mining="random", step=7)
        (
            Mining::Random,
            [
                ("loss", 0.162_102_053_9),
                ("image_to_text", 0.072_221_221_8),
                ("text_to_image", 0.089_880_832_2),
            ],
        ),
    ];
    let batch = Batch {
        step: 7,
        ..Batch::standard()
    };
    for (mining, expected) in cases {
        assert_reference(&*build(&triplet_config(mining)), &batch, &expected, TOL);
    }
    // Whatever the draw, a random negative's hinge lies between the anchor's easiest negative
    // (hinge 0 for every anchor of this batch) and its hardest: averaged, in [0, hardest].
    let hardest = evaluate(&*build(&triplet_config(Mining::Hardest)), &batch);
    let random = build(&triplet_config(Mining::Random));
    for step in 0..20 {
        let got = evaluate(
            &*random,
            &Batch {
                step,
                ..batch.clone()
            },
        );
        for ((name, r), (_, h)) in got.iter().zip(&hardest).skip(1) {
            assert!(
                (0.0..=h + 1e-6).contains(r),
                "random {name} {r} outside [0, {h}] at step {step}"
            );
        }
    }
}

#[test]
fn triplet_gradients_and_permutation() {
    let batch = Batch {
        step: 7,
        ..Batch::standard()
    };
    for mining in [
        Mining::All,
        Mining::Hardest,
        Mining::SemiHard,
        Mining::Random,
    ] {
        let obj = build(&triplet_config(mining));
        assert!(obj.parameters().is_empty());
        check_gradients(&*obj, &batch, &[Field::Image, Field::Text]);
        // Random mining draws one negative per anchor *position*, so reordering the batch
        // changes which negatives are drawn: it is not permutation invariant by design.
        if mining != Mining::Random {
            check_permutation(&*obj, &batch);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-positive — SupCon L_out targets (Khosla et al. 2020), DreamLIP, PLIP
// ---------------------------------------------------------------------------------------------

fn multi_positive_config() -> LossConfig {
    LossConfig::MultiPositive(MultiPositiveConfig {
        temperature: temp(0.2),
    })
}

/// ```python
/// g = torch.tensor([7, 3, 7, 5]); same = (g[:, None] == g[None, :]).double()
/// q = same / same.sum(dim=1, keepdim=True)
/// i2t = F.cross_entropy(s * img @ txt.T, q); t2i = F.cross_entropy(s * txt @ img.T, q)
/// ```
#[test]
fn multi_positive_matches_reference() {
    let obj = build(&multi_positive_config());
    // multi_positive(IMG, TXT, scale(0.2), GROUPS)
    let expected = [
        ("loss", 0.689_011_690_9),
        ("image_to_text", 0.728_966_672_9),
        ("text_to_image", 0.649_056_708_8),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    // All groups distinct: CLIP, clip(IMG, TXT, scale(0.2)).
    let distinct = Batch {
        groups: Some(vec![1, 2, 3, 4]),
        ..Batch::standard()
    };
    let expected = [
        ("loss", 0.569_117_043_9),
        ("image_to_text", 0.609_072_025_9),
        ("text_to_image", 0.529_162_061_8),
    ];
    assert_reference(&*obj, &distinct, &expected, TOL);
}

#[test]
fn multi_positive_gradients_and_permutation() {
    let obj = build(&multi_positive_config());
    check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
    check_permutation(&*obj, &Batch::standard());
}

// ---------------------------------------------------------------------------------------------
// False-negative masking — G-SimCLR, UniME
// ---------------------------------------------------------------------------------------------

fn fn_mask_config(by: FalseNegativeBy) -> LossConfig {
    LossConfig::FnMask(FnMaskConfig {
        by,
        threshold: 0.3,
        temperature: temp(0.2),
    })
}

/// ```python
/// false_negative = g[:, None] == g[None, :]            # by group
/// false_negative = ids[:, None] == ids[None, :]        # by caption
/// false_negative = txt @ txt.T >= 0.3                  # by similarity
/// logits = (s * img @ txt.T).masked_fill(false_negative & ~eye, -inf)
/// i2t = F.cross_entropy(logits, arange(4)); t2i = F.cross_entropy(logits.T, arange(4))
/// ```
#[test]
fn fn_mask_matches_reference_in_every_mode() {
    let cases = [
        // fn_mask(IMG, TXT, scale(0.2), g[:, None] == g[None, :])
        (
            FalseNegativeBy::Group,
            2.0,
            [
                ("loss", 0.364_319_271_0),
                ("image_to_text", 0.333_192_321_2),
                ("text_to_image", 0.395_446_220_7),
            ],
        ),
        // fn_mask(IMG, TXT, scale(0.2), ids[:, None] == ids[None, :])
        (
            FalseNegativeBy::Caption,
            2.0,
            [
                ("loss", 0.568_176_219_4),
                ("image_to_text", 0.608_454_891_7),
                ("text_to_image", 0.527_897_547_1),
            ],
        ),
        // fn_mask(IMG, TXT, scale(0.2), TXT @ TXT.T >= 0.3): text pairs (0, 2) and (1, 2) have
        // cosine 0.514 and 0.595, all others are below 0.06
        (
            FalseNegativeBy::Similarity,
            4.0,
            [
                ("loss", 0.115_140_788_9),
                ("image_to_text", 0.136_850_228_7),
                ("text_to_image", 0.093_431_349_1),
            ],
        ),
    ];
    for (by, masked_cells, expected) in cases {
        let obj = build(&fn_mask_config(by));
        assert_reference(&*obj, &Batch::standard(), &expected, TOL);
        assert!(
            (scalar_named(&*obj, "masked_fraction") - masked_cells / 12.0).abs() < 1e-7,
            "{by:?}"
        );
    }
}

#[test]
fn fn_mask_gradients_and_permutation() {
    for by in [
        FalseNegativeBy::Group,
        FalseNegativeBy::Caption,
        FalseNegativeBy::Similarity,
    ] {
        let obj = build(&fn_mask_config(by));
        check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
        check_permutation(&*obj, &Batch::standard());
    }
}

// ---------------------------------------------------------------------------------------------
// Hard negatives — NegCLIP, Structure-CLIP, SVLC
// ---------------------------------------------------------------------------------------------

fn hard_negatives_config() -> LossConfig {
    LossConfig::HardNegatives(HardNegativesConfig {
        per_image: 2,
        temperature: temp(0.2),
    })
}

/// ```python
/// i2t = F.cross_entropy(s * img @ torch.cat([txt, extra]).T, arange(4))   # 4 + 8 columns
/// t2i = F.cross_entropy(s * txt @ img.T, arange(4))
/// own, theirs = (img * txt).sum(1), stack([img[i] @ extra[2*i:2*i+2].T for i in range(4)])
/// (own[:, None] > theirs).all(dim=1).double().mean()                      # accuracy 0.25
/// ```
#[test]
fn hard_negatives_match_reference() {
    let obj = build(&hard_negatives_config());
    // hard_negatives(IMG, TXT, EXTRA, scale(0.2))
    let expected = [
        ("loss", 0.972_762_663_8),
        ("image_to_text", 1.416_363_265_7),
        ("text_to_image", 0.529_162_061_8),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    assert!((scalar_named(&*obj, "hard_negative_accuracy") - 0.25).abs() < 1e-7);
}

#[test]
fn hard_negatives_gradients_and_permutation() {
    let obj = build(&hard_negatives_config());
    check_gradients(
        &*obj,
        &Batch::standard(),
        &[Field::Image, Field::Text, Field::ExtraText],
    );
    check_permutation(&*obj, &Batch::standard());
}

// ---------------------------------------------------------------------------------------------
// DCL — Yeh et al. 2022, Eq. (6)
// ---------------------------------------------------------------------------------------------

/// ```python
/// logits = s * img @ txt.T                                  # s = 10: τ fixed at 0.1
/// one = lambda l: (-l.diagonal() + torch.logsumexp(l.masked_fill(eye, -inf), 1)).mean()
/// i2t, t2i = one(logits), one(logits.T)
/// ```
#[test]
fn dcl_matches_reference() {
    let obj = build(&LossConfig::Dcl(DclConfig::default()));
    assert!(obj.parameters().is_empty(), "τ is fixed by default");
    // dcl(IMG, TXT, scale(0.1))
    let expected = [
        ("loss", -2.329_870_358_4),
        ("image_to_text", -1.667_109_792_4),
        ("text_to_image", -2.992_630_924_4),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
}

#[test]
fn dcl_gradients_and_permutation() {
    // A learnable temperature, so that d/dt is checked too.
    let obj = build(&LossConfig::Dcl(DclConfig {
        temperature: temp(0.25),
    }));
    check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
    let fixed = build(&LossConfig::Dcl(DclConfig::default()));
    check_gradients(&*fixed, &Batch::standard(), &[Field::Image, Field::Text]);
    check_permutation(&*fixed, &Batch::standard());
}

// ---------------------------------------------------------------------------------------------
// Alignment and uniformity — Wang & Isola 2020, §4 (the paper's own PyTorch)
// ---------------------------------------------------------------------------------------------

fn align_uniform_config(alpha: f64, t: f64, align_weight: f64, uniform_weight: f64) -> LossConfig {
    LossConfig::AlignUniform(AlignUniformConfig {
        alpha,
        t,
        align_weight,
        uniform_weight,
    })
}

/// ```python
/// def align_loss(x, y, alpha=2): return (x - y).norm(p=2, dim=1).pow(alpha).mean()
/// def uniform_loss(x, t=2): return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()
/// loss = w_align * align_loss(img, txt, alpha)
///      + w_uniform * (uniform_loss(img, t) + uniform_loss(txt, t)) / 2
/// ```
#[test]
fn align_uniform_matches_reference() {
    let obj = build(&LossConfig::AlignUniform(AlignUniformConfig::default()));
    // align_uniform(IMG, TXT, alpha=2.0, t=2.0, w_align=1.0, w_uniform=1.0)
    let expected = [
        ("loss", -2.026_613_940_1),
        ("align", 0.412_121_831_7),
        ("uniform_image", -2.127_934_973_0),
        ("uniform_text", -2.749_536_570_6),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
    let obj = build(&align_uniform_config(1.5, 1.0, 0.5, 2.0));
    // align_uniform(IMG, TXT, alpha=1.5, t=1.0, w_align=0.5, w_uniform=2.0)
    let expected = [
        ("loss", -2.558_954_964_7),
        ("align", 0.498_209_413_9),
        ("uniform_image", -1.203_939_594_9),
        ("uniform_text", -1.604_120_076_7),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
}

#[test]
fn align_uniform_gradients_and_permutation() {
    for cfg in [
        LossConfig::AlignUniform(AlignUniformConfig::default()),
        align_uniform_config(1.5, 1.0, 0.5, 2.0),
    ] {
        let obj = build(&cfg);
        check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
        check_permutation(&*obj, &Batch::standard());
    }
}

// ---------------------------------------------------------------------------------------------
// TCL — Yang et al. 2022, §3.2 (CMA + IMC)
// ---------------------------------------------------------------------------------------------

fn tcl_config() -> LossConfig {
    LossConfig::Tcl(TclConfig {
        temperature: temp(0.2),
        ..TclConfig::default()
    })
}

/// ```python
/// cross, image, text = ClipLoss()(img, txt, s), ClipLoss()(img, img2, s), ClipLoss()(txt, txt2, s)
/// loss = 1.0 * cross + 0.5 * image + 0.5 * text
/// ```
#[test]
fn tcl_matches_reference() {
    let obj = build(&tcl_config());
    // tcl(IMG, TXT, IMG2, TXT2, scale(0.2), 1.0, 0.5, 0.5)
    let expected = [
        ("loss", 0.752_426_489_8),
        ("cross_modal", 0.569_117_043_9),
        ("image_image", 0.188_591_674_7),
        ("text_text", 0.178_027_217_1),
    ];
    assert_reference(&*obj, &Batch::standard(), &expected, TOL);
}

#[test]
fn tcl_gradients_and_permutation() {
    let obj = build(&tcl_config());
    let fields = [Field::Image, Field::Text, Field::Image2, Field::Text2];
    check_gradients(&*obj, &Batch::standard(), &fields);
    check_permutation(&*obj, &Batch::standard());
}

// ---------------------------------------------------------------------------------------------
// Sum — L = Σ_k w_k · L_k
// ---------------------------------------------------------------------------------------------

fn sum_config() -> LossConfig {
    let part = |weight: f64, loss: LossConfig| SumPart { weight, loss };
    LossConfig::Sum(SumConfig {
        parts: vec![
            part(1.0, clip_config()),
            part(0.5, siglip_config(0.25, -1.5)),
            part(2.0, triplet_config(Mining::Hardest)),
        ],
    })
}

/// ```python
/// 1.0 * ClipLoss()(img, txt, 5) + 0.5 * SigLipLoss()(img, txt, 4, -1.5)
///     + 2.0 * triplet(img, txt, 0.2, "hardest")["loss"]
/// ```
#[test]
fn sum_is_the_weighted_sum_of_its_parts() {
    let params = Params::new(0, &Device::Cpu);
    let obj = sum_config().build(&params.scope("loss")).unwrap();
    let batch = Batch::standard();
    let got = evaluate(&*obj, &batch);
    // sum(w * out["loss"] for w, out in parts.values()) in the reference
    assert!((got[0].1 - 2.153_622_717_5).abs() < TOL, "{got:?}");
    let weighted = got[1].1 + 0.5 * got[4].1 + 2.0 * got[7].1; // clip, siglip, triplet
    assert!((got[0].1 - weighted).abs() < 1e-6, "{got:?}");
    // Terms: `<part>` (unweighted) and `<part>/<term>`, each equal to the part alone.
    let mut expected = vec![("loss".to_string(), got[0].1)];
    for cfg in [
        clip_config(),
        siglip_config(0.25, -1.5),
        triplet_config(Mining::Hardest),
    ] {
        let part = evaluate(&*cfg.build(&params.scope("loss")).unwrap(), &batch);
        expected.push((cfg.name().to_string(), part[0].1));
        expected.extend(
            part[1..]
                .iter()
                .map(|(t, v)| (format!("{}/{t}", cfg.name()), *v)),
        );
    }
    assert_eq!(got, expected);
    // Each part's parameters live under its own name, as when used alone.
    let names: Vec<String> = obj.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "loss.clip.logit_scale",
            "loss.siglip.logit_scale",
            "loss.siglip.logit_bias"
        ]
    );
    let scalars = obj.scalars().unwrap();
    assert!(
        scalars
            .iter()
            .any(|(n, v)| n == "siglip/weight" && *v == 0.5),
        "{scalars:?}"
    );
    assert!(
        scalars
            .iter()
            .any(|(n, v)| n == "clip/logit_scale" && (v - 5.0).abs() < 1e-5),
        "{scalars:?}"
    );
}

#[test]
fn sum_gradients_and_permutation() {
    let obj = build(&sum_config());
    check_gradients(&*obj, &Batch::standard(), &[Field::Image, Field::Text]);
    check_permutation(&*obj, &Batch::standard());
}

#[test]
fn sum_clamps_every_part_and_shares_parameters_with_the_parts_alone() {
    let params = Params::new(0, &Device::Cpu);
    let sum = sum_config().build(&params.scope("loss")).unwrap();
    for (_, v) in sum.parameters() {
        v.set(&Tensor::new(9f32, &Device::Cpu).unwrap()).unwrap();
    }
    sum.after_step().unwrap();
    let clip_alone = clip_config().build(&params.scope("loss")).unwrap();
    assert!(
        (scalar_named(&*clip_alone, "logit_scale") - 100.0).abs() < 1e-3,
        "clamped, and restored alone"
    );
    assert_eq!(
        scalar(params.get("loss.siglip.logit_bias").unwrap().as_tensor()),
        9.0,
        "a bias is not clamped"
    );
}

// ---------------------------------------------------------------------------------------------
// Parameter ownership
// ---------------------------------------------------------------------------------------------

/// The trainable parameters of each built-in objective with its default settings.
fn default_parameters(name: &str) -> &'static [&'static str] {
    match name {
        "siglip" | "focal" => &["logit_scale", "logit_bias"],
        "cloob" | "triplet" | "dcl" | "align_uniform" => &[],
        _ => &["logit_scale"],
    }
}

/// `cfg` with its `temperature` replaced, if it has one.
fn with_temperature(cfg: &LossConfig, t: &TemperatureConfig) -> Option<LossConfig> {
    let mut v = serde_json::to_value(cfg).unwrap();
    v.get("temperature")?;
    v["temperature"] = serde_json::to_value(t).unwrap();
    Some(serde_json::from_value(v).unwrap())
}

#[test]
fn every_objective_owns_its_parameters_under_its_name() {
    for cfg in LossConfig::builtins() {
        let name = cfg.name();
        let params = Params::new(0, &Device::Cpu);
        let obj = cfg.build(&params.scope("loss")).unwrap();
        assert_eq!(obj.name(), name);
        let trainable: Vec<String> = obj.parameters().into_iter().map(|(n, _)| n).collect();
        let expected: Vec<String> = default_parameters(name)
            .iter()
            .map(|p| format!("loss.{name}.{p}"))
            .collect();
        assert_eq!(trainable, expected, "{name}");
        for (n, _) in params.all() {
            assert!(
                n.starts_with(&format!("loss.{name}.")),
                "{name} created {n}"
            );
        }
        assert!(
            params.with_prefix("model.").is_empty(),
            "an objective never creates model parameters"
        );
    }
}

#[test]
fn rebuilding_an_objective_restores_its_trained_values() {
    for cfg in LossConfig::builtins() {
        let params = Params::new(0, &Device::Cpu);
        let first = cfg.build(&params.scope("loss")).unwrap();
        for (k, (_, v)) in first.parameters().into_iter().enumerate() {
            v.set(&Tensor::new(1.25f32 + k as f32, &Device::Cpu).unwrap())
                .unwrap();
        }
        let again = cfg.build(&params.scope("loss")).unwrap();
        for (k, (n, v)) in again.parameters().into_iter().enumerate() {
            assert_eq!(
                scalar(v.as_tensor()),
                1.25 + k as f64,
                "{n} restored, not re-initialised"
            );
        }
        // And the swap back computes the same loss as before.
        let batch = if cfg.name() == "filip" {
            Batch::tokens()
        } else {
            Batch::standard()
        };
        assert_eq!(
            evaluate(&*first, &batch),
            evaluate(&*again, &batch),
            "{}",
            cfg.name()
        );
    }
}

#[test]
fn temperatures_clamp_to_ln_max_scale_after_each_step() {
    let custom = TemperatureConfig {
        init: 0.2,
        learnable: true,
        max_scale: 20.0,
    };
    for cfg in LossConfig::builtins() {
        let Some(cfg) = with_temperature(&cfg, &custom) else {
            continue;
        };
        let params = Params::new(0, &Device::Cpu);
        let obj = cfg.build(&params.scope("loss")).unwrap();
        let t = params
            .get(&format!("loss.{}.logit_scale", cfg.name()))
            .unwrap();
        assert!(
            (scalar(t.as_tensor()) - 5f64.ln()).abs() < 1e-6,
            "{}: t = ln(1/τ)",
            cfg.name()
        );
        for (set, clamped) in [(7.0f32, 20f64.ln()), (-1.0, 0.0), (2.0, 2.0)] {
            t.set(&Tensor::new(set, &Device::Cpu).unwrap()).unwrap();
            obj.after_step().unwrap();
            assert!(
                (scalar(t.as_tensor()) - clamped).abs() < 1e-6,
                "{}: {set} → {clamped}",
                cfg.name()
            );
        }
    }
    // The default: open_clip's bound of 100.
    let params = Params::new(0, &Device::Cpu);
    let clip = LossConfig::default().build(&params.scope("loss")).unwrap();
    let (_, t) = clip.parameters().remove(0);
    assert!((scalar(t.as_tensor()) - (1.0f64 / 0.07).ln()).abs() < 1e-6);
    t.set(&Tensor::new(7f32, &Device::Cpu).unwrap()).unwrap();
    clip.after_step().unwrap();
    assert!((scalar(t.as_tensor()) - 100f64.ln()).abs() < 1e-6);
}

#[test]
fn a_fixed_temperature_is_not_a_parameter() {
    let fixed = TemperatureConfig::fixed(0.2);
    for cfg in LossConfig::builtins() {
        let Some(cfg) = with_temperature(&cfg, &fixed) else {
            continue;
        };
        let obj = build(&cfg);
        let names: Vec<String> = obj.parameters().into_iter().map(|(n, _)| n).collect();
        assert!(
            names.iter().all(|n| !n.ends_with("logit_scale")),
            "{}: {names:?}",
            cfg.name()
        );
        assert!(
            (scalar_named(&*obj, "logit_scale") - 5.0).abs() < 1e-5,
            "{}: fixed at 1/τ",
            cfg.name()
        );
    }
    // The optimizer never moves a fixed temperature, and neither does the clamp after a step —
    // not even outside [1, max_scale] (τ > 1, or a scale above max_scale).
    let odd = TemperatureConfig {
        init: 0.005,
        learnable: false,
        max_scale: 100.0,
    };
    for (t, scale) in [(TemperatureConfig::fixed(2.0), 0.5), (odd, 200.0)] {
        let obj = build(&LossConfig::Clip(ClipLossConfig { temperature: t }));
        obj.after_step().unwrap();
        assert!(
            (scalar_named(&*obj, "logit_scale") - scale).abs() < 1e-4 * scale,
            "fixed at {scale}"
        );
    }
    // SigLIP without a learnable bias either: nothing to train.
    let siglip = LossConfig::Siglip(SiglipConfig {
        temperature: fixed,
        learn_bias: false,
        ..SiglipConfig::default()
    });
    assert!(build(&siglip).parameters().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bad configurations and missing inputs: errors, never panics
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_configurations_are_errors() {
    let part = |weight: f64, loss: LossConfig| SumPart { weight, loss };
    let sum = |parts: Vec<SumPart>| LossConfig::Sum(SumConfig { parts });
    let bad = [
        sum(vec![part(1.0, clip_config()), part(0.5, clip_config())]),
        sum(vec![part(-1.0, clip_config())]),
        sum(vec![part(f64::NAN, clip_config())]),
        sum(vec![]),
        sum(vec![part(1.0, sum(vec![part(1.0, clip_config())]))]),
        LossConfig::Focal(FocalConfig {
            gamma: -0.5,
            ..FocalConfig::default()
        }),
        LossConfig::SoftTargets(SoftTargetsConfig {
            epsilon_end: 1.0,
            ..SoftTargetsConfig::default()
        }),
        LossConfig::SoftTargets(SoftTargetsConfig {
            epsilon_start: -0.1,
            ..SoftTargetsConfig::default()
        }),
        LossConfig::Triplet(TripletConfig {
            margin: -0.1,
            mining: Mining::All,
        }),
        LossConfig::Cloob(CloobConfig {
            inv_tau: 0.0,
            ..CloobConfig::default()
        }),
        LossConfig::Cloob(CloobConfig {
            beta: -1.0,
            ..CloobConfig::default()
        }),
        LossConfig::AlignUniform(AlignUniformConfig {
            alpha: 0.0,
            ..AlignUniformConfig::default()
        }),
        LossConfig::HardNegatives(HardNegativesConfig {
            per_image: 0,
            ..HardNegativesConfig::default()
        }),
        LossConfig::HardNegatives(HardNegativesConfig {
            per_image: 17,
            ..HardNegativesConfig::default()
        }),
        LossConfig::Clip(ClipLossConfig {
            temperature: temp(0.0),
        }),
        LossConfig::Clip(ClipLossConfig {
            temperature: temp(f64::NAN),
        }),
        LossConfig::Clip(ClipLossConfig {
            temperature: TemperatureConfig {
                max_scale: 0.5,
                ..TemperatureConfig::default()
            },
        }),
    ];
    for cfg in bad {
        assert!(
            cfg.build(&Params::new(0, &Device::Cpu).scope("loss"))
                .is_err(),
            "{cfg:?} was accepted"
        );
    }
}

#[test]
fn missing_or_malformed_inputs_are_errors() {
    let full = Batch::standard();
    let tokens = Batch::tokens();
    let edited = |base: &Batch, edit: fn(&mut Batch)| {
        let mut b = base.clone();
        edit(&mut b);
        b
    };
    let two_texts = Batch {
        text_tokens: Some(unit3(&TOKENS[..2])),
        text_mask: Some(tokens.text_mask.as_ref().unwrap().narrow(0, 0, 2).unwrap()),
        ..tokens.clone()
    };
    let cases = [
        (filip_config(), full.clone()),
        (filip_config(), edited(&tokens, |b| b.text_mask = None)),
        (filip_config(), edited(&tokens, |b| b.image_tokens = None)),
        (
            filip_config(),
            tokens.with(Field::TextTokens, unit3(&TOKENS[..2])),
        ),
        (filip_config(), two_texts),
        (multi_positive_config(), edited(&full, |b| b.groups = None)),
        (
            multi_positive_config(),
            edited(&full, |b| b.groups = Some(vec![1, 2, 3])),
        ),
        (
            fn_mask_config(FalseNegativeBy::Group),
            edited(&full, |b| b.groups = None),
        ),
        (
            fn_mask_config(FalseNegativeBy::Group),
            edited(&full, |b| b.groups = Some(vec![1, 2])),
        ),
        (
            fn_mask_config(FalseNegativeBy::Caption),
            edited(&full, |b| b.text_ids = None),
        ),
        (
            fn_mask_config(FalseNegativeBy::Caption),
            edited(&full, |b| b.text_ids = Some(vec![1; 5])),
        ),
        (
            hard_negatives_config(),
            edited(&full, |b| b.extra_text = None),
        ),
        (
            hard_negatives_config(),
            full.with(Field::ExtraText, unit(&EXTRA[..7])),
        ),
        (tcl_config(), edited(&full, |b| b.image2 = None)),
        (tcl_config(), edited(&full, |b| b.text2 = None)),
        (tcl_config(), full.with(Field::Image2, unit(&IMG2[..3]))),
    ];
    for (cfg, batch) in cases {
        let result = build(&cfg).forward(&batch.inputs());
        assert!(result.is_err(), "{} accepted a bad batch", cfg.name());
    }
    // Every objective rejects mismatched or single-pair batches.
    let one = Batch::new(unit(&IMG[..1]), unit(&TXT[..1]));
    let mismatched = Batch::new(unit(&IMG), unit(&TXT[..3]));
    for cfg in LossConfig::builtins().into_iter().chain([sum_config()]) {
        let obj = build(&cfg);
        assert!(obj.forward(&one.inputs()).is_err(), "{}: B = 1", cfg.name());
        assert!(
            obj.forward(&mismatched.inputs()).is_err(),
            "{}: 4 images, 3 texts",
            cfg.name()
        );
    }
}

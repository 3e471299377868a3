//! Objectives that reshape the targets or the negatives — focal, soft targets, triplet,
//! multi-positive, false-negative masking, hard negatives: references, gradients, permutation.

use super::*;

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

pub(super) fn triplet_config(mining: Mining) -> LossConfig {
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

pub(super) fn multi_positive_config() -> LossConfig {
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

pub(super) fn fn_mask_config(by: FalseNegativeBy) -> LossConfig {
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

pub(super) fn hard_negatives_config() -> LossConfig {
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

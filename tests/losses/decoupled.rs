//! DCL, alignment and uniformity, TCL and weighted sums: references, gradients, permutation.

use super::*;

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

pub(super) fn tcl_config() -> LossConfig {
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

pub(super) fn sum_config() -> LossConfig {
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

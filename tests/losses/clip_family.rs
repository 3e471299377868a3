//! CLIP, SigLIP (with the fused kernels), CLOOB and FILIP: references, gradients, permutation.

use super::*;

// ---------------------------------------------------------------------------------------------
// CLIP — Radford et al. 2021, Fig. 3; open_clip `ClipLoss`
// ---------------------------------------------------------------------------------------------

pub(super) fn clip_config() -> LossConfig {
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

pub(super) fn siglip_config(tau: f64, bias: f64) -> LossConfig {
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

pub(super) fn filip_config() -> LossConfig {
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

//! Parameter ownership, temperatures and their clamps, and bad configurations.

use super::*;

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

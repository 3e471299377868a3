//! Objectives: reference values, gradient checks, invariances, parameter ownership.

use crate::util::assert_close;
use candle_core::{Device, Tensor, Var};
use kernels::check::finite_difference_grad;
use workbench::loss::{ClipLossConfig, LossConfig, LossInputs};
use workbench::params::Params;

fn embeddings() -> (Tensor, Tensor) {
    let img = Tensor::new(
        &[[1f32, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]],
        &Device::Cpu,
    )
    .unwrap();
    let txt = Tensor::new(
        &[[0.8f32, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        &Device::Cpu,
    )
    .unwrap();
    (img, txt)
}

fn clip_with_scale(params: &Params, scale: f64) -> Box<dyn workbench::loss::Objective> {
    let cfg = LossConfig::Clip(ClipLossConfig {
        init_temperature: 1.0 / scale,
        ..ClipLossConfig::default()
    });
    cfg.build(&params.scope("loss")).unwrap()
}

/// open_clip's `ClipLoss` on fixed embeddings with `logit_scale = 2.5`. Expected values from the
/// same formula in NumPy (equivalent PyTorch:
/// `logits = 2.5 * img @ txt.T; F.cross_entropy(logits, arange(3))`, and on `logits.T`):
/// ```python
/// logits = 2.5 * img @ txt.T
/// i2t = np.mean(logsumexp(logits, 1) - np.diag(logits))   # 0.6226092398665367
/// t2i = np.mean(logsumexp(logits, 0) - np.diag(logits))   # 0.610967452214013
/// loss = (i2t + t2i) / 2                                    # 0.6167883460402749
/// ```
#[test]
fn clip_loss_matches_open_clip_formula() {
    let params = Params::new(0, &Device::Cpu);
    let loss = clip_with_scale(&params, 2.5);
    let (img, txt) = embeddings();
    let out = loss.forward(&LossInputs::new(&img, &txt)).unwrap();
    let v = out.loss.to_scalar::<f32>().unwrap();
    assert!((v - 0.616_788_3).abs() < 1e-6, "{v}");
    let terms: Vec<(String, f32)> = out
        .terms
        .iter()
        .map(|(n, t)| (n.clone(), t.to_scalar::<f32>().unwrap()))
        .collect();
    assert_eq!(terms[0].0, "image_to_text");
    assert!((terms[0].1 - 0.622_609_24).abs() < 1e-6, "{terms:?}");
    assert_eq!(terms[1].0, "text_to_image");
    assert!((terms[1].1 - 0.610_967_45).abs() < 1e-6, "{terms:?}");
    assert_eq!(loss.scalars().unwrap()[0].0, "logit_scale");
    assert!((loss.scalars().unwrap()[0].1 - 2.5).abs() < 1e-5);
}

#[test]
fn clip_loss_gradients_match_finite_differences() {
    let params = Params::new(0, &Device::Cpu);
    let loss = clip_with_scale(&params, 3.0);
    let (img, txt) = embeddings();
    let (vi, vt) = (
        Var::from_tensor(&img).unwrap(),
        Var::from_tensor(&txt).unwrap(),
    );
    let out = loss
        .forward(&LossInputs::new(vi.as_tensor(), vt.as_tensor()))
        .unwrap();
    let grads = out.loss.backward().unwrap();
    let f_img = |x: &Tensor| loss.forward(&LossInputs::new(x, &txt)).map(|o| o.loss);
    let f_txt = |x: &Tensor| loss.forward(&LossInputs::new(&img, x)).map(|o| o.loss);
    assert_close(
        grads.get(&vi).unwrap(),
        &finite_difference_grad(&f_img, &img, 1e-2).unwrap(),
        2e-3,
        "d/d image",
    );
    assert_close(
        grads.get(&vt).unwrap(),
        &finite_difference_grad(&f_txt, &txt, 1e-2).unwrap(),
        2e-3,
        "d/d text",
    );
    // d/dt of the learnable log-scale: perturb the parameter itself.
    let (name, t) = loss.parameters().remove(0);
    assert_eq!(name, "loss.clip.logit_scale");
    let analytic = grads.get(&t).unwrap().to_scalar::<f32>().unwrap();
    let base = t.as_tensor().to_scalar::<f32>().unwrap();
    let at = |v: f32| {
        t.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
        loss.forward(&LossInputs::new(&img, &txt))
            .unwrap()
            .loss
            .to_scalar::<f32>()
            .unwrap()
    };
    let numeric = (at(base + 1e-2) - at(base - 1e-2)) / 2e-2;
    assert!((analytic - numeric).abs() < 2e-3, "{analytic} vs {numeric}");
}

#[test]
fn clip_loss_is_invariant_to_batch_permutation() {
    let params = Params::new(0, &Device::Cpu);
    let loss = clip_with_scale(&params, 5.0);
    let (img, txt) = embeddings();
    let perm = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
    let a = loss
        .forward(&LossInputs::new(&img, &txt))
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap();
    let (pi, pt) = (
        img.index_select(&perm, 0).unwrap(),
        txt.index_select(&perm, 0).unwrap(),
    );
    let b = loss
        .forward(&LossInputs::new(&pi, &pt))
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap();
    assert!((a - b).abs() < 1e-6);
}

#[test]
fn temperature_is_owned_restored_and_clamped_like_open_clip() {
    let params = Params::new(0, &Device::Cpu);
    let loss = LossConfig::default().build(&params.scope("loss")).unwrap();
    let (_, t) = loss.parameters().remove(0);
    assert!((t.as_tensor().to_scalar::<f32>().unwrap() - (1.0f32 / 0.07).ln()).abs() < 1e-6);
    t.set(&Tensor::new(7.0f32, &Device::Cpu).unwrap()).unwrap();
    loss.after_step().unwrap();
    assert!(
        (t.as_tensor().to_scalar::<f32>().unwrap() - 100f32.ln()).abs() < 1e-6,
        "clamped to ln 100"
    );
    // Building the objective again (a swap back) restores the trained value, not the init.
    let again = LossConfig::default().build(&params.scope("loss")).unwrap();
    assert!((again.scalars().unwrap()[0].1 - 100.0).abs() < 1e-3);
    assert_eq!(
        params.with_prefix("model.").len(),
        0,
        "an objective never creates model parameters"
    );
    // Frozen temperature: no trainable parameters.
    let frozen = LossConfig::Clip(ClipLossConfig {
        freeze_temperature: true,
        ..ClipLossConfig::default()
    });
    assert!(
        frozen
            .build(&params.scope("loss"))
            .unwrap()
            .parameters()
            .is_empty()
    );
}

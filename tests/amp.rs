//! Mixed precision (`[train] precision = "bf16"`): agreement with f32 from the same seed, f32
//! master weights and checkpoints, resume in either precision, errors, non-finite values and
//! inspection. The bounds are measured on the `tests/util.rs` tiny configuration (seed 0) and
//! documented in the README; each leaves a margin of about 3× over the measured value.

use crate::util::{snapshot, tiny_config, tmpdir};
use candle_core::{D, DType, Tensor};
use std::path::Path;
use workbench::Error;
use workbench::config::RunConfig;
use workbench::model::{Capture, ClipModel, Precision};
use workbench::params::Params;
use workbench::train::Trainer;

fn trainer(precision: Precision) -> Trainer {
    let mut cfg = tiny_config();
    cfg.train.precision = precision;
    Trainer::new(cfg).unwrap()
}

fn losses(t: &mut Trainer, n: usize) -> Vec<f32> {
    (0..n).map(|_| t.step().unwrap().loss).collect()
}

#[test]
fn the_first_bf16_loss_is_within_the_documented_tolerance_of_f32() {
    let (mut f, mut b) = (trainer(Precision::F32), trainer(Precision::Bf16));
    let batch = f.next_batch().unwrap();
    let (lf, lb) = (
        f.step_on(&batch).unwrap().loss,
        b.step_on(&batch).unwrap().loss,
    );
    let rel = ((lb - lf) / lf).abs();
    eprintln!("first-step loss: f32 {lf}, bf16 {lb}, relative difference {rel:e}");
    assert!(lf != lb, "bf16 must actually round something");
    assert!(rel < 3e-3, "f32 {lf} vs bf16 {lb}: relative {rel:e}");
}

/// Every parameter's gradient of the CLIP loss on one batch, flattened in name order.
fn flat_gradient(precision: Precision, batch: &workbench::data::Batch, vocab: usize) -> Vec<f32> {
    let cfg = tiny_config();
    let params = Params::new(cfg.train.seed, &candle_core::Device::Cpu);
    let model = ClipModel::new(
        &cfg.model,
        cfg.data.image_size,
        vocab,
        cfg.tokenizer.context_length,
        &params.scope("model").with_precision(precision),
    )
    .unwrap();
    let emb = model.forward(batch, Capture::NONE).unwrap();
    let logits = (emb
        .image
        .embedding
        .matmul(&emb.text.embedding.t().unwrap())
        .unwrap()
        * 14.0)
        .unwrap();
    let (i2t, t2i) = workbench::loss::symmetric_cross_entropy(&logits).unwrap();
    let loss = ((i2t + t2i).unwrap() / 2.0).unwrap();
    let grads = loss.backward().unwrap();
    let mut flat = Vec::new();
    for (name, var) in params.all() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(
            g.dtype(),
            DType::F32,
            "{name}: gradients of f32 masters are f32"
        );
        flat.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    flat
}

#[test]
fn bf16_gradients_point_the_way_of_the_f32_gradients() {
    let mut t = trainer(Precision::F32);
    let batch = t.next_batch().unwrap();
    let vocab = t.tokenizer().vocab_size();
    let f = flat_gradient(Precision::F32, &batch, vocab);
    let b = flat_gradient(Precision::Bf16, &batch, vocab);
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| f64::from(a * b)).sum::<f64>();
    let cos = dot(&f, &b) / (dot(&f, &f) * dot(&b, &b)).sqrt();
    let rel_norm = (dot(&b, &b) / dot(&f, &f)).sqrt() - 1.0;
    eprintln!("gradient cosine {cos}, norm ratio − 1 {rel_norm:e}");
    assert!(cos > 0.995, "cosine {cos}");
    assert!(rel_norm.abs() < 0.02, "norm ratio − 1 = {rel_norm}");
}

/// The 30-step run whose losses bf16 and f32 are compared (here on the CPU; `gpu.rs` on a GPU).
pub fn learning_run(precision: Precision) -> RunConfig {
    let mut cfg = tiny_config();
    cfg.train.precision = precision;
    cfg.train.steps = 30;
    cfg.train.lr = 3e-3;
    cfg.train.warmup_steps = 3;
    cfg
}

#[test]
fn a_bf16_run_learns_like_the_f32_run() {
    let run = |precision| losses(&mut Trainer::new(learning_run(precision)).unwrap(), 30);
    let (lf, lb) = (run(Precision::F32), run(Precision::Bf16));
    let tail = |l: &[f32]| l[25..].iter().sum::<f32>() / 5.0;
    let (tf, tb) = (tail(&lf), tail(&lb));
    eprintln!("f32 {lf:?}\nbf16 {lb:?}\nmean of the last 5: f32 {tf}, bf16 {tb}");
    assert!(tb < lb[0] * 0.85, "bf16 loss fell from {} to {tb}", lb[0]);
    assert!(
        ((tb - tf) / tf).abs() < 0.03,
        "mean of the last five losses: f32 {tf}, bf16 {tb}"
    );
}

#[test]
fn parameters_optimizer_state_and_checkpoints_stay_f32() {
    let dir = tmpdir("amp-f32-masters");
    let mut t = trainer(Precision::Bf16);
    losses(&mut t, 2);
    for (name, var) in t.params().all() {
        assert_eq!(var.dtype(), DType::F32, "{name}");
    }
    t.save_checkpoint(&dir.join("checkpoint")).unwrap();
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let st = workbench::checkpoint::load_tensors(
            &dir.join("checkpoint").join(file),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert!(!st.is_empty());
        for (name, tensor) in st {
            assert_eq!(tensor.dtype(), DType::F32, "{file}: {name}");
        }
    }
    let (_, state) = Trainer::read_state(&dir).unwrap();
    assert_eq!(state.config.train.precision, Precision::Bf16);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bf16_run_resumes_in_bf16_bit_identically_or_in_f32_when_told() {
    let dir = tmpdir("amp-resume");
    let mut straight = trainer(Precision::Bf16);
    let all = losses(&mut straight, 8);
    let mut first = trainer(Precision::Bf16);
    let head = losses(&mut first, 4);
    first.save_checkpoint(&dir.join("checkpoint")).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir, None).unwrap();
    assert_eq!(resumed.config().train.precision, Precision::Bf16);
    let tail = losses(&mut resumed, 4);
    assert_eq!([head, tail].concat(), all, "bit-identical continuation");
    assert_eq!(snapshot(&resumed), snapshot(&straight));

    // The same checkpoint continued in f32: a different model numerically, the same run.
    let mut in_f32 =
        Trainer::resume_with(&dir, None, |c| c.train.precision = Precision::F32).unwrap();
    assert_eq!(in_f32.config().train.precision, Precision::F32);
    assert_eq!(in_f32.completed_steps(), 4);
    let tail32 = losses(&mut in_f32, 4);
    assert_ne!(tail32, all[4..], "the f32 continuation computes in f32");
    for (a, b) in tail32.iter().zip(&all[4..]) {
        assert!(((a - b) / b).abs() < 0.01, "f32 {a} vs bf16 {b}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn precision_is_f32_unless_configured_and_anything_else_is_an_error() {
    let p = Path::new("run.toml");
    let cfg = RunConfig::from_toml("[train]\nsteps = 5\n", p).unwrap();
    assert_eq!(cfg.train.precision, Precision::F32);
    let cfg = RunConfig::from_toml("[train]\nprecision = \"bf16\"\n", p).unwrap();
    assert_eq!(cfg.train.precision, Precision::Bf16);
    // The written configuration says it, and reads back.
    let back = RunConfig::from_toml(&cfg.to_toml().unwrap(), p).unwrap();
    assert_eq!(back, cfg);
    for bad in ["\"fp16\"", "\"BF16\"", "16"] {
        let err = RunConfig::from_toml(&format!("[train]\nprecision = {bad}\n"), p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("run.toml") && err.contains("train.precision"),
            "{bad}: {err}"
        );
        assert!(
            bad == "16" || (err.contains("f32") && err.contains("bf16")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_non_finite_bf16_loss_still_names_step_and_term() {
    let mut t = trainer(Precision::Bf16);
    losses(&mut t, 2);
    let before = snapshot(&t);
    let mut batch = t.next_batch().unwrap();
    let dims = batch.images.dims().to_vec();
    let mut pixels = batch
        .images
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    pixels[7] = f32::NAN;
    batch.images = Tensor::from_vec(pixels, dims, &candle_core::Device::Cpu).unwrap();
    let err = t.step_on(&batch).unwrap_err();
    match &err {
        Error::NonFinite { step, term } => {
            assert_eq!((*step, term.as_str()), (3, "image_to_text"));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("step 3"), "{err}");
    assert_eq!(snapshot(&t), before, "parameters untouched");
}

#[test]
fn a_bf16_model_hands_back_finite_f32_attention_maps() {
    let mut t = trainer(Precision::Bf16);
    let batch = t.next_batch().unwrap();
    let model = t.model();
    let image = model.encode_image(&batch.images, Capture::ALL).unwrap();
    let text = model
        .encode_text(&batch.tokens, &batch.eos, Capture::ALL)
        .unwrap();
    for maps in [image.attentions.unwrap(), text.attentions.unwrap()] {
        for w in maps {
            assert_eq!(w.dtype(), DType::F32);
            let sums = w.sum(D::Minus1).unwrap().flatten_all().unwrap();
            for s in sums.to_vec1::<f32>().unwrap() {
                assert!((s - 1.0).abs() < 1e-5, "a row of weights sums to {s}");
            }
        }
    }
    for e in [image.embedding, image.tokens.unwrap(), text.embedding] {
        assert_eq!(e.dtype(), DType::F32);
        let v = e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn bf16_attention_products_round_only_their_operands() {
    let dev = candle_core::Device::Cpu;
    let qkv = Tensor::randn(0f32, 1.0, (2, 5, 24), &dev).unwrap();
    for causal in [false, true] {
        let reference = kernels::attention::attention_weights_reference(&qkv, 2, causal).unwrap();
        let same = kernels::attention::attention_weights_in(&qkv, 2, causal, DType::F32).unwrap();
        crate::util::assert_close(&same, &reference, 0.0, "f32 weights are the reference");
        let w = kernels::attention::attention_weights_in(&qkv, 2, causal, DType::BF16).unwrap();
        assert_eq!(w.dtype(), DType::F32);
        crate::util::assert_close(&w, &reference, 2e-2, "bf16 weights");
        let out = kernels::attention::apply_weights_in(&w, &qkv, 2, DType::BF16).unwrap();
        let out_ref = kernels::attention::apply_weights(&reference, &qkv, 2).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        crate::util::assert_close(&out, &out_ref, 5e-2, "bf16 attention output");
    }
}

#[test]
fn the_command_line_takes_a_precision_and_names_a_bad_one() {
    use clap::Parser as _;
    use viz::cli::{Cli, Command};
    let cli = Cli::try_parse_from(["workbench", "train", "--precision", "bf16"]).unwrap();
    let Command::Train(a) = cli.command else {
        panic!("not train")
    };
    assert_eq!(a.precision, Some(Precision::Bf16));
    let cli = Cli::try_parse_from(["workbench", "train"]).unwrap();
    let Command::Train(a) = cli.command else {
        panic!("not train")
    };
    assert_eq!(a.precision, None, "the configuration decides");
    let e = Cli::try_parse_from(["workbench", "train", "--precision", "fp16"])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
}

//! `train.local_loss`: each rank computes the loss of its own rows of the gathered batch
//! against every row of the other side (OpenCLIP's `local_loss`). The mean of the ranks'
//! local losses is the whole batch's loss, checked here on the objectives directly; through
//! the trainer, W ranks with local losses report the loss and terms of one process and end
//! with its parameters (the bounds of `equivalence.rs`); objectives that couple every row with
//! every other are refused, at the start and at a swap.

use super::equivalence::{config, ranks_against_one_process};
use crate::util::tiny_config;
use candle_core::{Device, Tensor};
use workbench::control::Command;
use workbench::loss::{LocalRows, LossConfig, LossInputs};
use workbench::params::Params;
use workbench::train::Trainer;

/// Every built-in objective with a local loss, with its default settings, and a weighted sum
/// of two of them.
const LOCAL: [&str; 14] = [
    r#"kind = "clip""#,
    r#"kind = "siglip""#,
    r#"kind = "filip""#,
    r#"kind = "multi_positive""#,
    r#"kind = "dcl""#,
    r#"kind = "focal""#,
    r#"kind = "soft_targets""#,
    r#"kind = "triplet""#,
    r#"kind = "fn_mask""#,
    r#"kind = "hard_negatives""#,
    r#"kind = "tcl""#,
    r#"
        kind = "cloob"
        hopfield = false
    "#,
    r#"
        kind = "sum"
        [[parts]]
        weight = 1.0
        loss = { kind = "clip" }
        [[parts]]
        weight = 0.5
        loss = { kind = "siglip" }
    "#,
    r#"
        kind = "sum"
        [[parts]]
        weight = 1.0
        loss = { kind = "hard_negatives" }
        [[parts]]
        weight = 0.3
        loss = { kind = "fn_mask" }
    "#,
];

/// The other settings whose local losses take another path: checked on the objectives
/// directly, beside [`LOCAL`].
const VARIANTS: [&str; 10] = [
    r#"
        kind = "focal"
        variant = "softmax"
        gamma = 0.5
    "#,
    r#"
        kind = "soft_targets"
        epsilon_start = 0.1
        schedule = "constant"
    "#,
    r#"
        kind = "triplet"
        mining = "all"
    "#,
    r#"
        kind = "triplet"
        mining = "semi_hard"
        margin = 0.5
    "#,
    r#"
        kind = "triplet"
        mining = "random"
    "#,
    r#"
        kind = "fn_mask"
        by = "caption"
    "#,
    r#"
        kind = "fn_mask"
        by = "similarity"
        threshold = 0.3
    "#,
    r#"
        kind = "cloob"
        hopfield = false
        loob = false
    "#,
    r#"
        kind = "hard_negatives"
        per_image = 1
    "#,
    r#"
        kind = "tcl"
        cross_weight = 0.0
    "#,
];

/// Unit rows of `(n, e)` from a seeded generator.
fn embeddings(n: usize, e: usize, seed: u64) -> Tensor {
    let v = workbench::rng::Rng::new(seed).normal_vec(n * e, 1.0);
    let t = Tensor::from_vec(v, (n, e), &Device::Cpu).unwrap();
    let norm = t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    t.broadcast_div(&norm).unwrap()
}

#[test]
fn the_mean_of_the_local_losses_is_the_whole_batch_loss() {
    let (image, text) = (embeddings(12, 8, 1), embeddings(12, 8, 2));
    // Per-token inputs for FILIP: 4 patches and 5 token positions per row, captions of 2 to
    // 5 tokens.
    let patches = embeddings(12 * 4, 8, 3).reshape((12, 4, 8)).unwrap();
    let tokens = embeddings(12 * 5, 8, 4).reshape((12, 5, 8)).unwrap();
    let mask: Vec<f32> = (0..12 * 5)
        .map(|k| f32::from(u8::from(k % 5 < 2 + (k / 5) % 4)))
        .collect();
    let mask = Tensor::from_vec(mask, (12, 5), &Device::Cpu).unwrap();
    // Groups for multi-positive and false-negative masking: pairs of rows describe the same
    // content, and a triple; repeated captions, by other rows.
    let groups: Vec<u64> = vec![0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6, 7];
    let text_ids: Vec<u64> = vec![0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7];
    // Second views for TCL.
    let (image2, text2) = (embeddings(12, 8, 5), embeddings(12, 8, 6));
    for loss in LOCAL.iter().chain(&VARIANTS) {
        let cfg: LossConfig = toml::from_str(loss).unwrap();
        let params = Params::new(0, &Device::Cpu);
        let objective = cfg.build(&params.scope("loss")).unwrap();
        assert!(objective.supports_local_loss(), "{loss}");
        // Hard-negative captions, as many per image as the objective asks for.
        let extra = embeddings(12 * objective.needs().hard_negatives.max(1), 8, 7);
        let vars: Vec<(candle_core::Var, &str)> = [
            (&image, "image"),
            (&text, "text"),
            (&patches, "patches"),
            (&tokens, "tokens"),
            (&extra, "hard negatives"),
            (&image2, "second image view"),
            (&text2, "second caption"),
        ]
        .into_iter()
        .map(|(t, name)| (candle_core::Var::from_tensor(t).unwrap(), name))
        .collect();
        let inputs = |local| LossInputs {
            image_tokens: Some(vars[2].0.as_tensor()),
            text_tokens: Some(vars[3].0.as_tensor()),
            text_mask: Some(&mask),
            groups: Some(&groups),
            text_ids: Some(&text_ids),
            extra_text: Some(vars[4].0.as_tensor()),
            image2: Some(vars[5].0.as_tensor()),
            text2: Some(vars[6].0.as_tensor()),
            local,
            ..LossInputs::new(vars[0].0.as_tensor(), vars[1].0.as_tensor())
        };
        let whole = objective.forward(&inputs(None)).unwrap();
        let whole_scalars = objective.scalars().unwrap();
        let whole_grads = whole.loss.backward().unwrap();
        let whole_loss = whole.loss.to_scalar::<f32>().unwrap();
        for w in [2, 3, 4] {
            let len = 12 / w;
            let mut mean = 0f32;
            let mut terms = vec![0f32; whole.terms.len()];
            let mut scalars = vec![0f32; whole_scalars.len()];
            let mut total: Option<Tensor> = None;
            for r in 0..w {
                let x = inputs(Some(LocalRows {
                    start: r * len,
                    len,
                }));
                let out = objective.forward(&x).unwrap();
                // A scalar measured on the batch is the rank's share; the trainer reports the
                // mean over ranks, which must be the whole batch's.
                for (s, (_, v)) in scalars.iter_mut().zip(objective.scalars().unwrap()) {
                    *s += v / w as f32;
                }
                mean += out.loss.to_scalar::<f32>().unwrap() / w as f32;
                let share = (&out.loss / w as f64).unwrap();
                total = Some(match total {
                    None => share,
                    Some(t) => (t + share).unwrap(),
                });
                for (t, (_, v)) in terms.iter_mut().zip(&out.terms) {
                    *t += v.to_scalar::<f32>().unwrap() / w as f32;
                }
            }
            assert!(
                (mean - whole_loss).abs() <= 1e-6 * whole_loss.abs(),
                "{loss} W={w}: mean of local losses {mean} vs {whole_loss}"
            );
            // The gradient of the mean of the local losses is the whole loss's gradient.
            let grads = total.unwrap().backward().unwrap();
            for (v, side) in &vars {
                let (Some(a), Some(b)) = (grads.get(v), whole_grads.get(v)) else {
                    assert_eq!(
                        grads.get(v).is_some(),
                        whole_grads.get(v).is_some(),
                        "{side}"
                    );
                    continue;
                };
                let scale = crate::util::max_abs(b) as f32;
                let d = kernels::check::max_abs_diff(a, b).unwrap() as f32;
                assert!(
                    d <= 1e-5 * scale,
                    "{loss} W={w}: ∂/∂{side} differs by {d:e}"
                );
            }
            for ((name, v), t) in whole.terms.iter().zip(&terms) {
                let v = v.to_scalar::<f32>().unwrap();
                assert!(
                    (t - v).abs() <= 1e-5 * v.abs().max(1e-3),
                    "{loss} W={w} {name}: {t} vs {v}"
                );
            }
            for ((name, v), s) in whole_scalars.iter().zip(&scalars) {
                assert!(
                    (s - v).abs() <= 1e-5 * v.abs().max(1e-3),
                    "{loss} W={w} scalar {name}: {s} vs {v}"
                );
            }
        }
    }
}

#[test]
fn w_ranks_with_local_losses_train_exactly_like_one_process() {
    for loss in LOCAL {
        let mut cfg = config(loss);
        cfg.train.local_loss = true;
        ranks_against_one_process(&cfg, &format!("local {loss}"));
    }
}

#[test]
fn objectives_over_the_whole_batch_are_refused_with_local_losses() {
    let mut cfg = tiny_config();
    cfg.train.local_loss = true;
    for name in ["cloob", "align_uniform"] {
        cfg.loss = LossConfig::by_name(name).unwrap();
        let e = Trainer::new(cfg.clone()).err().unwrap().to_string();
        assert!(e.contains("train.local_loss") && e.contains(name), "{e}");
    }
    // A swap to one is rejected, and the run keeps its objective.
    cfg.loss = LossConfig::by_name("clip").unwrap();
    let mut t = Trainer::new(cfg).unwrap();
    let swap = Command::Swap {
        loss: LossConfig::by_name("cloob").unwrap(),
    };
    let e = t.apply(&swap).unwrap_err().to_string();
    assert!(e.contains("train.local_loss"), "{e}");
    assert_eq!(t.objective().name(), "clip");
    // Without local losses the same swap goes through.
    let mut t = Trainer::new(tiny_config()).unwrap();
    t.apply(&swap).unwrap();
    assert_eq!(t.objective().name(), "cloob");
}

/// A CLIP loss at a fixed temperature that records the rows it was asked for.
struct RecordsRows(std::sync::Arc<std::sync::Mutex<Vec<Option<LocalRows>>>>);

impl workbench::loss::Objective for RecordsRows {
    fn name(&self) -> &'static str {
        "records_rows"
    }
    fn supports_local_loss(&self) -> bool {
        true
    }
    fn forward(&self, x: &LossInputs<'_>) -> candle_core::Result<workbench::loss::LossOutput> {
        self.0.lock().unwrap().push(x.local);
        let rows = x.local.unwrap_or(LocalRows {
            start: 0,
            len: x.image.dim(0)?,
        });
        let logits = (x
            .image
            .narrow(0, rows.start, rows.len)?
            .matmul(&x.text.t()?)?
            * 10.0)?;
        Ok(workbench::loss::LossOutput {
            loss: workbench::loss::local_cross_entropy(&logits, rows.start)?,
            terms: Vec::new(),
        })
    }
    fn parameters(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}

#[test]
fn each_rank_is_given_its_own_rows_only_with_local_losses() {
    use std::sync::{Arc, Mutex};
    for local_loss in [true, false] {
        let mut cfg = tiny_config(); // global batch 16
        cfg.train.steps = 2;
        cfg.train.local_loss = local_loss;
        let seen: Vec<Arc<Mutex<Vec<Option<LocalRows>>>>> =
            (0..2).map(|_| Arc::default()).collect();
        let record = seen.clone();
        workbench::parallel::DataParallel::new(&["cpu", "cpu"])
            .unwrap()
            .fit_with(
                move |rank, _| {
                    let mut t = Trainer::new(cfg.clone())?;
                    t.set_objective(Box::new(RecordsRows(record[rank].clone())))?;
                    Ok(t)
                },
                |_| std::ops::ControlFlow::Continue(()),
            )
            .unwrap();
        for (rank, seen) in seen.iter().enumerate() {
            let want = local_loss.then_some(LocalRows {
                start: rank * 8,
                len: 8,
            });
            let seen = seen.lock().unwrap();
            // The two steps; then rank 0's evaluation, which is not data parallel.
            assert_eq!(seen[..2], [want; 2], "rank {rank}");
            assert!(
                seen[2..].iter().all(Option::is_none),
                "rank {rank}: {seen:?}"
            );
        }
    }
}

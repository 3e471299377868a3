//! NCCL on GPUs (feature `nccl`): world size 1 through the same code path as more ranks, and
//! with two or more GPUs, W ranks against one process. Without a usable GPU every test prints
//! that it was skipped and why, and checks nothing.

use super::equivalence::{config, max_param_diff, plain_run};
use crate::util::snapshot;
use candle_core::{Device, Tensor, Var};
use std::ops::ControlFlow;
use std::sync::Arc;
use workbench::events::Event;
use workbench::parallel::{Communicator, DataParallel, NcclComm, NcclGroup, gather_with_grad};

/// The number of usable GPUs (at most 8), printing why a test is skipped when below `need`.
fn gpus(test: &str, need: usize) -> usize {
    let n = (0..8).take_while(|&i| Device::new_cuda(i).is_ok()).count();
    if n < need {
        eprintln!("{test}: skipped, needs {need} usable CUDA device(s), found {n}");
    }
    n
}

#[test]
fn nccl_on_one_gpu_is_the_identity_and_gather_keeps_the_gradient() {
    if gpus("nccl_on_one_gpu", 1) < 1 {
        return;
    }
    let dev = Device::new_cuda(0).unwrap();
    let group = NcclGroup::new(1).unwrap();
    let comm: Arc<dyn Communicator> = Arc::new(NcclComm::join(&group, &dev, 0).unwrap());
    assert_eq!((comm.rank(), comm.world_size()), (0, 1));
    let x = Tensor::new(&[[1f32, -2.0], [3.5, 4.0], [0.25, 6.0]], &dev).unwrap();
    let want = x.to_vec2::<f32>().unwrap();
    assert_eq!(comm.all_gather(&x).unwrap().to_vec2::<f32>().unwrap(), want);
    assert_eq!(
        comm.reduce_scatter(&x).unwrap().to_vec2::<f32>().unwrap(),
        want
    );
    assert_eq!(comm.all_reduce(&x).unwrap().to_vec2::<f32>().unwrap(), want);
    // A CPU tensor is refused with the reason, not sent.
    let cpu = Tensor::new(&[[1f32]], &Device::Cpu).unwrap();
    assert!(
        comm.all_reduce(&cpu)
            .unwrap_err()
            .to_string()
            .contains("CUDA")
    );
    let v = Var::from_tensor(&x).unwrap();
    let g = gather_with_grad(v.as_tensor(), &comm).unwrap();
    let grads = (g * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = grads.get(&v).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(grad, vec![vec![3.0; 2]; 3]);
    // Aborted (a rank failed), the group refuses every later collective at once, naming the
    // rank and why, and a second abort is harmless.
    comm.abort("its loader failed");
    comm.abort("again");
    assert!(group.broken().is_some());
    for e in [
        comm.all_reduce(&x).unwrap_err(),
        comm.all_gather(&x).unwrap_err(),
        comm.reduce_scatter(&x).unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(
            e.contains("rank 0 left the group (its loader failed)"),
            "{e}"
        );
    }
}

#[test]
fn a_gpu_rank_that_fails_mid_run_ends_its_group_with_its_error() {
    if gpus("a_gpu_rank_that_fails", 1) < 1 {
        return;
    }
    // One NCCL rank per GPU present (at most two); the last one's objective fails at its
    // second step, after the step's gather, so that the other ranks are inside the step's
    // collectives when it leaves. Without the abort they would wait there for ever.
    let w = gpus("a_gpu_rank_that_fails", 2).clamp(1, 2);
    let devices: Vec<String> = (0..w).map(|i| format!("cuda:{i}")).collect();
    let mut cfg = config(r#"kind = "clip""#);
    cfg.train.steps = 4;
    let started = std::time::Instant::now();
    let e = DataParallel::new(&devices)
        .unwrap()
        .fit_with(
            move |rank, device| {
                let mut c = cfg.clone();
                c.train.device = device.to_string();
                let mut t = workbench::train::Trainer::new(c)?;
                // The same objective on every rank (the same parameters to all-reduce).
                let at = if rank == w - 1 { 1 } else { usize::MAX };
                t.set_objective(crate::util::FailsAtCall::boxed(
                    at,
                    "the objective fails at step 2",
                ))?;
                Ok(t)
            },
            |_| ControlFlow::Continue(()),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("fails at step 2"), "{e}");
    println!(
        "a GPU rank failing mid-run on {w} GPU(s) ended the group in {:.1} s: {e}",
        started.elapsed().as_secs_f64()
    );
}

/// W GPU ranks (NCCL) against one process on GPU 0 with the global batch.
fn gpu_ranks_against_one_process(w: usize) {
    gpu_ranks_against_one_process_with(w, false);
}

/// [`gpu_ranks_against_one_process`], the ranks computing local losses when `local_loss`.
fn gpu_ranks_against_one_process_with(w: usize, local_loss: bool) {
    let mut cfg = config(r#"kind = "clip""#);
    cfg.train.device = "cuda:0".into();
    cfg.train.local_loss = local_loss;
    let (single, reference) = plain_run(&cfg);
    let devices: Vec<String> = (0..w).map(|i| format!("cuda:{i}")).collect();
    let mut stats = Vec::new();
    let run = DataParallel::new(&devices)
        .unwrap()
        .fit(&cfg, None, |e| {
            if let Event::Step(s) = e {
                stats.push(s.clone());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.len(), single.len());
    for (s, p) in stats.iter().zip(&single) {
        let d = (s.loss - p.loss).abs() / p.loss.abs();
        assert!(
            d <= 1e-5,
            "W={w} step {}: loss {} vs {}",
            s.step,
            s.loss,
            p.loss
        );
    }
    let want = snapshot(&reference);
    let ranks: Vec<_> = run.trainers.iter().map(snapshot).collect();
    let dp = max_param_diff(&ranks[0], &want);
    eprintln!(
        "NCCL W={w}{}: parameters after 3 steps within {dp:e} of one GPU",
        if local_loss { ", local losses" } else { "" }
    );
    assert!(dp <= 1e-4, "W={w}: parameters differ by {dp:e}");
    for (r, snap) in ranks.iter().enumerate() {
        assert!(*snap == ranks[0], "W={w}: rank {r} differs from rank 0");
    }
}

#[test]
fn one_gpu_rank_trains_like_a_plain_gpu_run() {
    if gpus("one_gpu_rank", 1) >= 1 {
        gpu_ranks_against_one_process(1);
    }
}

#[test]
fn gpu_ranks_with_local_losses_train_like_one_gpu() {
    let n = gpus("gpu_ranks_with_local_losses", 1);
    for w in [1, 2].into_iter().filter(|&w| w <= n) {
        gpu_ranks_against_one_process_with(w, true);
    }
}

#[test]
fn several_gpu_ranks_train_like_one_gpu() {
    let n = gpus("several_gpu_ranks", 2);
    if n >= 2 {
        gpu_ranks_against_one_process(if n >= 4 { 4 } else { 2 });
    }
}

/// The group the desktop app and notebooks lead tick by tick, on one GPU (NCCL with a world
/// of one) and on two when there are two: commands and inspections between ticks, against
/// one process on GPU 0.
#[test]
fn a_led_gpu_group_trains_like_one_gpu() {
    let n = gpus("a_led_gpu_group", 1);
    for w in [1, 2].into_iter().filter(|&w| w <= n) {
        let devices: Vec<String> = (0..w).map(|i| format!("cuda:{i}")).collect();
        let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
        let dp = super::leader::led_against_one_process(&devices);
        eprintln!("led NCCL group W={w}: parameters within {dp:e} of one GPU");
        assert!(dp <= 1e-4, "W={w}: parameters differ by {dp:e}");
    }
}

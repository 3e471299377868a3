//! Data parallel: the thread communicator's collectives against hand-computed values, the
//! gradient of `gather_with_grad`, the errors of the driver; training with W ranks against
//! one process in `parallel/equivalence.rs`; the group stepped tick by tick in
//! `parallel/leader.rs`; local losses in `parallel/local_loss.rs`; micro-batches, alone and on
//! ranks, in `parallel/micro_batches.rs`.

mod equivalence;
mod leader;
mod local_loss;
mod micro_batches;
#[cfg(feature = "nccl")]
mod nccl;

use crate::util::tiny_config;
use candle_core::{Device, Tensor, Var};
use std::ops::ControlFlow;
use std::sync::Arc;
use workbench::parallel::{
    Communicator, DataParallel, Solo, ThreadComm, ThreadGroup, gather_ids, gather_with_grad,
};

/// Runs `f(comm)` on one thread per rank of a `w`-rank thread group; results in rank order.
pub fn on_ranks<T: Send>(w: usize, f: impl Fn(Arc<dyn Communicator>) -> T + Sync) -> Vec<T> {
    let comms = ThreadGroup::new(w);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || f(Arc::new(c) as Arc<dyn Communicator>)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn thread_collectives_match_hand_computed_values() {
    // Rank r holds x_r = [[r+1, 10(r+1)], [100(r+1), 0.5]] for W = 3.
    let out = on_ranks(3, |comm| {
        let r = comm.rank() as f32 + 1.0;
        let x = Tensor::new(&[[r, 10.0 * r], [100.0 * r, 0.5]], &Device::Cpu).unwrap();
        let gathered = comm.all_gather(&x).unwrap().to_vec2::<f32>().unwrap();
        let summed = comm.all_reduce(&x).unwrap().to_vec2::<f32>().unwrap();
        // (W·b, 2) = (3, 2) rows per rank for the reduce-scatter: row i of rank r is (r+1)·(i+1).
        let y = Tensor::new(&[[r, -r], [2.0 * r, 0.0], [3.0 * r, 1.0]], &Device::Cpu).unwrap();
        let scattered = comm.reduce_scatter(&y).unwrap().to_vec2::<f32>().unwrap();
        (comm.world_size(), gathered, summed, scattered)
    });
    for (rank, (w, gathered, summed, scattered)) in out.into_iter().enumerate() {
        assert_eq!(w, 3);
        assert_eq!(
            gathered,
            vec![
                vec![1.0, 10.0],
                vec![100.0, 0.5],
                vec![2.0, 20.0],
                vec![200.0, 0.5],
                vec![3.0, 30.0],
                vec![300.0, 0.5],
            ]
        );
        // Σ_r (r+1) = 6.
        assert_eq!(summed, vec![vec![6.0, 60.0], vec![600.0, 1.5]]);
        // Rank k receives row k summed over ranks: 6·[k+1, -1 | 0 | 1/6·3].
        let expected = [vec![6.0, -6.0], vec![12.0, 0.0], vec![18.0, 3.0]];
        assert_eq!(scattered, vec![expected[rank].clone()], "rank {rank}");
    }
}

#[test]
fn thread_sums_are_identical_on_every_rank_and_in_rank_order() {
    // Values whose f32 sum depends on the order: 1e8 + 1 - 1e8 ≠ 1 + (1e8 - 1e8).
    let vals = [1e8f32, 1.0, -1e8];
    let out = on_ranks(3, |comm| {
        let x = Tensor::new(&[vals[comm.rank()]], &Device::Cpu).unwrap();
        comm.all_reduce(&x).unwrap().to_vec1::<f32>().unwrap()[0]
    });
    let in_order = (vals[0] + vals[1]) + vals[2];
    assert!(
        out.iter().all(|&v| v.to_bits() == in_order.to_bits()),
        "{out:?}"
    );
}

#[test]
fn thread_collectives_reject_bad_input_and_a_departed_rank() {
    // Different shapes on two ranks: both get an error naming the shapes.
    let out = on_ranks(2, |comm| {
        let n = comm.rank() + 1;
        let x = Tensor::zeros((n, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        comm.all_gather(&x).unwrap_err().to_string()
    });
    for e in out {
        assert!(e.contains("[1, 2]") && e.contains("[2, 2]"), "{e}");
    }
    let mut comms = ThreadGroup::new(2);
    let c1: ThreadComm = comms.pop().unwrap();
    let c0 = comms.pop().unwrap();
    let x = Tensor::new(&[[1f32]], &Device::Cpu).unwrap();
    // Wrong dtype, no batch dimension, rows that do not split: errors before any exchange.
    let ints = Tensor::new(&[[1u32]], &Device::Cpu).unwrap();
    assert!(
        c0.all_reduce(&ints)
            .unwrap_err()
            .to_string()
            .contains("f32")
    );
    let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
    assert!(
        c0.all_gather(&scalar)
            .unwrap_err()
            .to_string()
            .contains("batch dimension")
    );
    assert!(
        c0.reduce_scatter(&x)
            .unwrap_err()
            .to_string()
            .contains("do not split")
    );
    // Rank 1 leaves: rank 0's next collective fails naming it instead of waiting forever.
    drop(c1);
    let e = c0.all_reduce(&x).unwrap_err().to_string();
    assert!(e.contains("rank 1 left the group"), "{e}");
    // A rank that fails aborts the group while its communicator is still referenced: the
    // other rank, already waiting in a collective, is woken with an error naming it.
    let mut comms = ThreadGroup::new(2);
    let c1 = std::sync::Arc::new(comms.pop().unwrap());
    let c0 = comms.pop().unwrap();
    let waiting =
        std::thread::spawn(move || c0.all_reduce(&x).map(drop).map_err(|e| e.to_string()));
    std::thread::sleep(std::time::Duration::from_millis(50));
    c1.abort("its batch failed");
    let e = waiting.join().unwrap().unwrap_err();
    assert!(e.contains("rank 1 left the group"), "{e}");
    let x = Tensor::new(&[[1f32]], &Device::Cpu).unwrap();
    assert!(c1.all_reduce(&x).is_err());
    // Solo checks the same things and is otherwise the identity.
    assert!(Solo.all_gather(&ints).is_err());
    assert_eq!(
        Solo.all_reduce(&x).unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![1.0]]
    );
}

#[test]
fn ids_gather_exactly_whatever_their_size() {
    let ids = [[0u64, u64::MAX], [1 << 40, 12_345_678_901_234_567]];
    let out = on_ranks(2, |comm| {
        gather_ids(&ids[comm.rank()], comm.as_ref(), &Device::Cpu).unwrap()
    });
    let all: Vec<u64> = ids.iter().flatten().copied().collect();
    assert_eq!(out, vec![all.clone(), all]);
}

/// A non-linear function of the gathered rows: `Σ exp(G Gᵀ / 2) · M` with a fixed `M`.
fn global_loss(g: &Tensor) -> candle_core::Result<Tensor> {
    let n = g.dim(0)?;
    let m: Vec<f32> = (0..n * n).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
    let m = Tensor::from_vec(m, (n, n), g.device())?.to_dtype(g.dtype())?;
    ((g.matmul(&g.t()?)? * 0.5)?.exp()? * m)?.sum_all()
}

fn rows(rank: usize) -> Tensor {
    let v: Vec<f32> = (0..6)
        .map(|i| ((rank * 6 + i) as f32 * 0.37).sin())
        .collect();
    Tensor::from_vec(v, (2, 3), &Device::Cpu).unwrap()
}

#[test]
fn gather_with_grad_gives_each_rank_the_summed_gradient_of_its_rows() {
    // One process: the loss of all rows, its gradient by autograd and by finite differences.
    let w = 3;
    let all = Tensor::cat(&(0..w).map(rows).collect::<Vec<_>>(), 0).unwrap();
    let var = Var::from_tensor(&all).unwrap();
    let single = global_loss(var.as_tensor()).unwrap();
    let grad = single.backward().unwrap().get(&var).unwrap().clone();
    let fd = kernels::check::finite_difference_grad(
        &global_loss,
        &all.to_dtype(candle_core::DType::F64).unwrap(),
        1e-5,
    )
    .unwrap()
    .to_dtype(candle_core::DType::F32)
    .unwrap();
    crate::util::assert_close(&grad, &fd, 1e-4, "autograd vs finite differences");
    // W ranks: each gathers, evaluates the same global loss, and backpropagates; the
    // reduce-scatter sums the W identical gradients, so rank r holds W · ∂L/∂rows_r.
    let out = on_ranks(w, |comm| {
        let x = Var::from_tensor(&rows(comm.rank())).unwrap();
        let g = gather_with_grad(x.as_tensor(), &comm).unwrap();
        let loss = global_loss(&g).unwrap();
        let grads = loss.backward().unwrap();
        (
            loss.to_scalar::<f32>().unwrap(),
            grads.get(&x).unwrap().clone(),
        )
    });
    let expected = single.to_scalar::<f32>().unwrap();
    for (rank, (loss, g)) in out.into_iter().enumerate() {
        assert!(
            (loss - expected).abs() <= 1e-5 * expected.abs(),
            "rank {rank}: {loss} vs {expected}"
        );
        let want = (grad.narrow(0, 2 * rank, 2).unwrap() * w as f64).unwrap();
        crate::util::assert_close(&g, &want, 1e-4, &format!("rank {rank} gradient"));
    }
    // One rank (Solo): the op is the identity forward and backward, bit for bit.
    let comm: Arc<dyn Communicator> = Arc::new(Solo);
    let x = Var::from_tensor(&all).unwrap();
    let g = gather_with_grad(x.as_tensor(), &comm).unwrap();
    let solo = global_loss(&g)
        .unwrap()
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .clone();
    assert_eq!(kernels::check::max_abs_diff(&solo, &grad).unwrap(), 0.0);
}

#[test]
fn driver_rejects_bad_device_lists_and_batches() {
    let err = |devices: &[&str]| DataParallel::new(devices).unwrap_err().to_string();
    assert!(err(&[]).contains("at least one device"));
    let e = err(&["cpu", "cuda:0"]);
    assert!(
        e.contains("train.devices") && e.contains("mixes cpu and cuda"),
        "{e}"
    );
    assert!(err(&["cpu", "tpu"]).contains("\"tpu\""));
    let e = err(&["cuda:0", "cuda:0"]);
    assert!(e.contains("twice"), "{e}");
    if !cfg!(feature = "nccl") {
        let e = err(&["cuda:0", "cuda:1"]);
        assert!(e.contains("--features nccl"), "{e}");
    }
    let ddp = DataParallel::new(&["cpu", "cpu", "cpu"]).unwrap();
    let cfg = tiny_config(); // batch 16
    let e = ddp
        .fit(&cfg, None, |_| ControlFlow::Continue(()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("train.batch_size") && e.contains("16") && e.contains("3 devices"),
        "{e}"
    );
}

#[test]
fn a_rank_that_fails_to_start_stops_the_others_with_its_error() {
    let mut cfg = tiny_config();
    cfg.train.steps = 2;
    let ddp = DataParallel::new(&["cpu", "cpu"]).unwrap();
    let e = ddp
        .fit_with(
            |rank, _| {
                let mut c = cfg.clone();
                if rank == 1 {
                    c.train.lr = -1.0;
                }
                workbench::train::Trainer::new(c)
            },
            |_| ControlFlow::Continue(()),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("train.lr"), "{e}");
}

/// A captions folder of `n` PNGs, every one of them truncated (`bad`) or whole; its run config
/// under `data.bad_samples = "fail"`.
pub(super) fn folder_config(
    dir: &std::path::Path,
    n: u8,
    bad: bool,
) -> workbench::config::RunConfig {
    use crate::datasets::{png, write};
    use std::fmt::Write as _;
    let mut csv = String::from("image,caption\n");
    for i in 0..n {
        let image = png(i);
        let bytes = if bad { &image[..60] } else { &image[..] };
        write(dir, &format!("img/{i}.png"), bytes);
        writeln!(csv, "img/{i}.png,picture number {i}").unwrap();
    }
    let captions = write(dir, "captions.csv", csv.as_bytes());
    let text = crate::file_runs::files_toml(&captions, "bad_samples = \"fail\"");
    workbench::config::RunConfig::from_toml(&text, std::path::Path::new("run.toml")).unwrap()
}

#[test]
fn a_rank_that_cannot_load_its_batch_stops_every_rank_at_that_step() {
    // Rank 1 reads a folder of broken images, rank 0 a sound one: without agreeing first, rank 0
    // would go on into the step's gather, where NCCL waits forever for a rank that is gone.
    let dir = crate::util::tmpdir("parallel-bad-batch");
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    let configs = [
        folder_config(&good, 24, false),
        folder_config(&bad, 24, true),
    ];
    let results = on_ranks(2, |comm| {
        let mut t = workbench::train::Trainer::new(configs[comm.rank()].clone()).unwrap();
        t.set_communicator(comm).unwrap();
        let e = t.step().unwrap_err().to_string();
        (t.completed_steps(), e)
    });
    assert_eq!(results[0].0, 0);
    assert_eq!(results[1].0, 0);
    let (e0, e1) = (&results[0].1, &results[1].1);
    assert!(e1.contains(".png"), "rank 1 names its image: {e1}");
    assert!(
        e0.contains("another rank could not load") && e0.contains("batch 1"),
        "rank 0 learns of it before any collective of the step: {e0}"
    );
    // Through the driver, the error reported is the cause.
    let ddp = DataParallel::new(&["cpu", "cpu"]).unwrap();
    let e = ddp
        .fit_with(
            |rank, _| workbench::train::Trainer::new(configs[rank].clone()),
            |_| ControlFlow::Continue(()),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(".png") && !e.contains("left the group"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn workbench_train_devices_runs_resumes_and_matches_one_process() {
    use clap::Parser as _;
    let dir = crate::util::tmpdir("parallel-cli");
    let mut cfg = tiny_config();
    cfg.train.steps = 4;
    cfg.train.probe_every = 0;
    let config = dir.join("config.toml");
    std::fs::write(&config, cfg.to_toml().unwrap()).unwrap();
    let out = dir.join("run");
    let (config_s, out_s) = (config.to_string_lossy(), out.to_string_lossy());
    let run = |args: &[&str]| {
        let argv = std::iter::once("workbench").chain(args.iter().copied());
        match viz::cli::Cli::try_parse_from(argv) {
            Err(e) => Err(e.to_string()),
            Ok(cli) => viz::cli::run(cli).map_err(|e| format!("{e:#}")),
        }
    };
    let base = ["train", "--config", &config_s, "--out", &out_s, "--quiet"];
    run(&[&base[..], &["--devices", "cpu,cpu"]].concat()).unwrap();
    // Resumed on two ranks to step 6: the same parameters as one process run the same way
    // (in both, the learning-rate schedule of the first part ends at step 4).
    let resume = |dir: &str, extra: &[&str]| {
        let args = ["train", "--resume", dir, "--steps", "6", "--quiet"];
        run(&[&args[..], extra].concat()).unwrap();
    };
    // With local losses (OpenCLIP's local_loss), and each rank's share of the batch in two
    // micro-batches: the same gradients, so the same parameters.
    resume(
        &out_s,
        &[
            "--devices",
            "cpu,cpu",
            "--local-loss",
            "--micro-batches",
            "2",
        ],
    );
    let single_dir = dir.join("single");
    let single_s = single_dir.to_string_lossy();
    run(&[
        "train", "--config", &config_s, "--out", &single_s, "--quiet",
    ])
    .unwrap();
    resume(&single_s, &[]);
    let resumed = workbench::train::Trainer::resume(&out, None).unwrap();
    let single = workbench::train::Trainer::resume(&single_dir, None).unwrap();
    assert_eq!(resumed.completed_steps(), 6);
    let (a, b) = (
        crate::util::snapshot(&resumed),
        crate::util::snapshot(&single),
    );
    let d = a
        .iter()
        .zip(&b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    assert!(d <= 1e-5, "parameters differ by {d:e}");
    let events = workbench::events::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    let steps = events
        .iter()
        .filter(|e| matches!(e, workbench::events::Event::Step(_)))
        .count();
    assert_eq!(steps, 6, "rank 0 alone logs each step once");
    // Bad input through the command line: named field, named feature, conflicting flags.
    let e = run(&[&base[..], &["--local-loss"]].concat()).unwrap_err();
    assert!(e.contains("--devices"), "{e}");
    let e = run(&[&base[..], &["--micro-batches", "3"]].concat()).unwrap_err();
    assert!(e.contains("train.micro_batches"), "{e}");
    let other = dir.join("other").to_string_lossy().into_owned();
    let e = run(&[
        "train",
        "--config",
        &config_s,
        "--out",
        &other,
        "--devices",
        "cpu,cpu,cpu",
    ]);
    assert!(e.unwrap_err().contains("train.batch_size"));
    let e = run(&["train", "--devices", "cpu,cpu", "--device", "cpu"]).unwrap_err();
    assert!(e.contains("--device"), "{e}");
    if !cfg!(feature = "nccl") {
        let e = run(&["train", "--devices", "cuda:0,cuda:1"]).unwrap_err();
        assert!(e.contains("--features nccl"), "{e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

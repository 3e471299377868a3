//! `workbench bench losses`: every objective timed, and the warning on a busy machine.
//! `workbench bench torch`: its arguments, our half of the comparison, and its errors. The
//! PyTorch half needs an interpreter with torch and runs only on request:
//! `WORKBENCH_TORCH_PYTHON=/path/to/python cargo test -p integration-tests --test integration -- bench:: --ignored`.

use crate::util::tmpdir;
use clap::Parser;
use std::path::{Path, PathBuf};
use viz::bench::torch::{Ours, ParamCounts, Settings, Torch, memory};
use viz::cli::{Cli, Command};
use workbench::model::Precision;

#[test]
fn bench_torch_arguments_parse_with_their_defaults() {
    let cli = Cli::try_parse_from(["workbench", "bench", "torch"]).unwrap();
    let Command::Bench(a) = cli.command else {
        panic!("not bench")
    };
    assert_eq!(a.what, "torch");
    assert_eq!(a.preset, ["tiny", "small"]);
    assert!(a.batch.is_empty(), "256 is chosen when none is given");
    assert_eq!((a.rounds, a.steps, a.warmup, a.threads), (3, 5, 2, 2));
    assert_eq!((a.embed, a.embed_batch), (10_000, 500));
    assert_eq!(a.python, PathBuf::from("python3"));
    assert_eq!(a.install_torch, None);
    assert_eq!(a.device, "cpu");
    assert_eq!(a.precision, [Precision::F32]);

    let cli = Cli::try_parse_from([
        "workbench",
        "bench",
        "torch",
        "--preset",
        "small",
        "--batch",
        "64,128",
        "--rounds",
        "4",
        "--steps",
        "1",
        "--threads",
        "1",
        "--embed",
        "0",
        "--python",
        "/opt/py/bin/python",
        "--install-torch",
        "venv",
        "--device",
        "cuda:1",
        "--precision",
        "f32,bf16",
    ])
    .unwrap();
    let Command::Bench(a) = cli.command else {
        panic!("not bench")
    };
    assert_eq!(a.preset, ["small"]);
    assert_eq!(a.batch, [64, 128]);
    assert_eq!((a.rounds, a.steps, a.threads, a.embed), (4, 1, 1, 0));
    assert_eq!(a.python, PathBuf::from("/opt/py/bin/python"));
    assert_eq!(a.install_torch, Some(PathBuf::from("venv")));
    assert_eq!(a.device, "cuda:1");
    assert_eq!(a.precision, [Precision::F32, Precision::Bf16]);
    assert!(Cli::try_parse_from(["workbench", "bench", "pytorch"]).is_err());
    let e = Cli::try_parse_from(["workbench", "bench", "torch", "--precision", "f32,fp16"])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
}

/// The parameter count of a preset, written out from the architecture: per block
/// 12·w² + 13·w (two LayerNorms, qkv and output projection with biases, a 4·w MLP with biases);
/// the image tower adds a bias-free patch embedding, the class token, positions, `ln_pre`,
/// `ln_post` and a bias-free projection; the text tower token and position embeddings,
/// `ln_final` and a bias-free projection; the objective its log-scale.
fn expected_counts(
    w_img: usize,
    patch: usize,
    layers_img: usize,
    w_txt: usize,
    layers_txt: usize,
    embed: usize,
    vocab: usize,
    context: usize,
) -> ParamCounts {
    let n = (32 / patch) * (32 / patch);
    let block = |w: usize| 12 * w * w + 13 * w;
    let block_decayed = |w: usize| 12 * w * w;
    let vision = 3 * patch * patch * w_img
        + w_img
        + (n + 1) * w_img
        + 4 * w_img
        + layers_img * block(w_img)
        + embed * w_img;
    let text =
        vocab * w_txt + context * w_txt + 2 * w_txt + layers_txt * block(w_txt) + embed * w_txt;
    let vision_decayed = 3 * patch * patch * w_img
        + (n + 1) * w_img
        + layers_img * block_decayed(w_img)
        + embed * w_img;
    let text_decayed =
        vocab * w_txt + context * w_txt + layers_txt * block_decayed(w_txt) + embed * w_txt;
    ParamCounts {
        total: vision + text + 1,
        decayed: vision_decayed + text_decayed,
    }
}

#[test]
fn our_half_counts_parameters_writes_batches_and_times_a_step() {
    let dir = tmpdir("bench-ours");
    let mut ours = Ours::new("tiny", 8, 6, 2).unwrap();
    let spec = ours.spec(&dir, 2).unwrap();
    let vocab = spec["vocab_size"].as_u64().unwrap() as usize;
    let context = spec["context_length"].as_u64().unwrap() as usize;
    assert_eq!(context, 32);
    assert_eq!(spec["image_size"], 32);
    assert_eq!(spec["loss"], "clip");
    assert_eq!(spec["model"]["vision"]["patch_size"], 8);
    assert_eq!(spec["train"]["beta2"], 0.98);
    assert_eq!(
        ours.parameter_counts(),
        expected_counts(64, 8, 2, 64, 2, 64, vocab, context)
    );
    // Two training batches and the embedding chunk, each as raw little-endian files.
    assert_eq!(spec["batches"].as_array().unwrap().len(), 2);
    for (b, rows) in [
        (&spec["batches"][0], 8),
        (&spec["batches"][1], 8),
        (&spec["embed"], 6),
    ] {
        let len = |k: &str| std::fs::metadata(b[k].as_str().unwrap()).unwrap().len() as usize;
        let t = b["tokens_shape"][1].as_u64().unwrap() as usize;
        assert_eq!(b["images_shape"], serde_json::json!([rows, 3, 32, 32]));
        assert_eq!(len("images"), rows * 3 * 32 * 32 * 4);
        assert_eq!(len("tokens"), rows * t * 8);
        assert_eq!(len("eos"), rows * 8);
        let eos = std::fs::read(b["eos"].as_str().unwrap()).unwrap();
        for e in eos.chunks(8) {
            let e = i64::from_le_bytes(e.try_into().unwrap());
            assert!(e > 0 && (e as usize) < t, "EOS {e} outside 1..{t}");
        }
    }
    let t = ours.train(1).unwrap();
    assert!(t.seconds > 0.0 && t.loss.is_finite(), "{t:?}");
    assert!(ours.embed(1).unwrap() > 0.0);

    let small = Ours::new("small", 2, 2, 1).unwrap();
    assert_eq!(
        small.parameter_counts(),
        expected_counts(128, 4, 4, 128, 4, 128, vocab, context)
    );
    assert!(Ours::new("huge", 8, 8, 1).is_err());
    assert!(Ours::on("tiny", 8, 8, 1, "tpu", Precision::F32).is_err());
    assert!(Ours::new("tiny", 0, 8, 1).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn our_half_trains_in_bf16_and_reports_its_peak_memory() {
    let dir = tmpdir("bench-ours-bf16");
    let mut ours = Ours::on("tiny", 8, 6, 1, "cpu", Precision::Bf16).unwrap();
    let spec = ours.spec(&dir, 2).unwrap();
    // What the script reads to choose its device and autocast.
    assert_eq!(spec["train"]["precision"], "bf16");
    assert_eq!(spec["train"]["device"], "cpu");
    let (t, peak) = ours.train_measured(2, None).unwrap();
    assert!(t.seconds > 0.0 && t.loss.is_finite(), "{t:?}");
    if memory::reset_peak_rss() {
        let peak = peak.unwrap();
        assert!(peak > 16 << 20 && peak < 64 << 30, "{peak} bytes");
    } else {
        assert_eq!(peak, None, "no figure without a reset");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
fn fake_python(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
#[cfg(unix)]
fn a_missing_interpreter_or_torch_is_a_clear_error() {
    let dir = tmpdir("bench-python");
    let (script, spec) = (dir.join("torch_clip.py"), dir.join("spec.json"));
    let err = |python: &Path| {
        Torch::start(python, &script, &spec)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap()
    };

    let e = err(&dir.join("no-such-python"));
    assert!(
        e.contains("no-such-python") && e.contains("--python") && e.contains("--install-torch"),
        "{e}"
    );

    // What the script answers when `import torch` fails.
    let no_torch = fake_python(
        &dir,
        "no-torch",
        r#"echo '{"error": "torch is not importable: No module named '"'"'torch'"'"'"}'; exit 1"#,
    );
    let e = err(&no_torch);
    assert!(
        e.contains("no-torch")
            && e.contains("torch is not importable")
            && e.contains("--install-torch"),
        "{e}"
    );

    let silent = fake_python(&dir, "silent", "exit 3");
    let e = err(&silent);
    assert!(e.contains("silent") && e.contains("exited"), "{e}");

    let chatty = fake_python(&dir, "chatty", "echo hello");
    let e = err(&chatty);
    assert!(e.contains("hello") && e.contains("not a JSON line"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "needs a Python interpreter with torch (WORKBENCH_TORCH_PYTHON)"]
fn both_halves_agree_on_the_model_and_train() {
    let python = std::env::var_os("WORKBENCH_TORCH_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let dir = tmpdir("bench-torch");
    let s = Settings {
        preset: "tiny".into(),
        batch: 8,
        rounds: 1,
        steps: 1,
        warmup: 1,
        threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        embed: 12,
        embed_batch: 6,
        device: "cpu".into(),
        precision: Precision::F32,
    };
    for precision in Precision::ALL {
        let s = Settings {
            precision,
            ..s.clone()
        };
        let c = viz::bench::torch::compare(&s, &python, &dir, |_| Ok(())).unwrap();
        assert_eq!(c.ours.len(), 1);
        assert!(c.ratio().is_finite() && c.embed_ratio().is_finite());
        assert!(
            c.losses.0.is_finite() && c.losses.1.is_finite(),
            "{precision}: {:?}",
            c.losses
        );
        if memory::reset_peak_rss() {
            assert!(c.ours_peak.unwrap() > 1 << 20 && c.torch_peak.allocated.unwrap() > 1 << 20);
        }
        assert_eq!(c.torch_peak.reserved, None, "no reserved memory on the CPU");
        assert!(viz::bench::torch_line(&c).contains(precision.name()));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_losses_times_every_objective_and_skips_filip_over_budget() {
    let shapes = viz::bench::Shapes {
        dim: 8,
        patches: 4,
        tokens: 6,
        negatives: 2,
    };
    let names: Vec<String> = workbench::loss::LossConfig::builtins()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let mut seen = Vec::new();
    let rows = viz::bench::run(&[8, 12], 2, 1 << 30, shapes, |r| {
        seen.push((r.objective.clone(), r.batch));
    })
    .unwrap();
    assert_eq!(rows.len(), 2 * names.len());
    for (k, r) in rows.iter().enumerate() {
        assert_eq!(
            r.objective,
            names[k % names.len()],
            "rows keep the built-in order"
        );
        assert_eq!(r.batch, [8, 12][k / names.len()]);
        assert!(r.skipped.is_none(), "{} skipped", r.objective);
        assert!(
            r.forward_ms.is_finite() && r.forward_ms > 0.0 && r.backward_ms.is_finite(),
            "{}: {} + {} ms",
            r.objective,
            r.forward_ms,
            r.backward_ms
        );
    }
    assert_eq!(seen.len(), rows.len(), "every row is reported");

    // FILIP's estimate at batch 8 is far above one byte.
    let rows = viz::bench::run(&[8], 1, 1, shapes, |_| {}).unwrap();
    let filip = rows.iter().find(|r| r.objective == "filip").unwrap();
    let why = filip.skipped.as_deref().unwrap();
    assert!(why.contains("--max-memory-gb"), "{why}");
    assert!(viz::bench::line(filip, None).contains("skipped"));
    assert!(rows.iter().filter(|r| r.skipped.is_none()).count() == names.len() - 1);
}

#[test]
fn a_load_at_the_thread_count_is_warned_about() {
    assert_eq!(viz::bench::busy_warning(1.5, 2), None);
    assert_eq!(
        viz::bench::busy_warning(5.0, 1),
        None,
        "one thread waits for nobody"
    );
    let w = viz::bench::busy_warning(6.25, 2).unwrap();
    assert!(w.contains("load average 6.25 on 2 threads"), "{w}");
    assert!(w.contains("RAYON_NUM_THREADS=1"), "{w}");
    if std::path::Path::new("/proc/loadavg").exists() {
        let load = viz::bench::load_average().unwrap();
        assert!(load.is_finite() && load >= 0.0, "{load}");
    }
}

#[test]
fn bench_micro_measures_each_setting_and_refuses_a_split_that_does_not_divide() {
    let run = |args: &[&str]| {
        let argv = ["workbench", "bench", "micro"]
            .into_iter()
            .chain(args.iter().copied());
        viz::cli::run(Cli::try_parse_from(argv).unwrap()).map_err(|e| format!("{e:#}"))
    };
    let quick = [
        "--preset", "tiny", "--rounds", "1", "--steps", "1", "--warmup", "1",
    ];
    run(&[&quick[..], &["--batch", "8", "--micro", "1,4"]].concat()).unwrap();
    let e = run(&[&quick[..], &["--batch", "8", "--micro", "3"]].concat()).unwrap_err();
    assert!(e.contains("micro_batches") && e.contains("8 pairs"), "{e}");
    // The library half: rows in the order asked, the whole batch's ratios exactly 1.
    let s = viz::bench::micro::Settings {
        preset: "tiny".into(),
        batch: 8,
        micro: vec![2, 1],
        rounds: 1,
        steps: 1,
        ..Default::default()
    };
    let rows = viz::bench::micro::measure(&s, |_| Ok(())).unwrap();
    assert_eq!(rows.iter().map(|r| r.micro).collect::<Vec<_>>(), [2, 1]);
    let whole = viz::bench::micro::line(&s, &rows[1], Some(&rows[1]));
    assert!(whole.contains(" 1.00 "), "{whole}");
}

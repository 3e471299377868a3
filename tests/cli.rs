//! The command line, in process: a real run end to end, and every bad-input case.

use crate::util::{tiny_config, tmpdir};
use clap::Parser as _;
use std::path::Path;
use std::process::ExitCode;
use viz::cli::{Cli, main_with_args, run};

/// Runs `workbench <args>` in process; returns the error text (with causes) or `None`.
fn error_of(args: &[&str]) -> Option<String> {
    let argv = std::iter::once("workbench").chain(args.iter().copied());
    match Cli::try_parse_from(argv) {
        Err(e) => Some(e.to_string()),
        Ok(cli) => run(cli).err().map(|e| format!("{e:#}")),
    }
}

fn exit_code(args: &[&str]) -> ExitCode {
    main_with_args(std::iter::once("workbench").chain(args.iter().copied()))
}

fn write_config(dir: &Path, edit: impl FnOnce(&mut String)) -> String {
    let mut cfg = tiny_config();
    cfg.train.steps = 6;
    cfg.train.eval_every = 3;
    let mut text = cfg.to_toml().unwrap();
    edit(&mut text);
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn train_writes_a_complete_run_directory_and_eval_reads_it() {
    let dir = tmpdir("cli-run");
    let config = write_config(&dir, |_| {});
    let out = dir.join("run");
    let out_s = out.to_string_lossy().into_owned();
    assert_eq!(
        exit_code(&["train", "--config", &config, "--out", &out_s, "--quiet"]),
        ExitCode::SUCCESS
    );
    for f in [
        "config.toml",
        "tokenizer.json",
        "metrics.jsonl",
        "checkpoint/model.safetensors",
        "checkpoint/state.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let events = workbench::events::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    assert!(matches!(
        events.first(),
        Some(workbench::events::Event::RunStarted { .. })
    ));
    assert!(matches!(
        events.last(),
        Some(workbench::events::Event::RunFinished { step: 6, .. })
    ));
    // The saved config reproduces the run's configuration.
    let saved = workbench::config::RunConfig::load(&out.join("config.toml")).unwrap();
    assert_eq!(saved.train.steps, 6);
    assert_eq!(
        exit_code(&["eval", "--checkpoint", &out_s, "--json"]),
        ExitCode::SUCCESS
    );
    // Resuming with more steps continues from the checkpoint and appends to the log.
    assert_eq!(
        exit_code(&["train", "--resume", &out_s, "--steps", "8", "--quiet"]),
        ExitCode::SUCCESS
    );
    let events = workbench::events::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    assert!(matches!(
        events.last(),
        Some(workbench::events::Event::RunFinished { step: 8, .. })
    ));
    // A second run into the same directory is refused: no data is overwritten.
    let e = error_of(&["train", "--config", &config, "--out", &out_s]).unwrap();
    assert!(e.contains("not empty") && e.contains("--resume"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_configuration_input_is_named_and_fails() {
    let dir = tmpdir("cli-bad-config");
    let e = error_of(&["train", "--preset", "huge"]).unwrap();
    assert!(
        e.contains("preset") && e.contains("huge") && e.contains("tiny"),
        "{e}"
    );
    assert_eq!(exit_code(&["train", "--preset", "huge"]), ExitCode::FAILURE);

    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "[train]\nsteps = = 3\n").unwrap();
    let e = error_of(&["train", "--config", bad_toml.to_str().unwrap()]).unwrap();
    assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");

    let config = write_config(&dir, |t| *t = t.replace("patch_size = 8", "patch_size = 5"));
    let e = error_of(&[
        "train",
        "--config",
        &config,
        "--out",
        dir.join("r1").to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        e.contains("config.toml")
            && e.contains("model.vision.patch_size")
            && e.contains("does not divide"),
        "{e}"
    );

    let config = write_config(&dir, |t| {
        *t = t.replace("image_size = 32", "image_size = 500");
    });
    let e = error_of(&["train", "--config", &config]).unwrap();
    assert!(
        e.contains("data.image_size") && e.contains("16..=128"),
        "{e}"
    );

    let config = write_config(&dir, |t| t.push_str("\n[extra]\nx = 1\n"));
    let e = error_of(&["train", "--config", &config]).unwrap();
    assert!(e.contains("extra"), "{e}");

    let e = error_of(&[
        "train",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ])
    .unwrap();
    assert!(e.contains("missing.toml"), "{e}");
    let e = error_of(&["train", "--steps", "0"]).unwrap();
    assert!(e.contains("train.steps"), "{e}");
    let e = error_of(&["train", "--device", "tpu"]).unwrap();
    assert!(e.contains("train.device") && e.contains("tpu"), "{e}");
    assert_eq!(exit_code(&["train", "--no-such-flag"]), ExitCode::from(2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_or_corrupt_checkpoints_are_named_and_fail() {
    let dir = tmpdir("cli-bad-ckpt");
    let missing = dir.join("nowhere");
    let e = error_of(&["eval", "--checkpoint", missing.to_str().unwrap()]).unwrap();
    assert!(e.contains("nowhere") && e.contains("does not exist"), "{e}");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = error_of(&["eval", "--checkpoint", empty.to_str().unwrap()]).unwrap();
    assert!(e.contains("empty") && e.contains("no state.json"), "{e}");

    // A real checkpoint, then damage it in different ways.
    let good = dir.join("good");
    let mut t = workbench::train::Trainer::new(tiny_config()).unwrap();
    t.step().unwrap();
    t.save_checkpoint(&good.join("checkpoint")).unwrap();
    let copy = |name: &str| {
        let d = dir.join(name).join("checkpoint");
        std::fs::create_dir_all(&d).unwrap();
        for f in [
            "model.safetensors",
            "optimizer.safetensors",
            "state.json",
            "tokenizer.json",
        ] {
            std::fs::copy(good.join("checkpoint").join(f), d.join(f)).unwrap();
        }
        d
    };
    let d = copy("corrupt-weights");
    std::fs::write(
        d.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{broken",
    )
    .unwrap();
    let e = error_of(&["eval", "--checkpoint", d.to_str().unwrap()]).unwrap();
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    let d = copy("truncated-state");
    let state = std::fs::read(d.join("state.json")).unwrap();
    std::fs::write(d.join("state.json"), &state[..state.len() / 2]).unwrap();
    let e = error_of(&["eval", "--checkpoint", d.to_str().unwrap()]).unwrap();
    assert!(
        e.contains("state.json") && e.contains("not a valid state file"),
        "{e}"
    );

    let d = copy("missing-optimizer");
    std::fs::remove_file(d.join("optimizer.safetensors")).unwrap();
    let e = error_of(&["eval", "--checkpoint", d.to_str().unwrap()]).unwrap();
    assert!(e.contains("optimizer.safetensors"), "{e}");

    // Weights from another architecture: the mismatching tensor is named.
    let d = copy("other-model");
    let text = std::fs::read_to_string(d.join("state.json")).unwrap();
    std::fs::write(
        d.join("state.json"),
        text.replace("\"embed_dim\": 32", "\"embed_dim\": 48"),
    )
    .unwrap();
    let e = error_of(&["eval", "--checkpoint", d.to_str().unwrap()]).unwrap();
    assert!(
        e.contains("model.safetensors") && e.contains("proj.weight") && e.contains("shape"),
        "{e}"
    );
    assert_eq!(
        exit_code(&["eval", "--checkpoint", d.to_str().unwrap()]),
        ExitCode::FAILURE
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn data_prints_samples_and_writes_a_contact_sheet() {
    let dir = tmpdir("cli-data");
    let png = dir.join("sheet.png");
    let png_s = png.to_string_lossy().into_owned();
    assert_eq!(
        exit_code(&[
            "data",
            "--split",
            "zero-shot",
            "--count",
            "10",
            "--scale",
            "2",
            "--out",
            &png_s
        ]),
        ExitCode::SUCCESS
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // 8 columns × (64 + 2) + 2 wide, 2 rows × (64 + 2) + 2 high.
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (8 * 66 + 2, 2 * 66 + 2));
    let e = error_of(&["data", "--split", "val", "--start", "5000"]).unwrap();
    assert!(
        e.contains("--start 5000") && e.contains("1000 samples"),
        "{e}"
    );
    assert!(
        error_of(&["data", "--split", "holiday"])
            .unwrap()
            .contains("holiday")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn train_takes_an_objective_and_live_swaps_and_names_bad_ones() {
    let dir = tmpdir("cli-loss");
    let config = write_config(&dir, |_| {});
    let out = dir.join("run");
    let out_s = out.to_string_lossy().into_owned();
    let args = [
        "train",
        "--config",
        &config,
        "--out",
        &out_s,
        "--quiet",
        "--loss",
        "siglip",
        "--swap",
        "4:cloob",
        "--swap",
        "2:triplet",
    ];
    assert_eq!(exit_code(&args), ExitCode::SUCCESS);
    let events = workbench::events::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    let swaps: Vec<(usize, String, String)> = events
        .iter()
        .filter_map(|e| match e {
            workbench::events::Event::ObjectiveSwapped { step, from, to, .. } => {
                Some((*step, from.clone(), to.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        swaps,
        [
            (2, "siglip".to_string(), "triplet".to_string()),
            (4, "triplet".to_string(), "cloob".to_string())
        ]
    );
    let saved = workbench::config::RunConfig::load(&out.join("config.toml")).unwrap();
    assert_eq!(
        saved.loss.name(),
        "siglip",
        "config.toml is the run as started"
    );
    let (_, state) = workbench::train::Trainer::read_state(&out).unwrap();
    assert_eq!(
        state.config.loss.name(),
        "cloob",
        "the checkpoint has the active objective"
    );

    let e = error_of(&["train", "--loss", "nope"]).unwrap();
    assert!(e.contains("loss.kind") && e.contains("siglip"), "{e}");
    let e = error_of(&["train", "--swap", "10"]).unwrap();
    assert!(e.contains("STEP:NAME"), "{e}");
    let e = error_of(&["train", "--swap", "x:clip"]).unwrap();
    assert!(e.contains("step number"), "{e}");
    let e = error_of(&["train", "--swap", "5:nope"]).unwrap();
    assert!(e.contains("nope"), "{e}");
    let bad = dir.join("bad-loss.toml");
    std::fs::write(
        &bad,
        "preset = \"tiny\"\n[loss]\nkind = \"focal\"\ngamma = -1.0\n",
    )
    .unwrap();
    let e = error_of(&["train", "--config", bad.to_str().unwrap()]).unwrap();
    assert!(e.contains("loss.gamma"), "{e}");
    std::fs::write(&bad, "[loss]\nkind = \"triplet\"\nmining = \"sideways\"\n").unwrap();
    let e = error_of(&["train", "--config", bad.to_str().unwrap()]).unwrap();
    assert!(
        e.contains("bad-loss.toml") && e.contains("mining") && e.contains("line 3"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bench_losses_prints_every_objective_at_each_batch() {
    let e = error_of(&["bench", "losses", "--batch", "8", "--repeats", "1"]);
    assert_eq!(e, None);
    let e = error_of(&["bench", "weights"]).unwrap();
    assert!(e.contains("losses"), "{e}");
}

#[test]
fn devices_reports_the_build_the_cpu_and_why_cuda_is_or_is_not_usable() {
    assert_eq!(error_of(&["devices"]), None);
    assert_eq!(error_of(&["devices", "--json"]), None);
    let survey = workbench::devices::survey();
    assert_eq!(survey.cuda_built, cfg!(feature = "cuda"));
    assert_eq!(survey.nccl_built, cfg!(feature = "nccl"));
    assert!(survey.cpu_threads >= 1);
    let text = survey.to_string();
    assert!(text.starts_with("build: cuda "), "{text}");
    assert!(text.contains("cpu: "), "{text}");
    assert_eq!(
        workbench::devices::describe(&candle_core::Device::Cpu),
        "cpu"
    );
    let json: serde_json::Value = serde_json::to_value(&survey).unwrap();
    assert_eq!(json["cpu_threads"], survey.cpu_threads);
    match &survey.cuda {
        // Without the feature the reason names the fix.
        Err(why) if !survey.cuda_built => {
            assert!(why.contains("--features cuda"), "{why}");
            assert!(text.contains(why.as_str()), "{text}");
        }
        // A cuda build on a machine without a usable device says so (the GPU test checks the
        // devices themselves).
        Err(why) => assert!(!why.is_empty()),
        Ok(devices) => assert!(!devices.is_empty()),
    }
}

#[test]
fn a_run_that_cannot_start_leaves_its_directory_empty_for_the_next_try() {
    let dir = tmpdir("cli-no-start");
    // Valid on its own, but the captions do not fit 4 positions: the trainer refuses to start.
    let config = write_config(&dir, |t| {
        *t = t.replace("context_length = 32", "context_length = 4");
        assert!(t.contains("context_length = 4"));
    });
    let out = dir.join("run");
    let out_s = out.to_string_lossy().into_owned();
    let e = error_of(&["train", "--config", &config, "--out", &out_s, "--quiet"]).unwrap();
    assert!(e.contains("tokenizer.context_length"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let config = write_config(&dir, |_| {});
    assert_eq!(
        error_of(&["train", "--config", &config, "--out", &out_s, "--quiet"]),
        None
    );
    assert!(out.join("config.toml").is_file() && out.join("tokenizer.json").is_file());
    let _ = std::fs::remove_dir_all(dir);
}

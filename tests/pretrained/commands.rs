//! A pretrained model from the command line: `export --model` writes its weights and the
//! embeddings of a dataset named by a run configuration, equal to the model's own; `train
//! --pretrained` fine-tunes it into a run directory that resumes and that `eval`, `inspect --run`
//! and `export --run` read.

use super::{cli, fixture};
use crate::datasets::{png, write};
use crate::util::tmpdir;
use candle_core::Device;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use workbench::config::RunConfig;
use workbench::data::{Split, open_dataset};
use workbench::export::ExportIndex;
use workbench::pretrained;
use workbench::train::Trainer;

/// Captions made of the fixture tokenizers' words, so that they fit their 16 positions.
const CAPTIONS: [&str; 4] = [
    "a red circle",
    "a blue square",
    "a green triangle",
    "a cat on a mat",
];

/// A captions folder of `n` PNGs (40 × 30, cropped and resized to the fixtures' 32 pixels) and a
/// run configuration naming it, with `extra` appended; returns the configuration's path. The
/// split hashes image paths, which differ between runs: 24 images keep both splits non-empty
/// and the training split above the batch size (all but surely).
fn files_config(d: &Path, n: u8, extra: &str) -> PathBuf {
    let mut csv = String::from("image,caption\n");
    for i in 0..n {
        write(d, &format!("img/{i}.png"), &png(i.wrapping_mul(29)));
        writeln!(csv, "img/{i}.png,{}", CAPTIONS[usize::from(i) % 4]).unwrap();
    }
    let captions = write(d, "captions.csv", csv.as_bytes());
    let text = format!(
        "[data.files]\npath = '{}'\nval_fraction = 0.4\ntest_fraction = 0.0\n[train]\nsteps = 2\n\
         batch_size = 4\nwarmup_steps = 0\neval_every = 0\neval_batch_size = 8\nprobe_every = 0\n\
         checkpoint_every = 0\n{extra}",
        captions.display()
    );
    write(d, "run.toml", text.as_bytes())
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The rows of a `(N, D)` float32 `.npy` file.
fn npy_rows(path: &Path) -> (usize, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let rows = header.split("'shape': (").nth(1).unwrap().split(',').next();
    let data = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (rows.unwrap().trim().parse().unwrap(), data)
}

fn assert_rows_equal(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{what}: differs by {worst}");
}

#[test]
fn export_model_writes_its_weights_and_the_embeddings_of_a_dataset() {
    for name in ["clip", "siglip"] {
        let d = tmpdir(&format!("hf-export-{name}"));
        let config = files_config(&d, 24, "");
        let out = d.join("out");
        let args = [
            "export",
            "--model",
            &s(&fixture(name)),
            "--config",
            &s(&config),
            "--out",
            &s(&out),
            "--batch",
            "2",
        ];
        assert_eq!(cli(&args), None, "{name}");

        // The weights: every tensor of the checkpoint under the workbench's names.
        let pre = pretrained::load(&fixture(name), &Device::Cpu).unwrap();
        let saved =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(saved.len(), pre.tensors.len(), "{name}");
        for (k, t) in &pre.tensors {
            let got = saved[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{name}: {k}");
        }

        // The embeddings: the model's own, of the validation images and their captions.
        let (model, _) = pre.build(&Device::Cpu).unwrap();
        let mut cfg = RunConfig::load(&config).unwrap();
        cfg.data.image_size = 32;
        let data = open_dataset(&cfg.data).unwrap();
        let n = data.len(Split::Val);
        assert!((1..24).contains(&n), "{name}: {n} validation images of 24");
        let index: ExportIndex =
            serde_json::from_slice(&std::fs::read(out.join("captions.json")).unwrap()).unwrap();
        let (rows, images) = npy_rows(&out.join("image_embeddings.npy"));
        let (text_rows, texts) = npy_rows(&out.join("text_embeddings.npy"));
        assert_eq!((rows, text_rows), (n, n), "{name}");
        let dim = index.dim;
        for i in 0..n {
            let sample = data.sample(Split::Val, i).unwrap();
            assert_eq!(index.images[i].id, data.sample_id(Split::Val, i));
            let e = workbench::eval::embed_images(&model, &[sample.image], 1, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_rows_equal(&images[i * dim..(i + 1) * dim], &e, name);
            let t = &index.texts[i];
            assert_eq!((t.image_row, &t.caption), (i, &sample.captions[0].text));
            let caption = std::slice::from_ref(&t.caption);
            let e = workbench::eval::embed_texts(&model, &pre.tokenizer, caption, 1, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_rows_equal(&texts[i * dim..(i + 1) * dim], &e, name);
        }
    }

    // --model needs --config; --run and --model are alternatives; bad settings are named.
    let d = tmpdir("hf-export-errors");
    let model = s(&fixture("siglip"));
    let out = s(&d.join("out"));
    let e = cli(&["export", "--model", &model, "--out", &out]).unwrap();
    assert!(e.contains("--config"), "{e}");
    let config = s(&files_config(&d.join("plain"), 4, ""));
    let e = cli(&[
        "export", "--model", &model, "--run", "r", "--config", &config, "--out", &out,
    ])
    .unwrap();
    assert!(e.contains("cannot be used with"), "{e}");
    let wide = s(&files_config(
        &d.join("wide"),
        4,
        "[model.vision]\nwidth = 64\n",
    ));
    let e = cli(&[
        "export", "--model", &model, "--config", &wide, "--out", &out,
    ])
    .unwrap();
    assert!(e.contains("model.vision") && e.contains("run.toml"), "{e}");
    let big = s(&files_config(
        &d.join("big"),
        4,
        "[data]\nimage_size = 64\n",
    ));
    let e = cli(&["export", "--model", &model, "--config", &big, "--out", &out]).unwrap();
    assert!(e.contains("data.image_size") && e.contains("32 px"), "{e}");
    let e = cli(&[
        "export",
        "--model",
        "no-such-model",
        "--config",
        &config,
        "--out",
        &out,
    ]);
    assert!(e.unwrap().contains("no-such-model"));
    assert!(!d.join("out").exists(), "nothing is written on errors");
}

#[test]
fn train_pretrained_fine_tunes_into_a_run_that_the_other_commands_read() {
    // SigLIP fine-tuned with CLIP's objective, CLIP with its own.
    for (name, loss) in [("siglip", "[loss]\nkind = \"clip\"\n"), ("clip", "")] {
        let d = tmpdir(&format!("hf-train-{name}"));
        let config = files_config(&d, 24, loss);
        let run = d.join("run");
        let args = [
            "train",
            "--pretrained",
            &s(&fixture(name)),
            "--config",
            &s(&config),
            "--out",
            &s(&run),
            "--quiet",
        ];
        assert_eq!(cli(&args), None, "{name}");
        for f in [
            "config.toml",
            "tokenizer.json",
            "metrics.jsonl",
            "checkpoint/state.json",
        ] {
            assert!(run.join(f).is_file(), "{name}: {f} missing");
        }
        let pre = pretrained::load(&fixture(name), &Device::Cpu).unwrap();
        let trainer = Trainer::resume(&run, None).unwrap();
        assert_eq!(trainer.completed_steps(), 2, "{name}");
        assert_eq!(trainer.config().model, pre.model, "{name}");
        let objective = if loss.is_empty() { name } else { "clip" };
        assert_eq!(trainer.objective().name(), objective, "{name}");
        // Fine-tuned: the weights moved away from the checkpoint's.
        let now = trainer.params().tensors();
        let moved = pre
            .tensors
            .iter()
            .filter(|(k, t)| {
                let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let b = now[*k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                k.starts_with("model.") && a != b
            })
            .count();
        assert!(moved > 10, "{name}: {moved} tensors moved");
        let val = trainer.dataset().len(Split::Val);
        drop(trainer);

        let r = s(&run);
        assert_eq!(cli(&["eval", "--run", &r, "--json"]), None, "{name}");
        let figs = s(&d.join("inspect"));
        assert_eq!(
            cli(&["inspect", "--run", &r, "--out", &figs]),
            None,
            "{name}"
        );
        assert!(d.join("inspect/inspect.json").is_file(), "{name}");
        let out = d.join("export");
        assert_eq!(cli(&["export", "--run", &r, "--out", &s(&out)]), None);
        let index: ExportIndex =
            serde_json::from_slice(&std::fs::read(out.join("captions.json")).unwrap()).unwrap();
        assert_eq!(index.images.len(), val, "{name}");
        // The run continues.
        assert_eq!(
            cli(&["train", "--resume", &r, "--steps", "3", "--quiet"]),
            None,
            "{name}"
        );
        assert_eq!(Trainer::resume(&run, None).unwrap().completed_steps(), 3);
    }
    // The architecture is the checkpoint's: a [model] section other than kernels is refused.
    let d = tmpdir("hf-train-errors");
    let config = s(&files_config(&d, 8, "[model]\nembed_dim = 64\n"));
    let args = [
        "train",
        "--pretrained",
        &s(&fixture("clip")),
        "--config",
        &config,
        "--out",
        &s(&d.join("run")),
    ];
    let e = cli(&args).unwrap();
    assert!(
        e.contains("model.embed_dim") && e.contains("pretrained"),
        "{e}"
    );
    let e = cli(&["train", "--pretrained", "x", "--resume", "y"]).unwrap();
    assert!(e.contains("cannot be used with"), "{e}");
}

/// Fine-tuning a pretrained checkpoint on two ranks, with a live swap at step 1, gives the
/// parameters of the same command on one device: a CLIP checkpoint swapped to SigLIP, and a SigLIP
/// checkpoint trained with the CLIP loss (its `logit_bias` unused, the case that stops
/// OpenCLIP's DDP with an "unused parameters" error) swapped to CLOOB.
#[test]
fn train_pretrained_on_two_ranks_with_a_swap_matches_one_process() {
    for (name, to) in [("clip", "siglip"), ("siglip", "cloob")] {
        let d = tmpdir(&format!("hf-train-devices-{name}"));
        let config = s(&files_config(&d, 24, "[loss]\nkind = \"clip\"\n"));
        let model = s(&fixture(name));
        let swap = format!("1:{to}");
        let train = |out: &Path, extra: &[&str]| {
            let out = s(out);
            let args = [
                "train",
                "--pretrained",
                &model,
                "--config",
                &config,
                "--out",
                &out,
                "--swap",
                &swap,
                "--quiet",
            ];
            assert_eq!(cli(&[&args[..], extra].concat()), None, "{name} {extra:?}");
        };
        let (two, one) = (d.join("two"), d.join("one"));
        train(&two, &["--devices", "cpu,cpu"]);
        train(&one, &[]);
        for f in ["config.toml", "tokenizer.json", "checkpoint/state.json"] {
            assert!(two.join(f).is_file(), "{name}: {f} missing");
        }
        let (a, b) = (
            Trainer::resume(&two, None).unwrap(),
            Trainer::resume(&one, None).unwrap(),
        );
        assert_eq!(a.completed_steps(), 2);
        assert_eq!(a.objective().name(), to);
        assert_eq!(a.config().model, b.config().model);
        let (pa, pb) = (crate::util::snapshot(&a), crate::util::snapshot(&b));
        let names = |p: &[(String, Vec<f32>)]| p.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&pa), names(&pb));
        let diff = pa
            .iter()
            .zip(&pb)
            .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{name}: parameters differ by {diff:e}");
        // The swap happened before step 2 in both logs, once.
        let swaps = |run: &Path| -> Vec<usize> {
            workbench::events::read_jsonl(&run.join("metrics.jsonl"))
                .unwrap()
                .iter()
                .filter_map(|e| match e {
                    workbench::events::Event::ObjectiveSwapped { step, to: got, .. } => {
                        assert_eq!(got, to);
                        Some(*step)
                    }
                    _ => None,
                })
                .collect()
        };
        assert_eq!(swaps(&two), vec![1], "{name}");
        assert_eq!(swaps(&one), vec![1], "{name}");
    }
}

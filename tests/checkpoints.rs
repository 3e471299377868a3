//! Malformed checkpoints: a table of broken `model.safetensors`, `optimizer.safetensors`,
//! `state.json`, `tokenizer.json` and run `config.toml` files, each of which must give an error
//! naming the file and the tensor or field, never a panic. Inputs found by the `checkpoint` fuzz
//! target are kept here as regression cases.

use crate::util::{tiny_config, tmpdir};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use workbench::checkpoint::{load_tensors, save_tensors, tensors_from_bytes};
use workbench::config::RunConfig;
use workbench::train::Trainer;

/// A safetensors file from a hand-written JSON header and data bytes (8-byte length first).
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A valid checkpoint of a tiny model after one step, written once per test process.
fn pristine() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tmpdir("ckpt-pristine");
        let mut cfg = tiny_config();
        cfg.train.batch_size = 4;
        let mut t = Trainer::new(cfg).unwrap();
        t.step().unwrap();
        t.save_checkpoint(&d.join("checkpoint")).unwrap();
        d.join("checkpoint")
    })
    .clone()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn edit_tensors(path: &Path, f: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let mut t: BTreeMap<String, Tensor> = load_tensors(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    f(&mut t);
    save_tensors(&t, path).unwrap();
}

fn edit_state(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

const EMBED: &str = "model.text.token_embed";

/// One malformed checkpoint: how to break a copy of the pristine one, and what the error of
/// `Trainer::resume` must mention (the file, and the tensor or field, and the problem).
struct Case {
    name: &'static str,
    build: fn(&Path),
    expect: &'static [&'static str],
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "model zero-byte",
            build: |d| std::fs::write(d.join("model.safetensors"), b"").unwrap(),
            expect: &["model.safetensors", "truncated: 0 bytes"],
        },
        Case {
            name: "model truncated in the header",
            build: |d| {
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..100]).unwrap();
            },
            expect: &["model.safetensors", "header length", "truncated"],
        },
        Case {
            name: "model truncated in the data",
            build: |d| {
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 10]).unwrap();
            },
            expect: &["model.safetensors", "truncated"],
        },
        Case {
            name: "model header length absurd",
            build: |d| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                std::fs::write(&p, b).unwrap();
            },
            expect: &["model.safetensors", "header length 18446744073709551615"],
        },
        Case {
            name: "model header not JSON",
            build: |d| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b[8..40].fill(b'x');
                std::fs::write(&p, b).unwrap();
            },
            expect: &[
                "model.safetensors",
                "header is not a safetensors JSON header",
            ],
        },
        Case {
            name: "model header not UTF-8",
            build: |d| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b[9] = 0xff;
                std::fs::write(&p, b).unwrap();
            },
            expect: &["model.safetensors", "not UTF-8"],
        },
        Case {
            name: "model data offsets out of range",
            build: |d| {
                let h = r#"{"model.a":{"dtype":"F32","shape":[2],"data_offsets":[0,64]}}"#;
                std::fs::write(d.join("model.safetensors"), raw_safetensors(h, &[0; 8])).unwrap();
            },
            expect: &["model.safetensors", "model.a"],
        },
        Case {
            name: "model shape and byte range disagree",
            build: |d| {
                let h = r#"{"model.a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
                std::fs::write(d.join("model.safetensors"), raw_safetensors(h, &[0; 8])).unwrap();
            },
            expect: &["model.safetensors", "shape and dtype do not match"],
        },
        Case {
            name: "model tensor of the wrong dtype",
            build: |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    let x = t[EMBED].to_dtype(DType::I64).unwrap();
                    t.insert(EMBED.into(), x);
                });
            },
            expect: &["model.safetensors", EMBED, "dtype I64"],
        },
        Case {
            name: "model tensor of the wrong shape",
            build: |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.insert(
                        EMBED.into(),
                        Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
                    );
                });
            },
            expect: &["model.safetensors", EMBED, "has shape [3, 5]"],
        },
        Case {
            name: "model tensor missing",
            build: |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.remove(EMBED);
                });
            },
            expect: &["model.safetensors", EMBED, "is missing"],
        },
        Case {
            name: "model file missing",
            build: |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(),
            expect: &["model.safetensors", "No such file"],
        },
        Case {
            name: "optimizer moment missing",
            build: |d| {
                edit_tensors(&d.join("optimizer.safetensors"), |t| {
                    t.remove(&format!("m.{EMBED}"));
                });
            },
            expect: &[
                "optimizer.safetensors",
                "m.model.text.token_embed",
                "missing",
            ],
        },
        Case {
            name: "optimizer moment of the wrong size",
            build: |d| {
                edit_tensors(&d.join("optimizer.safetensors"), |t| {
                    t.insert(
                        format!("v.{EMBED}"),
                        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
                    );
                });
            },
            expect: &[
                "optimizer.safetensors",
                "`v.model.text.token_embed` has 3 values",
            ],
        },
        Case {
            name: "optimizer truncated",
            build: |d| {
                let p = d.join("optimizer.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..7]).unwrap();
            },
            expect: &["optimizer.safetensors", "truncated: 7 bytes"],
        },
        Case {
            name: "state not JSON",
            build: |d| std::fs::write(d.join("state.json"), b"step = 3\n").unwrap(),
            expect: &["state.json", "not a valid state file"],
        },
        Case {
            name: "state missing field",
            build: |d| {
                edit_state(d, |v| {
                    v.as_object_mut().unwrap().remove("optimizer_steps");
                });
            },
            expect: &["state.json", "missing field `optimizer_steps`"],
        },
        Case {
            name: "state field of the wrong type",
            build: |d| edit_state(d, |v| v["step"] = "three".into()),
            expect: &["state.json", "field `step`", "invalid type"],
        },
        Case {
            name: "state config field of the wrong type",
            build: |d| edit_state(d, |v| v["config"]["train"]["lr"] = "fast".into()),
            expect: &["state.json", "config.train.lr", "invalid type"],
        },
        Case {
            name: "state config unknown field",
            build: |d| edit_state(d, |v| v["config"]["model"]["depht"] = 3.into()),
            expect: &["state.json", "config.model", "depht"],
        },
        Case {
            name: "state config impossible value",
            build: |d| edit_state(d, |v| v["config"]["train"]["batch_size"] = 1.into()),
            expect: &["state.json", "config.train.batch_size", "at least 2"],
        },
        Case {
            name: "state format from the future",
            build: |d| edit_state(d, |v| v["format"] = 99.into()),
            expect: &["state.json", "format 99 is not supported"],
        },
        Case {
            name: "state trailing bytes",
            build: |d| {
                let p = d.join("state.json");
                let mut b = std::fs::read(&p).unwrap();
                b.extend_from_slice(b"}{");
                std::fs::write(&p, b).unwrap();
            },
            expect: &["state.json", "trailing"],
        },
        Case {
            name: "state names another objective",
            build: |d| edit_state(d, |v| v["objective"] = "siglip".into()),
            expect: &["checkpoint", "was trained with objective `siglip`"],
        },
        Case {
            name: "state config names missing data files",
            build: |d| {
                edit_state(d, |v| {
                    v["config"]["data"]["files"] = serde_json::json!({"path": "gone/captions.csv"});
                });
            },
            expect: &["gone/captions.csv"],
        },
        Case {
            name: "tokenizer garbage",
            build: |d| std::fs::write(d.join("tokenizer.json"), b"{\"model\": 3").unwrap(),
            expect: &["tokenizer.json"],
        },
    ]
}

#[test]
fn every_malformed_checkpoint_names_the_file_and_the_problem() {
    let cases = cases();
    let pristine = pristine();
    Trainer::resume(&pristine, Some(Device::Cpu)).unwrap();
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let d = tmpdir(&format!("ckpt-bad-{i}")).join("checkpoint");
        copy_dir(&pristine, &d);
        (c.build)(&d);
        let got = std::panic::catch_unwind(|| Trainer::resume(&d, Some(Device::Cpu)).err());
        match got {
            Err(_) => failures.push(format!("{}: panicked", c.name)),
            Ok(None) => failures.push(format!("{}: no error", c.name)),
            Ok(Some(e)) => {
                let msg = e.to_string();
                if !c.expect.iter().all(|x| msg.contains(x)) {
                    failures.push(format!("{}: {msg:?} lacks {:?}", c.name, c.expect));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_run_config_toml_that_is_garbage_or_incomplete_is_named() {
    let d = tmpdir("ckpt-config-toml");
    let cases: [(&str, &[&str]); 4] = [
        ("\u{0}\u{1}garbage [[", &["config.toml", "line 1"]),
        (
            "[train]\nsteps = \"many\"\n",
            &["config.toml", "train.steps", "line 2"],
        ),
        (
            "[data.files]\nformat = \"csv\"\n",
            &["config.toml", "data.files.path"],
        ),
        ("preset = 3\n", &["config.toml", "preset", "line 1"]),
    ];
    for (text, expect) in cases {
        let p = d.join("config.toml");
        std::fs::write(&p, text).unwrap();
        let e = RunConfig::load(&p).unwrap_err().to_string();
        assert!(expect.iter().all(|x| e.contains(x)), "{text:?}: {e}");
    }
    let e = RunConfig::load(&d.join("absent.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.toml"), "{e}");
}

#[test]
fn safetensors_bytes_never_panic_and_float_types_convert() {
    let path = Path::new("x/model.safetensors");
    // Half-precision tensors are read (and converted to f32 when loaded into parameters).
    let h = r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]}}"#;
    let t = tensors_from_bytes(
        &raw_safetensors(h, &[0, 60, 0, 188, 128, 63]),
        path,
        &Device::Cpu,
    )
    .unwrap();
    let a = t["a"]
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, [1.0, -1.0]);
    assert_eq!(
        t["b"]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        [1.0]
    );
    // Whatever the bytes: a clean error naming the file.
    let mut rng = workbench::rng::Rng::new(5);
    let valid = raw_safetensors(h, &[0, 60, 0, 188, 128, 63]);
    for k in 0..2000 {
        let mut b = valid.clone();
        match k % 3 {
            0 => b.truncate(rng.below(b.len())),
            1 => {
                let i = rng.below(b.len());
                b[i] = rng.below(256) as u8;
            }
            _ => {
                let i = rng.below(b.len());
                b.insert(i, rng.below(256) as u8);
            }
        }
        if let Err(e) = tensors_from_bytes(&b, path, &Device::Cpu) {
            assert!(e.to_string().contains("x/model.safetensors"), "{e}");
        }
    }
}

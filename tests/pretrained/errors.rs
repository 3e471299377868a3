//! Broken pretrained checkpoints: each is an error naming the file and the field or tensor, and
//! what was expected; none panics.

use super::fixture;
use crate::util::tmpdir;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use workbench::pretrained;

/// Copies a fixture to a scratch directory and lets `edit` break it; returns the load error.
fn broken(name: &str, tag: &str, edit: impl FnOnce(&Path)) -> String {
    let dir = tmpdir(&format!("hf-{tag}"));
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    edit(&dir);
    match pretrained::load(&dir, &Device::Cpu) {
        Ok(_) => panic!("{tag}: a broken checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn edit_tensors(path: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, path).unwrap();
}

/// Fixture, tag, how to break it, what the error must say.
type Case = (
    &'static str,
    &'static str,
    Box<dyn FnOnce(&Path)>,
    &'static [&'static str],
);

#[test]
fn broken_checkpoints_are_errors_naming_file_and_field() {
    let cases: Vec<Case> = vec![
        (
            "clip",
            "truncated",
            Box::new(|d: &Path| {
                let p = d.join("model.safetensors");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
            }),
            &["model.safetensors", "not a valid safetensors file"],
        ),
        (
            "clip",
            "wrong-shape",
            Box::new(|d: &Path| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.insert(
                        "visual_projection.weight".into(),
                        Tensor::zeros((24, 31), DType::F16, &Device::Cpu).unwrap(),
                    );
                });
            }),
            &[
                "model.safetensors",
                "`visual_projection.weight`",
                "[24, 31]",
                "[24, 32]",
            ],
        ),
        (
            "siglip",
            "missing",
            Box::new(|d: &Path| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.remove("vision_model.head.probe");
                });
            }),
            &[
                "model.safetensors",
                "`vision_model.head.probe` is missing",
                "[1, 1, 32]",
            ],
        ),
        (
            "clip",
            "nan",
            Box::new(|d: &Path| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.insert(
                        "text_model.final_layer_norm.weight".into(),
                        Tensor::full(f32::NAN, 32, &Device::Cpu).unwrap(),
                    );
                });
            }),
            &["`text_model.final_layer_norm.weight`", "NaN"],
        ),
        (
            "clip",
            "bert",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| v["model_type"] = "bert".into());
            }),
            &[
                "config.json",
                "`model_type`",
                "\"bert\"",
                "expected \"clip\"",
            ],
        ),
        (
            "clip",
            "absurd",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| {
                    v["vision_config"]["hidden_size"] = serde_json::json!(1_000_000_000_000u64);
                });
            }),
            &[
                "config.json",
                "`vision_config.hidden_size`",
                "1000000000000",
                "1..=16384",
            ],
        ),
        (
            "siglip",
            "heads",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| {
                    v["text_config"]["num_attention_heads"] = 5.into();
                });
            }),
            &[
                "config.json",
                "`text_config.num_attention_heads`",
                "does not divide",
            ],
        ),
        (
            "clip",
            "patch",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| {
                    v["vision_config"]["patch_size"] = 7.into();
                });
            }),
            &[
                "config.json",
                "`vision_config.patch_size`",
                "does not divide",
            ],
        ),
        (
            "clip",
            "negative",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| {
                    v["text_config"]["num_hidden_layers"] = (-2).into();
                });
            }),
            &[
                "config.json",
                "`text_config.num_hidden_layers`",
                "positive integer",
            ],
        ),
        (
            "clip",
            "act",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| {
                    v["text_config"]["hidden_act"] = "relu".into();
                });
            }),
            &["config.json", "`text_config.hidden_act`", "\"relu\""],
        ),
        (
            "clip",
            "vocab",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| {
                    v["text_config"]["vocab_size"] = 100.into();
                });
            }),
            &["tokenizer.json", "300 ids", "100"],
        ),
        (
            "clip",
            "eos",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |v| {
                    v["text_config"]["eos_token_id"] = 7.into();
                });
            }),
            &[
                "config.json",
                "`text_config.eos_token_id`",
                "is 7",
                "tokenizer.json is 1",
            ],
        ),
        (
            "siglip",
            "stats",
            Box::new(|d: &Path| {
                edit_json(&d.join("preprocessor_config.json"), |v| {
                    v["image_std"] = serde_json::json!([0.5, 0.0, 0.5]);
                });
            }),
            &["preprocessor_config.json", "`image_std`", "positive"],
        ),
        (
            "clip",
            "no-config",
            Box::new(|d: &Path| std::fs::remove_file(d.join("config.json")).unwrap()),
            &["config.json"],
        ),
    ];
    for (name, tag, edit, needles) in cases {
        let e = broken(name, tag, edit);
        for n in needles {
            assert!(e.contains(n), "{tag}: {n:?} not in {e:?}");
        }
    }
}

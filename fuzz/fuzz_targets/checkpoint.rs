//! Fuzzes the checkpoint readers: safetensors bytes loaded into a parameter store (strict, so
//! missing tensors and wrong shapes are exercised), `state.json`, and a run's `config.toml`.
//! The first byte picks the reader; the rest is its input.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use workbench::checkpoint::tensors_from_bytes;
use workbench::config::RunConfig;
use workbench::params::{Init, Params};
use workbench::train::CheckpointState;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let path = Path::new("ck/model.safetensors");
            if let Ok(tensors) = tensors_from_bytes(rest, path, &Device::Cpu) {
                let params = Params::new(0, &Device::Cpu);
                params.var("model.a", (2, 3), Init::Zeros).unwrap();
                params.var("model.b", 4, Init::Ones).unwrap();
                if params.load_tensors(tensors, path, true).is_ok() {
                    assert_eq!(params.get("model.a").unwrap().dims(), &[2, 3]);
                }
            }
        }
        1 => {
            let _ = CheckpointState::from_json(rest, Path::new("ck/state.json"));
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = RunConfig::from_toml(text, Path::new("run/config.toml"));
            }
        }
    }
});

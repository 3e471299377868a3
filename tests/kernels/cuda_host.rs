//! The CUDA attention kernels' source (`kernels/src/cuda/attention.cu`) executed on the host,
//! against the reference: a check of their arithmetic and indexing that needs no GPU. A C++
//! compiler builds the source with a shim of the CUDA built-ins (`tests/fixtures/cuda-host`),
//! running each kernel as a grid of one-thread blocks, fewer than the work items, so every
//! grid-stride loop takes several turns. What this cannot check — launch configuration, memory
//! and the device's own `expf` — the GPU tests in `cuda.rs` do where a GPU exists.

use super::randn;
use crate::util::{assert_close, tmpdir};
use candle_core::{Device, Tensor, Var};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the host runner once per test process; `None` (after saying why) without a compiler.
fn runner(dir: &Path) -> Option<PathBuf> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let exe = dir.join("attention-host");
    let root = repo();
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-o"])
        .arg(&exe)
        .arg("-I")
        .arg(root.join("tests/fixtures/cuda-host"))
        .arg("-I")
        .arg(root.join("kernels/src/cuda"))
        .arg(root.join("tests/fixtures/cuda-host/attention.cpp"))
        .output();
    match out {
        Err(e) => {
            eprintln!("cuda_host: skipped, no C++ compiler `{cxx}` ({e})");
            None
        }
        Ok(o) => {
            assert!(
                o.status.success(),
                "attention.cu does not compile on the host:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(exe)
        }
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn attention_cuda_source_matches_reference_on_the_host() {
    let dir = tmpdir("cuda-host-attention");
    let Some(exe) = runner(&dir) else {
        return;
    };
    // Causal and not; one-lane heads, the vision and text shapes, the widest head (128).
    for (b, l, heads, dh, causal, blocks) in [
        (3usize, 16usize, 4usize, 16usize, true, 7u64),
        (2, 17, 2, 64, false, 5),
        (2, 9, 3, 1, true, 1),
        (1, 5, 1, 128, false, 3),
        (4, 33, 2, 8, true, 64),
    ] {
        let d = heads * dh;
        let qkv = randn(&[b, l, 3 * d], 50 + l as u64, 1.5);
        let go = randn(&[b, l, d], 60 + l as u64, 1.0);
        let mut input = Vec::new();
        for v in [b, l, heads, dh, usize::from(causal)] {
            input.extend_from_slice(&(v as u64).to_le_bytes());
        }
        input.extend_from_slice(&blocks.to_le_bytes());
        for t in [&qkv, &go] {
            for x in t.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
                input.extend_from_slice(&x.to_le_bytes());
            }
        }
        let (fin, fout) = (dir.join("in.bin"), dir.join("out.bin"));
        std::fs::write(&fin, input).unwrap();
        let status = Command::new(&exe).arg(&fin).arg(&fout).status().unwrap();
        assert!(status.success(), "host runner failed: {status}");
        let got = floats(&std::fs::read(&fout).unwrap());
        let (n_out, n_p) = (b * l * d, b * heads * l * l);
        assert_eq!(got.len(), n_out + n_p + 3 * n_out, "runner output size");
        let name =
            format!("attention.cu on the host (B {b}, L {l}, {heads}×{dh}, causal {causal})");
        let dev = Device::Cpu;
        let out = Tensor::from_slice(&got[..n_out], (b, l, d), &dev).unwrap();
        let p = Tensor::from_slice(&got[n_out..n_out + n_p], (b, heads, l, l), &dev).unwrap();
        let dqkv = Tensor::from_slice(&got[n_out + n_p..], (b, l, 3 * d), &dev).unwrap();

        let var = Var::from_tensor(&qkv).unwrap();
        let reference = kernels::attention_reference(var.as_tensor(), heads, causal).unwrap();
        let grads = (&reference * &go)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let weights = kernels::attention::attention_weights_reference(&qkv, heads, causal).unwrap();
        assert_close(&out, &reference, 2e-5, &format!("{name}: output"));
        assert_close(&p, &weights, 1e-6, &format!("{name}: weights"));
        assert_close(
            &dqkv,
            grads.get(&var).unwrap(),
            1e-4,
            &format!("{name}: gradient"),
        );
    }
}

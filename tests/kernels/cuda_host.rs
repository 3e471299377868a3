//! The CUDA kernels' sources (`kernels/src/cuda/*.cu`) executed on the host, against the
//! references: their arithmetic, indexing, block reductions and strip walks checked without a
//! GPU. A C++ compiler builds the sources with a shim of the CUDA built-ins
//! (`tests/fixtures/cuda-host/shim.h`: each block run by real threads, so barriers, warp
//! shuffles and shared memory behave as on a GPU) and a driver that launches them with the
//! configurations and in the order of the Rust host code (`kernels.cpp`). Grids are capped at a
//! few blocks and strips at a few rows, so every grid-stride loop, row chunk and strip boundary
//! is crossed. Not covered here, and left to the GPU tests in `cuda.rs`: the Rust launch code
//! itself, device memory, cuBLAS, and the device's own `expf` / `logf`.

use super::randn;
use crate::util::{assert_close, tmpdir};
use candle_core::{Device, Tensor, Var};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The host runner, built once per test process; `None` (after saying why) without a C++20
/// compiler.
fn runner() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let exe = tmpdir("cuda-host").join("kernels-host");
        let root = repo();
        let fixtures = root.join("tests/fixtures/cuda-host");
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O1", "-pthread", "-o"])
            .arg(&exe)
            .arg("-I")
            .arg(&fixtures)
            .arg("-I")
            .arg(root.join("kernels/src/cuda"))
            .arg(fixtures.join("kernels.cpp"))
            .output();
        match out {
            Err(e) => {
                eprintln!("cuda_host: skipped, no C++ compiler `{cxx}` ({e})");
                None
            }
            Ok(o) => {
                assert!(
                    o.status.success(),
                    "the CUDA sources do not compile on the host:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                );
                Some(exe)
            }
        }
    })
    .as_deref()
}

/// Runs `op` of the host runner on `arrays` with integer `params` and grids capped at `cap`
/// blocks; returns its output arrays.
fn host(op: &str, params: &[usize], cap: u64, arrays: &[&Tensor]) -> Option<Vec<Vec<f32>>> {
    let exe = runner()?;
    let mut input = Vec::new();
    let mut put = |v: u64| input.extend_from_slice(&v.to_le_bytes());
    put(params.len() as u64);
    for &p in params {
        put(p as u64);
    }
    put(cap);
    put(arrays.len() as u64);
    for t in arrays {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        input.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in &v {
            input.extend_from_slice(&x.to_le_bytes());
        }
    }
    let dir = tmpdir(&format!("cuda-host-{op}-{}", input.len()));
    let (fin, fout) = (dir.join("in.bin"), dir.join("out.bin"));
    std::fs::write(&fin, input).unwrap();
    let status = Command::new(exe)
        .arg(op)
        .arg(&fin)
        .arg(&fout)
        .status()
        .unwrap();
    assert!(status.success(), "host runner, {op}: {status}");
    let bytes = std::fs::read(&fout).unwrap();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let (mut at, mut out) = (8, Vec::new());
    for _ in 0..word(0) {
        let n = word(at);
        at += 8;
        out.push(
            bytes[at..at + 4 * n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        at += 4 * n;
    }
    std::fs::remove_dir_all(dir).ok();
    Some(out)
}

/// The reference's output and the gradients of `Σ out ⊙ w` with respect to each input.
fn reference(
    inputs: &[&Tensor],
    w: &Tensor,
    f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let grads = (&out * w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (out, g)
}

fn tensor(v: &[f32], like: &Tensor) -> Tensor {
    Tensor::from_slice(v, like.dims(), &Device::Cpu).unwrap()
}

#[test]
fn elementwise_and_row_kernels_match_references_on_the_host() {
    // GELU: more elements than a capped grid of 256-thread blocks covers.
    let x = randn(&[3, 700], 1, 2.0);
    let g = randn(&[3, 700], 2, 1.0);
    let Some(out) = host("gelu", &[], 2, &[&x, &g]) else {
        return;
    };
    let (y, grads) = reference(&[&x], &g, |t| kernels::gelu_reference(&t[0]));
    assert_close(&tensor(&out[0], &x), &y, 1e-6, "gelu.cu forward");
    assert_close(&tensor(&out[1], &x), &grads[0], 1e-5, "gelu.cu backward");

    // Bias: 37 rows of 300 (more columns than a block has threads), chunks of 5 rows.
    let (x, b, g) = (
        randn(&[37, 300], 3, 1.0),
        randn(&[300], 4, 1.0),
        randn(&[37, 300], 5, 1.0),
    );
    let out = host("bias", &[300, 5], 3, &[&x, &b, &g]).unwrap();
    let (y, grads) = reference(&[&x, &b], &g, |t| kernels::add_bias_reference(&t[0], &t[1]));
    assert_close(&tensor(&out[0], &x), &y, 1e-6, "bias.cu forward");
    assert_close(&tensor(&out[1], &b), &grads[1], 1e-4, "bias.cu row sums");

    // Softmax: causally masked rows (−∞ entries), rows longer than a block, grid-stride rows.
    let mask = kernels::attention::causal_mask(9, &Device::Cpu).unwrap();
    for (what, x) in [
        (
            "masked",
            randn(&[2, 3, 9, 9], 6, 3.0).broadcast_add(&mask).unwrap(),
        ),
        ("long rows", randn(&[5, 1500], 7, 3.0)),
    ] {
        let n = *x.dims().last().unwrap();
        let g = randn(x.dims(), 8, 1.0);
        let out = host("softmax", &[n], 4, &[&x, &g]).unwrap();
        let (y, grads) = reference(&[&x], &g, |t| kernels::softmax_last_reference(&t[0]));
        assert_close(
            &tensor(&out[0], &x),
            &y,
            1e-6,
            &format!("softmax.cu ({what})"),
        );
        assert_close(
            &tensor(&out[1], &x),
            &grads[0],
            1e-5,
            &format!("softmax.cu backward ({what})"),
        );
    }

    // LayerNorm: rows of 48 (one warp and a half), of 1000 (several passes of a 512 block).
    for (rows, d) in [(23, 48), (6, 1000)] {
        let (x, w, b, g) = (
            randn(&[rows, d], 9, 2.0),
            randn(&[d], 10, 1.0),
            randn(&[d], 11, 1.0),
            randn(&[rows, d], 12, 1.0),
        );
        let eps = Tensor::new(&[1e-5f32], &Device::Cpu).unwrap();
        let out = host("layer_norm", &[d, 4], 3, &[&x, &w, &b, &g, &eps]).unwrap();
        let (y, grads) = reference(&[&x, &w, &b], &g, |t| {
            kernels::layer_norm_reference(&t[0], &t[1], &t[2], 1e-5)
        });
        let what = format!("layer_norm.cu ({rows} × {d})");
        assert_close(&tensor(&out[0], &x), &y, 2e-5, &format!("{what} forward"));
        assert_close(&tensor(&out[1], &x), &grads[0], 1e-4, &format!("{what} dx"));
        let dwdb = Tensor::from_slice(&out[2], (2, d), &Device::Cpu).unwrap();
        let expected = Tensor::stack(&[&grads[1], &grads[2]], 0).unwrap();
        assert_close(&dwdb, &expected, 1e-4, &format!("{what} dw, db"));
    }
}

fn unit_rows(b: usize, d: usize, seed: u64) -> Tensor {
    let x = randn(&[b, d], seed, 1.0);
    x.broadcast_div(&x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
        .unwrap()
}

#[test]
fn contrastive_strip_kernels_match_references_on_the_host() {
    // B 11 in strips of 4 rows (the last one short), with a capped grid.
    let (b, d, tile) = (11, 6, 4);
    let (x, y) = (unit_rows(b, d, 20), unit_rows(b, d, 21));
    let up = Tensor::new(&[0.7f32, 1.3], &Device::Cpu).unwrap();
    let scale = Tensor::new(&[9.5f32], &Device::Cpu).unwrap();
    let Some(out) = host("infonce", &[b, d, tile], 2, &[&x, &y, &scale, &up]) else {
        return;
    };
    let (loss, grads) = reference(&[&x, &y, &scale], &up, |t| {
        kernels::infonce_reference(&t[0], &t[1], &t[2])
    });
    assert_close(
        &tensor(&out[0][..2], &loss),
        &loss,
        1e-5,
        "infonce strips: losses",
    );
    let gx = Tensor::from_slice(&out[1][..b * d], (b, d), &Device::Cpu).unwrap();
    let gy = Tensor::from_slice(&out[1][b * d..2 * b * d], (b, d), &Device::Cpu).unwrap();
    assert_close(&gx, &grads[0], 1e-5, "infonce strips: d image");
    assert_close(&gy, &grads[1], 1e-5, "infonce strips: d text");
    assert_close(
        &tensor(&out[1][2 * b * d..], &grads[2]),
        &grads[2],
        1e-5,
        "infonce strips: d scale",
    );

    let sb = Tensor::new(&[7.0f32, -3.0], &Device::Cpu).unwrap();
    let out = host("sigmoid", &[b, d, tile], 2, &[&x, &y, &sb, &up]).unwrap();
    let (loss, grads) = reference(&[&x, &y, &sb], &up, |t| {
        kernels::sigmoid_pairwise_reference(
            &t[0],
            &t[1],
            &t[2].narrow(0, 0, 1)?,
            &t[2].narrow(0, 1, 1)?,
        )
    });
    assert_close(
        &tensor(&out[0], &loss),
        &loss,
        1e-5,
        "sigmoid strips: losses",
    );
    let gx = Tensor::from_slice(&out[1][..b * d], (b, d), &Device::Cpu).unwrap();
    let gy = Tensor::from_slice(&out[1][b * d..2 * b * d], (b, d), &Device::Cpu).unwrap();
    assert_close(&gx, &grads[0], 1e-5, "sigmoid strips: d image");
    assert_close(&gy, &grads[1], 1e-5, "sigmoid strips: d text");
    assert_close(
        &tensor(&out[1][2 * b * d..], &grads[2]),
        &grads[2],
        1e-4,
        "sigmoid strips: d scale, d bias",
    );
}

#[test]
fn bf16_gelu_bias_and_attention_kernels_match_the_cpu_loops_on_the_host() {
    use candle_core::DType;
    // Inputs that are bf16 values; the CPU loops' bf16 results (the f32 op rounded once) are
    // what the kernels must give. The device's `expf` may differ from Rust's in the last f32
    // bit, which can move a GELU result by one bf16 step; sums in another order likewise.
    let bf16 = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let one_step = |t: &Tensor| crate::util::max_abs(t) / 128.0;
    let (x, g) = (
        bf16(randn(&[3, 700], 31, 2.0)),
        bf16(randn(&[3, 700], 32, 1.0)),
    );
    let Some(out) = host("gelu_bf16", &[], 2, &[&widen(&x), &widen(&g)]) else {
        return;
    };
    let (y, grads) = reference(&[&x], &g, |t| kernels::gelu(&t[0]));
    let (y, dx) = (widen(&y), widen(&grads[0]));
    assert_close(
        &tensor(&out[0], &y),
        &y,
        one_step(&y),
        "gelu.cu bf16 forward",
    );
    assert_close(
        &tensor(&out[1], &dx),
        &dx,
        one_step(&dx),
        "gelu.cu bf16 backward",
    );

    let (x, b, g) = (
        bf16(randn(&[37, 300], 33, 1.0)),
        bf16(randn(&[300], 34, 1.0)),
        bf16(randn(&[37, 300], 35, 1.0)),
    );
    let out = host(
        "bias_bf16",
        &[300, 5],
        3,
        &[&widen(&x), &widen(&b), &widen(&g)],
    )
    .unwrap();
    let (y, grads) = reference(&[&x, &b], &g, |t| kernels::add_bias(&t[0], &t[1]));
    let (y, db) = (widen(&y), widen(&grads[1]));
    assert_close(&tensor(&out[0], &y), &y, 0.0, "bias.cu bf16 forward");
    assert_close(
        &tensor(&out[1], &db),
        &db,
        one_step(&db),
        "bias.cu bf16 row sums",
    );
    // Attention: output and qkv gradient in bf16 (dot products and sums in another order than
    // the CPU loop's, so within one step), the weights in f32.
    for (bsz, l, heads, dh, causal) in [
        (2usize, 17usize, 2usize, 16usize, true),
        (3, 9, 4, 8, false),
    ] {
        let d = heads * dh;
        let (qkv, go) = (
            bf16(randn(&[bsz, l, 3 * d], 36 + l as u64, 1.5)),
            bf16(randn(&[bsz, l, d], 37, 1.0)),
        );
        let params = [bsz, l, heads, dh, usize::from(causal)];
        let out = host("attention_bf16", &params, 2, &[&widen(&qkv), &widen(&go)]).unwrap();
        let (y, grads) = reference(&[&qkv], &go, |t| kernels::attention(&t[0], heads, causal));
        let (y, dqkv) = (widen(&y), widen(&grads[0]));
        let w = kernels::attention_weights(&qkv, heads, causal).unwrap();
        let name = format!("attention.cu bf16 (L {l}, causal {causal})");
        assert_close(
            &tensor(&out[0], &y),
            &y,
            one_step(&y),
            &format!("{name}: output"),
        );
        assert_close(&tensor(&out[1], &w), &w, 1e-6, &format!("{name}: weights"));
        assert_close(
            &tensor(&out[2], &dqkv),
            &dqkv,
            one_step(&dqkv),
            &format!("{name}: dqkv"),
        );
    }
}

#[test]
fn attention_kernels_match_reference_on_the_host() {
    // Causal and not; one-lane heads, the vision and text shapes, the widest head (128).
    for (b, l, heads, dh, causal, cap) in [
        (3usize, 16usize, 4usize, 16usize, true, 1u64),
        (2, 17, 2, 64, false, 1),
        (2, 9, 3, 1, true, 1),
        (1, 5, 1, 128, false, 1),
        (4, 33, 2, 8, true, 2),
    ] {
        let d = heads * dh;
        let qkv = randn(&[b, l, 3 * d], 50 + l as u64, 1.5);
        let go = randn(&[b, l, d], 60 + l as u64, 1.0);
        let Some(out) = host(
            "attention",
            &[b, l, heads, dh, usize::from(causal)],
            cap,
            &[&qkv, &go],
        ) else {
            return;
        };
        let name = format!("attention.cu (B {b}, L {l}, {heads}×{dh}, causal {causal})");
        let (y, grads) = reference(&[&qkv], &go, |t| {
            kernels::attention_reference(&t[0], heads, causal)
        });
        let weights = kernels::attention::attention_weights_reference(&qkv, heads, causal).unwrap();
        assert_close(&tensor(&out[0], &y), &y, 2e-5, &format!("{name}: output"));
        assert_close(
            &tensor(&out[1], &weights),
            &weights,
            1e-6,
            &format!("{name}: weights"),
        );
        assert_close(
            &tensor(&out[2], &qkv),
            &grads[0],
            1e-4,
            &format!("{name}: gradient"),
        );
    }
}

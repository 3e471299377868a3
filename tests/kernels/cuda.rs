//! The fused ops on a CUDA device (their NVRTC kernels) against their references on the CPU,
//! forward and backward. Built with `--features cuda`; without a usable GPU every test prints
//! that it was skipped and why, and checks nothing.

use super::{randn, unit_rows};
use crate::util::assert_close;
use candle_core::{Device, Tensor, Var};

/// The first CUDA device, or `None` after printing why the test is skipped.
fn gpu(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            // The first line: candle appends a backtrace when backtraces are enabled.
            let e = e.to_string();
            let why = e.lines().next().unwrap_or_default();
            eprintln!("{test}: skipped, no usable CUDA device ({why})");
            None
        }
    }
}

/// Runs `fused` on `dev` and `reference` on the CPU with the same inputs (given on the CPU), and
/// compares the outputs and the gradients of `Σ out ⊙ w` (random `w`) for every input. Then
/// checks that the kernels of `source` were compiled, so the CUDA path, not the reference, ran.
fn check_on(
    dev: &Device,
    name: &str,
    source: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    atol: f64,
) {
    let run = |dev: &Device, f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        assert!(
            out.device().same_device(dev),
            "{name}: output left the device"
        );
        let w = randn(out.dims(), 99, 1.0).to_device(dev).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|v| grads.get(v).unwrap().to_device(&Device::Cpu).unwrap())
            .collect();
        (out.to_device(&Device::Cpu).unwrap(), grads)
    };
    let (out_f, grads_f) = run(dev, &fused);
    let (out_r, grads_r) = run(&Device::Cpu, &reference);
    assert_close(&out_f, &out_r, atol, &format!("{name} forward (CUDA)"));
    for (i, (a, b)) in grads_f.iter().zip(&grads_r).enumerate() {
        assert_close(
            a,
            b,
            atol * 10.0,
            &format!("{name} backward (CUDA), input {i}"),
        );
    }
    assert!(
        kernels::cuda::compiled().iter().any(|(s, _)| *s == source),
        "{name}: the {source} kernels never ran: {:?}",
        kernels::cuda::compiled()
    );
}

#[test]
fn gelu_on_cuda_matches_reference() {
    let Some(dev) = gpu("gelu_on_cuda_matches_reference") else {
        return;
    };
    // More elements than one grid covers (65 535 blocks of 256): the grid-stride loop.
    for shape in [vec![3, 7, 129], vec![70_000, 240]] {
        check_on(
            &dev,
            &format!("gelu {shape:?}"),
            "gelu",
            &[randn(&shape, 1, 2.0)],
            |t| kernels::gelu(&t[0]),
            |t| kernels::gelu_reference(&t[0]),
            1e-5,
        );
    }
}

/// An op on tensors of one device, unwrapped.
type Op<'a> = &'a dyn Fn(&[Tensor]) -> Tensor;

#[test]
fn bf16_gelu_bias_and_attention_on_cuda_match_the_cpu_loops() {
    use candle_core::DType;
    let Some(dev) = gpu("bf16_gelu_bias_and_attention_on_cuda_match_the_cpu_loops") else {
        return;
    };
    // Both sides compute in f32 and round once, so they differ by at most one bf16 step (the
    // device's `expf`, the order of a sum). candle's composed bf16 ops, which ran here before,
    // round after every op: GELU's backward and the bias gradient then differ by more.
    let bf16 = |shape: &[usize], seed: u64, scale: f64| {
        randn(shape, seed, scale).to_dtype(DType::BF16).unwrap()
    };
    let run = |dev: &Device, inputs: &[Tensor], op: &dyn Fn(&[Tensor]) -> Tensor| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = op(&ts);
        assert_eq!(out.dtype(), DType::BF16);
        let w = bf16(out.dims(), 99, 1.0).to_device(dev).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let widen = |t: &Tensor| {
            t.to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let mut all = vec![widen(&out)];
        all.extend(vars.iter().map(|v| widen(grads.get(v).unwrap())));
        all
    };
    let cases: [(&str, Vec<Tensor>, Op<'_>); 3] = [
        ("gelu", vec![bf16(&[70_000, 240], 41, 2.0)], &|t| {
            kernels::gelu(&t[0]).unwrap()
        }),
        (
            "bias",
            vec![bf16(&[300, 700], 42, 1.0), bf16(&[700], 43, 1.0)],
            &|t| kernels::add_bias(&t[0], &t[1]).unwrap(),
        ),
        // The text tower's shape: causal, 8 heads of 64.
        ("attention", vec![bf16(&[16, 77, 3 * 512], 44, 1.5)], &|t| {
            kernels::attention(&t[0], 8, true).unwrap()
        }),
    ];
    for (name, inputs, op) in cases {
        let (gpu_out, cpu_out) = (run(&dev, &inputs, op), run(&Device::Cpu, &inputs, op));
        for (i, (g, c)) in gpu_out.iter().zip(&cpu_out).enumerate() {
            let step = crate::util::max_abs(c) / 128.0;
            let d = kernels::check::max_abs_diff(g, c).unwrap();
            eprintln!("GPU bf16 {name}, tensor {i}: max |Δ| {d:e} (one bf16 step {step:e})");
            assert!(d <= step, "{name} bf16, tensor {i}: {d:e} > {step:e}");
        }
    }
}

#[test]
fn add_bias_on_cuda_matches_reference() {
    let Some(dev) = gpu("add_bias_on_cuda_matches_reference") else {
        return;
    };
    // One chunk of rows; several chunks; more columns than a block has threads.
    for (shape, bias) in [
        (vec![6, 10], vec![10]),
        (vec![40, 17, 64], vec![17, 64]),
        (vec![300, 700], vec![700]),
    ] {
        check_on(
            &dev,
            &format!("add_bias {shape:?} + {bias:?}"),
            "bias",
            &[randn(&shape, 9, 1.0), randn(&bias, 10, 1.0)],
            |t| kernels::add_bias(&t[0], &t[1]),
            |t| kernels::add_bias_reference(&t[0], &t[1]),
            1e-4,
        );
    }
}

#[test]
fn softmax_on_cuda_matches_reference_including_masked_rows() {
    let Some(dev) = gpu("softmax_on_cuda_matches_reference_including_masked_rows") else {
        return;
    };
    let mask = kernels::attention::causal_mask(9, &Device::Cpu)
        .unwrap()
        .narrow(0, 0, 5)
        .unwrap();
    let masked = randn(&[2, 3, 5, 9], 2, 3.0).broadcast_add(&mask).unwrap();
    // Rows shorter than a warp, longer than a block, and more rows than the grid has blocks.
    for (what, x) in [
        ("masked", masked),
        ("long rows", randn(&[4, 1500], 3, 3.0)),
        ("many rows", randn(&[70_000, 5], 4, 3.0)),
    ] {
        check_on(
            &dev,
            &format!("softmax ({what})"),
            "softmax",
            &[x],
            |t| kernels::softmax_last(&t[0]),
            |t| kernels::softmax_last_reference(&t[0]),
            1e-6,
        );
    }
}

#[test]
fn layer_norm_on_cuda_matches_reference() {
    let Some(dev) = gpu("layer_norm_on_cuda_matches_reference") else {
        return;
    };
    for (rows, d, atol) in [(20, 48, 1e-5), (2100, 64, 1e-4), (3, 1000, 1e-4)] {
        check_on(
            &dev,
            &format!("layer_norm ({rows} × {d})"),
            "layer_norm",
            &[
                randn(&[rows, d], 3, 3.0),
                randn(&[d], 4, 1.0),
                randn(&[d], 5, 1.0),
            ],
            |t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            |t| kernels::layer_norm_reference(&t[0], &t[1], &t[2], 1e-5),
            atol,
        );
    }
}

#[test]
fn infonce_on_cuda_matches_reference() {
    let Some(dev) = gpu("infonce_on_cuda_matches_reference") else {
        return;
    };
    // 1 and 7 fit one strip; 1100 is two full strips of 512 and a partial one.
    for b in [1, 7, 1100] {
        for (scale, atol) in [(1.0 / 0.07, 2e-5), (100.0, 1e-4)] {
            let (image, text) = (unit_rows(b, 33, 20 + b as u64), unit_rows(b, 33, 21));
            let s = Tensor::new(scale as f32, &Device::Cpu).unwrap();
            check_on(
                &dev,
                &format!("infonce (B {b}, scale {scale:.1})"),
                "contrastive",
                &[image, text, s],
                |t| kernels::infonce(&t[0], &t[1], &t[2]),
                |t| kernels::infonce_reference(&t[0], &t[1], &t[2]),
                atol,
            );
        }
    }
}

#[test]
fn sigmoid_pairwise_on_cuda_matches_reference() {
    let Some(dev) = gpu("sigmoid_pairwise_on_cuda_matches_reference") else {
        return;
    };
    for b in [1, 7, 1100] {
        for (scale, bias, atol) in [(10.0, -10.0, 2e-5), (100.0, 3.0, 1e-4)] {
            let (image, text) = (unit_rows(b, 33, 30 + b as u64), unit_rows(b, 33, 31));
            let s = Tensor::new(scale as f32, &Device::Cpu).unwrap();
            let beta = Tensor::new(&[bias as f32], &Device::Cpu).unwrap();
            // Losses in the thousands carry ~1e-7 relative error in f32 (as in the CPU test).
            let size = kernels::sigmoid_pairwise_reference(&image, &text, &s, &beta)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            check_on(
                &dev,
                &format!("sigmoid_pairwise (B {b}, scale {scale}, bias {bias})"),
                "contrastive",
                &[image, text, s, beta],
                |t| kernels::sigmoid_pairwise(&t[0], &t[1], &t[2], &t[3]),
                |t| kernels::sigmoid_pairwise_reference(&t[0], &t[1], &t[2], &t[3]),
                atol * f64::from(size).max(1.0),
            );
        }
    }
}

#[test]
fn attention_on_cuda_matches_reference() {
    let Some(dev) = gpu("attention_on_cuda_matches_reference") else {
        return;
    };
    // A text tower (causal, L 16), a vision tower (L 17, dh 64), a head of one lane, the widest
    // head the kernels take (128), and more (batch, head, query) items than the grid covers.
    for (b, l, heads, dh, causal) in [
        (3, 16, 4, 16, true),
        (2, 17, 2, 64, false),
        (2, 9, 3, 1, true),
        (1, 5, 1, 128, false),
        (8_200, 33, 2, 8, true),
    ] {
        let qkv = randn(&[b, l, 3 * heads * dh], 40 + l as u64, 1.5);
        let name = format!("attention (B {b}, L {l}, {heads}×{dh}, causal {causal})");
        check_on(
            &dev,
            &name,
            "attention",
            std::slice::from_ref(&qkv),
            |t| kernels::attention(&t[0], heads, causal),
            |t| kernels::attention_reference(&t[0], heads, causal),
            2e-5,
        );
        let w = kernels::attention_weights(&qkv.to_device(&dev).unwrap(), heads, causal)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let wr = kernels::attention::attention_weights_reference(&qkv, heads, causal).unwrap();
        assert_close(&w, &wr, 1e-6, &format!("{name} weights"));
    }
}

#[test]
fn attention_on_cuda_with_wide_heads_runs_the_reference() {
    let Some(dev) = gpu("attention_on_cuda_with_wide_heads_runs_the_reference") else {
        return;
    };
    // dh 160 is over the kernels' limit: the same numbers through the reference.
    let qkv = randn(&[2, 4, 3 * 160], 7, 1.0);
    let fused = kernels::attention(&qkv.to_device(&dev).unwrap(), 1, false)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let reference = kernels::attention_reference(&qkv, 1, false).unwrap();
    assert_close(&fused, &reference, 2e-5, "attention, head width 160 (CUDA)");
}

//! Every fused kernel equals its reference, forward and backward (and the references' gradients
//! equal finite differences).

// The same comparisons with the fused op on a CUDA device (a `cuda` build with a GPU).
#[cfg(feature = "cuda")]
mod cuda;
// The CUDA attention source run on the host with a C++ compiler (no GPU, no CUDA toolkit).
mod cuda_host;

use crate::util::assert_close;
use candle_core::{DType, Device, Tensor, Var};
use kernels::check::finite_difference_grad;
use workbench::rng::Rng;

fn randn(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(Rng::new(seed).normal_vec(n, scale), shape, &Device::Cpu).unwrap()
}

/// Compares `fused` and `reference` (both `&[Tensor] -> Tensor`) on `inputs`: the outputs, and
/// the gradients of `Σ out ⊙ w` (random `w`) with respect to every input.
fn check_op(
    name: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    atol: f64,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out_f = fused(&ts).unwrap();
    let out_r = reference(&ts).unwrap();
    assert_close(&out_f, &out_r, atol, &format!("{name} forward"));
    let w = randn(out_f.dims(), 99, 1.0);
    let gf = (&out_f * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gr = (&out_r * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (i, v) in vars.iter().enumerate() {
        let (a, b) = (gf.get(v).unwrap(), gr.get(v).unwrap());
        assert_close(a, b, atol * 10.0, &format!("{name} backward, input {i}"));
    }
}

#[test]
fn gelu_matches_reference() {
    let x = randn(&[3, 7, 129], 1, 2.0);
    check_op(
        "gelu",
        &[x],
        |t| kernels::gelu(&t[0]),
        |t| kernels::gelu_reference(&t[0]),
        1e-5,
    );
}

/// For ops whose CPU loop also takes bf16: on bf16 inputs the output and every input's
/// gradient (of `Σ out ⊙ w`, `w` bf16) are the f32 op's on the widened inputs, rounded once to
/// bf16 — bit for bit — and within one bf16 rounding of the reference on those inputs. (Not
/// of the reference run in bf16: candle's bf16 sums accumulate in bf16, and the bias gradient
/// over 2 100 rows below is then off by 7.5 in 125.)
fn check_bf16_op(
    name: &str,
    inputs: &[Tensor],
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let run = |f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>, dtype: DType| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&bf16(t).to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        assert_eq!(out.dtype(), dtype, "{name}: output dtype");
        let w = bf16(&randn(out.dims(), 99, 1.0)).to_dtype(dtype).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let grads: Vec<Tensor> = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
        (out, grads)
    };
    let (out_b, grads_b) = run(&op, DType::BF16);
    let (out_f, grads_f) = run(&op, DType::F32);
    let (out_r, grads_r) = run(&reference, DType::F32);
    let same = |a: &Tensor, b: &Tensor, what: &str| {
        let (a, b) = (f32(a), f32(&bf16(b)));
        assert_close(
            &a,
            &b,
            0.0,
            &format!("{name} {what}: bf16 against f32 rounded"),
        );
    };
    same(&out_b, &out_f, "forward");
    for (i, (b, f)) in grads_b.iter().zip(&grads_f).enumerate() {
        assert_eq!(b.dtype(), DType::BF16);
        same(b, f, &format!("backward, input {i}"));
    }
    // One rounding to bf16: at most half a step of 2⁻⁷ relative to the largest value.
    let near = |a: &Tensor, b: &Tensor, what: &str| {
        let tol = crate::util::max_abs(b) / 256.0;
        assert_close(
            &f32(a),
            &f32(b),
            tol,
            &format!("{name} {what}: bf16 against the reference"),
        );
    };
    near(&out_b, &out_r, "forward");
    for (i, (b, r)) in grads_b.iter().zip(&grads_r).enumerate() {
        near(b, r, &format!("backward, input {i}"));
    }
}

#[test]
fn gelu_add_bias_and_attention_take_bf16_on_the_cpu() {
    let x = randn(&[3, 7, 129], 21, 2.0);
    check_bf16_op(
        "gelu",
        &[x],
        |t| kernels::gelu(&t[0]),
        |t| kernels::gelu_reference(&t[0]),
    );
    for causal in [false, true] {
        let qkv = randn(&[3, 17, 3 * 4 * 16], 24, 1.5);
        check_bf16_op(
            &format!("attention (causal {causal})"),
            &[qkv],
            |t| kernels::attention(&t[0], 4, causal),
            |t| kernels::attention_reference(&t[0], 4, causal),
        );
    }
    for (shape, bias) in [(vec![6, 10], vec![10]), (vec![300, 7, 64], vec![64])] {
        let (x, b) = (randn(&shape, 22, 1.0), randn(&bias, 23, 1.0));
        check_bf16_op(
            "add_bias",
            &[x, b],
            |t| kernels::add_bias(&t[0], &t[1]),
            |t| kernels::add_bias_reference(&t[0], &t[1]),
        );
    }
}

#[test]
fn softmax_matches_reference_including_masked_rows() {
    let mut x = randn(&[2, 3, 5, 9], 2, 3.0);
    // A causal-style mask: −∞ above the diagonal of the last two dims' first 5 columns.
    let mask = kernels::attention::causal_mask(9, &Device::Cpu)
        .unwrap()
        .narrow(0, 0, 5)
        .unwrap();
    x = x.broadcast_add(&mask).unwrap();
    check_op(
        "softmax",
        &[x],
        |t| kernels::softmax_last(&t[0]),
        |t| kernels::softmax_last_reference(&t[0]),
        1e-6,
    );
}

#[test]
fn layer_norm_matches_reference() {
    let x = randn(&[4, 5, 48], 3, 3.0);
    let w = randn(&[48], 4, 1.0);
    let b = randn(&[48], 5, 1.0);
    check_op(
        "layer_norm",
        &[x, w, b],
        |t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5),
        |t| kernels::layer_norm_reference(&t[0], &t[1], &t[2], 1e-5),
        1e-5,
    );
    // Large enough to take the parallel path.
    let x = randn(&[300, 7, 64], 6, 1.0);
    let w = randn(&[64], 7, 1.0);
    let b = randn(&[64], 8, 1.0);
    check_op(
        "layer_norm (parallel)",
        &[x, w, b],
        |t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5),
        |t| kernels::layer_norm_reference(&t[0], &t[1], &t[2], 1e-5),
        1e-4,
    );
}

#[test]
fn linear_matches_reference() {
    // Rank 3 with a bias (a transformer's MLP layer), inputs not a multiple of any vector width.
    let x = randn(&[3, 7, 37], 11, 1.0);
    let w = randn(&[53, 37], 12, 0.2);
    let b = randn(&[53], 13, 1.0);
    check_op(
        "linear",
        &[x, w, b],
        |t| kernels::linear(&t[0], &t[1], Some(&t[2])),
        |t| kernels::linear_reference(&t[0], &t[1], Some(&t[2])),
        1e-5,
    );
    // Rank 2 without a bias (a projection head).
    let x = randn(&[9, 16], 14, 1.0);
    let w = randn(&[8, 16], 15, 0.3);
    check_op(
        "linear (no bias)",
        &[x, w],
        |t| kernels::linear(&t[0], &t[1], None),
        |t| kernels::linear_reference(&t[0], &t[1], None),
        1e-5,
    );
    // Large enough for gemm's threads and the bias's parallel row sums; a transposed input.
    let x = randn(&[96, 300], 16, 1.0).t().unwrap();
    let w = randn(&[130, 96], 17, 0.1);
    let b = randn(&[130], 18, 1.0);
    check_op(
        "linear (large, strided input)",
        &[x, w, b],
        |t| kernels::linear(&t[0], &t[1], Some(&t[2])),
        |t| kernels::linear_reference(&t[0], &t[1], Some(&t[2])),
        1e-4,
    );
}

#[test]
fn linear_in_bf16_matches_its_reference_and_keeps_no_graph_in_its_gradients() {
    // f32 and bf16 inputs, f32 and bf16 results, with and without a bias. Products of bf16
    // operands are rounded to bf16, so the two may differ by one bf16 step of the result where
    // the f32 sums round differently (values here are of order 1: a step is at most 2⁻⁷·4).
    let x = randn(&[4, 9, 40], 21, 1.0);
    let w = randn(&[24, 40], 22, 0.2);
    let b = randn(&[24], 23, 1.0);
    for out in [DType::F32, DType::BF16] {
        for input in [DType::F32, DType::BF16] {
            let name = format!("linear_bf16 ({input:?} in, {out:?} out)");
            let xi = x.to_dtype(input).unwrap();
            let (vx, vw, vb) = (
                Var::from_tensor(&xi).unwrap(),
                Var::from_tensor(&w).unwrap(),
                Var::from_tensor(&b).unwrap(),
            );
            let (tx, tw, tb) = (vx.as_tensor(), vw.as_tensor(), vb.as_tensor());
            for bias in [Some(tb), None] {
                let f = kernels::linear_bf16(tx, tw, bias, out).unwrap();
                let r = kernels::linear_bf16_reference(tx, tw, bias, out).unwrap();
                assert_eq!(f.dtype(), out, "{name}");
                assert_close(
                    &f.to_dtype(DType::F32).unwrap(),
                    &r.to_dtype(DType::F32).unwrap(),
                    4.0 / 128.0,
                    &name,
                );
                let upstream = randn(f.dims(), 24, 1.0).to_dtype(out).unwrap();
                let gf = (&f * &upstream)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gr = (&r * &upstream)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for (v, what) in [(&vx, "x"), (&vw, "W"), (&vb, "b")] {
                    let (Some(a), Some(c)) = (gf.get(v), gr.get(v)) else {
                        assert!(
                            bias.is_none() && what == "b",
                            "{name}: no gradient of {what}"
                        );
                        continue;
                    };
                    assert_eq!(a.dtype(), v.dtype(), "{name}: dtype of d{what}");
                    let scale = crate::util::max_abs(c);
                    assert_close(
                        &a.to_dtype(DType::F32).unwrap(),
                        &c.to_dtype(DType::F32).unwrap(),
                        scale * 2.0 / 128.0,
                        &format!("{name}: d{what}"),
                    );
                    // A gradient that recorded its own computation would keep the layer's
                    // input and the output gradient alive for as long as it lives.
                    assert!(!a.track_op(), "{name}: d{what} records a graph");
                }
            }
        }
    }
}

#[test]
fn linear_by_hand_and_its_shape_errors() {
    // [1, 2]·[[1, 0], [0, 1], [1, 1]]ᵀ + [0.5, 0, −1] = [1.5, 2, 2].
    let x = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.5f32, 0.0, -1.0], &Device::Cpu).unwrap();
    let y = kernels::linear(&x, &w, Some(&b)).unwrap();
    assert_eq!(y.to_vec2::<f32>().unwrap(), [[1.5, 2.0, 2.0]]);
    // The gradients by hand, and none of them records a graph.
    let (vx, vw, vb) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let y = kernels::linear(vx.as_tensor(), vw.as_tensor(), Some(vb.as_tensor())).unwrap();
    let up = Tensor::new(&[[1f32, -1.0, 2.0]], &Device::Cpu).unwrap();
    let g = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
    let (dx, dw, db) = (
        g.get(&vx).unwrap(),
        g.get(&vw).unwrap(),
        g.get(&vb).unwrap(),
    );
    // dx = up·W = [1 + 2, −1 + 2]; dW = upᵀ·x; db = up.
    assert_eq!(dx.to_vec2::<f32>().unwrap(), [[3.0, 1.0]]);
    assert_eq!(
        dw.to_vec2::<f32>().unwrap(),
        [[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0]]
    );
    assert_eq!(db.to_vec1::<f32>().unwrap(), [1.0, -1.0, 2.0]);
    assert!(!dx.track_op() && !dw.track_op() && !db.track_op());
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    assert!(err(kernels::linear(&x.t().unwrap(), &w, Some(&b))).contains("input features"));
    assert!(
        err(kernels::linear(&x, &w, Some(&x))).contains("does not match the weight's 3 outputs")
    );
    assert!(err(kernels::linear(&x, &b, None)).contains("(out, in) weight"));
    assert!(err(kernels::linear(&b, &w, None)).contains("rank ≥ 2"));
}

#[test]
fn add_bias_matches_reference() {
    for (shape, bias) in [(vec![6, 10], vec![10]), (vec![40, 17, 64], vec![17, 64])] {
        let x = randn(&shape, 9, 1.0);
        let b = randn(&bias, 10, 1.0);
        check_op(
            "add_bias",
            &[x, b],
            |t| kernels::add_bias(&t[0], &t[1]),
            |t| kernels::add_bias_reference(&t[0], &t[1]),
            1e-5,
        );
    }
    let x = randn(&[2, 3], 1, 1.0);
    assert!(kernels::add_bias(&x, &randn(&[2], 1, 1.0)).is_err());
}

#[test]
fn attention_matches_reference_causal_and_not() {
    for causal in [false, true] {
        for (b, l, heads, dh) in [(2, 5, 2, 4), (3, 17, 4, 16)] {
            let qkv = randn(&[b, l, 3 * heads * dh], 11 + l as u64, 1.5);
            check_op(
                &format!("attention (causal {causal}, L {l})"),
                std::slice::from_ref(&qkv),
                |t| kernels::attention(&t[0], heads, causal),
                |t| kernels::attention_reference(&t[0], heads, causal),
                2e-5,
            );
            let w = kernels::attention_weights(&qkv, heads, causal).unwrap();
            let wr = kernels::attention::attention_weights_reference(&qkv, heads, causal).unwrap();
            assert_close(&w, &wr, 1e-6, "attention weights");
        }
    }
}

type ScalarFn = dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

#[test]
fn references_have_correct_gradients() {
    // Finite differences in f64 on small inputs, for each reference (the fused ops are checked
    // against these above).
    let f64t = |shape: &[usize], seed| randn(shape, seed, 1.0).to_dtype(DType::F64).unwrap();
    let cases: Vec<(&str, Tensor, Box<ScalarFn>)> = vec![
        (
            "gelu",
            f64t(&[2, 5], 1),
            Box::new(|x: &Tensor| kernels::gelu_reference(x)?.sqr()?.sum_all()),
        ),
        (
            "softmax",
            f64t(&[2, 5], 2),
            Box::new(|x: &Tensor| {
                let w = Tensor::arange(0f64, 10.0, x.device())?.reshape((2, 5))?;
                (kernels::softmax_last_reference(x)? * w)?.sum_all()
            }),
        ),
        (
            "layer_norm",
            f64t(&[3, 6], 3),
            Box::new(|x: &Tensor| {
                let w = Tensor::arange(1f64, 7.0, x.device())?;
                let b = Tensor::zeros(6, DType::F64, x.device())?;
                kernels::layer_norm_reference(x, &w, &b, 1e-5)?
                    .sqr()?
                    .sum_all()
            }),
        ),
        (
            "attention",
            f64t(&[1, 4, 12], 4),
            Box::new(|x: &Tensor| kernels::attention_reference(x, 2, true)?.sqr()?.sum_all()),
        ),
        (
            "linear",
            f64t(&[2, 3, 4], 5),
            Box::new(|x: &Tensor| {
                let w = Tensor::arange(-3f64, 9.0, x.device())?.reshape((3, 4))?;
                let b = Tensor::new(&[0.5f64, -1.0, 2.0], x.device())?;
                kernels::linear_reference(x, &w, Some(&b))?.sqr()?.sum_all()
            }),
        ),
    ];
    // The two contrastive losses, with respect to the image embeddings and to the scale.
    let text = move || f64t(&[3, 4], 6);
    let nce = |x: &Tensor, t: &Tensor, s: &Tensor| -> candle_core::Result<Tensor> {
        let w = Tensor::new(&[0.7f64, -1.3], x.device())?;
        (kernels::infonce_reference(x, t, s)? * w)?.sum_all()
    };
    let sig = |x: &Tensor, t: &Tensor, s: &Tensor| -> candle_core::Result<Tensor> {
        let w = Tensor::new(&[0.7f64, -1.3], x.device())?;
        let bias = Tensor::new(-1.5f64, x.device())?;
        (kernels::sigmoid_pairwise_reference(x, t, s, &bias)? * w)?.sum_all()
    };
    let s0 = || Tensor::new(3.0f64, &Device::Cpu).unwrap();
    let mut cases = cases;
    cases.extend([
        (
            "infonce (image)",
            f64t(&[3, 4], 5),
            Box::new(move |x: &Tensor| nce(x, &text(), &s0())) as Box<ScalarFn>,
        ),
        (
            "infonce (scale)",
            s0(),
            Box::new(move |s: &Tensor| nce(&f64t(&[3, 4], 5), &text(), s)),
        ),
        (
            "sigmoid_pairwise (text)",
            text(),
            Box::new(move |t: &Tensor| sig(&f64t(&[3, 4], 5), t, &s0())),
        ),
        (
            "sigmoid_pairwise (scale)",
            s0(),
            Box::new(move |s: &Tensor| sig(&f64t(&[3, 4], 5), &text(), s)),
        ),
    ]);
    for (name, x, f) in cases {
        let v = Var::from_tensor(&x).unwrap();
        let analytic = f(v.as_tensor())
            .unwrap()
            .backward()
            .unwrap()
            .get(&v)
            .unwrap()
            .clone();
        let numeric = finite_difference_grad(&f, &x, 1e-6).unwrap();
        assert_close(&analytic, &numeric, 1e-6, &format!("{name} gradient"));
    }
}

#[test]
fn non_cpu_or_non_f32_inputs_fall_back_to_the_reference() {
    let x = randn(&[2, 3, 8], 1, 1.0).to_dtype(DType::F64).unwrap();
    let a = kernels::gelu(&x).unwrap();
    assert_eq!(a.dtype(), DType::F64);
    assert_close(&a, &kernels::gelu_reference(&x).unwrap(), 0.0, "gelu f64");
    let (i, t) = (
        unit_rows(4, 3, 1).to_dtype(DType::F64).unwrap(),
        unit_rows(4, 3, 2).to_dtype(DType::F64).unwrap(),
    );
    let s = Tensor::new(5.0f64, &Device::Cpu).unwrap();
    let nce = kernels::infonce(&i, &t, &s).unwrap();
    assert_eq!(nce.dtype(), DType::F64);
    let nce_ref = kernels::infonce_reference(&i, &t, &s).unwrap();
    assert_close(&nce, &nce_ref, 0.0, "infonce f64");
    let sig = kernels::sigmoid_pairwise(&i, &t, &s, &s).unwrap();
    let sig_ref = kernels::sigmoid_pairwise_reference(&i, &t, &s, &s).unwrap();
    assert_close(&sig, &sig_ref, 0.0, "sigmoid_pairwise f64");
}

// ---------------------------------------------------------------------------------------------
// Contrastive losses with memory linear in the batch
// ---------------------------------------------------------------------------------------------

/// `(B, D)` rows of unit length, as the losses receive them.
fn unit_rows(b: usize, d: usize, seed: u64) -> Tensor {
    let x = randn(&[b, d], seed, 1.0);
    x.broadcast_div(&x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
        .unwrap()
}

#[test]
fn infonce_matches_reference_across_batches_and_scales() {
    // 1 and 7 fit one strip; 300 is two full strips of 128 plus a partial one, and large
    // enough for the parallel path. Scale 100 is the clamp's largest: logits up to ±100.
    for b in [1, 7, 300] {
        for (scale, atol) in [(1.0 / 0.07, 2e-5), (100.0, 1e-4)] {
            let image = unit_rows(b, 33, 20 + b as u64);
            let text = unit_rows(b, 33, 21 + b as u64);
            // A 0-d scale, and a one-element one: both get a gradient of their own shape.
            for s in [
                Tensor::new(scale as f32, &Device::Cpu).unwrap(),
                Tensor::new(&[scale as f32], &Device::Cpu).unwrap(),
            ] {
                check_op(
                    &format!(
                        "infonce (B {b}, scale {scale:.1}, scale dims {:?})",
                        s.dims()
                    ),
                    &[image.clone(), text.clone(), s],
                    |t| kernels::infonce(&t[0], &t[1], &t[2]),
                    |t| kernels::infonce_reference(&t[0], &t[1], &t[2]),
                    atol,
                );
            }
        }
    }
}

#[test]
fn sigmoid_pairwise_matches_reference_across_batches_and_scales() {
    for b in [1, 7, 300] {
        for (scale, bias, atol) in [
            (10.0, -10.0, 2e-5),
            (100.0, -10.0, 1e-4),
            (100.0, 3.0, 1e-4),
        ] {
            let image = unit_rows(b, 33, 30 + b as u64);
            let text = unit_rows(b, 33, 31 + b as u64);
            let s = Tensor::new(scale as f32, &Device::Cpu).unwrap();
            let beta = Tensor::new(&[bias as f32], &Device::Cpu).unwrap();
            // Scale 100 with bias 3 makes most of the B² − B negatives cost ≈ 20 each: the
            // loss runs into the thousands, and f32 sums of that size carry ~1e-7 relative error.
            let size = kernels::sigmoid_pairwise_reference(&image, &text, &s, &beta)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            check_op(
                &format!("sigmoid_pairwise (B {b}, scale {scale}, bias {bias})"),
                &[image, text, s, beta],
                |t| kernels::sigmoid_pairwise(&t[0], &t[1], &t[2], &t[3]),
                |t| kernels::sigmoid_pairwise_reference(&t[0], &t[1], &t[2], &t[3]),
                atol * f64::from(size).max(1.0),
            );
        }
    }
}

/// The fused backward against central differences of the fused forward itself (f32, so a
/// coarse step and tolerance), for every input — not only against the reference's autograd.
#[test]
fn contrastive_fused_gradients_equal_finite_differences() {
    type Loss = fn(&[Tensor]) -> candle_core::Result<Tensor>;
    let (b, d) = (5, 4);
    let inputs = [
        unit_rows(b, d, 40),
        unit_rows(b, d, 41),
        Tensor::new(3.0f32, &Device::Cpu).unwrap(),
        Tensor::new(-2.0f32, &Device::Cpu).unwrap(),
    ];
    let w = Tensor::new(&[0.7f32, -1.3], &Device::Cpu).unwrap();
    let losses: [(&str, Loss); 2] = [
        ("infonce", |t| kernels::infonce(&t[0], &t[1], &t[2])),
        ("sigmoid_pairwise", |t| {
            kernels::sigmoid_pairwise(&t[0], &t[1], &t[2], &t[3])
        }),
    ];
    for (name, loss) in losses {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = (loss(&ts).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let used = if name == "infonce" { 3 } else { 4 };
        for k in 0..used {
            let f = |x: &Tensor| {
                let mut t = inputs.to_vec();
                t[k] = x.clone();
                (loss(&t)? * &w)?.sum_all()
            };
            let numeric = finite_difference_grad(&f, &inputs[k], 1e-2).unwrap();
            let analytic = grads.get(&vars[k]).unwrap();
            assert_close(
                analytic,
                &numeric,
                2e-3,
                &format!("{name} gradient, input {k}"),
            );
        }
    }
}

/// B = 2, D = 2, scale 2: image rows e₁, e₂; text rows (1, 0), (0.6, 0.8), so the cosines are
/// `[[1, 0.6], [0, 0.8]]` and the logits `[[2, 1.2], [0, 1.6]]`. By hand (Python `math`):
///
/// ```python
/// lse = lambda *v: max(v) + math.log(sum(math.exp(x - max(v)) for x in v))
/// i2t = ((lse(2, 1.2) - 2) + (lse(0, 1.6) - 1.6)) / 2     # 0.2775007034180582
/// t2i = ((lse(2, 0) - 2) + (lse(1.2, 1.6) - 1.6)) / 2     # 0.3199716317214625
/// # d((i2t + t2i)/2)/ds = mean over rows and columns of E_softmax[cos] − cos_ii
/// #                                                          # -0.11446522236036064
/// lsig = lambda u: -math.log1p(math.exp(-u))               # SigLIP, bias −1: logits
/// positive = -(lsig(1) + lsig(0.6)) / 2                    # 0.37537481900205427
/// negative = -(lsig(-0.2) + lsig(1)) / 2                   # 0.5557002784499073
/// # d(positive + negative)/ds = Σ G·cos = -0.11125798900093603, d/db = Σ G = 0.09774515176913665
/// ```
#[test]
fn contrastive_losses_equal_hand_computed_values() {
    let dev = Device::Cpu;
    let image = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev).unwrap();
    let text = Tensor::new(&[[1.0f32, 0.0], [0.6, 0.8]], &dev).unwrap();
    let scale = Var::new(2.0f32, &dev).unwrap();
    let bias = Var::new(-1.0f32, &dev).unwrap();
    let expect = |t: &Tensor, want: &[f64], what: &str| {
        let got = t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{what}: {got:?} vs {want:?}");
        }
    };
    let grad_of = |v: &Var, loss: &Tensor| {
        let g = loss.backward().unwrap().get(v).unwrap().clone();
        g.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    };
    for fused in [true, false] {
        let nce = if fused {
            kernels::infonce(&image, &text, scale.as_tensor())
        } else {
            kernels::infonce_reference(&image, &text, scale.as_tensor())
        }
        .unwrap();
        expect(&nce, &[0.277_500_703_418, 0.319_971_631_721], "infonce");
        let ds = grad_of(&scale, &nce.mean_all().unwrap());
        assert!((ds + 0.114_465_222_360).abs() < 1e-6, "infonce d/ds {ds}");

        let sig = if fused {
            kernels::sigmoid_pairwise(&image, &text, scale.as_tensor(), bias.as_tensor())
        } else {
            kernels::sigmoid_pairwise_reference(&image, &text, scale.as_tensor(), bias.as_tensor())
        }
        .unwrap();
        expect(
            &sig,
            &[0.375_374_819_002, 0.555_700_278_450],
            "sigmoid_pairwise",
        );
        let total = sig.sum_all().unwrap();
        assert!((grad_of(&scale, &total) + 0.111_257_989_001).abs() < 1e-6);
        assert!((grad_of(&bias, &total) - 0.097_745_151_769).abs() < 1e-6);
    }
}

#[test]
fn contrastive_losses_reject_bad_shapes() {
    let (x, s) = (unit_rows(3, 4, 1), Tensor::new(1f32, &Device::Cpu).unwrap());
    assert!(kernels::infonce(&x, &unit_rows(2, 4, 2), &s).is_err());
    assert!(kernels::infonce(&x, &x, &Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).is_err());
    assert!(kernels::sigmoid_pairwise(&x, &unit_rows(3, 5, 2), &s, &s).is_err());
    let two = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    assert!(kernels::sigmoid_pairwise(&x, &x, &s, &two).is_err());
}

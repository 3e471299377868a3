//! Every fused kernel equals its reference, forward and backward (and the references' gradients
//! equal finite differences).

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
    ];
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
}

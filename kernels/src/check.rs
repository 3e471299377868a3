//! Numerical checks: closeness of tensors and finite-difference gradients.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use kernels::check::{finite_difference_grad, max_abs_diff};
//! let x = Var::new(&[1.0f64, -2.0, 0.5], &Device::Cpu).unwrap();
//! let f = |t: &Tensor| t.sqr()?.sum_all();
//! let analytic = f(x.as_tensor()).unwrap().backward().unwrap().get(&x).unwrap().clone();
//! let numeric = finite_difference_grad(&f, x.as_tensor(), 1e-6).unwrap();
//! assert!(max_abs_diff(&analytic, &numeric).unwrap() < 1e-6);
//! ```

use candle_core::{DType, Result, Tensor};

/// Largest absolute element-wise difference (both tensors compared in f64).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.shape() != b.shape() {
        candle_core::bail!("shape mismatch: {:?} vs {:?}", a.shape(), b.shape());
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max))
}

/// Central finite-difference gradient of the scalar function `f` at `x`:
/// `(f(x + h·eᵢ) − f(x − h·eᵢ)) / 2h` for every element `i`. Use f64 inputs for tight checks.
pub fn finite_difference_grad(
    f: &impl Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    h: f64,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let shape = x.shape().clone();
    let base = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut grad = Vec::with_capacity(base.len());
    let eval = |v: &[f64]| -> Result<f64> {
        let t = Tensor::from_slice(v, shape.clone(), x.device())?.to_dtype(dtype)?;
        f(&t)?.to_dtype(DType::F64)?.to_scalar::<f64>()
    };
    let mut v = base.clone();
    for i in 0..base.len() {
        v[i] = base[i] + h;
        let plus = eval(&v)?;
        v[i] = base[i] - h;
        let minus = eval(&v)?;
        v[i] = base[i];
        grad.push((plus - minus) / (2.0 * h));
    }
    Tensor::from_vec(grad, shape, x.device())?.to_dtype(dtype)
}

//! A linear layer, `y = x·Wᵀ + b` over the last dimension of `x`, as one op in the graph.
//!
//! Composed, a linear layer over a `(B, L, in)` activation is five autograd nodes: a reshape to
//! rows, the transpose of `W`, the product, the bias addition and a reshape back. candle's
//! backward accumulates every node's input gradient into a fresh zero tensor (`zeros_like`,
//! then an addition), so each node costs a zeroing, a read of two tensors and a write of one,
//! and the graph holds the product both before and after the bias. On a CPU step of the
//! `small` preset, that accumulation and the bias's copy were about a fifth of the step.
//!
//! Here the forward fills the output rows with the bias and lets the product accumulate onto
//! them (one `gemm` call, `y ← y + x·Wᵀ`, no zeroing, no second pass), and the backward gives
//! `dx = dy·W`, `dW = dyᵀ·x` (candle's matrix products, operands read in place through strided
//! layouts) and `db = Σ_rows dy` (the bias op's fixed-order row sums). Only `x`, `W` and `b`
//! receive gradients.
//!
//! [`linear_bf16`] is the same layer under `torch.autocast(dtype=bfloat16)`: operands rounded to
//! bf16, the product rounded to bf16, the bias added in the output dtype (f32, or bf16 for an
//! activation that feeds the next product). The graph holds the layer's input, not its bf16
//! copy. Its backward casts the gradient and operands to bf16 and multiplies them, as the
//! composed layer's backward does.
//!
//! CPU: f32 input and parameters (for [`linear_bf16`] an f32 or bf16 input), any rank ≥ 2.
//! Other devices run the composed layer with the fused [`crate::add_bias`] (which has CUDA
//! kernels); there is no CUDA kernel of this op yet.

use crate::cpu::{narrow, slice_f32, widen};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use half::bf16;

/// The reference: candle's differentiable product and broadcast addition.
pub fn linear_reference(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    composed(xs, weight, bias, Dtypes::F32, crate::add_bias_reference)
}

/// `xs·weightᵀ + bias` over the last dimension of `xs` (`weight` is `(out, in)`, `bias` `(out)`).
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    apply(xs, weight, bias, Dtypes::F32)
}

/// The reference of [`linear_bf16`]: casts, candle's bf16 product, broadcast addition.
pub fn linear_bf16_reference(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    out: DType,
) -> Result<Tensor> {
    composed(
        xs,
        weight,
        bias,
        Dtypes::bf16(out)?,
        crate::add_bias_reference,
    )
}

/// [`linear`] on bf16 operands with the product rounded to bf16 and the bias added in `out`
/// (f32 or bf16), as under `torch.autocast(dtype=bfloat16)`; `weight` and `bias` stay f32 (the
/// master weights) and receive f32 gradients.
pub fn linear_bf16(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    out: DType,
) -> Result<Tensor> {
    apply(xs, weight, bias, Dtypes::bf16(out)?)
}

/// The dtypes of one linear layer: bf16 operands and product or not, and the result's dtype.
#[derive(Clone, Copy)]
struct Dtypes {
    bf16: bool,
    out: DType,
}

impl Dtypes {
    const F32: Self = Self {
        bf16: false,
        out: DType::F32,
    };

    fn bf16(out: DType) -> Result<Self> {
        if !matches!(out, DType::F32 | DType::BF16) {
            bail!("linear_bf16: the result is f32 or bf16, not {out:?}");
        }
        Ok(Self { bf16: true, out })
    }

    /// The dtype the operands are multiplied in.
    fn compute(self) -> DType {
        if self.bf16 { DType::BF16 } else { DType::F32 }
    }
}

fn apply(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, dt: Dtypes) -> Result<Tensor> {
    check(xs, weight, bias)?;
    let params_f32 = weight.dtype() == DType::F32 && bias.is_none_or(|b| b.dtype() == DType::F32);
    let input_ok = xs.dtype() == DType::F32 || (dt.bf16 && xs.dtype() == DType::BF16);
    let on_cpu = [Some(xs), Some(weight), bias]
        .into_iter()
        .flatten()
        .all(|t| t.device().is_cpu());
    if on_cpu && params_f32 && input_ok {
        let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
        let op = LinearOp { dt };
        match bias {
            Some(b) => xs.apply_op3(&weight, &b.contiguous()?, op),
            None => xs.apply_op2(&weight, op),
        }
    } else {
        composed(xs, weight, bias, dt, crate::add_bias)
    }
}

fn check(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    let (xd, wd) = (xs.dims(), weight.dims());
    let &[out, inp] = wd else {
        bail!("linear: expected a (out, in) weight, got {wd:?}");
    };
    if xd.len() < 2 {
        bail!("linear: expected an input of rank ≥ 2 (rows of features), got {xd:?}");
    }
    if xd.last() != Some(&inp) {
        bail!("linear: input {xd:?} does not end in the weight's {inp} input features");
    }
    if let Some(b) = bias
        && b.dims() != [out]
    {
        bail!(
            "linear: bias {:?} does not match the weight's {out} outputs",
            b.dims()
        );
    }
    Ok(())
}

/// Rows to `(N, in)`, product with `Wᵀ` (for bf16: of the operands cast to bf16, the product
/// cast to the output dtype), `add` the bias (for bf16: cast to the output dtype), back to the
/// input's leading dims.
fn composed(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    dt: Dtypes,
    add: fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    check(xs, weight, bias)?;
    let (out, inp) = weight.dims2()?;
    let rows = xs.elem_count() / inp.max(1);
    let (xs2, wt) = (xs.reshape((rows, inp))?, weight.t()?);
    let ys = if dt.bf16 {
        let c = dt.compute();
        xs2.to_dtype(c)?
            .matmul(&wt.to_dtype(c)?)?
            .to_dtype(dt.out)?
    } else {
        xs2.matmul(&wt)?
    };
    let ys = match bias {
        Some(b) if dt.bf16 => add(&ys, &b.to_dtype(dt.out)?)?,
        Some(b) => add(&ys, b)?,
        None => ys,
    };
    ys.reshape(out_shape(xs.dims(), out))
}

fn out_shape(dims: &[usize], out: usize) -> Shape {
    let mut d = dims.to_vec();
    if let Some(last) = d.last_mut() {
        *last = out;
    }
    Shape::from(d)
}

/// `v` rounded to the nearest bf16 (ties to even), as f32.
fn round_bf16(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

struct LinearOp {
    dt: Dtypes,
}

impl LinearOp {
    /// The CPU forward. f32: the output rows start as the bias and the product accumulates onto
    /// them. bf16: the product of the rounded operands, rounded, then the bias added.
    fn forward_cpu(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        (w, wl): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "linear";
        let x = widen(x, xl, op)?;
        let w = slice_f32(w, wl, op)?;
        let b = bias.map(|(b, bl)| slice_f32(b, bl, op)).transpose()?;
        let &[out, inp] = wl.dims() else {
            bail!("{op}: expected a (out, in) weight, got {:?}", wl.dims());
        };
        let rows = x.len() / inp.max(1);
        let shape = out_shape(xl.dims(), out);
        if !self.dt.bf16 {
            let y = match b {
                Some(b) => {
                    let mut y = Vec::with_capacity(rows * out);
                    for _ in 0..rows {
                        y.extend_from_slice(b);
                    }
                    y
                }
                None => vec![0f32; rows * out],
            };
            let y = crate::cpu::add_x_wt(y, &x, w, (rows, out, inp));
            return Ok((CpuStorage::F32(y), shape));
        }
        let xr: Vec<f32> = x.iter().map(|&v| round_bf16(v)).collect();
        let wr: Vec<f32> = w.iter().map(|&v| round_bf16(v)).collect();
        let mut y = crate::cpu::add_x_wt(vec![0f32; rows * out], &xr, &wr, (rows, out, inp));
        let to_out = self.dt.out == DType::BF16;
        for row in y.chunks_mut(out.max(1)) {
            for (j, v) in row.iter_mut().enumerate() {
                let p = round_bf16(*v);
                *v = match b {
                    Some(b) if to_out => p + round_bf16(b[j]),
                    Some(b) => p + b[j],
                    None => p,
                };
            }
        }
        Ok((narrow(y, self.dt.out), shape))
    }

    /// `(dx, dW, db)` from the output gradient: `dx = dy·W`, `dW = dyᵀ·x` (on bf16 copies for
    /// bf16, each cast back to its operand's dtype), `db = Σ_rows dy`.
    fn backward(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        grad: &Tensor,
        bias: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (out, inp) = weight.dims2()?;
        let rows = xs.elem_count() / inp.max(1);
        let c = self.dt.compute();
        let g = grad.contiguous()?.reshape((rows, out))?;
        let gc = g.to_dtype(c)?;
        let dx = gc
            .matmul(&weight.to_dtype(c)?)?
            .to_dtype(xs.dtype())?
            .reshape(xs.shape())?;
        let dw = gc
            .t()?
            .matmul(&xs.reshape((rows, inp))?.to_dtype(c)?)?
            .to_dtype(DType::F32)?;
        let db = if bias {
            Some(crate::bias::sum_rows(&g, out)?.to_dtype(DType::F32)?)
        } else {
            None
        };
        // Detached: `x` and `W` take part in the graph, so these products would record it, and a
        // parameter's gradient would keep its layer's input and output gradient alive for as
        // long as the gradient lives (candle detaches the gradient of each node before its
        // backward, not the results of a custom backward).
        Ok((dx.detach(), dw.detach(), db.map(|t| t.detach())))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward_cpu((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(xs, weight, grad, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward_cpu((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(xs, weight, grad, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

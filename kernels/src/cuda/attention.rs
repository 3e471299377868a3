//! Host side of `attention.cu`: the `cuda_fwd` of the fused attention, its backward and the
//! inspection weights in `attention.rs`. Shapes are checked the way the CPU loops check them.

use super::{ATTENTION, elementwise, failed, function, uninit, view_f32};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, bail};

/// Widest head the kernels handle (`MAX_DH` in `attention.cu`); wider heads run the reference.
pub const MAX_HEAD_DIM: usize = 128;

/// `(B, L, D)` of a packed `(B, L, 3D)` layout whose `D` splits into `heads` heads of at most
/// [`MAX_HEAD_DIM`].
fn geometry(l: &Layout, heads: usize, op: &str) -> Result<(usize, usize, usize)> {
    let [b, len, three_d] = l.dims() else {
        bail!("{op}: expected (B, L, 3D), got {:?}", l.dims());
    };
    let d = three_d / 3;
    if three_d % 3 != 0 || heads == 0 || d % heads != 0 {
        bail!("{op}: qkv width {three_d} is not 3·heads·d for {heads} heads");
    }
    if d / heads > MAX_HEAD_DIM {
        bail!(
            "{op}: head width {} is over the CUDA kernels' {MAX_HEAD_DIM}",
            d / heads
        );
    }
    Ok((*b, *len, d))
}

/// Launches `kernel(qkv, [extra inputs…], outputs…, B, L, D, H, causal)` with one thread per
/// (batch row, head, row).
fn launch(
    dev: &CudaDevice,
    kernel: &'static str,
    inputs: &[&CudaView<'_, f32>],
    outputs: &mut [&mut CudaSlice<f32>],
    (b, l, d, heads): (usize, usize, usize, usize),
    causal: bool,
) -> Result<()> {
    let items = b * heads * l;
    if items == 0 {
        return Ok(());
    }
    let f = function(dev, &ATTENTION, kernel)?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&f);
    for x in inputs {
        builder.arg(*x);
    }
    for y in outputs.iter_mut() {
        builder.arg(&mut **y);
    }
    let dims = [b as u64, l as u64, d as u64, heads as u64];
    let causal = i32::from(causal);
    for n in &dims {
        builder.arg(n);
    }
    builder.arg(&causal);
    // SAFETY: every kernel of attention.cu takes its const float* inputs, then its float*
    // outputs, then (u64 batch, u64 l, u64 d, u64 heads, int causal), in the order the callers
    // below pass them; `geometry` checked that qkv is (B, L, 3D) with D = heads·dh, dh ≤ MAX_DH,
    // and each caller allocated its outputs at the sizes the kernel writes.
    unsafe { builder.launch(elementwise(items)) }.map_err(|e| failed(kernel, e))?;
    Ok(())
}

/// The attention output `(B, L, D)`.
pub(crate) fn attention_fwd(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    one_output(s, l, heads, causal, op, "attention_fwd")
}

/// The weights `(B, H, L, L)`.
pub(crate) fn attention_probs(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    one_output(s, l, heads, causal, op, "attention_probs")
}

/// Runs `attention_fwd` (output `(B, L, D)`) or `attention_probs` (output `(B, H, L, L)`): each
/// writes every element of its output, the probabilities' zeros above a causal diagonal included.
fn one_output(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
    kernel: &'static str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let (b, len, d) = geometry(l, heads, op)?;
    let shape = if kernel == "attention_probs" {
        Shape::from((b, heads, len, len))
    } else {
        Shape::from((b, len, d))
    };
    let qkv = view_f32(s, l, op)?;
    // SAFETY: both kernels write every element of their output (see above).
    let mut out = unsafe { uninit(dev, shape.elem_count()) }?;
    launch(
        dev,
        kernel,
        &[&qkv],
        &mut [&mut out],
        (b, len, d, heads),
        causal,
    )?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
}

/// The gradient `(B, L, 3D)` with respect to `qkv`, from `qkv` and the output's gradient `go`.
pub(crate) fn attention_bwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (b, len, d) = geometry(l1, heads, op)?;
    if l2.dims() != [b, len, d] {
        bail!(
            "{op}: gradient {:?} does not match the output ({b}, {len}, {d})",
            l2.dims()
        );
    }
    let (qkv, go) = (view_f32(s1, l1, op)?, view_f32(s2, l2, op)?);
    // SAFETY: `attention_bwd_q` writes the q columns of every row of dqkv and both statistics
    // of every (batch row, head, query); `attention_bwd_kv` writes the k and v columns. Together
    // they write all B·L·3D elements, and `stats` is read only after the first kernel (same
    // stream) wrote it.
    let mut dqkv = unsafe { uninit(dev, b * len * 3 * d) }?;
    // SAFETY: as above.
    let mut stats = unsafe { uninit(dev, 2 * b * heads * len) }?;
    let geo = (b, len, d, heads);
    launch(
        dev,
        "attention_bwd_q",
        &[&qkv, &go],
        &mut [&mut dqkv, &mut stats],
        geo,
        causal,
    )?;
    let stats_view = stats.slice(..);
    // The kv kernel takes (qkv, go, stats) as inputs and dqkv as its output.
    launch(
        dev,
        "attention_bwd_kv",
        &[&qkv, &go, &stats_view],
        &mut [&mut dqkv],
        geo,
        causal,
    )?;
    Ok((
        CudaStorage::wrap_cuda_slice(dqkv, dev.clone()),
        l1.shape().clone(),
    ))
}

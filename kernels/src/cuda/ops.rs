//! Host side of the element-wise and per-row kernels: GELU, bias, softmax, LayerNorm. Each
//! function is the `cuda_fwd` of the op of the same name in the op's file, and checks shapes
//! the way its CPU loop does. GELU and bias take f32 or bf16 (the `_bf16` kernels); the others
//! f32.

use super::{
    BIAS, Element, GELU, LAYER_NORM, SOFTMAX, columns_by_chunks, elementwise, failed, function,
    per_row, row_chunks, uninit, uninit_of, view, view_f32,
};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, bail};

/// Rows per chunk of the bias and LayerNorm weight/bias reductions (at least).
const CHUNK_ROWS: usize = 64;

/// Last dimension of a layout (1 for a scalar), and the number of rows of that length.
fn rows_of(l: &Layout) -> (usize, usize) {
    let n = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / n, n)
}

/// `gelu(x)`.
pub(crate) fn gelu_fwd(s: &CudaStorage, l: &Layout, op: &str) -> Result<(CudaStorage, Shape)> {
    by_dtype!(s, gelu_fwd_as(s, l, op))
}

fn gelu_fwd_as<T: Element>(s: &CudaStorage, l: &Layout, op: &str) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let x = view::<T>(s, l, op)?;
    let n = l.shape().elem_count();
    let name = format!("gelu_fwd{}", T::SUFFIX);
    // SAFETY: `gelu_fwd` below writes all `n` elements.
    let mut y = unsafe { uninit_of::<T>(dev, n) }?;
    if n > 0 {
        let f = function(dev, &GELU, &name)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let n64 = n as u64;
        b.arg(&x).arg(&mut y).arg(&n64);
        // SAFETY: gelu_fwd(const T* x, T* y, u64 n); `x` and `y` hold `n` elements of T.
        unsafe { b.launch(elementwise(n)) }.map_err(|e| failed(&name, e))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l.shape().clone(),
    ))
}

/// `g · gelu'(x)`.
pub(crate) fn gelu_bwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(s1, gelu_bwd_as(s1, l1, s2, l2, op))
}

fn gelu_bwd_as<T: Element>(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (x, g) = (view::<T>(s1, l1, op)?, view::<T>(s2, l2, op)?);
    let n = l1.shape().elem_count();
    if l2.shape().elem_count() != n {
        bail!(
            "{op}: gradient {:?} does not match input {:?}",
            l2.dims(),
            l1.dims()
        );
    }
    let name = format!("gelu_bwd{}", T::SUFFIX);
    // SAFETY: `gelu_bwd` below writes all `n` elements.
    let mut dx = unsafe { uninit_of::<T>(dev, n) }?;
    if n > 0 {
        let f = function(dev, &GELU, &name)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let n64 = n as u64;
        b.arg(&x).arg(&g).arg(&mut dx).arg(&n64);
        // SAFETY: gelu_bwd(const T* x, const T* g, T* dx, u64 n); all hold `n` elements of T.
        unsafe { b.launch(elementwise(n)) }.map_err(|e| failed(&name, e))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        l1.shape().clone(),
    ))
}

/// `x + bias`, `bias` repeating every `bias.len()` elements (shapes checked by the caller).
pub(crate) fn add_bias_fwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(s1, add_bias_fwd_as(s1, l1, s2, l2, op))
}

fn add_bias_fwd_as<T: Element>(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (x, bias) = (view::<T>(s1, l1, op)?, view::<T>(s2, l2, op)?);
    let (n, k) = (l1.shape().elem_count(), l2.shape().elem_count().max(1));
    if !n.is_multiple_of(k) {
        bail!(
            "{op}: bias of {k} elements does not tile input {:?}",
            l1.dims()
        );
    }
    let name = format!("add_bias_fwd{}", T::SUFFIX);
    // SAFETY: `add_bias_fwd` below writes all `n` elements.
    let mut y = unsafe { uninit_of::<T>(dev, n) }?;
    if n > 0 {
        let f = function(dev, &BIAS, &name)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (n64, k64) = (n as u64, k as u64);
        b.arg(&x).arg(&bias).arg(&mut y).arg(&n64).arg(&k64);
        // SAFETY: add_bias_fwd(const T* x, const T* b, T* y, u64 n, u64 k); `x`, `y` hold `n`
        // elements of T, `b` holds `k`.
        unsafe { b.launch(elementwise(n)) }.map_err(|e| failed(&name, e))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l1.shape().clone(),
    ))
}

/// Column sums of `g` viewed as `(rows, k)`: fixed chunks of rows, then the chunks in order
/// (partial sums in f32 for either element type).
pub(crate) fn sum_rows(
    s: &CudaStorage,
    l: &Layout,
    k: usize,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(s, sum_rows_as(s, l, k, op))
}

fn sum_rows_as<T: Element>(
    s: &CudaStorage,
    l: &Layout,
    k: usize,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let g = view::<T>(s, l, op)?;
    let k = k.max(1);
    let n = l.shape().elem_count();
    if !n.is_multiple_of(k) {
        bail!("{op}: {n} elements are not rows of {k}");
    }
    let rows = n / k;
    let (chunk, chunks) = row_chunks(rows, CHUNK_ROWS);
    // SAFETY: `sum_rows_partial` writes all `chunks·k` partials (one thread per column and
    // chunk, empty chunks write 0), and `sum_partials` all `k` outputs.
    let mut partial = unsafe { uninit(dev, chunks * k) }?;
    // SAFETY: as above.
    let mut out = unsafe { uninit_of::<T>(dev, k) }?;
    let stream = dev.cuda_stream();
    let (rows64, k64, chunk64, chunks64) = (rows as u64, k as u64, chunk as u64, chunks as u64);
    let name = format!("sum_rows_partial{}", T::SUFFIX);
    let f = function(dev, &BIAS, &name)?;
    let mut b = stream.launch_builder(&f);
    b.arg(&g)
        .arg(&mut partial)
        .arg(&rows64)
        .arg(&k64)
        .arg(&chunk64);
    // SAFETY: sum_rows_partial(const T* g, float* partial, u64 rows, u64 k, u64 chunk_rows);
    // `g` holds rows·k elements, `partial` chunks·k floats, and the grid has `chunks` rows of
    // blocks.
    unsafe { b.launch(columns_by_chunks(k, chunks)) }.map_err(|e| failed(&name, e))?;
    let name = format!("sum_partials{}", T::SUFFIX);
    let f = function(dev, &BIAS, &name)?;
    let mut b = stream.launch_builder(&f);
    b.arg(&partial).arg(&mut out).arg(&chunks64).arg(&k64);
    // SAFETY: sum_partials(const float* partial, T* out, u64 chunks, u64 width); `partial`
    // holds chunks·k floats, `out` k elements.
    unsafe { b.launch(elementwise(k)) }.map_err(|e| failed(&name, e))?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(k),
    ))
}

/// Softmax over the last dimension.
pub(crate) fn softmax_fwd(s: &CudaStorage, l: &Layout, op: &str) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let x = view_f32(s, l, op)?;
    let (rows, n) = rows_of(l);
    // SAFETY: `softmax_fwd` writes every element of every row.
    let mut y = unsafe { uninit(dev, rows * n) }?;
    if rows > 0 {
        let f = function(dev, &SOFTMAX, "softmax_fwd")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (rows64, n64) = (rows as u64, n as u64);
        b.arg(&x).arg(&mut y).arg(&rows64).arg(&n64);
        // SAFETY: softmax_fwd(const float* x, float* y, u64 rows, u64 n); both hold rows·n floats.
        unsafe { b.launch(per_row(rows, n)) }.map_err(|e| failed("softmax_fwd", e))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l.shape().clone(),
    ))
}

/// `y ⊙ (g − Σ g⊙y)` per row.
pub(crate) fn softmax_bwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (y, g) = (view_f32(s1, l1, op)?, view_f32(s2, l2, op)?);
    let (rows, n) = rows_of(l1);
    if l2.shape().elem_count() != rows * n {
        bail!(
            "{op}: gradient {:?} does not match output {:?}",
            l2.dims(),
            l1.dims()
        );
    }
    // SAFETY: `softmax_bwd` writes every element of every row.
    let mut dx = unsafe { uninit(dev, rows * n) }?;
    if rows > 0 {
        let f = function(dev, &SOFTMAX, "softmax_bwd")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (rows64, n64) = (rows as u64, n as u64);
        b.arg(&y).arg(&g).arg(&mut dx).arg(&rows64).arg(&n64);
        // SAFETY: softmax_bwd(const float* y, const float* g, float* dx, u64 rows, u64 n); all
        // hold rows·n floats.
        unsafe { b.launch(per_row(rows, n)) }.map_err(|e| failed("softmax_bwd", e))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        l1.shape().clone(),
    ))
}

/// Checks that `w` (and `b`) have the size of the rows of `x`; returns (rows, d).
fn layer_norm_shapes(op: &str, lx: &Layout, others: &[&Layout]) -> Result<(usize, usize)> {
    let (rows, d) = rows_of(lx);
    for l in others {
        if l.shape().elem_count() != d {
            bail!(
                "{op}: weight/bias/gradient {:?} do not match input {:?}",
                l.dims(),
                lx.dims()
            );
        }
    }
    Ok((rows, d))
}

/// LayerNorm forward: `(x − μ)·r·w + b` per row, from `x`, `w` and the bias `b`.
pub(crate) fn layer_norm_fwd(
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    eps: f32,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    layer_norm_rows("layer_norm_fwd", x, w, b, eps, op)
}

/// LayerNorm input gradient from `x`, `w` and the incoming gradient `g`.
pub(crate) fn layer_norm_dx(
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    eps: f32,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    layer_norm_rows("layer_norm_dx", x, w, g, eps, op)
}

/// Runs `kernel`, `layer_norm_fwd` or `layer_norm_dx`: both take
/// `(const float* x, const float* w, const float* third, float* out, u64 rows, u64 d, float eps)`
/// with one block per row, where `third` is the bias (`d` values) or the incoming gradient
/// (`rows·d` values), and write every element of `out` (`rows·d`, shaped like `x`).
fn layer_norm_rows(
    kernel: &'static str,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
    eps: f32,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (x, w, third) = (
        view_f32(s1, l1, op)?,
        view_f32(s2, l2, op)?,
        view_f32(s3, l3, op)?,
    );
    let (rows, d) = layer_norm_shapes(op, l1, &[l2])?;
    let third_len = if kernel == "layer_norm_dx" {
        rows * d
    } else {
        d
    };
    if l3.shape().elem_count() != third_len {
        bail!(
            "{op}: bias/gradient {:?} does not match input {:?}",
            l3.dims(),
            l1.dims()
        );
    }
    // SAFETY: both kernels write every element of every row.
    let mut out = unsafe { uninit(dev, rows * d) }?;
    if rows > 0 {
        let f = function(dev, &LAYER_NORM, kernel)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        let (rows64, d64) = (rows as u64, d as u64);
        b.arg(&x)
            .arg(&w)
            .arg(&third)
            .arg(&mut out)
            .arg(&rows64)
            .arg(&d64)
            .arg(&eps);
        // SAFETY: the signature above; `x` and `out` hold rows·d floats, `w` d, `third` the
        // length checked above.
        unsafe { b.launch(per_row(rows, d)) }.map_err(|e| failed(kernel, e))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l1.shape().clone(),
    ))
}

/// LayerNorm weight and bias gradients, `(2, d)`: `[Σ g·x̂, Σ g]` over the rows.
pub(crate) fn layer_norm_dwdb(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    eps: f32,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let (x, g) = (view_f32(s1, l1, op)?, view_f32(s2, l2, op)?);
    let (rows, d) = rows_of(l1);
    if l2.shape().elem_count() != rows * d {
        bail!(
            "{op}: gradient {:?} does not match input {:?}",
            l2.dims(),
            l1.dims()
        );
    }
    let (chunk, chunks) = row_chunks(rows, CHUNK_ROWS);
    // SAFETY: `layer_norm_stats` writes 2 values per row, `layer_norm_dwdb_partial` all
    // chunks·2d partials (empty chunks write 0), `layer_norm_sum_partials` all 2d outputs.
    let mut stats = unsafe { uninit(dev, 2 * rows) }?;
    // SAFETY: as above.
    let mut partial = unsafe { uninit(dev, chunks * 2 * d) }?;
    // SAFETY: as above.
    let mut out = unsafe { uninit(dev, 2 * d) }?;
    let stream = dev.cuda_stream();
    let (rows64, d64, chunk64, chunks64, width64) = (
        rows as u64,
        d as u64,
        chunk as u64,
        chunks as u64,
        2 * d as u64,
    );
    if rows > 0 {
        let f = function(dev, &LAYER_NORM, "layer_norm_stats")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&x).arg(&mut stats).arg(&rows64).arg(&d64).arg(&eps);
        // SAFETY: layer_norm_stats(const float* x, float* stats, u64 rows, u64 d, float eps);
        // `x` holds rows·d floats, `stats` 2·rows.
        unsafe { b.launch(per_row(rows, d)) }.map_err(|e| failed("layer_norm_stats", e))?;
    }
    let f = function(dev, &LAYER_NORM, "layer_norm_dwdb_partial")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&x).arg(&g).arg(&stats).arg(&mut partial);
    b.arg(&rows64).arg(&d64).arg(&chunk64);
    // SAFETY: layer_norm_dwdb_partial(const float* x, const float* g, const float* stats,
    // float* partial, u64 rows, u64 d, u64 chunk_rows); sizes as allocated above; the grid has
    // `chunks` rows of blocks.
    unsafe { b.launch(columns_by_chunks(d, chunks)) }
        .map_err(|e| failed("layer_norm_dwdb_partial", e))?;
    let f = function(dev, &LAYER_NORM, "layer_norm_sum_partials")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&partial).arg(&mut out).arg(&chunks64).arg(&width64);
    // SAFETY: layer_norm_sum_partials(const float* partial, float* out, u64 chunks, u64 width);
    // `partial` holds chunks·2d floats, `out` 2d.
    unsafe { b.launch(elementwise(2 * d)) }.map_err(|e| failed("layer_norm_sum_partials", e))?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((2, d)),
    ))
}

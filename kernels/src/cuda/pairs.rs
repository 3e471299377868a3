//! Host side of the contrastive losses on CUDA: the strip walk of `cpu::Pairs` with candle's
//! cuBLAS matmul, and the kernels of `contrastive.cu` for statistics, losses and gradients.
//! Each function is the `cuda_fwd` of the op of the same name in `infonce.rs` or
//! `sigmoid_pairwise.rs`.

use super::{CONTRASTIVE, elementwise, failed, function, per_row, single_block, uninit, view_f32};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result, Shape, bail};

/// Rows of logits that exist at once on the GPU: `TILE × B` floats (32 MiB at B = 16 384).
/// Larger than the CPU's strip: a strip's rows are the parallelism of the row kernels.
pub const TILE: usize = 512;

/// The two `(B, D)` operands of the scores `x·yᵀ`, as contiguous f32 CUDA storage.
struct Pairs<'a> {
    x: &'a CudaStorage,
    xo: usize,
    y: &'a CudaStorage,
    yo: usize,
    b: usize,
    d: usize,
}

impl<'a> Pairs<'a> {
    /// Checks what `cpu::Pairs::new` checks: two contiguous f32 matrices of one shape, `B ≥ 1`.
    fn new(
        op: &str,
        x: &'a CudaStorage,
        xl: &Layout,
        y: &'a CudaStorage,
        yl: &Layout,
    ) -> Result<Self> {
        view_f32(x, xl, op)?;
        view_f32(y, yl, op)?;
        let (b, d) = crate::cpu::pair_dims(op, xl, yl)?;
        Ok(Self {
            x,
            xo: xl.start_offset(),
            y,
            yo: yl.start_offset(),
            b,
            d,
        })
    }

    /// The strips `(r0, r)` of at most [`TILE`] rows, in order.
    fn strips(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let b = self.b;
        (0..b).step_by(TILE).map(move |r0| (r0, TILE.min(b - r0)))
    }

    /// Rows `r0 .. r0 + r` of `x·yᵀ`: an `r × B` row-major strip (cuBLAS).
    fn strip(&self, r0: usize, r: usize) -> Result<CudaStorage> {
        let (b, d) = (self.b, self.d);
        let rows = Layout::contiguous_with_offset((r, d), self.xo + r0 * d);
        let yt = Layout::new(Shape::from((d, b)), vec![1, d], self.yo);
        self.x.matmul(self.y, (1, r, b, d), &rows, &yt)
    }

    /// With the strip `g` of the score gradient `G` (rows `r0 .. r0 + r`): writes
    /// `s·G_strip·y` into `out[r0·D ..]` and adds `s·G_stripᵀ·x_strip` to `out[B·D .. 2·B·D]`.
    fn accumulate(
        &self,
        g: &CudaStorage,
        (r0, r): (usize, usize),
        s: &CudaView<'_, f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (b, d) = (self.b, self.d);
        let dx = g.matmul(
            self.y,
            (1, r, d, b),
            &Layout::contiguous((r, b)),
            &Layout::contiguous_with_offset((b, d), self.yo),
        )?;
        scaled_copy(&dx, s, out, r0 * d, r * d, false)?;
        let dy = g.matmul(
            self.x,
            (1, b, d, r),
            &Layout::new(Shape::from((b, r)), vec![1, b], 0),
            &Layout::contiguous_with_offset((r, d), self.xo + r0 * d),
        )?;
        scaled_copy(&dy, s, out, b * d, b * d, true)
    }
}

/// `out[offset + i] = (accumulate ? out[offset + i] : 0) + s·src[i]` for `i < n`.
fn scaled_copy(
    src: &CudaStorage,
    s: &CudaView<'_, f32>,
    out: &mut CudaSlice<f32>,
    offset: usize,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    let dev = &src.device;
    let src = src.as_cuda_slice::<f32>()?;
    if src.len() < n || out.len() < offset + n {
        bail!("scaled_copy: {n} values at {offset} do not fit");
    }
    let f = function(dev, &CONTRASTIVE, "scaled_copy")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    let (offset64, n64, acc) = (offset as u64, n as u64, i32::from(accumulate));
    b.arg(out)
        .arg(src)
        .arg(s)
        .arg(&offset64)
        .arg(&n64)
        .arg(&acc);
    // SAFETY: scaled_copy(float* dst, const float* src, const float* s, u64 offset, u64 n,
    // int accumulate); checked above: `src` holds ≥ n floats, `dst` ≥ offset + n; `s` ≥ 1.
    unsafe { b.launch(elementwise(n)) }.map_err(|e| failed("scaled_copy", e))?;
    Ok(())
}

/// Checks that a packed operand holds `n` floats.
fn packed<'a>(s: &'a CudaStorage, l: &Layout, n: usize, op: &str) -> Result<CudaView<'a, f32>> {
    let v = view_f32(s, l, op)?;
    if v.len() != n {
        bail!("{op}: expected {n} packed values, got {}", v.len());
    }
    Ok(v)
}

/// InfoNCE forward: `[image→text, text→image, lse_row (B), lse_col (B)]` from `x`, `y` and the
/// one-element scale.
pub(crate) fn infonce_fwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let pairs = Pairs::new(op, s1, l1, s2, l2)?;
    let scale = packed(s3, l3, 1, op)?;
    let (dev, b) = (&s1.device, pairs.b);
    // SAFETY: `infonce_rows` writes out[2 .. 2 + B] (every row of every strip) and diag (every
    // row); `infonce_finish` writes out[0], out[1] and out[2 + B ..].
    let mut out = unsafe { uninit(dev, 2 + 2 * b) }?;
    // SAFETY: as above.
    let mut diag = unsafe { uninit(dev, b) }?;
    let mut col_max = dev.clone_htod(&vec![f32::NEG_INFINITY; b])?;
    let mut col_sum = dev.alloc_zeros::<f32>(b)?;
    let stream = dev.cuda_stream();
    let rows_fn = function(dev, &CONTRASTIVE, "infonce_rows")?;
    let cols_fn = function(dev, &CONTRASTIVE, "infonce_columns")?;
    let b64 = b as u64;
    for (r0, r) in pairs.strips() {
        let mut strip = pairs.strip(r0, r)?;
        let strip = strip.as_cuda_slice_mut::<f32>()?;
        let (r064, r64) = (r0 as u64, r as u64);
        let mut launch = stream.launch_builder(&rows_fn);
        launch
            .arg(&mut *strip)
            .arg(&scale)
            .arg(&mut out)
            .arg(&mut diag);
        launch.arg(&r064).arg(&r64).arg(&b64);
        // SAFETY: infonce_rows(float* strip, const float* scale, float* out, float* diag, u64 r0,
        // u64 r, u64 b); `strip` holds r·B floats, `out` 2 + 2B, `diag` B, r0 + r ≤ B.
        unsafe { launch.launch(per_row(r, b)) }.map_err(|e| failed("infonce_rows", e))?;
        let mut launch = stream.launch_builder(&cols_fn);
        launch
            .arg(&*strip)
            .arg(&mut col_max)
            .arg(&mut col_sum)
            .arg(&r64)
            .arg(&b64);
        // SAFETY: infonce_columns(const float* strip, float* col_max, float* col_sum, u64 r,
        // u64 b); `strip` holds r·B floats, the others B.
        unsafe { launch.launch(elementwise(b)) }.map_err(|e| failed("infonce_columns", e))?;
    }
    let f = function(dev, &CONTRASTIVE, "infonce_finish")?;
    let mut launch = stream.launch_builder(&f);
    launch
        .arg(&diag)
        .arg(&col_max)
        .arg(&col_sum)
        .arg(&mut out)
        .arg(&b64);
    // SAFETY: infonce_finish(const float* diag, const float* col_max, const float* col_sum,
    // float* out, u64 b); sizes as allocated above.
    unsafe { launch.launch(single_block()) }.map_err(|e| failed("infonce_finish", e))?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(2 + 2 * b),
    ))
}

/// InfoNCE backward: `[dx (B·D), dy (B·D), ds]` from `x`, `y` and
/// `[s, g₁, g₂, lse_row (B), lse_col (B)]`.
pub(crate) fn infonce_bwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let pairs = Pairs::new(op, s1, l1, s2, l2)?;
    let (dev, b, d) = (&s1.device, pairs.b, pairs.d);
    let p = packed(s3, l3, 3 + 2 * b, op)?;
    let s = p.slice(0..1);
    let mut out = dev.alloc_zeros::<f32>(2 * b * d + 1)?;
    // SAFETY: `infonce_grad` writes dots[r0 .. r0 + r] for every strip, so all B entries.
    let mut dots = unsafe { uninit(dev, b) }?;
    let stream = dev.cuda_stream();
    let grad_fn = function(dev, &CONTRASTIVE, "infonce_grad")?;
    let b64 = b as u64;
    for (r0, r) in pairs.strips() {
        let mut strip = pairs.strip(r0, r)?;
        let (r064, r64) = (r0 as u64, r as u64);
        let mut launch = stream.launch_builder(&grad_fn);
        launch
            .arg(strip.as_cuda_slice_mut::<f32>()?)
            .arg(&p)
            .arg(&mut dots);
        launch.arg(&r064).arg(&r64).arg(&b64);
        // SAFETY: infonce_grad(float* strip, const float* p, float* dots, u64 r0, u64 r, u64 b);
        // `strip` holds r·B floats, `p` 3 + 2B (checked), `dots` B, r0 + r ≤ B.
        unsafe { launch.launch(per_row(r, b)) }.map_err(|e| failed("infonce_grad", e))?;
        pairs.accumulate(&strip, (r0, r), &s, &mut out)?;
    }
    grad_finish(dev, &dots, None, &mut out, b, 2 * b * d)?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(2 * b * d + 1),
    ))
}

/// `out[at] = Σ dots` and, with `sums`, `out[at + 1] = Σ sums` (f64, fixed order, one block).
fn grad_finish(
    dev: &candle_core::CudaDevice,
    dots: &CudaSlice<f32>,
    sums: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<f32>,
    b: usize,
    at: usize,
) -> Result<()> {
    let need = at + 1 + usize::from(sums.is_some());
    if out.len() < need || dots.len() < b || sums.is_some_and(|s| s.len() < b) {
        bail!("grad_finish: buffers too small for {b} rows");
    }
    let f = function(dev, &CONTRASTIVE, "grad_finish")?;
    let stream = dev.cuda_stream();
    let mut launch = stream.launch_builder(&f);
    let (b64, at64, with_sums) = (b as u64, at as u64, i32::from(sums.is_some()));
    launch.arg(dots).arg(sums.unwrap_or(dots)).arg(out);
    launch.arg(&b64).arg(&at64).arg(&with_sums);
    // SAFETY: grad_finish(const float* dots, const float* sums, float* out, u64 b, u64 at,
    // int with_sums); sizes checked above (`sums` is only read when with_sums is 1).
    unsafe { launch.launch(single_block()) }.map_err(|e| failed("grad_finish", e))?;
    Ok(())
}

/// Pairwise sigmoid forward: `[positive, negative]` from `x`, `y` and `[s, β]`.
pub(crate) fn sigmoid_fwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let pairs = Pairs::new(op, s1, l1, s2, l2)?;
    let sb = packed(s3, l3, 2, op)?;
    let (dev, b) = (&s1.device, pairs.b);
    // SAFETY: `sigmoid_rows` writes both terms of every row; `sigmoid_finish` both outputs.
    let mut terms = unsafe { uninit(dev, 2 * b) }?;
    // SAFETY: as above.
    let mut out = unsafe { uninit(dev, 2) }?;
    let stream = dev.cuda_stream();
    let rows_fn = function(dev, &CONTRASTIVE, "sigmoid_rows")?;
    let b64 = b as u64;
    for (r0, r) in pairs.strips() {
        let strip = pairs.strip(r0, r)?;
        let (r064, r64) = (r0 as u64, r as u64);
        let mut launch = stream.launch_builder(&rows_fn);
        launch
            .arg(strip.as_cuda_slice::<f32>()?)
            .arg(&sb)
            .arg(&mut terms);
        launch.arg(&r064).arg(&r64).arg(&b64);
        // SAFETY: sigmoid_rows(const float* strip, const float* sb, float* terms, u64 r0, u64 r,
        // u64 b); `strip` holds r·B floats, `sb` 2 (checked), `terms` 2B, r0 + r ≤ B.
        unsafe { launch.launch(per_row(r, b)) }.map_err(|e| failed("sigmoid_rows", e))?;
    }
    let f = function(dev, &CONTRASTIVE, "sigmoid_finish")?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&terms).arg(&mut out).arg(&b64);
    // SAFETY: sigmoid_finish(const float* terms, float* out, u64 b); `terms` holds 2B, `out` 2.
    unsafe { launch.launch(single_block()) }.map_err(|e| failed("sigmoid_finish", e))?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(2),
    ))
}

/// Pairwise sigmoid backward: `[dx (B·D), dy (B·D), ds, dβ]` from `x`, `y` and
/// `[s, β, g_positive, g_negative]`.
pub(crate) fn sigmoid_bwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let pairs = Pairs::new(op, s1, l1, s2, l2)?;
    let (dev, b, d) = (&s1.device, pairs.b, pairs.d);
    let p = packed(s3, l3, 4, op)?;
    let s = p.slice(0..1);
    let mut out = dev.alloc_zeros::<f32>(2 * b * d + 2)?;
    // SAFETY: `sigmoid_grad` writes dots and sums of every row of every strip, so all B.
    let mut dots = unsafe { uninit(dev, b) }?;
    // SAFETY: as above.
    let mut sums = unsafe { uninit(dev, b) }?;
    let stream = dev.cuda_stream();
    let grad_fn = function(dev, &CONTRASTIVE, "sigmoid_grad")?;
    let b64 = b as u64;
    for (r0, r) in pairs.strips() {
        let mut strip = pairs.strip(r0, r)?;
        let (r064, r64) = (r0 as u64, r as u64);
        let mut launch = stream.launch_builder(&grad_fn);
        launch.arg(strip.as_cuda_slice_mut::<f32>()?).arg(&p);
        launch
            .arg(&mut dots)
            .arg(&mut sums)
            .arg(&r064)
            .arg(&r64)
            .arg(&b64);
        // SAFETY: sigmoid_grad(float* strip, const float* p, float* dots, float* sums, u64 r0,
        // u64 r, u64 b); `strip` holds r·B floats, `p` 4 (checked), `dots`, `sums` B each.
        unsafe { launch.launch(per_row(r, b)) }.map_err(|e| failed("sigmoid_grad", e))?;
        pairs.accumulate(&strip, (r0, r), &s, &mut out)?;
    }
    grad_finish(dev, &dots, Some(&sums), &mut out, b, 2 * b * d)?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(2 * b * d + 2),
    ))
}

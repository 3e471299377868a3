//! Host side of `attention.cu`: the `cuda_fwd` of the fused attention, its backward and the
//! inspection weights in `attention.rs`. Shapes are checked the way the CPU loops check them.

use super::{ATTENTION, Element, elementwise, failed, function, uninit, uninit_of, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchArgs, PushKernelArg};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, bail};

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

/// The trailing arguments of every kernel of `attention.cu` — `(u64 batch, u64 l, u64 d, u64
/// heads, int causal)` — and its grid: one thread per (batch row, head, row).
struct Tail {
    dims: [u64; 4],
    causal: i32,
    items: usize,
}

impl Tail {
    fn new((b, l, d, heads): (usize, usize, usize, usize), causal: bool) -> Self {
        Self {
            dims: [b as u64, l as u64, d as u64, heads as u64],
            causal: i32::from(causal),
            items: b * heads * l,
        }
    }

    /// Pushes the trailing arguments after those in `args` and launches `kernel`.
    ///
    /// # Safety
    ///
    /// `args` must hold the kernel's leading arguments in its order: its inputs, then its
    /// outputs, each of the element type and at least the size the kernel reads or writes for
    /// this geometry.
    unsafe fn launch<'a>(&'a self, mut args: LaunchArgs<'a>, kernel: &str) -> Result<()> {
        if self.items == 0 {
            return Ok(());
        }
        for n in &self.dims {
            args.arg(n);
        }
        args.arg(&self.causal);
        // SAFETY: the caller pushed the leading arguments as the kernel takes them; these are
        // its trailing ones.
        unsafe { args.launch(elementwise(self.items)) }.map_err(|e| failed(kernel, e))?;
        Ok(())
    }
}

/// The attention output `(B, L, D)`, in the dtype of `qkv` (f32 or bf16).
pub(crate) fn attention_fwd(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(s, forward_as(s, l, heads, causal, op))
}

fn forward_as<T: Element>(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let (b, len, d) = geometry(l, heads, op)?;
    one_output::<T, T>(s, l, heads, causal, op, "attention_fwd", (b, len, d).into())
}

/// The weights `(B, H, L, L)`, f32 whatever the dtype of `qkv`.
pub(crate) fn attention_probs(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(s, probs_as(s, l, heads, causal, op))
}

fn probs_as<T: Element>(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let (b, len, _) = geometry(l, heads, op)?;
    one_output::<T, f32>(
        s,
        l,
        heads,
        causal,
        op,
        "attention_probs",
        (b, heads, len, len).into(),
    )
}

/// Runs `attention_fwd` (output `(B, L, D)` of `qkv`'s type) or `attention_probs` (output
/// `(B, H, L, L)`, f32) for `qkv` of type `T`: each writes every element of its output, the
/// probabilities' zeros above a causal diagonal included.
fn one_output<T: Element, O: Element>(
    s: &CudaStorage,
    l: &Layout,
    heads: usize,
    causal: bool,
    op: &str,
    kernel: &str,
    shape: Shape,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let (b, len, d) = geometry(l, heads, op)?;
    let qkv = view::<T>(s, l, op)?;
    // SAFETY: both kernels write every element of their output (see above).
    let mut out = unsafe { uninit_of::<O>(dev, shape.elem_count()) }?;
    let name = format!("{kernel}{}", T::SUFFIX);
    let (f, stream) = (function(dev, &ATTENTION, &name)?, dev.cuda_stream());
    let tail = Tail::new((b, len, d, heads), causal);
    let mut args = stream.launch_builder(&f);
    args.arg(&qkv).arg(&mut out);
    // SAFETY: attention_fwd(const T* qkv, T* out, …) and attention_probs(const T* qkv, float* p,
    // …): qkv is (B, L, 3D) (`geometry`), the output `shape`, of the kernel's output type.
    unsafe { tail.launch(args, &name) }?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
}

/// The gradient `(B, L, 3D)` with respect to `qkv`, from `qkv` and the output's gradient `go`
/// (both f32 or both bf16; the gradient in the same dtype).
pub(crate) fn attention_bwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    heads: usize,
    causal: bool,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(s1, backward_as((s1, l1), (s2, l2), heads, causal, op))
}

fn backward_as<T: Element>(
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
    let (qkv, go) = (view::<T>(s1, l1, op)?, view::<T>(s2, l2, op)?);
    // SAFETY: `attention_bwd_q` writes the q columns of every row of dqkv and both statistics
    // of every (batch row, head, query); `attention_bwd_kv` writes the k and v columns. Together
    // they write all B·L·3D elements, and `stats` is read only after the first kernel (same
    // stream) wrote it.
    let mut dqkv = unsafe { uninit_of::<T>(dev, b * len * 3 * d) }?;
    // SAFETY: as above.
    let mut stats = unsafe { uninit(dev, 2 * b * heads * len) }?;
    let tail = Tail::new((b, len, d, heads), causal);
    let stream = dev.cuda_stream();
    let name = format!("attention_bwd_q{}", T::SUFFIX);
    let f = function(dev, &ATTENTION, &name)?;
    let mut args = stream.launch_builder(&f);
    args.arg(&qkv).arg(&go).arg(&mut dqkv).arg(&mut stats);
    // SAFETY: attention_bwd_q(const T* qkv, const T* go, T* dqkv, float* stats, …): qkv and dqkv
    // are (B, L, 3D), go (B, L, D), stats 2·B·H·L floats.
    unsafe { tail.launch(args, &name) }?;
    let name = format!("attention_bwd_kv{}", T::SUFFIX);
    let f = function(dev, &ATTENTION, &name)?;
    let mut args = stream.launch_builder(&f);
    args.arg(&qkv).arg(&go).arg(&stats).arg(&mut dqkv);
    // SAFETY: attention_bwd_kv(const T* qkv, const T* go, const float* stats, T* dqkv, …), the
    // same buffers.
    unsafe { tail.launch(args, &name) }?;
    Ok((
        CudaStorage::wrap_cuda_slice(dqkv, dev.clone()),
        l1.shape().clone(),
    ))
}

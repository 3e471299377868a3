//! Helpers shared by the CPU implementations.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, bail};
use rayon::prelude::*;
use std::borrow::Cow;

/// Below this many elements, loops run on the calling thread (dispatch costs more than it saves).
pub const PARALLEL_MIN: usize = 1 << 15;

/// The f32 elements of a contiguous tensor's storage.
pub fn slice_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// The elements of a contiguous f32 or bf16 tensor's storage as f32: borrowed for f32, widened
/// for bf16 (the CPU loops of the ops that take bf16 compute in f32 and round once at the end).
pub fn widen<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<Cow<'a, [f32]>> {
    match s {
        CpuStorage::BF16(data) => match l.contiguous_offsets() {
            Some((a, b)) => Ok(Cow::Owned(data[a..b].iter().map(|v| v.to_f32()).collect())),
            None => bail!("{op}: the input must be contiguous"),
        },
        _ => slice_f32(s, l, op).map(Cow::Borrowed),
    }
}

/// f32 results stored in `dtype`: as they are for f32, rounded to the nearest bf16 for bf16.
pub fn narrow(values: Vec<f32>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(values.into_iter().map(half::bf16::from_f32).collect()),
        _ => CpuStorage::F32(values),
    }
}

/// Applies `f` to each chunk of `row` elements of `out` (with the chunk index), in parallel
/// when the data is large.
pub fn for_rows(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(row)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        out.chunks_mut(row).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// Keeps freed memory for reuse instead of returning it to the kernel after every tensor.
///
/// Training allocates and frees the same few hundred buffers of 0.1–10 MB every step. glibc's
/// defaults serve allocations above its (adaptive) mmap threshold with fresh `mmap`s and trim the
/// heap top eagerly, so each step pays page faults and zeroing for memory it just released —
/// measured here as ~40 % of a CPU step of the `tiny` preset. Raising the mmap threshold to its
/// maximum (32 MiB) and the trim threshold to 2 GiB keeps that memory in the heap, and turning
/// `mmap` off for larger blocks keeps those there too (page faults were 15 % of a `small` step
/// at batch 256, whose MLP activations exceed 32 MiB). Process-wide,
/// idempotent, and a no-op on other platforms.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: `mallopt` only changes allocator tuning parameters; it is safe to call at
            // any time from any thread, and both values are within glibc's documented ranges.
            #[allow(unsafe_code)]
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                // Buffers above the 32 MiB ceiling of the threshold (the `small` preset's MLP
                // activations at batch 256) would still get fresh pages every step.
                libc::mallopt(libc::M_MMAP_MAX, 0);
            }
        });
    }
}

/// The shared `(B, D)` of two pairwise-score operands: both must be matrices of one shape with
/// `B ≥ 1` (the CPU and CUDA strip drivers check the same thing).
pub fn pair_dims(op: &str, xl: &Layout, yl: &Layout) -> Result<(usize, usize)> {
    match (xl.dims(), yl.dims()) {
        (&[b, d], &[b2, d2]) if (b, d) == (b2, d2) && b > 0 => Ok((b, d)),
        (&[_, _], &[_, _]) => bail!(
            "{op}: operands {:?} and {:?} differ or are empty",
            xl.dims(),
            yl.dims()
        ),
        _ => bail!(
            "{op}: expected two (B, D) matrices, got {:?} and {:?}",
            xl.dims(),
            yl.dims()
        ),
    }
}

/// The two `(B, D)` operands of pairwise scores `x·yᵀ` (image and text embeddings), as f32 CPU
/// storage, walked in strips of rows so that the `B × B` matrix never exists at once.
///
/// Products go through candle's CPU matmul (the `gemm` crate: blocked, vectorised for the
/// running CPU, multi-threaded), reading operands in place through strided layouts: a strip of
/// rows is an offset, a transpose is a pair of strides.
pub struct Pairs<'a> {
    x: &'a CpuStorage,
    xo: usize,
    y: &'a CpuStorage,
    yo: usize,
    /// Rows of each operand (the batch).
    pub b: usize,
    /// Columns of each operand (the embedding size).
    pub d: usize,
}

/// What [`Pairs::backward`] returns: `dx = G·y`, `dy = Gᵀ·x` (each `B × D`, row-major), and
/// `Σ G ⊙ (x·yᵀ)` and `Σ G` in f64, for a `B × B` matrix `G` that existed one strip at a time.
pub struct PairGrads {
    /// `G·y`.
    pub dx: Vec<f32>,
    /// `Gᵀ·x`.
    pub dy: Vec<f32>,
    /// `Σ_ij G_ij·(x_i·y_j)` — the gradient of a scale that multiplies the scores.
    pub g_dot_scores: f64,
    /// `Σ_ij G_ij` — the gradient of a bias added to the scores.
    pub g_sum: f64,
}

impl<'a> Pairs<'a> {
    /// Checks that both operands are contiguous f32 matrices of one shape `(B, D)`, `B ≥ 1`.
    pub fn new(
        op: &str,
        x: &'a CpuStorage,
        xl: &Layout,
        y: &'a CpuStorage,
        yl: &Layout,
    ) -> Result<Self> {
        slice_f32(x, xl, op)?;
        slice_f32(y, yl, op)?;
        let (b, d) = pair_dims(op, xl, yl)?;
        Ok(Self {
            x,
            xo: xl.start_offset(),
            y,
            yo: yl.start_offset(),
            b,
            d,
        })
    }

    /// Rows `r0 .. r0 + r` of `x·yᵀ`: an `r × B` row-major strip.
    pub fn strip(&self, r0: usize, r: usize) -> Result<Vec<f32>> {
        let (b, d) = (self.b, self.d);
        let rows = Layout::contiguous_with_offset((r, d), self.xo + r0 * d);
        let yt = Layout::new(Shape::from((d, b)), vec![1, d], self.yo);
        into_f32(self.x.matmul(self.y, (1, r, b, d), &rows, &yt)?)
    }

    /// Calls `f(r0, strip)` for consecutive strips of at most `tile` rows of `x·yᵀ`, in order.
    pub fn for_strips(
        &self,
        tile: usize,
        mut f: impl FnMut(usize, Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let tile = tile.max(1);
        for r0 in (0..self.b).step_by(tile) {
            f(r0, self.strip(r0, tile.min(self.b - r0))?)?;
        }
        Ok(())
    }

    /// The backward pass of a loss on the scores `x·yᵀ`: strip by strip, recomputes the scores,
    /// lets `g(i, row)` overwrite row `i` of them with the loss gradient `G_i·` with respect to
    /// the scores and return `(Σ_j G_ij·score_ij, Σ_j G_ij)`, then accumulates `G·y` and `Gᵀ·x`.
    /// Rows run in parallel; every reduction is summed in a fixed order, so results do not
    /// depend on thread scheduling.
    pub fn backward(
        &self,
        tile: usize,
        g: impl Fn(usize, &mut [f32]) -> (f64, f64) + Sync + Send,
    ) -> Result<PairGrads> {
        let (b, d) = (self.b, self.d);
        let mut out = PairGrads {
            dx: vec![0f32; b * d],
            dy: vec![0f32; b * d],
            g_dot_scores: 0.0,
            g_sum: 0.0,
        };
        let mut sums = Vec::new();
        self.for_strips(tile, |r0, mut strip| {
            let r = strip.len() / b;
            sums.clear();
            sums.resize(r, (0.0, 0.0));
            if strip.len() >= PARALLEL_MIN {
                strip
                    .par_chunks_mut(b)
                    .zip(sums.par_iter_mut())
                    .enumerate()
                    .for_each(|(i, (row, s))| *s = g(r0 + i, row));
            } else {
                for (i, (row, s)) in strip.chunks_mut(b).zip(sums.iter_mut()).enumerate() {
                    *s = g(r0 + i, row);
                }
            }
            for &(gs, g1) in &sums {
                out.g_dot_scores += gs;
                out.g_sum += g1;
            }
            let gs = CpuStorage::F32(strip);
            // dx[r0 .. r0 + r] = G_strip · y
            let dx = into_f32(gs.matmul(
                self.y,
                (1, r, d, b),
                &Layout::contiguous((r, b)),
                &Layout::contiguous_with_offset((b, d), self.yo),
            )?)?;
            out.dx[r0 * d..(r0 + r) * d].copy_from_slice(&dx);
            // dy += G_stripᵀ · x[r0 .. r0 + r]
            let dy = into_f32(gs.matmul(
                self.x,
                (1, b, d, r),
                &Layout::new(Shape::from((b, r)), vec![1, b], 0),
                &Layout::contiguous_with_offset((r, d), self.xo + r0 * d),
            )?)?;
            for_rows(&mut out.dy, d, |j, row| {
                for (o, v) in row.iter_mut().zip(&dy[j * d..(j + 1) * d]) {
                    *o += v;
                }
            });
            Ok(())
        })?;
        Ok(out)
    }
}

fn into_f32(s: CpuStorage) -> Result<Vec<f32>> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        other => bail!("expected f32 storage, got {:?}", other.dtype()),
    }
}

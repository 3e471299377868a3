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

/// `eˣ` in f32, written so that loops over slices vectorise (`f32::exp` is a call into libm per
/// element, which keeps the loops of GELU and softmax scalar: 5 % of a CPU training step).
///
/// Range reduction `x = n·ln2 + r`, `|r| ≤ ½ln2`, with `n` rounded by the 1.5·2²³ trick (plain
/// adds, no rounding instruction) and `ln2` split in two so that `n·ln2` is exact; `eʳ` by a
/// degree-7 polynomial (the Cephes minimax coefficients); `2ⁿ` built in the exponent bits.
/// Within 1 ulp of the correctly rounded value on `[−87, 87]` (every 1021st f32 there is checked
/// against `f64::exp`).
/// Outside it: 0 below −87 (so `exp(−∞) = 0`, as masked softmax entries need), `e⁸⁷ ≈ 6.1e37`
/// above 87 rather than ∞ (so that `1/(1 + eˣ)` stays a normal number); NaN stays NaN.
#[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
#[allow(clippy::inline_always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer, ties to even
    let c = x.clamp(-87.0, 87.0);
    let t = c * LOG2E + ROUND;
    let n = t - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // `t`'s low mantissa bits hold `n` (two's complement within the 2²² offset of ROUND).
    let scale = f32::from_bits((t.to_bits().wrapping_add(127) << 23) & 0x7f80_0000);
    let y = e * scale;
    if x < -87.0 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// `Σ xᵢ`, summed in vector lanes ([`sum_by`]).
#[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
#[allow(clippy::inline_always)]
pub fn sum(xs: &[f32]) -> f32 {
    sum_by(xs, xs, |x, _| x)
}

/// `Σ f(aᵢ, bᵢ)` over the common length of `a` and `b`, summed in 8 independent lanes so that
/// the compiler vectorises it (one running sum is a serial chain of dependent additions it may
/// not reorder); the lanes are added last, in order, then the tail.
#[inline(always)] // into `cpu::vectorized`'s wide-vector code, not called from it
#[allow(clippy::inline_always)]
pub fn sum_by(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (ac, bc) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    let mut acc = [0f32; LANES];
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += f(x[k], y[k]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Runs `f` compiled for the widest vector instructions the running CPU has.
///
/// The crate is built for the x86-64 baseline (4-wide SSE2 vectors), so the loops of the CPU
/// kernels vectorise 4 lanes wide. On x86-64 this calls `f` from a function compiled with AVX2
/// (8 lanes) or AVX-512 (16 lanes) when the CPU has them, and `f`, inlined there, is compiled
/// for them too. The arithmetic is the same operations in the same order (the compiler contracts
/// nothing into fused multiply-adds and reorders no floating-point sums), so results do not
/// depend on the path. Elsewhere it calls `f`.
#[inline]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the only feature `on_avx512` is compiled for.
            #[allow(unsafe_code)]
            return unsafe { on_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the only feature `on_avx2` is compiled for.
            #[allow(unsafe_code)]
            return unsafe { on_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn on_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn on_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
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

/// A matrix inside a slice: element `(i, j)` at `offset + i·rs + j·cs` (row and column strides;
/// a transpose swaps them).
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Index of element `(0, 0)`.
    pub offset: usize,
    /// Step from one row to the next.
    pub rs: usize,
    /// Step from one column to the next.
    pub cs: usize,
}

impl View {
    /// A row-major matrix with rows `rs` apart, starting at `offset`.
    pub fn rows(offset: usize, rs: usize) -> Self {
        Self { offset, rs, cs: 1 }
    }

    /// This matrix transposed.
    #[must_use]
    pub fn t(self) -> Self {
        Self {
            offset: self.offset,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Whether a `rows × cols` matrix seen this way lies inside a slice of `len` elements.
    fn fits(self, (rows, cols): (usize, usize), len: usize) -> bool {
        rows == 0 || cols == 0 || self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs < len
    }
}

/// `dst ← α·dst + β·lhs·rhs` for an `m × k` `lhs` and a `k × n` `rhs` (with `accumulate`, α = 1;
/// without it `dst` is overwritten and not read), by the `gemm` crate (the kernels candle's CPU
/// matrix products use), on rayon's threads when `parallel`, else on the calling thread.
///
/// # Panics
/// If a matrix does not lie inside its slice, or `dst` overlaps itself (a zero stride).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dv): (&mut [f32], View),
    (lhs, lv): (&[f32], View),
    (rhs, rv): (&[f32], View),
    accumulate: bool,
    beta: f32,
    parallel: bool,
) {
    assert!(
        dv.fits((m, n), dst.len()) && lv.fits((m, k), lhs.len()) && rv.fits((k, n), rhs.len()),
        "gemm: a ({m} × {n}) = ({m} × {k})·({k} × {n}) matrix lies outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m == 1 || dv.rs > 0) && (n == 1 || dv.cs > 0) && (m == 1 || n == 1 || dv.rs != dv.cs),
        "gemm: the destination overlaps itself"
    );
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertions keep every element gemm reads or writes inside its slice (the
    // largest index of each matrix is checked against the slice's length) and the destination's
    // elements distinct; `dst` is borrowed mutably and alone, `lhs` and `rhs` only read. With
    // k = 0 gemm reads neither operand.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dv.offset),
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            lhs.as_ptr().add(lv.offset.min(lhs.len())),
            lv.cs as isize,
            lv.rs as isize,
            rhs.as_ptr().add(rv.offset.min(rhs.len())),
            rv.cs as isize,
            rv.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `y + x·wᵀ` for row-major `x` (`m × k`), `w` (`n × k`) and `y` (`m × n`), computed in place in
/// `y` on rayon's threads.
pub fn add_x_wt(
    mut y: Vec<f32>,
    x: &[f32],
    w: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    gemm(
        (m, n, k),
        (&mut y, View::rows(0, n)),
        (x, View::rows(0, k)),
        (w, View::rows(0, k).t()),
        true,
        1.0,
        true,
    );
    y
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

#[cfg(test)]
mod tests {
    use super::{View, exp, gemm};

    /// The naive triple loop.
    fn naive(
        (m, n, k): (usize, usize, usize),
        (a, av): (&[f32], View),
        (b, bv): (&[f32], View),
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|l| {
                        a[av.offset + i * av.rs + l * av.cs] * b[bv.offset + l * bv.rs + j * bv.cs]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn gemm_reads_strided_and_transposed_views_and_accumulates_when_told() {
        // Two 5 × 3 operands packed side by side in rows of 8 (offset 1 and 4), as heads sit in
        // packed qkv rows; small integers, so every sum is exact.
        let packed: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let (q, k) = (View::rows(1, 8), View::rows(4, 8));
        // q·kᵀ (5 × 5), then qᵀ·k (3 × 3) added onto a non-zero destination with β = 2.
        let mut s = vec![0f32; 25];
        gemm(
            (5, 5, 3),
            (&mut s, View::rows(0, 5)),
            (&packed, q),
            (&packed, k.t()),
            false,
            1.0,
            false,
        );
        assert_eq!(s, naive((5, 5, 3), (&packed, q), (&packed, k.t())));
        let mut t = vec![1f32; 9];
        gemm(
            (3, 3, 5),
            (&mut t, View::rows(0, 3)),
            (&packed, q.t()),
            (&packed, k),
            true,
            2.0,
            true,
        );
        let want: Vec<f32> = naive((3, 3, 5), (&packed, q.t()), (&packed, k))
            .into_iter()
            .map(|v| 1.0 + 2.0 * v)
            .collect();
        assert_eq!(t, want);
    }

    #[test]
    #[should_panic(expected = "lies outside its slice")]
    fn gemm_refuses_a_view_past_the_end_of_its_slice() {
        let a = vec![0f32; 40];
        let mut out = vec![0f32; 25];
        // Rows of 8 from offset 5: the last row's third element is at 5 + 4·8 + 2 = 39 (inside);
        // from offset 6 it would be 40.
        gemm(
            (5, 5, 3),
            (&mut out, View::rows(0, 5)),
            (&a, View::rows(6, 8)),
            (&a, View::rows(0, 8).t()),
            false,
            1.0,
            false,
        );
    }

    /// Distance in units in the last place between two finite f32 of one sign.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_is_within_one_ulp_of_the_correctly_rounded_value() {
        // Every 1021st bit pattern of the f32 in [−87, 87] (both signs, denormals included).
        let mut worst = (0, 0.0f32);
        let mut checked = 0;
        for bits in (0..=u32::MAX).step_by(1021) {
            let x = f32::from_bits(bits);
            if !(-87.0..=87.0).contains(&x) {
                continue;
            }
            let want = (f64::from(x)).exp() as f32;
            let d = ulps(exp(x), want);
            if d > worst.0 {
                worst = (d, x);
            }
            checked += 1;
        }
        assert!(checked > 2_000_000, "{checked}");
        assert!(worst.0 <= 1, "exp({}) is {} ulp off", worst.1, worst.0);
    }

    #[test]
    fn exp_is_exact_where_it_must_be_and_saturates_outside_its_range() {
        assert_eq!(exp(0.0).to_bits(), 1f32.to_bits());
        assert_eq!(exp(-0.0).to_bits(), 1f32.to_bits());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-87.5), 0.0);
        assert!(exp(f32::NAN).is_nan());
        let big = exp(87.0);
        assert_eq!(exp(1e30), big);
        assert_eq!(exp(f32::INFINITY), big);
        assert!(big.is_finite() && (1.0 / (1.0 + big)).is_normal());
        // Near whole multiples of ln 2 (r ≈ 0), across the whole exponent range.
        for n in -120..=120 {
            let x = n as f32 * std::f32::consts::LN_2;
            let want = (f64::from(x)).exp() as f32;
            assert!(ulps(exp(x), want) <= 2, "exp({x})");
        }
    }
}

//! Helpers shared by the CPU implementations.

use candle_core::{CpuStorage, Layout, Result, bail};
use rayon::prelude::*;

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
/// maximum (32 MiB) and the trim threshold to 2 GiB keeps that memory in the heap. Process-wide,
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
            }
        });
    }
}

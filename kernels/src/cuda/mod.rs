//! CUDA kernels of the fused ops (feature `cuda`), compiled at run time with NVRTC.
//!
//! # Design
//!
//! - **Sources.** Each `*.cu` file in this directory mirrors the CPU loops of one op file
//!   (`gelu.cu` ↔ `gelu.rs`, …; `contrastive.cu` holds the strip kernels of both contrastive
//!   losses). `common.cuh` (block reductions, `u64`, `NEG_INF`) is prepended to each, with a
//!   `#line` directive so compiler messages name the `.cu` file and its own line numbers. The
//!   sources use no header: NVRTC compiles them with nothing but its built-in declarations.
//! - **Compilation.** NVRTC, through the `cudarc` that candle re-exports (one cudarc in the
//!   build), turns a source into PTX for the device's compute capability (the newest virtual
//!   architecture NVRTC 13 knows that does not exceed it; the driver JIT-compiles PTX forward).
//!   PTX is cached per process by (source, architecture), and candle's `CudaDevice` caches the
//!   loaded module per device (`get_or_load_custom_func`), so each source is compiled once per
//!   architecture and loaded once per device.
//! - **Launch.** Kernels run on candle's stream of the device, so they are ordered with candle's
//!   own kernels and cuBLAS calls without extra synchronisation. Element-wise kernels use a grid
//!   stride loop; row kernels one block per row (grid stride over rows) with block reductions
//!   whose order depends only on the block size; column reductions sum fixed chunks of rows and
//!   then the chunks in order. So, as on the CPU, results do not depend on scheduling.
//! - **Scope.** f32 and contiguous inputs (the public functions make inputs contiguous); GELU,
//!   bias and attention also take bf16 (`*_bf16` entry points of templates over the element
//!   type: bf16 as its bits, computed in f32, each result rounded once to nearest even, as the
//!   CPU loops do). Other dtypes never reach these kernels. The contrastive losses compute their
//!   strips of cosines
//!   with candle's cuBLAS matmul exactly like the CPU path, and use kernels for the online
//!   log-sum-exp, the losses and the score gradients. Attention (`attention.cu`) runs one thread
//!   per (batch row, head, query or key) with an online softmax, for heads up to
//!   [`attention::MAX_HEAD_DIM`] wide; wider heads run the reference.
//! - **Verification.** `compile` needs only `libnvrtc` (no GPU): a unit test compiles every
//!   source, so syntax and type errors show without a GPU. The integration tests run every
//!   source on the CPU through a C++ shim of the CUDA built-ins (`kernels::cuda_host`: real
//!   threads per block, so barriers and warp shuffles behave), against the references. Parity
//!   on a GPU is tested by the integration tests in `kernels::cuda`, which report that they
//!   were skipped without one.

// Kernel launches and uninitialised device buffers are `unsafe` in cudarc; every block below
// states why the arguments match the kernel's signature and the buffers are large enough.
#![allow(unsafe_code)]

/// Runs `f::<T>(args…)` with `T` the element type of storage `s`: `half::bf16` for bf16, f32 for
/// anything else (which `view` then refuses with candle's dtype error).
macro_rules! by_dtype {
    ($s:expr, $f:ident($($arg:expr),*)) => {
        match $s.dtype() {
            DType::BF16 => $f::<half::bf16>($($arg),*),
            _ => $f::<f32>($($arg),*),
        }
    };
}

pub mod attention;
pub(crate) mod ops;
pub(crate) mod pairs;

use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig,
};
use candle_core::cuda_backend::cudarc::nvrtc::{
    CompileError, CompileOptions, compile_ptx_with_opts,
};
use candle_core::{CudaDevice, CudaStorage, Error, Layout, Result, bail};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// One kernel source: a module name, its CUDA C++ and the kernels (entry points) it defines.
#[derive(Debug)]
pub struct Source {
    /// Module name, also the `.cu` file's stem.
    pub name: &'static str,
    /// CUDA C++ without the shared prelude.
    pub code: &'static str,
    /// The `extern "C" __global__` functions the source defines.
    pub kernels: &'static [&'static str],
}

const COMMON: &str = include_str!("common.cuh");

/// GELU forward and backward.
pub const GELU: Source = Source {
    name: "gelu",
    code: include_str!("gelu.cu"),
    kernels: &["gelu_fwd", "gelu_bwd", "gelu_fwd_bf16", "gelu_bwd_bf16"],
};

/// Bias addition and its row-sum backward.
pub const BIAS: Source = Source {
    name: "bias",
    code: include_str!("bias.cu"),
    kernels: &[
        "add_bias_fwd",
        "sum_rows_partial",
        "sum_partials",
        "add_bias_fwd_bf16",
        "sum_rows_partial_bf16",
        "sum_partials_bf16",
    ],
};

/// Softmax over the last dimension, forward and backward.
pub const SOFTMAX: Source = Source {
    name: "softmax",
    code: include_str!("softmax.cu"),
    kernels: &["softmax_fwd", "softmax_bwd"],
};

/// LayerNorm forward, input gradient and weight/bias gradients.
pub const LAYER_NORM: Source = Source {
    name: "layer_norm",
    code: include_str!("layer_norm.cu"),
    kernels: &[
        "layer_norm_fwd",
        "layer_norm_dx",
        "layer_norm_stats",
        "layer_norm_dwdb_partial",
        "layer_norm_sum_partials",
    ],
};

/// Strip kernels of the InfoNCE and pairwise sigmoid losses.
pub const CONTRASTIVE: Source = Source {
    name: "contrastive",
    code: include_str!("contrastive.cu"),
    kernels: &[
        "infonce_rows",
        "infonce_columns",
        "infonce_finish",
        "infonce_grad",
        "sigmoid_rows",
        "sigmoid_finish",
        "sigmoid_grad",
        "scaled_copy",
        "grad_finish",
    ],
};

/// Fused multi-head attention: forward, inspection weights and the two backward kernels.
pub const ATTENTION: Source = Source {
    name: "attention",
    code: include_str!("attention.cu"),
    kernels: &[
        "attention_fwd",
        "attention_probs",
        "attention_bwd_q",
        "attention_bwd_kv",
        "attention_fwd_bf16",
        "attention_probs_bf16",
        "attention_bwd_q_bf16",
        "attention_bwd_kv_bf16",
    ],
};

/// Every kernel source of the crate.
pub const SOURCES: [&Source; 6] = [
    &GELU,
    &BIAS,
    &SOFTMAX,
    &LAYER_NORM,
    &CONTRASTIVE,
    &ATTENTION,
];

/// Virtual architectures NVRTC 13 compiles for, as `(major·10 + minor, name)`, oldest first.
pub const ARCHITECTURES: [(i32, &str); 12] = [
    (75, "compute_75"),
    (80, "compute_80"),
    (86, "compute_86"),
    (87, "compute_87"),
    (88, "compute_88"),
    (89, "compute_89"),
    (90, "compute_90"),
    (100, "compute_100"),
    (103, "compute_103"),
    (110, "compute_110"),
    (120, "compute_120"),
    (121, "compute_121"),
];

/// The newest architecture in [`ARCHITECTURES`] that a device of compute capability
/// `major.minor` runs; an error for devices older than 7.5 (NVRTC 13 dropped them).
pub fn architecture(major: i32, minor: i32) -> Result<&'static str> {
    let cc = major * 10 + minor;
    match ARCHITECTURES.iter().rev().find(|(c, _)| *c <= cc) {
        Some((_, arch)) => Ok(arch),
        None => bail!(
            "fused kernels: compute capability {major}.{minor} is older than 7.5, the oldest NVRTC 13 compiles for"
        ),
    }
}

impl Source {
    /// The text NVRTC compiles: the shared prelude, then this source (line numbers restart at 1,
    /// under the `.cu` file's name).
    pub fn text(&self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name, self.code)
    }

    /// Compiles the source with NVRTC for `arch` (for example `"compute_90"`) and returns the
    /// PTX. Needs `libnvrtc` (and its `libnvrtc-builtins`), not a GPU. Errors carry NVRTC's log.
    pub fn compile(&self, arch: &'static str) -> Result<String> {
        let opts = CompileOptions {
            arch: Some(arch),
            name: Some(format!("{}.cu", self.name)),
            ..CompileOptions::default()
        };
        match compile_ptx_with_opts(self.text(), opts) {
            Ok(ptx) => Ok(ptx.to_src()),
            Err(CompileError::CompileError { log, options, .. }) => bail!(
                "NVRTC could not compile {}.cu ({}):\n{}",
                self.name,
                options.join(" "),
                log.to_string_lossy()
            ),
            Err(e) => bail!("NVRTC failed on {}.cu: {e}", self.name),
        }
    }
}

type PtxCache = HashMap<(&'static str, &'static str), Arc<str>>;

/// PTX of every source compiled so far in this process, by (source, architecture).
static PTX: Mutex<Option<PtxCache>> = Mutex::new(None);

/// The PTX of `src` for `arch`, compiled on first use.
fn ptx(src: &Source, arch: &'static str) -> Result<Arc<str>> {
    let key = (src.name, arch);
    if let Some(p) = PTX
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(&key))
    {
        return Ok(p.clone());
    }
    // Compile outside the lock; a concurrent first use compiles twice and keeps one.
    let compiled: Arc<str> = src.compile(arch)?.into();
    let mut guard = PTX.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(guard
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert(compiled)
        .clone())
}

/// The `(source, architecture)` pairs compiled so far in this process, sorted: tests use it to
/// tell that an op ran its CUDA kernel and not its reference.
pub fn compiled() -> Vec<(&'static str, &'static str)> {
    let mut keys: Vec<_> = PTX
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|m| m.keys().copied().collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

/// Wraps a driver or launch error with the kernel's name.
pub(crate) fn failed(kernel: &str, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("CUDA kernel {kernel}: {e}"))
}

/// Kernel `name` of `src` on `dev`: compiled (once per architecture) and loaded (once per device).
pub(crate) fn function(dev: &CudaDevice, src: &Source, name: &str) -> Result<CudaFunction> {
    let stream = dev.cuda_stream();
    let (major, minor) = stream
        .context()
        .compute_capability()
        .map_err(|e| failed(name, e))?;
    let arch = architecture(major, minor)?;
    let ptx = ptx(src, arch)?;
    let module = format!("contrastive-workbench-{}-{arch}", src.name);
    Ok(dev
        .get_or_load_custom_func(name, &module, &ptx)?
        .into_cuda_function())
}

/// The element types of the kernels that take bf16 as well as f32 (GELU, bias, attention): the
/// `_bf16` entry points compute in f32 and round each result once.
pub(crate) trait Element: CudaDType + DeviceRepr {
    /// Appended to the f32 kernel's name.
    const SUFFIX: &'static str;
}

impl Element for f32 {
    const SUFFIX: &'static str = "";
}

impl Element for half::bf16 {
    const SUFFIX: &'static str = "_bf16";
}

/// The f32 elements of a contiguous CUDA tensor's storage.
pub(crate) fn view_f32<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    view::<f32>(s, l, op)
}

/// The elements of a contiguous CUDA tensor's storage of element type `T` (candle's dtype error
/// for another type).
pub(crate) fn view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &str,
) -> Result<CudaView<'a, T>> {
    let data = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(data.slice(a..b)),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// A device buffer of `n` floats whose contents are unspecified until a kernel writes them.
///
/// # Safety
///
/// The caller must write every element (with a kernel on the device's stream) before anything
/// reads it.
pub(crate) unsafe fn uninit(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: forwarded to the caller: every element is written before it is read.
    unsafe { uninit_of::<f32>(dev, n) }
}

/// [`uninit`] for `n` elements of type `T`.
///
/// # Safety
///
/// As for [`uninit`].
pub(crate) unsafe fn uninit_of<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: forwarded to the caller: every element is written before it is read.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

/// Threads per block of element-wise and column kernels.
const THREADS: u32 = 256;

/// Most blocks along x of a grid (grid-stride loops cover the rest).
const MAX_BLOCKS: usize = 65_535;

/// A one-dimensional grid covering `n` elements with [`THREADS`] threads per block.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row of `n` values (at most [`MAX_BLOCKS`], grid stride beyond), with a block
/// size that is a multiple of 32 and no larger than the row needs.
pub(crate) fn per_row(rows: usize, n: usize) -> LaunchConfig {
    let threads = match n {
        0..=32 => 32,
        33..=64 => 64,
        65..=128 => 128,
        129..=512 => 256,
        _ => 512,
    };
    LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block (for the final reductions over the batch).
pub(crate) fn single_block() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows per chunk of a column reduction over `rows` rows, and the number of chunks: at least
/// `min_rows` rows a chunk, and at most 65 535 chunks (the grid's y limit).
pub(crate) fn row_chunks(rows: usize, min_rows: usize) -> (usize, usize) {
    let chunk = min_rows.max(rows.div_ceil(MAX_BLOCKS)).max(1);
    (chunk, rows.div_ceil(chunk).max(1))
}

/// A grid with one thread per column of `width` (x) and one block row per chunk (y).
pub(crate) fn columns_by_chunks(width: usize, chunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            width.div_ceil(THREADS as usize).max(1) as u32,
            chunks.clamp(1, MAX_BLOCKS) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every source compiles with NVRTC for the oldest and the newest architecture, and defines
    /// each kernel it lists. Needs `libnvrtc` and `libnvrtc-builtins`, no GPU.
    #[test]
    fn every_kernel_source_compiles_with_nvrtc() {
        for arch in [ARCHITECTURES[0].1, "compute_90", ARCHITECTURES[11].1] {
            for src in SOURCES {
                let ptx = src.compile(arch).unwrap_or_else(|e| panic!("{e}"));
                for k in src.kernels {
                    assert!(
                        ptx.contains(&format!(".entry {k}(")),
                        "{}.cu compiled for {arch} lacks kernel {k}",
                        src.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_syntax_error_is_reported_with_file_and_line() {
        let bad = Source {
            name: "broken",
            code: "extern \"C\" __global__ void k(float* x) {\n  x[0] = undefined_name;\n}\n",
            kernels: &["k"],
        };
        let e = bad.compile("compute_75").unwrap_err().to_string();
        assert!(e.contains("broken.cu(2)"), "{e}");
        assert!(e.contains("undefined_name"), "{e}");
    }

    #[test]
    fn architecture_picks_the_newest_not_above_the_device() {
        assert_eq!(architecture(9, 0).unwrap(), "compute_90");
        assert_eq!(architecture(8, 9).unwrap(), "compute_89");
        assert_eq!(architecture(8, 7).unwrap(), "compute_87");
        assert_eq!(architecture(12, 9).unwrap(), "compute_121");
        assert_eq!(architecture(7, 5).unwrap(), "compute_75");
        let e = architecture(7, 0).unwrap_err().to_string();
        assert!(e.contains("7.0"), "{e}");
    }

    #[test]
    fn row_chunks_respect_the_grid_limit() {
        assert_eq!(row_chunks(0, 64), (64, 1));
        assert_eq!(row_chunks(100, 64), (64, 2));
        let (chunk, n) = row_chunks(10_000_000, 64);
        assert!(n <= MAX_BLOCKS && chunk * n >= 10_000_000);
    }
}

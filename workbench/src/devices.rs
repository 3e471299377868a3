//! What this build can train on: the CPU, and every CUDA device with its name, compute
//! capability and memory — each checked by running a fused kernel (compiled with NVRTC) and a
//! cuBLAS product on it against the CPU, so a missing library or an unusable driver shows here
//! rather than in the first training step. `workbench devices` prints it.
//!
//! ```
//! let survey = workbench::devices::survey();
//! println!("{survey}");
//! if !survey.cuda_built {
//!     assert!(survey.cuda.is_err()); // "this binary was built without CUDA; …"
//! }
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

/// A device check: the same computation on the device and on the CPU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceCheck {
    /// Seconds for the first GELU on the device, which includes compiling its kernel with NVRTC.
    pub first_kernel_seconds: f64,
    /// Largest |device − CPU| of the GELU of 4 096 values in [−6, 6].
    pub gelu_max_diff: f32,
    /// Largest |device − CPU| of a 64 × 64 by 64 × 64 product (cuBLAS), relative to the largest
    /// entry.
    pub matmul_max_rel_diff: f32,
}

/// One CUDA device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CudaDevice {
    /// `N` of `cuda:N`.
    pub ordinal: usize,
    /// The driver's name for it, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Memory, total and free now, in bytes.
    pub total_bytes: usize,
    /// Free memory in bytes.
    pub free_bytes: usize,
    /// The kernel and product check, or why it failed; `None` when not asked for
    /// ([`cuda_devices`] with `check = false`).
    pub check: Option<Result<DeviceCheck, String>>,
}

/// A CUDA device's memory as its driver reports it at one moment: for every process on the
/// device (what `nvidia-smi` shows), the driver's and cuBLAS's pools included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// Total − free, bytes.
    pub used_bytes: u64,
    /// The device's memory, bytes.
    pub total_bytes: u64,
}

impl fmt::Display for DeviceMemory {
    /// `3.2 of 79.6 GiB in use`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        write!(
            f,
            "{:.1} of {:.1} GiB in use",
            gib(self.used_bytes),
            gib(self.total_bytes)
        )
    }
}

/// The memory of `device` now; `None` on the CPU.
pub fn memory(device: &candle_core::Device) -> candle_core::Result<Option<DeviceMemory>> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        let (free, total) = d
            .cuda_stream()
            .context()
            .mem_get_info()
            .map_err(candle_core::Error::wrap)?;
        return Ok(Some(DeviceMemory {
            used_bytes: (total - free) as u64,
            total_bytes: total as u64,
        }));
    }
    let _ = device;
    Ok(None)
}

/// `bytes` in GiB, as the survey prints memory.
pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Everything [`survey`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Survey {
    /// Whether this build has the CUDA backend (feature `cuda`).
    pub cuda_built: bool,
    /// Whether it has NCCL data parallel (feature `nccl`).
    pub nccl_built: bool,
    /// Threads of the CPU pool (rayon; `RAYON_NUM_THREADS` sets it).
    pub cpu_threads: usize,
    /// Whether candle's CPU kernels use AVX.
    pub cpu_avx: bool,
    /// The CUDA devices, or why there are none to use.
    pub cuda: Result<Vec<CudaDevice>, String>,
}

/// Looks at the CPU and every CUDA device (see the module docs). Never fails: what cannot be
/// used says why.
pub fn survey() -> Survey {
    Survey {
        cuda_built: cfg!(feature = "cuda"),
        nccl_built: cfg!(feature = "nccl"),
        cpu_threads: rayon::current_num_threads(),
        cpu_avx: candle_core::utils::with_avx(),
        cuda: cuda_devices(true),
    }
}

/// The CUDA devices with their names and memory, each checked (a kernel and a product against
/// the CPU, about a second on first use) when `check` is set; or why there are none to use.
#[cfg(not(feature = "cuda"))]
pub fn cuda_devices(_check: bool) -> Result<Vec<CudaDevice>, String> {
    Err(
        "this binary was built without CUDA; rebuild with `--features cuda` \
         (kernels/cuda-toolchain.sh prepares the toolchain on a machine without one)"
            .into(),
    )
}

/// The CUDA devices with their names and memory, each checked (a kernel and a product against
/// the CPU, about a second on first use) when `check` is set; or why there are none to use.
#[cfg(feature = "cuda")]
pub fn cuda_devices(check: bool) -> Result<Vec<CudaDevice>, String> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let count = CudaContext::device_count()
        .map_err(|e| format!("no usable CUDA driver or device ({e})"))?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err("the CUDA driver reports no device".into());
    }
    (0..count)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| format!("cuda:{ordinal}: cannot open ({e})"))?;
            let name = ctx
                .name()
                .unwrap_or_else(|e| format!("(name unknown: {e})"));
            let compute_capability = ctx
                .compute_capability()
                .map_err(|e| format!("cuda:{ordinal}: {e}"))?;
            let (free_bytes, total_bytes) = ctx
                .mem_get_info()
                .map_err(|e| format!("cuda:{ordinal}: {e}"))?;
            Ok(CudaDevice {
                ordinal,
                name,
                compute_capability,
                total_bytes,
                free_bytes,
                check: check.then(|| run_check(ordinal).map_err(|e| e.to_string())),
            })
        })
        .collect()
}

/// GELU (our NVRTC kernel) and a product (cuBLAS) on `cuda:ordinal` against the CPU.
#[cfg(feature = "cuda")]
fn run_check(ordinal: usize) -> candle_core::Result<DeviceCheck> {
    use candle_core::{Device, Tensor};
    let device = Device::new_cuda(ordinal)?;
    let xs: Vec<f32> = (0..4096)
        .map(|i| (i as f32 / 4095.0) * 12.0 - 6.0)
        .collect();
    let cpu = Tensor::from_vec(xs, 4096, &Device::Cpu)?;
    let t0 = std::time::Instant::now();
    let on_device = kernels::gelu(&cpu.to_device(&device)?)?.to_device(&Device::Cpu)?;
    let first_kernel_seconds = t0.elapsed().as_secs_f64();
    let gelu_max_diff = (on_device - kernels::gelu_reference(&cpu)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    let a = (cpu.reshape((64, 64))? / 6.0)?;
    let b = a.t()?.contiguous()?;
    let want = a.matmul(&b)?;
    let got = a
        .to_device(&device)?
        .matmul(&b.to_device(&device)?)?
        .to_device(&Device::Cpu)?;
    let scale = want
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?
        .max(f32::MIN_POSITIVE);
    let matmul_max_rel_diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
    Ok(DeviceCheck {
        first_kernel_seconds,
        gelu_max_diff,
        matmul_max_rel_diff,
    })
}

/// How events and messages name `device`: `cpu`, or `cuda:N (name)` — the ordinal a user
/// passes to `--device`, not candle's internal device id.
pub fn describe(device: &candle_core::Device) -> String {
    match device {
        candle_core::Device::Cpu => "cpu".into(),
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            match ctx.name() {
                Ok(name) => format!("cuda:{} ({name})", ctx.ordinal()),
                Err(_) => format!("cuda:{}", ctx.ordinal()),
            }
        }
        other => format!("{other:?}"),
    }
}

impl fmt::Display for Survey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "build: cuda {}, nccl {}",
            yes(self.cuda_built),
            yes(self.nccl_built)
        )?;
        writeln!(
            f,
            "cpu: {} threads, AVX {}",
            self.cpu_threads,
            yes(self.cpu_avx)
        )?;
        match &self.cuda {
            Err(why) => write!(f, "cuda: {why}"),
            Ok(devices) => {
                for (i, d) in devices.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(
                        f,
                        "cuda:{}: {}, compute {}.{}, {:.1} GiB ({:.1} GiB free)",
                        d.ordinal,
                        d.name,
                        d.compute_capability.0,
                        d.compute_capability.1,
                        gib(d.total_bytes),
                        gib(d.free_bytes)
                    )?;
                    match &d.check {
                        None => {}
                        Some(Ok(c)) => write!(
                            f,
                            "; GELU kernel {:.2} s to first result (NVRTC compile included), |Δ| vs CPU {:.1e}; cuBLAS product relative |Δ| {:.1e}",
                            c.first_kernel_seconds, c.gelu_max_diff, c.matmul_max_rel_diff
                        )?,
                        Some(Err(e)) => write!(f, "; check FAILED: {e}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

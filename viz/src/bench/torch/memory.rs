//! Peak memory of our side of `bench torch`, measured over the warm-up steps.
//!
//! - **CPU:** the peak resident set of this process (`VmHWM` of `/proc/self/status`), after
//!   resetting it by writing `5` to `/proc/self/clear_refs` (Linux ≥ 4.0). The PyTorch script
//!   measures its own process the same way. Where the reset is refused there is no figure
//!   (the lifetime peak would include earlier comparisons).
//! - **CUDA:** candle has no allocator statistics, so the driver's view is sampled: a thread
//!   reads `total − free` of the device (`cuMemGetInfo` through candle's re-export of cudarc)
//!   every millisecond while the steps run, and the figure is its maximum minus the same
//!   reading taken before our trainer was built (the CUDA context and anything else on the
//!   device are then already counted, and the PyTorch process is not started yet). It thus
//!   counts everything our process allocated on the device — parameters, optimizer state,
//!   activations, cuBLAS workspaces, memory the driver's pool keeps — to within what one
//!   millisecond of sampling can miss. PyTorch reports `torch.cuda.max_memory_allocated`
//!   (tensors only) and `max_memory_reserved` (its caching allocator's footprint, the closer
//!   match to ours).

use anyhow::Result;
use candle_core::Device;

/// Resets the peak resident set of this process; false where Linux refuses or has no such file.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident set of this process (`VmHWM`), bytes; `None` without `/proc`.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Memory in use on `device` now according to the driver (`total − free`, bytes, every
/// process); `None` on the CPU.
pub fn device_used(device: &Device) -> Result<Option<u64>> {
    Ok(workbench::devices::memory(device)?.map(|m| m.used_bytes))
}

/// Samples [`device_used`] on a thread until stopped; the maximum is the peak.
pub struct DeviceSampler {
    #[cfg(feature = "cuda")]
    sampler: Option<Sampler>,
}

#[cfg(feature = "cuda")]
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

impl DeviceSampler {
    /// Starts sampling on CUDA; on the CPU nothing runs and [`DeviceSampler::stop`] gives `None`.
    pub fn start(device: &Device) -> Self {
        #[cfg(feature = "cuda")]
        {
            use std::sync::Arc;
            use std::sync::atomic::{AtomicBool, Ordering};
            let sampler = match device {
                Device::Cuda(d) => {
                    let ctx = d.cuda_stream().context().clone();
                    let stop = Arc::new(AtomicBool::new(false));
                    let flag = stop.clone();
                    let thread = std::thread::spawn(move || -> Result<u64> {
                        let mut peak = 0u64;
                        loop {
                            let (free, total) = ctx.mem_get_info()?;
                            peak = peak.max((total - free) as u64);
                            if flag.load(Ordering::Relaxed) {
                                return Ok(peak);
                            }
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    });
                    Some(Sampler { stop, thread })
                }
                _ => None,
            };
            Self { sampler }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            Self {}
        }
    }

    /// Stops sampling; the largest `total − free` seen, bytes (`None` on the CPU).
    pub fn stop(self) -> Result<Option<u64>> {
        #[cfg(feature = "cuda")]
        if let Some(s) = self.sampler {
            s.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let peak = s
                .thread
                .join()
                .map_err(|_| anyhow::anyhow!("the device-memory sampling thread panicked"))??;
            return Ok(Some(peak));
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_set_covers_a_fresh_allocation() {
        if !reset_peak_rss() {
            return; // no /proc/self/clear_refs here: nothing to check
        }
        let before = peak_rss().unwrap();
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let after = peak_rss().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        assert!(device_used(&Device::Cpu).unwrap().is_none());
        assert!(DeviceSampler::start(&Device::Cpu).stop().unwrap().is_none());
    }
}

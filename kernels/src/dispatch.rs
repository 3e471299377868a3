//! Which inputs a fused op computes itself, and which go to its reference.

use candle_core::{DType, Device, Tensor};

/// Whether the fused implementation handles these inputs: all f32, and all on the CPU or, in a
/// build with the `cuda` feature, on a CUDA device. Anything else runs the reference (same
/// function, composed of candle ops).
pub(crate) fn fused(inputs: &[&Tensor]) -> bool {
    inputs
        .iter()
        .all(|t| t.dtype() == DType::F32 && supported(t.device()))
}

/// Whether an op that also takes bf16 (GELU, bias, attention) handles these inputs itself: those [`fused`]
/// handles, and all-bf16 inputs on the same devices.
pub(crate) fn fused_f32_or_bf16(inputs: &[&Tensor]) -> bool {
    fused(inputs)
        || inputs
            .iter()
            .all(|t| t.dtype() == DType::BF16 && supported(t.device()))
}

fn supported(device: &Device) -> bool {
    match device {
        Device::Cpu => true,
        Device::Cuda(_) => cfg!(feature = "cuda"),
        Device::Metal(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{fused, fused_f32_or_bf16};
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn f32_on_the_cpu_is_fused_anything_else_is_not() {
        let f32s = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let f64s = Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap();
        assert!(fused(&[&f32s, &f32s]));
        assert!(!fused(&[&f32s, &f64s]));
        assert!(!fused(&[&f64s]));
        let bf16s = Tensor::zeros(3, DType::BF16, &Device::Cpu).unwrap();
        assert!(!fused(&[&bf16s]));
        assert!(fused_f32_or_bf16(&[&bf16s, &bf16s]) && fused_f32_or_bf16(&[&f32s]));
        assert!(!fused_f32_or_bf16(&[&bf16s, &f32s]));
    }
}

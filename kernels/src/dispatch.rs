//! Which inputs a fused op computes itself, and which go to its reference.

use candle_core::{DType, Device, Tensor};

/// Whether the fused implementation handles these inputs: all f32, and all on the CPU or, in a
/// build with the `cuda` feature, on a CUDA device. Anything else runs the reference (same
/// function, composed of candle ops).
pub(crate) fn fused(inputs: &[&Tensor]) -> bool {
    inputs.iter().all(|t| {
        t.dtype() == DType::F32
            && match t.device() {
                Device::Cpu => true,
                Device::Cuda(_) => cfg!(feature = "cuda"),
                Device::Metal(_) => false,
            }
    })
}

/// Whether the CPU loop of an op that also takes bf16 (GELU, bias) handles these inputs: those
/// [`fused`] handles, and all-bf16 inputs on the CPU. bf16 on a GPU runs the reference.
pub(crate) fn fused_or_cpu_bf16(inputs: &[&Tensor]) -> bool {
    fused(inputs)
        || inputs
            .iter()
            .all(|t| t.dtype() == DType::BF16 && matches!(t.device(), Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::{fused, fused_or_cpu_bf16};
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
        assert!(fused_or_cpu_bf16(&[&bf16s, &bf16s]) && fused_or_cpu_bf16(&[&f32s]));
        assert!(!fused_or_cpu_bf16(&[&bf16s, &f32s]));
    }
}

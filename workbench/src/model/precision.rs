//! Mixed precision in the style of `torch.autocast(dtype=torch.bfloat16)`.
//!
//! Parameters always stay f32 [`Var`](candle_core::Var)s: the optimizer, its moments, the
//! gradient norm and clipping, and checkpoints never see another dtype. With
//! [`Precision::Bf16`] the matrix products of the model — linear layers (the patch embedding is
//! one), the projection heads, the attention-pooling head, and attention's `q·kᵀ` and `P·v` on
//! the reference path — cast both operands to bf16. [`Precision::matmul`] widens the product
//! back to f32; [`Precision::matmul_in`] leaves it in bf16, for activations that only feed the
//! next product (the MLP's hidden layer and its GELU, the attention's `qkv`), which then take
//! half the memory in the autograd graph. The cast is an ordinary differentiable op, so the
//! gradient flows back through it into the f32 master weight (and the product's backward runs
//! in bf16, as under autocast).
//!
//! The fused attention reads the bf16 `qkv` and writes a bf16 output, computing in f32 inside.
//! Everything else runs in f32: LayerNorm, the residual stream, the L2 normalisation of
//! embeddings and every loss reduction.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use workbench::model::Precision;
//! let a = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
//! let p: Precision = "bf16".parse().unwrap();
//! let y = p.matmul(&a, &a.t().unwrap()).unwrap();
//! assert_eq!(y.dtype(), DType::F32); // products come back in f32
//! assert_eq!(y.to_vec2::<f32>().unwrap(), [[5.0, 11.0], [11.0, 25.0]]);
//! let h = p.matmul_in(&a, &a.t().unwrap()).unwrap();
//! assert_eq!(h.dtype(), DType::BF16); // or stay in bf16 for the next product
//! assert_eq!(h.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(), [[5.0, 11.0], [11.0, 25.0]]);
//! assert!("fp16".parse::<Precision>().is_err());
//! ```

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The dtype of the model's matrix products (`[train] precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Matrix products on bf16 operands, the rest in f32 (see the module doc).
    Bf16,
}

impl Precision {
    /// Every value, in the order the CLI and GUI offer them.
    pub const ALL: [Self; 2] = [Self::F32, Self::Bf16];

    /// The configuration name: `"f32"` or `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype the operands of a matrix product are cast to.
    pub fn compute_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// Casts `xs` to the compute dtype (a no-op, not even a node in the graph, for f32).
    pub fn cast(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.to_dtype(self.compute_dtype())
    }

    /// `a·b` with both operands in the compute dtype and the product in `a`'s dtype. For f32
    /// inputs and [`Precision::F32`] this is exactly `a.matmul(b)`.
    pub fn matmul(self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::F32 => a.matmul(b),
            Self::Bf16 => self.matmul_in(a, b)?.to_dtype(a.dtype()),
        }
    }

    /// `a·b` with both operands in the compute dtype and the product left in it (bf16 for
    /// [`Precision::Bf16`]; operands already in it are not copied).
    pub fn matmul_in(self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        self.cast(a)?.matmul(&self.cast(b)?)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?}: expected \"f32\" or \"bf16\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn f32_products_are_plain_matmuls() {
        let a = Tensor::randn(0f32, 1.0, (5, 7), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (7, 3), &Device::Cpu).unwrap();
        let plain = a.matmul(&b).unwrap().to_vec2::<f32>().unwrap();
        let ours = Precision::F32.matmul(&a, &b).unwrap();
        assert_eq!(ours.to_vec2::<f32>().unwrap(), plain);
    }

    #[test]
    fn bf16_products_round_operands_and_give_f32_gradients() {
        // Operands exactly representable in bf16: the product is exact.
        let a = Var::new(&[[1.5f32, -2.0], [0.25, 8.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[3.0f32], [0.5]], &Device::Cpu).unwrap();
        let y = Precision::Bf16.matmul(a.as_tensor(), &b).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.to_vec2::<f32>().unwrap(), [[3.5], [4.75]]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(a.as_tensor()).unwrap();
        assert_eq!(g.dtype(), DType::F32);
        assert_eq!(g.to_vec2::<f32>().unwrap(), [[3.0, 0.5], [3.0, 0.5]]);
        // 1 + 2⁻¹⁰ is not a bf16 number (8 bits of mantissa): it rounds to 1.
        let c = Tensor::new(&[[1.0f32 + 1.0 / 1024.0]], &Device::Cpu).unwrap();
        let one = Tensor::new(&[[1.0f32]], &Device::Cpu).unwrap();
        let r = Precision::Bf16.matmul(&c, &one).unwrap();
        assert_eq!(r.to_vec2::<f32>().unwrap(), [[1.0]]);
    }

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("BF16".parse::<Precision>().is_err());
    }
}

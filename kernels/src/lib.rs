//! # Contrastive Workbench — fused kernels
//!
//! # The contract
//!
//! Every fused op `foo` in this crate ships, in one file `foo.rs` whose top comment holds the
//! design notes:
//!
//! 1. `foo_reference(..)` — composed candle tensor ops, differentiable by autograd, readable: the
//!    semantic truth;
//! 2. `foo(..)` — a `candle_core::CustomOp` with a CPU implementation (plain loops, rayon over
//!    rows; products through [`cpu::gemm`]; loops that gain from wide vectors run inside
//!    [`cpu::vectorized`]) and, behind the `cuda` feature, a CUDA kernel compiled at run time with NVRTC through
//!    candle's re-exported `cudarc` (never a second cudarc). Until an op's CUDA kernel exists,
//!    `foo` runs `foo_reference` on non-CPU devices and non-f32 dtypes: same function, slower;
//! 3. a hand-written backward (`bwd`), so the op can be trained through;
//! 4. tests that `foo` equals `foo_reference` forward and backward on every available device
//!    (`tests/kernels.rs` of the integration tests), using [`check`].
//!
//! Callers pick the fused op or the reference with a configuration switch, so every number can
//! be traced back to the readable version.
//!
//! # Brief overview
//!
//! | op | fused | reference |
//! |---|---|---|
//! | GELU (tanh approximation) | [`gelu()`] | [`gelu_reference`] |
//! | LayerNorm | [`layer_norm()`] | [`layer_norm_reference`] |
//! | softmax over the last dim | [`softmax_last`] | [`softmax_last_reference`] |
//! | bias over leading dims | [`add_bias`] | [`add_bias_reference`] |
//! | linear layer `x·Wᵀ + b` (CPU only) | [`linear()`] (+ [`linear_bf16`]) | [`linear_reference`] (+ [`linear_bf16_reference`]) |
//! | multi-head self-attention on packed qkv | [`attention()`] (+ [`attention_weights`]) | [`attention_reference`] |
//! | symmetric InfoNCE (CLIP), memory O(B) | [`infonce()`] | [`infonce_reference`] |
//! | pairwise sigmoid (SigLIP), memory O(B) | [`sigmoid_pairwise()`] | [`sigmoid_pairwise_reference`] |
//!
//! With the `cuda` feature, `cuda` (compiled only then) holds the NVRTC kernels and their
//! launch code: every op above has one (attention for heads up to 128 wide; wider heads run the
//! reference on a GPU) but the linear layer, which runs there as candle's product followed by
//! the fused bias.
//!
//! [`check`] holds numerical comparison and finite-difference gradient checking, shared by the
//! kernel tests and the loss tests.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::float_cmp))]

pub mod alloc;
pub mod attention;
pub mod bias;
pub mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dispatch;
pub mod gelu;
pub mod infonce;
pub mod layer_norm;
pub mod linear;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod sigmoid_pairwise;
pub mod softmax;

pub use attention::{attention, attention_reference, attention_weights};
pub use bias::{add_bias, add_bias_reference};
pub use gelu::{gelu, gelu_reference};
pub use infonce::{infonce, infonce_reference};
pub use layer_norm::{layer_norm, layer_norm_reference};
pub use linear::{linear, linear_bf16, linear_bf16_reference, linear_reference};
pub use sigmoid_pairwise::{sigmoid_pairwise, sigmoid_pairwise_reference};
pub use softmax::{softmax_last, softmax_last_reference};

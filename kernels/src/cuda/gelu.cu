// GELU, tanh approximation: mirrors the CPU loops of `gelu.rs` element for element.
// y = x·σ(2u), u = √(2/π)(x + 0.044715x³); dy/dx = σ(2u) + x·σ(2u)(1 − σ(2u))·2u'.
// f32 kernels and `_bf16` ones (bf16 in and out, f32 inside, each result rounded once).

#define GELU_C 0.7978846f
#define GELU_A 0.044715f

__device__ __forceinline__ float sigmoid_2u(float x) {
    const float u = GELU_C * (x + GELU_A * x * x * x);
    return 1.0f / (1.0f + expf(-2.0f * u));
}

template <class T> __device__ void gelu_fwd_t(const T* __restrict__ x, T* __restrict__ y, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        const float v = load(x, i);
        store(y, i, v * sigmoid_2u(v));
    }
}

template <class T>
__device__ void gelu_bwd_t(const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx,
                           u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        const float v = load(x, i);
        const float s = sigmoid_2u(v);
        const float du = GELU_C * (1.0f + 3.0f * GELU_A * v * v);
        store(dx, i, load(g, i) * (s + v * s * (1.0f - s) * 2.0f * du));
    }
}

extern "C" __global__ void gelu_fwd(const float* x, float* y, u64 n) { gelu_fwd_t(x, y, n); }
extern "C" __global__ void gelu_fwd_bf16(const bf16* x, bf16* y, u64 n) { gelu_fwd_t(x, y, n); }

extern "C" __global__ void gelu_bwd(const float* x, const float* g, float* dx, u64 n) {
    gelu_bwd_t(x, g, dx, n);
}
extern "C" __global__ void gelu_bwd_bf16(const bf16* x, const bf16* g, bf16* dx, u64 n) {
    gelu_bwd_t(x, g, dx, n);
}

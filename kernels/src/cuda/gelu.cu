// GELU, tanh approximation: mirrors the CPU loops of `gelu.rs` element for element.
// y = x·σ(2u), u = √(2/π)(x + 0.044715x³); dy/dx = σ(2u) + x·σ(2u)(1 − σ(2u))·2u'.

#define GELU_C 0.7978846f
#define GELU_A 0.044715f

__device__ __forceinline__ float sigmoid_2u(float x) {
    const float u = GELU_C * (x + GELU_A * x * x * x);
    return 1.0f / (1.0f + expf(-2.0f * u));
}

extern "C" __global__ void gelu_fwd(const float* __restrict__ x, float* __restrict__ y, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        const float v = x[i];
        y[i] = v * sigmoid_2u(v);
    }
}

extern "C" __global__ void gelu_bwd(const float* __restrict__ x, const float* __restrict__ g,
                                    float* __restrict__ dx, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        const float v = x[i];
        const float s = sigmoid_2u(v);
        const float du = GELU_C * (1.0f + 3.0f * GELU_A * v * v);
        dx[i] = g[i] * (s + v * s * (1.0f - s) * 2.0f * du);
    }
}

// bf16 in and out, f32 inside: the f32 kernels' arithmetic, each result rounded once.
extern "C" __global__ void gelu_fwd_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        const float v = bf16_to_f32(x[i]);
        y[i] = f32_to_bf16(v * sigmoid_2u(v));
    }
}

extern "C" __global__ void gelu_bwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ g,
                                         bf16* __restrict__ dx, u64 n) {
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        const float v = bf16_to_f32(x[i]);
        const float s = sigmoid_2u(v);
        const float du = GELU_C * (1.0f + 3.0f * GELU_A * v * v);
        dx[i] = f32_to_bf16(bf16_to_f32(g[i]) * (s + v * s * (1.0f - s) * 2.0f * du));
    }
}

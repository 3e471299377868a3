// Softmax over the last dimension: mirrors `softmax.rs`. One block per row of n values
// (grid-stride over rows); y = exp(x − max)/Σ exp(x − max); dx = y ⊙ (g − Σ g⊙y).

extern "C" __global__ void softmax_fwd(const float* __restrict__ x, float* __restrict__ y,
                                       u64 rows, u64 n) {
    __shared__ float scratch[32];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * n;
        float* yr = y + row * n;
        float m = NEG_INF;
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, xr[j]);
        m = block_max(m, scratch);
        float s = 0.0f;
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) {
            const float e = expf(xr[j] - m);
            yr[j] = e;
            s += e;
        }
        s = block_sum(s, scratch);
        const float inv = 1.0f / s;
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] *= inv;
    }
}

extern "C" __global__ void softmax_bwd(const float* __restrict__ y, const float* __restrict__ g,
                                       float* __restrict__ dx, u64 rows, u64 n) {
    __shared__ float scratch[32];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* yr = y + row * n;
        const float* gr = g + row * n;
        float dot = 0.0f;
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) dot += yr[j] * gr[j];
        dot = block_sum(dot, scratch);
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) dx[row * n + j] = yr[j] * (gr[j] - dot);
    }
}

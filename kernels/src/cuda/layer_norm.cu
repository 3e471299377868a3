// LayerNorm over the last dimension: mirrors `layer_norm.rs`. One block per row of d values
// (grid-stride over rows). x̂ = (x − μ)·r, r = 1/√(σ² + ε) (biased variance), y = x̂·w + b.
// Backward with ĝ = g·w: dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)); dw = Σ_rows g·x̂, db = Σ_rows g,
// reduced like the bias gradient: fixed chunks of rows, then the chunks in order.

// Mean and reciprocal standard deviation of a row, every thread of the block gets both.
__device__ float2 row_stats(const float* xr, u64 d, float eps, float* scratch) {
    float s = 0.0f;
    for (u64 j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const float mean = block_sum(s, scratch) / (float)d;
    float v = 0.0f;
    for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
        const float c = xr[j] - mean;
        v += c * c;
    }
    const float var = block_sum(v, scratch) / (float)d;
    return make_float2(mean, 1.0f / sqrtf(var + eps));
}

extern "C" __global__ void layer_norm_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ b, float* __restrict__ y,
                                          u64 rows, u64 d, float eps) {
    __shared__ float scratch[32];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * d;
        const float2 st = row_stats(xr, d, eps, scratch);
        for (u64 j = threadIdx.x; j < d; j += blockDim.x)
            y[row * d + j] = (xr[j] - st.x) * st.y * w[j] + b[j];
    }
}

extern "C" __global__ void layer_norm_dx(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ g, float* __restrict__ dx,
                                         u64 rows, u64 d, float eps) {
    __shared__ float scratch[32];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * d;
        const float* gr = g + row * d;
        const float2 st = row_stats(xr, d, eps, scratch);
        float m1 = 0.0f, m2 = 0.0f;
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            const float gh = gr[j] * w[j];
            m1 += gh;
            m2 += gh * (xr[j] - st.x) * st.y;
        }
        m1 = block_sum(m1, scratch) / (float)d;
        m2 = block_sum(m2, scratch) / (float)d;
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            const float xh = (xr[j] - st.x) * st.y;
            dx[row * d + j] = st.y * (gr[j] * w[j] - m1 - xh * m2);
        }
    }
}

// stats[2·row] = μ, stats[2·row + 1] = r.
extern "C" __global__ void layer_norm_stats(const float* __restrict__ x, float* __restrict__ stats,
                                            u64 rows, u64 d, float eps) {
    __shared__ float scratch[32];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const float2 st = row_stats(x + row * d, d, eps, scratch);
        if (threadIdx.x == 0) {
            stats[2 * row] = st.x;
            stats[2 * row + 1] = st.y;
        }
    }
}

// Grid: (ceil(d / blockDim.x), chunks). partial[c·2d + j] = Σ g·x̂, partial[c·2d + d + j] = Σ g
// over the rows of chunk c.
extern "C" __global__ void layer_norm_dwdb_partial(const float* __restrict__ x,
                                                   const float* __restrict__ g,
                                                   const float* __restrict__ stats,
                                                   float* __restrict__ partial, u64 rows, u64 d,
                                                   u64 chunk_rows) {
    const u64 j = global_index();
    const u64 c = blockIdx.y;
    if (j >= d) return;
    const u64 r0 = c * chunk_rows;
    const u64 r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    float dw = 0.0f, db = 0.0f;
    for (u64 r = r0; r < r1; ++r) {
        const float gv = g[r * d + j];
        dw += gv * (x[r * d + j] - stats[2 * r]) * stats[2 * r + 1];
        db += gv;
    }
    partial[c * 2 * d + j] = dw;
    partial[c * 2 * d + d + j] = db;
}

// out[j] = Σ_c partial[c·width + j], chunks in order.
extern "C" __global__ void layer_norm_sum_partials(const float* __restrict__ partial,
                                                   float* __restrict__ out, u64 chunks, u64 width) {
    for (u64 j = global_index(); j < width; j += grid_stride()) {
        float acc = 0.0f;
        for (u64 c = 0; c < chunks; ++c) acc += partial[c * width + j];
        out[j] = acc;
    }
}

// Bias over leading dimensions: mirrors `bias.rs`. Forward y = x + b (b repeats every k
// elements); backward db = Σ_rows g over the (rows, k) view, in two steps so the sum is
// reproducible: fixed chunks of rows into partial sums (one thread per column and chunk,
// coalesced reads), then the partials summed in chunk order.

extern "C" __global__ void add_bias_fwd(const float* __restrict__ x, const float* __restrict__ b,
                                        float* __restrict__ y, u64 n, u64 k) {
    for (u64 i = global_index(); i < n; i += grid_stride()) y[i] = x[i] + b[i % k];
}

// Grid: (ceil(k / blockDim.x), chunks). partial[c·k + j] = Σ_{rows of chunk c} g[row·k + j].
extern "C" __global__ void sum_rows_partial(const float* __restrict__ g,
                                            float* __restrict__ partial, u64 rows, u64 k,
                                            u64 chunk_rows) {
    const u64 j = global_index();
    const u64 c = blockIdx.y;
    if (j >= k) return;
    const u64 r0 = c * chunk_rows;
    const u64 r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    float acc = 0.0f;
    for (u64 r = r0; r < r1; ++r) acc += g[r * k + j];
    partial[c * k + j] = acc;
}

// out[j] = Σ_c partial[c·width + j], chunks in order.
extern "C" __global__ void sum_partials(const float* __restrict__ partial, float* __restrict__ out,
                                        u64 chunks, u64 width) {
    for (u64 j = global_index(); j < width; j += grid_stride()) {
        float acc = 0.0f;
        for (u64 c = 0; c < chunks; ++c) acc += partial[c * width + j];
        out[j] = acc;
    }
}

// bf16 in and out, f32 inside: the sum of a column is accumulated in f32 (partials stay f32)
// and rounded once.
extern "C" __global__ void add_bias_fwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ b,
                                             bf16* __restrict__ y, u64 n, u64 k) {
    for (u64 i = global_index(); i < n; i += grid_stride())
        y[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(b[i % k]));
}

extern "C" __global__ void sum_rows_partial_bf16(const bf16* __restrict__ g,
                                                 float* __restrict__ partial, u64 rows, u64 k,
                                                 u64 chunk_rows) {
    const u64 j = global_index();
    const u64 c = blockIdx.y;
    if (j >= k) return;
    const u64 r0 = c * chunk_rows;
    const u64 r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    float acc = 0.0f;
    for (u64 r = r0; r < r1; ++r) acc += bf16_to_f32(g[r * k + j]);
    partial[c * k + j] = acc;
}

extern "C" __global__ void sum_partials_bf16(const float* __restrict__ partial,
                                             bf16* __restrict__ out, u64 chunks, u64 width) {
    for (u64 j = global_index(); j < width; j += grid_stride()) {
        float acc = 0.0f;
        for (u64 c = 0; c < chunks; ++c) acc += partial[c * width + j];
        out[j] = f32_to_bf16(acc);
    }
}

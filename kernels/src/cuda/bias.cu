// Bias over leading dimensions: mirrors `bias.rs`. Forward y = x + b (b repeats every k
// elements); backward db = Σ_rows g over the (rows, k) view, in two steps so the sum is
// reproducible: fixed chunks of rows into partial sums (one thread per column and chunk,
// coalesced reads), then the partials summed in chunk order. f32 kernels and `_bf16` ones
// (bf16 in and out, f32 inside: the partial sums stay f32, each result is rounded once).

template <class T>
__device__ void add_bias_fwd_t(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y,
                               u64 n, u64 k) {
    for (u64 i = global_index(); i < n; i += grid_stride()) store(y, i, load(x, i) + load(b, i % k));
}

// Grid: (ceil(k / blockDim.x), chunks). partial[c·k + j] = Σ_{rows of chunk c} g[row·k + j].
template <class T>
__device__ void sum_rows_partial_t(const T* __restrict__ g, float* __restrict__ partial, u64 rows,
                                   u64 k, u64 chunk_rows) {
    const u64 j = global_index();
    const u64 c = blockIdx.y;
    if (j >= k) return;
    const u64 r0 = c * chunk_rows;
    const u64 r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
    float acc = 0.0f;
    for (u64 r = r0; r < r1; ++r) acc += load(g, r * k + j);
    partial[c * k + j] = acc;
}

// out[j] = Σ_c partial[c·width + j], chunks in order.
template <class T>
__device__ void sum_partials_t(const float* __restrict__ partial, T* __restrict__ out, u64 chunks,
                               u64 width) {
    for (u64 j = global_index(); j < width; j += grid_stride()) {
        float acc = 0.0f;
        for (u64 c = 0; c < chunks; ++c) acc += partial[c * width + j];
        store(out, j, acc);
    }
}

extern "C" __global__ void add_bias_fwd(const float* x, const float* b, float* y, u64 n, u64 k) {
    add_bias_fwd_t(x, b, y, n, k);
}
extern "C" __global__ void add_bias_fwd_bf16(const bf16* x, const bf16* b, bf16* y, u64 n, u64 k) {
    add_bias_fwd_t(x, b, y, n, k);
}

extern "C" __global__ void sum_rows_partial(const float* g, float* partial, u64 rows, u64 k,
                                            u64 chunk_rows) {
    sum_rows_partial_t(g, partial, rows, k, chunk_rows);
}
extern "C" __global__ void sum_rows_partial_bf16(const bf16* g, float* partial, u64 rows, u64 k,
                                                 u64 chunk_rows) {
    sum_rows_partial_t(g, partial, rows, k, chunk_rows);
}

extern "C" __global__ void sum_partials(const float* partial, float* out, u64 chunks, u64 width) {
    sum_partials_t(partial, out, chunks, width);
}
extern "C" __global__ void sum_partials_bf16(const float* partial, bf16* out, u64 chunks,
                                             u64 width) {
    sum_partials_t(partial, out, chunks, width);
}

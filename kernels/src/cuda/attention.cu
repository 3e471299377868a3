// Fused multi-head attention on packed qkv (B, L, 3D): mirrors `attention.rs`.
//
// One thread per (batch row b, head h, query or key row): threads are numbered with the row
// fastest, so the threads of a warp read the same keys and values (cache hits). Head width
// dh ≤ MAX_DH (the host checks; wider heads run the reference). Nothing of size B·H·L·L is stored:
// - attention_fwd: scores q_i·k_j/√dh over the keys query i sees, online softmax (running max,
//   rescaled sum and accumulator), out_i = Σ_j p_ij v_j.
// - attention_probs: the weights p (B, H, L, L) for inspection (zeros above the causal diagonal).
// - attention_bwd_q: per query, lse_i = log Σ_j exp(s_ij), δ_i = Σ_j p_ij (dO_i·v_j) and
//   dq_i = Σ_j p_ij (dO_i·v_j − δ_i) k_j /√dh; lse and δ go to `stats` for the next kernel.
// - attention_bwd_kv: per key, dv_j = Σ_i p_ij dO_i and dk_j = Σ_i p_ij (dO_i·v_j − δ_i) q_i /√dh,
//   with p_ij = exp(s_ij − lse_i) recomputed.
// Every thread writes only its own row of the output, so results do not depend on scheduling.
// Each kernel is a template over the element type of qkv, the output and their gradients: f32,
// and bf16 (`_bf16` entry points: read through `load`, computed in f32, each result rounded
// once by `store`); the weights and the statistics are f32 either way.

#define MAX_DH 128

// Σ_k a_k·b_k over one head's row (f32 or bf16 elements, f32 sum).
template <class A, class B> __device__ __forceinline__ float row_dot(const A* a, const B* b, u64 n) {
    float s = 0.0f;
    for (u64 k = 0; k < n; ++k) s += load(a, k) * load(b, k);
    return s;
}

// The packed input and its geometry: batch rows of L rows of [q | k | v], each D = heads·dh wide.
template <class T> struct Heads {
    const T* qkv;
    u64 l, d, heads, dh;
    int causal;
    float scale;  // 1/√dh

    // Row r of part `part` (0 = q, 1 = k, 2 = v) of head h in batch row b.
    __device__ const T* row(u64 b, u64 r, u64 part, u64 h) const {
        return qkv + (b * l + r) * 3 * d + part * d + h * dh;
    }
    // Work item t = (b·H + h)·L + r: row r of head h of batch row b.
    __device__ void item(u64 t, u64& b, u64& h, u64& r) const {
        r = t % l;
        h = (t / l) % heads;
        b = t / (l * heads);
    }
    // Number of keys query i sees.
    __device__ u64 keys(u64 i) const { return causal ? i + 1 : l; }
    // The score q_i·k_j/√dh of head h in batch row b.
    __device__ float score(u64 b, u64 h, u64 i, u64 j) const {
        return row_dot(row(b, i, 0, h), row(b, j, 1, h), dh) * scale;
    }
    // log Σ_j exp(score) over the keys query i sees (running max, rescaled sum).
    __device__ float lse(u64 b, u64 h, u64 i) const {
        float m = NEG_INF, s = 0.0f;
        for (u64 j = 0; j < keys(i); ++j) {
            const float sc = score(b, h, i, j);
            if (sc > m) {
                s *= expf(m - sc);
                m = sc;
            }
            s += expf(sc - m);
        }
        return m + logf(s);
    }
};

template <class T>
__device__ Heads<T> heads_of(const T* qkv, u64 l, u64 d, u64 heads, int causal) {
    const u64 dh = d / heads;
    return Heads<T>{qkv, l, d, heads, dh, causal, 1.0f / sqrtf((float)dh)};
}

template <class T>
__device__ void attention_fwd_t(const T* __restrict__ qkv, T* __restrict__ out, u64 batch, u64 l,
                                u64 d, u64 heads, int causal) {
    const Heads<T> hs = heads_of(qkv, l, d, heads, causal);
    for (u64 t = global_index(); t < batch * heads * l; t += grid_stride()) {
        u64 b, h, i;
        hs.item(t, b, h, i);
        float acc[MAX_DH];
        for (u64 k = 0; k < hs.dh; ++k) acc[k] = 0.0f;
        float m = NEG_INF, s = 0.0f;
        for (u64 j = 0; j < hs.keys(i); ++j) {
            const float sc = hs.score(b, h, i, j);
            if (sc > m) {
                const float c = expf(m - sc);
                s *= c;
                for (u64 k = 0; k < hs.dh; ++k) acc[k] *= c;
                m = sc;
            }
            const float e = expf(sc - m);
            s += e;
            const T* v = hs.row(b, j, 2, h);
            for (u64 k = 0; k < hs.dh; ++k) acc[k] += e * load(v, k);
        }
        const float inv = 1.0f / s;
        T* o = out + (b * l + i) * d + h * hs.dh;
        for (u64 k = 0; k < hs.dh; ++k) store(o, k, acc[k] * inv);
    }
}

template <class T>
__device__ void attention_probs_t(const T* __restrict__ qkv, float* __restrict__ p, u64 batch,
                                  u64 l, u64 d, u64 heads, int causal) {
    const Heads<T> hs = heads_of(qkv, l, d, heads, causal);
    for (u64 t = global_index(); t < batch * heads * l; t += grid_stride()) {
        u64 b, h, i;
        hs.item(t, b, h, i);
        const float lse = hs.lse(b, h, i);
        float* row = p + ((b * heads + h) * l + i) * l;
        for (u64 j = 0; j < l; ++j) row[j] = j < hs.keys(i) ? expf(hs.score(b, h, i, j) - lse) : 0.0f;
    }
}

template <class T>
__device__ void attention_bwd_q_t(const T* __restrict__ qkv, const T* __restrict__ go,
                                  T* __restrict__ dqkv, float* __restrict__ stats, u64 batch,
                                  u64 l, u64 d, u64 heads, int causal) {
    const Heads<T> hs = heads_of(qkv, l, d, heads, causal);
    for (u64 t = global_index(); t < batch * heads * l; t += grid_stride()) {
        u64 b, h, i;
        hs.item(t, b, h, i);
        const float lse = hs.lse(b, h, i);
        const T* g = go + (b * l + i) * d + h * hs.dh;
        float delta = 0.0f;
        for (u64 j = 0; j < hs.keys(i); ++j)
            delta += expf(hs.score(b, h, i, j) - lse) * row_dot(g, hs.row(b, j, 2, h), hs.dh);
        float acc[MAX_DH];
        for (u64 k = 0; k < hs.dh; ++k) acc[k] = 0.0f;
        for (u64 j = 0; j < hs.keys(i); ++j) {
            const float pij = expf(hs.score(b, h, i, j) - lse);
            const float ds = pij * (row_dot(g, hs.row(b, j, 2, h), hs.dh) - delta);
            const T* kj = hs.row(b, j, 1, h);
            for (u64 k = 0; k < hs.dh; ++k) acc[k] += ds * load(kj, k);
        }
        T* dq = dqkv + (b * l + i) * 3 * d + h * hs.dh;
        for (u64 k = 0; k < hs.dh; ++k) store(dq, k, acc[k] * hs.scale);
        const u64 at = (b * heads + h) * l + i;
        stats[2 * at] = lse;
        stats[2 * at + 1] = delta;
    }
}

template <class T>
__device__ void attention_bwd_kv_t(const T* __restrict__ qkv, const T* __restrict__ go,
                                   const float* __restrict__ stats, T* __restrict__ dqkv,
                                   u64 batch, u64 l, u64 d, u64 heads, int causal) {
    const Heads<T> hs = heads_of(qkv, l, d, heads, causal);
    for (u64 t = global_index(); t < batch * heads * l; t += grid_stride()) {
        u64 b, h, j;
        hs.item(t, b, h, j);
        const T* vj = hs.row(b, j, 2, h);
        float dk[MAX_DH], dv[MAX_DH];
        for (u64 k = 0; k < hs.dh; ++k) {
            dk[k] = 0.0f;
            dv[k] = 0.0f;
        }
        // Queries that see key j: all of them, or (causal) those at or after it.
        for (u64 i = causal ? j : 0; i < l; ++i) {
            const u64 at = (b * heads + h) * l + i;
            const T* qi = hs.row(b, i, 0, h);
            const T* g = go + (b * l + i) * d + h * hs.dh;
            const float pij = expf(hs.score(b, h, i, j) - stats[2 * at]);
            const float ds = pij * (row_dot(g, vj, hs.dh) - stats[2 * at + 1]) * hs.scale;
            for (u64 k = 0; k < hs.dh; ++k) {
                dv[k] += pij * load(g, k);
                dk[k] += ds * load(qi, k);
            }
        }
        T* row = dqkv + (b * l + j) * 3 * d + h * hs.dh;
        for (u64 k = 0; k < hs.dh; ++k) {
            store(row, d + k, dk[k]);
            store(row, 2 * d + k, dv[k]);
        }
    }
}

#define ATTENTION_ENTRIES(T, SUFFIX)                                                              \
    extern "C" __global__ void attention_fwd##SUFFIX(const T* qkv, T* out, u64 batch, u64 l,     \
                                                     u64 d, u64 heads, int causal) {            \
        attention_fwd_t(qkv, out, batch, l, d, heads, causal);                                   \
    }                                                                                             \
    extern "C" __global__ void attention_probs##SUFFIX(const T* qkv, float* p, u64 batch, u64 l, \
                                                       u64 d, u64 heads, int causal) {          \
        attention_probs_t(qkv, p, batch, l, d, heads, causal);                                   \
    }                                                                                             \
    extern "C" __global__ void attention_bwd_q##SUFFIX(const T* qkv, const T* go, T* dqkv,       \
                                                       float* stats, u64 batch, u64 l, u64 d,   \
                                                       u64 heads, int causal) {                 \
        attention_bwd_q_t(qkv, go, dqkv, stats, batch, l, d, heads, causal);                     \
    }                                                                                             \
    extern "C" __global__ void attention_bwd_kv##SUFFIX(const T* qkv, const T* go,               \
                                                        const float* stats, T* dqkv, u64 batch, \
                                                        u64 l, u64 d, u64 heads, int causal) {  \
        attention_bwd_kv_t(qkv, go, stats, dqkv, batch, l, d, heads, causal);                    \
    }

ATTENTION_ENTRIES(float, )
ATTENTION_ENTRIES(bf16, _bf16)

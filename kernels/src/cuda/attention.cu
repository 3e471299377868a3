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

#define MAX_DH 128

// The packed input and its geometry: batch rows of L rows of [q | k | v], each D = heads·dh wide.
struct Heads {
    const float* qkv;
    u64 l, d, heads, dh;
    int causal;
    float scale;  // 1/√dh

    // Row r of part `part` (0 = q, 1 = k, 2 = v) of head h in batch row b.
    __device__ const float* row(u64 b, u64 r, u64 part, u64 h) const {
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
        const float* q = row(b, i, 0, h);
        const float* k = row(b, j, 1, h);
        float s = 0.0f;
        for (u64 c = 0; c < dh; ++c) s += q[c] * k[c];
        return s * scale;
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

__device__ Heads heads_of(const float* qkv, u64 l, u64 d, u64 heads, int causal) {
    const u64 dh = d / heads;
    return Heads{qkv, l, d, heads, dh, causal, 1.0f / sqrtf((float)dh)};
}

__device__ __forceinline__ float row_dot(const float* a, const float* b, u64 n) {
    float s = 0.0f;
    for (u64 k = 0; k < n; ++k) s += a[k] * b[k];
    return s;
}

extern "C" __global__ void attention_fwd(const float* __restrict__ qkv, float* __restrict__ out,
                                         u64 batch, u64 l, u64 d, u64 heads, int causal) {
    const Heads hs = heads_of(qkv, l, d, heads, causal);
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
            const float* v = hs.row(b, j, 2, h);
            for (u64 k = 0; k < hs.dh; ++k) acc[k] += e * v[k];
        }
        const float inv = 1.0f / s;
        float* o = out + (b * l + i) * d + h * hs.dh;
        for (u64 k = 0; k < hs.dh; ++k) o[k] = acc[k] * inv;
    }
}

extern "C" __global__ void attention_probs(const float* __restrict__ qkv, float* __restrict__ p,
                                           u64 batch, u64 l, u64 d, u64 heads, int causal) {
    const Heads hs = heads_of(qkv, l, d, heads, causal);
    for (u64 t = global_index(); t < batch * heads * l; t += grid_stride()) {
        u64 b, h, i;
        hs.item(t, b, h, i);
        const float lse = hs.lse(b, h, i);
        float* row = p + ((b * heads + h) * l + i) * l;
        for (u64 j = 0; j < l; ++j) row[j] = j < hs.keys(i) ? expf(hs.score(b, h, i, j) - lse) : 0.0f;
    }
}

extern "C" __global__ void attention_bwd_q(const float* __restrict__ qkv,
                                           const float* __restrict__ go,
                                           float* __restrict__ dqkv, float* __restrict__ stats,
                                           u64 batch, u64 l, u64 d, u64 heads, int causal) {
    const Heads hs = heads_of(qkv, l, d, heads, causal);
    for (u64 t = global_index(); t < batch * heads * l; t += grid_stride()) {
        u64 b, h, i;
        hs.item(t, b, h, i);
        const float lse = hs.lse(b, h, i);
        const float* g = go + (b * l + i) * d + h * hs.dh;
        float delta = 0.0f;
        for (u64 j = 0; j < hs.keys(i); ++j)
            delta += expf(hs.score(b, h, i, j) - lse) * row_dot(g, hs.row(b, j, 2, h), hs.dh);
        float acc[MAX_DH];
        for (u64 k = 0; k < hs.dh; ++k) acc[k] = 0.0f;
        for (u64 j = 0; j < hs.keys(i); ++j) {
            const float pij = expf(hs.score(b, h, i, j) - lse);
            const float ds = pij * (row_dot(g, hs.row(b, j, 2, h), hs.dh) - delta);
            const float* kj = hs.row(b, j, 1, h);
            for (u64 k = 0; k < hs.dh; ++k) acc[k] += ds * kj[k];
        }
        float* dq = dqkv + (b * l + i) * 3 * d + h * hs.dh;
        for (u64 k = 0; k < hs.dh; ++k) dq[k] = acc[k] * hs.scale;
        const u64 at = (b * heads + h) * l + i;
        stats[2 * at] = lse;
        stats[2 * at + 1] = delta;
    }
}

extern "C" __global__ void attention_bwd_kv(const float* __restrict__ qkv,
                                            const float* __restrict__ go,
                                            const float* __restrict__ stats,
                                            float* __restrict__ dqkv, u64 batch, u64 l, u64 d,
                                            u64 heads, int causal) {
    const Heads hs = heads_of(qkv, l, d, heads, causal);
    for (u64 t = global_index(); t < batch * heads * l; t += grid_stride()) {
        u64 b, h, j;
        hs.item(t, b, h, j);
        const float* vj = hs.row(b, j, 2, h);
        float dk[MAX_DH], dv[MAX_DH];
        for (u64 k = 0; k < hs.dh; ++k) {
            dk[k] = 0.0f;
            dv[k] = 0.0f;
        }
        // Queries that see key j: all of them, or (causal) those at or after it.
        for (u64 i = causal ? j : 0; i < l; ++i) {
            const u64 at = (b * heads + h) * l + i;
            const float* qi = hs.row(b, i, 0, h);
            const float* g = go + (b * l + i) * d + h * hs.dh;
            const float pij = expf(hs.score(b, h, i, j) - stats[2 * at]);
            const float ds = pij * (row_dot(g, vj, hs.dh) - stats[2 * at + 1]) * hs.scale;
            for (u64 k = 0; k < hs.dh; ++k) {
                dv[k] += pij * g[k];
                dk[k] += ds * qi[k];
            }
        }
        float* row = dqkv + (b * l + j) * 3 * d + h * hs.dh;
        for (u64 k = 0; k < hs.dh; ++k) {
            row[d + k] = dk[k];
            row[2 * d + k] = dv[k];
        }
    }
}

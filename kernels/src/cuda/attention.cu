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

// Number of keys query i sees.
__device__ __forceinline__ u64 seen_keys(u64 i, u64 l, int causal) { return causal ? i + 1 : l; }

__device__ __forceinline__ float row_dot(const float* a, const float* b, u64 n) {
    float s = 0.0f;
    for (u64 k = 0; k < n; ++k) s += a[k] * b[k];
    return s;
}

// Row r of part `part` (0 = q, 1 = k, 2 = v) of head h in batch row b.
__device__ __forceinline__ const float* part_row(const float* qkv, u64 b, u64 r, u64 part, u64 h,
                                                 u64 l, u64 d, u64 dh) {
    return qkv + (b * l + r) * 3 * d + part * d + h * dh;
}

// Running max m and sum s of exp(score − m) over the keys query i sees; returns log-sum-exp.
__device__ float query_lse(const float* qkv, u64 b, u64 h, u64 i, u64 l, u64 d, u64 dh,
                           int causal, float scale) {
    const float* q = part_row(qkv, b, i, 0, h, l, d, dh);
    float m = NEG_INF, s = 0.0f;
    for (u64 j = 0; j < seen_keys(i, l, causal); ++j) {
        const float sc = row_dot(q, part_row(qkv, b, j, 1, h, l, d, dh), dh) * scale;
        if (sc > m) {
            s *= expf(m - sc);
            m = sc;
        }
        s += expf(sc - m);
    }
    return m + logf(s);
}

extern "C" __global__ void attention_fwd(const float* __restrict__ qkv, float* __restrict__ out,
                                         u64 batch, u64 l, u64 d, u64 heads, int causal) {
    const u64 dh = d / heads;
    const float scale = 1.0f / sqrtf((float)dh);
    const u64 total = batch * heads * l;
    for (u64 t = global_index(); t < total; t += grid_stride()) {
        const u64 i = t % l, h = (t / l) % heads, b = t / (l * heads);
        const float* q = part_row(qkv, b, i, 0, h, l, d, dh);
        float acc[MAX_DH];
        for (u64 k = 0; k < dh; ++k) acc[k] = 0.0f;
        float m = NEG_INF, s = 0.0f;
        for (u64 j = 0; j < seen_keys(i, l, causal); ++j) {
            const float sc = row_dot(q, part_row(qkv, b, j, 1, h, l, d, dh), dh) * scale;
            if (sc > m) {
                const float c = expf(m - sc);
                s *= c;
                for (u64 k = 0; k < dh; ++k) acc[k] *= c;
                m = sc;
            }
            const float e = expf(sc - m);
            s += e;
            const float* v = part_row(qkv, b, j, 2, h, l, d, dh);
            for (u64 k = 0; k < dh; ++k) acc[k] += e * v[k];
        }
        const float inv = 1.0f / s;
        float* o = out + (b * l + i) * d + h * dh;
        for (u64 k = 0; k < dh; ++k) o[k] = acc[k] * inv;
    }
}

extern "C" __global__ void attention_probs(const float* __restrict__ qkv, float* __restrict__ p,
                                           u64 batch, u64 l, u64 d, u64 heads, int causal) {
    const u64 dh = d / heads;
    const float scale = 1.0f / sqrtf((float)dh);
    const u64 total = batch * heads * l;
    for (u64 t = global_index(); t < total; t += grid_stride()) {
        const u64 i = t % l, h = (t / l) % heads, b = t / (l * heads);
        const float lse = query_lse(qkv, b, h, i, l, d, dh, causal, scale);
        const float* q = part_row(qkv, b, i, 0, h, l, d, dh);
        float* row = p + t * l;  // t = (b·H + h)·L + i: row i of head h of batch row b
        const u64 n = seen_keys(i, l, causal);
        for (u64 j = 0; j < l; ++j) {
            row[j] = j < n
                ? expf(row_dot(q, part_row(qkv, b, j, 1, h, l, d, dh), dh) * scale - lse)
                : 0.0f;
        }
    }
}

extern "C" __global__ void attention_bwd_q(const float* __restrict__ qkv,
                                           const float* __restrict__ go,
                                           float* __restrict__ dqkv, float* __restrict__ stats,
                                           u64 batch, u64 l, u64 d, u64 heads, int causal) {
    const u64 dh = d / heads;
    const float scale = 1.0f / sqrtf((float)dh);
    const u64 total = batch * heads * l;
    for (u64 t = global_index(); t < total; t += grid_stride()) {
        const u64 i = t % l, h = (t / l) % heads, b = t / (l * heads);
        const float lse = query_lse(qkv, b, h, i, l, d, dh, causal, scale);
        const float* q = part_row(qkv, b, i, 0, h, l, d, dh);
        const float* g = go + (b * l + i) * d + h * dh;
        const u64 n = seen_keys(i, l, causal);
        float delta = 0.0f;
        for (u64 j = 0; j < n; ++j) {
            const float pij =
                expf(row_dot(q, part_row(qkv, b, j, 1, h, l, d, dh), dh) * scale - lse);
            delta += pij * row_dot(g, part_row(qkv, b, j, 2, h, l, d, dh), dh);
        }
        float acc[MAX_DH];
        for (u64 k = 0; k < dh; ++k) acc[k] = 0.0f;
        for (u64 j = 0; j < n; ++j) {
            const float* kj = part_row(qkv, b, j, 1, h, l, d, dh);
            const float pij = expf(row_dot(q, kj, dh) * scale - lse);
            const float ds = pij * (row_dot(g, part_row(qkv, b, j, 2, h, l, d, dh), dh) - delta);
            for (u64 k = 0; k < dh; ++k) acc[k] += ds * kj[k];
        }
        float* dq = dqkv + (b * l + i) * 3 * d + h * dh;
        for (u64 k = 0; k < dh; ++k) dq[k] = acc[k] * scale;
        stats[2 * t] = lse;
        stats[2 * t + 1] = delta;
    }
}

extern "C" __global__ void attention_bwd_kv(const float* __restrict__ qkv,
                                            const float* __restrict__ go,
                                            const float* __restrict__ stats,
                                            float* __restrict__ dqkv, u64 batch, u64 l, u64 d,
                                            u64 heads, int causal) {
    const u64 dh = d / heads;
    const float scale = 1.0f / sqrtf((float)dh);
    const u64 total = batch * heads * l;
    for (u64 t = global_index(); t < total; t += grid_stride()) {
        const u64 j = t % l, h = (t / l) % heads, b = t / (l * heads);
        const float* kj = part_row(qkv, b, j, 1, h, l, d, dh);
        const float* vj = part_row(qkv, b, j, 2, h, l, d, dh);
        float dk[MAX_DH], dv[MAX_DH];
        for (u64 k = 0; k < dh; ++k) {
            dk[k] = 0.0f;
            dv[k] = 0.0f;
        }
        // Queries that see key j: all of them, or (causal) those at or after it.
        for (u64 i = causal ? j : 0; i < l; ++i) {
            const u64 s = (b * heads + h) * l + i;
            const float lse = stats[2 * s], delta = stats[2 * s + 1];
            const float* qi = part_row(qkv, b, i, 0, h, l, d, dh);
            const float* g = go + (b * l + i) * d + h * dh;
            const float pij = expf(row_dot(qi, kj, dh) * scale - lse);
            const float ds = pij * (row_dot(g, vj, dh) - delta) * scale;
            for (u64 k = 0; k < dh; ++k) {
                dv[k] += pij * g[k];
                dk[k] += ds * qi[k];
            }
        }
        float* row = dqkv + (b * l + j) * 3 * d + h * dh;
        for (u64 k = 0; k < dh; ++k) {
            row[d + k] = dk[k];
            row[2 * d + k] = dv[k];
        }
    }
}

// The strip kernels of the contrastive losses: mirror the per-row and per-column loops of
// `infonce.rs` and `sigmoid_pairwise.rs` (and the strip walk of `cpu::Pairs`). The host code
// computes each strip of cosines x[r0 .. r0 + r]·yᵀ (r × b, row-major) with cuBLAS; these kernels
// turn strips into statistics, losses and score gradients. Row kernels: one block per row of the
// strip (grid-stride). Cross-row sums are taken in f64 by one block in a fixed order, so results
// do not depend on scheduling.

// ---- InfoNCE forward. out = [image→text, text→image, lse_row (b), lse_col (b)]. ----

// Scales the strip in place (l = s·cos), writes lse_row into out[2 + r0 + i] and l_ii into
// diag[r0 + i].
extern "C" __global__ void infonce_rows(float* __restrict__ strip, const float* __restrict__ scale,
                                        float* __restrict__ out, float* __restrict__ diag, u64 r0,
                                        u64 r, u64 b) {
    __shared__ float scratch[32];
    const float s = scale[0];
    for (u64 i = blockIdx.x; i < r; i += gridDim.x) {
        float* row = strip + i * b;
        float m = NEG_INF;
        for (u64 j = threadIdx.x; j < b; j += blockDim.x) {
            const float l = row[j] * s;
            row[j] = l;
            if (j == r0 + i) diag[r0 + i] = l;
            m = fmaxf(m, l);
        }
        m = block_max(m, scratch);
        float sum = 0.0f;
        for (u64 j = threadIdx.x; j < b; j += blockDim.x) sum += expf(row[j] - m);
        sum = block_sum(sum, scratch);
        if (threadIdx.x == 0) out[2 + r0 + i] = m + logf(sum);
    }
}

// Online log-sum-exp of the columns over one (scaled) strip: a running max col_max[j] and a
// running Σ exp(l_ij − col_max[j]), rescaled when the strip raises the max. One thread per column.
extern "C" __global__ void infonce_columns(const float* __restrict__ strip,
                                           float* __restrict__ col_max,
                                           float* __restrict__ col_sum, u64 r, u64 b) {
    for (u64 j = global_index(); j < b; j += grid_stride()) {
        const float m_old = col_max[j];
        float m = m_old;
        for (u64 i = 0; i < r; ++i) m = fmaxf(m, strip[i * b + j]);
        float sum = col_sum[j] * expf(m_old - m);
        for (u64 i = 0; i < r; ++i) sum += expf(strip[i * b + j] - m);
        col_max[j] = m;
        col_sum[j] = sum;
    }
}

// One block: lse_col = col_max + log(col_sum) into out[2 + b + j]; the two losses into out[0..2].
extern "C" __global__ void infonce_finish(const float* __restrict__ diag,
                                          const float* __restrict__ col_max,
                                          const float* __restrict__ col_sum, float* __restrict__ out,
                                          u64 b) {
    __shared__ double scratch[32];
    double rows = 0.0, cols = 0.0;
    for (u64 j = threadIdx.x; j < b; j += blockDim.x) {
        const float lse_col = col_max[j] + logf(col_sum[j]);
        out[2 + b + j] = lse_col;
        rows += (double)out[2 + j] - (double)diag[j];
        cols += (double)lse_col - (double)diag[j];
    }
    rows = block_sum_f64(rows, scratch);
    cols = block_sum_f64(cols, scratch);
    if (threadIdx.x == 0) {
        out[0] = (float)(rows / (double)b);
        out[1] = (float)(cols / (double)b);
    }
}

// ---- InfoNCE backward. p = [s, g₁, g₂, lse_row (b), lse_col (b)]. ----

// Overwrites the strip of cosines with G_ij = (g₁/b)(P_ij − δ_ij) + (g₂/b)(Q_ij − δ_ij) and
// writes Σ_j G_ij·cos_ij into dots[r0 + i].
extern "C" __global__ void infonce_grad(float* __restrict__ strip, const float* __restrict__ p,
                                        float* __restrict__ dots, u64 r0, u64 r, u64 b) {
    __shared__ float scratch[32];
    const float s = p[0], a = p[1] / (float)b, c = p[2] / (float)b;
    const float* lse_row = p + 3;
    const float* lse_col = p + 3 + b;
    for (u64 i = blockIdx.x; i < r; i += gridDim.x) {
        float* row = strip + i * b;
        const float ri = lse_row[r0 + i];
        float dot = 0.0f;
        for (u64 j = threadIdx.x; j < b; j += blockDim.x) {
            const float cos = row[j];
            const float l = s * cos;
            float g = a * expf(l - ri) + c * expf(l - lse_col[j]);
            if (j == r0 + i) g -= a + c;
            dot += g * cos;
            row[j] = g;
        }
        dot = block_sum(dot, scratch);
        if (threadIdx.x == 0) dots[r0 + i] = dot;
    }
}

// ---- Pairwise sigmoid. Forward out = [positive, negative]; sb = [s, β]. ----

// log σ(u) without exponentiating a positive number.
__device__ __forceinline__ float log_sigmoid(float u) {
    return fminf(u, 0.0f) - log1pf(expf(-fabsf(u)));
}

// σ(−u) without exponentiating a positive number.
__device__ __forceinline__ float sigmoid_neg(float u) {
    const float e = expf(-fabsf(u));
    return u >= 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
}

// terms[2(r0 + i)] = log σ(l_ii), terms[2(r0 + i) + 1] = Σ_{j≠i} log σ(−l_ij).
extern "C" __global__ void sigmoid_rows(const float* __restrict__ strip,
                                        const float* __restrict__ sb, float* __restrict__ terms,
                                        u64 r0, u64 r, u64 b) {
    __shared__ float scratch[32];
    const float s = sb[0], beta = sb[1];
    for (u64 i = blockIdx.x; i < r; i += gridDim.x) {
        const float* row = strip + i * b;
        float neg = 0.0f;
        for (u64 j = threadIdx.x; j < b; j += blockDim.x)
            if (j != r0 + i) neg += log_sigmoid(-(s * row[j] + beta));
        neg = block_sum(neg, scratch);
        if (threadIdx.x == 0) {
            terms[2 * (r0 + i)] = log_sigmoid(s * row[r0 + i] + beta);
            terms[2 * (r0 + i) + 1] = neg;
        }
    }
}

// One block: out[0] = −Σ positive / b, out[1] = −Σ negative / b.
extern "C" __global__ void sigmoid_finish(const float* __restrict__ terms, float* __restrict__ out,
                                          u64 b) {
    __shared__ double scratch[32];
    double pos = 0.0, neg = 0.0;
    for (u64 i = threadIdx.x; i < b; i += blockDim.x) {
        pos += (double)terms[2 * i];
        neg += (double)terms[2 * i + 1];
    }
    pos = block_sum_f64(pos, scratch);
    neg = block_sum_f64(neg, scratch);
    if (threadIdx.x == 0) {
        out[0] = (float)(-pos / (double)b);
        out[1] = (float)(-neg / (double)b);
    }
}

// p = [s, β, g_positive, g_negative]. Overwrites the strip with G_ij = −(g/b)·z_ij·σ(−z_ij·l_ij)
// and writes Σ_j G_ij·cos_ij into dots[r0 + i], Σ_j G_ij into sums[r0 + i].
extern "C" __global__ void sigmoid_grad(float* __restrict__ strip, const float* __restrict__ p,
                                        float* __restrict__ dots, float* __restrict__ sums, u64 r0,
                                        u64 r, u64 b) {
    __shared__ float scratch[32];
    const float s = p[0], beta = p[1], gp = p[2] / (float)b, gn = p[3] / (float)b;
    for (u64 i = blockIdx.x; i < r; i += gridDim.x) {
        float* row = strip + i * b;
        float dot = 0.0f, sum = 0.0f;
        for (u64 j = threadIdx.x; j < b; j += blockDim.x) {
            const float cos = row[j];
            const float l = s * cos + beta;
            const float g = j == r0 + i ? -gp * sigmoid_neg(l) : gn * sigmoid_neg(-l);
            dot += g * cos;
            sum += g;
            row[j] = g;
        }
        dot = block_sum(dot, scratch);
        sum = block_sum(sum, scratch);
        if (threadIdx.x == 0) {
            dots[r0 + i] = dot;
            sums[r0 + i] = sum;
        }
    }
}

// ---- Shared by both backward passes. ----

// dst[offset + i] = (accumulate ? dst[offset + i] : 0) + s[0]·src[i] for i < n.
extern "C" __global__ void scaled_copy(float* __restrict__ dst, const float* __restrict__ src,
                                       const float* __restrict__ s, u64 offset, u64 n,
                                       int accumulate) {
    const float sv = s[0];
    for (u64 i = global_index(); i < n; i += grid_stride()) {
        const float base = accumulate ? dst[offset + i] : 0.0f;
        dst[offset + i] = base + sv * src[i];
    }
}

// One block: out[at] = Σ dots, and out[at + 1] = Σ sums when with_sums (f64, fixed order).
extern "C" __global__ void grad_finish(const float* __restrict__ dots,
                                       const float* __restrict__ sums, float* __restrict__ out,
                                       u64 b, u64 at, int with_sums) {
    __shared__ double scratch[32];
    double d = 0.0, t = 0.0;
    for (u64 i = threadIdx.x; i < b; i += blockDim.x) {
        d += (double)dots[i];
        if (with_sums) t += (double)sums[i];
    }
    d = block_sum_f64(d, scratch);
    t = block_sum_f64(t, scratch);
    if (threadIdx.x == 0) {
        out[at] = (float)d;
        if (with_sums) out[at + 1] = (float)t;
    }
}

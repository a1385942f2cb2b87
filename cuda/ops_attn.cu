/* ops_attn.cu — CUDA twin of src/ops_cpu_attn.c (ops_attn.h): RMSNorm, RoPE,
 * causal attention (forward, backward, latent-cache), embedding,
 * cross-entropy, row argmax. fp32 storage and math, reductions in a fixed order (no float
 * atomics: every output is bitwise the same in any thread order); correctly
 * rounded expf/logf/sqrtf. Conventions in cu_ops.h and cu_ops_attn.h. */
#include "dsv3_cuda.cuh"

#include <limits.h>
#include <math.h>
#include <stdio.h>

#include "cu_ops.h"
#include "cu_ops_attn.h"
#include "ops.h" /* and ops_attn.h */

namespace {

/* ------------------------------------------------------------------ RMSNorm */

constexpr int RN = 256; /* threads per row */

/* one block per row: Σx² in double as the CPU twin, then y = w·(x·rstd) */
__global__ void __launch_bounds__(RN) rmsnorm_fwd_kernel(float *y, float *rstd, const float *x, const float *w, int C,
                                                         float eps) {
    const size_t t = blockIdx.x;
    const float *xt = x + t * C;
    float *yt = y + t * C;
    double ss = 0.0;
    for (int i = threadIdx.x; i < C; i += RN) ss += (double)xt[i] * xt[i];
    ss = dsv3::block_sum<RN>(ss);
    const float r = 1.0f / sqrtf((float)(ss / C) + eps);
    if (threadIdx.x == 0) rstd[t] = r;
    for (int i = threadIdx.x; i < C; i += RN) yt[i] = w[i] * (xt[i] * r);
}
/* dx_i += r·w_i·dy_i − r³·x_i·(1/C)·Σ_j w_j·dy_j·x_j, one block per row */
__global__ void __launch_bounds__(RN) rmsnorm_bwd_dx_kernel(float *dx, const float *dy, const float *x, const float *w,
                                                            const float *rstd, int C) {
    const size_t t = blockIdx.x;
    const float *xt = x + t * C, *gt = dy + t * C;
    float *dxt = dx + t * C;
    const float r = rstd[t];
    double dot = 0.0;
    for (int i = threadIdx.x; i < C; i += RN) dot += (double)w[i] * gt[i] * xt[i];
    dot = dsv3::block_sum<RN>(dot);
    const float c = (float)(dot / C) * r * r * r;
    for (int i = threadIdx.x; i < C; i += RN) dxt[i] += r * w[i] * gt[i] - c * xt[i];
}
/* dw_i += Σ_t dy·x·rstd. A block is 32 columns × DWR row groups: a thread sums
 * rows g, g+DWR, … of its column in order, then one thread per column adds the
 * DWR partials in order (a fixed order; rows read coalesced; C/32 blocks of
 * 32·DWR threads, enough to fill the GPU for C = 7168). */
constexpr int DWR = 16;
__global__ void __launch_bounds__(32 * DWR) rmsnorm_bwd_dw_kernel(float *dw, const float *dy, const float *x,
                                                                  const float *rstd, int T, int C) {
    __shared__ float part[DWR][32];
    const int i = blockIdx.x * 32 + threadIdx.x, g = threadIdx.y;
    float acc = 0.0f;
    if (i < C)
        for (int t = g; t < T; t += DWR) acc += dy[(size_t)t * C + i] * x[(size_t)t * C + i] * rstd[t];
    part[g][threadIdx.x] = acc;
    __syncthreads();
    if (g == 0 && i < C) {
        float sum = part[0][threadIdx.x];
        for (int r = 1; r < DWR; r++) sum += part[r][threadIdx.x];
        dw[i] += sum;
    }
}

/* --------------------------------------------------------------------- RoPE */

/* one thread per (row, head, pair); sign −1 rotates by −θ (the backward) */
__global__ void rope_kernel(float *x, int row_stride, int nh, int head_stride, int off, int half, const float *cos_t,
                            const float *sin_t, int T, size_t n, float sign) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(e % half), h = (int)(e / half % nh);
        const size_t r = e / ((size_t)half * nh);
        const int p = (int)(r % T);
        float *v = x + r * row_stride + (size_t)h * head_stride + off + 2 * i;
        const float a = v[0], b = v[1], ci = cos_t[(size_t)p * half + i], si = sign * sin_t[(size_t)p * half + i];
        v[0] = a * ci - b * si;
        v[1] = a * si + b * ci;
    }
}

/* ---------------------------------------------------------------- attention
 * Flash-style, no [T, T] tensor: a block is AW warps, one query (or key) row
 * per warp; keys (or queries) stream through shared memory in tiles of KT = 32,
 * one per lane, so the score of a (row, lane) pair is a plain dot product over
 * the head dimension in a fixed order. Forward: online softmax, a lane keeps
 * dv/32 output columns in registers. Backward (no stored P, as the CPU twin):
 * a dq pass per query row (D = Σ_j P·dP, then dq) and a dk/dv pass per key row
 * over the queries at or after it: every output row has one owner, no atomics.
 * Shared tiles of rows read across lanes use an odd row stride (no bank
 * conflicts). */
constexpr int AW = 8, KT = 32, AT = AW * 32;

__host__ __device__ inline int odd(int n) { return n | 1; }

/* out[b,h,t] = softmax_{j <= p0+t}(scale·q·k_j)·v_j ; lse (may be NULL) = log Σ exp.
 * Row addressing: q + (b·T + t)·ldq + h·hq, k + (b·Tk + j)·ldk + h·hk (v likewise),
 * out + (b·T + t)·ldo + h·ho. A block's warps take consecutive query rows:
 * positions t of one (b, h) (grid.y = B·nh); or, `latent`, rows (t, h) with the
 * heads inner (B = 1, grid.y = 1): all heads share one cache (hk = hv = 0), so a
 * block loads it once for AW heads (decode: n = 1), and v is the cache's first
 * dv columns, read from the key tile. NV: output columns per lane (dv <= 32·NV). */
template <int NV>
__global__ void __launch_bounds__(AT)
    attn_fwd_kernel(float *out, float *lse, const float *q, const float *k, const float *v, int T, int Tk, int nh,
                    int p0, int dqk, int dv, size_t ldq, int hq, size_t ldk, int hk, size_t ldv, int hv, size_t ldo,
                    int ho, int latent, float scale) {
    DSV3_DYNAMIC_SHARED(float, sm);
    const int ldks = odd(dqk), ldvs = latent ? ldks : dv;
    float *Ks = sm;                                      /* [KT, ldks] */
    float *Vs = latent ? Ks : Ks + KT * ldks;            /* [KT, ldvs] */
    float *Qs = Ks + KT * ldks + (latent ? 0 : KT * dv); /* [AW, dqk] */
    float *Ps = Qs + AW * dqk;                           /* [AW, KT] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int b, h, t, last; /* last: the block's last key */
    bool row;
    if (latent) {
        const int r = blockIdx.x * AW + warp, nr = T * nh;
        b = 0, t = r / nh, h = r % nh, row = r < nr;
        last = p0 + min(nr - 1, (int)blockIdx.x * AW + AW - 1) / nh;
    } else {
        b = blockIdx.y / nh, h = blockIdx.y % nh, t = blockIdx.x * AW + warp, row = t < T;
        last = p0 + min(T - 1, (int)blockIdx.x * AW + AW - 1);
    }
    const int lim = p0 + t; /* the row's keys: 0..lim */
    const float *kb = k + (size_t)b * Tk * ldk + (size_t)h * hk, *vb = v + (size_t)b * Tk * ldv + (size_t)h * hv;
    float *qw = Qs + warp * dqk, *pw = Ps + warp * KT;
    if (row)
        for (int c = lane; c < dqk; c += 32) qw[c] = q[((size_t)b * T + t) * ldq + (size_t)h * hq + c];
    float m = -INFINITY, lsum = 0.0f, acc[NV];
#pragma unroll
    for (int i = 0; i < NV; i++) acc[i] = 0.0f;
    for (int j0 = 0; j0 <= last; j0 += KT) {
        __syncthreads(); /* the previous tile is consumed */
        for (int r = warp; r < KT; r += AW) {
            const int j = j0 + r;
            for (int c = lane; c < dqk; c += 32) Ks[r * ldks + c] = j < Tk ? kb[(size_t)j * ldk + c] : 0.0f;
            if (!latent)
                for (int c = lane; c < dv; c += 32) Vs[r * ldvs + c] = j < Tk ? vb[(size_t)j * ldv + c] : 0.0f;
        }
        __syncthreads();
        if (row && j0 <= lim) { /* warp-uniform */
            const int j = j0 + lane;
            float sc = -INFINITY;
            if (j <= lim) {
                float d = 0.0f;
                for (int c = 0; c < dqk; c++) d += qw[c] * Ks[lane * ldks + c];
                sc = scale * d;
            }
            const float mn = fmaxf(m, dsv3::warp_max(sc)); /* finite: key j0 <= lim is in the tile */
            const float corr = expf(m - mn);                /* 0 on the first tile */
            const float p = j <= lim ? expf(sc - mn) : 0.0f;
            lsum = lsum * corr + p;
            pw[lane] = p;
            __syncwarp(0xffffffffu);
            const int nk = min(KT, lim - j0 + 1);
#pragma unroll
            for (int i = 0; i < NV; i++) acc[i] *= corr;
            for (int r = 0; r < nk; r++) { /* rows outer, columns unrolled: acc stays in registers */
                const float pr = pw[r];
#pragma unroll
                for (int i = 0; i < NV; i++)
                    if (lane + 32 * i < dv) acc[i] += pr * Vs[r * ldvs + lane + 32 * i];
            }
            __syncwarp(0xffffffffu); /* pw is rewritten by the next tile */
            m = mn;
        }
    }
    if (row) {
        const float l = dsv3::warp_sum(lsum);
        float *o = out + ((size_t)b * T + t) * ldo + (size_t)h * ho;
#pragma unroll
        for (int i = 0; i < NV; i++)
            if (lane + 32 * i < dv) o[lane + 32 * i] = acc[i] / l;
        if (lse && lane == 0) lse[(size_t)blockIdx.y * T + t] = m + logf(l);
    }
}

/* Key and value rows j0..j0+KT-1 of one (b, h) into shared tiles (zeros past T),
 * between barriers: the previous tile is consumed, the new one complete. */
__device__ void kv_tile(float *Ks, float *Vs, const float *kb, const float *vb, int j0, int T, size_t ldk, size_t ldv,
                        int dqk, int dv, int ldks, int ldvs) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    for (int r = warp; r < KT; r += AW) {
        const int j = j0 + r;
        for (int c = lane; c < dqk; c += 32) Ks[r * ldks + c] = j < T ? kb[(size_t)j * ldk + c] : 0.0f;
        for (int c = lane; c < dv; c += 32) Vs[r * ldvs + c] = j < T ? vb[(size_t)j * ldv + c] : 0.0f;
    }
    __syncthreads();
}
/* P = exp(scale·q·k − lse) and dP = dout·v of one (query, key) pair */
__device__ __forceinline__ void p_dp(float &p, float &dp, const float *qr, const float *orow, const float *kr,
                                     const float *vr, int dqk, int dv, float scale, float L) {
    float s = 0.0f, g = 0.0f;
    for (int c = 0; c < dqk; c++) s += qr[c] * kr[c];
    for (int c = 0; c < dv; c++) g += orow[c] * vr[c];
    p = expf(scale * s - L);
    dp = g;
}

/* Backward, pass 1: per query row t, D = Σ_j P·dP and dq += Σ_j dS_j·k_j with
 * P = exp(scale·q·k − lse), dP = dout·v, dS = P·(dP − D)·scale. Standard
 * layout: q, k [B·T, nh, dqk], v, dout [B·T, nh, dv]. */
template <int NQ>
__global__ void __launch_bounds__(AT)
    attn_bwd_dq_kernel(float *dq, float *Dw, const float *dout, const float *q, const float *k, const float *v,
                       const float *lse, int T, int nh, int dqk, int dv, float scale) {
    DSV3_DYNAMIC_SHARED(float, sm);
    const int ldks = odd(dqk), ldvs = odd(dv);
    float *Ks = sm;               /* [KT, ldks] */
    float *Vs = Ks + KT * ldks;   /* [KT, ldvs] */
    float *Qs = Vs + KT * ldvs;   /* [AW, dqk] */
    float *Os = Qs + AW * dqk;    /* [AW, dv] (dout rows) */
    float *Ps = Os + AW * dv;     /* [AW, KT] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.y / nh, h = blockIdx.y % nh;
    const int t = blockIdx.x * AW + warp;
    const bool row = t < T;
    const int last = min(T - 1, (int)blockIdx.x * AW + AW - 1);
    const size_t ldq = (size_t)nh * dqk, ldv = (size_t)nh * dv;
    const float *kb = k + (size_t)b * T * ldq + (size_t)h * dqk, *vb = v + (size_t)b * T * ldv + (size_t)h * dv;
    float *qw = Qs + warp * dqk, *ow = Os + warp * dv, *pw = Ps + warp * KT;
    float L = 0.0f;
    if (row) {
        for (int c = lane; c < dqk; c += 32) qw[c] = q[((size_t)b * T + t) * ldq + (size_t)h * dqk + c];
        for (int c = lane; c < dv; c += 32) ow[c] = dout[((size_t)b * T + t) * ldv + (size_t)h * dv + c];
        L = lse[(size_t)blockIdx.y * T + t];
    }
    /* pass 1: D = Σ_j P·dP (lane partials, one warp sum) */
    float D = 0.0f;
    for (int j0 = 0; j0 <= last; j0 += KT) {
        kv_tile(Ks, Vs, kb, vb, j0, T, ldq, ldv, dqk, dv, ldks, ldvs);
        if (row && j0 + lane <= t) {
            float pl, dpl;
            p_dp(pl, dpl, qw, ow, Ks + lane * ldks, Vs + lane * ldvs, dqk, dv, scale, L);
            D += pl * dpl;
        }
    }
    if (row) {
        D = dsv3::warp_sum(D);
        if (lane == 0) Dw[(size_t)blockIdx.y * T + t] = D;
    }
    /* pass 2: dq += Σ_j dS_j·k_j */
    float acc[NQ];
#pragma unroll
    for (int i = 0; i < NQ; i++) acc[i] = 0.0f;
    for (int j0 = 0; j0 <= last; j0 += KT) {
        kv_tile(Ks, Vs, kb, vb, j0, T, ldq, ldv, dqk, dv, ldks, ldvs);
        if (!row || j0 > t) continue; /* warp-uniform; the next barrier is the loop's next turn */
        float ds = 0.0f;
        if (j0 + lane <= t) {
            float pl, dpl;
            p_dp(pl, dpl, qw, ow, Ks + lane * ldks, Vs + lane * ldvs, dqk, dv, scale, L);
            ds = pl * (dpl - D) * scale;
        }
        pw[lane] = ds;
        __syncwarp(0xffffffffu);
        const int nk = min(KT, t - j0 + 1);
        for (int r = 0; r < nk; r++) {
            const float gr = pw[r];
#pragma unroll
            for (int i = 0; i < NQ; i++)
                if (lane + 32 * i < dqk) acc[i] += gr * Ks[r * ldks + lane + 32 * i];
        }
        __syncwarp(0xffffffffu);
    }
    if (row) {
        float *g = dq + ((size_t)b * T + t) * ldq + (size_t)h * dqk;
#pragma unroll
        for (int i = 0; i < NQ; i++)
            if (lane + 32 * i < dqk) g[lane + 32 * i] += acc[i];
    }
}

/* Backward, pass 2: per key row j, over the queries t >= j in tiles of KT:
 * dv_j += Σ_t P·dout_t, dk_j += Σ_t dS·q_t (D from pass 1). */
template <int NQ, int NV>
__global__ void __launch_bounds__(AT)
    attn_bwd_dkv_kernel(float *dk, float *dv, const float *Dw, const float *dout, const float *q, const float *k,
                        const float *v, const float *lse, int T, int nh, int dqk, int dvd, float scale) {
    DSV3_DYNAMIC_SHARED(float, sm);
    const int ldqs = odd(dqk), ldos = odd(dvd);
    float *Qs = sm;               /* [KT, ldqs] query rows of the tile */
    float *Os = Qs + KT * ldqs;   /* [KT, ldos] their dout rows */
    float *Ls = Os + KT * ldos;   /* [KT] lse */
    float *Ds = Ls + KT;          /* [KT] D */
    float *ks = Ds + KT;          /* [AW, dqk] each warp's key row */
    float *vs = ks + AW * dqk;    /* [AW, dvd] its value row */
    float *Ps = vs + AW * dvd;    /* [AW, KT] P */
    float *Gs = Ps + AW * KT;     /* [AW, KT] dS */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.y / nh, h = blockIdx.y % nh;
    const int j = blockIdx.x * AW + warp;
    const bool row = j < T;
    const size_t ldq = (size_t)nh * dqk, ldv = (size_t)nh * dvd;
    const float *qb = q + (size_t)b * T * ldq + (size_t)h * dqk, *ob = dout + (size_t)b * T * ldv + (size_t)h * dvd;
    const float *Lb = lse + (size_t)blockIdx.y * T, *Db = Dw + (size_t)blockIdx.y * T;
    float *kw = ks + warp * dqk, *vw = vs + warp * dvd, *pw = Ps + warp * KT, *gw = Gs + warp * KT;
    if (row) {
        for (int c = lane; c < dqk; c += 32) kw[c] = k[((size_t)b * T + j) * ldq + (size_t)h * dqk + c];
        for (int c = lane; c < dvd; c += 32) vw[c] = v[((size_t)b * T + j) * ldv + (size_t)h * dvd + c];
    }
    float ak[NQ], av[NV];
#pragma unroll
    for (int i = 0; i < NQ; i++) ak[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; i++) av[i] = 0.0f;
    for (int t0 = (int)blockIdx.x * AW / KT * KT; t0 < T; t0 += KT) {
        __syncthreads();
        for (int r = warp; r < KT; r += AW) {
            const int t = t0 + r;
            for (int c = lane; c < dqk; c += 32) Qs[r * ldqs + c] = t < T ? qb[(size_t)t * ldq + c] : 0.0f;
            for (int c = lane; c < dvd; c += 32) Os[r * ldos + c] = t < T ? ob[(size_t)t * ldv + c] : 0.0f;
        }
        if (threadIdx.x < KT) {
            const int t = t0 + threadIdx.x;
            Ls[threadIdx.x] = t < T ? Lb[t] : 0.0f;
            Ds[threadIdx.x] = t < T ? Db[t] : 0.0f;
        }
        __syncthreads();
        if (!row || t0 + KT - 1 < j) continue; /* warp-uniform: no query of the tile sees key j */
        const int t = t0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (t >= j && t < T) {
            float s = 0.0f, dp = 0.0f;
            for (int c = 0; c < dqk; c++) s += Qs[lane * ldqs + c] * kw[c];
            p = expf(scale * s - Ls[lane]);
            for (int c = 0; c < dvd; c++) dp += Os[lane * ldos + c] * vw[c];
            ds = p * (dp - Ds[lane]) * scale;
        }
        pw[lane] = p;
        gw[lane] = ds;
        __syncwarp(0xffffffffu);
#pragma unroll 1 /* unrolled, ptxas spilled a few registers (dq 8, dv 4) */
        for (int r = 0; r < KT; r++) {
            const float pr = pw[r], gr = gw[r];
#pragma unroll
            for (int i = 0; i < NV; i++)
                if (lane + 32 * i < dvd) av[i] += pr * Os[r * ldos + lane + 32 * i];
#pragma unroll
            for (int i = 0; i < NQ; i++)
                if (lane + 32 * i < dqk) ak[i] += gr * Qs[r * ldqs + lane + 32 * i];
        }
        __syncwarp(0xffffffffu);
    }
    if (row) {
        float *gk = dk + ((size_t)b * T + j) * ldq + (size_t)h * dqk, *gv = dv + ((size_t)b * T + j) * ldv + (size_t)h * dvd;
#pragma unroll
        for (int i = 0; i < NQ; i++)
            if (lane + 32 * i < dqk) gk[lane + 32 * i] += ak[i];
#pragma unroll
        for (int i = 0; i < NV; i++)
            if (lane + 32 * i < dvd) gv[lane + 32 * i] += av[i];
    }
}

/* dynamic shared memory above 48 KiB needs the kernel's opt-in */
template <class K> cudaError_t smem_opt_in(K kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return cudaSuccess;
    /* beyond the device's opt-in limit this fails (cudaErrorInvalidValue) */
    return cudaFuncSetAttribute(reinterpret_cast<const void *>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

/* the forward for both layouts: NV from dv */
cudaError_t attn_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int Tk,
                         int nh, int p0, int dqk, int dv, size_t ldq, int hq, size_t ldk, int hk, size_t ldv, int hv,
                         size_t ldo, int ho, int latent, float scale, cudaStream_t s) {
    if (B <= 0 || T <= 0 || nh <= 0) return cudaSuccess;
    if (dqk <= 0 || dv <= 0 || dv > 512 || (latent && (dv > dqk || B != 1 || hk || hv))) return cudaErrorInvalidValue;
    const size_t smem = sizeof(float) * ((size_t)KT * odd(dqk) + (latent ? 0 : (size_t)KT * dv) +
                                         (size_t)AW * dqk + (size_t)AW * KT);
    const dim3 grid = latent ? dim3((unsigned)(((size_t)T * nh + AW - 1) / AW)) : dim3((T + AW - 1) / AW, (unsigned)(B * nh));
    auto run = [&](auto kernel) {
        cudaError_t e = smem_opt_in(kernel, smem);
        if (e != cudaSuccess) return e;
        return dsv3::launch(kernel, grid, dim3(AT), smem, s, out, lse, q, k, v, T, Tk, nh, p0, dqk, dv, ldq, hq, ldk,
                            hk, ldv, hv, ldo, ho, latent, scale);
    };
    if (dv <= 32) return run(attn_fwd_kernel<1>);
    if (dv <= 128) return run(attn_fwd_kernel<4>);
    return run(attn_fwd_kernel<16>);
}

/* ---------------------------------------------------------------- embedding */

constexpr int EB = 256; /* threads per token row */

/* T: float, or __nv_bfloat16 for a table in its storage (widened exactly, row by row) */
template <typename T>
__global__ void __launch_bounds__(EB) embedding_fwd_kernel(float *y, const T *E, const int32_t *ids, int V, int H,
                                                           int *bad) {
    const int n = blockIdx.x;
    const int32_t id = ids[n];
    float *yn = y + (size_t)n * H;
    const bool ok = id >= 0 && id < V;
    for (int c = threadIdx.x; c < H; c += EB) yn[c] = ok ? dsv3::to_f32(E[(size_t)id * H + c]) : 0.0f;
    if (!ok && threadIdx.x == 0) atomicMin(bad, n); /* integer min: the first bad row, in any order */
}

/* dE[id, :] += dy[n, :] for every n with ids[n] = id, in token order (the CPU
 * twin's order of adds: bitwise its result), without atomics: the (id, n)
 * pairs are sorted by id with a stable LSD radix sort (8-bit digits, chunks of
 * RB tokens: a per-chunk digit histogram, one scan of the digit-major table,
 * a stable scatter), so each id's tokens end up contiguous and in token order;
 * then the block at the head of each run adds the run, column by column.
 * ceil(log2(V+1)/8) passes (3 for DeepSeek-V3's 129,280), each O(N) (a token
 * counts the equal digits before it in its chunk: at most RB-1 shared reads);
 * the adds are O(N·H), as the CPU's. An id outside [0, V) gets key V (sorted
 * last) and is skipped. */
constexpr int RB = 256; /* tokens per radix chunk (one thread each) = the 256 digit values */

__global__ void emb_keys_kernel(int *key, int *val, const int32_t *ids, int N, int V) {
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) {
        const int32_t id = ids[n];
        key[n] = id >= 0 && id < V ? id : V;
        val[n] = n;
    }
}

/* hist[d·nch + c] = the tokens of chunk c whose digit is d (shared integer counts: order-independent) */
__global__ void __launch_bounds__(RB) radix_hist_kernel(int *hist, const int *key, int N, int shift, int nch) {
    __shared__ int cnt[256];
    const int c = blockIdx.x, n = c * RB + threadIdx.x;
    cnt[threadIdx.x] = 0;
    __syncthreads();
    if (n < N) atomicAdd(&cnt[(key[n] >> shift) & 255], 1);
    __syncthreads();
    hist[threadIdx.x * nch + c] = cnt[threadIdx.x];
}

/* incl: the inclusive scan of hist; a token goes after every token of a smaller
 * digit, or of its digit in an earlier chunk, or earlier in its chunk (stable) */
__global__ void __launch_bounds__(RB) radix_scatter_kernel(int *key_out, int *val_out, const int *key, const int *val,
                                                           const int *incl, int N, int shift, int nch) {
    __shared__ int dig[RB];
    const int c = blockIdx.x, n = c * RB + threadIdx.x;
    const int d = n < N ? (key[n] >> shift) & 255 : -1;
    dig[threadIdx.x] = d;
    __syncthreads();
    if (n >= N) return;
    int rank = 0;
    for (int j = 0; j < (int)threadIdx.x; j++) rank += dig[j] == d;
    const int i = d * nch + c, at = (i > 0 ? incl[i - 1] : 0) + rank;
    key_out[at] = key[n];
    val_out[at] = val[n];
}

/* blocks over the sorted pairs; the head of each run of one valid id adds the run */
__global__ void __launch_bounds__(EB) embedding_bwd_kernel(float *dE, const float *dy, const int *key, const int *val,
                                                           int N, int V, int H) {
    for (int i = blockIdx.x; i < N; i += gridDim.x) { /* block-uniform */
        const int id = key[i];
        if (id >= V || (i > 0 && key[i - 1] == id)) continue;
        int end = i + 1;
        while (end < N && key[end] == id) end++;
        float *d = dE + (size_t)id * H;
        for (int c = threadIdx.x; c < H; c += EB) {
            float a = d[c];
            for (int j = i; j < end; j++) a += dy[(size_t)val[j] * H + c];
            d[c] = a;
        }
    }
}

/* ------------------------------------------------------------ cross-entropy
 * One block of CE threads per row (llm.c's fused classifier): one read of the
 * row gives each thread an online (max, Σ exp) pair, the block combines them
 * (max, then the rescaled sums in double), and a second read writes dlogits.
 * Row losses go to a double buffer; one block sums them (fixed tree) and
 * counts the rows. Rows with an ignored or invalid target are skipped as a
 * whole block (their dlogits are 0). */
constexpr int CE = 1024;

/* the row's max M and S = Σ exp(x − M); a thread's running sum is a double, as
 * the CPU twin's sum (V/CE terms each) */
__device__ void ce_stats(const float *x, int V, float &M, double &S) {
    float m = -INFINITY;
    double s = 0.0;
    for (int j = threadIdx.x; j < V; j += CE) {
        const float v = x[j];
        if (v > m) {
            s = s * (double)expf(m - v) + 1.0;
            m = v;
        } else {
            s += (double)expf(v - m);
        }
    }
    M = dsv3::block_max<CE>(m);
    S = dsv3::block_sum<CE>(m == -INFINITY ? 0.0 : s * (double)expf(m - M));
}

__global__ void __launch_bounds__(CE) ce_forward_kernel(const float *logits, const int32_t *targets, int V,
                                                        double *rows) {
    const int n = blockIdx.x;
    const int32_t tg = targets[n];
    if (tg < 0 || tg >= V) { /* ignored or invalid: block-uniform */
        if (threadIdx.x == 0) rows[n] = 0.0;
        return;
    }
    const float *x = logits + (size_t)n * V;
    float M;
    double S;
    ce_stats(x, V, M, S);
    const float lse = M + (float)log(S);
    if (threadIdx.x == 0) rows[n] = (double)lse - (double)x[tg];
}

/* dlogits = softmax·scale − scale·onehot, written after the whole row is read
 * (dlogits may alias logits: the barriers of ce_stats order it) */
__global__ void __launch_bounds__(CE) ce_backward_kernel(float *d, const float *logits, const int32_t *targets, int V,
                                                         float scale) {
    const int n = blockIdx.x;
    const int32_t tg = targets[n];
    float *dn = d + (size_t)n * V;
    if (tg < 0 || tg >= V) {
        for (int j = threadIdx.x; j < V; j += CE) dn[j] = 0.0f;
        return;
    }
    const float *x = logits + (size_t)n * V;
    float M;
    double S;
    ce_stats(x, V, M, S);
    const float lse = M + (float)log(S);
    for (int j = threadIdx.x; j < V; j += CE) {
        float e = expf(x[j] - lse) * scale;
        if (j == tg) e -= scale;
        dn[j] = e;
    }
}

__global__ void __launch_bounds__(CE) ce_fused_kernel(float *d, const float *logits, const int32_t *targets, int V,
                                                      float scale, double *rows) {
    const int n = blockIdx.x;
    const int32_t tg = targets[n];
    float *dn = d + (size_t)n * V;
    if (tg < 0 || tg >= V) {
        for (int j = threadIdx.x; j < V; j += CE) dn[j] = 0.0f;
        if (threadIdx.x == 0) rows[n] = 0.0;
        return;
    }
    const float *x = logits + (size_t)n * V;
    const float xt = x[tg]; /* read before any thread writes (barriers in ce_stats) */
    float M;
    double S;
    ce_stats(x, V, M, S);
    const float kf = (float)((double)scale / S);
    for (int j = threadIdx.x; j < V; j += CE) {
        float e = expf(x[j] - M) * kf;
        if (j == tg) e -= scale;
        dn[j] = e;
    }
    if (threadIdx.x == 0) rows[n] = (double)M + log(S) - (double)xt;
}

/* one block: Σ and count over the counted rows (target != ignore), the first
 * invalid row, row_loss (may be NULL) as floats */
__global__ void __launch_bounds__(CE) ce_reduce_kernel(float *row_loss, const int32_t *targets, const double *rows,
                                                       int N, int V, cu_ce_result *res) {
    __shared__ int bad;
    if (threadIdx.x == 0) bad = INT_MAX;
    __syncthreads();
    double sum = 0.0, cnt = 0.0;
    for (int n = threadIdx.x; n < N; n += CE) {
        const int32_t tg = targets[n];
        if (tg != OPS_IGNORE_INDEX) {
            sum += rows[n];
            cnt += 1.0;
            if (tg < 0 || tg >= V) atomicMin(&bad, n);
        }
        if (row_loss) row_loss[n] = (float)rows[n];
    }
    sum = dsv3::block_sum<CE>(sum); /* its barriers also order the atomics before the read of bad */
    cnt = dsv3::block_sum<CE>(cnt);
    if (threadIdx.x == 0) {
        res->sum = bad == INT_MAX ? sum : NAN;
        res->count = (int64_t)cnt;
        res->bad_row = bad == INT_MAX ? -1 : bad;
        res->bad_target = bad == INT_MAX ? 0 : targets[bad];
    }
}

/* ------------------------------------------------------------------ argmax
 * One block of AM threads per row: each thread scans its columns in increasing
 * order, then a tree over the (value, index) pairs. `wins` is a total order
 * (NaN above every number, ties to the lower index), so the result is the CPU
 * twin's in any thread order. */
constexpr int AM = 256;

__device__ __forceinline__ bool wins(float a, int ia, float b, int ib) { /* (a, ia) beats (b, ib) */
    const bool na = isnan(a), nb = isnan(b);
    if (na || nb) return na && (!nb || ia < ib);
    return a > b || (a == b && ia < ib);
}

__global__ void __launch_bounds__(AM) argmax_kernel(int32_t *out, const float *x, int V) {
    __shared__ float bv[AM];
    __shared__ int bi[AM];
    const float *r = x + (size_t)blockIdx.x * V;
    float best = r[0];
    int at = 0;
    for (int j = threadIdx.x; j < V; j += AM)
        if (wins(r[j], j, best, at)) best = r[j], at = j;
    bv[threadIdx.x] = best, bi[threadIdx.x] = at;
    __syncthreads();
    for (int h = AM / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h && wins(bv[threadIdx.x + h], bi[threadIdx.x + h], bv[threadIdx.x], bi[threadIdx.x]))
            bv[threadIdx.x] = bv[threadIdx.x + h], bi[threadIdx.x] = bi[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0];
}

} // namespace

/* ---- launchers ---- */

extern "C" cudaError_t cu_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int T, int C,
                                          float eps, cudaStream_t s) {
    if (T <= 0 || C <= 0) return cudaSuccess;
    return dsv3::launch(rmsnorm_fwd_kernel, dim3(T), dim3(RN), 0, s, y, rstd, x, w, C, eps);
}
extern "C" cudaError_t cu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                                           const float *rstd, int T, int C, cudaStream_t s) {
    if (T <= 0 || C <= 0) return cudaSuccess;
    cudaError_t e = dsv3::launch(rmsnorm_bwd_dx_kernel, dim3(T), dim3(RN), 0, s, dx, dy, x, w, rstd, C);
    if (e != cudaSuccess || !dw) return e;
    return dsv3::launch(rmsnorm_bwd_dw_kernel, dim3((C + 31) / 32), dim3(32, DWR), 0, s, dw, dy, x, rstd, T, C);
}

static cudaError_t rope(float *x, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                        const float *sin_t, int B, int T, float sign, cudaStream_t s) {
    const size_t n = (size_t)B * T * nh * (dr / 2);
    if (n == 0) return cudaSuccess;
    return dsv3::launch(rope_kernel, dim3(dsv3::grid_for(n, 256)), dim3(256), 0, s, x, row_stride, nh, head_stride,
                        off, dr / 2, cos_t, sin_t, T, n, sign);
}
extern "C" cudaError_t cu_rope_forward(float *x, int row_stride, int nh, int head_stride, int off, int dr,
                                       const float *cos_t, const float *sin_t, int B, int T, cudaStream_t s) {
    return rope(x, row_stride, nh, head_stride, off, dr, cos_t, sin_t, B, T, 1.0f, s);
}
extern "C" cudaError_t cu_rope_backward(float *dx, int row_stride, int nh, int head_stride, int off, int dr,
                                        const float *cos_t, const float *sin_t, int B, int T, cudaStream_t s) {
    return rope(dx, row_stride, nh, head_stride, off, dr, cos_t, sin_t, B, T, -1.0f, s);
}

extern "C" cudaError_t cu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                            int B, int T, int nh, int dqk, int dv, float scale, cudaStream_t s) {
    const size_t ldq = (size_t)nh * dqk, ldv = (size_t)nh * dv;
    return attn_forward(out, lse, q, k, v, B, T, T, nh, 0, dqk, dv, ldq, dqk, ldq, dqk, ldv, dv, ldv, dv, 0, scale, s);
}

extern "C" cudaError_t cu_latent_attention(float *out, const float *q, const float *cache, int n, int nh, int W,
                                           int kvl, int p0, float scale, cudaStream_t s) {
    /* rows (i, h) of q [n, nh, W] against the shared cache rows [p0+n, W]; v = cache[:, 0:kvl] */
    return attn_forward(out, nullptr, q, cache, cache, 1, n, p0 + n, nh, p0, W, kvl, (size_t)nh * W, W, (size_t)W, 0,
                        (size_t)W, 0, (size_t)nh * kvl, kvl, 1, scale, s);
}

extern "C" cudaError_t cu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                             const float *k, const float *v, const float *lse, int B, int T, int nh,
                                             int dqk, int dvd, float scale, float *Dwork, cudaStream_t s) {
    if (B <= 0 || T <= 0 || nh <= 0) return cudaSuccess;
    if (dqk <= 0 || dvd <= 0 || dqk > 256 || dvd > 512) return cudaErrorInvalidValue;
    const dim3 grid((T + AW - 1) / AW, (unsigned)(B * nh));
    const size_t smem_q =
        sizeof(float) * ((size_t)KT * odd(dqk) + (size_t)KT * odd(dvd) + (size_t)AW * (dqk + dvd + KT));
    const size_t smem_kv = sizeof(float) * ((size_t)KT * (odd(dqk) + odd(dvd) + 2) + (size_t)AW * (dqk + dvd + 2 * KT));
    auto run_dq = [&](auto kernel) {
        cudaError_t e = smem_opt_in(kernel, smem_q);
        if (e != cudaSuccess) return e;
        return dsv3::launch(kernel, grid, dim3(AT), smem_q, s, dq, Dwork, dout, q, k, v, lse, T, nh, dqk, dvd, scale);
    };
    cudaError_t e = dqk <= 32 ? run_dq(attn_bwd_dq_kernel<1>) : dqk <= 64 ? run_dq(attn_bwd_dq_kernel<2>)
                              : run_dq(attn_bwd_dq_kernel<8>);
    if (e != cudaSuccess) return e;
    auto run_kv = [&](auto kernel) {
        cudaError_t e2 = smem_opt_in(kernel, smem_kv);
        if (e2 != cudaSuccess) return e2;
        return dsv3::launch(kernel, grid, dim3(AT), smem_kv, s, dk, dv, Dwork, dout, q, k, v, lse, T, nh, dqk, dvd,
                            scale);
    };
    if (dqk <= 32 && dvd <= 32) return run_kv(attn_bwd_dkv_kernel<1, 1>);
    if (dqk <= 64 && dvd <= 64) return run_kv(attn_bwd_dkv_kernel<2, 2>);
    if (dvd <= 128) return run_kv(attn_bwd_dkv_kernel<8, 4>);
    return run_kv(attn_bwd_dkv_kernel<8, 16>);
}

extern "C" cudaError_t cu_embedding_forward(float *y, const float *E, const int32_t *ids, int N, int V, int H, int *bad,
                                            cudaStream_t s) {
    cudaError_t e = cudaMemsetAsync(bad, 0x7f, sizeof *bad, s); /* 0x7f7f7f7f: no bad row */
    if (e != cudaSuccess || N <= 0 || H <= 0) return e;
    return dsv3::launch(embedding_fwd_kernel<float>, dim3(N), dim3(EB), 0, s, y, E, ids, V, H, bad);
}
extern "C" cudaError_t cu_embedding_forward_w(float *y, const ops_weight *E, const int32_t *ids, int N, int *bad,
                                              cudaStream_t s) {
    if (E->dtype == OPS_F32) return cu_embedding_forward(y, (const float *)E->data, ids, N, E->out, E->in, bad, s);
    if (E->dtype != OPS_BF16) return cudaErrorInvalidValue; /* the CPU op refuses fp8 tables too */
    cudaError_t e = cudaMemsetAsync(bad, 0x7f, sizeof *bad, s);
    if (e != cudaSuccess || N <= 0 || E->in <= 0) return e;
    return dsv3::launch(embedding_fwd_kernel<__nv_bfloat16>, dim3(N), dim3(EB), 0, s, y,
                        (const __nv_bfloat16 *)E->data, ids, E->out, E->in, bad);
}
/* the radix chunks, and the 8-bit passes that cover keys 0..V */
static int radix_chunks(int N) { return (N + RB - 1) / RB; }
static int radix_passes(int V) {
    int bits = 0;
    while (bits < 31 && (V >> bits) != 0) bits++;
    return bits > 0 ? (bits + 7) / 8 : 1;
}
extern "C" size_t cu_embedding_backward_work(int N) {
    return N > 0 ? 4 * (size_t)N + 256 * (size_t)radix_chunks(N) : 0;
}
extern "C" cudaError_t cu_embedding_backward(float *dE, const float *dy, const int32_t *ids, int N, int V, int H,
                                             int *work, cudaStream_t s) {
    if (N <= 0 || H <= 0) return cudaSuccess;
    const int nch = radix_chunks(N);
    int *key = work, *val = work + N, *key2 = work + 2 * (size_t)N, *val2 = work + 3 * (size_t)N;
    int *hist = work + 4 * (size_t)N;
    cudaError_t e = dsv3::launch(emb_keys_kernel, dim3(dsv3::grid_for(N, 256)), dim3(256), 0, s, key, val, ids, N, V);
    for (int p = 0, np = radix_passes(V); p < np && !e; p++) {
        e = dsv3::launch(radix_hist_kernel, dim3(nch), dim3(RB), 0, s, hist, (const int *)key, N, 8 * p, nch);
        if (!e) e = dsv3::launch(dsv3::scan_incl_kernel<RB>, dim3(1), dim3(RB), 0, s, hist, 256 * nch);
        if (!e)
            e = dsv3::launch(radix_scatter_kernel, dim3(nch), dim3(RB), 0, s, key2, val2, (const int *)key,
                             (const int *)val, (const int *)hist, N, 8 * p, nch);
        std::swap(key, key2), std::swap(val, val2);
    }
    if (e) return e;
    return dsv3::launch(embedding_bwd_kernel, dim3(dsv3::grid_for(N, 1, 65535)), dim3(EB), 0, s, dE, dy,
                        (const int *)key, (const int *)val, N, V, H);
}

extern "C" cudaError_t cu_cross_entropy_forward(float *row_loss, const float *logits, const int32_t *targets, int N,
                                                int V, cu_ce_result *res, double *rows, cudaStream_t s) {
    if (N > 0) {
        cudaError_t e = dsv3::launch(ce_forward_kernel, dim3(N), dim3(CE), 0, s, logits, targets, V, rows);
        if (e != cudaSuccess) return e;
    }
    return dsv3::launch(ce_reduce_kernel, dim3(1), dim3(CE), 0, s, row_loss, targets, rows, N, V, res);
}
extern "C" cudaError_t cu_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N,
                                                 int V, float scale, cudaStream_t s) {
    if (N <= 0) return cudaSuccess;
    return dsv3::launch(ce_backward_kernel, dim3(N), dim3(CE), 0, s, dlogits, logits, targets, V, scale);
}
extern "C" cudaError_t cu_cross_entropy_fused(float *dlogits, const float *logits, const int32_t *targets, int N,
                                              int V, float scale, cu_ce_result *res, double *rows, cudaStream_t s) {
    if (N > 0) {
        cudaError_t e = dsv3::launch(ce_fused_kernel, dim3(N), dim3(CE), 0, s, dlogits, logits, targets, V, scale, rows);
        if (e != cudaSuccess) return e;
    }
    return dsv3::launch(ce_reduce_kernel, dim3(1), dim3(CE), 0, s, (float *)nullptr, targets, rows, N, V, res);
}

extern "C" cudaError_t cu_argmax_rows(int32_t *out, const float *x, int N, int V, cudaStream_t s) {
    if (N <= 0) return cudaSuccess;
    if (V <= 0) return cudaErrorInvalidValue;
    return dsv3::launch(argmax_kernel, dim3(N), dim3(AM), 0, s, out, x, V);
}

#ifndef DSV3_CU_TWIN
/* ---- ops_attn.h on the backend stream. Scratch the CPU ops take from malloc
 * (attention's D rows, the CE row losses, the small results) lives in
 * grow-only device buffers owned here (cu_devbuf: charged to OPS_MEM_OTHER). ---- */

namespace {
enum { SCR_ATT_D, SCR_CE_ROWS, SCR_CE_RES, SCR_EMB_BAD, SCR_EMB_SORT, SCR_ARGMAX, SCR_N };
void *scratch(int slot, size_t bytes) {
    static cu_devbuf buf[SCR_N];
    return cu_devbuf_get(&buf[slot], bytes);
}
template <class T> T read_back(const T *d) {
    T h;
    CU_CHECK(cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, cu_stream()));
    CU_CHECK(cudaStreamSynchronize(cu_stream()));
    return h;
}
} // namespace

void ops_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int T, int C, float eps) {
    CU_CHECK(cu_rmsnorm_forward(y, rstd, x, w, T, C, eps, cu_stream()));
}
void ops_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                          int T, int C) {
    CU_CHECK(cu_rmsnorm_backward(dx, dw, dy, x, w, rstd, T, C, cu_stream()));
}
void ops_rope_forward(float *x, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                      const float *sin_t, int B, int T) {
    CU_CHECK(cu_rope_forward(x, row_stride, nh, head_stride, off, dr, cos_t, sin_t, B, T, cu_stream()));
}
void ops_rope_backward(float *dx, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                       const float *sin_t, int B, int T) {
    CU_CHECK(cu_rope_backward(dx, row_stride, nh, head_stride, off, dr, cos_t, sin_t, B, T, cu_stream()));
}
void ops_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                           int nh, int dqk, int dv, float scale) {
    CU_CHECK(cu_attention_forward(out, lse, q, k, v, B, T, nh, dqk, dv, scale, cu_stream()));
}
void ops_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *lse, int B, int T, int nh, int dqk, int dvd, float scale) {
    if (B <= 0 || T <= 0 || nh <= 0) return;
    float *D = (float *)scratch(SCR_ATT_D, ops_attention_cache_floats(B, T, nh) * sizeof(float));
    CU_CHECK(cu_attention_backward(dq, dk, dv, dout, q, k, v, lse, B, T, nh, dqk, dvd, scale, D, cu_stream()));
}
void ops_latent_attention(float *out, const float *q, const float *cache, int n, int nh, int W, int kvl, int p0,
                          float scale) {
    CU_CHECK(cu_latent_attention(out, q, cache, n, nh, W, kvl, p0, scale, cu_stream()));
}
/* the CPU op's contract: 0, or -1 after printing the first out-of-range id */
static int embed_bad_row(const int *bad, const int32_t *ids, int N, int V) {
    const int row = read_back(bad);
    if (row >= N) return 0;
    fprintf(stderr, "ops_embedding_forward: token id %d at row %d outside vocabulary [0, %d)\n", (int)read_back(ids + row),
            row, V);
    return -1;
}
int ops_embedding_forward(float *y, const float *E, const int32_t *ids, int N, int V, int H) {
    int *bad = (int *)scratch(SCR_EMB_BAD, sizeof(int));
    CU_CHECK(cu_embedding_forward(y, E, ids, N, V, H, bad, cu_stream()));
    return embed_bad_row(bad, ids, N, V);
}
int ops_embedding_forward_w(float *y, const ops_weight *E, const int32_t *ids, int N) {
    CU_REQUIRE(E->dtype == OPS_F32 || E->dtype == OPS_BF16,
               "ops_embedding_forward_w: a %s embedding is not supported (bf16 or fp32)",
               E->dtype == OPS_FP8_E4M3 ? "fp8" : "?");
    int *bad = (int *)scratch(SCR_EMB_BAD, sizeof(int));
    CU_CHECK(cu_embedding_forward_w(y, E, ids, N, bad, cu_stream()));
    return embed_bad_row(bad, ids, N, E->out);
}
void ops_embedding_backward(float *dE, const float *dy, const int32_t *ids, int N, int V, int H) {
    int *work = (int *)scratch(SCR_EMB_SORT, cu_embedding_backward_work(N) * sizeof(int));
    CU_CHECK(cu_embedding_backward(dE, dy, ids, N, V, H, work, cu_stream()));
}

static double ce_result(const char *op, int64_t *count, const cu_ce_result *dres, int V) {
    const cu_ce_result r = read_back(dres);
    if (count) *count = r.count;
    if (r.bad_row >= 0) {
        fprintf(stderr, "%s: target %d at row %d outside [0, %d) and not %d\n", op, r.bad_target, r.bad_row, V,
                OPS_IGNORE_INDEX);
        return NAN;
    }
    return r.sum;
}
double ops_cross_entropy_forward(float *row_loss, int64_t *count, const float *logits, const int32_t *targets, int N,
                                 int V) {
    double *rows = (double *)scratch(SCR_CE_ROWS, (size_t)(N > 0 ? N : 1) * sizeof(double));
    cu_ce_result *res = (cu_ce_result *)scratch(SCR_CE_RES, sizeof(cu_ce_result));
    CU_CHECK(cu_cross_entropy_forward(row_loss, logits, targets, N, V, res, rows, cu_stream()));
    return ce_result("ops_cross_entropy_forward", count, res, V);
}
void ops_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                float scale) {
    CU_CHECK(cu_cross_entropy_backward(dlogits, logits, targets, N, V, scale, cu_stream()));
}
double ops_cross_entropy_fused(float *dlogits, int64_t *count, const float *logits, const int32_t *targets, int N,
                               int V, float scale) {
    double *rows = (double *)scratch(SCR_CE_ROWS, (size_t)(N > 0 ? N : 1) * sizeof(double));
    cu_ce_result *res = (cu_ce_result *)scratch(SCR_CE_RES, sizeof(cu_ce_result));
    CU_CHECK(cu_cross_entropy_fused(dlogits, logits, targets, N, V, scale, res, rows, cu_stream()));
    return ce_result("ops_cross_entropy_fused", count, res, V);
}
void ops_argmax_rows(int32_t *out, const float *x, int N, int V) {
    if (N <= 0) return;
    int32_t *d = (int32_t *)scratch(SCR_ARGMAX, (size_t)N * sizeof *d);
    CU_CHECK(cu_argmax_rows(d, x, N, V, cu_stream()));
    ops_to_host(out, d, (size_t)N * sizeof *d);
}
#endif /* DSV3_CU_TWIN */

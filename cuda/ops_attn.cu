/* ops_attn.cu — CUDA twin of src/ops_cpu_attn.c (ops_attn.h): RMSNorm, RoPE,
 * causal attention (forward and backward on cuBLAS batched GEMMs, latent-cache), embedding,
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
 * Training (cu_attention_forward/backward): cuBLAS strided-batched fp32 GEMMs
 * over the heads, per chunk of query rows [t0, t1) against the keys [0, t1),
 * with the scores in a scratch region [B·nh, bq, t1] (row stride t1; the
 * rows of one (b, h) consecutive, so the region is one [B·nh·bq, t1] matrix),
 * and one warp per score row for the softmax (forward) or its backward: lane
 * partials over j = lane, lane+32, … in order, one butterfly: a fixed order. */
constexpr int SW = 4; /* score rows (warps) per block */

/* Forward, row g of the chunk's [B·nh·bq, t1] scores S (= scale·q·k): position
 * t = t0 + g % bq of (b, h) = g / bq. In place: P = softmax over keys 0..t,
 * 0 for the keys t+1..t1-1; lse = max + log Σ exp (the CPU twin's
 * softmax_causal_row: exp(s − max), then P = e·(1/Σ)).
 * BF (bf16 mode): P is written as bf16 in place, row g at the start of its own
 * fp32 row (a [rows, t1] bf16 matrix of row stride 2·t1): blocks of 32 keys,
 * each lane reads its fp32 value, the warp syncs, then writes the bf16 — the
 * block's bf16 lands in fp32 words [j0/2, j0/2 + 16), already read (by this
 * block when j0 = 0, by an earlier one after), so no value is lost. */
template <bool BF>
__global__ void __launch_bounds__(SW * 32) attn_softmax_kernel(float *S, float *lse, int nrows, int bq, int t0,
                                                               int t1, int T) {
    const int g = blockIdx.x * SW + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (g >= nrows) return; /* warp-uniform */
    const int t = t0 + g % bq, n = t + 1;
    float *s = S + (size_t)g * t1;
    float mx = -INFINITY;
    for (int j = lane; j < n; j += 32) mx = fmaxf(mx, s[j]);
    mx = dsv3::warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) {
        const float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    sum = dsv3::warp_sum(sum);
    const float inv = 1.0f / sum;
    if constexpr (!BF) {
        for (int j = lane; j < t1; j += 32) s[j] = j < n ? s[j] * inv : 0.0f; /* a lane rereads its own writes */
    } else {
        __nv_bfloat16 *sb = reinterpret_cast<__nv_bfloat16 *>(s);
        for (int j0 = 0; j0 < t1; j0 += 32) {
            const int j = j0 + lane;
            const float p = j < n ? s[j] * inv : 0.0f;
            __syncwarp(0xffffffffu); /* the block's fp32 reads before its bf16 writes */
            if (j < t1) sb[j] = __float2bfloat16_rn(p);
        }
    }
    if (lane == 0) lse[(size_t)(g / bq) * T + t] = mx + logf(sum);
}

/* Backward, row g as above, P holding S (= scale·q·k) and G holding dP = dout·vᵀ:
 * P = exp(S − lse), D = Σ_j P·dP (fp32 P), dS = P·(dP − D)·scale (the gradient w.r.t.
 * q·k), in place; 0 past the row's position. BF: P and dS written as bf16 in
 * place, as the forward's P. */
template <bool BF>
__global__ void __launch_bounds__(SW * 32) attn_softmax_bwd_kernel(float *P, float *G, const float *lse, int nrows,
                                                                   int bq, int t0, int t1, int T, float scale) {
    const int g = blockIdx.x * SW + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (g >= nrows) return; /* warp-uniform */
    const int t = t0 + g % bq, n = t + 1;
    float *p = P + (size_t)g * t1, *d = G + (size_t)g * t1;
    const float l = lse[(size_t)(g / bq) * T + t];
    float D = 0.0f;
    for (int j = lane; j < n; j += 32) {
        const float e = expf(p[j] - l);
        p[j] = e;
        D += e * d[j];
    }
    D = dsv3::warp_sum(D);
    if constexpr (!BF) {
        for (int j = lane; j < t1; j += 32) {
            if (j < n) {
                d[j] = p[j] * (d[j] - D) * scale;
            } else {
                p[j] = 0.0f;
                d[j] = 0.0f;
            }
        }
    } else {
        __nv_bfloat16 *pb = reinterpret_cast<__nv_bfloat16 *>(p), *db = reinterpret_cast<__nv_bfloat16 *>(d);
        for (int j0 = 0; j0 < t1; j0 += 32) {
            const int j = j0 + lane;
            const float pj = j < n ? p[j] : 0.0f, ds = j < n ? pj * (d[j] - D) * scale : 0.0f;
            __syncwarp(0xffffffffu); /* the block's fp32 reads before its bf16 writes */
            if (j < t1) pb[j] = __float2bfloat16_rn(pj), db[j] = __float2bfloat16_rn(ds);
        }
    }
}

/* Latent attention (cu_latent_attention), flash-style SIMT: a block is AW
 * warps, one score row (t, h) per warp, heads inner, so a block loads the
 * shared cache rows once for AW heads (decode: n = 1); cache rows stream
 * through shared memory in tiles of KT = 32, one per lane, so the score of a
 * (row, lane) pair is a plain dot product over W in a fixed order; online
 * softmax; a lane keeps kvl/32 output columns in registers (NV per lane); the
 * values are the cache rows' first kvl columns, read from the key tile. The
 * tile's row stride is odd (no bank conflicts). */
constexpr int AW = 8, KT = 32, AT = AW * 32;

__host__ __device__ inline int odd(int n) { return n | 1; }

/* out[t,h] = softmax_{j <= p0+t}(scale·q[t,h]·cache_j)·cache_j[0:kvl] */
template <int NV>
__global__ void __launch_bounds__(AT) latent_attn_kernel(float *out, const float *q, const float *cache, int n,
                                                         int nh, int p0, int W, int kvl, float scale) {
    DSV3_DYNAMIC_SHARED(float, sm);
    const int ldks = odd(W);
    float *Ks = sm;             /* [KT, ldks] cache rows */
    float *Qs = Ks + KT * ldks; /* [AW, W] */
    float *Ps = Qs + AW * W;    /* [AW, KT] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r = blockIdx.x * AW + warp, nr = n * nh, Tk = p0 + n;
    const int t = r / nh, h = r % nh;
    const bool row = r < nr;
    const int last = p0 + min(nr - 1, (int)blockIdx.x * AW + AW - 1) / nh; /* the block's last key */
    const int lim = p0 + t;                                                 /* the row's keys: 0..lim */
    float *qw = Qs + warp * W, *pw = Ps + warp * KT;
    if (row)
        for (int c = lane; c < W; c += 32) qw[c] = q[((size_t)t * nh + h) * W + c];
    float m = -INFINITY, lsum = 0.0f, acc[NV];
#pragma unroll
    for (int i = 0; i < NV; i++) acc[i] = 0.0f;
    for (int j0 = 0; j0 <= last; j0 += KT) {
        __syncthreads(); /* the previous tile is consumed */
        for (int rr = warp; rr < KT; rr += AW) {
            const int j = j0 + rr;
            for (int c = lane; c < W; c += 32) Ks[rr * ldks + c] = j < Tk ? cache[(size_t)j * W + c] : 0.0f;
        }
        __syncthreads();
        if (row && j0 <= lim) { /* warp-uniform */
            const int j = j0 + lane;
            float sc = -INFINITY;
            if (j <= lim) {
                float d = 0.0f;
                for (int c = 0; c < W; c++) d += qw[c] * Ks[lane * ldks + c];
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
            for (int rr = 0; rr < nk; rr++) { /* rows outer, columns unrolled: acc stays in registers */
                const float pr = pw[rr];
#pragma unroll
                for (int i = 0; i < NV; i++)
                    if (lane + 32 * i < kvl) acc[i] += pr * Ks[rr * ldks + lane + 32 * i];
            }
            __syncwarp(0xffffffffu); /* pw is rewritten by the next tile */
            m = mn;
        }
    }
    if (row) {
        const float l = dsv3::warp_sum(lsum);
        float *o = out + ((size_t)t * nh + h) * kvl;
#pragma unroll
        for (int i = 0; i < NV; i++)
            if (lane + 32 * i < kvl) o[lane + 32 * i] = acc[i] / l;
    }
}

/* dynamic shared memory above 48 KiB needs the kernel's opt-in */
template <class K> cudaError_t smem_opt_in(K kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return cudaSuccess;
    /* beyond the device's opt-in limit this fails (cudaErrorInvalidValue) */
    return cudaFuncSetAttribute(reinterpret_cast<const void *>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
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

/* C[m,n] (column-major) = alpha·op(A)·op(B) + beta·C for each of `batch`
 * matrices at strides sA, sB, sC (in elements of A, B, C): fp32 C and compute;
 * A and B fp32 (no TF32), or bf16 (ab = CUDA_R_16BF: tensor cores) */
static cudaError_t gemm_batch(cudaStream_t s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              float alpha, const void *A, int lda, long long sA, const void *B, int ldb, long long sB,
                              float beta, float *C, int ldc, long long sC, int batch, cudaDataType ab = CUDA_R_32F) {
    const cublasStatus_t st =
        cublasGemmStridedBatchedEx(cu_blas(s), ta, tb, m, n, k, &alpha, A, ab, lda, sA, B, ab, ldb, sB, &beta, C,
                                   CUDA_R_32F, ldc, sC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown;
}

/* the chunk rows and the floats of one score region, or 0 for arguments the ops refuse */
static size_t attn_region(int B, int T, int nh, int dqk, int dv, int rows) {
    if (dqk <= 0 || dv <= 0 || rows <= 0) return 0;
    return ops_arena_round((size_t)B * nh * (rows < T ? rows : T) * T);
}
/* floats of n bf16 values, as an arena take */
static size_t halves(size_t n) { return ops_arena_round((n + 1) / 2); }

/* The bf16 copies (bf16 mode) after the score regions: k and v whole, one chunk of q (and dout) rows
 * [B, min(rows, T), nh·d] (ops_attn.h, the CUDA term of ops_attention_bf16_floats) */
struct attn_bf16 {
    __nv_bfloat16 *k, *v, *qc, *dc;
};
static attn_bf16 attn_bf16_at(float *w, int B, int T, int nh, int dqk, int dv, int rows) {
    const size_t nq = (size_t)B * T * nh * dqk, nv = (size_t)B * T * nh * dv, bq = rows < T ? rows : T;
    float *v = w + halves(nq), *qc = v + halves(nv), *dc = qc + halves((size_t)B * bq * nh * dqk);
    return {(__nv_bfloat16 *)w, (__nv_bfloat16 *)v, (__nv_bfloat16 *)qc, (__nv_bfloat16 *)dc};
}
extern "C" size_t cu_attention_work_floats(int B, int T, int nh, int dqk, int dv, int rows, int backward, int bf16) {
    const size_t region = attn_region(B, T, nh, dqk, dv, rows);
    if (B <= 0 || T <= 0 || nh <= 0 || region == 0) return 0;
    size_t n = (backward ? 2 : 1) * region;
    if (bf16) {
        const size_t bq = rows < T ? rows : T;
        n += halves((size_t)B * T * nh * dqk) + halves((size_t)B * T * nh * dv) + halves((size_t)B * bq * nh * dqk) +
             (backward ? halves((size_t)B * bq * nh * dv) : 0);
    }
    return n;
}
/* The k and v operands of a call: fp32 as given, or (bf16) their bf16 copies, converted here once per call;
 * ab / el: the operands' cuBLAS type and element bytes */
struct attn_kv {
    const char *K0, *V0;
    cudaDataType ab;
    size_t el;
};
static cudaError_t attn_kv_at(attn_kv *o, const attn_bf16 &c, const float *k, const float *v, size_t nk, size_t nv,
                              int bf16, cudaStream_t s) {
    o->ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    o->el = bf16 ? 2 : 4;
    o->K0 = bf16 ? (const char *)c.k : (const char *)k;
    o->V0 = bf16 ? (const char *)c.v : (const char *)v;
    if (!bf16) return cudaSuccess;
    cudaError_t e = cu_to_bf16((uint16_t *)c.k, k, nk, s);
    return e ? e : cu_to_bf16((uint16_t *)c.v, v, nv, s);
}
/* Chunk [t0, t1) of query rows, bq = t1 - t0: nr softmax rows (B·nh·bq), the score head stride ss
 * (fp32 elements) and, as GEMM operands, sp / ldp (bf16 elements when the rows hold bf16 P / dS) */
struct attn_chunk {
    int bq, t1, nr, ldp;
    long long ss, sp;
};
static attn_chunk attn_chunk_at(int B, int T, int nh, int rows, int t0, int bf16) {
    attn_chunk k;
    k.bq = T - t0 < rows ? T - t0 : rows;
    k.t1 = t0 + k.bq;
    k.nr = B * nh * k.bq;
    k.ss = (long long)k.bq * k.t1;
    k.sp = bf16 ? 2 * k.ss : k.ss;
    k.ldp = bf16 ? 2 * k.t1 : k.t1;
    return k;
}
/* bf16 copy of rows [t0, t0 + bq) of every sequence of x [B·T, w] into dst [B, bq, w] */
static cudaError_t chunk_bf16(__nv_bfloat16 *dst, const float *x, int B, int T, int w, int t0, int bq, cudaStream_t s) {
    cudaError_t e = cudaSuccess;
    for (int b = 0; b < B && !e; b++)
        e = cu_to_bf16((uint16_t *)dst + (size_t)b * bq * w, x + ((size_t)b * T + t0) * w, (size_t)bq * w, s);
    return e;
}

/* Row-major X[r, c] with row stride L is column-major Xᵀ [c, r] with leading
 * dimension L, so each row-major product below is the column-major GEMM of
 * the transposes. Per chunk [t0, t1), bq = t1 - t0, and sequence b, batched
 * over the nh heads (head stride dqk or dv in q, k, v; bq·t1 in the scores):
 *   S[bq, t1] = scale·Q_c·Kᵀ    GemmEx(T, N, t1, bq, dqk: K, Q_c)
 *   O_c = P·V                   GemmEx(N, N, dv, bq, t1:  V, P)
 * bf16 mode (ops_attn.h "Precision"): k and v are converted once per call and
 * q per chunk; the softmax writes P as bf16 in place (row stride 2·t1 bf16,
 * head stride 2·bq·t1), and the GEMMs take bf16 operands. */
extern "C" cudaError_t cu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                            int B, int T, int nh, int dqk, int dv, float scale, int bf16, int rows,
                                            float *work, size_t work_floats, cudaStream_t s) {
    if (B <= 0 || T <= 0 || nh <= 0) return cudaSuccess;
    const size_t region = attn_region(B, T, nh, dqk, dv, rows);
    if (region == 0 || work_floats < cu_attention_work_floats(B, T, nh, dqk, dv, rows, 0, bf16))
        return cudaErrorInvalidValue;
    const int ldq = nh * dqk, ldv = nh * dv;
    const attn_bf16 c = attn_bf16_at(work + region, B, T, nh, dqk, dv, rows);
    attn_kv o;
    cudaError_t e = attn_kv_at(&o, c, k, v, (size_t)B * T * ldq, (size_t)B * T * ldv, bf16, s);
    for (int t0 = 0; t0 < T && !e; t0 += rows) {
        const attn_chunk h = attn_chunk_at(B, T, nh, rows, t0, bf16);
        const int bq = h.bq, t1 = h.t1;
        const long long ss = h.ss;
        if (bf16) e = chunk_bf16(c.qc, q, B, T, ldq, t0, bq, s);
        for (int b = 0; b < B && !e; b++) {
            const void *Qc = bf16 ? (const void *)(c.qc + (size_t)b * bq * ldq)
                                  : (const void *)(q + ((size_t)b * T + t0) * ldq);
            e = gemm_batch(s, CUBLAS_OP_T, CUBLAS_OP_N, t1, bq, dqk, scale, o.K0 + (size_t)b * T * ldq * o.el, ldq, dqk,
                           Qc, ldq, dqk, 0.0f, work + (size_t)b * nh * ss, t1, ss, nh, o.ab);
        }
        if (!e)
            e = dsv3::launch(bf16 ? attn_softmax_kernel<true> : attn_softmax_kernel<false>, dim3((h.nr + SW - 1) / SW),
                             dim3(SW * 32), 0, s, work, lse, h.nr, bq, t0, t1, T);
        for (int b = 0; b < B && !e; b++) /* P: the fp32 scores, or the bf16 rows written in place */
            e = gemm_batch(s, CUBLAS_OP_N, CUBLAS_OP_N, dv, bq, t1, 1.0f, o.V0 + (size_t)b * T * ldv * o.el, ldv, dv,
                           (const char *)(work + (size_t)b * nh * ss), h.ldp, h.sp, 0.0f,
                           out + ((size_t)b * T + t0) * ldv, ldv, dv, nh, o.ab);
    }
    return e;
}

/* The backward per chunk, as the forward (P in the first region, dP then dS in the second):
 *   S = scale·Q_c·Kᵀ            GemmEx(T, N, t1, bq, dqk: K, Q_c)
 *   dP = dO_c·Vᵀ                GemmEx(T, N, t1, bq, dv:  V, dO_c)
 *   P, dS                       attn_softmax_bwd_kernel
 *   dQ_c += dS·K                GemmEx(N, N, dqk, bq, t1: K, dS)
 *   dK[0:t1] += dSᵀ·Q_c         GemmEx(N, T, dqk, t1, bq: Q_c, dS)
 *   dV[0:t1] += Pᵀ·dO_c         GemmEx(N, T, dv, t1, bq:  dO_c, P)
 * Chunks in order: dK and dV sum the chunks in a fixed order. bf16 mode: the
 * operands as in the forward (k, v per call; q, dout per chunk; P and dS
 * bf16 in place). */
extern "C" cudaError_t cu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                             const float *k, const float *v, const float *lse, int B, int T, int nh,
                                             int dqk, int dvd, float scale, int bf16, int rows, float *work,
                                             size_t work_floats, cudaStream_t s) {
    if (B <= 0 || T <= 0 || nh <= 0) return cudaSuccess;
    const size_t region = attn_region(B, T, nh, dqk, dvd, rows);
    if (region == 0 || work_floats < cu_attention_work_floats(B, T, nh, dqk, dvd, rows, 1, bf16))
        return cudaErrorInvalidValue;
    const int ldq = nh * dqk, ldv = nh * dvd;
    float *P = work, *G = work + region;
    const attn_bf16 c = attn_bf16_at(work + 2 * region, B, T, nh, dqk, dvd, rows);
    /* the operands: fp32 as given, or the bf16 copies (q, dout: this chunk's rows of sequence b) */
    attn_kv o;
    cudaError_t e = attn_kv_at(&o, c, k, v, (size_t)B * T * ldq, (size_t)B * T * ldv, bf16, s);
    const cudaDataType ab = o.ab;
    for (int t0 = 0; t0 < T && !e; t0 += rows) {
        const attn_chunk h = attn_chunk_at(B, T, nh, rows, t0, bf16);
        const int bq = h.bq, t1 = h.t1, ldp = h.ldp;
        const long long ss = h.ss, sp = h.sp;
        if (bf16) {
            e = chunk_bf16(c.qc, q, B, T, ldq, t0, bq, s);
            if (!e) e = chunk_bf16(c.dc, dout, B, T, ldv, t0, bq, s);
        }
        auto Qc = [&](int b) -> const void * {
            return bf16 ? (const void *)(c.qc + (size_t)b * bq * ldq) : (const void *)(q + ((size_t)b * T + t0) * ldq);
        };
        auto dOc = [&](int b) -> const void * {
            return bf16 ? (const void *)(c.dc + (size_t)b * bq * ldv)
                        : (const void *)(dout + ((size_t)b * T + t0) * ldv);
        };
        for (int b = 0; b < B && !e; b++) {
            const void *K = o.K0 + (size_t)b * T * ldq * o.el, *V = o.V0 + (size_t)b * T * ldv * o.el;
            float *Pb = P + (size_t)b * nh * ss, *Gb = G + (size_t)b * nh * ss;
            e = gemm_batch(s, CUBLAS_OP_T, CUBLAS_OP_N, t1, bq, dqk, scale, K, ldq, dqk, Qc(b), ldq, dqk, 0.0f, Pb, t1,
                           ss, nh, ab);
            if (!e)
                e = gemm_batch(s, CUBLAS_OP_T, CUBLAS_OP_N, t1, bq, dvd, 1.0f, V, ldv, dvd, dOc(b), ldv, dvd, 0.0f, Gb,
                               t1, ss, nh, ab);
        }
        if (!e)
            e = dsv3::launch(bf16 ? attn_softmax_bwd_kernel<true> : attn_softmax_bwd_kernel<false>,
                             dim3((h.nr + SW - 1) / SW), dim3(SW * 32), 0, s, P, G, lse, h.nr, bq, t0, t1, T, scale);
        for (int b = 0; b < B && !e; b++) {
            const size_t oq = (size_t)b * T * ldq, ov = (size_t)b * T * ldv;
            const void *K = o.K0 + oq * o.el;
            /* the scores of sequence b as GEMM operands: fp32, or the bf16 rows written in place */
            const void *Pb = (const char *)(P + (size_t)b * nh * ss), *Gb = (const char *)(G + (size_t)b * nh * ss);
            e = gemm_batch(s, CUBLAS_OP_N, CUBLAS_OP_N, dqk, bq, t1, 1.0f, K, ldq, dqk, Gb, ldp, sp, 1.0f,
                           dq + oq + (size_t)t0 * ldq, ldq, dqk, nh, ab);
            if (!e)
                e = gemm_batch(s, CUBLAS_OP_N, CUBLAS_OP_T, dqk, t1, bq, 1.0f, Qc(b), ldq, dqk, Gb, ldp, sp, 1.0f,
                               dk + oq, ldq, dqk, nh, ab);
            if (!e)
                e = gemm_batch(s, CUBLAS_OP_N, CUBLAS_OP_T, dvd, t1, bq, 1.0f, dOc(b), ldv, dvd, Pb, ldp, sp, 1.0f,
                               dv + ov, ldv, dvd, nh, ab);
        }
    }
    return e;
}

extern "C" cudaError_t cu_latent_attention(float *out, const float *q, const float *cache, int n, int nh, int W,
                                           int kvl, int p0, float scale, cudaStream_t s) {
    if (n <= 0 || nh <= 0) return cudaSuccess;
    if (W <= 0 || kvl <= 0 || kvl > 512 || kvl > W) return cudaErrorInvalidValue;
    const size_t smem = sizeof(float) * ((size_t)KT * odd(W) + (size_t)AW * W + (size_t)AW * KT);
    const dim3 grid((unsigned)(((size_t)n * nh + AW - 1) / AW));
    auto run = [&](auto kernel) {
        cudaError_t e = smem_opt_in(kernel, smem);
        if (e != cudaSuccess) return e;
        return dsv3::launch(kernel, grid, dim3(AT), smem, s, out, q, cache, n, nh, p0, W, kvl, scale);
    };
    if (kvl <= 32) return run(latent_attn_kernel<1>);
    if (kvl <= 128) return run(latent_attn_kernel<4>);
    return run(latent_attn_kernel<16>);
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
 * (the CE row losses, the small results) lives in grow-only device buffers
 * owned here (cu_devbuf: charged to OPS_MEM_OTHER); attention's score regions
 * come from the caller's arena (ops_attn.h). ---- */

namespace {
enum { SCR_CE_ROWS, SCR_CE_RES, SCR_EMB_BAD, SCR_EMB_SORT, SCR_ARGMAX, SCR_N };
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
                           int nh, int dqk, int dv, float scale, ops_arena *scratch) {
    if (B <= 0 || T <= 0 || nh <= 0) return;
    /* at most ops_attention_scratch_floats (the CUDA layout of ops_attn.h) */
    const int bf16 = ops_gemm_get() != OPS_GEMM_F32, rows = ops_attention_chunk_rows(B, T, nh);
    const size_t mark = ops_arena_mark(scratch), n = cu_attention_work_floats(B, T, nh, dqk, dv, rows, 0, bf16);
    float *work = ops_arena_take(scratch, n);
    CU_CHECK(cu_attention_forward(out, lse, q, k, v, B, T, nh, dqk, dv, scale, bf16, rows, work, n, cu_stream()));
    ops_arena_release(scratch, mark); /* the stream orders the region's next use after these kernels */
}
void ops_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *lse, int B, int T, int nh, int dqk, int dvd, float scale,
                            ops_arena *scratch) {
    if (B <= 0 || T <= 0 || nh <= 0) return;
    const int bf16 = ops_gemm_get() != OPS_GEMM_F32, rows = ops_attention_chunk_rows(B, T, nh);
    const size_t mark = ops_arena_mark(scratch), n = cu_attention_work_floats(B, T, nh, dqk, dvd, rows, 1, bf16);
    float *work = ops_arena_take(scratch, n);
    CU_CHECK(cu_attention_backward(dq, dk, dv, dout, q, k, v, lse, B, T, nh, dqk, dvd, scale, bf16, rows, work, n,
                                   cu_stream()));
    ops_arena_release(scratch, mark);
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

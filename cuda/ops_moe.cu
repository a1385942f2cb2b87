/* ops_moe.cu — CUDA twin of src/ops_cpu_moe.c: the feed-forward-side ops of
 * ops_moe.h. fp32 storage, as the CPU reference; conventions in cu_ops.h,
 * launchers in cu_ops_moe.h.
 *
 * Determinism (README "CUDA backend", rule 6): every output element is written
 * by one thread in a fixed order; the only atomics are integer counts
 * (order-independent): in shared memory, the dispatch's pairs per expert, and
 * the received rows' pair counts.
 * Routing, the balance loss, the sorts, the dispatch bookkeeping and the bias
 * update follow the CPU op's arithmetic order exactly (serial sums where the
 * CPU sums serially), so their selections and integer outputs are the CPU's
 * bit for bit; the wire conversions are NVIDIA's, bit for bit the CPU's. */
#include "dsv3_cuda.cuh"

#include <cublas_v2.h>

#include <mutex>

#include "cu_ops.h"
#include "cu_ops_moe.h"

namespace {
constexpr unsigned FULL = 0xffffffffu;
constexpr int EW = 256; /* threads per block of the elementwise kernels */

__device__ __forceinline__ float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

/* threads for a row of C columns: a warp multiple, at most 256 (narrow rows waste no warps) */
inline unsigned row_threads(int C) { return C >= 256 ? 256u : (unsigned)((C + 31) / 32 * 32); }

/* ---- SwiGLU and sigmoid: one thread per element (grid-stride over T·n) ---- */

__global__ void swiglu_fwd_kernel(float *h, const float *g, int gs, const float *u, int us, int T, int n) {
    const size_t N = (size_t)T * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / n, c = i % n;
        float gv = g[t * gs + c];
        h[i] = gv * sigmoidf_(gv) * u[t * us + c];
    }
}

__global__ void swiglu_bwd_kernel(float *dg, int dgs, float *du, int dus, const float *dh, const float *g, int gs,
                                  const float *u, int us, int T, int n) {
    const size_t N = (size_t)T * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / n, c = i % n;
        float gv = g[t * gs + c], uv = u[t * us + c], d = dh[i];
        float sg = sigmoidf_(gv);
        /* silu'(z) = σ(z)·(1 + z·(1 − σ(z))) */
        dg[t * dgs + c] += d * uv * sg * (1.0f + gv * (1.0f - sg));
        du[t * dus + c] += d * (gv * sg);
    }
}

__global__ void sigmoid_kernel(float *y, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = sigmoidf_(x[i]);
}

/* ---- Routing: one warp per token ----
 * Shared memory per warp: sc [E] (biased scores), gscore [ng], keep [E] bytes.
 * The group scores and the group choice are the CPU's serial loops (lane g
 * scores group g; lane 0 picks the groups), so ties break identically. Each
 * of the K expert picks is an arg-max over the kept experts: every lane scans
 * its experts in increasing order keeping the first maximum, then a butterfly
 * over the lanes orders candidates by (larger value, then lower index) — a
 * total order, so every lane gets the CPU's pick: the largest sc, the lowest
 * index among equals. */
constexpr int RW = 4; /* tokens (warps) per block */

__global__ void __launch_bounds__(RW * 32) route_kernel(int *idx, float *w, const float *s, const float *bias, int T,
                                                         int E, int K, int ng, int kg, int norm, float scale) {
    DSV3_DYNAMIC_SHARED(float, sm);
    const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    const int t = blockIdx.x * RW + wp;
    if (t >= T) return; /* the whole warp: this kernel has no block barrier */
    float *sc = sm + (size_t)wp * (E + ng), *gscore = sc + E;
    unsigned char *keep = reinterpret_cast<unsigned char *>(sm + (size_t)RW * (E + ng)) + (size_t)wp * E;
    const float *st = s + (size_t)t * E;

    for (int e = lane; e < E; e += 32) sc[e] = st[e] + (bias ? bias[e] : 0.0f);
    __syncwarp(FULL);
    if (ng > 1) {
        const int gsz = E / ng;
        for (int g = lane; g < ng; g += 32) { /* sum of the group's 2 largest sc */
            float m1 = -INFINITY, m2 = -INFINITY;
            for (int e = g * gsz; e < (g + 1) * gsz; e++) {
                float v = sc[e];
                if (v > m1) {
                    m2 = m1;
                    m1 = v;
                } else if (v > m2) {
                    m2 = v;
                }
            }
            gscore[g] = gsz >= 2 ? m1 + m2 : m1;
        }
        for (int e = lane; e < E; e += 32) keep[e] = 0;
        __syncwarp(FULL);
        if (lane == 0)
            for (int j = 0; j < kg; j++) {
                int best = -1;
                for (int g = 0; g < ng; g++) /* keep[g*gsz] marks a kept group */
                    if (!keep[g * gsz] && (best < 0 || gscore[g] > gscore[best])) best = g;
                if (best < 0) break;
                for (int e = best * gsz; e < (best + 1) * gsz; e++) keep[e] = 1;
            }
    } else {
        for (int e = lane; e < E; e += 32) keep[e] = 1;
    }
    __syncwarp(FULL);

    /* The host checked that the kept groups hold at least K experts: bi >= 0. */
    int *it = idx + (size_t)t * K;
    double S = 0.0; /* lane 0: Σ of the unbiased scores, in k order as the CPU */
    for (int k = 0; k < K; k++) {
        float bv = 0.0f;
        int bi = -1;
        for (int e = lane; e < E; e += 32)
            if (keep[e] && (bi < 0 || sc[e] > bv)) bv = sc[e], bi = e;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(FULL, bv, o);
            int oi = __shfl_xor_sync(FULL, bi, o);
            if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
        }
        if (lane == 0) {
            it[k] = bi;
            keep[bi] = 0;
            S += st[bi];
        }
        __syncwarp(FULL);
    }
    if (w && lane == 0) {
        float inv = norm ? (float)(1.0 / S) : 1.0f;
        for (int k = 0; k < K; k++) w[(size_t)t * K + k] = st[it[k]] * inv * scale;
    }
}

/* one thread per token: K is small, the CPU's serial sums */
__global__ void route_bwd_kernel(float *dlogits, const float *dw, const float *s, const int *idx, int T, int E, int K,
                                 int norm, float scale) {
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < T; t += gridDim.x * blockDim.x) {
        const float *st = s + (size_t)t * E, *dwt = dw + (size_t)t * K;
        const int *it = idx + (size_t)t * K;
        float *dl = dlogits + (size_t)t * E;
        double S = 0.0, a = 0.0;
        for (int k = 0; k < K; k++) {
            S += st[it[k]];
            a += (double)dwt[k] * st[it[k]];
        }
        for (int k = 0; k < K; k++) {
            float sj = st[it[k]];
            /* w_j = scale·s_j/S: ∂L/∂s_j = scale·(dw_j − Σ_k dw_k s_k/S)/S */
            double ds = norm ? scale * ((double)dwt[k] - a / S) / S : (double)scale * dwt[k];
            dl[it[k]] += (float)(ds * sj * (1.0f - sj));
        }
    }
}

/* ---- Balance loss ----
 * Block per sequence (forward) or per (row chunk, sequence) (backward). The
 * expert counts of a sequence come from integer shared-memory atomics; a row's
 * Σ_e s is summed serially by one thread (the CPU's order), P_e by the thread
 * owning expert e over the rows in order. */
constexpr int BB = 256; /* threads per balance block = rows per tile */

__device__ void balance_counts(int *cnt, const int *topk, int T, int E, int K) {
    for (int e = threadIdx.x; e < E; e += BB) cnt[e] = 0;
    __syncthreads();
    for (size_t j = threadIdx.x; j < (size_t)T * K; j += BB) atomicAdd(&cnt[topk[j]], 1);
    __syncthreads();
}

/* smem: rs [BB] doubles, P [E] doubles, cnt [E] ints */
__global__ void __launch_bounds__(BB) balance_kernel(const float *s, const int *topk, int T, int E, int K,
                                                      double *out) {
    DSV3_DYNAMIC_SHARED(double, rs);
    double *P = rs + BB;
    int *cnt = reinterpret_cast<int *>(P + E);
    const int b = blockIdx.x;
    const float *sb = s + (size_t)b * T * E;
    balance_counts(cnt, topk + (size_t)b * T * K, T, E, K);
    for (int e = threadIdx.x; e < E; e += BB) P[e] = 0.0;
    for (int t0 = 0; t0 < T; t0 += BB) {
        const int t = t0 + threadIdx.x;
        if (t < T) {
            const float *st = sb + (size_t)t * E;
            double S = 0.0;
            for (int e = 0; e < E; e++) S += st[e];
            rs[threadIdx.x] = S;
        }
        __syncthreads();
        const int nt = T - t0 < BB ? T - t0 : BB;
        for (int e = threadIdx.x; e < E; e += BB)
            for (int i = 0; i < nt; i++) P[e] += sb[(size_t)(t0 + i) * E + e] / rs[i];
        __syncthreads();
    }
    if (threadIdx.x == 0) { /* Σ_i f_i·P_i/T in expert order, f_i = E/(K·T)·count_i */
        const double c = (double)E / ((double)K * T);
        double v = 0.0;
        for (int e = 0; e < E; e++) v += (double)cnt[e] * c * P[e] / T;
        out[b] = v;
    }
}

__global__ void balance_total_kernel(double *out, int B) {
    double v = 0.0;
    for (int b = 0; b < B; b++) v += out[b];
    out[B] = v;
}

/* smem: g [E] doubles, Sa [2·BB] doubles (per row: S, a), cnt [E] ints */
__global__ void __launch_bounds__(BB) balance_bwd_kernel(float *dlogits, const float *s, const int *topk, int T, int E,
                                                          int K, float coef) {
    DSV3_DYNAMIC_SHARED(double, g);
    double *Sa = g + E;
    int *cnt = reinterpret_cast<int *>(Sa + 2 * BB);
    const int b = blockIdx.y, t0 = blockIdx.x * BB;
    balance_counts(cnt, topk + (size_t)b * T * K, T, E, K);
    const double c = (double)E / ((double)K * T);
    for (int e = threadIdx.x; e < E; e += BB) g[e] = (double)cnt[e] * c * ((double)coef / T); /* ∂L/∂s'_{t,e} */
    __syncthreads();
    const size_t r0 = (size_t)b * T + t0;
    const int nt = T - t0 < BB ? T - t0 : BB;
    if ((int)threadIdx.x < nt) {
        const float *st = s + (r0 + threadIdx.x) * E;
        double S = 0.0, a = 0.0;
        for (int e = 0; e < E; e++) S += st[e];
        for (int e = 0; e < E; e++) a += g[e] * st[e];
        Sa[2 * threadIdx.x] = S;
        Sa[2 * threadIdx.x + 1] = a / S;
    }
    __syncthreads();
    /* s' = s/S: ∂L/∂s_e = (g_e − Σ_j g_j s'_j)/S */
    for (int i = 0; i < nt; i++) {
        const float *st = s + (r0 + i) * E;
        float *dl = dlogits + (r0 + i) * E;
        const double S = Sa[2 * i], a = Sa[2 * i + 1];
        for (int e = threadIdx.x; e < E; e += BB) dl[e] += (float)((g[e] - a) / S * st[e] * (1.0f - st[e]));
    }
}

/* ---- Rows: a block per row (grid-stride), threads over the columns ---- */

__global__ void gather_kernel(float *dst, const float *src, const int *idx, int n, int C) {
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const float *s = src + (size_t)idx[i] * C;
        float *d = dst + (size_t)i * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
    }
}

__global__ void scatter_kernel(float *dst, const float *src, const int *idx, int n, int C) {
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const float *s = src + (size_t)i * C;
        float *d = dst + (size_t)idx[i] * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
    }
}

constexpr int CB = 128; /* threads per combine-backward block (block_sum needs it fixed) */

/* ---- Dispatch bookkeeping, one row per (token, destination rank) ----
 * Expert owners come from a table in shared memory (owner[e], built from efirst
 * by each block). The tokens are cut into chunks of DB, a block per chunk and a
 * thread per token: for each destination rank r a token has cnt pairs on r (its
 * row exists when cnt > 0). A first pass counts each chunk's rows and pairs per
 * rank into tables [P, chunks]; their prefix sums (rank-major, then chunk) are
 * where a chunk's rows and pairs for r start in the destination-major layout; a
 * second pass places them, block-wide scans giving each token its row and first
 * pair within its chunk — the CPU's destination-major, token-order layout, with
 * no atomics and O(N·P) work spread over N/DB blocks. */
constexpr int DB = 256; /* tokens (threads) per dispatch block */

/* owner[e] = the r with efirst[r] <= e < efirst[r+1] (the largest r with efirst[r] <= e: ranks without experts skipped) */
__device__ void owner_table(int *owner, const int *efirst, int P, int E) {
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int lo = 0, hi = P - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (efirst[mid] <= e) lo = mid;
            else hi = mid - 1;
        }
        owner[e] = lo;
    }
    __syncthreads();
}

/* token t on rank r: its pairs there (cnt), and (lower) how many distinct ranks below r it sends a row to */
__device__ __forceinline__ void token_on_rank(const int *it, const int *owner, int K, int r, int &cnt, int &lower) {
    cnt = 0, lower = 0;
    for (int k = 0; k < K; k++) {
        const int o = owner[it[k]];
        if (o == r) {
            cnt++;
        } else if (o < r) {
            bool first = true;
            for (int j = 0; j < k; j++) first = first && owner[it[j]] != o;
            lower += first;
        }
    }
}

/* Exclusive scans of a and b over the DB threads of the block (ea, eb), and their totals. */
__device__ void block_scan2(int a, int b, int &ea, int &eb, int &ta, int &tb) {
    __shared__ int wa[DB / 32], wb[DB / 32];
    const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    const int ia = dsv3::warp_scan_incl(a), ib = dsv3::warp_scan_incl(b);
    if (lane == 31) wa[wp] = ia, wb[wp] = ib;
    __syncthreads();
    int pa = 0, pb = 0;
    ta = 0, tb = 0;
    for (int w = 0; w < DB / 32; w++) {
        if (w < wp) pa += wa[w], pb += wb[w];
        ta += wa[w], tb += wb[w];
    }
    ea = pa + ia - a, eb = pb + ib - b;
    __syncthreads(); /* wa, wb are rewritten by the next call */
}

/* smem: owner [E] ints. rows[r·nch + c], pairs[r·nch + c]: chunk c's rows and pairs for rank r. */
__global__ void __launch_bounds__(DB) disp_count_kernel(int *rows, int *pairs, const int *idx, const int *efirst, int N,
                                                        int K, int P, int E, int nch) {
    DSV3_DYNAMIC_SHARED(int, owner);
    owner_table(owner, efirst, P, E);
    const int c = blockIdx.x, t = c * DB + threadIdx.x;
    for (int r = 0; r < P; r++) {
        int cnt = 0, lower = 0, er, ep, tr, tp;
        if (t < N) token_on_rank(idx + (size_t)t * K, owner, K, r, cnt, lower);
        block_scan2(cnt > 0, cnt, er, ep, tr, tp);
        if (threadIdx.x == 0) rows[r * nch + c] = tr, pairs[r * nch + c] = tp;
    }
}

/* scnt[r], spc[r]: the sums of rank r's row of the chunk tables (before their scan) */
__global__ void disp_total_kernel(int *scnt, int *spc, const int *rows, const int *pairs, int P, int nch) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < P; r += gridDim.x * blockDim.x) {
        int a = 0, b = 0;
        for (int c = 0; c < nch; c++) a += rows[r * nch + c], b += pairs[r * nch + c];
        scnt[r] = a, spc[r] = b;
    }
}

/* ecnt[e] += the pairs on expert e (integer atomics on zeroed counts: order-independent) */
__global__ void disp_ecnt_kernel(int *ecnt, const int *idx, int NK) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < NK; j += gridDim.x * blockDim.x)
        atomicAdd(&ecnt[idx[j]], 1);
}

/* toff[t+1] = the number of ranks token t sends a row to (distinct owners of its K experts); toff[0] = 0 */
__global__ void disp_rows_kernel(int *toff, const int *idx, const int *efirst, int N, int K, int P, int E) {
    DSV3_DYNAMIC_SHARED(int, owner);
    owner_table(owner, efirst, P, E);
    if (blockIdx.x == 0 && threadIdx.x == 0) toff[0] = 0;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < N; t += gridDim.x * blockDim.x) {
        const int *it = idx + (size_t)t * K;
        int n = 0;
        for (int k = 0; k < K; k++) {
            bool first = true;
            for (int j = 0; j < k; j++) first = first && owner[it[j]] != owner[it[k]];
            n += first;
        }
        toff[t + 1] = n;
    }
}

/* smem: owner [E] ints. rows/pairs: the chunk tables after their inclusive scans. Places
 * chunk c's rows (stok, trows) and pairs (ptk, smeta) for every rank. */
__global__ void __launch_bounds__(DB) disp_place_kernel(int *stok, int *trows, int *ptk, int *smeta, const int *toff,
                                                        const int *rows, const int *pairs, const int *idx,
                                                        const float *w, const int *efirst, int N, int K, int P, int E,
                                                        int nch) {
    DSV3_DYNAMIC_SHARED(int, owner);
    owner_table(owner, efirst, P, E);
    const int c = blockIdx.x, t = c * DB + threadIdx.x;
    for (int r = 0; r < P; r++) {
        int cnt = 0, lower = 0, er, ep, tr, tp;
        if (t < N) token_on_rank(idx + (size_t)t * K, owner, K, r, cnt, lower);
        block_scan2(cnt > 0, cnt, er, ep, tr, tp);
        if (cnt == 0) continue; /* no barrier follows in this iteration */
        const int i = r * nch + c, row0 = r > 0 ? rows[r * nch - 1] : 0; /* rank r's first send row */
        const int j = (i > 0 ? rows[i - 1] : 0) + er; /* the send row */
        stok[j] = t;
        trows[toff[t] + lower] = j; /* t's rows in increasing destination */
        int q = (i > 0 ? pairs[i - 1] : 0) + ep;
        const int e0 = efirst[r];
        for (int k = 0; k < K; k++) {
            const int e = idx[(size_t)t * K + k];
            if (owner[e] != r) continue;
            ptk[q] = t * K + k;
            smeta[3 * (size_t)q] = j - row0;
            smeta[3 * (size_t)q + 1] = e - e0;
            smeta[3 * (size_t)q + 2] = __float_as_int(w[(size_t)t * K + k]);
            q++;
        }
    }
}

constexpr int SB = 256; /* threads of the one-block scans (dsv3::scan_incl_kernel) */

/* ---- Receiver side: the pairs by local expert (a stable counting sort: one
 * warp per expert scans the pairs in order, 32 at a time; a ballot marks the
 * expert's pairs and the popcount of the lower lanes is a pair's rank),
 * weights and per-row pair counts ---- */
constexpr int SW = 4; /* experts (warps) per block */


__global__ void __launch_bounds__(SW * 32) recv_count_kernel(int *lcnt, const int *rmeta, int Pr, int G) {
    const int lane = threadIdx.x & 31, g = blockIdx.x * SW + (threadIdx.x >> 5);
    if (g >= G) return;
    int c = 0;
#pragma unroll 4
    for (int p0 = 0; p0 < Pr; p0 += 32) {
        const int p = p0 + lane;
        c += __popc(__ballot_sync(FULL, p < Pr && rmeta[3 * (size_t)p + 1] == g));
    }
    if (lane == 0) lcnt[g] = c;
}

/* source of received pair p: the largest r with rpo[r] <= p (sources that sent nothing skipped) */
__device__ __forceinline__ int pair_source(const int *rpo, int P, int p) {
    int lo = 0, hi = P - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (rpo[mid] <= p) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

__global__ void __launch_bounds__(SW * 32) recv_place_kernel(int *perm, int *pinv, const int *lcnt, const int *rmeta,
                                                              const int *roff, const int *rpo, int P, int Pr, int G) {
    const int lane = threadIdx.x & 31, g = blockIdx.x * SW + (threadIdx.x >> 5);
    if (g >= G) return;
    int off = 0; /* expert-major pairs of experts before g */
    for (int f = 0; f < g; f++) off += lcnt[f];
    for (int p0 = 0; p0 < Pr; p0 += 32) {
        const int p = p0 + lane;
        const bool mine = p < Pr && rmeta[3 * (size_t)p + 1] == g;
        const unsigned m = __ballot_sync(FULL, mine);
        if (mine) {
            const int j = off + __popc(m & ((1u << lane) - 1u));
            perm[j] = roff[pair_source(rpo, P, p)] + rmeta[3 * (size_t)p];
            pinv[p] = j;
        }
        off += __popc(m);
    }
}

/* pw[p] from the record's bits; poff[row+1] counts the row's pairs (integer
 * atomics on zeroed poff: the counts, hence the prefix sum, are order-independent) */
__global__ void recv_pairs_kernel(float *pw, int *poff, const int *rmeta, const int *roff, const int *rpo, int P,
                                  int Pr) {
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < Pr; p += gridDim.x * blockDim.x) {
        const int *m = rmeta + 3 * (size_t)p;
        pw[p] = __int_as_float(m[2]);
        atomicAdd(&poff[roff[pair_source(rpo, P, p)] + m[0] + 1], 1);
    }
}

/* ---- Segmented combine: a block per row i, threads over the columns, the
 * row's pairs in order (beta 0: out is not read) ---- */
__global__ void combine_seg_kernel(float *out, const float *y, const int *off, const int *pos, const float *w, int n,
                                   int C, float beta) {
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        float *o = out + (size_t)i * C;
        const int p0 = off[i], p1 = off[i + 1];
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float v = beta == 0.0f ? 0.0f : beta != 1.0f ? o[c] * beta : o[c];
            for (int p = p0; p < p1; p++) v += (w ? w[p] : 1.0f) * y[(size_t)pos[p] * C + c];
            o[c] = v;
        }
    }
}

/* Its backward: per pair, dw = dout·y (double partials, fixed tree), then
 * dy = w·dout. dy may be y: each element is read and then written by the same
 * thread, and pos never repeats a row. */
__global__ void __launch_bounds__(CB) combine_seg_bwd_kernel(float *dy, float *dw, const float *dout, const float *y,
                                                              const int *off, const int *pos, const float *w, int n,
                                                              int C) {
    for (int i = blockIdx.x; i < n; i += gridDim.x) { /* block-uniform */
        const float *d = dout + (size_t)i * C;
        for (int p = off[i]; p < off[i + 1]; p++) {
            const size_t q = (size_t)pos[p];
            if (dw) {
                const float *yq = y + q * C;
                double a = 0.0;
                for (int c = threadIdx.x; c < C; c += CB) a += (double)d[c] * yq[c];
                a = dsv3::block_sum<CB>(a);
                if (threadIdx.x == 0) dw[p] = (float)a;
            }
            float *dyq = dy + q * C;
            const float wp = w[p];
            for (int c = threadIdx.x; c < C; c += CB) dyq[c] = wp * d[c];
        }
    }
}

/* ---- The wire, in place ----
 * Packed row i (rb bytes at i·rb) lies at or below fp32 row i (4C bytes at
 * 4C·i). The launcher runs rows in waves [a, b) whose packed bytes [a·rb, b·rb)
 * and fp32 bytes [4C·a, 4C·b) do not meet (b·rb <= 4C·a, or a wave of one
 * row): packing waves go up from row 0, unpacking waves down from row n. Within
 * a row a block of WB threads moves 128-value blocks in the CPU's order —
 * packing forward, unpacking backward, every read of a block before a barrier
 * and its writes after — so the row's own overlap is safe; fp8 scales are held
 * in shared memory (written after all codes, read before any value). */
constexpr int WB = OPS_FP8_BLOCK; /* threads per wire block: one value of a 128-block each */
constexpr int WIRE_MAXB = 1024;   /* scale blocks per row (the CPU op's limit) */

/* ops_f32_to_e4m3 / ops_f32_to_bf16 bit for bit (the same two lines as cuda/ops.cu's): NVIDIA's RNE
 * satfinite conversion with NaN -> 0x7F; RNE bf16 with a NaN kept quiet in its upper bits */
__device__ __forceinline__ uint8_t wire_e4m3(float x) {
    return isnan(x) ? (uint8_t)0x7F : (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ uint16_t wire_bf16(float x) {
    return isnan(x) ? (uint16_t)((__float_as_uint(x) >> 16) | 0x40) : __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

__global__ void __launch_bounds__(WB) wire_pack_kernel(unsigned char *buf, int a, int b, int C, int wire, size_t rb) {
    __shared__ float scs[WIRE_MAXB];
    const int nb = (C + WB - 1) / WB;
    for (int i = a + blockIdx.x; i < b; i += gridDim.x) {
        const float *x = reinterpret_cast<const float *>(buf + 4 * (size_t)i * C);
        unsigned char *o = buf + (size_t)i * rb;
        for (int k = 0; k < nb; k++) {
            const int c = k * WB + threadIdx.x;
            const float v = c < C ? x[c] : 0.0f;
            if (wire == OPS_WIRE_BF16) {
                __syncthreads(); /* block k read before it is written */
                if (c < C) reinterpret_cast<uint16_t *>(o)[c] = wire_bf16(v); /* i·rb = 2C·i: aligned */
            } else {
                const float amax = dsv3::block_max<WB>(fabsf(v)); /* its barriers order the reads first */
                const float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
                if (c < C) o[c] = wire_e4m3(v / sc);
                if (threadIdx.x == 0) scs[k] = sc;
            }
        }
        if (wire == OPS_WIRE_FP8) {
            __syncthreads();
            const unsigned char *sb = reinterpret_cast<const unsigned char *>(scs);
            for (int j = threadIdx.x; j < 4 * nb; j += WB) o[C + j] = sb[j]; /* bytes: o + C need not be aligned */
            __syncthreads(); /* scs is reused by the next row */
        }
    }
}

__global__ void __launch_bounds__(WB) wire_unpack_kernel(unsigned char *buf, int a, int b, int C, int wire,
                                                          size_t rb) {
    __shared__ float scs[WIRE_MAXB];
    const int nb = (C + WB - 1) / WB;
    for (int i = a + blockIdx.x; i < b; i += gridDim.x) {
        float *x = reinterpret_cast<float *>(buf + 4 * (size_t)i * C);
        const unsigned char *o = buf + (size_t)i * rb;
        if (wire == OPS_WIRE_FP8) {
            unsigned char *sb = reinterpret_cast<unsigned char *>(scs);
            for (int j = threadIdx.x; j < 4 * nb; j += WB) sb[j] = o[C + j];
        }
        for (int k = nb - 1; k >= 0; k--) {
            __syncthreads(); /* the scales, and block k read before it is written */
            const int c = k * WB + threadIdx.x;
            float v = 0.0f;
            if (c < C) {
                if (wire == OPS_WIRE_BF16) {
                    v = __uint_as_float((unsigned)reinterpret_cast<const uint16_t *>(o)[c] << 16);
                } else {
                    __half_raw h = __nv_cvt_fp8_to_halfraw(o[c], __NV_E4M3);
                    v = __half2float(__half(h)) * scs[k];
                }
            }
            __syncthreads();
            if (c < C) x[c] = v;
        }
    }
}

/* ---- Stored expert weights: rows [r0, r0+n) of one expert to fp32 t [n, in],
 * exactly (bf16 widening; e4m3 → half → float is exact, then × the block scale,
 * the CPU's lut[q]·scale). */
__global__ void dequant_kernel(float *t, const void *data, const float *scale, int dtype, int r0, int n, int in) {
    const size_t N = (size_t)n * in;
    const int nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = r0 + i / in, c = i % in, q = r * in + c;
        if (dtype == OPS_BF16) {
            t[i] = __bfloat162float(static_cast<const __nv_bfloat16 *>(data)[q]);
        } else {
            __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<const __nv_fp8_storage_t *>(data)[q], __NV_E4M3);
            t[i] = __half2float(__half(h)) * scale[(r / OPS_FP8_BLOCK) * nb + c / OPS_FP8_BLOCK];
        }
    }
}

__global__ void bias_update_kernel(float *bias, const int64_t *counts, int E, float gamma) {
    __shared__ double mean;
    if (threadIdx.x == 0) { /* serial, as the CPU: the same mean bit for bit */
        double m = 0.0;
        for (int e = 0; e < E; e++) m += (double)counts[e];
        mean = m / E;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double d = mean - (double)counts[e];
        bias[e] += d > 0 ? gamma : d < 0 ? -gamma : 0.0f;
    }
}

/* ---- cuBLAS: one handle for this file's GEMMs, bound to the caller's stream ---- */
cublasHandle_t blas_handle;
std::once_flag blas_once;

cublasHandle_t blas(cudaStream_t s) {
    std::call_once(blas_once, [] {
        cublasStatus_t st = cublasCreate(&blas_handle);
        if (st != CUBLAS_STATUS_SUCCESS) error_one_at(__FILE__, __LINE__, "cublasCreate failed (status %d)", (int)st);
    });
    cublasStatus_t st = cublasSetStream(blas_handle, s);
    if (st != CUBLAS_STATUS_SUCCESS) error_one_at(__FILE__, __LINE__, "cublasSetStream failed (status %d)", (int)st);
    return blas_handle;
}

/* Row-major C[rows,cols] is column-major Cᵀ: every call below is the row-major
 * product written as its transpose (fp32 in and out, fp32 compute, no TF32). */
void gemm(cudaStream_t s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    const float one = 1.0f;
    cublasStatus_t st = cublasGemmEx(blas(s), ta, tb, m, n, k, &one, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C,
                                     CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
        error_one_at(__FILE__, __LINE__, "cublasGemmEx(m=%d n=%d k=%d) failed (status %d)", m, n, k, (int)st);
}
/* y[T,out] = x[T,in]·w[out,in]ᵀ  ⇔  yᵀ = op_T(w)·xᵀ */
void gemm_y(cudaStream_t s, float *y, int ldy, const float *x, const float *w, int T, int in, int out) {
    gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, w, in, x, in, 0.0f, y, ldy);
}
/* dx[T,in] += dy[T,out]·w[out,in]  ⇔  dxᵀ += wᵀ·dyᵀ */
void gemm_dx(cudaStream_t s, float *dx, const float *dy, int ldy, const float *w, int T, int in, int out) {
    gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, in, T, out, w, in, dy, ldy, 1.0f, dx, in);
}
/* dw[out,in] += dy[T,out]ᵀ·x[T,in]  ⇔  dwᵀ += xᵀ·dy */
void gemm_dw(cudaStream_t s, float *dw, const float *dy, const float *x, int T, int in, int out) {
    gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, in, out, T, x, in, dy, out, 1.0f, dw, in);
}

/* Rows per tile of `floats`: the whole expert when it fits, else whole 128-row
 * FP8 blocks (a tile below 128 rows ends the job: internal error). */
int tile_rows_in(const ops_weight *w, size_t floats, const char *op) {
    size_t in = w->in > 0 ? (size_t)w->in : 1;
    if ((size_t)w->out * in <= floats) return w->out;
    size_t rows = floats / in / OPS_FP8_BLOCK * OPS_FP8_BLOCK;
    CU_REQUIRE(rows > 0, "%s: a %zu-float tile holds no 128-row block of a %d-wide weight (internal error)", op, floats,
               w->in);
    return (int)rows;
}

void check_stored(const ops_weight *w, const char *op) {
    CU_REQUIRE(w->dtype == OPS_BF16 || (w->dtype == OPS_FP8_E4M3 && w->scale), "%s: bad weight dtype %d", op,
               (int)w->dtype);
}
} // namespace

/* ---- launchers ---- */

extern "C" cudaError_t cu_swiglu_forward(float *h, const float *g, int gs, const float *u, int us, int T, int n,
                                         cudaStream_t s) {
    size_t N = (size_t)T * n;
    return N ? dsv3::launch(swiglu_fwd_kernel, dim3(dsv3::grid_for(N, EW)), dim3(EW), 0, s, h, g, gs, u, us, T, n)
             : cudaSuccess;
}
extern "C" cudaError_t cu_swiglu_backward(float *dg, int dgs, float *du, int dus, const float *dh, const float *g,
                                          int gs, const float *u, int us, int T, int n, cudaStream_t s) {
    size_t N = (size_t)T * n;
    return N ? dsv3::launch(swiglu_bwd_kernel, dim3(dsv3::grid_for(N, EW)), dim3(EW), 0, s, dg, dgs, du, dus, dh, g,
                            gs, u, us, T, n)
             : cudaSuccess;
}
extern "C" cudaError_t cu_sigmoid(float *y, const float *x, size_t n, cudaStream_t s) {
    return n ? dsv3::launch(sigmoid_kernel, dim3(dsv3::grid_for(n, EW)), dim3(EW), 0, s, y, x, n) : cudaSuccess;
}

extern "C" cudaError_t cu_moe_route(int *idx, float *w, const float *sc, const float *bias, int T, int E, int K,
                                    int n_group, int topk_group, int norm, float scale, cudaStream_t s) {
    if (n_group < 1 || E % n_group || K > E || (n_group > 1 && K > topk_group * (E / n_group)))
        error_one_at(__FILE__, __LINE__, "ops_moe_route: bad routing shape E=%d K=%d n_group=%d topk_group=%d", E, K,
                     n_group, topk_group);
    if (T <= 0 || K <= 0) return cudaSuccess;
    size_t smem = (size_t)RW * ((E + n_group) * sizeof(float) + E);
    return dsv3::launch(route_kernel, dim3((T + RW - 1) / RW), dim3(RW * 32), smem, s, idx, w, sc, bias, T, E, K,
                        n_group, topk_group, norm, scale);
}
extern "C" cudaError_t cu_moe_route_backward(float *dlogits, const float *dw, const float *sc, const int *idx, int T,
                                             int E, int K, int norm, float scale, cudaStream_t s) {
    if (T <= 0 || K <= 0) return cudaSuccess;
    return dsv3::launch(route_bwd_kernel, dim3(dsv3::grid_for(T, 128)), dim3(128), 0, s, dlogits, dw, sc, idx, T, E, K,
                        norm, scale);
}

extern "C" cudaError_t cu_moe_balance(const float *sc, const int *topk, int B, int T, int E, int K, double *out,
                                      cudaStream_t s) {
    if (B <= 0 || T <= 0) return cudaSuccess;
    size_t smem = (BB + (size_t)E) * sizeof(double) + (size_t)E * sizeof(int);
    cudaError_t e = dsv3::launch(balance_kernel, dim3(B), dim3(BB), smem, s, sc, topk, T, E, K, out);
    return e ? e : dsv3::launch(balance_total_kernel, dim3(1), dim3(1), 0, s, out, B);
}
extern "C" cudaError_t cu_moe_balance_backward(float *dlogits, const float *sc, const int *topk, int B, int T, int E,
                                               int K, float coef, cudaStream_t s) {
    if (B <= 0 || T <= 0) return cudaSuccess;
    size_t smem = ((size_t)E + 2 * BB) * sizeof(double) + (size_t)E * sizeof(int);
    return dsv3::launch(balance_bwd_kernel, dim3((T + BB - 1) / BB, B), dim3(BB), smem, s, dlogits, sc, topk, T, E, K,
                        coef);
}

extern "C" cudaError_t cu_gather_rows(float *dst, const float *src, const int *idx, int n, int C, cudaStream_t s) {
    if (n <= 0 || C <= 0) return cudaSuccess;
    return dsv3::launch(gather_kernel, dim3(n < 4096 ? n : 4096), dim3(row_threads(C)), 0, s, dst, src, idx, n, C);
}
extern "C" cudaError_t cu_scatter_rows(float *dst, const float *src, const int *idx, int n, int C, cudaStream_t s) {
    if (n <= 0 || C <= 0) return cudaSuccess;
    return dsv3::launch(scatter_kernel, dim3(n < 4096 ? n : 4096), dim3(row_threads(C)), 0, s, dst, src, idx, n, C);
}
static int disp_chunks(int N) { return (N + DB - 1) / DB; }
extern "C" size_t cu_moe_dispatch_index_work(int N, int P) {
    return 2 * (size_t)(P > 0 ? P : 0) * (size_t)disp_chunks(N > 0 ? N : 0);
}
extern "C" cudaError_t cu_moe_dispatch_index(int *stok, int *toff, int *trows, int *ptk, int *smeta, int *scnt,
                                             int *spc, int *ecnt, const int *idx, const float *w, const int *efirst,
                                             int N, int K, int P, int E, int *work, cudaStream_t s) {
    if (P <= 0) return cudaSuccess;
    const size_t smem = (size_t)(E > 0 ? E : 1) * sizeof(int);
    const int nch = disp_chunks(N > 0 ? N : 0), n = P * nch;
    int *rows = work, *pairs = work + n;
    cudaError_t e = cudaSuccess;
    if (nch > 0)
        e = dsv3::launch(disp_count_kernel, dim3(nch), dim3(DB), smem, s, rows, pairs, idx, efirst, N, K, P, E, nch);
    if (!e)
        e = dsv3::launch(disp_total_kernel, dim3(dsv3::grid_for(P, 64)), dim3(64), 0, s, scnt, spc, (const int *)rows,
                         (const int *)pairs, P, nch);
    if (!e && E > 0) e = cudaMemsetAsync(ecnt, 0, (size_t)E * sizeof(int), s);
    if (!e && N > 0 && K > 0)
        e = dsv3::launch(disp_ecnt_kernel, dim3(dsv3::grid_for((size_t)N * K, 256)), dim3(256), 0, s, ecnt, idx, N * K);
    if (!e) e = dsv3::launch(disp_rows_kernel, dim3(dsv3::grid_for(N, 256)), dim3(256), smem, s, toff, idx, efirst, N, K, P, E);
    if (!e && N > 0) e = dsv3::launch(dsv3::scan_incl_kernel<SB>, dim3(1), dim3(SB), 0, s, toff + 1, N);
    if (!e && n > 0) e = dsv3::launch(dsv3::scan_incl_kernel<SB>, dim3(1), dim3(SB), 0, s, rows, n);
    if (!e && n > 0) e = dsv3::launch(dsv3::scan_incl_kernel<SB>, dim3(1), dim3(SB), 0, s, pairs, n);
    if (!e && nch > 0)
        e = dsv3::launch(disp_place_kernel, dim3(nch), dim3(DB), smem, s, stok, trows, ptk, smeta, (const int *)toff,
                         (const int *)rows, (const int *)pairs, idx, w, efirst, N, K, P, E, nch);
    return e;
}
extern "C" cudaError_t cu_moe_receive_index(int *perm, int *pinv, int *poff, float *pw, int *lcnt, const int *rmeta,
                                            const int *roff, const int *rpo, int P, int Pr, int R, int G,
                                            cudaStream_t s) {
    cudaError_t e = cudaMemsetAsync(poff, 0, ((size_t)(R > 0 ? R : 0) + 1) * sizeof(int), s);
    if (!e && G > 0)
        e = dsv3::launch(recv_count_kernel, dim3((G + SW - 1) / SW), dim3(SW * 32), 0, s, lcnt, rmeta, Pr, G);
    if (Pr <= 0 || P <= 0) return e;
    if (!e && G > 0)
        e = dsv3::launch(recv_place_kernel, dim3((G + SW - 1) / SW), dim3(SW * 32), 0, s, perm, pinv,
                         (const int *)lcnt, rmeta, roff, rpo, P, Pr, G);
    if (!e) e = dsv3::launch(recv_pairs_kernel, dim3(dsv3::grid_for(Pr, 256)), dim3(256), 0, s, pw, poff, rmeta, roff, rpo, P, Pr);
    if (!e && R > 0) e = dsv3::launch(dsv3::scan_incl_kernel<SB>, dim3(1), dim3(SB), 0, s, poff + 1, R);
    return e;
}
extern "C" cudaError_t cu_moe_combine_seg(float *out, const float *y, const int *off, const int *pos, const float *w,
                                          int n, int C, float beta, cudaStream_t s) {
    if (n <= 0 || C <= 0) return cudaSuccess;
    return dsv3::launch(combine_seg_kernel, dim3(n < 4096 ? n : 4096), dim3(row_threads(C)), 0, s, out, y, off, pos, w,
                        n, C, beta);
}
extern "C" cudaError_t cu_moe_combine_seg_backward(float *dy, float *dw, const float *dout, const float *y,
                                                   const int *off, const int *pos, const float *w, int n, int C,
                                                   cudaStream_t s) {
    if (n <= 0) return cudaSuccess;
    return dsv3::launch(combine_seg_bwd_kernel, dim3(n < 4096 ? n : 4096), dim3(CB), 0, s, dy, dw, dout, y, off, pos,
                        w, n, C);
}

namespace {
/* rb = the packed row's bytes; the CPU op's check, with its message */
size_t wire_check(int C, int wire, const char *op) {
    const size_t rb = ops_wire_row_bytes(C, wire);
    CU_REQUIRE(rb <= 4 * (size_t)C && (C + WB - 1) / WB <= WIRE_MAXB, "%s: row of %d values does not pack in place",
               op, C);
    return rb;
}
cudaError_t wire_wave(void (*k)(unsigned char *, int, int, int, int, size_t), float *rows, int a, int b, int C,
                      int wire, size_t rb, cudaStream_t s) {
    const int nr = b - a;
    return dsv3::launch(k, dim3(nr < 4096 ? nr : 4096), dim3(WB), 0, s, reinterpret_cast<unsigned char *>(rows), a, b,
                        C, wire, rb);
}
} // namespace

extern "C" cudaError_t cu_wire_pack(float *rows, int n, int C, int wire, cudaStream_t s) {
    if (wire == OPS_WIRE_F32 || n <= 0) return cudaSuccess;
    const size_t rb = wire_check(C, wire, "ops_wire_pack"), fb = 4 * (size_t)C;
    if (C <= 0) return cudaSuccess;
    for (int a = 0, b; a < n; a = b) { /* waves up: b·rb <= 4C·a, or one row */
        size_t up = (size_t)a * fb / rb;
        b = up <= (size_t)a ? a + 1 : up < (size_t)n ? (int)up : n;
        if (cudaError_t e = wire_wave(wire_pack_kernel, rows, a, b, C, wire, rb, s)) return e;
    }
    return cudaSuccess;
}
extern "C" cudaError_t cu_wire_unpack(float *rows, int n, int C, int wire, cudaStream_t s) {
    if (wire == OPS_WIRE_F32 || n <= 0) return cudaSuccess;
    const size_t rb = wire_check(C, wire, "ops_wire_unpack"), fb = 4 * (size_t)C;
    if (C <= 0) return cudaSuccess;
    for (int b = n, a; b > 0; b = a) { /* waves down: a·4C >= b·rb, or one row */
        size_t lo = ((size_t)b * rb + fb - 1) / fb;
        a = lo >= (size_t)b ? b - 1 : (int)lo;
        if (cudaError_t e = wire_wave(wire_unpack_kernel, rows, a, b, C, wire, rb, s)) return e;
    }
    return cudaSuccess;
}

extern "C" cudaError_t cu_grouped_matmul(float *y, const float *x, const float *w, const int *cnt, int G, int in,
                                         int out, cudaStream_t s) {
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        if (cnt[g] > 0 && out > 0) {
            if (in > 0) gemm_y(s, y + r * out, out, x + r * in, w + (size_t)g * out * in, cnt[g], in, out);
            else if (cudaError_t e = cudaMemsetAsync(y + r * out, 0, (size_t)cnt[g] * out * sizeof *y, s)) return e;
        }
        r += (size_t)cnt[g];
    }
    return cudaGetLastError();
}
extern "C" cudaError_t cu_grouped_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                                                  const int *cnt, int G, int in, int out, cudaStream_t s) {
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        if (cnt[g] > 0 && in > 0 && out > 0) {
            if (dx) gemm_dx(s, dx + r * in, dy + r * out, out, w + (size_t)g * out * in, cnt[g], in, out);
            if (dw) gemm_dw(s, dw + (size_t)g * out * in, dy + r * out, x + r * in, cnt[g], in, out);
        }
        r += (size_t)cnt[g];
    }
    return cudaGetLastError();
}

extern "C" size_t cu_grouped_matmul_w_tile(const ops_weight *w) {
    return ops_matmul_w_scratch_floats(w->dtype, ops_gemm_of(w), w->out, w->in); /* the rule the plan sizes the arena by */
}
extern "C" cudaError_t cu_grouped_matmul_w(float *y, const float *x, const ops_weight *w, const int *cnt, int G,
                                           float *tile, size_t tile_floats, cudaStream_t s) {
    if (w->dtype == OPS_F32) return cu_grouped_matmul(y, x, (const float *)w->data, cnt, G, w->in, w->out, s);
    check_stored(w, "ops_grouped_matmul_w");
    if (ops_gemm_of(w) != OPS_GEMM_F32) { /* train.gemm_dtype bf16/fp8: each expert as ops_matmul_w (cu_ops.h) */
        size_t r = 0;
        for (int g = 0; g < G; g++) {
            ops_weight v = ops_weight_expert(w, g);
            if (cnt[g] > 0)
                if (cudaError_t e = cu_matmul_w(y + r * w->out, x + r * w->in, &v, cnt[g], 0.0f, tile, tile_floats, s))
                    return e;
            r += (size_t)cnt[g];
        }
        return cudaSuccess;
    }
    const int in = w->in, out = w->out, tr = tile_rows_in(w, tile_floats, "ops_grouped_matmul_w");
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        if (cnt[g] > 0 && out > 0) {
            if (in == 0) {
                if (cudaError_t e = cudaMemsetAsync(y + r * out, 0, (size_t)cnt[g] * out * sizeof *y, s)) return e;
            } else {
                ops_weight v = ops_weight_expert(w, g);
                for (int r0 = 0; r0 < out; r0 += tr) {
                    const int n = out - r0 < tr ? out - r0 : tr;
                    const size_t N = (size_t)n * in;
                    if (cudaError_t e = dsv3::launch(dequant_kernel, dim3(dsv3::grid_for(N, EW)), dim3(EW), 0, s, tile,
                                                     (const void *)v.data, v.scale, (int)v.dtype, r0, n, in))
                        return e;
                    gemm_y(s, y + r * out + r0, out, x + r * in, tile, cnt[g], in, n); /* y[:, r0:r0+n] */
                }
            }
        }
        r += (size_t)cnt[g];
    }
    return cudaGetLastError();
}
extern "C" cudaError_t cu_grouped_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, const int *cnt,
                                                       int G, float *tile, size_t tile_floats, cudaStream_t s) {
    if (!dx) return cudaSuccess;
    if (w->dtype == OPS_F32)
        return cu_grouped_matmul_backward(dx, NULL, dy, NULL, (const float *)w->data, cnt, G, w->in, w->out, s);
    check_stored(w, "ops_grouped_matmul_w_backward_dx");
    if (ops_gemm_of(w) != OPS_GEMM_F32) { /* bf16 dgrad per expert (cu_matmul_w_backward_dx) */
        size_t r = 0;
        for (int g = 0; g < G; g++) {
            ops_weight v = ops_weight_expert(w, g);
            if (cnt[g] > 0)
                if (cudaError_t e = cu_matmul_w_backward_dx(dx + r * w->in, dy + r * w->out, &v, cnt[g], tile,
                                                            tile_floats, s))
                    return e;
            r += (size_t)cnt[g];
        }
        return cudaSuccess;
    }
    const int in = w->in, out = w->out, tr = tile_rows_in(w, tile_floats, "ops_grouped_matmul_w_backward_dx");
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        if (cnt[g] > 0 && in > 0 && out > 0) {
            ops_weight v = ops_weight_expert(w, g);
            for (int r0 = 0; r0 < out; r0 += tr) {
                const int n = out - r0 < tr ? out - r0 : tr;
                const size_t N = (size_t)n * in;
                if (cudaError_t e = dsv3::launch(dequant_kernel, dim3(dsv3::grid_for(N, EW)), dim3(EW), 0, s, tile,
                                                 (const void *)v.data, v.scale, (int)v.dtype, r0, n, in))
                    return e;
                gemm_dx(s, dx + r * in, dy + r * out + r0, out, tile, cnt[g], in, n); /* += dy[:, r0:r0+n]·tile */
            }
        }
        r += (size_t)cnt[g];
    }
    return cudaGetLastError();
}

extern "C" cudaError_t cu_moe_bias_update(float *bias, const int64_t *counts, int E, float gamma, cudaStream_t s) {
    if (E <= 0) return cudaSuccess;
    return dsv3::launch(bias_update_kernel, dim3(1), dim3(256), 0, s, bias, counts, E, gamma);
}

#ifndef DSV3_CU_TWIN
/* ---- ops_moe.h on the backend stream. Host arrays go through small device
 * buffers (cu_devbuf: grow-only, charged to OPS_MEM_OTHER). ---- */

namespace {
cu_devbuf balance_buf, bias_buf, dispatch_buf, receive_buf;
} // namespace

void ops_swiglu_forward(float *h, const float *g, int gs, const float *u, int us, int T, int n) {
    CU_CHECK(cu_swiglu_forward(h, g, gs, u, us, T, n, cu_stream()));
}
void ops_swiglu_backward(float *dg, int dgs, float *du, int dus, const float *dh, const float *g, int gs,
                         const float *u, int us, int T, int n) {
    CU_CHECK(cu_swiglu_backward(dg, dgs, du, dus, dh, g, gs, u, us, T, n, cu_stream()));
}
void ops_sigmoid(float *y, const float *x, size_t n) { CU_CHECK(cu_sigmoid(y, x, n, cu_stream())); }
void ops_moe_route(int *idx, float *w, const float *s, const float *bias, int T, int E, int K, int n_group,
                   int topk_group, int norm, float scale) {
    CU_CHECK(cu_moe_route(idx, w, s, bias, T, E, K, n_group, topk_group, norm, scale, cu_stream()));
}
void ops_moe_route_backward(float *dlogits, const float *dw, const float *s, const int *idx, int T, int E, int K,
                            int norm, float scale) {
    CU_CHECK(cu_moe_route_backward(dlogits, dw, s, idx, T, E, K, norm, scale, cu_stream()));
}
double ops_moe_balance(const float *s, const int *topk, int B, int T, int E, int K) {
    if (B <= 0 || T <= 0) return 0.0;
    double *d = (double *)cu_devbuf_get(&balance_buf, ((size_t)B + 1) * sizeof(double)), v = 0.0;
    CU_CHECK(cu_moe_balance(s, topk, B, T, E, K, d, cu_stream()));
    ops_to_host(&v, d + B, sizeof v);
    return v;
}
void ops_moe_balance_backward(float *dlogits, const float *s, const int *topk, int B, int T, int E, int K,
                              float coef) {
    CU_CHECK(cu_moe_balance_backward(dlogits, s, topk, B, T, E, K, coef, cu_stream()));
}
void ops_gather_rows(float *dst, const float *src, const int *idx, int n, int C) {
    CU_CHECK(cu_gather_rows(dst, src, idx, n, C, cu_stream()));
}
void ops_scatter_rows(float *dst, const float *src, const int *idx, int n, int C) {
    CU_CHECK(cu_scatter_rows(dst, src, idx, n, C, cu_stream()));
}
int ops_moe_dispatch_index(int *stok, int *toff, int *trows, int *ptk, int *smeta, int *scnt, int *spc, int *ecnt,
                           const int *idx, const float *w, const int *efirst, int N, int K, int P) {
    const int E = efirst[P];
    const size_t nc = 2 * (size_t)P + (size_t)E; /* scnt, spc, ecnt; then efirst, then the work */
    int *d = (int *)cu_devbuf_get(&dispatch_buf, (nc + (size_t)P + 1 + cu_moe_dispatch_index_work(N, P)) * sizeof(int));
    CU_CHECK(cudaMemcpyAsync(d + nc, efirst, ((size_t)P + 1) * sizeof(int), cudaMemcpyHostToDevice, cu_stream()));
    CU_CHECK(cu_moe_dispatch_index(stok, toff, trows, ptk, smeta, d, d + P, d + 2 * P, idx, w, d + nc, N, K, P, E,
                                   d + nc + P + 1, cu_stream()));
    ops_to_host(scnt, d, (size_t)P * sizeof(int)); /* the host sizes the all-to-all with them */
    ops_to_host(spc, d + P, (size_t)P * sizeof(int));
    ops_to_host(ecnt, d + 2 * P, (size_t)E * sizeof(int));
    int S = 0;
    for (int r = 0; r < P; r++) S += scnt[r];
    return S;
}
void ops_moe_receive_index(int *perm, int *pinv, int *poff, float *pw, int *lcnt, const int *rmeta, const int *roff,
                           const int *rpo, int P, int Pr, int R, int G) {
    int *d = (int *)cu_devbuf_get(&receive_buf, (2 * (size_t)P + (size_t)(G > 0 ? G : 0)) * sizeof(int));
    CU_CHECK(cudaMemcpyAsync(d, roff, (size_t)P * sizeof(int), cudaMemcpyHostToDevice, cu_stream()));
    CU_CHECK(cudaMemcpyAsync(d + P, rpo, (size_t)P * sizeof(int), cudaMemcpyHostToDevice, cu_stream()));
    CU_CHECK(cu_moe_receive_index(perm, pinv, poff, pw, d + 2 * P, rmeta, d, d + P, P, Pr, R, G, cu_stream()));
    if (G > 0) ops_to_host(lcnt, d + 2 * P, (size_t)G * sizeof(int)); /* one GEMM per expert on the host */
}
void ops_moe_combine_seg(float *out, const float *y, const int *off, const int *pos, const float *w, int n, int C,
                         float beta) {
    CU_CHECK(cu_moe_combine_seg(out, y, off, pos, w, n, C, beta, cu_stream()));
}
void ops_moe_combine_seg_backward(float *dy, float *dw, const float *dout, const float *y, const int *off,
                                  const int *pos, const float *w, int n, int C) {
    CU_CHECK(cu_moe_combine_seg_backward(dy, dw, dout, y, off, pos, w, n, C, cu_stream()));
}
void ops_wire_pack(float *rows, int n, int C, int wire) { CU_CHECK(cu_wire_pack(rows, n, C, wire, cu_stream())); }
void ops_wire_unpack(float *rows, int n, int C, int wire) { CU_CHECK(cu_wire_unpack(rows, n, C, wire, cu_stream())); }
void ops_grouped_matmul(float *y, const float *x, const float *w, const int *cnt, int G, int in, int out) {
    CU_CHECK(cu_grouped_matmul(y, x, w, cnt, G, in, out, cu_stream()));
}
void ops_grouped_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                                 const int *cnt, int G, int in, int out) {
    CU_CHECK(cu_grouped_matmul_backward(dx, dw, dy, x, w, cnt, G, in, out, cu_stream()));
}
/* The dequantisation tile (and the bf16/fp8 activation chunk) comes from the caller's scratch
 * arena (device memory), sized by the plan's rule (ops_matmul_w_scratch_floats), and is given
 * back before return. */
void ops_grouped_matmul_w(float *y, const float *x, const ops_weight *w, const int *cnt, int G, ops_arena *scratch) {
    size_t n = ops_matmul_w_scratch_floats(w->dtype, ops_gemm_of(w), w->out, w->in), mark = ops_arena_mark(scratch);
    float *tile = ops_arena_take(scratch, n);
    CU_CHECK(cu_grouped_matmul_w(y, x, w, cnt, G, tile, n, cu_stream()));
    ops_arena_release(scratch, mark);
}
void ops_grouped_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, const int *cnt, int G,
                                      ops_arena *scratch) {
    size_t n = ops_matmul_w_scratch_floats(w->dtype, ops_gemm_of(w), w->out, w->in), mark = ops_arena_mark(scratch);
    float *tile = ops_arena_take(scratch, n);
    CU_CHECK(cu_grouped_matmul_w_backward_dx(dx, dy, w, cnt, G, tile, n, cu_stream()));
    ops_arena_release(scratch, mark);
}
void ops_moe_bias_update(float *bias, const int64_t *counts, int E, float gamma) {
    if (E <= 0) return;
    int64_t *d = (int64_t *)cu_devbuf_get(&bias_buf, (size_t)E * sizeof(int64_t));
    CU_CHECK(cudaMemcpyAsync(d, counts, (size_t)E * sizeof(int64_t), cudaMemcpyHostToDevice, cu_stream()));
    CU_CHECK(cu_moe_bias_update(bias, d, E, gamma, cu_stream()));
}
#endif /* DSV3_CU_TWIN */

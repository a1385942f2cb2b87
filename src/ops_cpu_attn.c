/* ops_cpu_attn.c — CPU reference of ops_attn.h (OpenBLAS + OpenMP). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"
#include "ops_attn.h"
#include "ops_cpu_simd.h"

/* ------------------------------------------------------------------ RMSNorm */


/* One causal attention row in place: s[0:n] = softmax(s[0:n]), s[n:width] = 0
 * (keys past the row's position); returns log Σ exp (the row's lse). */
static float softmax_causal_row(float *s, int n, int width) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) s[j] *= inv;
    for (int j = n; j < width; j++) s[j] = 0.0f;
    return mx + logf(sum);
}

void ops_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int T, int C, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)T * C > 65536)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *yt = y + (size_t)t * C;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) ss += (double)xt[i] * xt[i];
        float var = (float)(ss / C);
        float r = 1.0f / sqrtf(var + eps);
        rstd[t] = r;
#pragma omp simd
        for (int i = 0; i < C; i++) yt[i] = w[i] * (xt[i] * r);
    }
}

void ops_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                          int T, int C) {
    /* y_i = w_i·x_i·r, r = (mean x² + eps)^-1/2:
     * dx_i = r·w_i·dy_i − r³·x_i·(1/C)·Σ_j w_j·dy_j·x_j ;  dw_i = Σ_t dy_i·x_i·r */
#pragma omp parallel for schedule(static) if ((size_t)T * C > 65536)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C, *gt = dy + (size_t)t * C;
        float *dxt = dx + (size_t)t * C;
        float r = rstd[t];
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < C; i++) dot += (double)w[i] * gt[i] * xt[i];
        float c = (float)(dot / C) * r * r * r;
#pragma omp simd
        for (int i = 0; i < C; i++) dxt[i] += r * w[i] * gt[i] - c * xt[i];
    }
    if (!dw) return;
    /* Column blocks per thread, tokens in order: deterministic for any thread count. */
    enum { CB = 64 };
    int nb = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static) if ((size_t)T * C > 65536)
    for (int b = 0; b < nb; b++) {
        int i0 = b * CB, i1 = i0 + CB < C ? i0 + CB : C;
        float acc[CB];
        for (int i = i0; i < i1; i++) acc[i - i0] = 0.0f;
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * C, *gt = dy + (size_t)t * C;
            float r = rstd[t];
#pragma omp simd
            for (int i = i0; i < i1; i++) acc[i - i0] += gt[i] * xt[i] * r;
        }
        for (int i = i0; i < i1; i++) dw[i] += acc[i - i0];
    }
}

/* --------------------------------------------------------------------- RoPE */

static void rope_apply(float *x, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                       const float *sin_t, int B, int T, float sign) {
    int half = dr / 2;
    int rows = B * T;
#pragma omp parallel for schedule(static) if ((size_t)rows * nh * dr > 65536)
    for (int r = 0; r < rows; r++) {
        int p = r % T;
        const float *c = cos_t + (size_t)p * half, *s = sin_t + (size_t)p * half;
        for (int h = 0; h < nh; h++) {
            float *v = x + (size_t)r * row_stride + (size_t)h * head_stride + off;
            for (int i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1], ci = c[i], si = sign * s[i];
                v[2 * i] = a * ci - b * si;
                v[2 * i + 1] = a * si + b * ci;
            }
        }
    }
}

void ops_rope_forward(float *x, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                      const float *sin_t, int B, int T) {
    rope_apply(x, row_stride, nh, head_stride, off, dr, cos_t, sin_t, B, T, 1.0f);
}

void ops_rope_backward(float *dx, int row_stride, int nh, int head_stride, int off, int dr, const float *cos_t,
                       const float *sin_t, int B, int T) {
    /* The rotation is orthogonal: its transpose is the rotation by −θ. */
    rope_apply(dx, row_stride, nh, head_stride, off, dr, cos_t, sin_t, B, T, -1.0f);
}

/* ---------------------------------------------------------------- attention */

/* Query rows per block: a block only multiplies against keys [0, i1)
 * (causal), which skips about half the work. Each (b, h) works in its own
 * [rows, T] slot of the arena's score region (ops_attn.h: [B·nh, rows, T],
 * rows the chunk rule's), so a block has min(OPS_ATTN_CPU_BLOCK, rows) rows. */
static int att_block_rows(int B, int T, int nh) {
    int r = ops_attention_chunk_rows(B, T, nh);
    return r < OPS_ATTN_CPU_BLOCK ? r : OPS_ATTN_CPU_BLOCK;
}

/* OpenBLAS (pthread build) would start its own threads inside every call made
 * from our OpenMP threads; when we parallelise over (b,h) we run BLAS single-threaded. */
static int blas_single_begin(int parallel) {
    if (!parallel) return 0;
    int n = openblas_get_num_threads();
    if (n > 1) openblas_set_num_threads(1);
    return n;
}
static void blas_single_end(int n) {
    if (n > 1) openblas_set_num_threads(n);
}

/* bf16 mode (ops_attn.h "Precision"): a GEMM operand is an fp32 copy of the
 * bf16-rounded values (a product of two bf16 values is exact in fp32, so
 * cblas_sgemm on them accumulates in fp32 what the tensor cores multiply).
 * dst[n, w] (contiguous) = bf16(src[n, w]) with src row stride ld. */
static void round_rows(float *dst, const float *src, int n, int w, int ld) {
    for (int r = 0; r < n; r++)
        for (int c = 0; c < w; c++) dst[(size_t)r * w + c] = ops_bf16_to_f32(ops_f32_to_bf16(src[(size_t)r * ld + c]));
}
/* x[n, w] (row stride ld) = bf16(x), in place */
static void round_inplace(float *x, int n, int w, int ld) {
    for (int r = 0; r < n; r++)
        for (int c = 0; c < w; c++) x[(size_t)r * ld + c] = ops_bf16_to_f32(ops_f32_to_bf16(x[(size_t)r * ld + c]));
}

/* The bf16 copies of one (b, h), carved from the take of ops_attention_bf16_floats
 * (the CPU takes all of it): qb [blk, dqk] (and dob [blk, dv]) for the query
 * block, kb [blk, dqk] and vb [blk, dv] for the key block. */
typedef struct {
    float *qb, *dob, *kb, *vb;
} att_bf16;
static att_bf16 att_bf16_of(float *base, int bh, int nbh, int blk, int dqk, int dv, int backward) {
    const size_t qw = (size_t)blk * (backward ? dqk + dv : dqk);
    float *q = base + (size_t)bh * qw, *kv = base + ops_arena_round((size_t)nbh * qw) + (size_t)bh * blk * (dqk + dv);
    att_bf16 c = {q, backward ? q + (size_t)blk * dqk : NULL, kv, kv + (size_t)blk * dqk};
    return c;
}

void ops_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                           int nh, int dqk, int dv, float scale, ops_arena *scratch) {
    if (B <= 0 || T <= 0 || nh <= 0) return;
    const int ldq = nh * dqk, ldv = nh * dv;
    const int nbh = B * nh, BQ = att_block_rows(B, T, nh), bf = ops_gemm_get() != OPS_GEMM_F32;
    const size_t slot = (size_t)ops_attention_chunk_rows(B, T, nh) * T;
    const size_t mark = ops_arena_mark(scratch);
    float *region = ops_arena_take(scratch, (size_t)nbh * slot);
    float *cp = bf ? ops_arena_take(scratch, ops_attention_bf16_floats(B, T, nh, dqk, dv, 0)) : NULL;
    const int par = nbh > 1 && omp_get_max_threads() > 1;
    int saved = blas_single_begin(par);
#pragma omp parallel if (par)
    {
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < nbh; bh++) {
            int b = bh / nh, h = bh % nh;
            float *S = region + (size_t)bh * slot; /* [bq, i1] with row stride T */
            const float *Q = q + (size_t)b * T * ldq + (size_t)h * dqk;
            const float *K = k + (size_t)b * T * ldq + (size_t)h * dqk;
            const float *V = v + (size_t)b * T * ldv + (size_t)h * dv;
            float *O = out + (size_t)b * T * ldv + (size_t)h * dv;
            float *L = lse + (size_t)bh * T;
            const att_bf16 c = bf ? att_bf16_of(cp, bh, nbh, BQ, dqk, dv, 0) : (att_bf16){0};
            for (int i0 = 0; i0 < T; i0 += BQ) {
                int bq = T - i0 < BQ ? T - i0 : BQ, i1 = i0 + bq;
                /* S[bq, i1] = scale · Q[i0:i1] · K[0:i1]ᵀ */
                if (!bf) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, i1, dqk, scale, Q + (size_t)i0 * ldq,
                                ldq, K, ldq, 0.0f, S, T);
                } else { /* bf16(Q) against bf16(K), key blocks of BQ rows */
                    round_rows(c.qb, Q + (size_t)i0 * ldq, bq, dqk, ldq);
                    for (int j0 = 0; j0 < i1; j0 += BQ) {
                        int bk = i1 - j0 < BQ ? i1 - j0 : BQ;
                        round_rows(c.kb, K + (size_t)j0 * ldq, bk, dqk, ldq);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, dqk, scale, c.qb, dqk, c.kb, dqk,
                                    0.0f, S + j0, T);
                    }
                }
                for (int r = 0; r < bq; r++) {
                    L[i0 + r] = softmax_causal_row(S + (size_t)r * T, i0 + r + 1 /* keys 0..t */, i1);
                }
                /* O[i0:i1] = P · V[0:i1] */
                if (!bf) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, dv, i1, 1.0f, S, T, V, ldv, 0.0f,
                                O + (size_t)i0 * ldv, ldv);
                } else { /* bf16(P) · bf16(V), summed over the key blocks in order */
                    round_inplace(S, bq, i1, T);
                    for (int j0 = 0; j0 < i1; j0 += BQ) {
                        int bk = i1 - j0 < BQ ? i1 - j0 : BQ;
                        round_rows(c.vb, V + (size_t)j0 * ldv, bk, dv, ldv);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, dv, bk, 1.0f, S + j0, T, c.vb, dv,
                                    j0 ? 1.0f : 0.0f, O + (size_t)i0 * ldv, ldv);
                    }
                }
            }
        }
    }
    blas_single_end(saved);
    ops_arena_release(scratch, mark);
}

void ops_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *lse, int B, int T, int nh, int dqk, int dvd, float scale,
                            ops_arena *scratch) {
    if (B <= 0 || T <= 0 || nh <= 0) return;
    const int ldq = nh * dqk, ldv = nh * dvd;
    const int nbh = B * nh, BQ = att_block_rows(B, T, nh), bf = ops_gemm_get() != OPS_GEMM_F32;
    const size_t slot = (size_t)ops_attention_chunk_rows(B, T, nh) * T;
    const size_t mark = ops_arena_mark(scratch);
    float *Pr = ops_arena_take(scratch, (size_t)nbh * slot), *dPr = ops_arena_take(scratch, (size_t)nbh * slot);
    float *cp = bf ? ops_arena_take(scratch, ops_attention_bf16_floats(B, T, nh, dqk, dvd, 1)) : NULL;
    const int par = nbh > 1 && omp_get_max_threads() > 1;
    int saved = blas_single_begin(par);
    /* Every (b,h) owns disjoint slices of dq, dk, dv: no races, fixed order. */
#pragma omp parallel if (par)
    {
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < nbh; bh++) {
            int b = bh / nh, h = bh % nh;
            float *P = Pr + (size_t)bh * slot, *dP = dPr + (size_t)bh * slot; /* [bq, i1], stride T */
            size_t oq = (size_t)b * T * ldq + (size_t)h * dqk, ov = (size_t)b * T * ldv + (size_t)h * dvd;
            const float *Q = q + oq, *K = k + oq, *V = v + ov, *dO = dout + ov;
            float *dQ = dq + oq, *dK = dk + oq, *dV = dv + ov;
            const float *L = lse + (size_t)bh * T;
            const att_bf16 c = bf ? att_bf16_of(cp, bh, nbh, BQ, dqk, dvd, 1) : (att_bf16){0};
            for (int i0 = 0; i0 < T; i0 += BQ) {
                int bq = T - i0 < BQ ? T - i0 : BQ, i1 = i0 + bq;
                const float *Qb = Q + (size_t)i0 * ldq, *dOb = dO + (size_t)i0 * ldv;
                if (!bf) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, i1, dqk, scale, Qb, ldq, K, ldq, 0.0f, P,
                                T);
                    /* dP = dO · Vᵀ */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, i1, dvd, 1.0f, dOb, ldv, V, ldv, 0.0f,
                                dP, T);
                } else { /* S = scale·bf16(Q)·bf16(K)ᵀ, dP = bf16(dO)·bf16(V)ᵀ, key blocks of BQ rows */
                    round_rows(c.qb, Qb, bq, dqk, ldq);
                    round_rows(c.dob, dOb, bq, dvd, ldv);
                    for (int j0 = 0; j0 < i1; j0 += BQ) {
                        int bk = i1 - j0 < BQ ? i1 - j0 : BQ;
                        round_rows(c.kb, K + (size_t)j0 * ldq, bk, dqk, ldq);
                        round_rows(c.vb, V + (size_t)j0 * ldv, bk, dvd, ldv);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, dqk, scale, c.qb, dqk, c.kb, dqk,
                                    0.0f, P + j0, T);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, dvd, 1.0f, c.dob, dvd, c.vb, dvd,
                                    0.0f, dP + j0, T);
                    }
                }
                for (int r = 0; r < bq; r++) {
                    float *p = P + (size_t)r * T, *g = dP + (size_t)r * T;
                    int n = i0 + r + 1;
                    float l = L[i0 + r];
                    float D = 0.0f;
#pragma omp simd reduction(+ : D)
                    for (int j = 0; j < n; j++) {
                        p[j] = expf(p[j] - l);
                        D += p[j] * g[j];
                    }
                    /* dS (w.r.t. the scaled scores) times scale = dscores w.r.t. q·k */
                    for (int j = 0; j < n; j++) g[j] = p[j] * (g[j] - D) * scale;
                    for (int j = n; j < i1; j++) p[j] = g[j] = 0.0f;
                }
                if (!bf) {
                    /* dQ[i0:i1] += dS · K[0:i1] */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, dqk, i1, 1.0f, dP, T, K, ldq, 1.0f,
                                dQ + (size_t)i0 * ldq, ldq);
                    /* dK[0:i1] += dSᵀ · Q[i0:i1] */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, dqk, bq, 1.0f, dP, T, Qb, ldq, 1.0f, dK,
                                ldq);
                    /* dV[0:i1] += Pᵀ · dO[i0:i1] */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, dvd, bq, 1.0f, P, T, dOb, ldv, 1.0f, dV,
                                ldv);
                } else { /* the same three on bf16(dS), bf16(P) and the rounded blocks */
                    round_inplace(P, bq, i1, T);
                    round_inplace(dP, bq, i1, T);
                    for (int j0 = 0; j0 < i1; j0 += BQ) {
                        int bk = i1 - j0 < BQ ? i1 - j0 : BQ;
                        round_rows(c.kb, K + (size_t)j0 * ldq, bk, dqk, ldq);
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, dqk, bk, 1.0f, dP + j0, T, c.kb,
                                    dqk, 1.0f, dQ + (size_t)i0 * ldq, ldq);
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bk, dqk, bq, 1.0f, dP + j0, T, c.qb, dqk,
                                    1.0f, dK + (size_t)j0 * ldq, ldq);
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bk, dvd, bq, 1.0f, P + j0, T, c.dob, dvd,
                                    1.0f, dV + (size_t)j0 * ldv, ldv);
                    }
                }
            }
        }
    }
    blas_single_end(saved);
    ops_arena_release(scratch, mark);
}

/* ------------------------------------------------- latent (absorbed MLA) attention */

void ops_latent_attention(float *out, const float *q, const float *cache, int n, int nh, int W, int kvl, int p0,
                          float scale) {
    if (n <= 0 || nh <= 0) return;
    const int bq = nh >= 64 ? 1 : 64 / nh; /* query tokens per block: >= 64 score rows */
    const int nblk = (n + bq - 1) / bq, Tk = p0 + n;
    const int par = nblk > 1 && omp_get_max_threads() > 1; /* decode (n = 1): one block, BLAS threads */
    int saved = blas_single_begin(par);
#pragma omp parallel if (par)
    {
        float *S = malloc((size_t)bq * nh * Tk * sizeof *S); /* [bq·nh, i1 keys], row stride Tk */
#pragma omp for schedule(dynamic, 1)
        for (int blk = 0; blk < nblk; blk++) {
            int i0 = blk * bq, i1 = i0 + bq < n ? i0 + bq : n, rows = (i1 - i0) * nh, keys = p0 + i1;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, W, scale, q + (size_t)i0 * nh * W, W,
                        cache, W, 0.0f, S, Tk);
            for (int r = 0; r < rows; r++)
                softmax_causal_row(S + (size_t)r * Tk, p0 + i0 + r / nh + 1 /* keys 0..own position */, keys);
            /* out rows = P · cache[0:keys, 0:kvl] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, kvl, keys, 1.0f, S, Tk, cache, W, 0.0f,
                        out + (size_t)i0 * nh * kvl, kvl);
        }
        free(S);
    }
    blas_single_end(saved);
}

/* ---------------------------------------------------------------- embedding */

/* y[n,:] = row ids[n] of a [V,H] table stored as fp32 (bf16 0) or bf16 (bf16 1), widened exactly;
 * out-of-range ids zero their row, and the first one is reported. */
static int embed_rows(float *y, const void *E, int bf16, const int32_t *ids, int N, int V, int H) {
    int bad = -1;
#pragma omp parallel for schedule(static) if ((size_t)N * H > 65536)
    for (int n = 0; n < N; n++) {
        float *yn = y + (size_t)n * H;
        int32_t id = ids[n];
        if (id < 0 || id >= V) {
            memset(yn, 0, (size_t)H * sizeof *yn);
#pragma omp critical(ops_embed_bad)
            if (bad < 0 || n < bad) bad = n;
        } else if (bf16) {
            const uint16_t *q = (const uint16_t *)E + (size_t)id * H;
            for (int c = 0; c < H; c++) yn[c] = ops_bf16_to_f32(q[c]);
        } else {
            memcpy(yn, (const float *)E + (size_t)id * H, (size_t)H * sizeof *yn);
        }
    }
    if (bad >= 0) {
        fprintf(stderr, "ops_embedding_forward: token id %d at row %d outside vocabulary [0, %d)\n", (int)ids[bad],
                bad, V);
        return -1;
    }
    return 0;
}

int ops_embedding_forward(float *y, const float *E, const int32_t *ids, int N, int V, int H) {
    return embed_rows(y, E, 0, ids, N, V, H);
}

int ops_embedding_forward_w(float *y, const ops_weight *E, const int32_t *ids, int N) {
    DSV3_CHECK(E->dtype == OPS_F32 || E->dtype == OPS_BF16,
               "ops_embedding_forward_w: a %s embedding is not supported (bf16 or fp32)",
               E->dtype == OPS_FP8_E4M3 ? "fp8" : "?");
    return embed_rows(y, E->data, E->dtype == OPS_BF16, ids, N, E->out, E->in);
}

void ops_embedding_backward(float *dE, const float *dy, const int32_t *ids, int N, int V, int H) {
    enum { CB = 256 };
    int nb = (H + CB - 1) / CB;
#pragma omp parallel for schedule(static) if ((size_t)N * H > 65536)
    for (int b = 0; b < nb; b++) {
        int c0 = b * CB, c1 = c0 + CB < H ? c0 + CB : H;
        for (int n = 0; n < N; n++) {
            int32_t id = ids[n];
            if (id < 0 || id >= V) continue;
            float *d = dE + (size_t)id * H;
            const float *g = dy + (size_t)n * H;
            for (int c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

/* ------------------------------------------------------------ cross-entropy */

/* max and log Σ exp(x − max) of one row; the sum runs in double */
static void ce_row_stats(const float *x, int V, float *mx_out, float *lse_out) {
    float mx = -INFINITY;
    for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    double s = 0.0;
    for (int j = 0; j < V; j++) s += expf(x[j] - mx);
    *mx_out = mx;
    *lse_out = mx + (float)log(s);
}

double ops_cross_entropy_forward(float *row_loss, int64_t *count, const float *logits, const int32_t *targets, int N,
                                 int V) {
    double *rl = malloc((size_t)(N > 0 ? N : 1) * sizeof *rl);
    int bad = -1;
#pragma omp parallel for schedule(static) if ((size_t)N * V > 65536)
    for (int n = 0; n < N; n++) {
        int32_t tg = targets[n];
        rl[n] = 0.0;
        if (tg == OPS_IGNORE_INDEX) continue;
        if (tg < 0 || tg >= V) {
#pragma omp critical(ops_ce_bad)
            if (bad < 0 || n < bad) bad = n;
            continue;
        }
        const float *x = logits + (size_t)n * V;
        float mx, lse;
        ce_row_stats(x, V, &mx, &lse);
        rl[n] = (double)lse - (double)x[tg];
    }
    double sum = 0.0;
    int64_t cnt = 0;
    for (int n = 0; n < N; n++) { /* row order: the same sum for any thread count */
        if (row_loss) row_loss[n] = (float)rl[n];
        if (targets[n] != OPS_IGNORE_INDEX) {
            sum += rl[n];
            cnt++;
        }
    }
    free(rl);
    if (count) *count = cnt;
    if (bad >= 0) {
        fprintf(stderr, "ops_cross_entropy_forward: target %d at row %d outside [0, %d) and not %d\n",
                (int)targets[bad], bad, V, OPS_IGNORE_INDEX);
        return NAN;
    }
    return sum;
}

void ops_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                                float scale) {
#pragma omp parallel for schedule(static) if ((size_t)N * V > 65536)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        int32_t tg = targets[n];
        if (tg < 0 || tg >= V) { /* ignored (or invalid, reported by the forward) */
            memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        float mx, lse;
        ce_row_stats(x, V, &mx, &lse);
        /* each element is read before it is written: dlogits may alias logits */
        for (int j = 0; j < V; j++) d[j] = expf(x[j] - lse) * scale;
        d[tg] -= scale;
    }
}

double ops_cross_entropy_fused(float *dlogits, int64_t *count, const float *logits, const int32_t *targets, int N,
                               int V, float scale) {
    double *rl = malloc((size_t)(N > 0 ? N : 1) * sizeof *rl);
    int bad = -1;
#pragma omp parallel for schedule(static) if ((size_t)N * V > 65536)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        int32_t tg = targets[n];
        rl[n] = 0.0;
        if (tg < 0 || tg >= V) {
            if (tg != OPS_IGNORE_INDEX) {
#pragma omp critical(ops_ce_bad)
                if (bad < 0 || n < bad) bad = n;
            }
            memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        float mx = -INFINITY, xt = x[tg]; /* read before d (which may alias x) is written */
        for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
#pragma omp simd
        for (int j = 0; j < V; j++) d[j] = expf(x[j] - mx); /* one exp per logit, normalised below */
        double s = 0.0;
        for (int j = 0; j < V; j++) s += d[j];
        float k = (float)((double)scale / s);
        for (int j = 0; j < V; j++) d[j] *= k;
        d[tg] -= scale;
        rl[n] = (double)mx + log(s) - (double)xt;
    }
    double sum = 0.0;
    int64_t cnt = 0;
    for (int n = 0; n < N; n++) /* row order: the same sum for any thread count */
        if (targets[n] != OPS_IGNORE_INDEX) sum += rl[n], cnt++;
    free(rl);
    if (count) *count = cnt;
    if (bad >= 0) {
        fprintf(stderr, "ops_cross_entropy_fused: target %d at row %d outside [0, %d) and not %d\n",
                (int)targets[bad], bad, V, OPS_IGNORE_INDEX);
        return NAN;
    }
    return sum;
}

/* ------------------------------------------------------------------ argmax */

void ops_argmax_rows(int32_t *out, const float *x, int N, int V) {
#pragma omp parallel for schedule(static) if ((size_t)N * V > 65536)
    for (int n = 0; n < N; n++) {
        const float *r = x + (size_t)n * V;
        int best = 0;
        for (int v = 1; v < V && !isnan(r[best]); v++) /* strictly larger (or the first NaN) replaces */
            if (isnan(r[v]) || r[v] > r[best]) best = v;
        out[n] = best;
    }
}

/* ops_cpu_moe.c — CPU reference of the feed-forward-side ops in ops_moe.h.
 *
 * Parallel loops split over independent rows (tokens, sequences); every
 * output element is written by one thread in a fixed order, so results do not
 * depend on the thread count.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"
#include "ops_cpu_simd.h"

static void *xmalloc(size_t n, const char *what) {
    void *p = malloc(n ? n : 1);
    if (!p) error_one("out of memory allocating %zu bytes for %s", n, what);
    return p;
}

static inline float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

/* ---- SwiGLU ---- */

void ops_swiglu_forward(float *h, const float *g, int gs, const float *u, int us, int T, int I) {
#pragma omp parallel for if ((size_t)T * I > 65536)
    for (int t = 0; t < T; t++) {
        const float *gt = g + (size_t)t * gs, *ut = u + (size_t)t * us;
        float *ht = h + (size_t)t * I;
#pragma omp simd
        for (int i = 0; i < I; i++) ht[i] = gt[i] * sigmoidf_(gt[i]) * ut[i];
    }
}

void ops_swiglu_backward(float *dg, int dgs, float *du, int dus, const float *dh, const float *g, int gs,
                         const float *u, int us, int T, int I) {
#pragma omp parallel for if ((size_t)T * I > 65536)
    for (int t = 0; t < T; t++) {
        const float *gt = g + (size_t)t * gs, *ut = u + (size_t)t * us, *dht = dh + (size_t)t * I;
        float *dgt = dg + (size_t)t * dgs, *dut = du + (size_t)t * dus;
#pragma omp simd
        for (int i = 0; i < I; i++) {
            float sg = sigmoidf_(gt[i]);
            float silu = gt[i] * sg;
            /* silu'(z) = σ(z)·(1 + z·(1 − σ(z))) */
            dgt[i] += dht[i] * ut[i] * sg * (1.0f + gt[i] * (1.0f - sg));
            dut[i] += dht[i] * silu;
        }
    }
}

void ops_sigmoid(float *y, const float *x, size_t n) {
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] = sigmoidf_(x[i]);
}

/* ---- Routing ---- */

/* One token. sc [E], keep [E], gscore [ng] are scratch. */
static void route_token(int *idx, float *w, const float *s, const float *bias, int E, int K, int ng, int kg,
                        int norm, float scale, float *sc, unsigned char *keep, float *gscore) {
    for (int e = 0; e < E; e++) sc[e] = s[e] + (bias ? bias[e] : 0.0f);
    if (ng > 1) {
        int gsz = E / ng;
        for (int g = 0; g < ng; g++) {
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
        memset(keep, 0, (size_t)E);
        for (int j = 0; j < kg; j++) {
            int best = -1;
            for (int g = 0; g < ng; g++) /* keep[g*gsz] marks a kept group */
                if (!keep[g * gsz] && (best < 0 || gscore[g] > gscore[best])) best = g;
            if (best < 0) break;
            memset(keep + (size_t)best * gsz, 1, (size_t)gsz);
        }
    } else {
        memset(keep, 1, (size_t)E);
    }
    /* Experts outside the kept groups are excluded: the −inf mask of spec §10.1. */
    double S = 0.0;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (keep[e] && (best < 0 || sc[e] > sc[best])) best = e;
        DSV3_CHECK(best >= 0, "ops_moe_route: fewer than K=%d experts in the kept groups", K);
        idx[k] = best;
        keep[best] = 0;
        S += s[best];
    }
    if (w) {
        float inv = norm ? (float)(1.0 / S) : 1.0f;
        for (int k = 0; k < K; k++) w[k] = s[idx[k]] * inv * scale;
    }
}

void ops_moe_route(int *idx, float *w, const float *s, const float *bias, int T, int E, int K, int n_group,
                   int topk_group, int norm, float scale) {
    if (n_group < 1 || E % n_group || K > E || (n_group > 1 && K > topk_group * (E / n_group))) {
        error_one("ops_moe_route: bad routing shape E=%d K=%d n_group=%d topk_group=%d", E, K, n_group, topk_group);
    }
#pragma omp parallel if (T > 64)
    {
        float *sc = xmalloc((size_t)E * sizeof *sc, "route scratch");
        unsigned char *keep = xmalloc((size_t)E, "route scratch");
        float *gscore = xmalloc((size_t)n_group * sizeof *gscore, "route scratch");
#pragma omp for
        for (int t = 0; t < T; t++)
            route_token(idx + (size_t)t * K, w ? w + (size_t)t * K : NULL, s + (size_t)t * E, bias, E, K, n_group,
                        topk_group, norm, scale, sc, keep, gscore);
        free(sc);
        free(keep);
        free(gscore);
    }
}

void ops_moe_route_backward(float *dlogits, const float *dw, const float *s, const int *idx, int T, int E, int K,
                            int norm, float scale) {
#pragma omp parallel for if (T > 64)
    for (int t = 0; t < T; t++) {
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

/* ---- Balance loss ---- */

/* f [E] of one sequence (counts of the unbiased top-K, scaled). */
static void balance_f(double *f, const int *topk, int T, int E, int K) {
    memset(f, 0, (size_t)E * sizeof *f);
    for (size_t j = 0; j < (size_t)T * K; j++) f[topk[j]] += 1.0;
    double c = (double)E / ((double)K * T);
    for (int e = 0; e < E; e++) f[e] *= c;
}

double ops_moe_balance(const float *s, const int *topk, int B, int T, int E, int K) {
    if (B <= 0 || T <= 0) return 0.0;
    double *val = xmalloc((size_t)B * sizeof *val, "balance");
#pragma omp parallel if (B > 1)
    {
        double *f = xmalloc((size_t)E * sizeof *f, "balance"), *P = xmalloc((size_t)E * sizeof *P, "balance");
#pragma omp for
        for (int b = 0; b < B; b++) {
            const float *sb = s + (size_t)b * T * E;
            balance_f(f, topk + (size_t)b * T * K, T, E, K);
            memset(P, 0, (size_t)E * sizeof *P);
            for (int t = 0; t < T; t++) {
                const float *st = sb + (size_t)t * E;
                double S = 0.0;
                for (int e = 0; e < E; e++) S += st[e];
                for (int e = 0; e < E; e++) P[e] += st[e] / S;
            }
            double v = 0.0;
            for (int e = 0; e < E; e++) v += f[e] * P[e] / T;
            val[b] = v;
        }
        free(f);
        free(P);
    }
    double sum = 0.0;
    for (int b = 0; b < B; b++) sum += val[b];
    free(val);
    return sum;
}

void ops_moe_balance_backward(float *dlogits, const float *s, const int *topk, int B, int T, int E, int K,
                              float coef) {
    if (B <= 0 || T <= 0) return;
#pragma omp parallel if (B > 1)
    {
        double *g = xmalloc((size_t)E * sizeof *g, "balance");
#pragma omp for
        for (int b = 0; b < B; b++) {
            balance_f(g, topk + (size_t)b * T * K, T, E, K);
            for (int e = 0; e < E; e++) g[e] *= (double)coef / T; /* ∂L/∂s'_{t,e} */
            for (int t = 0; t < T; t++) {
                size_t r = (size_t)b * T + t;
                const float *st = s + r * E;
                float *dl = dlogits + r * E;
                double S = 0.0, a = 0.0;
                for (int e = 0; e < E; e++) S += st[e];
                for (int e = 0; e < E; e++) a += g[e] * st[e];
                a /= S;
                /* s' = s/S: ∂L/∂s_e = (g_e − Σ_j g_j s'_j)/S */
                for (int e = 0; e < E; e++) dl[e] += (float)((g[e] - a) / S * st[e] * (1.0f - st[e]));
            }
        }
        free(g);
    }
}

/* ---- Dispatch bookkeeping ---- */

int ops_moe_dispatch_index(int *stok, int *toff, int *trows, int *ptk, int *smeta, int *scnt, int *spc, int *ecnt,
                           const int *idx, const float *w, const int *efirst, int N, int K, int P) {
    int E = efirst[P];
    memset(ecnt, 0, (size_t)E * sizeof *ecnt);
    memset(scnt, 0, (size_t)P * sizeof *scnt);
    memset(spc, 0, (size_t)P * sizeof *spc);
    int *owner = xmalloc((size_t)E * sizeof *owner, "dispatch owners");
    for (int r = 0; r < P; r++)
        for (int e = efirst[r]; e < efirst[r + 1]; e++) owner[e] = r;
    /* counts: a token's row to r exists when any of its K experts is on r */
    int *last = xmalloc((size_t)P * sizeof *last, "dispatch"); /* last token counted per rank */
    for (int r = 0; r < P; r++) last[r] = -1;
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) {
            int e = idx[(size_t)t * K + k], r = owner[e];
            ecnt[e]++;
            spc[r]++;
            if (last[r] != t) last[r] = t, scnt[r]++;
        }
    /* offsets, then fill destination-major */
    int *ro = xmalloc((size_t)P * 2 * sizeof *ro, "dispatch"), *po = ro + P, S = 0, Q = 0;
    for (int r = 0; r < P; r++) {
        ro[r] = S, po[r] = Q;
        S += scnt[r], Q += spc[r];
        last[r] = -1;
    }
    int *rowbase = xmalloc((size_t)P * sizeof *rowbase, "dispatch");
    for (int r = 0; r < P; r++) rowbase[r] = ro[r];
    toff[0] = 0;
    for (int t = 0; t < N; t++) {
        int n = 0;
        for (int k = 0; k < K; k++) {
            int e = idx[(size_t)t * K + k], r = owner[e];
            if (last[r] != t) { /* first pair of t on r: its row */
                last[r] = t;
                stok[ro[r]++] = t;
                n++;
            }
            int q = po[r]++;
            ptk[q] = t * K + k;
            smeta[3 * (size_t)q] = ro[r] - 1 - rowbase[r];
            smeta[3 * (size_t)q + 1] = e - efirst[r];
            memcpy(&smeta[3 * (size_t)q + 2], &w[(size_t)t * K + k], sizeof(float));
        }
        toff[t + 1] = toff[t] + n;
    }
    /* token-major view of the rows, ascending destination */
    for (int r = 0; r < P; r++) {
        for (int j = rowbase[r]; j < ro[r]; j++) trows[toff[stok[j]]++] = j;
    }
    for (int t = N; t > 0; t--) toff[t] = toff[t - 1]; /* the fill advanced each start to the next's */
    toff[0] = 0;
    free(rowbase);
    free(ro);
    free(last);
    free(owner);
    return S;
}

void ops_moe_receive_index(int *perm, int *pinv, int *poff, float *pw, int *lcnt, const int *rmeta, const int *roff,
                           const int *rpo, int P, int Pr, int R, int G) {
    memset(lcnt, 0, (size_t)G * sizeof *lcnt);
    for (int p = 0; p < Pr; p++) lcnt[rmeta[3 * (size_t)p + 1]]++;
    int *go = xmalloc((size_t)(G > 0 ? G : 1) * sizeof *go, "receive index");
    for (int g = 0, o = 0; g < G; g++) go[g] = o, o += lcnt[g];
    for (int i = 0; i <= R; i++) poff[i] = 0;
    for (int r = 0; r < P; r++) {
        int p1 = r + 1 < P ? rpo[r + 1] : Pr;
        for (int p = rpo[r]; p < p1; p++) {
            const int *m = rmeta + 3 * (size_t)p;
            int row = roff[r] + m[0], j = go[m[1]]++;
            perm[j] = row;
            pinv[p] = j;
            memcpy(&pw[p], &m[2], sizeof(float));
            poff[row + 1]++;
        }
    }
    for (int i = 0; i < R; i++) poff[i + 1] += poff[i];
    free(go);
}

/* ---- Rows ---- */

void ops_gather_rows(float *dst, const float *src, const int *idx, int n, int C) {
#pragma omp parallel for if ((size_t)n * C > 65536)
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * C, src + (size_t)idx[i] * C, (size_t)C * sizeof *dst);
}

void ops_scatter_rows(float *dst, const float *src, const int *idx, int n, int C) {
#pragma omp parallel for if ((size_t)n * C > 65536)
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)idx[i] * C, src + (size_t)i * C, (size_t)C * sizeof *dst);
}

void ops_moe_combine_seg(float *out, const float *y, const int *off, const int *pos, const float *w, int n, int C,
                     float beta) {
#pragma omp parallel for if ((size_t)n * C > 65536)
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * C;
        if (beta == 0.0f)
            memset(o, 0, (size_t)C * sizeof *o);
        else if (beta != 1.0f)
            for (int c = 0; c < C; c++) o[c] *= beta;
        for (int p = off[i]; p < off[i + 1]; p++) {
            const float *yp = y + (size_t)pos[p] * C;
            float wp = w ? w[p] : 1.0f;
#pragma omp simd
            for (int c = 0; c < C; c++) o[c] += wp * yp[c];
        }
    }
}

void ops_moe_combine_seg_backward(float *dy, float *dw, const float *dout, const float *y, const int *off,
                              const int *pos, const float *w, int n, int C) {
#pragma omp parallel for if ((size_t)n * C > 65536)
    for (int i = 0; i < n; i++) {
        const float *d = dout + (size_t)i * C;
        for (int p = off[i]; p < off[i + 1]; p++) {
            size_t q = (size_t)pos[p];
            if (dw) {
                const float *yp = y + q * C;
                double a = 0.0;
#pragma omp simd reduction(+ : a)
                for (int c = 0; c < C; c++) a += (double)d[c] * yp[c];
                dw[p] = (float)a;
            }
            float *dyp = dy + q * C;
            float wp = w[p];
#pragma omp simd
            for (int c = 0; c < C; c++) dyp[c] = wp * d[c];
        }
    }
}

/* ---- The wire ---- */

/* fp8 rows: C codes then ceil(C/128) fp32 scales. Rows are converted through
 * small local blocks (memcpy in and out: the packed and fp32 views share the
 * memory), in an order that never overwrites bytes not yet read: packing goes
 * forward (packed row i ends at or before fp32 row i+1 starts), unpacking
 * backward; a row's scales are held locally while its codes move. */
enum { WIRE_BLK = OPS_FP8_BLOCK, WIRE_MAXB = 1024 };

void ops_wire_pack(float *rows, int n, int C, int wire) {
    if (wire == OPS_WIRE_F32 || n <= 0) return;
    size_t rb = ops_wire_row_bytes(C, wire);
    int nb = (C + WIRE_BLK - 1) / WIRE_BLK;
    DSV3_CHECK(rb <= 4 * (size_t)C && nb <= WIRE_MAXB, "ops_wire_pack: row of %d values does not pack in place", C);
    unsigned char *b = (unsigned char *)rows;
    float x[WIRE_BLK], sc[WIRE_MAXB];
    uint16_t h[WIRE_BLK];
    uint8_t q[WIRE_BLK];
    for (size_t i = 0; i < (size_t)n; i++)
        for (int k = 0; k < nb; k++) {
            int c0 = k * WIRE_BLK, m = C - c0 < WIRE_BLK ? C - c0 : WIRE_BLK;
            memcpy(x, b + 4 * (i * C + c0), (size_t)m * 4);
            if (wire == OPS_WIRE_BF16) {
                ops_f32_to_bf16_n(x, h, (size_t)m);
                memcpy(b + i * rb + 2 * (size_t)c0, h, (size_t)m * 2);
            } else {
                float amax = 0.0f;
                for (int c = 0; c < m; c++) amax = fmaxf(amax, fabsf(x[c]));
                sc[k] = amax > 0.0f ? amax / 448.0f : 1.0f;
                for (int c = 0; c < m; c++) q[c] = ops_f32_to_e4m3(x[c] / sc[k]);
                memcpy(b + i * rb + (size_t)c0, q, (size_t)m);
                if (k == nb - 1) memcpy(b + i * rb + (size_t)C, sc, (size_t)nb * 4);
            }
        }
}

void ops_wire_unpack(float *rows, int n, int C, int wire) {
    if (wire == OPS_WIRE_F32 || n <= 0) return;
    size_t rb = ops_wire_row_bytes(C, wire);
    int nb = (C + WIRE_BLK - 1) / WIRE_BLK;
    DSV3_CHECK(rb <= 4 * (size_t)C && nb <= WIRE_MAXB, "ops_wire_unpack: row of %d values does not pack in place", C);
    unsigned char *b = (unsigned char *)rows;
    float x[WIRE_BLK], sc[WIRE_MAXB];
    uint16_t h[WIRE_BLK];
    uint8_t q[WIRE_BLK];
    for (size_t i = (size_t)n; i-- > 0;) {
        if (wire == OPS_WIRE_FP8) memcpy(sc, b + i * rb + (size_t)C, (size_t)nb * 4);
        for (int k = nb; k-- > 0;) {
            int c0 = k * WIRE_BLK, m = C - c0 < WIRE_BLK ? C - c0 : WIRE_BLK;
            if (wire == OPS_WIRE_BF16) {
                memcpy(h, b + i * rb + 2 * (size_t)c0, (size_t)m * 2);
                for (int c = 0; c < m; c++) x[c] = ops_bf16_to_f32(h[c]);
            } else {
                memcpy(q, b + i * rb + (size_t)c0, (size_t)m);
                for (int c = 0; c < m; c++) x[c] = ops_e4m3_to_f32(q[c]) * sc[k];
            }
            memcpy(b + 4 * (i * C + c0), x, (size_t)m * 4);
        }
    }
}

/* ---- Grouped matmul ---- */

void ops_grouped_matmul(float *y, const float *x, const float *w, const int *cnt, int G, int in, int out) {
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        ops_matmul(y + r * out, x + r * in, w + (size_t)g * out * in, cnt[g], in, out, 0.0f);
        r += (size_t)cnt[g];
    }
}

void ops_grouped_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                                 const int *cnt, int G, int in, int out) {
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        ops_matmul_backward(dx ? dx + r * in : NULL, dw ? dw + (size_t)g * out * in : NULL, dy + r * out,
                            x ? x + r * in : NULL, w ? w + (size_t)g * out * in : NULL, cnt[g], in, out);
        r += (size_t)cnt[g];
    }
}

void ops_grouped_matmul_w(float *y, const float *x, const ops_weight *w, const int *cnt, int G, ops_arena *scratch) {
    if (w->dtype == OPS_F32) {
        ops_grouped_matmul(y, x, (const float *)w->data, cnt, G, w->in, w->out);
        return;
    }
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        if (cnt[g] > 0) {
            ops_weight v = ops_weight_expert(w, g);
            ops_matmul_w(y + r * w->out, x + r * w->in, &v, cnt[g], 0.0f, scratch);
        }
        r += (size_t)cnt[g];
    }
}

void ops_grouped_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, const int *cnt, int G,
                                      ops_arena *scratch) {
    if (!dx) return;
    if (w->dtype == OPS_F32) {
        ops_grouped_matmul_backward(dx, NULL, dy, NULL, (const float *)w->data, cnt, G, w->in, w->out);
        return;
    }
    size_t r = 0;
    for (int g = 0; g < G; g++) {
        if (cnt[g] > 0) {
            ops_weight v = ops_weight_expert(w, g);
            ops_matmul_w_backward_dx(dx + r * w->in, dy + r * w->out, &v, cnt[g], scratch);
        }
        r += (size_t)cnt[g];
    }
}

/* ---- Bias update ---- */

void ops_moe_bias_update(float *bias, const int64_t *counts, int E, float gamma) {
    if (E <= 0) return;
    double mean = 0.0;
    for (int e = 0; e < E; e++) mean += (double)counts[e];
    mean /= E;
    for (int e = 0; e < E; e++) {
        double d = mean - (double)counts[e];
        bias[e] += d > 0 ? gamma : d < 0 ? -gamma : 0.0f;
    }
}

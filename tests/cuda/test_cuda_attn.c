/* test_cuda_attn.c — twins of cuda/ops_attn.cu (ops_attn.h: RMSNorm, RoPE,
 * attention, latent attention, embedding, cross-entropy) against
 * src/ops_cpu_attn.c. Shapes: the tiny deck's (input/models/tiny.cfg: hidden
 * 64, 4 heads, qk 16+8, v 16, kv_lora 16, seq 64 × micro-batch 2, vocab 256),
 * DeepSeek-V3's head widths (qk 192, v 128, latent 512+64, hidden 7168, vocab
 * 129,280), one row, widths off the block size.
 *
 * Tolerances (README "CUDA backend"): normalised outputs (RMSNorm y, rstd) rel
 * 1e-5 per element; products and sums (RoPE — nvcc may fuse a·c − b·s into an
 * FMA —, RMSNorm's dx/dw, attention) rel 1e-5 of the tensor's max |ref| (the
 * GEMM rule); cross-entropy: dlogits rel 1e-5 per element plus 1e-7·|scale|
 * (the target's softmax − scale cancels), losses abs 1e-5 per row and on the
 * mean; embedding rows and their gradient (the CPU's order of adds) bitwise.
 * Backward ops accumulate into buffers filled with values as large as the
 * gradient itself, so `=` for `+=` (or a wrong gradient) fails. */
#include "cu_ops_attn.h"
#include "twin.h"

#include "ops_attn.h"

static void dfree(void *d) { CK(cudaFree(d)); }
static float max_abs(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}
/* n values in [-a, a), the start of a `+=` buffer (a gradient that is exactly 0,
 * as attention's dq and dk at T = 1, gets values in [-1, 1)) */
static float *acc_init(size_t n, uint64_t key, float a) {
    float *h = twin_host(n, key, -1, 1);
    if (a == 0.0f) a = 1.0f;
    for (size_t i = 0; i < n; i++) h[i] *= a;
    return h;
}
static float *dup(const float *x, size_t n) {
    float *y = malloc((n ? n : 1) * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}
/* CUDA result vs CPU result, rel to max |ref| */
static void close_inf(const char *op, const char *what, const float *d, const float *ref, size_t n) {
    float *got = twin_back(d, n * sizeof *got);
    twin_close(op, what, got, ref, n, 1e-5, 0, 0);
    free(got);
}
static void close_elem(const char *op, const char *what, const float *d, const float *ref, size_t n, double abs_floor) {
    float *got = twin_back(d, n * sizeof *got);
    twin_close(op, what, got, ref, n, 1e-5, abs_floor, 1);
    free(got);
}

/* ------------------------------------------------------------------ RMSNorm */

static void rmsnorm(int T, int C) {
    char what[64];
    snprintf(what, sizeof what, "T=%d C=%d", T, C);
    const size_t n = (size_t)T * C;
    float *x = twin_host(n, 11, -2, 2), *w = twin_host(C, 12, 0.5f, 1.5f), *dy = twin_host(n, 13, -1, 1);
    float *y = malloc(n * 4), *rstd = malloc(T * 4);
    ops_rmsnorm_forward(y, rstd, x, w, T, C, 1e-6f);
    float *dx_, *dw_, *dyy = twin_dev(dy, n * 4);
    float *dX = twin_dev(x, n * 4), *dW = twin_dev(w, C * 4), *dY = twin_dev(y, n * 4), *dR = twin_dev(rstd, T * 4);
    CK(cudaMemset(dY, 0, n * 4));
    CK(cudaMemset(dR, 0, T * 4));
    CK(cu_rmsnorm_forward(dY, dR, dX, dW, T, C, 1e-6f, twin_s));
    close_elem("ops_rmsnorm_forward", what, dY, y, n, 0);
    close_elem("ops_rmsnorm_forward", "rstd", dR, rstd, T, 0);

    /* backward: the gradient's size first (zero buffers), then += into buffers of that size */
    float *gx0 = calloc(n, 4), *gw0 = calloc(C, 4);
    ops_rmsnorm_backward(gx0, gw0, dy, x, w, rstd, T, C);
    float *gx = acc_init(n, 14, max_abs(gx0, n)), *gw = acc_init(C, 15, max_abs(gw0, C));
    dx_ = twin_dev(gx, n * 4), dw_ = twin_dev(gw, C * 4);
    ops_rmsnorm_backward(gx, gw, dy, x, w, rstd, T, C);
    CK(cu_rmsnorm_backward(dx_, dw_, dyy, dX, dW, dR, T, C, twin_s));
    close_inf("ops_rmsnorm_backward", what, dx_, gx, n);
    close_inf("ops_rmsnorm_backward", "dw", dw_, gw, C);
    /* frozen weight: dw NULL, dx += again */
    ops_rmsnorm_backward(gx, NULL, dy, x, w, rstd, T, C);
    CK(cu_rmsnorm_backward(dx_, NULL, dyy, dX, dW, dR, T, C, twin_s));
    close_inf("ops_rmsnorm_backward", "dw=NULL", dx_, gx, n);
    dfree(dx_), dfree(dw_), dfree(dyy), dfree(dX), dfree(dW), dfree(dY);
    dfree(dR);
    free(x), free(w), free(dy), free(y), free(rstd), free(gx0), free(gw0), free(gx), free(gw);
}

/* --------------------------------------------------------------------- RoPE */

/* rows B·T of row_stride floats, nh heads of head_stride, rotary block [off, off+dr);
 * tables [Tmax, dr/2] read from row `p_off` on (a decode step's positions) */
static void rope(const char *what, int row_stride, int nh, int head_stride, int off, int dr, int B, int T, int p_off) {
    const int Tmax = p_off + T, half = dr / 2;
    const size_t n = (size_t)B * T * row_stride, nt = (size_t)Tmax * half;
    float *x = twin_host(n, 21, -2, 2), *c = twin_host(nt, 22, -1, 1), *s = twin_host(nt, 23, -1, 1);
    float *dx = twin_dev(x, n * 4), *dc = twin_dev(c, nt * 4), *ds = twin_dev(s, nt * 4);
    const size_t o = (size_t)p_off * half;
    ops_rope_forward(x, row_stride, nh, head_stride, off, dr, c + o, s + o, B, T);
    CK(cu_rope_forward(dx, row_stride, nh, head_stride, off, dr, dc + o, ds + o, B, T, twin_s));
    close_inf("ops_rope_forward", what, dx, x, n);
    float *g = twin_host(n, 24, -1, 1), *dg = twin_dev(g, n * 4);
    ops_rope_backward(g, row_stride, nh, head_stride, off, dr, c + o, s + o, B, T);
    CK(cu_rope_backward(dg, row_stride, nh, head_stride, off, dr, dc + o, ds + o, B, T, twin_s));
    close_inf("ops_rope_backward", what, dg, g, n);
    dfree(dx), dfree(dc), dfree(ds), dfree(dg);
    free(x), free(c), free(s), free(g);
}

/* ---------------------------------------------------------------- attention */

/* max |a − b| / max |b| */
static double rel_inf(const float *a, const float *b, size_t n) {
    double d = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), m = fmax(m, fabs((double)b[i]));
    return m > 0.0 ? d / m : d;
}

/* bf16 mode's rounding boundaries. Both backends round the fp32 P (and dS) to bf16; their fp32
 * values agree to a few ulps (the GEMMs and sums run in different orders), so where one lies
 * that close to a bf16 rounding boundary the two may round it to adjacent bf16 values, and a
 * GEMM output moves by that bf16 ulp times the other operand (up to 2^-8·P·|v|: 6e-5 of |out| at
 * P = 1/64, past the GEMM rule). The twins allow exactly that, per element: the allowance is
 * Σ ulp·|operand| over the P (dS) values of its sum whose reference, computed here in double on
 * the rounded operands, lies within δ of a boundary, δ = 1e-5 relative to the magnitudes that
 * enter it (fp32 disagreement is ~1e-7 of those). Everything else keeps 1e-5 of max |ref|; an
 * op that skipped the rounding is ~2^-8 off everywhere and fails. */
static double bfr(float x) { return ops_bf16_to_f32(ops_f32_to_bf16(x)); }
/* the bf16 values x ± w can round to differ: their distance, else 0 */
static double flip_ulp(double x, double w) { return bfr((float)(x + w)) - bfr((float)(x - w)); }
typedef struct {
    double *out, *dq, *dk, *dv; /* per-element allowances */
    int n;                      /* elements with a non-zero allowance */
} attn_flips;
static attn_flips attention_flips(int B, int T, int nh, int dqk, int dv, float scale, const float *q, const float *k,
                                  const float *v, const float *dout, const float *lse) {
    const size_t nq = (size_t)B * T * nh * dqk, nv = (size_t)B * T * nh * dv;
    attn_flips f = {calloc(nv, 8), calloc(nq, 8), calloc(nq, 8), calloc(nv, 8), 0};
    double *P = malloc((size_t)T * 8), *dP = malloc((size_t)T * 8);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++)
            for (int t = 0; t < T; t++) {
                const size_t rq = ((size_t)(b * T + t) * nh + h) * dqk, rv = ((size_t)(b * T + t) * nh + h) * dv;
                double D = 0, Da = 0;
                for (int j = 0; j <= t; j++) {
                    const size_t cq = ((size_t)(b * T + j) * nh + h) * dqk, cv = ((size_t)(b * T + j) * nh + h) * dv;
                    double sc = 0, g = 0;
                    for (int e = 0; e < dqk; e++) sc += bfr(q[rq + e]) * bfr(k[cq + e]);
                    for (int e = 0; e < dv; e++) g += bfr(dout[rv + e]) * bfr(v[cv + e]);
                    P[j] = exp(scale * sc - lse[(size_t)(b * nh + h) * T + t]), dP[j] = g;
                    D += P[j] * g, Da += P[j] * fabs(g);
                }
                for (int j = 0; j <= t; j++) {
                    const size_t cq = ((size_t)(b * T + j) * nh + h) * dqk, cv = ((size_t)(b * T + j) * nh + h) * dv;
                    const double up = flip_ulp(P[j], 1e-5 * P[j]), ds = P[j] * (dP[j] - D) * scale;
                    const double us = flip_ulp(ds, 1e-5 * (P[j] * scale * (fabs(dP[j]) + Da) + fabs(ds)));
                    if (up > 0)
                        for (int e = 0; e < dv; e++) {
                            f.out[rv + e] += up * fabs(bfr(v[cv + e]));
                            f.dv[cv + e] += up * fabs(bfr(dout[rv + e]));
                        }
                    if (us > 0)
                        for (int e = 0; e < dqk; e++) {
                            f.dq[rq + e] += us * fabs(bfr(k[cq + e]));
                            f.dk[cq + e] += us * fabs(bfr(q[rq + e]));
                        }
                    f.n += (up > 0) + (us > 0);
                }
            }
    free(P), free(dP);
    return f;
}
/* |got − ref| <= 1e-5·max |ref| + allow[i] (allow NULL: the GEMM rule alone) */
static void close_flips(const char *op, const char *what, const float *d, const float *ref, size_t n,
                        const double *allow) {
    float *got = twin_back(d, n * sizeof *got);
    double inf = 0.0, worst = 0.0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) inf = fmax(inf, fabs((double)ref[i]));
    for (size_t i = 0; i < n; i++) {
        const double err = fabs((double)got[i] - ref[i]), bound = 1e-5 * inf + (allow ? allow[i] : 0.0);
        if (!(err <= bound)) ok = 0;
        if (bound > 0) worst = fmax(worst, err / bound);
        else if (err > 0) worst = INFINITY;
    }
    twin_fold(got, n * sizeof *got);
    twin_report(ok, op, what, worst);
    free(got);
}

/* rows: the CUDA op's query rows per chunk (0: the ops' rule, ops_attention_chunk_rows); the
 * CPU reference runs its own blocks in an arena of ops_attention_scratch_floats. bf16: both
 * ops at GEMM precision bf16 (ops_attn.h "Precision"), the fp32 mode's results kept in f32
 * (the CPU's forward output and gradients, NULL in fp32 mode) to show that the rounding
 * happened: bf16 differs from fp32 by about bf16's precision, 2^-8 relative. */
typedef struct {
    float *out, *gq, *gk, *gv;
} attn_f32;
static void attention_at(int B, int T, int nh, int dqk, int dv, int rows, int bf16, attn_f32 *f32) {
    char what[112];
    const int r = rows > 0 ? rows : ops_attention_chunk_rows(B, T, nh), bq = r < T ? r : T;
    const int gemm = bf16 ? OPS_GEMM_BF16 : OPS_GEMM_F32;
    ops_gemm_set(gemm); /* process-wide: the CPU ops follow it; the CUDA launchers take bf16 */
    snprintf(what, sizeof what, "%sB=%d T=%d nh=%d dqk=%d dv=%d rows=%d (%d chunks)", bf16 ? "bf16 " : "", B, T, nh,
             dqk, dv, r, (T + bq - 1) / bq);
    const size_t nq = (size_t)B * T * nh * dqk, nv = (size_t)B * T * nh * dv, nl = (size_t)B * nh * T;
    const float scale = 1.0f / sqrtf((float)dqk) * 1.3f;
    float *q = twin_host(nq, 31, -1.5f, 1.5f), *k = twin_host(nq, 32, -1.5f, 1.5f), *v = twin_host(nv, 33, -1, 1);
    float *out = malloc(nv * 4), *lse = malloc(nl * 4);
    ops_arena ar;
    if (ops_arena_create(&ar, ops_attention_scratch_floats(B, T, nh, dqk, dv, 1, gemm))) exit(2);
    ops_attention_forward(out, lse, q, k, v, B, T, nh, dqk, dv, scale, &ar);
    /* the CUDA op's scratch: exactly what its chunks need (R floats, 2·R in the backward, and the bf16 copies) */
    const size_t W = cu_attention_work_floats(B, T, nh, dqk, dv, r, 1, bf16);
    float *dQ = twin_dev(q, nq * 4), *dK = twin_dev(k, nq * 4), *dV = twin_dev(v, nv * 4), *dW = twin_alloc(W * 4);
    float *dO, *dL;
    CK(cudaMalloc((void **)&dO, nv * 4));
    CK(cudaMalloc((void **)&dL, nl * 4));
    CK(cu_attention_forward(dO, dL, dQ, dK, dV, B, T, nh, dqk, dv, scale, bf16, r, dW,
                            cu_attention_work_floats(B, T, nh, dqk, dv, r, 0, bf16), twin_s));
    float *dout = twin_host(nv, 34, -1, 1), *ddout = twin_dev(dout, nv * 4);
    attn_flips fl = {0};
    if (bf16) fl = attention_flips(B, T, nh, dqk, dv, scale, q, k, v, dout, lse);
    close_flips("ops_attention_forward", what, dO, out, nv, fl.out);
    close_inf("ops_attention_forward", bf16 ? "bf16 lse" : "lse", dL, lse, nl);

    float *gq0 = calloc(nq, 4), *gk0 = calloc(nq, 4), *gv0 = calloc(nv, 4);
    ops_attention_backward(gq0, gk0, gv0, dout, q, k, v, lse, B, T, nh, dqk, dv, scale, &ar);
    float *gq = acc_init(nq, 35, max_abs(gq0, nq)), *gk = acc_init(nq, 36, max_abs(gk0, nq)),
          *gv = acc_init(nv, 37, max_abs(gv0, nv));
    float *dgq = twin_dev(gq, nq * 4), *dgk = twin_dev(gk, nq * 4), *dgv = twin_dev(gv, nv * 4);
    ops_attention_backward(gq, gk, gv, dout, q, k, v, lse, B, T, nh, dqk, dv, scale, &ar);
    /* the CUDA backward reads the CPU's lse: each op is checked on the same inputs */
    float *dLc = twin_dev(lse, nl * 4);
    CK(cu_attention_backward(dgq, dgk, dgv, ddout, dQ, dK, dV, dLc, B, T, nh, dqk, dv, scale, bf16, r, dW, W, twin_s));
    close_flips("ops_attention_backward", bf16 ? "bf16 dq" : "dq", dgq, gq, nq, fl.dq);
    close_flips("ops_attention_backward", bf16 ? "bf16 dk" : "dk", dgk, gk, nq, fl.dk);
    close_flips("ops_attention_backward", what, dgv, gv, nv, fl.dv);
    if (bf16)
        printf("attention bf16 %s: %d P/dS values near a bf16 rounding boundary (allowance above 1e-5)\n", what + 5,
               fl.n);
    free(fl.out), free(fl.dq), free(fl.dk), free(fl.dv);
    if (!bf16) {
        *f32 = (attn_f32){dup(out, nv), gq0, gk0, gv0};
    } else { /* the CPU's bf16 mode against its fp32 mode: the gradients from zero (gq0..), not the += buffers */
        const double e[4] = {rel_inf(out, f32->out, nv), rel_inf(gq0, f32->gq, nq), rel_inf(gk0, f32->gk, nq),
                             rel_inf(gv0, f32->gv, nv)};
        const float m[4] = {1, max_abs(f32->gq, nq), max_abs(f32->gk, nq), 1};
        double lo = e[0], hi = e[0];
        for (int i = 1; i < 4; i++)
            if (m[i] > 0) lo = fmin(lo, e[i]), hi = fmax(hi, e[i]); /* T = 1: dq = dk = 0 in both modes */
        /* at least 2^-14 (the rounding happened: fp32 mode's own error is ~1e-7) and at most 2^-5 */
        twin_report(lo >= 0x1p-14 && hi <= 0x1p-5, "ops_attention_backward",
                    twin_fmt("bf16 vs fp32 mode %s: out %.2e dq %.2e dk %.2e dv %.2e", what + 5, e[0], e[1], e[2],
                             e[3]),
                    hi);
        free(f32->out), free(f32->gq), free(f32->gk), free(f32->gv);
        free(gq0), free(gk0), free(gv0);
    }
    ops_arena_destroy(&ar);
    dfree(dQ), dfree(dK), dfree(dV), dfree(dO), dfree(dL), dfree(ddout);
    dfree(dgq), dfree(dgk), dfree(dgv), dfree(dLc), twin_free(dW);
    free(q), free(k), free(v), free(out), free(lse), free(dout), free(gq), free(gk), free(gv);
    ops_gemm_set(OPS_GEMM_F32);
}
/* both modes on one shape: fp32 (gemm_dtype fp32), then bf16 operands (gemm_dtype bf16/fp8) */
static void attention(int B, int T, int nh, int dqk, int dv, int rows) {
    attn_f32 f32;
    attention_at(B, T, nh, dqk, dv, rows, 0, &f32);
    attention_at(B, T, nh, dqk, dv, rows, 1, &f32);
}

/* the chunk rule (ops_attn.h) at DeepSeek-V3's width and past the cap; what the CUDA op refuses */
static void attention_rule(void) {
    const int r = ops_attention_chunk_rows(1, 4096, 128);
    const size_t f = ops_attention_scratch_floats(1, 4096, 128, 192, 128, 0, OPS_GEMM_F32),
                 b = ops_attention_scratch_floats(1, 4096, 128, 192, 128, 1, OPS_GEMM_F32);
    printf("attention chunk rule at B=1 T=4096 nh=128: %d rows (%d chunks), scratch forward %zu floats (%.0f MiB), "
           "backward %zu (%.0f MiB)\n", r, (4096 + r - 1) / r, f, f * 4.0 / 1048576, b, b * 4.0 / 1048576);
    twin_report(r == 128 && f == OPS_ATTN_SCORE_FLOATS && b == 2 * OPS_ATTN_SCORE_FLOATS, "ops_attention_forward",
                twin_fmt("chunk rule B=1 T=4096 nh=128: %d rows, %zu + %zu floats", r, f, b - f), 0);
    /* bf16 mode: + bf16 k [4096, 128·192] and v [4096, 128·128] (50331648 + 33554432 floats), a chunk
     * of q [128, 128·192] (1572864) and, backward, of dout [128, 128·128] (1048576) */
    const size_t fb = ops_attention_scratch_floats(1, 4096, 128, 192, 128, 0, OPS_GEMM_BF16) - f,
                 bb = ops_attention_scratch_floats(1, 4096, 128, 192, 128, 1, OPS_GEMM_BF16) - b;
    printf("attention bf16 copies at B=1 T=4096 nh=128 dqk=192 dv=128: forward +%zu floats (%.1f MiB), backward +%zu "
           "(%.1f MiB)\n", fb, fb * 4.0 / 1048576, bb, bb * 4.0 / 1048576);
    twin_report(fb == 50331648 + 33554432 + 1572864 && bb == fb + 1048576 &&
                    ops_attention_scratch_floats(1, 4096, 128, 192, 128, 1, OPS_GEMM_FP8) == b + bb &&
                    cu_attention_work_floats(1, 4096, 128, 192, 128, r, 1, 1) == b + bb,
                "ops_attention_backward", twin_fmt("bf16 copies B=1 T=4096 nh=128: +%zu, +%zu floats", fb, bb), 0);
    /* one row per (b, h) is already more than the cap: 1 row; T = 1: 1 row; short T: all of it;
     * small B·nh·T: the row cap; between: the memory cap (2^26 / (2·64·8192) = 64 rows) */
    twin_report(ops_attention_chunk_rows(8, 65536, 128) == 1 && ops_attention_chunk_rows(2, 1, 4) == 1 &&
                    ops_attention_chunk_rows(2, 64, 4) == 64 && ops_attention_chunk_rows(1, 1024, 4) == 128 &&
                    ops_attention_chunk_rows(2, 8192, 64) == 64,
                "ops_attention_forward", "chunk rule: [1, T], 128 rows, 2^26 floats", 0);
    float *d1 = twin_alloc(64 * 4);
    twin_report(cu_attention_forward(d1, d1, d1, d1, d1, 1, 2, 1, 4, 4, 1.0f, 0, 0, d1, 64, twin_s) ==
                        cudaErrorInvalidValue &&
                    cu_attention_forward(d1, d1, d1, d1, d1, 1, 9, 1, 4, 4, 1.0f, 0, 8, d1, 64, twin_s) ==
                        cudaErrorInvalidValue,
                "ops_attention_forward", "rows=0, work 64 < 80 floats refused", 0);
    twin_report(cu_attention_backward(d1, d1, d1, d1, d1, d1, d1, d1, 1, 4, 1, 4, 4, 1.0f, 0, 4, d1, 31, twin_s) ==
                        cudaErrorInvalidValue &&
                    cu_attention_backward(d1, d1, d1, d1, d1, d1, d1, d1, 1, 4, 1, 4, 0, 1.0f, 0, 4, d1, 64, twin_s) ==
                        cudaErrorInvalidValue,
                "ops_attention_backward", "work 31 < 2x16 floats, dv=0 refused", 0);
    twin_free(d1);
}

static void latent(int n, int nh, int W, int kvl, int p0) {
    char what[80];
    snprintf(what, sizeof what, "n=%d nh=%d W=%d kvl=%d p0=%d", n, nh, W, kvl, p0);
    const size_t nq = (size_t)n * nh * W, nc = (size_t)(p0 + n) * W, no = (size_t)n * nh * kvl;
    const float scale = 1.0f / sqrtf((float)W) * 1.7f;
    float *q = twin_host(nq, 41, -1, 1), *c = twin_host(nc, 42, -1, 1), *o = malloc(no * 4);
    ops_latent_attention(o, q, c, n, nh, W, kvl, p0, scale);
    float *dq = twin_dev(q, nq * 4), *dc = twin_dev(c, nc * 4), *dO;
    CK(cudaMalloc((void **)&dO, no * 4));
    CK(cu_latent_attention(dO, dq, dc, n, nh, W, kvl, p0, scale, twin_s));
    close_inf("ops_latent_attention", what, dO, o, no);
    dfree(dq), dfree(dc), dfree(dO);
    free(q), free(c), free(o);
}

/* ---------------------------------------------------------------- embedding */

/* ids drawn from `span` values (repeats), bad ids planted at rows bad1 and bad2 (-1: none) */
static void embedding(int N, int V, int H, int span, int bad1, int bad2) {
    char what[80];
    snprintf(what, sizeof what, "N=%d V=%d H=%d span=%d bad=%d", N, V, H, span, bad1);
    int32_t *ids = malloc((N ? N : 1) * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)((uint64_t)(twin_u(51, i, 0, 1) * span) * 7 % V);
    if (bad1 >= 0) ids[bad1] = V + 3;
    if (bad2 >= 0) ids[bad2] = -100;
    const size_t ne = (size_t)V * H, ny = (size_t)N * H;
    float *E = twin_host(ne, 52, -1, 1), *y = twin_host(ny, 53, -1, 1);
    int32_t *dids = twin_dev(ids, N * sizeof *ids);
    float *dE = twin_dev(E, ne * 4), *dy = twin_dev(y, ny * 4); /* y starts non-zero: bad rows must be zeroed */
    int *dbad;
    CK(cudaMalloc((void **)&dbad, sizeof *dbad));
    int rc = ops_embedding_forward(y, E, ids, N, V, H);
    CK(cu_embedding_forward(dy, dE, dids, N, V, H, dbad, twin_s));
    float *got = twin_back(dy, ny * 4);
    twin_same("ops_embedding_forward", what, got, y, ny * 4);
    free(got);
    int *gb = twin_back(dbad, sizeof *gb);
    int first = bad1 < 0 ? bad2 : bad2 < 0 ? bad1 : (bad1 < bad2 ? bad1 : bad2);
    int want = first < 0 ? N : first, have = *gb < N ? *gb : N; /* >= N: none */
    twin_same("ops_embedding_forward", "first bad row", &have, &want, sizeof have);
    twin_report((rc == 0) == (first < 0), "ops_embedding_forward", "CPU twin's return agrees", 0);
    free(gb);

    /* the same table stored in bf16 (the frozen embedding of train.embed_dtype): rows widened exactly */
    uint16_t *Eb = malloc(ne * 2 + 2);
    ops_f32_to_bf16_n(E, Eb, ne);
    uint16_t *dEb = twin_dev(Eb, ne * 2);
    ops_weight wh = {OPS_BF16, Eb, NULL, V, H}, wd = {OPS_BF16, dEb, NULL, V, H};
    float *yb = twin_host(ny, 55, -1, 1), *dyb = twin_dev(yb, ny * 4);
    rc = ops_embedding_forward_w(yb, &wh, ids, N);
    CK(cu_embedding_forward_w(dyb, &wd, dids, N, dbad, twin_s));
    got = twin_back(dyb, ny * 4);
    twin_same("ops_embedding_forward_w", what, got, yb, ny * 4);
    free(got);
    gb = twin_back(dbad, sizeof *gb);
    have = *gb < N ? *gb : N;
    twin_same("ops_embedding_forward_w", "first bad row", &have, &want, sizeof have);
    twin_report((rc == 0) == (first < 0), "ops_embedding_forward_w", "CPU twin's return agrees", 0);
    free(gb), free(Eb), free(yb);
    dfree(dEb), dfree(dyb);

    float *g = twin_host(ny, 54, -1, 1), *dg = twin_dev(g, ny * 4);
    ops_embedding_backward(E, g, ids, N, V, H); /* dE += into the (non-zero) table */
    int *dwork = twin_alloc(cu_embedding_backward_work(N) * sizeof(int) + 4);
    CK(cu_embedding_backward(dE, dg, dids, N, V, H, dwork, twin_s));
    got = twin_back(dE, ne * 4);
    twin_same("ops_embedding_backward", what, got, E, ne * 4);
    free(got);
    dfree(dids), dfree(dE), dfree(dy), dfree(dbad), dfree(dg), dfree(dwork);
    free(ids), free(E), free(y), free(g);
}

/* ------------------------------------------------------------ cross-entropy */

/* every `ign`-th row ignored (0: none); bad >= 0 plants an invalid target there */
static void cross_entropy(int N, int V, int ign, int bad) {
    char what[80];
    snprintf(what, sizeof what, "N=%d V=%d ignore/%d%s", N, V, ign, bad >= 0 ? " bad" : "");
    const size_t n = (size_t)N * V;
    const float scale = 1.0f / (float)N;
    float *x = twin_host(n, 61, -8, 8);
    int32_t *tg = malloc((N ? N : 1) * sizeof *tg);
    for (int i = 0; i < N; i++) tg[i] = ign && i % ign == 1 ? OPS_IGNORE_INDEX : (int32_t)(twin_u(62, i, 0, 1) * V);
    if (bad >= 0) tg[bad] = V;
    float *dx = twin_dev(x, n * 4), *dd, *drl;
    int32_t *dtg = twin_dev(tg, N * sizeof *tg);
    cu_ce_result *dres;
    double *rows;
    CK(cudaMalloc((void **)&dd, n * 4));
    CK(cudaMalloc((void **)&drl, (N ? N : 1) * 4));
    CK(cudaMalloc((void **)&dres, sizeof *dres));
    CK(cudaMalloc((void **)&rows, (N ? N : 1) * sizeof *rows));

    /* forward */
    float *rl = malloc((N ? N : 1) * 4);
    int64_t cnt = -1;
    double sum = ops_cross_entropy_forward(rl, &cnt, x, tg, N, V);
    CK(cu_cross_entropy_forward(drl, dx, dtg, N, V, dres, rows, twin_s));
    cu_ce_result *r = twin_back(dres, sizeof *r);
    float *grl = twin_back(drl, N * 4);
    twin_close("ops_cross_entropy_forward", what, grl, rl, N, 0, 1e-5, 1); /* abs 1e-5 per row */
    free(grl);
    twin_same("ops_cross_entropy_forward", "count", &r->count, &cnt, sizeof cnt);
    if (bad >= 0) {
        twin_report(isnan(sum) && isnan(r->sum) && r->bad_row == bad && r->bad_target == V, "ops_cross_entropy_forward",
                    "invalid target: NAN, row", 0);
    } else {
        float a = (float)(r->sum / (cnt ? cnt : 1)), b = (float)(sum / (cnt ? cnt : 1));
        twin_close("ops_cross_entropy_forward", "mean loss", &a, &b, 1, 0, 1e-5, 1);
        twin_fold(&r->sum, sizeof r->sum);
    }
    free(r);

    /* backward into a fresh buffer, then in place (dlogits aliases logits) */
    float *d = malloc(n * 4);
    ops_cross_entropy_backward(d, x, tg, N, V, scale);
    CK(cu_cross_entropy_backward(dd, dx, dtg, N, V, scale, twin_s));
    close_elem("ops_cross_entropy_backward", what, dd, d, n, 1e-7 * scale);
    float *dxa = twin_dev(x, n * 4);
    CK(cu_cross_entropy_backward(dxa, dxa, dtg, N, V, scale, twin_s));
    close_elem("ops_cross_entropy_backward", "in place", dxa, d, n, 1e-7 * scale);

    /* fused, in place as the trainer calls it */
    float *xf = dup(x, n);
    int64_t cf = -1;
    double sf = ops_cross_entropy_fused(xf, &cf, xf, tg, N, V, scale);
    CK(cudaMemcpy(dxa, x, n * 4, cudaMemcpyHostToDevice));
    CK(cu_cross_entropy_fused(dxa, dxa, dtg, N, V, scale, dres, rows, twin_s));
    r = twin_back(dres, sizeof *r);
    close_elem("ops_cross_entropy_fused", what, dxa, xf, n, 1e-7 * scale);
    twin_same("ops_cross_entropy_fused", "count", &r->count, &cf, sizeof cf);
    if (bad >= 0) {
        twin_report(isnan(sf) && isnan(r->sum) && r->bad_row == bad, "ops_cross_entropy_fused", "invalid target: NAN, row", 0);
    } else {
        float a = (float)(r->sum / (cf ? cf : 1)), b = (float)(sf / (cf ? cf : 1));
        twin_close("ops_cross_entropy_fused", "mean loss", &a, &b, 1, 0, 1e-5, 1);
        twin_fold(&r->sum, sizeof r->sum);
    }
    free(r);
    dfree(dx), dfree(dd), dfree(drl), dfree(dtg), dfree(dres), dfree(rows);
    dfree(dxa);
    free(x), free(tg), free(rl), free(d), free(xf);
}

/* ------------------------------------------------------------------- argmax */

/* mode 0: random rows; 1: ties (each row's max planted at 3 indices, two in one
 * thread's stride and one below); 2: NaNs (two per row, after a +inf); 3: all -inf */
static void argmax(int N, int V, int mode) {
    static const char *kind[4] = {"random", "ties", "NaN", "all -inf"};
    const char *what = twin_fmt("N=%d V=%d %s", N, V, kind[mode]);
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    const size_t n = (size_t)N * V;
    float *x = twin_host(n, 91, -5, 5);
    for (int r = 0; r < N; r++) {
        float *row = x + (size_t)r * V;
        int a = (int)(twin_u(92, (size_t)r, 0, 1) * V) % V, b = (a + 256) % V, c = a / 2;
        if (mode == 1) row[a] = row[b] = row[c] = 6.0f;
        if (mode == 2) row[c] = INFINITY, row[a] = row[b] = NAN;
        if (mode == 3)
            for (int j = 0; j < V; j++) row[j] = -INFINITY;
    }
    int32_t *ref = malloc((size_t)(N ? N : 1) * sizeof *ref);
    ops_argmax_rows(ref, x, N, V);
    float *dx = twin_dev(x, n * 4);
    int32_t *dout = twin_alloc((size_t)(N ? N : 1) * sizeof *dout);
    CK(cu_argmax_rows(dout, dx, N, V, twin_s));
    int32_t *got = twin_back(dout, (size_t)N * sizeof *got);
    twin_same("ops_argmax_rows", name, got, ref, (size_t)N * sizeof *ref);
    free(got), free(ref), free(x);
    dfree(dx), dfree(dout);
}

int main(void) {
    twin_init();
    /* RMSNorm: one row, C = 7, the tiny deck's hidden / q_lora / kv_lora, off the block, 7168 */
    rmsnorm(1, 7);
    rmsnorm(128, 64);
    rmsnorm(128, 32);
    rmsnorm(5, 300);
    rmsnorm(3, 7168);

    /* RoPE: the tiny deck's q (4 heads of 16+8, rope at 16) and k_pe (kv row 16+8), one row,
     * DeepSeek-V3's q (nh 4 of its 128 heads, 128+64) and a decode step at position 37 */
    rope("tiny q B=2 T=64", 4 * 24, 4, 24, 16, 8, 2, 64, 0);
    rope("tiny kv B=2 T=64", 24, 1, 24, 16, 8, 2, 64, 0);
    rope("one row", 24, 1, 24, 16, 8, 1, 1, 0);
    rope("dsv3 q nh=4", 4 * 192, 4, 192, 128, 64, 1, 3, 0);
    rope("decode p0=37", 4 * 24, 4, 24, 16, 8, 1, 2, 37);

    /* attention: the tiny deck in one chunk (the ops' rule) and in four, one token, T off the
     * chunk rows (8 chunks, the last of 2), DeepSeek-V3's widths (3 chunks), B > 1 with odd
     * widths, dv > 512 and dqk > 256 (beyond the former SIMT kernels), rows > T (one chunk),
     * T past the rule's 128 rows */
    attention(2, 64, 4, 24, 16, 0);
    attention(2, 64, 4, 24, 16, 16);
    attention(1, 1, 1, 24, 16, 0);
    attention(1, 37, 2, 24, 16, 5);
    attention(1, 40, 2, 192, 128, 16);
    attention(2, 19, 1, 40, 48, 7);
    attention(1, 9, 2, 32, 513, 4);
    attention(1, 6, 1, 257, 20, 4);
    attention(3, 5, 2, 8, 8, 100);
    attention(1, 150, 1, 24, 16, 0); /* the ops' rule in two chunks (128 rows, then 22) */
    attention_rule();

    /* beyond the latent kernel's limit (cu_ops_attn.h): refused, nothing launched */
    float *d1;
    CK(cudaMalloc((void **)&d1, 4));
    twin_report(cu_latent_attention(d1, d1, d1, 1, 1, 600, 513, 0, 1.0f, twin_s) == cudaErrorInvalidValue,
                "ops_latent_attention", "kvl=513 refused", 0);
    dfree(d1);

    /* latent attention: prefill and decode on the tiny deck (W = 16+8; 16 heads: two blocks of
     * heads for one token), DeepSeek-V3's 512+64 */
    latent(5, 4, 24, 16, 0);
    latent(1, 4, 24, 16, 37);
    latent(3, 4, 24, 16, 60);
    latent(1, 16, 24, 16, 70);
    latent(2, 3, 576, 512, 40);

    /* embedding: one row, the tiny deck's batch with repeats, 7168 wide, bad ids */
    embedding(1, 256, 64, 256, -1, -1);
    embedding(128, 256, 64, 9, -1, -1);
    embedding(40, 50, 300, 3, 7, 2);
    embedding(33, 20, 7168, 5, -1, 30);
    embedding(300, 40, 16, 1, -1, -1);          /* one id throughout (a padded batch): one run of 300 */
    embedding(600, 129280, 4, 100000, 5, 599); /* DeepSeek-V3's vocabulary: three radix passes, 3 chunks */

    /* cross-entropy: one row, the tiny deck's batch with ignored rows, V off the block,
     * DeepSeek-V3's vocabulary for a few rows, an invalid target */
    cross_entropy(1, 256, 0, -1);
    cross_entropy(128, 256, 5, -1);
    cross_entropy(7, 1000, 3, -1);
    cross_entropy(3, 129280, 3, -1);
    cross_entropy(6, 300, 0, 4);

    /* argmax: one value, one row, ties across and within a thread's columns, NaNs, -inf rows,
     * DeepSeek-V3's vocabulary */
    argmax(1, 1, 0);
    argmax(1, 1000, 0);
    argmax(37, 700, 0);
    argmax(9, 1000, 1);
    argmax(5, 513, 2);
    argmax(3, 300, 3);
    argmax(3, 129280, 1);
    return twin_end();
}

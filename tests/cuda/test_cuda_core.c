/* test_cuda_core.c — twins of cuda/ops.cu's GEMMs (cuBLAS), stored BF16/FP8
 * weights (store, dequantising GEMMs), AdamW and the counter-based generators
 * against src/ops_cpu.c. */
#include "cu_ops.h"
#include "twin.h"

static void *dalloc(size_t bytes) {
    void *d;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    return d;
}

/* ---- ops_matmul / ops_matmul_backward: fp32 GEMM, 1e-5 of ‖y‖∞ */
static void matmul(int T, int in, int out) {
    char what[80];
    snprintf(what, sizeof what, "T=%d in=%d out=%d", T, in, out);
    size_t nx = (size_t)T * in, nw = (size_t)out * in, ny = (size_t)T * out;
    float *x = twin_host(nx, 11, -1, 1), *w = twin_host(nw, 12, -1, 1), *y0 = twin_host(ny, 13, -1, 1);
    float *dx = twin_dev(x, nx * 4), *dw = twin_dev(w, nw * 4), *dy = twin_dev(y0, ny * 4), *y = malloc(ny * 4 + 4), *got;
    for (int beta = 0; beta <= 1; beta++) { /* overwrite, then accumulate into the non-zero y0 */
        char wb[96];
        snprintf(wb, sizeof wb, "%s beta=%d", what, beta);
        memcpy(y, y0, ny * 4);
        CK(cudaMemcpy(dy, y0, ny * 4, cudaMemcpyHostToDevice));
        ops_matmul(y, x, w, T, in, out, (float)beta);
        CK(cu_matmul(dy, dx, dw, T, in, out, (float)beta, twin_s));
        got = twin_back(dy, ny * 4);
        twin_close("ops_matmul", wb, got, y, ny, 1e-5, 1e-30, 0);
        free(got);
    }
    /* backward: dx += dy·W and dW += dyᵀ·x into non-zero buffers; each output alone too */
    float *g = twin_host(ny, 14, -1, 1), *gx0 = twin_host(nx, 15, -1, 1), *gw0 = twin_host(nw, 16, -1, 1);
    float *gx = malloc(nx * 4 + 4), *gw = malloc(nw * 4 + 4);
    float *dg = twin_dev(g, ny * 4), *dgx = dalloc(nx * 4), *dgw = dalloc(nw * 4);
    for (int which = 0; which < 3; which++) { /* 0 both, 1 dx only, 2 dW only */
        char wb[96];
        snprintf(wb, sizeof wb, "%s %s", what, which == 0 ? "dx+dW" : which == 1 ? "dx only" : "dW only");
        memcpy(gx, gx0, nx * 4), memcpy(gw, gw0, nw * 4);
        CK(cudaMemcpy(dgx, gx0, nx * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dgw, gw0, nw * 4, cudaMemcpyHostToDevice));
        ops_matmul_backward(which != 2 ? gx : NULL, which != 1 ? gw : NULL, g, x, w, T, in, out);
        CK(cu_matmul_backward(which != 2 ? dgx : NULL, which != 1 ? dgw : NULL, dg, dx, dw, T, in, out, twin_s));
        got = twin_back(dgx, nx * 4);
        twin_close("ops_matmul_backward", wb, got, gx, nx, 1e-5, 1e-30, 0);
        free(got);
        got = twin_back(dgw, nw * 4);
        twin_close("ops_matmul_backward", wb, got, gw, nw, 1e-5, 1e-30, 0);
        free(got);
    }
    CK(cudaFree(dx)); CK(cudaFree(dw)); CK(cudaFree(dy)); CK(cudaFree(dg)); CK(cudaFree(dgx)); CK(cudaFree(dgw));
    free(x), free(w), free(y0), free(y), free(g), free(gx0), free(gw0), free(gx), free(gw);
}

/* ---- stored weights: the store is bitwise (bytes and scales), the GEMMs 1e-5 of ‖y‖∞ */
static size_t esz(ops_dtype t) { return t == OPS_F32 ? 4 : t == OPS_BF16 ? 2 : 1; }
static size_t nscale(int out, int in) {
    return (size_t)((out + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK) * ((in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK);
}
static const char *dname(ops_dtype t) { return t == OPS_F32 ? "f32" : t == OPS_BF16 ? "bf16" : "fp8"; }

/* W [out, in] with a different magnitude per 128x128 block (different FP8
 * scales) and one all-zero block (scale 1) when there are several */
static float *weight_values(int out, int in) {
    float *w = twin_host((size_t)out * in, 21, -1, 1);
    for (int r = 0; r < out; r++)
        for (int c = 0; c < in; c++) {
            int b = (r / OPS_FP8_BLOCK) * 7 + c / OPS_FP8_BLOCK;
            float *v = &w[(size_t)r * in + c];
            *v = b == 1 ? 0.0f : *v * ldexpf(1.0f, b % 9 - 4);
        }
    return w;
}

static const char *gname(int g) { return g == OPS_GEMM_FP8 ? "gemm fp8" : g == OPS_GEMM_BF16 ? "gemm bf16" : "gemm fp32"; }

/* the weight stored in t on both sides, then y = x·Wᵀ and dx += dy·W at gemm precision
 * `gemm` (ops.h ops_gemm; process-wide, so the CPU and the CUDA op see the same) */
static void stored_at(ops_dtype t, int gemm, int T, int in, int out, int split) {
    char what[96];
    ops_gemm_set(gemm);
    snprintf(what, sizeof what, "%s %s T=%d in=%d out=%d", dname(t), gname(gemm), T, in, out);
    size_t nw = (size_t)out * in, ns = nscale(out, in), nx = (size_t)T * in, ny = (size_t)T * out;
    float *src = weight_values(out, in);
    ops_weight hw = {t, malloc(nw * esz(t) + 1), NULL, out, in}, dw = {t, dalloc(nw * esz(t)), NULL, out, in};
    float *hs = NULL, *ds = NULL;
    if (t == OPS_FP8_E4M3) {
        hs = malloc(ns * 4), ds = dalloc(ns * 4);
        hw.scale = hs, dw.scale = ds;
    }
    /* stored in two calls (rows [0, split) and [split, out)) on both sides */
    ops_weight_store_rows(&hw, 0, split, src);
    ops_weight_store_rows(&hw, split, out - split, src + (size_t)split * in);
    CK(cu_weight_store_rows(&dw, 0, split, src, twin_s));
    CK(cu_weight_store_rows(&dw, split, out - split, src + (size_t)split * in, twin_s));
    void *gotw = twin_back(dw.data, nw * esz(t));
    twin_same("ops_weight_store_rows", what, gotw, hw.data, nw * esz(t));
    free(gotw);
    if (t == OPS_FP8_E4M3) {
        float *gots = twin_back(ds, ns * 4);
        twin_same("ops_weight_store_rows", "fp8 scales", gots, hs, ns * 4);
        free(gots);
    }

    float *x = twin_host(nx, 22, -1, 1), *y0 = twin_host(ny, 23, -1, 1), *y = malloc(ny * 4 + 4);
    float *dx = twin_dev(x, nx * 4), *dy = dalloc(ny * 4), *got;
    /* the tile: the CPU op's from a host arena, the CUDA op's device memory of the same rule */
    size_t nt = ops_matmul_w_scratch_floats(t, ops_gemm_of(&hw), out, in);
    ops_arena ar;
    if (ops_arena_create(&ar, nt)) exit(2);
    float *dt = nt ? dalloc(nt * 4) : NULL;
    for (int beta = 0; beta <= 1; beta++) {
        char wb[112];
        snprintf(wb, sizeof wb, "%s beta=%d", what, beta);
        memcpy(y, y0, ny * 4);
        CK(cudaMemcpy(dy, y0, ny * 4, cudaMemcpyHostToDevice));
        long fb0 = twin_fp8_fallbacks();
        CK(cu_matmul_w(dy, dx, &dw, T, (float)beta, dt, nt, twin_s));
        ops_gemm_set(twin_gemm_ref(gemm, fb0)); /* gemm fp8 where the device has no FP8: bf16 */
        ops_matmul_w(y, x, &hw, T, (float)beta, &ar);
        ops_gemm_set(gemm);
        got = twin_back(dy, ny * 4);
        twin_close("ops_matmul_w", wb, got, y, ny, 1e-5, 1e-30, 0);
        free(got);
    }
    float *g = twin_host(ny, 24, -1, 1), *gx = twin_host(nx, 25, -1, 1);
    float *dg = twin_dev(g, ny * 4), *dgx = twin_dev(gx, nx * 4);
    ops_matmul_w_backward_dx(gx, g, &hw, T, &ar);
    CK(cu_matmul_w_backward_dx(dgx, dg, &dw, T, dt, nt, twin_s));
    got = twin_back(dgx, nx * 4);
    twin_close("ops_matmul_w_backward_dx", what, got, gx, nx, 1e-5, 1e-30, 0);
    free(got);

    CK(cudaFree(dw.data)); CK(cudaFree(dx)); CK(cudaFree(dy)); CK(cudaFree(dg)); CK(cudaFree(dgx));
    if (ds) CK(cudaFree(ds));
    if (dt) CK(cudaFree(dt));
    ops_arena_destroy(&ar);
    free(hw.data), free(hs), free(src), free(x), free(y0), free(y), free(g), free(gx);
    ops_gemm_set(OPS_GEMM_F32);
}
static void stored(ops_dtype t, int T, int in, int out, int split) { stored_at(t, OPS_GEMM_F32, T, in, out, split); }

/* the W8A8 activation quantisation (1x128, amax/448): codes and scales bitwise as the CPU's
 * ops_act_quant_fp8; rows with an all-zero block (scale 1), one huge value, a NaN */
static void act_quant(int T, int in) {
    char what[64], wc[80], ws[80];
    snprintf(what, sizeof what, "T=%d in=%d", T, in);
    snprintf(wc, sizeof wc, "%s codes", what), snprintf(ws, sizeof ws, "%s scales", what);
    size_t nx = (size_t)T * in, ns = (size_t)((in + 127) / 128) * T;
    float *x = twin_host(nx, 26, -3, 3);
    for (int c = 0; c < in && c < 128; c++) x[c] = 0.0f; /* row 0, block 0 */
    if (T > 1) x[in + in / 2] = 3e38f;
    if (T > 2) x[2 * (size_t)in + 1] = NAN;
    uint8_t *q = malloc(nx + 1);
    float *sc = malloc(ns * 4 + 4);
    ops_act_quant_fp8(q, sc, x, T, in);
    float *dx = twin_dev(x, nx * 4), *ds = dalloc(ns * 4);
    uint8_t *dq = dalloc(nx + 1);
    CK(cu_act_quant_fp8(dq, ds, dx, T, in, twin_s));
    void *gq = twin_back(dq, nx), *gs = twin_back(ds, ns * 4);
    twin_same("ops_act_quant_fp8", wc, gq, q, nx);
    twin_same("ops_act_quant_fp8", ws, gs, sc, ns * 4);
    CK(cudaFree(dx)); CK(cudaFree(ds)); CK(cudaFree(dq));
    free(x), free(q), free(sc), free(gq), free(gs);
}

/* ---- conversions, bitwise against src/ops_host.c: e4m3 on a sweep of every
 * exponent (12 mantissa bits each, random low bits), every e4m3 midpoint
 * (ties) and its neighbours, specials; bf16 (the store's rounding) likewise */
static void conversions(void) {
    size_t n = (size_t)1 << 20, extra = 0;
    float *x = malloc((n + 4096) * sizeof *x);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)(i << 12) | (uint32_t)(twin_u(31, i, 0, 4096.0f)) % 4096u;
        memcpy(&x[i], &u, 4);
    }
    for (int c = 0; c < 0x7E; c++) { /* midpoints between neighbouring positive codes, both signs */
        float a = ops_e4m3_to_f32((uint8_t)c), b = ops_e4m3_to_f32((uint8_t)(c + 1)), m = 0.5f * (a + b);
        float v[3] = {m, nextafterf(m, 0.0f), nextafterf(m, INFINITY)};
        for (int k = 0; k < 3; k++) x[n + extra++] = v[k], x[n + extra++] = -v[k];
    }
    const float sp[] = {0.0f, -0.0f, 448.0f, 464.0f, -464.0f, 1e30f, INFINITY, -INFINITY, NAN, -NAN, 0x1p-10f, 0x1p-9f};
    for (size_t k = 0; k < sizeof sp / sizeof sp[0]; k++) x[n + extra++] = sp[k];
    n += extra;
    uint8_t *ref = malloc(n), *dq = dalloc(n), *got;
    for (size_t i = 0; i < n; i++) ref[i] = ops_f32_to_e4m3(x[i]);
    float *dx = twin_dev(x, n * 4);
    CK(cu_f32_to_e4m3(dq, dx, n, twin_s));
    got = twin_back(dq, n);
    char what[64];
    snprintf(what, sizeof what, "%zu values (sweep, ties, specials)", n);
    twin_same("ops_f32_to_e4m3", what, got, ref, n);
    free(got);

    /* bf16 through the store: one weight row of n values */
    ops_weight hw = {OPS_BF16, malloc(n * 2), NULL, 1, (int)n}, dw = {OPS_BF16, dalloc(n * 2), NULL, 1, (int)n};
    ops_weight_store_rows(&hw, 0, 1, x);
    CK(cu_weight_store_rows(&dw, 0, 1, x, twin_s));
    got = twin_back(dw.data, n * 2);
    twin_same("ops_weight_store_rows", "bf16 rounding: sweep, ties, NaN, inf", got, hw.data, n * 2);
    free(got);
    CK(cudaFree(dq)); CK(cudaFree(dx)); CK(cudaFree(dw.data));
    free(x), free(ref), free(hw.data);
}

/* ---- AdamW: rel 1e-6 (w elementwise; m, v of their ‖·‖∞: nvcc may contract to FMAs) */
static void adamw(size_t n, int t, float wd) {
    char what[64];
    snprintf(what, sizeof what, "n=%zu t=%d wd=%g", n, t, wd);
    float *w = twin_host(n, 41, -1, 1), *g = twin_host(n, 42, -2, 2), *m = twin_host(n, 43, -0.1f, 0.1f),
          *v = twin_host(n, 44, 0, 0.01f);
    float *dw = twin_dev(w, n * 4), *dg = twin_dev(g, n * 4), *dm = twin_dev(m, n * 4), *dv = twin_dev(v, n * 4), *got;
    for (int rep = 0; rep < 2; rep++) { /* two steps: t, t+1 */
        ops_adamw(w, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, wd, t + rep, 0.5f);
        CK(cu_adamw(dw, dg, dm, dv, n, 1e-3f, 0.9f, 0.95f, 1e-8f, wd, t + rep, 0.5f, twin_s));
    }
    got = twin_back(dw, n * 4);
    twin_close("ops_adamw", what, got, w, n, 1e-6, 0, 1);
    free(got);
    got = twin_back(dm, n * 4);
    twin_close("ops_adamw", "m", got, m, n, 1e-6, 0, 0);
    free(got);
    got = twin_back(dv, n * 4);
    twin_close("ops_adamw", "v", got, v, n, 1e-6, 0, 0);
    free(got);
    CK(cudaFree(dw)); CK(cudaFree(dg)); CK(cudaFree(dm)); CK(cudaFree(dv));
    free(w), free(g), free(m), free(v);
}

/* ---- counter-based generators. Uniform and dropout: bitwise (exact double
 * arithmetic). Normal: Box-Muller in double; the GPU's double log/cos are
 * within 2 ulp of double, so the float result is within 1 ulp: rel 2.4e-7
 * per element. A fill split in two pieces equals the whole (sharding). */
static void generators(size_t n) {
    char what[64];
    snprintf(what, sizeof what, "n=%zu first=12345", n);
    float *h = malloc(n * 4 + 4), *d = dalloc(n * 4), *got;
    ops_fill_normal(h, n, 7, 99, 12345, 0.02f);
    CK(cu_fill_normal(d, n, 7, 99, 12345, 0.02f, twin_s));
    got = twin_back(d, n * 4);
    twin_close("ops_fill_normal", what, got, h, n, 2.4e-7, 0, 1);
    free(got);
    size_t k = n / 3; /* [first, first+k) then the rest: the same numbers */
    CK(cu_fill_normal(d, k, 7, 99, 12345, 0.02f, twin_s));
    CK(cu_fill_normal(d + k, n - k, 7, 99, 12345 + k, 0.02f, twin_s));
    got = twin_back(d, n * 4);
    twin_close("ops_fill_normal", "split in two", got, h, n, 2.4e-7, 0, 1);
    free(got);

    ops_fill_uniform(h, n, 7, 98, 12345, 0.5f);
    CK(cu_fill_uniform(d, n, 7, 98, 12345, 0.5f, twin_s));
    got = twin_back(d, n * 4);
    twin_same("ops_fill_uniform", what, got, h, n * 4);
    free(got);

    float *x = twin_host(n, 51, -1, 1), *dx = twin_dev(x, n * 4);
    ops_dropout(h, x, n, 0.1f, 7, 97, 12345);
    CK(cu_dropout(d, dx, n, 0.1f, 7, 97, 12345, twin_s));
    got = twin_back(d, n * 4);
    twin_same("ops_dropout", what, got, h, n * 4);
    free(got);
    ops_dropout(x, x, n, 0.3f, 7, 96, 0); /* in place */
    CK(cu_dropout(dx, dx, n, 0.3f, 7, 96, 0, twin_s));
    got = twin_back(dx, n * 4);
    twin_same("ops_dropout", "in place p=0.3", got, x, n * 4);
    free(got);
    CK(cudaFree(d)); CK(cudaFree(dx));
    free(h), free(x);
}

int main(void) {
    twin_init();
    matmul(1, 7, 5);
    matmul(37, 96, 80);
    matmul(5, 7168, 33);
    matmul(64, 300, 257);
    matmul(3, 0, 4); /* in = 0: y = 0 (beta 0) / unchanged (beta 1) */
    const ops_dtype ts[] = {OPS_BF16, OPS_FP8_E4M3, OPS_F32};
    for (int i = 0; i < 3; i++) {
        stored(ts[i], 1, 7, 5, 5);          /* one row, one partial block */
        stored(ts[i], 9, 300, 261, 256);    /* edge blocks both ways; stored in two calls */
        stored(ts[i], 4, 7168, 130, 128);
    }
    stored(OPS_FP8_E4M3, 3, 7168, 2433, 1280); /* 17.4M floats > 2^24: two dequantisation tiles */
    /* train.gemm_dtype bf16 / fp8 (fp8 of a BF16 weight runs bf16). in a multiple of 16: cuBLASLt's
     * block-scaled FP8; else (7, 300) the same W8A8 values through fp32 GEMMs */
    for (int g = OPS_GEMM_BF16; g <= OPS_GEMM_FP8; g++)
        for (int i = 0; i < 2; i++) {
            stored_at(ts[i], g, 1, 7, 5, 5);
            stored_at(ts[i], g, 9, 300, 261, 256);
            stored_at(ts[i], g, 4, 7168, 130, 128);
            stored_at(ts[i], g, 5, 256, 200, 128); /* W8A8 through cuBLASLt with an edge row block */
            stored_at(ts[i], g, 1, 128, 16, 16);
        }
    stored_at(OPS_FP8_E4M3, OPS_GEMM_FP8, 4100, 16, 8, 8); /* more rows than one chunk (4096) */
    stored_at(OPS_BF16, OPS_GEMM_BF16, 4100, 16, 8, 8);
    act_quant(1, 7);
    act_quant(3, 300);
    act_quant(2, 7168);
    conversions();
    adamw(1, 1, 0.1f);
    adamw(1000, 1, 0.0f);
    adamw(70001, 7, 0.1f);
    generators(1);
    generators(1000);
    generators(70001);
    return twin_end();
}

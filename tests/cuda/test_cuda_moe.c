/* test_cuda_moe.c — twins of cuda/ops_moe.cu (ops_moe.h: SwiGLU, router,
 * balance loss, rows, grouped expert GEMMs, bias update; the dispatch is test_cuda_wire.c's)
 * against src/ops_cpu_moe.c. Shapes: the tiny deck's (E 8, K 2, 4 groups of 2,
 * top-2 groups, 64 wide, expert width 32, 128 tokens), DeepSeek-V3's routing
 * (E 256, 8 groups, top-4 groups, K 8), one token, widths that are not
 * multiples of the block, a 7168-wide row, experts with no rows; backward ops
 * accumulate into non-zero buffers. */
#include "cu_ops_moe.h"
#include "twin.h"


/* ---- SwiGLU, sigmoid ---- */

/* g and u in one fused [T, 2n+3] buffer (the MLP's gate/up output, padded
 * rows), or apart with their own strides; dg/du likewise */
static void swiglu(int T, int n, int fused) {
    const char *what = twin_fmt("T=%d n=%d %s", T, n, fused ? "fused gu" : "strided");
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    const int gs = fused ? 2 * n + 3 : n + 5, us = fused ? gs : n;
    const size_t ng = (size_t)T * gs, nu = fused ? 0 : (size_t)T * n, nh = (size_t)T * n;
    float *gbuf = twin_host(ng, 11, -6, 6), *ubuf = twin_host(nu, 12, -3, 3), *dh = twin_host(nh, 13, -1, 1);
    float *h = malloc(nh * 4);
    float *d_gbuf = twin_dev(gbuf, ng * 4), *d_ubuf = twin_dev(ubuf, nu * 4), *d_dh = twin_dev(dh, nh * 4);
    float *d_h = twin_alloc(nh * 4);
    const float *g = gbuf, *u = fused ? gbuf + n : ubuf, *d_g = d_gbuf, *d_u = fused ? d_gbuf + n : d_ubuf;

    ops_swiglu_forward(h, g, gs, u, us, T, n);
    CK(cu_swiglu_forward(d_h, d_g, gs, d_u, us, T, n, twin_s));
    float *got = twin_back(d_h, nh * 4);
    twin_close("ops_swiglu_forward", name, got, h, nh, 1e-5, 0, 1);
    free(got);

    /* backward into non-zero gradients with the same layout */
    float *dgbuf = twin_host(ng, 14, -1, 1), *dubuf = twin_host(nu, 15, -1, 1);
    float *d_dgbuf = twin_dev(dgbuf, ng * 4), *d_dubuf = twin_dev(dubuf, nu * 4);
    float *dg = dgbuf, *du = fused ? dgbuf + n : dubuf, *d_dg = d_dgbuf, *d_du = fused ? d_dgbuf + n : d_dubuf;
    ops_swiglu_backward(dg, gs, du, us, dh, g, gs, u, us, T, n);
    CK(cu_swiglu_backward(d_dg, gs, d_du, us, d_dh, d_g, gs, d_u, us, T, n, twin_s));
    /* silu'(g) = σ(1 + g(1 − σ)) cancels near g = −1.28: an absolute floor of 1e-6 (|values| ~ 1) */
    got = twin_back(d_dgbuf, ng * 4);
    twin_close("ops_swiglu_backward", fused ? name : twin_fmt("%s dg", name), got, dgbuf, ng, 1e-5, 1e-6, 1);
    free(got);
    if (!fused) {
        got = twin_back(d_dubuf, nu * 4);
        twin_close("ops_swiglu_backward", twin_fmt("%s du", name), got, dubuf, nu, 1e-5, 1e-6, 1);
        free(got);
    }
    free(gbuf), free(ubuf), free(dh), free(h), free(dgbuf), free(dubuf);
    twin_free(d_gbuf), twin_free(d_ubuf), twin_free(d_dh), twin_free(d_h), twin_free(d_dgbuf), twin_free(d_dubuf);
}

static void sigmoid(size_t n, int inplace) {
    const char *what = twin_fmt("n=%zu%s", n, inplace ? " in place" : "");
    float *x = twin_host(n, 21, -20, 20), *y = malloc(n * 4 + 4);
    float *dx = twin_dev(x, n * 4), *dy = inplace ? dx : twin_dev(y, n * 4);
    if (inplace) {
        memcpy(y, x, n * 4);
        ops_sigmoid(y, y, n);
    } else {
        ops_sigmoid(y, x, n);
    }
    CK(cu_sigmoid(dy, dx, n, twin_s));
    float *got = twin_back(dy, n * 4);
    twin_close("ops_sigmoid", what, got, y, n, 1e-5, 0, 1);
    free(got), free(x), free(y);
    twin_free(dx);
    if (!inplace) twin_free(dy);
}

/* ---- Routing ---- */

/* scores: sigmoid of uniform logits, or (ties) a few distinct values so that
 * experts and groups tie and the lower-index rule decides */
static float *scores(int T, int E, uint64_t key, int ties) {
    float *s = twin_host((size_t)T * E, key, -4, 4);
    for (size_t i = 0; i < (size_t)T * E; i++) s[i] = ties ? (float)(1 + (int)fabsf(s[i])) / 8.0f : s[i];
    if (!ties) ops_sigmoid(s, s, (size_t)T * E);
    return s;
}

static void route(int T, int E, int K, int ng, int kg, int with_bias, int with_w, int norm, int ties) {
    const char *what = twin_fmt("T=%d E=%d K=%d groups %d/%d%s%s%s", T, E, K, kg, ng, with_bias ? " bias" : "",
                           norm ? " norm" : "", ties ? " ties" : "");
    char name[128];
    snprintf(name, sizeof name, "%s", what);
    const float scale = 2.5f;
    float *s = scores(T, E, 31 + (uint64_t)E, ties);
    float *bias = with_bias ? twin_host((size_t)E, 32, -0.05f, 0.05f) : NULL;
    if (bias && ties)
        for (int e = 0; e < E; e++) bias[e] = (float)(e % 3) / 16.0f; /* biased ties too */
    size_t nk = (size_t)T * K;
    int *idx = malloc(nk * sizeof *idx);
    float *w = with_w ? malloc(nk * 4) : NULL;
    float *d_s = twin_dev(s, (size_t)T * E * 4), *d_b = bias ? twin_dev(bias, (size_t)E * 4) : NULL;
    int *d_idx = twin_alloc(nk * sizeof *idx);
    float *d_w = with_w ? twin_alloc(nk * 4) : NULL;

    ops_moe_route(idx, w, s, bias, T, E, K, ng, kg, norm, scale);
    CK(cu_moe_route(d_idx, d_w, d_s, d_b, T, E, K, ng, kg, norm, scale, twin_s));
    int *gi = twin_back(d_idx, nk * sizeof *idx);
    twin_same("ops_moe_route", twin_fmt("%s idx", name), gi, idx, nk * sizeof *idx);
    if (with_w) {
        float *gw = twin_back(d_w, nk * 4);
        twin_close("ops_moe_route", twin_fmt("%s w", name), gw, w, nk, 1e-5, 0, 1);
        free(gw);

        /* backward into non-zero dlogits: the weights' gradient through the sigmoid */
        float *dw = twin_host(nk, 33, -1, 1), *dl = twin_host((size_t)T * E, 34, -1, 1);
        float *d_dw = twin_dev(dw, nk * 4), *d_dl = twin_dev(dl, (size_t)T * E * 4);
        ops_moe_route_backward(dl, dw, s, idx, T, E, K, norm, scale);
        CK(cu_moe_route_backward(d_dl, d_dw, d_s, d_idx, T, E, K, norm, scale, twin_s));
        float *gl = twin_back(d_dl, (size_t)T * E * 4);
        twin_close("ops_moe_route_backward", name, gl, dl, (size_t)T * E, 1e-5, 0, 1);
        free(gl), free(dw), free(dl);
        twin_free(d_dw), twin_free(d_dl);
    }
    free(gi), free(s), free(bias), free(idx), free(w);
    twin_free(d_s), twin_free(d_idx);
    if (d_b) twin_free(d_b);
    if (d_w) twin_free(d_w);
}

/* ---- Balance loss: B sequences of T rows, topk = plain top-K of the unbiased scores ---- */

static void balance(int B, int T, int E, int K) {
    const char *what = twin_fmt("B=%d T=%d E=%d K=%d", B, T, E, K);
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    size_t R = (size_t)B * T;
    float *s = scores((int)R, E, 41, 0);
    int *topk = malloc(R * K * sizeof *topk);
    ops_moe_route(topk, NULL, s, NULL, (int)R, E, K, 1, 1, 0, 1.0f);
    float *d_s = twin_dev(s, R * E * 4);
    int *d_topk = twin_dev(topk, R * K * sizeof *topk);
    double *d_out = twin_alloc(((size_t)B + 1) * sizeof(double));

    double ref = ops_moe_balance(s, topk, B, T, E, K);
    CK(cu_moe_balance(d_s, d_topk, B, T, E, K, d_out, twin_s));
    double *got = twin_back(d_out, ((size_t)B + 1) * sizeof(double));
    float a = (float)got[B], b = (float)ref; /* loss: rel 1e-5 */
    twin_close("ops_moe_balance", name, &a, &b, 1, 1e-5, 0, 1);
    twin_fold(&got[B], sizeof(double));
    free(got);

    const float coef = 0.37f;
    float *dl = twin_host(R * E, 42, -1, 1), *d_dl = twin_dev(dl, R * E * 4);
    ops_moe_balance_backward(dl, s, topk, B, T, E, K, coef);
    CK(cu_moe_balance_backward(d_dl, d_s, d_topk, B, T, E, K, coef, twin_s));
    float *gl = twin_back(d_dl, R * E * 4);
    twin_close("ops_moe_balance_backward", name, gl, dl, R * E, 1e-5, 0, 1);
    free(gl), free(dl), free(s), free(topk);
    twin_free(d_dl), twin_free(d_s), twin_free(d_topk), twin_free(d_out);
}

/* ---- Rows ---- */

static void rows(int n, int nsrc, int C) {
    const char *what = twin_fmt("n=%d of %d rows C=%d", n, nsrc, C);
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    /* idx: distinct rows of a shuffled [0, nsrc) (a scatter target must be written once) */
    int *ord = malloc((size_t)nsrc * sizeof *ord);
    for (int i = 0; i < nsrc; i++) ord[i] = i;
    for (int i = nsrc - 1; i > 0; i--) {
        int j = (int)(twin_u(61, (size_t)i, 0, 1) * (i + 1)) % (i + 1), t = ord[i];
        ord[i] = ord[j], ord[j] = t;
    }
    size_t ns = (size_t)nsrc * C, nd = (size_t)n * C;
    float *src = twin_host(ns, 62, -1, 1), *dst = twin_host(nd, 63, -1, 1);
    float *d_src = twin_dev(src, ns * 4), *d_dst = twin_dev(dst, nd * 4);
    int *d_idx = twin_dev(ord, (size_t)n * sizeof *ord);
    ops_gather_rows(dst, src, ord, n, C);
    CK(cu_gather_rows(d_dst, d_src, d_idx, n, C, twin_s));
    float *g = twin_back(d_dst, nd * 4);
    twin_same("ops_gather_rows", name, g, dst, nd * 4);
    free(g);
    /* scatter other values back into the (non-zero) source layout */
    float *v = twin_host(nd, 64, -1, 1), *d_v = twin_dev(v, nd * 4);
    ops_scatter_rows(src, v, ord, n, C);
    CK(cu_scatter_rows(d_src, d_v, d_idx, n, C, twin_s));
    g = twin_back(d_src, ns * 4);
    twin_same("ops_scatter_rows", name, g, src, ns * 4);
    free(g), free(ord), free(src), free(dst), free(v);
    twin_free(d_src), twin_free(d_dst), twin_free(d_idx), twin_free(d_v);
}

/* ---- Grouped GEMMs ---- */

static int sum(const int *c, int G) {
    int r = 0;
    for (int g = 0; g < G; g++) r += c[g];
    return r;
}

static void grouped(const int *cnt, int G, int in, int out) {
    const char *what = twin_fmt("G=%d R=%d in=%d out=%d", G, sum(cnt, G), in, out);
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    size_t R = (size_t)sum(cnt, G), nw = (size_t)G * out * in;
    float *x = twin_host(R * in, 81, -1, 1), *w = twin_host(nw, 82, -0.1f, 0.1f), *y = twin_host(R * out, 83, -1, 1);
    float *d_x = twin_dev(x, R * in * 4), *d_w = twin_dev(w, nw * 4), *d_y = twin_dev(y, R * out * 4);
    ops_grouped_matmul(y, x, w, cnt, G, in, out);
    CK(cu_grouped_matmul(d_y, d_x, d_w, cnt, G, in, out, twin_s));
    float *g = twin_back(d_y, R * out * 4);
    twin_close("ops_grouped_matmul", name, g, y, R * out, 1e-5, 0, 0);
    free(g);
    float *dy = twin_host(R * out, 84, -1, 1), *dx = twin_host(R * in, 85, -1, 1), *dw = twin_host(nw, 86, -1, 1);
    float *d_dy = twin_dev(dy, R * out * 4), *d_dx = twin_dev(dx, R * in * 4), *d_dw = twin_dev(dw, nw * 4);
    for (int v = 0; v < 3; v++) { /* both, dx only, dw only */
        const char *which = v == 0 ? "dx+dw" : v == 1 ? "dx (dw NULL)" : "dw (dx NULL)";
        ops_grouped_matmul_backward(v == 2 ? NULL : dx, v == 1 ? NULL : dw, dy, x, w, cnt, G, in, out);
        CK(cu_grouped_matmul_backward(v == 2 ? NULL : d_dx, v == 1 ? NULL : d_dw, d_dy, d_x, d_w, cnt, G, in, out, twin_s));
        g = twin_back(d_dx, R * in * 4);
        twin_close("ops_grouped_matmul_backward", twin_fmt("%s %s dx", name, which), g, dx, R * in, 1e-5, 0, 0);
        free(g);
        g = twin_back(d_dw, nw * 4);
        twin_close("ops_grouped_matmul_backward", twin_fmt("%s %s dw", name, which), g, dw, nw, 1e-5, 0, 0);
        free(g);
    }
    free(x), free(w), free(y), free(dy), free(dx), free(dw);
    twin_free(d_x), twin_free(d_w), twin_free(d_y), twin_free(d_dy), twin_free(d_dx), twin_free(d_dw);
}

/* stacked experts in storage dt: stored on the host by the CPU's ops_weight_store_rows
 * (DeepSeek's FP8 recipe), the same bytes copied to the device */
static void grouped_w_at(ops_dtype dt, int gemm, const int *cnt, int G, int in, int out, int tile_rows) {
    ops_gemm_set(gemm); /* ops.h ops_gemm: process-wide, the CPU and the CUDA op see the same */
    const char *what = twin_fmt("%s%s G=%d R=%d in=%d out=%d%s", dt == OPS_F32 ? "f32" : dt == OPS_BF16 ? "bf16" : "fp8",
                           gemm == OPS_GEMM_FP8 ? " gemm fp8" : gemm == OPS_GEMM_BF16 ? " gemm bf16" : "", G,
                           sum(cnt, G), in, out, tile_rows ? " tiles of 128 rows" : "");
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    size_t R = (size_t)sum(cnt, G), nw = (size_t)G * out * in, esz = dt == OPS_F32 ? 4 : dt == OPS_BF16 ? 2 : 1;
    size_t nsc = (size_t)G * ((out + 127) / 128) * ((in + 127) / 128);
    float *wf = twin_host(nw, 91, -0.3f, 0.3f);
    void *data = malloc(nw * esz);
    float *scale = dt == OPS_FP8_E4M3 ? malloc(nsc * 4) : NULL;
    ops_weight W = {dt, data, scale, out, in};
    for (int g = 0; g < G; g++) {
        ops_weight v = ops_weight_expert(&W, g);
        ops_weight_store_rows(&v, 0, out, wf + (size_t)g * out * in);
    }
    ops_weight Wd = {dt, twin_dev(data, nw * esz), scale ? twin_dev(scale, nsc * 4) : NULL, out, in};
    /* the CPU op's tile (the whole expert here), or 128-row tiles: the path of experts over 2^24 elements */
    size_t nt = tile_rows ? (size_t)tile_rows * in : cu_grouped_matmul_w_tile(&Wd);
    float *tile = nt ? twin_alloc(nt * 4) : NULL;
    float *x = twin_host(R * in, 92, -1, 1), *y = twin_host(R * out, 93, -1, 1);
    float *d_x = twin_dev(x, R * in * 4), *d_y = twin_dev(y, R * out * 4);
    ops_arena cpu_scratch; /* the CPU op's tile, from an arena of exactly the stated size */
    if (ops_arena_create(&cpu_scratch, ops_matmul_w_scratch_floats(dt, ops_gemm_of(&W), out, in))) exit(2);
    long fb0 = twin_fp8_fallbacks();
    CK(cu_grouped_matmul_w(d_y, d_x, &Wd, cnt, G, tile, nt, twin_s));
    ops_gemm_set(twin_gemm_ref(gemm, fb0)); /* gemm fp8 where the device has no FP8: bf16 */
    ops_grouped_matmul_w(y, x, &W, cnt, G, &cpu_scratch);
    ops_gemm_set(gemm);
    float *g = twin_back(d_y, R * out * 4);
    twin_close("ops_grouped_matmul_w", name, g, y, R * out, 1e-5, 0, 0);
    free(g);
    float *dy = twin_host(R * out, 94, -1, 1), *dx = twin_host(R * in, 95, -1, 1);
    float *d_dy = twin_dev(dy, R * out * 4), *d_dx = twin_dev(dx, R * in * 4);
    ops_grouped_matmul_w_backward_dx(dx, dy, &W, cnt, G, &cpu_scratch);
    ops_arena_destroy(&cpu_scratch);
    CK(cu_grouped_matmul_w_backward_dx(d_dx, d_dy, &Wd, cnt, G, tile, nt, twin_s));
    g = twin_back(d_dx, R * in * 4);
    twin_close("ops_grouped_matmul_w_backward_dx", name, g, dx, R * in, 1e-5, 0, 0);
    free(g), free(wf), free(data), free(scale), free(x), free(y), free(dy), free(dx);
    twin_free(Wd.data), twin_free(d_x), twin_free(d_y), twin_free(d_dy), twin_free(d_dx);
    if (Wd.scale) twin_free((void *)Wd.scale);
    if (tile) twin_free(tile);
    ops_gemm_set(OPS_GEMM_F32);
}
static void grouped_w(ops_dtype dt, const int *cnt, int G, int in, int out, int tile_rows) {
    grouped_w_at(dt, OPS_GEMM_F32, cnt, G, in, out, tile_rows);
}

/* ---- Bias update: counts above, below and at the mean (sign 0) ---- */

static void bias_update(int E, int equal) {
    const char *what = twin_fmt("E=%d%s", E, equal ? " all counts equal" : "");
    int64_t *c = malloc((size_t)E * sizeof *c);
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += c[e] = equal ? 1000 : e % 4 == 0 ? 100 : (int64_t)twin_u(101, (size_t)e, 0, 200);
    if (!equal && E > 1) c[1] += (int64_t)100 * E - total; /* Σ c = 100·E: the mean is 100, which every 4th expert has */
    float *b = twin_host((size_t)E, 102, -0.1f, 0.1f);
    float *d_b = twin_dev(b, (size_t)E * 4);
    int64_t *d_c = twin_dev(c, (size_t)E * sizeof *c);
    ops_moe_bias_update(b, c, E, 1e-3f);
    CK(cu_moe_bias_update(d_b, d_c, E, 1e-3f, twin_s));
    float *g = twin_back(d_b, (size_t)E * 4);
    twin_same("ops_moe_bias_update", what, g, b, (size_t)E * 4);
    free(g), free(c), free(b);
    twin_free(d_b), twin_free(d_c);
}

int main(void) {
    twin_init();
    swiglu(1, 1, 1);
    swiglu(128, 32, 1); /* tiny deck: 128 tokens, expert width 32, fused gate/up */
    swiglu(3, 300, 0);
    swiglu(2, 7168, 0);
    sigmoid(1, 0);
    sigmoid(128 * 8, 1); /* tiny router scores, in place */
    sigmoid(70001, 0);

    route(1, 8, 2, 4, 2, 1, 1, 1, 0);    /* one token, tiny deck */
    route(128, 8, 2, 4, 2, 1, 1, 1, 0);  /* tiny deck */
    route(128, 8, 2, 4, 2, 0, 1, 1, 1);  /* tiny deck, ties */
    route(64, 256, 8, 8, 4, 1, 1, 1, 0); /* DeepSeek-V3 */
    route(64, 256, 8, 8, 4, 1, 1, 1, 1); /* DeepSeek-V3, ties among experts and groups */
    route(33, 256, 8, 1, 1, 0, 1, 0, 0); /* plain top-k, no norm */
    route(5, 8, 3, 8, 4, 1, 1, 1, 0);    /* groups of one expert */
    route(7, 40, 6, 5, 2, 1, 0, 1, 0);   /* w NULL; E not a multiple of 32 */

    balance(1, 1, 8, 2);
    balance(2, 64, 8, 2);    /* tiny deck */
    balance(2, 300, 256, 8); /* rows past one tile of 256; DeepSeek-V3 experts */

    rows(1, 1, 1);
    rows(37, 128, 64);
    rows(5, 9, 7168);
    rows(300, 301, 33);

    const int c1[1] = {1}, c4[4] = {3, 0, 5, 1}, c8[8] = {0, 40, 30, 0, 25, 33, 0, 0}, c3[3] = {2, 0, 3};
    grouped(c1, 1, 7, 5);
    grouped(c4, 4, 64, 48);
    grouped(c8, 8, 64, 32); /* tiny deck expert shapes, experts without rows */
    grouped(c3, 3, 7168, 20);
    const int w3[3] = {4, 0, 2}, w5[5] = {0, 7, 0, 3, 0};
    for (int dt = 0; dt < 3; dt++) {
        grouped_w((ops_dtype)dt, w3, 3, 300, 200, 0); /* scale blocks with edges (2 x 3 per expert) */
        grouped_w((ops_dtype)dt, w5, 5, 64, 32, 0);
    }
    grouped_w(OPS_FP8_E4M3, w3, 3, 100, 300, 128); /* tiles of 128, 128, 44 rows */
    grouped_w(OPS_BF16, w3, 3, 100, 300, 128);
    grouped_w(OPS_FP8_E4M3, w3, 3, 7168, 16, 0);
    grouped_w(OPS_BF16, c1, 1, 7168, 8, 0);
    /* train.gemm_dtype bf16 / fp8: experts with and without rows; in 64, 7168: cuBLASLt W8A8; 300: fp32 on the W8A8 values */
    for (int gm = OPS_GEMM_BF16; gm <= OPS_GEMM_FP8; gm++)
        for (int dt = OPS_BF16; dt <= OPS_FP8_E4M3; dt++) {
            grouped_w_at((ops_dtype)dt, gm, w3, 3, 300, 200, 0);
            grouped_w_at((ops_dtype)dt, gm, w5, 5, 64, 32, 0);
            grouped_w_at((ops_dtype)dt, gm, w3, 3, 7168, 16, 0);
        }

    bias_update(1, 0);
    bias_update(8, 0);
    bias_update(8, 1);
    bias_update(256, 0);
    return twin_end();
}

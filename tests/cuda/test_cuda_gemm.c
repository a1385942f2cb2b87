/* test_cuda_gemm.c — which path train.gemm_dtype = "fp8" takes in cu_matmul_w, and (with
 * --bench) how fast the stored-weight GEMMs run at each precision.
 *
 *   test_cuda_gemm           twin checks: a W8A8 product whose weight scales cuBLASLt can read
 *                            as stored (ceil(in/128) % 4 == 0) goes through cuBLASLt and matches
 *                            the CPU's; one whose scale rows it would read padded
 *                            (ceil(in/128) = 3, two row blocks) goes through the fp32 GEMMs and
 *                            matches too (cu_gemm_fp8_paths counts the paths); the plan table
 *                            asks the heuristic once per shape and stays bounded
 *   test_cuda_gemm --bench   y[M,N] = x[M,K]·W[N,K]ᵀ with an FP8 weight (128x128 scales), for
 *                            (M,N,K) = (1024,4096,7168) and (1024,7168,2048) (sft-perf-model.md's
 *                            "measure first" shapes), at gemm_dtype fp32 (dequantised tiles),
 *                            bf16 and fp8 (W8A8): ms and TFLOP/s each, and for fp8 the path
 *                            its chunks took, so a GPU shows whether a fallback fired. Under
 *                            emulation the shapes shrink (M, N by 16; K to 1024 and 512).
 *                            Then training attention (cu_attention_forward/backward: cuBLAS
 *                            batched GEMMs per chunk of query rows, ops_attn.h's chunk rule), in
 *                            fp32 (gemm_dtype fp32) and on bf16 operands (gemm_dtype bf16/fp8)
 *                            at DeepSeek-V3's width, B 1, nh 128, T 4096, dqk 192, dv 128
 *                            (emulated: nh 8, T 256): ms and TFLOP/s of the causal FLOPs,
 *                            2·B·nh·T²/2·(dqk + dv) forward, ·(3·dqk + 2·dv) backward (the five
 *                            GEMMs; the chunks' diagonal blocks add T·rows/2 per T²/2 on top).
 * The bench prints "bench" lines and no twin lines; tools/gpu-check.sh (step gemm) runs it. */
#include <time.h>

#include "cu_ops.h"
#include "cu_ops_attn.h"
#include "twin.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* an FP8 weight [out, in] on the device, stored by the backend from uniform values */
static ops_weight fp8_weight(int out, int in, float **host) {
    const size_t nw = (size_t)out * in, ns = (size_t)((out + 127) / 128) * ((in + 127) / 128);
    float *src = twin_host(nw, 91, -0.05f, 0.05f);
    ops_weight w = {OPS_FP8_E4M3, twin_alloc(nw), twin_alloc(ns * 4), out, in};
    CK(cu_weight_store_rows(&w, 0, out, src, twin_s));
    CK(cudaStreamSynchronize(twin_s));
    if (host) *host = src;
    else free(src);
    return w;
}
static void weight_free(ops_weight *w) {
    twin_free(w->data);
    twin_free((void *)w->scale);
}

/* compute capability of device 0 (below 89: no FP8, gemm fp8 runs bf16 by design) */
static int sm_of_device(void) {
    struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    return p.major * 10 + p.minor;
}

/* gemm fp8 of one shape: the path counters move as expected, y matches the CPU's ops_matmul_w
 * (at gemm bf16 where the device has no FP8: the fallback is then the expected path) */
static void path(int T, int in, int out, int want_lt) {
    const int fp8 = sm_of_device() >= 89;
    char what[96];
    snprintf(what, sizeof what, "gemm fp8 T=%d in=%d out=%d via %s", T, in, out,
             !fp8 ? "bf16 (no FP8)" : want_lt ? "cuBLASLt" : "fp32 GEMMs");
    ops_gemm_set(fp8 ? OPS_GEMM_FP8 : OPS_GEMM_BF16); /* the CPU reference's precision */
    float *src;
    ops_weight dw = fp8_weight(out, in, &src);
    const size_t nw = (size_t)out * in, ns = (size_t)((out + 127) / 128) * ((in + 127) / 128);
    ops_weight hw = {OPS_FP8_E4M3, malloc(nw), malloc(ns * 4), out, in};
    ops_weight_store_rows(&hw, 0, out, src);
    void *gw = twin_back(dw.data, nw);
    twin_same("ops_weight_store_rows", what, gw, hw.data, nw);
    free(gw);
    float *x = twin_host((size_t)T * in, 92, -2, 2), *y = malloc((size_t)T * out * 4);
    size_t sf = ops_matmul_w_scratch_floats(OPS_FP8_E4M3, OPS_GEMM_FP8, out, in),
           sb = ops_matmul_w_scratch_floats(OPS_FP8_E4M3, OPS_GEMM_BF16, out, in);
    if (sb > sf) sf = sb;
    float *dscr = twin_alloc(sf * 4 + 4), *dx = twin_dev(x, (size_t)T * in * 4), *dy = twin_alloc((size_t)T * out * 4);
    ops_arena ar;
    if (ops_arena_create(&ar, sf)) exit(2);
    ops_matmul_w(y, x, &hw, T, 0.0f, &ar);
    ops_arena_destroy(&ar);
    ops_gemm_set(OPS_GEMM_FP8);
    long l0, f0, b0, l1, f1, b1;
    cu_gemm_fp8_paths(&l0, &f0, &b0);
    CK(cu_matmul_w(dy, dx, &dw, T, 0.0f, dscr, sf, twin_s));
    cu_gemm_fp8_paths(&l1, &f1, &b1);
    float *got = twin_back(dy, (size_t)T * out * 4);
    twin_close("ops_matmul_w", what, got, y, (size_t)T * out, 1e-5, 1e-30, 0);
    int ok = !fp8 ? b1 - b0 == 1 && l1 == l0 && f1 == f0
                  : (want_lt ? l1 - l0 == 1 && f1 == f0 : f1 - f0 == 1 && l1 == l0) && b1 == b0;
    twin_report(ok, "ops_matmul_w", twin_fmt("%s: chunks lt %ld fp32 %ld bf16 %ld", what, l1 - l0, f1 - f0, b1 - b0),
                ok ? 0.0 : 1.0);
    free(got), free(src), free(x), free(y), free(hw.data), free((void *)hw.scale);
    twin_free(dscr), twin_free(dx), twin_free(dy);
    weight_free(&dw);
}

/* the plan table (cuda/ops.cu lt_plan): the heuristic is asked once per (shape, row-count bucket);
 * a repeated call asks nothing; 70 shapes (more than the 64 entries) evict the first, which is
 * then rebuilt and still right */
static void plans(void) {
    if (sm_of_device() < 89) return; /* no FP8: no cuBLASLt plans */
    ops_gemm_set(OPS_GEMM_FP8);
    const int in = 512, T = 37;
    float *x = twin_host((size_t)64 * in, 95, -2, 2), *dx = twin_dev(x, (size_t)64 * in * 4);
    float *dy = twin_alloc((size_t)64 * 16 * 70 * 4);
    size_t sf = ops_matmul_w_scratch_floats(OPS_FP8_E4M3, OPS_GEMM_FP8, 16 * 70, in);
    float *scr = twin_alloc(sf * 4);
    ops_weight w[70];
    for (int k = 0; k < 70; k++) w[k] = fp8_weight(16 * (k + 1), in, NULL);
    long h0 = cu_lt_heuristic_calls();
    CK(cu_matmul_w(dy, dx, &w[0], T, 0.0f, scr, sf, twin_s));
    long h1 = cu_lt_heuristic_calls();
    CK(cu_matmul_w(dy, dx, &w[0], T, 0.0f, scr, sf, twin_s));
    long h2 = cu_lt_heuristic_calls();
    CK(cu_matmul_w(dy, dx, &w[0], 50, 0.0f, scr, sf, twin_s)); /* same bucket (64): the kept algorithm, checked */
    long h3 = cu_lt_heuristic_calls();
    twin_report(h1 - h0 == 1 && h2 == h1 && h3 - h2 <= 1, "ops_matmul_w",
                twin_fmt("gemm fp8 plan kept: heuristic asked %ld, %ld, %ld", h1 - h0, h2 - h1, h3 - h2), 0.0);
    for (int k = 1; k < 70; k++) CK(cu_matmul_w(dy, dx, &w[k], T, 0.0f, scr, sf, twin_s));
    long h4 = cu_lt_heuristic_calls();
    CK(cu_matmul_w(dy, dx, &w[0], T, 0.0f, scr, sf, twin_s)); /* evicted by now: rebuilt */
    long h5 = cu_lt_heuristic_calls();
    twin_report(h4 - h3 == 69 && h5 - h4 == 1, "ops_matmul_w",
                twin_fmt("gemm fp8 plan table bounded: 69 new shapes asked %ld, the evicted first %ld", h4 - h3, h5 - h4),
                0.0);
    /* the rebuilt plan's product against the CPU's */
    float *src;
    ops_weight hw = {OPS_FP8_E4M3, malloc((size_t)16 * in), malloc(16), 16, in};
    ops_weight again = fp8_weight(16, in, &src);
    ops_weight_store_rows(&hw, 0, 16, src);
    CK(cu_matmul_w(dy, dx, &again, T, 0.0f, scr, sf, twin_s));
    float *y = malloc((size_t)T * 16 * 4), *got = twin_back(dy, (size_t)T * 16 * 4);
    ops_arena ar;
    if (ops_arena_create(&ar, sf)) exit(2);
    ops_matmul_w(y, x, &hw, T, 0.0f, &ar);
    ops_arena_destroy(&ar);
    twin_close("ops_matmul_w", "gemm fp8 T=37 in=512 out=16 after an eviction", got, y, (size_t)T * 16, 1e-5, 1e-30, 0);
    for (int k = 0; k < 70; k++) weight_free(&w[k]);
    weight_free(&again);
    free(src), free(x), free(y), free(got), free(hw.data), free((void *)hw.scale);
    twin_free(dx), twin_free(dy), twin_free(scr);
}

static void bench(int M, int N, int K, int reps) {
    static const char *name[3] = {"fp32", "bf16", "fp8"};
    float *dx = twin_dev(twin_host((size_t)M * K, 93, -2, 2), (size_t)M * K * 4), *dy = twin_alloc((size_t)M * N * 4);
    ops_weight w = fp8_weight(N, K, NULL);
    for (int g = OPS_GEMM_F32; g <= OPS_GEMM_FP8; g++) {
        ops_gemm_set(g);
        size_t sf = ops_matmul_w_scratch_floats(OPS_FP8_E4M3, g, N, K);
        float *scr = twin_alloc(sf * 4 + 4);
        long l0, f0, b0, l1, f1, b1;
        CK(cu_matmul_w(dy, dx, &w, M, 0.0f, scr, sf, twin_s)); /* warm-up: heuristics, plans, workspace */
        CK(cudaStreamSynchronize(twin_s));
        cu_gemm_fp8_paths(&l0, &f0, &b0);
        double t = now();
        for (int r = 0; r < reps; r++) CK(cu_matmul_w(dy, dx, &w, M, 0.0f, scr, sf, twin_s));
        CK(cudaStreamSynchronize(twin_s));
        t = (now() - t) / reps;
        cu_gemm_fp8_paths(&l1, &f1, &b1);
        printf("bench gemm %-4s M=%d N=%d K=%d: %.3f ms %.4g TFLOP/s", name[g], M, N, K, 1e3 * t, 2.0 * M * N * K / t / 1e12);
        if (g == OPS_GEMM_FP8)
            printf(" (chunks: cuBLASLt %ld, fp32 GEMMs %ld, bf16 fallback %ld%s)", l1 - l0, f1 - f0, b1 - b0,
                   l1 - l0 == 0 ? ": NOT W8A8 ON cuBLASLt" : "");
        printf("\n");
        twin_free(scr);
    }
    weight_free(&w);
    twin_free(dx), twin_free(dy);
}

static void bench_attention(int B, int T, int nh, int dqk, int dv, int bf16, int reps) {
    const size_t nq = (size_t)B * T * nh * dqk, nv = (size_t)B * T * nh * dv;
    const int rows = ops_attention_chunk_rows(B, T, nh);
    const size_t nw = cu_attention_work_floats(B, T, nh, dqk, dv, rows, 1, bf16);
    float *q = twin_dev(twin_host(nq, 96, -1, 1), nq * 4), *k = twin_dev(twin_host(nq, 97, -1, 1), nq * 4);
    float *v = twin_dev(twin_host(nv, 98, -1, 1), nv * 4), *dO = twin_dev(twin_host(nv, 99, -1, 1), nv * 4);
    float *o = twin_alloc(nv * 4), *lse = twin_alloc((size_t)B * nh * T * 4), *work = twin_alloc(nw * 4);
    float *dq = twin_alloc(nq * 4), *dk = twin_alloc(nq * 4), *dv_ = twin_alloc(nv * 4);
    CK(cudaMemset(dq, 0, nq * 4));
    CK(cudaMemset(dk, 0, nq * 4));
    CK(cudaMemset(dv_, 0, nv * 4));
    const float scale = 1.0f / sqrtf((float)dqk);
    double t[2];
    for (int pass = 0; pass < 2; pass++) {
        for (int r = -1; r < reps; r++) { /* r = -1: warm-up (cuBLAS heuristics) */
            if (r == 0) {
                CK(cudaStreamSynchronize(twin_s));
                t[pass] = now();
            }
            if (pass == 0) CK(cu_attention_forward(o, lse, q, k, v, B, T, nh, dqk, dv, scale, bf16, rows, work, nw, twin_s));
            else
                CK(cu_attention_backward(dq, dk, dv_, dO, q, k, v, lse, B, T, nh, dqk, dv, scale, bf16, rows, work, nw,
                                         twin_s));
        }
        CK(cudaStreamSynchronize(twin_s));
        t[pass] = (now() - t[pass]) / reps;
    }
    const double causal = 2.0 * B * nh * ((double)T * T / 2);
    printf("bench attention %-4s B=%d T=%d nh=%d dqk=%d dv=%d (%d rows, %d chunks): forward %.3f ms %.4g TFLOP/s, "
           "backward %.3f ms %.4g TFLOP/s\n",
           bf16 ? "bf16" : "fp32", B, T, nh, dqk, dv, rows, (T + rows - 1) / rows, 1e3 * t[0], causal * (dqk + dv) / t[0] / 1e12, 1e3 * t[1],
           causal * (3.0 * dqk + 2.0 * dv) / t[1] / 1e12);
    twin_free(q), twin_free(k), twin_free(v), twin_free(dO), twin_free(o), twin_free(lse), twin_free(work);
    twin_free(dq), twin_free(dk), twin_free(dv_);
}

int main(int argc, char **argv) {
    twin_init();
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        struct cudaDeviceProp p;
        CK(cudaGetDeviceProperties(&p, 0));
        const int emu = strstr(p.name, "emu") != NULL || strstr(p.name, "Emu") != NULL;
        const int dm = emu ? 16 : 1, dk = emu ? 7 : 1, reps = emu ? 1 : 20; /* K/128 stays a multiple of 4 */
        bench(1024 / dm, 4096 / dm, 7168 / dk, reps);
        bench(1024 / dm, 7168 / dm, 2048 / (emu ? 4 : 1), reps);
        for (int bf16 = 0; bf16 < 2; bf16++) bench_attention(1, 4096 / dm, 128 / dm, 192, 128, bf16, emu ? 1 : 5);
        return 0;
    }
    path(5, 512, 200, 1);  /* 4 K blocks, 2 row blocks: the stored scales are cuBLAS's layout */
    path(3, 384, 260, 0);  /* 3 K blocks, 3 row blocks: cuBLAS would read rows padded to 4 */
    path(4, 384, 100, 1);  /* 3 K blocks, one row block: no row stride to read */
    plans();
    return twin_end();
}

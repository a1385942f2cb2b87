/* test_weight.c — ops.h memory section and weight storage: the allocator's
 * accounting (per category, live and peak, freed bytes uncharged), the
 * counter-based dropout mask, the scratch arena
 * (bump/mark/release, alignment, overflow ends the job), e4m3 and bf16
 * decoding, and ops_matmul_w / ops_matmul_w_backward_dx for F32, bf16 and
 * FP8 (e4m3 + 128x128 block scales) against exact references. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "../src/model/linear.h"
#include "../src/ops.h"

static uint64_t rng = 12345;
static double urand(void) { /* [0,1) */
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static float *frand(size_t n, float lo, float hi) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * (float)urand();
    return p;
}

/* ------------------------------------------------------------ memory */

static void test_alloc_zeroed(void **st) {
    (void)st;
    size_t n = 1000;
    unsigned char *p = ops_alloc(n), *h = ops_host_alloc(n), *q = malloc(n);
    assert_non_null(p), assert_non_null(h);
    for (size_t i = 0; i < n; i++) assert_int_equal(p[i] | h[i], 0);
    for (size_t i = 0; i < n; i++) h[i] = (unsigned char)(i * 7);
    ops_to_device(p, h, n);
    ops_to_host(q, p, n);
    assert_memory_equal(q, h, n);
    ops_memset0(p, n);
    ops_to_host(q, p, n);
    for (size_t i = 0; i < n; i++) assert_int_equal(q[i], 0);
    ops_free(p), ops_host_free(h), free(q);
    ops_free(NULL), ops_host_free(NULL);
    void *z = ops_alloc(0);
    assert_non_null(z);
    ops_free(z);
}

static void test_arena(void **st) {
    (void)st;
    ops_arena a;
    assert_int_equal(ops_arena_create(&a, 100), 0);
    assert_int_equal(a.cap, ops_arena_round(100));
    assert_int_equal(a.cap % OPS_ARENA_ALIGN, 0);
    float *p = ops_arena_take(&a, 3);
    size_t m = ops_arena_mark(&a);
    assert_int_equal(m, OPS_ARENA_ALIGN);
    float *q = ops_arena_take(&a, 17);
    assert_true((uintptr_t)p % 64 == 0 && (uintptr_t)q % 64 == 0);
    assert_ptr_equal(q, p + OPS_ARENA_ALIGN);
    assert_int_equal(a.used, 3 * OPS_ARENA_ALIGN);
    for (int i = 0; i < 17; i++) q[i] = (float)i;
    ops_arena_release(&a, m);
    assert_int_equal(a.used, OPS_ARENA_ALIGN);
    assert_int_equal(a.peak, 3 * OPS_ARENA_ALIGN);
    float *r = ops_arena_take(&a, 5); /* stack discipline: the same memory again */
    assert_ptr_equal(r, q);
    ops_arena_release(&a, 0);
    assert_int_equal(a.used, 0);
    assert_non_null(ops_arena_take(&a, a.cap)); /* exactly full is fine */
    ops_arena_release(&a, 0);
    ops_arena_destroy(&a);
    assert_null(a.base);
    /* an empty arena serves takes of 0 floats */
    assert_int_equal(ops_arena_create(&a, 0), 0);
    assert_int_equal(a.cap, 0);
    (void)ops_arena_take(&a, 0);
    ops_arena_destroy(&a);
}

/* A take past the capacity ends the process with a message (error_one), in a child. */
static void test_arena_overflow_ends_job(void **st) {
    (void)st;
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(4);
        ops_arena a;
        if (ops_arena_create(&a, 32)) _exit(3);
        ops_arena_take(&a, 16);
        ops_arena_take(&a, 17); /* 16 + 32 > 32 */
        _exit(0);               /* not reached */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
}

/* ------------------------------------------------------------ decoding */

static double e4m3_ref(int v) { /* straight from the bit layout, in double */
    int s = (v >> 7) & 1, e = (v >> 3) & 15, m = v & 7;
    if (e == 15 && m == 7) return NAN;
    double a = e == 0 ? (m / 8.0) * pow(2.0, -6) : (1.0 + m / 8.0) * pow(2.0, e - 7);
    return s ? -a : a;
}

static void test_e4m3_all_codes(void **st) {
    (void)st;
    int nan = 0;
    for (int v = 0; v < 256; v++) {
        float got = ops_e4m3_to_f32((uint8_t)v);
        double want = e4m3_ref(v);
        if (isnan(want)) {
            assert_true(isnan(got));
            nan++;
            continue;
        }
        assert_false(isinf(got));
        assert_true((double)got == want);
        assert_int_equal(signbit(got) != 0, (v & 0x80) != 0);
    }
    assert_int_equal(nan, 2); /* 0x7F and 0xFF only */
    assert_true(isnan(ops_e4m3_to_f32(0x7F)) && isnan(ops_e4m3_to_f32(0xFF)));
    assert_true(ops_e4m3_to_f32(0x7E) == 448.0f);
    assert_true(ops_e4m3_to_f32(0xFE) == -448.0f);
    assert_true(ops_e4m3_to_f32(0x08) == 0x1p-6f);  /* smallest normal */
    assert_true(ops_e4m3_to_f32(0x01) == 0x1p-9f);  /* smallest subnormal */
    assert_true(ops_e4m3_to_f32(0x07) == 0.875f * 0x1p-6f); /* largest subnormal */
    assert_true(ops_e4m3_to_f32(0x38) == 1.0f);
    assert_true(ops_e4m3_to_f32(0x00) == 0.0f && ops_e4m3_to_f32(0x80) == 0.0f && signbit(ops_e4m3_to_f32(0x80)));
}

static uint16_t to_bf16(float f) { /* truncation: f must already be bf16-representable to round-trip */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16);
}

static void test_bf16_decode(void **st) {
    (void)st;
    assert_true(ops_bf16_to_f32(0x3F80) == 1.0f);
    assert_true(ops_bf16_to_f32(0xC000) == -2.0f);
    assert_true(isinf(ops_bf16_to_f32(0x7F80)));
    assert_true(ops_bf16_to_f32(0x0001) == 0x1p-133f); /* a subnormal */
    for (int i = 0; i < 1000; i++) {
        float f = (float)(urand() * 200 - 100);
        float b = ops_bf16_to_f32(to_bf16(f));
        assert_true(fabsf(b - f) <= fabsf(f) * 0x1p-7f);
        assert_true(ops_bf16_to_f32(to_bf16(b)) == b);
    }
}

/* ------------------------------------------------------------ matmuls */

/* An arena of exactly the dequantisation tile ops_matmul_w says it takes for
 * w: a take beyond it would end the test (error_one), so every product below
 * also checks that the tile comes from the arena and fits the stated size. */
static ops_arena *tile_arena(const ops_weight *w) {
    static ops_arena a;
    ops_arena_destroy(&a);
    assert_int_equal(ops_arena_create(&a, ops_matmul_w_tile_floats(w->dtype, w->out, w->in)), 0);
    return &a;
}

static void test_matmul_w_f32_is_matmul(void **st) {
    (void)st;
    int T = 7, in = 33, out = 150;
    float *x = frand((size_t)T * in, -1, 1), *w = frand((size_t)out * in, -1, 1);
    float *y0 = frand((size_t)T * out, -1, 1), *y1 = malloc((size_t)T * out * 4);
    memcpy(y1, y0, (size_t)T * out * 4);
    ops_weight W = {OPS_F32, w, NULL, out, in};
    ops_matmul(y0, x, w, T, in, out, 1.0f);
    ops_matmul_w(y1, x, &W, T, 1.0f, tile_arena(&W));
    assert_memory_equal(y0, y1, (size_t)T * out * 4);
    float *dy = frand((size_t)T * out, -1, 1), *d0 = frand((size_t)T * in, -1, 1), *d1 = malloc((size_t)T * in * 4);
    memcpy(d1, d0, (size_t)T * in * 4);
    ops_matmul_backward(d0, NULL, dy, x, w, T, in, out);
    ops_matmul_w_backward_dx(d1, dy, &W, T, tile_arena(&W));
    assert_memory_equal(d0, d1, (size_t)T * in * 4);
    free(x), free(w), free(y0), free(y1), free(dy), free(d0), free(d1);
}

/* bf16 weights that are exactly representable: the product equals the F32 one bitwise. */
static void test_matmul_w_bf16(void **st) {
    (void)st;
    int T = 9, in = 70, out = 200; /* two row tiles, the second partial */
    size_t n = (size_t)out * in;
    float *w = frand(n, -1, 1), *x = frand((size_t)T * in, -1, 1);
    uint16_t *wb = malloc(n * sizeof *wb);
    for (size_t i = 0; i < n; i++) {
        wb[i] = to_bf16(w[i]);
        w[i] = ops_bf16_to_f32(wb[i]);
    }
    ops_weight W = {OPS_BF16, wb, NULL, out, in};
    float *y0 = malloc((size_t)T * out * 4), *y1 = malloc((size_t)T * out * 4);
    for (int beta = 0; beta <= 1; beta++) {
        for (size_t i = 0; i < (size_t)T * out; i++) y0[i] = y1[i] = beta ? (float)i * 0.01f : NAN;
        ops_matmul(y0, x, w, T, in, out, (float)beta);
        ops_matmul_w(y1, x, &W, T, (float)beta, tile_arena(&W));
        assert_memory_equal(y0, y1, (size_t)T * out * 4);
    }
    /* backward: dx += dy·W against a double reference (tiles accumulate in another order) */
    float *dy = frand((size_t)T * out, -1, 1), *dx = frand((size_t)T * in, -1, 1);
    double *ref = malloc((size_t)T * in * sizeof *ref);
    for (int t = 0; t < T; t++)
        for (int c = 0; c < in; c++) {
            double s = dx[(size_t)t * in + c];
            for (int o = 0; o < out; o++) s += (double)dy[(size_t)t * out + o] * w[(size_t)o * in + c];
            ref[(size_t)t * in + c] = s;
        }
    ops_matmul_w_backward_dx(dx, dy, &W, T, tile_arena(&W));
    for (size_t i = 0; i < (size_t)T * in; i++) assert_true(fabs(dx[i] - ref[i]) <= 1e-5 * (1 + fabs(ref[i])));
    /* a linear holding the bf16 weight gives the F32 linear's forward bitwise */
    linear lf = {.w = w, .in = in, .out = out}, lb = {.in = in, .out = out, .W = W};
    ops_arena a;
    assert_int_equal(ops_arena_create(&a, ops_matmul_w_tile_floats(OPS_BF16, out, in)), 0);
    linear_forward(&lf, y0, x, NULL, T, &a);
    linear_forward(&lb, y1, x, NULL, T, &a);
    assert_memory_equal(y0, y1, (size_t)T * out * 4);
    ops_arena_destroy(&a);
    free(w), free(x), free(wb), free(y0), free(y1), free(dy), free(dx), free(ref);
}

/* FP8 with shapes that are not multiples of 128 (edge blocks) against a naive dequantised double reference. */
static void fp8_check(int T, int in, int out) {
    int rb = (out + 127) / 128, cb = (in + 127) / 128;
    size_t n = (size_t)out * in;
    uint8_t *q = malloc(n);
    for (size_t i = 0; i < n; i++) {
        uint8_t v;
        do v = (uint8_t)(urand() * 256); while ((v & 0x7F) == 0x7F); /* every code but NaN */
        q[i] = v;
    }
    float *scale = malloc((size_t)rb * cb * sizeof *scale);
    for (int b = 0; b < rb * cb; b++) scale[b] = ldexpf(1.0f + 0.37f * (float)b, -3 - b); /* distinct per block */
    float *x = frand((size_t)T * in, -1, 1);
    ops_weight W = {OPS_FP8_E4M3, q, scale, out, in};
    double *wd = malloc(n * sizeof *wd);
    for (int r = 0; r < out; r++)
        for (int c = 0; c < in; c++)
            wd[(size_t)r * in + c] = e4m3_ref(q[(size_t)r * in + c]) * (double)scale[(r / 128) * cb + c / 128];
    float *y = malloc((size_t)T * out * 4);
    ops_matmul_w(y, x, &W, T, 0.0f, tile_arena(&W));
    double maxe = 0;
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) {
            double s = 0, sa = 0;
            for (int c = 0; c < in; c++) {
                s += (double)x[(size_t)t * in + c] * wd[(size_t)o * in + c];
                sa += fabs((double)x[(size_t)t * in + c] * wd[(size_t)o * in + c]);
            }
            double e = fabs(y[(size_t)t * out + o] - s) / (sa + 1e-30);
            if (e > maxe) maxe = e;
        }
    printf("  fp8 forward out=%d in=%d: max error %.2e of sum|x*w|\n", out, in, maxe);
    assert_true(maxe < 1e-5);
    float *dy = frand((size_t)T * out, -1, 1), *dx = calloc((size_t)T * in, 4);
    ops_matmul_w_backward_dx(dx, dy, &W, T, tile_arena(&W));
    maxe = 0;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < in; c++) {
            double s = 0, sa = 0;
            for (int o = 0; o < out; o++) {
                s += (double)dy[(size_t)t * out + o] * wd[(size_t)o * in + c];
                sa += fabs((double)dy[(size_t)t * out + o] * wd[(size_t)o * in + c]);
            }
            double e = fabs(dx[(size_t)t * in + c] - s) / (sa + 1e-30);
            if (e > maxe) maxe = e;
        }
    printf("  fp8 backward dx: max error %.2e of sum|dy*w|\n", maxe);
    assert_true(maxe < 1e-5);
    free(q), free(scale), free(x), free(wd), free(y), free(dy), free(dx);
}

static void test_matmul_w_fp8(void **st) {
    (void)st;
    fp8_check(6, 300, 200);
}

/* A weight over the 2^24-float dequantisation budget goes in row tiles (1920 + 180 rows here). */
static void test_matmul_w_fp8_tiled(void **st) {
    (void)st;
    /* 2100 x 8200 > 2^24 floats: tiles of 1920 rows (a multiple of 128 within 2^24 floats), the second partial */
    assert_int_equal(ops_matmul_w_tile_floats(OPS_FP8_E4M3, 2100, 8200), (size_t)1920 * 8200);
    assert_int_equal(ops_matmul_w_tile_floats(OPS_BF16, 129280, 7168), (size_t)2304 * 7168); /* DeepSeek-V3's lm_head */
    assert_int_equal(ops_matmul_w_tile_floats(OPS_FP8_E4M3, 150, 70), (size_t)150 * 70);    /* whole when it fits */
    assert_int_equal(ops_matmul_w_tile_floats(OPS_F32, 2100, 8200), 0);                       /* F32: no tile */
    fp8_check(2, 8200, 2100);
}

/* ------------------------------------------- GEMM precision (train.gemm_dtype) */

/* ops_act_quant_fp8: scale = amax/448 per (row, 128 columns), laid out [ceil(in/128), T]; codes e4m3(x/scale) */
static void test_act_quant_fp8(void **st) {
    (void)st;
    int T = 3, in = 300, nb = 3; /* blocks of 128, 128, 44 columns */
    float *x = frand((size_t)T * in, -5, 5);
    for (int c = 0; c < 128; c++) x[c] = 0.0f;            /* row 0 block 0: all zero -> scale 1, codes 0 */
    for (int c = 128; c < 256; c++) x[c] = 0.5f;           /* row 0 block 1: amax 896 below, scale 2 */
    x[130] = -896.0f, x[131] = 3.0f, x[132] = 896.0f;      /* -448 -> 0xFE, 1.5 -> 0x3C, 448 -> 0x7E */
    uint8_t *q = malloc((size_t)T * in);
    float *sc = malloc((size_t)nb * T * sizeof *sc);
    ops_act_quant_fp8(q, sc, x, T, in);
    assert_true(sc[0 * T + 0] == 1.0f && sc[1 * T + 0] == 2.0f);
    for (int c = 0; c < 128; c++) assert_int_equal(q[c], 0);
    assert_int_equal(q[130], 0xFE), assert_int_equal(q[131], 0x3C), assert_int_equal(q[132], 0x7E);
    assert_int_equal(q[128], 0x28); /* 0.5 / 2 = 0.25 = 2^-2: exponent field 5, mantissa 0 */
    for (int t = 0; t < T; t++)
        for (int b = 0; b < nb; b++) {
            float amax = 0;
            for (int c = b * 128; c < in && c < b * 128 + 128; c++) amax = fmaxf(amax, fabsf(x[(size_t)t * in + c]));
            float s = sc[(size_t)b * T + t];
            assert_true(s == (amax > 0 ? amax / 448.0f : 1.0f));
            for (int c = b * 128; c < in && c < b * 128 + 128; c++) { /* within half a step of e4m3 (2^-4 relative) */
                double v = e4m3_ref(q[(size_t)t * in + c]) * s, xv = x[(size_t)t * in + c];
                assert_true(fabs(v - xv) <= fabs(xv) * 0.0625 + s * 0x1p-10);
            }
        }
    free(x), free(q), free(sc);
}

/* The scratch rule: gemm fp32 is the dequantisation tile; bf16/fp8 add the activation chunk */
static void test_gemm_scratch_rule(void **st) {
    (void)st;
    assert_int_equal(ops_gemm_act_rows(2048, 7168), 585); /* 2^22 / 7168 */
    assert_int_equal(ops_gemm_act_rows(16, 8), 4096);
    assert_int_equal(ops_gemm_act_rows(0, 0), 4096);
    assert_int_equal(ops_matmul_w_scratch_floats(OPS_FP8_E4M3, OPS_GEMM_F32, 2048, 7168), (size_t)2048 * 7168);
    assert_int_equal(ops_matmul_w_scratch_floats(OPS_F32, OPS_GEMM_FP8, 2048, 7168), 0);
    /* tile + values [585, 7168] + codes (585·7168/4) + scales [56, 585] rounded to 16 */
    assert_int_equal(ops_matmul_w_scratch_floats(OPS_FP8_E4M3, OPS_GEMM_FP8, 2048, 7168),
                     (size_t)14680064 + 4193280 + 1048320 + 32768);
    assert_int_equal(ops_matmul_w_scratch_floats(OPS_BF16, OPS_GEMM_BF16, 7168, 2048),
                     (size_t)14680064 + 4193280 + 1048320 + 32768);
    ops_weight f = {OPS_F32, NULL, NULL, 1, 1}, b = {OPS_BF16, NULL, NULL, 1, 1}, e = {OPS_FP8_E4M3, NULL, NULL, 1, 1};
    ops_gemm_set(OPS_GEMM_FP8);
    assert_int_equal(ops_gemm_of(&f), OPS_GEMM_F32);
    assert_int_equal(ops_gemm_of(&b), OPS_GEMM_BF16); /* W8A8 needs FP8 weights: a BF16 one runs bf16 */
    assert_int_equal(ops_gemm_of(&e), OPS_GEMM_FP8);
    ops_gemm_set(OPS_GEMM_F32);
    assert_int_equal(ops_gemm_of(&e), OPS_GEMM_F32);
}

/* An arena of exactly the scratch the rule states for w at the current gemm mode */
static ops_arena *gemm_arena(const ops_weight *w) {
    static ops_arena a;
    ops_arena_destroy(&a);
    assert_int_equal(ops_arena_create(&a, ops_matmul_w_scratch_floats(w->dtype, ops_gemm_get(), w->out, w->in)), 0);
    return &a;
}

/* y and dx at gemm bf16/fp8 equal ops_matmul on the operands the mode defines (bitwise: one tile, one chunk,
 * the same sgemm): x rounded to bf16 or e4m3·scale (ops_act_quant_fp8), W dequantised (to bf16 in bf16); dx in bf16 */
static void gemm_mode_check(ops_dtype dt, int mode, int T, int in, int out) {
    size_t nw = (size_t)out * in, nx = (size_t)T * in, ny = (size_t)T * out;
    int kb = (in + 127) / 128, ob = (out + 127) / 128;
    float *w = frand(nw, -0.1f, 0.1f), *x = frand(nx, -2, 2), *wr = malloc(nw * 4), *xr = malloc(nx * 4);
    void *data = malloc(nw * 2);
    float *scale = malloc((size_t)ob * kb * 4);
    ops_weight W = {dt, data, dt == OPS_FP8_E4M3 ? scale : NULL, out, in};
    ops_weight_store_rows(&W, 0, out, w);
    for (size_t i = 0; i < nw; i++) {
        float v = dt == OPS_BF16 ? ops_bf16_to_f32(((uint16_t *)data)[i])
                                 : ops_e4m3_to_f32(((uint8_t *)data)[i]) * scale[(i / in / 128) * kb + (i % in) / 128];
        wr[i] = mode == OPS_GEMM_FP8 && dt == OPS_FP8_E4M3 ? v : ops_bf16_to_f32(ops_f32_to_bf16(v));
    }
    int eff = mode == OPS_GEMM_FP8 && dt != OPS_FP8_E4M3 ? OPS_GEMM_BF16 : mode;
    if (eff == OPS_GEMM_FP8) {
        uint8_t *q = malloc(nx);
        float *s = malloc((size_t)kb * T * 4);
        ops_act_quant_fp8(q, s, x, T, in);
        for (size_t i = 0; i < nx; i++) xr[i] = ops_e4m3_to_f32(q[i]) * s[(i % in) / 128 * T + i / in];
        free(q), free(s);
    } else
        for (size_t i = 0; i < nx; i++) xr[i] = ops_bf16_to_f32(ops_f32_to_bf16(x[i]));
    ops_gemm_set(mode);
    float *y0 = malloc(ny * 4), *y1 = malloc(ny * 4);
    for (int beta = 0; beta <= 1; beta++) {
        for (size_t i = 0; i < ny; i++) y0[i] = y1[i] = beta ? (float)i * 0.01f : NAN;
        ops_matmul(y0, xr, wr, T, in, out, (float)beta);
        ops_matmul_w(y1, x, &W, T, (float)beta, gemm_arena(&W));
        assert_memory_equal(y0, y1, ny * 4);
    }
    /* dx += dy·W in bf16 (both modes): dy rounded, W as above in bf16 */
    float *dy = frand(ny, -1, 1), *dyr = malloc(ny * 4), *d0 = frand(nx, -1, 1), *d1 = malloc(nx * 4);
    memcpy(d1, d0, nx * 4);
    for (size_t i = 0; i < ny; i++) dyr[i] = ops_bf16_to_f32(ops_f32_to_bf16(dy[i]));
    for (size_t i = 0; i < nw; i++) wr[i] = ops_bf16_to_f32(ops_f32_to_bf16(wr[i]));
    ops_matmul_backward(d0, NULL, dyr, NULL, wr, T, in, out);
    ops_matmul_w_backward_dx(d1, dy, &W, T, gemm_arena(&W));
    assert_memory_equal(d0, d1, nx * 4);
    ops_gemm_set(OPS_GEMM_F32);
    free(w), free(x), free(wr), free(xr), free(data), free(scale), free(y0), free(y1), free(dy), free(dyr), free(d0),
        free(d1);
}

static void test_gemm_modes(void **st) {
    (void)st;
    for (int dt = OPS_BF16; dt <= OPS_FP8_E4M3; dt++)
        for (int mode = OPS_GEMM_BF16; mode <= OPS_GEMM_FP8; mode++) {
            gemm_mode_check((ops_dtype)dt, mode, 5, 300, 200); /* edge blocks */
            gemm_mode_check((ops_dtype)dt, mode, 1, 128, 130); /* a single row */
        }
}

/* More rows than one activation chunk (4096 at these widths): chunk by chunk, each row as alone */
static void test_gemm_chunks(void **st) {
    (void)st;
    int T = 4100, in = 40, out = 24;
    assert_int_equal(ops_gemm_act_rows(out, in), 4096);
    float *w = frand((size_t)out * in, -1, 1), *x = frand((size_t)T * in, -1, 1);
    uint8_t *q = malloc((size_t)out * in);
    float *sc = malloc(4), *y = malloc((size_t)T * out * 4), *y1 = malloc((size_t)out * 4);
    ops_weight W = {OPS_FP8_E4M3, q, sc, out, in};
    ops_weight_store_rows(&W, 0, out, w);
    for (int mode = OPS_GEMM_BF16; mode <= OPS_GEMM_FP8; mode++) {
        ops_gemm_set(mode);
        ops_matmul_w(y, x, &W, T, 0.0f, gemm_arena(&W));
        for (int t = 0; t < T; t += 1023) {
            ops_matmul_w(y1, x + (size_t)t * in, &W, 1, 0.0f, gemm_arena(&W));
            for (int o = 0; o < out; o++) assert_true(fabsf(y1[o] - y[(size_t)t * out + o]) <= 1e-5f * (1 + fabsf(y1[o])));
        }
    }
    ops_gemm_set(OPS_GEMM_F32);
    free(w), free(x), free(q), free(sc), free(y), free(y1);
}

/* ------------------------------------------------- quantisation (DeepSeek's recipe) */

/* The nearest finite e4m3 code by exhaustive search, ties to the even code
 * (mantissa LSB 0), |x| beyond 448 saturating: the reference encoder. */
static uint8_t e4m3_nearest(float x) {
    if (isnan(x)) return 0x7F;
    double a = fabs((double)x);
    int best = 0;
    double bd = INFINITY;
    for (int v = 0; v < 0x7F; v++) { /* magnitudes 0..448 */
        double d = fabs(e4m3_ref(v) - a);
        if (d < bd || (d == bd && (v & 1) == 0 && (best & 1) == 1)) bd = d, best = v;
    }
    return (uint8_t)((signbit(x) ? 0x80 : 0) | best);
}

static void test_e4m3_encode(void **st) {
    (void)st;
    for (int v = 0; v < 256; v++) { /* every finite code round-trips (±0 included) */
        if ((v & 0x7F) == 0x7F) continue;
        assert_int_equal(ops_f32_to_e4m3(ops_e4m3_to_f32((uint8_t)v)), v);
    }
    for (int v = 0; v < 0x7E; v++) { /* midpoints between neighbours go to the even code; just off them, to the nearer */
        float lo = ops_e4m3_to_f32((uint8_t)v), hi = ops_e4m3_to_f32((uint8_t)(v + 1)), mid = (lo + hi) / 2;
        assert_int_equal(ops_f32_to_e4m3(mid), (v & 1) ? v + 1 : v);
        assert_int_equal(ops_f32_to_e4m3(nextafterf(mid, 0)), v);
        assert_int_equal(ops_f32_to_e4m3(nextafterf(mid, INFINITY)), v + 1);
        assert_int_equal(ops_f32_to_e4m3(-mid), 0x80 | ((v & 1) ? v + 1 : v));
    }
    assert_int_equal(ops_f32_to_e4m3(449.0f), 0x7E); /* saturation */
    assert_int_equal(ops_f32_to_e4m3(1e30f), 0x7E);
    assert_int_equal(ops_f32_to_e4m3(-INFINITY), 0xFE);
    assert_int_equal(ops_f32_to_e4m3(NAN), 0x7F);
    for (int i = 0; i < 200000; i++) { /* random magnitudes over the whole range, and beyond */
        float x = (float)((urand() * 2 - 1) * pow(2.0, urand() * 22 - 12));
        assert_int_equal(ops_f32_to_e4m3(x), e4m3_nearest(x));
    }
}

/* ops_weight_store_rows: bf16 rounds to nearest even; FP8 is DeepSeek's 128x128
 * block recipe (scale = amax/448, e4m3 of x/scale), checked element by element
 * against the reference encoder, edge blocks and an all-zero block included;
 * dequantised, every element is within half an e4m3 step of the original. */
static void test_store_rows(void **st) {
    (void)st;
    int out = 300, in = 200, rb = 3, cb = 2;
    float *w = frand((size_t)out * in, -0.05f, 0.05f);
    for (int r = 128; r < 256; r++) /* block (1, 1): zeros; block (2, 0): one large outlier */
        for (int c = 128; c < in; c++) w[(size_t)r * in + c] = 0.0f;
    w[(size_t)290 * in + 7] = 3.5f;
    uint8_t *q = malloc((size_t)out * in);
    float *scale = malloc((size_t)rb * cb * sizeof *scale);
    ops_weight W = {OPS_FP8_E4M3, q, scale, out, in};
    ops_weight_store_rows(&W, 0, 128, w); /* block rows stored separately, the last one partial */
    ops_weight_store_rows(&W, 128, 172, w + (size_t)128 * in);
    for (int b = 0; b < rb * cb; b++) {
        int r0 = b / cb * 128, c0 = b % cb * 128;
        float amax = 0;
        for (int r = r0; r < out && r < r0 + 128; r++)
            for (int c = c0; c < in && c < c0 + 128; c++) amax = fmaxf(amax, fabsf(w[(size_t)r * in + c]));
        float want = amax > 0 ? amax / 448.0f : 1.0f;
        assert_true(scale[b] == want);
        for (int r = r0; r < out && r < r0 + 128; r++)
            for (int c = c0; c < in && c < c0 + 128; c++) {
                float x = w[(size_t)r * in + c];
                assert_int_equal(q[(size_t)r * in + c], e4m3_nearest(x / want));
                double back = e4m3_ref(q[(size_t)r * in + c]) * want;
                assert_true(fabs(back - x) <= want * 16.0 * 1.0000001); /* half the e4m3 step of [256, 448] (32) */
            }
    }
    assert_true(scale[1 * cb + 1] == 1.0f);
    assert_int_equal(q[(size_t)290 * in + 7], 0x7E); /* the block maximum maps to 448 */
    uint16_t *h = malloc((size_t)out * in * 2);
    ops_weight B = {OPS_BF16, h, NULL, out, in};
    ops_weight_store_rows(&B, 0, out, w);
    for (size_t i = 0; i < (size_t)out * in; i++) assert_int_equal(h[i], ops_f32_to_bf16(w[i]));
    free(w), free(q), free(scale), free(h);
}

/* ops_grouped_matmul_w over stacked FP8/BF16 experts equals the F32 grouped
 * GEMM on the dequantised weights: dims not multiples of 128, experts with no
 * rows (first, middle, last). */
static void test_grouped_matmul_w(void **st) {
    (void)st;
    int G = 5, out = 150, in = 260, cnt[5] = {0, 7, 0, 3, 0}, R = 10;
    int nsc = 2 * 3;
    for (int dt = 0; dt < 2; dt++) {
        size_t n = (size_t)G * out * in;
        float *wf = frand(n, -0.1f, 0.1f), *deq = malloc(n * 4);
        void *data = malloc(n * 2);
        float *scale = malloc((size_t)G * nsc * 4);
        ops_weight W = {dt ? OPS_BF16 : OPS_FP8_E4M3, data, dt ? NULL : scale, out, in};
        for (int g = 0; g < G; g++) {
            ops_weight v = ops_weight_expert(&W, g);
            ops_weight_store_rows(&v, 0, out, wf + (size_t)g * out * in);
            for (int r = 0; r < out; r++)
                for (int c = 0; c < in; c++) {
                    size_t i = ((size_t)g * out + r) * in + c;
                    deq[i] = dt ? ops_bf16_to_f32(((uint16_t *)data)[i])
                                : ops_e4m3_to_f32(((uint8_t *)data)[i]) * scale[(size_t)g * nsc + (r / 128) * 3 + c / 128];
                }
        }
        float *x = frand((size_t)R * in, -1, 1), *y = malloc((size_t)R * out * 4), *yr = malloc((size_t)R * out * 4);
        ops_grouped_matmul_w(y, x, &W, cnt, G, tile_arena(&W));
        ops_grouped_matmul(yr, x, deq, cnt, G, in, out);
        double maxe = 0;
        for (size_t i = 0; i < (size_t)R * out; i++) maxe = fmax(maxe, fabs(y[i] - yr[i]) / (fabs(yr[i]) + 1e-3));
        printf("  grouped %s forward: max rel error %.2e vs F32 on the dequantised weights\n", dt ? "bf16" : "fp8", maxe);
        assert_true(maxe < 1e-5);
        float *dy = frand((size_t)R * out, -1, 1), *dx = calloc((size_t)R * in, 4), *dxr = calloc((size_t)R * in, 4);
        for (size_t i = 0; i < (size_t)R * in; i++) dx[i] = dxr[i] = 0.25f; /* accumulates */
        ops_grouped_matmul_w_backward_dx(dx, dy, &W, cnt, G, tile_arena(&W));
        ops_grouped_matmul_backward(dxr, NULL, dy, x, deq, cnt, G, in, out);
        maxe = 0;
        for (size_t i = 0; i < (size_t)R * in; i++) maxe = fmax(maxe, fabs(dx[i] - dxr[i]) / (fabs(dxr[i]) + 1e-3));
        printf("  grouped %s backward dx: max rel error %.2e\n", dt ? "bf16" : "fp8", maxe);
        assert_true(maxe < 1e-5);
        ops_weight F = {OPS_F32, deq, NULL, out, in}; /* F32 storage is exactly the grouped GEMM */
        ops_grouped_matmul_w(y, x, &F, cnt, G, tile_arena(&F));
        assert_memory_equal(y, yr, (size_t)R * out * 4);
        free(wf), free(deq), free(data), free(scale), free(x), free(y), free(yr), free(dy), free(dx), free(dxr);
    }
}

/* Every ops_alloc/ops_host_alloc is charged to the category current when it
 * was made, a free uncharges exactly that, and peaks are high-water marks. */
static void test_mem_accounting(void **state) {
    (void)state;
    ops_mem_stats a, b, c;
    ops_mem_get(&a);
    int prev = ops_mem_category(OPS_MEM_GRADS);
    void *g = ops_alloc(1000);
    ops_mem_category(OPS_MEM_ACTS);
    void *h = ops_host_alloc(24);
    void *x = ops_alloc(4096);
    assert_int_equal(ops_mem_category(prev), OPS_MEM_ACTS);
    ops_mem_get(&b);
    assert_true(b.live[OPS_MEM_GRADS] - a.live[OPS_MEM_GRADS] == 1000);
    assert_true(b.live[OPS_MEM_ACTS] - a.live[OPS_MEM_ACTS] == 4120);
    assert_true(b.live_total - a.live_total == 5120);
    ops_free(x); /* freed under another current category: still uncharged from acts */
    ops_host_free(h);
    ops_free(g);
    ops_mem_get(&c);
    for (int k = 0; k < OPS_MEM_NCAT; k++) assert_true(c.live[k] == a.live[k]);
    assert_true(c.peak[OPS_MEM_ACTS] >= a.live[OPS_MEM_ACTS] + 4120 && c.peak_total >= a.live_total + 5120);
    ops_mem_reset_peaks();
    ops_mem_get(&c);
    assert_true(c.peak_total == c.live_total && c.peak[OPS_MEM_GRADS] == c.live[OPS_MEM_GRADS]);
}

/* Inverted dropout: kept values scaled by 1/(1-p), about a fraction p dropped,
 * the mask a pure function of (seed, key, counter): a shifted window draws the
 * same mask, another key or seed another one, and y may alias x. */
static void test_dropout_counter_based(void **state) {
    (void)state;
    enum { N = 200000 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *z = malloc(N * sizeof *z);
    for (int i = 0; i < N; i++) x[i] = 1.0f + (float)(i % 7);
    const float p = 0.25f;
    ops_dropout(y, x, N, p, 9, 77, 1000);
    int dropped = 0;
    for (int i = 0; i < N; i++) {
        if (y[i] == 0.0f) dropped++;
        else assert_true(y[i] == x[i] * (1.0f / (1.0f - p)));
    }
    double frac = (double)dropped / N; /* binomial: sd 0.001 */
    print_message("    dropped %.4f (p = %.2f)\n", frac, p);
    assert_true(fabs(frac - p) < 0.006);
    ops_dropout(z, x + 500, N - 500, p, 9, 77, 1500); /* the same counters, shifted */
    for (int i = 0; i < N - 500; i++) assert_true(z[i] == y[i + 500]);
    ops_dropout(z, x, N, p, 9, 78, 1000);
    int same = 0;
    for (int i = 0; i < N; i++) same += (z[i] == 0.0f) == (y[i] == 0.0f);
    assert_true(same < N * 0.7); /* independent masks agree on ~p^2 + (1-p)^2 = 62.5% */
    memcpy(z, x, N * sizeof *z);
    ops_dropout(z, z, N, p, 9, 77, 1000);
    assert_memory_equal(z, y, N * sizeof *z);
    free(x), free(y), free(z);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_zeroed),       cmocka_unit_test(test_arena),
        cmocka_unit_test(test_mem_accounting),     cmocka_unit_test(test_dropout_counter_based),
        cmocka_unit_test(test_arena_overflow_ends_job), cmocka_unit_test(test_e4m3_all_codes),
        cmocka_unit_test(test_bf16_decode),        cmocka_unit_test(test_matmul_w_f32_is_matmul),
        cmocka_unit_test(test_matmul_w_bf16),      cmocka_unit_test(test_matmul_w_fp8),
        cmocka_unit_test(test_matmul_w_fp8_tiled), cmocka_unit_test(test_e4m3_encode),
        cmocka_unit_test(test_store_rows),         cmocka_unit_test(test_grouped_matmul_w),
        cmocka_unit_test(test_act_quant_fp8),      cmocka_unit_test(test_gemm_scratch_rule),
        cmocka_unit_test(test_gemm_modes),         cmocka_unit_test(test_gemm_chunks),
    };
    return cmocka_run_group_tests_name("weight", tests, NULL, NULL);
}

/* test_hfconv.c — the importer's one-pass conversions equal the reference
 * composition of ops.h's host conversions bit for bit: every e4m3 code (both
 * NaNs, the subnormals) times scales that are ordinary, powers of two, tiny
 * (denormal products), huge (overflow to inf), zero, negative, inf and NaN,
 * in rows whose width is not a multiple of 128 or of the vector width; and
 * every bf16 pattern (NaNs quieted) to bf16 and to float. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hfconv.h"
#include "ops.h"

static void test_fp8_rows(void **state) {
    (void)state;
    static const float scales[] = {1.0f, 3.7e-4f, 0x1p-7f, 1e-38f, 1e-44f, 0x1p-140f, 2.5e37f, 1e30f, 0.0f,
                                   -0.0f, -1.3e-3f, INFINITY, -INFINITY, NAN, 448.0f, 6.1e-5f};
    enum { NS = sizeof scales / sizeof *scales, COLS = 3 * 128 + 77 }; /* an edge block of 77 */
    uint8_t q[COLS];
    float sc[4], y32[COLS];
    uint16_t y16[COLS];
    int checked = 0;
    for (int s0 = 0; s0 < NS; s0++) {
        for (int j = 0; j < 4; j++) sc[j] = scales[(s0 + 5 * j) % NS];
        for (int rep = 0; rep < 2; rep++) {
            for (int c = 0; c < COLS; c++) q[c] = (uint8_t)(rep ? (c * 37 + s0) : c); /* every code in block order, then mixed */
            hfconv_fp8_row(q, sc, COLS, y16, NULL);
            hfconv_fp8_row(q, sc, COLS, NULL, y32);
            for (int c = 0; c < COLS; c++) {
                float want = ops_e4m3_to_f32(q[c]) * sc[c / 128];
                uint32_t a, b;
                memcpy(&a, &want, 4), memcpy(&b, &y32[c], 4);
                if (a != b) fail_msg("fp32: code 0x%02x * %a: %08x, want %08x", q[c], sc[c / 128], b, a);
                uint16_t w16 = ops_f32_to_bf16(want);
                if (w16 != y16[c]) fail_msg("bf16: code 0x%02x * %a: %04x, want %04x", q[c], sc[c / 128], y16[c], w16);
                checked++;
            }
        }
    }
    assert_int_equal(checked, NS * 2 * COLS);
}

static void test_bf16(void **state) {
    (void)state;
    enum { N = 65536 + 13 };
    uint8_t *x = malloc(2 * N);
    uint16_t *y = malloc(2 * N);
    float *f = malloc(4 * N);
    for (uint32_t i = 0; i < N; i++) x[2 * i] = (uint8_t)(i * 7 + 3), x[2 * i + 1] = (uint8_t)((i * 7 + 3) >> 8);
    hfconv_bf16_bf16(x + 2, N - 1, y); /* at an odd element: the source need not be aligned */
    hfconv_bf16_f32(x + 2, N - 1, f);
    for (uint32_t i = 0; i < N - 1; i++) {
        uint16_t h = (uint16_t)(x[2 * i + 2] | x[2 * i + 3] << 8);
        float want = ops_bf16_to_f32(h);
        uint32_t a, b;
        memcpy(&a, &want, 4), memcpy(&b, &f[i], 4);
        if (a != b) fail_msg("bf16 %04x to float: %08x, want %08x", h, b, a);
        if (y[i] != ops_f32_to_bf16(want)) fail_msg("bf16 %04x to bf16: %04x, want %04x", h, y[i], ops_f32_to_bf16(want));
    }
    free(x), free(y), free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp8_rows),
        cmocka_unit_test(test_bf16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* hfconv.c — see hfconv.h. The e4m3 decode without a table: the code's 7 low
 * bits placed at a float's bits 20..26 (exponent low bits + 3 mantissa bits)
 * are the value times 2^-120, subnormal codes included (they land on float
 * denormals), so one exact multiply by 2^120 gives the value; 0x7f/0xff are
 * NaN. GCC vectorises the loops (O3; AVX-512/AVX2 clones): an import spent
 * 27% of its time in a table decode and a separate rounding pass. */
#include <math.h>
#include <string.h>

#include "hfconv.h"
#include "ops.h"

#define CLONES __attribute__((optimize("O3"), target_clones("arch=x86-64-v4", "avx2", "default")))

/* n codes times one scale s, not NaN (so the product's NaN is the code's,
 * whichever operand order the vector multiply takes). */
CLONES static void fp8_block(const uint8_t *q, float s, size_t n, uint16_t *y16, float *y32) {
    if (y16)
        for (size_t i = 0; i < n; i++) {
            uint32_t b = q[i], u = (b & 0x80u) << 24 | (b & 0x7fu) << 20, v;
            float f;
            memcpy(&f, &u, 4);
            f = (b & 0x7fu) == 0x7fu ? NAN : f * 0x1p120f;
            f *= s;
            memcpy(&v, &f, 4);
            uint32_t r = (v + 0x7fffu + ((v >> 16) & 1)) >> 16;
            y16[i] = (uint16_t)((v & 0x7fffffffu) > 0x7f800000u ? (v >> 16) | 0x40 : r); /* ops_f32_to_bf16 */
        }
    else
        for (size_t i = 0; i < n; i++) {
            uint32_t b = q[i], u = (b & 0x80u) << 24 | (b & 0x7fu) << 20;
            float f;
            memcpy(&f, &u, 4);
            f = (b & 0x7fu) == 0x7fu ? NAN : f * 0x1p120f;
            y32[i] = f * s;
        }
}

void hfconv_fp8_row(const uint8_t *q, const float *sc, int64_t cols, uint16_t *y16, float *y32) {
    for (int64_t c0 = 0; c0 < cols; c0 += 128) { /* one scale per 128 columns */
        size_t n = (size_t)(cols - c0 < 128 ? cols - c0 : 128);
        float s = sc[c0 / 128];
        if (!isnan(s)) {
            fp8_block(q + c0, s, n, y16 ? y16 + c0 : NULL, y32 ? y32 + c0 : NULL);
            continue;
        }
        for (size_t i = 0; i < n; i++) { /* a NaN scale: the reference expression as it is */
            float f = ops_e4m3_to_f32(q[c0 + i]) * s;
            if (y16) y16[c0 + i] = ops_f32_to_bf16(f);
            else y32[c0 + i] = f;
        }
    }
}

CLONES void hfconv_bf16_bf16(const uint8_t *x, size_t n, uint16_t *y) {
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(x[2 * i] | x[2 * i + 1] << 8);
        y[i] = (h & 0x7fffu) > 0x7f80u ? h | 0x40 : h; /* rounding an exact bf16 changes nothing but NaN */
    }
}

CLONES void hfconv_bf16_f32(const uint8_t *x, size_t n, float *y) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)(x[2 * i] | x[2 * i + 1] << 8) << 16;
        memcpy(&y[i], &u, 4);
    }
}

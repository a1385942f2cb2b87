/* hfconv.h — the importer's conversions of Hugging Face weight bytes (e4m3
 * with 128-column block scales, bf16) to dsv3's storage dtypes, one pass each
 * and vectorised. Each equals the reference composition of ops.h's exact host
 * conversions bit for bit (tests/test_hfconv.c checks every e4m3 code). */
#ifndef DSV3_HFCONV_H
#define DSV3_HFCONV_H

#include <stddef.h>
#include <stdint.h>

/* One row of cols e4m3 codes q times its block scales (sc[c / 128]) to bf16
 * (y16) or float (y32), whichever is not NULL: ops_f32_to_bf16(ops_e4m3_to_f32(q)
 * * sc) resp. ops_e4m3_to_f32(q) * sc. */
void hfconv_fp8_row(const uint8_t *q, const float *sc, int64_t cols, uint16_t *y16, float *y32);
/* n little-endian bf16 values as bf16 (NaN quieted, as ops_f32_to_bf16 of
 * their float) or as float. */
void hfconv_bf16_bf16(const uint8_t *x, size_t n, uint16_t *y);
void hfconv_bf16_f32(const uint8_t *x, size_t n, float *y);

#endif

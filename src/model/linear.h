/* linear.h — a bias-free linear layer y = x·Wᵀ, with an optional LoRA pair.
 *
 * With LoRA (PEFT semantics, dsv3-spec §9): y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ,
 * A [r, in], B [out, r]. The frozen W gets no gradient (g == NULL).
 *
 * Storage of the base weight: W (ops.h ops_weight). OPS_F32 (the default, a
 * zeroed W included) multiplies by w with ops_matmul exactly as before; a
 * frozen bf16 or FP8 base weight sets W.dtype/data/scale (w, g unused) and
 * the model code stays the same.
 */
#ifndef DSV3_LINEAR_H
#define DSV3_LINEAR_H

#include <stddef.h>

#include "../ops.h"

typedef struct {
    float *w, *g;          /* [out, in]; g NULL when frozen */
    int in, out;
    int r;                 /* LoRA rank, 0 = none */
    float scaling;         /* lora_alpha / r */
    float *A, *gA;         /* [r, in] */
    float *B, *gB;         /* [out, r] */
    ops_weight W;          /* storage of the base weight; F32 uses w */
} linear;

/* Floats of saved activations per token (LoRA keeps x·Aᵀ, [T, r]). */
static inline size_t linear_cache_floats(const linear *l) { return (size_t)l->r; }
/* Peak floats linear_forward/linear_backward take from the scratch arena for
 * T tokens, out outputs and LoRA rank r: forward [T,out], backward [T,r] +
 * [T,out]; 0 without LoRA. */
size_t linear_scratch_floats(int out, int r, int T);
/* y[T,out] = x[T,in]·Wᵀ (+ LoRA); cache [T, r] when r > 0. */
void linear_forward(const linear *l, float *y, const float *x, float *cache, int T, ops_arena *scratch);
/* dx[T,in] += dy·W (+ LoRA); g, gA, gB accumulate. dx may be NULL. */
void linear_backward(const linear *l, float *dx, const float *dy, const float *x, const float *cache, int T,
                     ops_arena *scratch);

#endif

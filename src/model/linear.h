/* linear.h — a bias-free linear layer y = x·Wᵀ, with an optional LoRA pair.
 *
 * With LoRA (PEFT semantics, dsv3-spec §9): y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ,
 * A [r, in], B [out, r]. The frozen W gets no gradient (g == NULL).
 *
 * Storage of the base weight: W (ops.h ops_weight). OPS_F32 (the default, a
 * zeroed W included) multiplies by w with ops_matmul exactly as before; a
 * frozen bf16 or FP8 base weight sets W.dtype/data/scale (w, g unused) and
 * the model code stays the same. A trainable weight in bf16 (train.dtype =
 * "bf16": the working weight of zero.h, w NULL) has W over the bf16 values:
 * y and dx multiply them, dW (fp32) accumulates into g.
 */
#ifndef DSV3_LINEAR_H
#define DSV3_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "../ops.h"

/* LoRA dropout of one micro-batch (PEFT: lora_B(lora_A(dropout(x))), on in
 * training only). The mask of (token row, feature) is a function of (seed,
 * step, module, global row), so it does not depend on how the samples are
 * spread over ranks, and a recomputed forward draws the same mask. */
typedef struct {
    int on;            /* 1: training step; 0: evaluation (no dropout) */
    uint64_t seed;     /* run.seed */
    uint64_t step;     /* optimizer step */
    uint64_t row0;     /* global token row of the micro-batch's first row: first global sample * T */
} lora_dropout_ctx;

typedef struct {
    float *w, *g;          /* [out, in]; g NULL when frozen */
    int in, out;
    int r;                 /* LoRA rank, 0 = none */
    float scaling;         /* lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)) */
    float *A, *gA;         /* [r, in] */
    float *B, *gB;         /* [out, r] */
    float dropout;         /* LoRA dropout probability, 0 = none */
    uint32_t key;          /* this module's dropout stream (layer, module) */
    const lora_dropout_ctx *drop; /* the model's; NULL = never */
    ops_weight W;          /* storage of the base weight; F32 uses w */
} linear;

/* Floats of saved activations per token: LoRA keeps x·Aᵀ [T, r], and with
 * dropout also the dropped input [T, in] that A's gradient reads. */
static inline size_t linear_cache_floats(const linear *l) {
    return l->r > 0 ? (size_t)l->r + (l->dropout > 0 ? (size_t)l->in : 0) : 0;
}
/* Peak floats linear_forward/linear_backward take from the scratch arena for
 * T tokens (in inputs, out outputs, LoRA rank r): forward [T,out], backward
 * [T,r] + [T,out] (+ [T,in] with dropout); 0 without LoRA. */
size_t linear_scratch_floats(int in, int out, int r, int dropout, int T);
/* y[T,out] = x[T,in]·Wᵀ (+ LoRA); cache [T, r] when r > 0. */
void linear_forward(const linear *l, float *y, const float *x, float *cache, int T, ops_arena *scratch);
/* dx[T,in] += dy·W (+ LoRA); g, gA, gB accumulate. dx may be NULL. */
void linear_backward(const linear *l, float *dx, const float *dy, const float *x, const float *cache, int T,
                     ops_arena *scratch);

#endif

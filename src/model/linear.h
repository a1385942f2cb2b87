/* linear.h — a bias-free linear layer y = x·Wᵀ, with an optional LoRA pair.
 *
 * With LoRA (PEFT semantics, dsv3-spec §9): y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ,
 * A [r, in], B [out, r]. The frozen W gets no gradient (g == NULL).
 */
#ifndef DSV3_LINEAR_H
#define DSV3_LINEAR_H

#include <stddef.h>

typedef struct {
    float *w, *g;          /* [out, in]; g NULL when frozen */
    int in, out;
    int r;                 /* LoRA rank, 0 = none */
    float scaling;         /* lora_alpha / r */
    float *A, *gA;         /* [r, in] */
    float *B, *gB;         /* [out, r] */
} linear;

/* Floats of saved activations per token (LoRA keeps x·Aᵀ, [T, r]). */
static inline size_t linear_cache_floats(const linear *l) { return (size_t)l->r; }
/* y[T,out] = x[T,in]·Wᵀ (+ LoRA); cache [T, r] when r > 0. */
void linear_forward(const linear *l, float *y, const float *x, float *cache, int T);
/* dx[T,in] += dy·W (+ LoRA); g, gA, gB accumulate. dx may be NULL. */
void linear_backward(const linear *l, float *dx, const float *dy, const float *x, const float *cache, int T);

#endif

/* ops.h — the backend boundary (design §2).
 *
 * Model code (src/model/, optim.c, lora.c, train.c) never loops over tensor
 * elements: all math goes through these functions. ops_cpu*.c implement them
 * on host memory (the numeric reference); cuda/ implements them on device
 * memory. Activations are row-major [rows, cols]; a linear weight is
 * [out, in] and y = x·Wᵀ. Backward functions ACCUMULATE into weight
 * gradients (+=) and into input gradients (+=) unless stated otherwise, so
 * residual branches and gradient accumulation need no extra adds.
 *
 * Component-specific primitives live in ops_attn.h (norm, rope, attention,
 * embedding, cross-entropy) and ops_moe.h (swiglu, router, gather/scatter).
 */
#ifndef DSV3_OPS_H
#define DSV3_OPS_H

#include <stddef.h>
#include <stdint.h>

/* y[T,out] = x[T,in]·W[out,in]ᵀ  (beta=0: overwrite, beta=1: accumulate) */
void ops_matmul(float *y, const float *x, const float *w, int T, int in, int out, float beta);
/* dx[T,in] += dy[T,out]·W ; dW[out,in] += dyᵀ·x  (either output may be NULL) */
void ops_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int T, int in,
                         int out);
/* Strided copy of a column block: dst[r, 0:n] = src[r, off:off+n] (src row stride ss, dst row stride ds). */
void ops_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows);
/* dst[r, off:off+n] += src[r, 0:n] */
void ops_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows);
void ops_zero(float *x, size_t n);
void ops_copy(float *dst, const float *src, size_t n);
void ops_add(float *y, const float *x, size_t n);            /* y += x */
void ops_axpy(float *y, float a, const float *x, size_t n);  /* y += a·x */
void ops_scale(float *x, float a, size_t n);
double ops_sumsq(const float *x, size_t n);                  /* returned to the host */

/* AdamW on a contiguous slice; step t >= 1; decoupled decay wd (0 for no decay). */
void ops_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
               float eps, float wd, int t, float grad_scale);

/* Counter-based fills (design §1.5): element i gets a value that is a pure
 * function of (seed, key, first + i), so any sharding draws the same numbers. */
void ops_fill_normal(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float std);
void ops_fill_uniform(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float bound);
void ops_fill(float *x, size_t n, float value);

#include "ops_attn.h"
#include "ops_moe.h"

#endif

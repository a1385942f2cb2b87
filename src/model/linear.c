/* linear.c — forward and backward of a linear layer with optional LoRA. */
#include "linear.h"

#include <stdlib.h>

#include "../ops.h"

void linear_forward(const linear *l, float *y, const float *x, float *cache, int T) {
    ops_matmul(y, x, l->w, T, l->in, l->out, 0.0f); /* y[T,out] */
    if (l->r > 0) {
        ops_matmul(cache, x, l->A, T, l->in, l->r, 0.0f);      /* xa[T,r] = x·Aᵀ */
        float *d = malloc((size_t)T * l->out * sizeof *d);      /* [T,out] */
        ops_matmul(d, cache, l->B, T, l->r, l->out, 0.0f);
        ops_axpy(y, l->scaling, d, (size_t)T * l->out);
        free(d);
    }
}

void linear_backward(const linear *l, float *dx, const float *dy, const float *x, const float *cache, int T) {
    ops_matmul_backward(dx, l->g, dy, x, l->w, T, l->in, l->out);
    if (l->r > 0) {
        /* y += s·xa·Bᵀ: dB += s·dyᵀ·xa ; dxa = s·dy·B ; dA += dxaᵀ·x ; dx += dxa·A */
        float *dxa = calloc((size_t)T * l->r, sizeof *dxa);    /* [T,r] */
        float *dys = malloc((size_t)T * l->out * sizeof *dys); /* [T,out] */
        ops_copy(dys, dy, (size_t)T * l->out);
        ops_scale(dys, l->scaling, (size_t)T * l->out);
        ops_matmul_backward(dxa, l->gB, dys, cache, l->B, T, l->r, l->out);
        ops_matmul_backward(dx, l->gA, dxa, x, l->A, T, l->in, l->r);
        free(dxa);
        free(dys);
    }
}

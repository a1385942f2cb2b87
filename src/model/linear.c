/* linear.c — forward and backward of a linear layer with optional LoRA. */
#include "linear.h"

#include "../error.h"
#include "../ops.h"

size_t linear_scratch_floats(int in, int out, int r, int dropout, int T) {
    if (r <= 0) return 0;
    return ops_arena_round((size_t)T * r) + ops_arena_round((size_t)T * out) +
           (dropout ? ops_arena_round((size_t)T * in) : 0);
}

/* Applies this module's dropout mask of the current micro-batch to x [T, in] (y may alias x). */
static int dropping(const linear *l) { return l->dropout > 0 && l->drop && l->drop->on; }
static void drop_apply(const linear *l, float *y, const float *x, int T) {
    const lora_dropout_ctx *c = l->drop;
    ops_dropout(y, x, (size_t)T * l->in, l->dropout, c->seed, (c->step << 24) ^ l->key, c->row0 * (uint64_t)l->in);
}

void linear_forward(const linear *l, float *y, const float *x, float *cache, int T, ops_arena *scratch) {
    if (l->W.dtype != OPS_F32)
        ops_matmul_w(y, x, &l->W, T, 0.0f, scratch);
    else
        ops_matmul(y, x, l->w, T, l->in, l->out, 0.0f); /* y[T,out] */
    if (l->r > 0) {
        size_t mark = ops_arena_mark(scratch);
        const float *xin = x; /* what A sees: x, or dropout(x) [T,in] kept after xa in the cache */
        if (dropping(l)) {
            float *xd = cache + (size_t)T * l->r;
            drop_apply(l, xd, x, T);
            xin = xd;
        }
        ops_matmul(cache, xin, l->A, T, l->in, l->r, 0.0f);          /* xa[T,r] = x·Aᵀ */
        float *d = ops_arena_take(scratch, (size_t)T * l->out);       /* [T,out] */
        ops_matmul(d, cache, l->B, T, l->r, l->out, 0.0f);
        ops_axpy(y, l->scaling, d, (size_t)T * l->out);
        ops_arena_release(scratch, mark);
    }
}

void linear_backward(const linear *l, float *dx, const float *dy, const float *x, const float *cache, int T,
                     ops_arena *scratch) {
    if (l->W.dtype != OPS_F32) { /* a narrow frozen base, or the bf16 working weight of a trainable one */
        DSV3_CHECK(l->g == NULL || l->W.dtype == OPS_BF16, "linear_backward: an fp8 weight must be frozen");
        if (dx) ops_matmul_w_backward_dx(dx, dy, &l->W, T, scratch);
        if (l->g) ops_matmul_backward(NULL, l->g, dy, x, NULL, T, l->in, l->out); /* dW += dyᵀ·x, fp32 */
    } else {
        ops_matmul_backward(dx, l->g, dy, x, l->w, T, l->in, l->out);
    }
    if (l->r > 0) {
        /* y += s·xa·Bᵀ: dB += s·dyᵀ·xa ; dxa = s·dy·B ; dA += dxaᵀ·x ; dx += dxa·A */
        size_t mark = ops_arena_mark(scratch);
        float *dxa = ops_arena_take(scratch, (size_t)T * l->r);      /* [T,r] */
        float *dys = ops_arena_take(scratch, (size_t)T * l->out);    /* [T,out] */
        ops_zero(dxa, (size_t)T * l->r);
        ops_copy(dys, dy, (size_t)T * l->out);
        ops_scale(dys, l->scaling, (size_t)T * l->out);
        ops_matmul_backward(dxa, l->gB, dys, cache, l->B, T, l->r, l->out);
        if (dropping(l)) { /* xa = dropout(x)·Aᵀ: dA += dxaᵀ·dropout(x) ; dx += dropout'(dxa·A), the same mask */
            ops_matmul_backward(NULL, l->gA, dxa, cache + (size_t)T * l->r, l->A, T, l->in, l->r);
            if (dx) {
                float *t = ops_arena_take(scratch, (size_t)T * l->in); /* [T,in] */
                ops_zero(t, (size_t)T * l->in);
                ops_matmul_backward(t, NULL, dxa, NULL, l->A, T, l->in, l->r);
                drop_apply(l, t, t, T);
                ops_add(dx, t, (size_t)T * l->in);
            }
        } else {
            ops_matmul_backward(dx, l->gA, dxa, x, l->A, T, l->in, l->r);
        }
        ops_arena_release(scratch, mark);
    }
}

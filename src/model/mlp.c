/* mlp.c — dense SwiGLU MLP, forward and backward. */
#include "mlp.h"

#include "../error.h"

#include <stdio.h>

#include "../ops.h"

size_t mlp_cache_floats(const mlp_layer *l, int n_cap) {
    size_t H = (size_t)l->gate.in, I = (size_t)l->gate.out;
    size_t r = linear_cache_floats(&l->gate) + linear_cache_floats(&l->up) + linear_cache_floats(&l->down);
    return (size_t)n_cap * (H + 6 * I + r);
}

size_t mlp_scratch_floats(int H, int I, int lora_r, int N) {
    size_t gu = linear_scratch_floats(I, lora_r, N), d = linear_scratch_floats(H, lora_r, N);
    return gu > d ? gu : d; /* the three linears run one after another */
}

static float *buf_alloc(size_t n) { return ops_alloc(n * sizeof(float)); }

int mlp_cache_alloc(mlp_cache *c, const mlp_layer *l, int n_cap) {
    size_t N = (size_t)n_cap, H = (size_t)l->gate.in, I = (size_t)l->gate.out;
    *c = (mlp_cache){.n_cap = n_cap, .H = (int)H, .I_ = (int)I};
    c->x = buf_alloc(N * H);
    c->g = buf_alloc(N * I);
    c->u = buf_alloc(N * I);
    c->h = buf_alloc(N * I);
    c->dh = buf_alloc(N * I);
    c->dg = buf_alloc(N * I);
    c->du = buf_alloc(N * I);
    c->lg = buf_alloc(N * linear_cache_floats(&l->gate));
    c->lu = buf_alloc(N * linear_cache_floats(&l->up));
    c->ld = buf_alloc(N * linear_cache_floats(&l->down));
    if (!c->x || !c->g || !c->u || !c->h || !c->dh || !c->dg || !c->du || !c->lg || !c->lu || !c->ld) {
        fprintf(stderr, "mlp.c: out of memory for the MLP cache (%d tokens, H=%zu, I=%zu)\n", n_cap, H, I);
        mlp_cache_free(c);
        return -1;
    }
    return 0;
}

void mlp_cache_free(mlp_cache *c) {
    ops_free(c->x);
    ops_free(c->g);
    ops_free(c->u);
    ops_free(c->h);
    ops_free(c->dh);
    ops_free(c->dg);
    ops_free(c->du);
    ops_free(c->lg);
    ops_free(c->lu);
    ops_free(c->ld);
    *c = (mlp_cache){0};
}

static void check_n(const mlp_cache *c, int N) {
    DSV3_CHECK(N <= c->n_cap, "mlp: %d tokens exceed the cache capacity %d", N, c->n_cap);
}

void mlp_forward(const mlp_layer *l, mlp_cache *c, float *out, const float *x, int N, ops_arena *scratch) {
    check_n(c, N);
    int H = c->H, I = c->I_;
    ops_copy(c->x, x, (size_t)N * H);
    linear_forward(&l->gate, c->g, x, c->lg, N, scratch); /* g [N,I] */
    linear_forward(&l->up, c->u, x, c->lu, N, scratch);   /* u [N,I] */
    ops_swiglu_forward(c->h, c->g, I, c->u, I, N, I);
    linear_forward(&l->down, out, c->h, c->ld, N, scratch); /* out [N,H] */
}

void mlp_backward(const mlp_layer *l, mlp_cache *c, float *dx, const float *dout, int N, ops_arena *scratch) {
    check_n(c, N);
    int I = c->I_;
    size_t NI = (size_t)N * I;
    ops_zero(c->dh, NI);
    linear_backward(&l->down, c->dh, dout, c->h, c->ld, N, scratch);
    ops_zero(c->dg, NI);
    ops_zero(c->du, NI);
    ops_swiglu_backward(c->dg, I, c->du, I, c->dh, c->g, I, c->u, I, N, I);
    linear_backward(&l->gate, dx, c->dg, c->x, c->lg, N, scratch);
    linear_backward(&l->up, dx, c->du, c->x, c->lu, N, scratch);
}

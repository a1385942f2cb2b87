/* mlp.c — dense SwiGLU MLP, forward and backward. */
#include "mlp.h"

#include "../error.h"

#include <stdio.h>
#include <stdlib.h>

#include "../ops.h"

size_t mlp_cache_floats(const mlp_layer *l, int n_cap) {
    size_t H = (size_t)l->gate.in, I = (size_t)l->gate.out;
    size_t r = linear_cache_floats(&l->gate) + linear_cache_floats(&l->up) + linear_cache_floats(&l->down);
    return (size_t)n_cap * (H + 6 * I + r);
}

static float *falloc(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

int mlp_cache_alloc(mlp_cache *c, const mlp_layer *l, int n_cap) {
    size_t N = (size_t)n_cap, H = (size_t)l->gate.in, I = (size_t)l->gate.out;
    *c = (mlp_cache){.n_cap = n_cap, .H = (int)H, .I_ = (int)I};
    c->x = falloc(N * H);
    c->g = falloc(N * I);
    c->u = falloc(N * I);
    c->h = falloc(N * I);
    c->dh = falloc(N * I);
    c->dg = falloc(N * I);
    c->du = falloc(N * I);
    c->lg = falloc(N * linear_cache_floats(&l->gate));
    c->lu = falloc(N * linear_cache_floats(&l->up));
    c->ld = falloc(N * linear_cache_floats(&l->down));
    if (!c->x || !c->g || !c->u || !c->h || !c->dh || !c->dg || !c->du || !c->lg || !c->lu || !c->ld) {
        fprintf(stderr, "mlp.c: out of memory for the MLP cache (%d tokens, H=%zu, I=%zu)\n", n_cap, H, I);
        mlp_cache_free(c);
        return -1;
    }
    return 0;
}

void mlp_cache_free(mlp_cache *c) {
    free(c->x);
    free(c->g);
    free(c->u);
    free(c->h);
    free(c->dh);
    free(c->dg);
    free(c->du);
    free(c->lg);
    free(c->lu);
    free(c->ld);
    *c = (mlp_cache){0};
}

static void check_n(const mlp_cache *c, int N) {
    DSV3_CHECK(N <= c->n_cap, "mlp: %d tokens exceed the cache capacity %d", N, c->n_cap);
}

void mlp_forward(const mlp_layer *l, mlp_cache *c, float *out, const float *x, int N) {
    check_n(c, N);
    int H = c->H, I = c->I_;
    ops_copy(c->x, x, (size_t)N * H);
    linear_forward(&l->gate, c->g, x, c->lg, N); /* g [N,I] */
    linear_forward(&l->up, c->u, x, c->lu, N);   /* u [N,I] */
    ops_swiglu_forward(c->h, c->g, I, c->u, I, N, I);
    linear_forward(&l->down, out, c->h, c->ld, N); /* out [N,H] */
}

void mlp_backward(const mlp_layer *l, mlp_cache *c, float *dx, const float *dout, int N) {
    check_n(c, N);
    int I = c->I_;
    size_t NI = (size_t)N * I;
    ops_zero(c->dh, NI);
    linear_backward(&l->down, c->dh, dout, c->h, c->ld, N);
    ops_zero(c->dg, NI);
    ops_zero(c->du, NI);
    ops_swiglu_backward(c->dg, I, c->du, I, c->dh, c->g, I, c->u, I, N, I);
    linear_backward(&l->gate, dx, c->dg, c->x, c->lg, N);
    linear_backward(&l->up, dx, c->du, c->x, c->lu, N);
}

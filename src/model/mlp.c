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

size_t mlp_scratch_floats(int H, int I, int lora_r, int lora_drop, int N) {
    size_t gu = linear_scratch_floats(H, I, lora_r, lora_drop, N), d = linear_scratch_floats(I, H, lora_r, lora_drop, N);
    return gu > d ? gu : d; /* the three linears run one after another */
}

size_t mlp_cache_bind(mlp_cache *c, const mlp_layer *l, int n_cap, float *mem) {
    size_t N = (size_t)n_cap, H = (size_t)l->gate.in, I = (size_t)l->gate.out;
    *c = (mlp_cache){.n_cap = n_cap, .H = (int)H, .I_ = (int)I};
    float *p = mem;
#define TAKE(field, n) (c->field = p, p += (n))
#define TAKE_LORA(field, lin) (c->field = (lin)->r ? p : NULL, p += N * linear_cache_floats(lin)) /* NULL: r = 0 */
    TAKE(x, N * H);
    TAKE(g, N * I);
    TAKE(u, N * I);
    TAKE(h, N * I);
    TAKE_LORA(lg, &l->gate);
    TAKE_LORA(lu, &l->up);
    TAKE_LORA(ld, &l->down);
    TAKE(dh, N * I);
    TAKE(dg, N * I);
    TAKE(du, N * I);
#undef TAKE
#undef TAKE_LORA
    size_t used = (size_t)(p - mem), want = mlp_cache_floats(l, n_cap);
    DSV3_CHECK(used == want, "mlp_cache_bind: layout %zu != mlp_cache_floats %zu", used, want);
    return used;
}

int mlp_cache_alloc(mlp_cache *c, const mlp_layer *l, int n_cap) {
    size_t floats = mlp_cache_floats(l, n_cap);
    float *buf = ops_alloc(floats * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "mlp.c: out of memory for the MLP cache (%d tokens, %zu floats)\n", n_cap, floats);
        *c = (mlp_cache){0};
        return -1;
    }
    mlp_cache_bind(c, l, n_cap, buf);
    c->own = buf;
    return 0;
}

void mlp_cache_free(mlp_cache *c) {
    ops_free(c->own);
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

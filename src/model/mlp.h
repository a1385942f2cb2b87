/* mlp.h — dense SwiGLU MLP (dsv3-spec §5): y = down( silu(gate(x)) ⊙ up(x) ).
 * Used for the dense layers [0, first_k_dense_replace) and, with width
 * n_shared_experts·moe_intermediate_size, for the MoE shared experts.
 * gate/up/down are `linear`s, so LoRA targets apply unchanged.
 */
#ifndef DSV3_MLP_H
#define DSV3_MLP_H

#include <stddef.h>

#include "linear.h"

typedef struct {
    linear gate, up, down; /* gate/up [I,H], down [H,I] */
} mlp_layer;

/* Saved activations of one forward (for N <= n_cap tokens) and backward scratch. */
typedef struct {
    int n_cap, H, I_; /* I_: intermediate width (I is a macro under <complex.h>) */
    float *own;          /* the region mlp_cache_alloc allocated (mlp_cache_free frees it); NULL when bound */
    float *x;            /* [N,H] copy of the input */
    float *g, *u, *h;    /* [N,I] gate(x), up(x), silu(g)·u */
    float *lg, *lu, *ld; /* [N,r] LoRA caches of gate/up/down (NULL when r = 0) */
    float *dh, *dg, *du; /* [N,I] backward scratch */
} mlp_cache;

/* Floats mlp_cache_alloc allocates for n_cap tokens: n_cap·(H + 6·I + r_gate + r_up + r_down). */
size_t mlp_cache_floats(const mlp_layer *l, int n_cap);
/* Binds the cache to mem (mlp_cache_floats(l, n_cap) floats, carved in the
 * order of the fields above: x, g, u, h, lg, lu, ld, dh, dg, du); allocates
 * nothing. Returns the floats carved (exactly mlp_cache_floats). */
size_t mlp_cache_bind(mlp_cache *c, const mlp_layer *l, int n_cap, float *mem);
/* One allocation of mlp_cache_floats, bound. 0 on success, -1 (message on stderr) when out of memory. */
int mlp_cache_alloc(mlp_cache *c, const mlp_layer *l, int n_cap);
void mlp_cache_free(mlp_cache *c);
/* Peak floats mlp_forward/mlp_backward take from the scratch arena for N
 * tokens, hidden H, width I, every linear with LoRA rank lora_r (0 = none;
 * an upper bound for fewer adapted linears). A pure function of the config. */
size_t mlp_scratch_floats(int H, int I, int lora_r, int lora_drop, int N);

/* out[N,H] = down(silu(gate(x))·up(x)); N <= n_cap. out must not alias x. */
void mlp_forward(const mlp_layer *l, mlp_cache *c, float *out, const float *x, int N, ops_arena *scratch);
/* dx[N,H] += ∂L/∂x (dx may be NULL); weight (and LoRA) gradients accumulate.
 * Uses the activations of the last mlp_forward on this cache. */
void mlp_backward(const mlp_layer *l, mlp_cache *c, float *dx, const float *dout, int N, ops_arena *scratch);

#endif

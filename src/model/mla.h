/* mla.h — Multi-head Latent Attention block (dsv3-spec §3), forward and backward.
 *
 * x [B*T, H] (the input_layernorm output) → out [B*T, H]:
 *   q   = q_b(RMSNorm(q_a(x))) or q_proj(x)          [B*T, nh, dn+dr]
 *   kv  = kv_a(x) = [c | k_pe]                       [B*T, kvl+dr]
 *   kvb = kv_b(RMSNorm(c)) = per head [k_nope | v]   [B*T, nh, dn+dv]
 *   RoPE on q_pe (every head) and the shared k_pe; k_h = [k_nope_h ; k_pe]
 *   o = causal softmax(scale·q·kᵀ)·v                  [B*T, nh, dv]
 *   out = o_proj(o)
 * Every projection is a `linear` (LoRA-capable); norms use model.rms_norm_eps.
 */
#ifndef DSV3_MLA_H
#define DSV3_MLA_H

#include <stddef.h>

#include "../ops.h"
#include "config.h"
#include "linear.h"
#include "rope.h"

typedef struct {
    linear q_a, q_b, q, kv_a, kv_b, o;  /* q used when q_lora_rank == 0, else q_a/q_b */
    float *q_a_norm, *g_q_a_norm;       /* [q_lora_rank]; g NULL when frozen */
    float *kv_a_norm, *g_kv_a_norm;     /* [kv_lora_rank]; g NULL when frozen */
} mla_layer;

/* Activations saved by the forward for the backward: one region `buf`,
 * carved below (bound to the caller's memory, or owned: mla_cache_alloc). */
typedef struct {
    const float *x;   /* the forward input (NOT copied: the caller keeps it alive until backward) */
    float *buf;       /* holds everything below */
    float *own;       /* buf when mla_cache_alloc allocated it (mla_cache_free frees it), else NULL */
    size_t floats;    /* size of buf */
    int B, T;
    float *cq_raw;    /* [B*T, q_lora_rank] q_a output (q_lora_rank > 0) */
    float *cq;        /* [B*T, q_lora_rank] after q_a_layernorm */
    float *rstd_q;    /* [B*T] */
    float *q;         /* [B*T, nh, dn+dr] after RoPE */
    float *c_raw;     /* [B*T, kv_lora_rank] compressed kv before kv_a_layernorm */
    float *c;         /* [B*T, kv_lora_rank] after the norm */
    float *rstd_kv;   /* [B*T] */
    float *k;         /* [B*T, nh, dn+dr] assembled keys after RoPE */
    float *v;         /* [B*T, nh, dv] */
    float *o;         /* [B*T, nh, dv] attention output (o_proj input) */
    float *lse;       /* [B, nh, T] attention log-sum-exp */
    float *lc_q_a, *lc_q_b, *lc_q, *lc_kv_a, *lc_kv_b, *lc_o; /* LoRA caches [B*T, r] (NULL when r = 0) */
} mla_cache;

/* Exact floats of mla_cache for B sequences of T tokens. lora_r_sum = the sum of
 * the LoRA ranks of this layer's adapted projections (0 without LoRA; 5·r when
 * q_a, q_b, kv_a, kv_b, o all carry rank r). */
size_t mla_cache_floats(const deck_model *m, int lora_r_sum, int B, int T);
/* Binds the cache for layer l (its LoRA ranks) to mem, which holds at least
 * mla_cache_floats(m, <l's rank sum>, B, T) floats; allocates nothing.
 * Returns the floats it carved (exactly that size). */
size_t mla_cache_bind(mla_cache *c, const deck_model *m, const mla_layer *l, int B, int T, float *mem);
/* Allocates the cache for layer l (its LoRA ranks); aborts with a message on OOM. */
void mla_cache_alloc(mla_cache *c, const deck_model *m, const mla_layer *l, int B, int T);
void mla_cache_free(mla_cache *c);
/* Peak floats mla_forward/mla_backward take from the scratch arena (their
 * linears' LoRA temporaries and the attention's score regions included) for B sequences of T tokens, when every
 * projection carries LoRA rank lora_r (0 = none): an upper bound for any
 * subset of adapted projections, at GEMM precision gemm (OPS_GEMM_*: the attention's
 * bf16 copies, ops_attn.h). A pure function of the config. */
size_t mla_scratch_floats(const deck_model *m, int lora_r, int lora_drop, int B, int T, int gemm);

/* out[B*T, H] = MLA(x); rt must cover T positions. Saves activations in c (and a pointer to x). */
void mla_forward(const deck_model *m, const mla_layer *l, const rope_table *rt, mla_cache *c, float *out,
                 const float *x, int B, int T, ops_arena *scratch);
/* dx[B*T, H] += ∂L/∂x given dout; weight, norm and LoRA gradients accumulate. */
void mla_backward(const deck_model *m, const mla_layer *l, const rope_table *rt, mla_cache *c, float *dx,
                  const float *dout, int B, int T, ops_arena *scratch);

#endif

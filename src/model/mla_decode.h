/* mla_decode.h — MLA for generation: the latent KV cache and the absorbed
 * form of attention (dsv3-spec §3, DeepSeek's inference "absorb" mode).
 *
 * Per token and layer the cache keeps only what attention reads from past
 * positions: the compressed kv after kv_a_layernorm, c [kvl], and the rotary
 * key after RoPE, k_pe [dr] — one row [c | k_pe] of W = kvl + dr values (576
 * in V3), instead of the expanded per-head keys and values (nh·(dqk+dv)).
 * kv_b_proj = per head [W_UK_h (dn rows) ; W_UV_h (dv rows)], [nh·(dn+dv), kvl],
 * is absorbed into both sides so the cache is never expanded:
 *   score(i,j,h) = q_nope_h·k_nope_h(j) + q_pe_h·k_pe(j)
 *                = (q_nope_h·W_UK_h)·c(j) + q_pe_h·k_pe(j)  =  q_abs_h · [c | k_pe](j)
 *   o_h(i) = Σ_j p_ij·v_h(j) = W_UV_h·(Σ_j p_ij·c(j))
 * Same math as mla_forward (mla.h), other rounding (~1e-6 relative in fp32).
 */
#ifndef DSV3_MLA_DECODE_H
#define DSV3_MLA_DECODE_H

#include <stddef.h>

#include "../ops.h"
#include "config.h"
#include "mla.h"
#include "rope.h"

/* W = kv_lora_rank + qk_rope_head_dim: cached floats per token per layer. */
static inline int mla_decode_row(const deck_model *m) { return m->kv_lora_rank + m->qk_rope_head_dim; }
/* Peak floats mla_decode takes from the scratch arena for N = B·n new tokens. */
size_t mla_decode_scratch_floats(const deck_model *m, int N);

/* out[B*n, H] = MLA(x[B*n, H]) for n new tokens of each of B sequences;
 * sequence b's tokens sit at positions pos[b]..pos[b]+n-1 (pos: host array).
 * kv: [B, Tcap, W] this layer's latent cache of the B sequences; rows
 * 0..pos[b]-1 hold the earlier tokens, rows pos[b]..pos[b]+n-1 are written
 * here. pos[b] + n <= Tcap and <= rt->T. The projections must be F32 and
 * LoRA-free (merge adapters first: model_merge_lora). Allocates nothing. */
void mla_decode(const deck_model *m, const mla_layer *l, const rope_table *rt, float *kv, int Tcap, const int *pos,
                float *out, const float *x, int B, int n, ops_arena *scratch);

#endif

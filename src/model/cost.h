/* cost.h — what a model costs, from its config alone (one formula each,
 * used by the plan for --dry-run and by the run that measures itself):
 * training FLOPs per token, the CPU model's exact activation and scratch
 * bytes, and the GPU-layout activation estimate.
 */
#ifndef DSV3_MODEL_COST_H
#define DSV3_MODEL_COST_H

#include <stddef.h>

#include "config.h"

/* Training FLOPs per token (forward + backward = 3x forward) at seq_len: 2 per
 * multiply-add of every matmul a token goes through (dense linears, router,
 * top-k routed + shared experts, lm_head, MTP heads) plus causal attention
 * (QK^T and PV over the (T+1)/2 keys a token sees on average). Frozen weights
 * (LoRA) still cost their forward and input-gradient GEMMs: 4 instead of 6
 * per parameter. 0 when the config is invalid. */
double cost_flops_per_token(const model_opts *o);

/* ---- the CPU model's own accounting (exact: the run allocates this) ---- */
/* (token, expert) pairs a MoE layer's expert buffers hold before they grow
 * (dropless): this rank's share of balanced routing, ceil(EP·N·K·e_local/E),
 * plus N. */
int cost_moe_row_cap(const deck_model *c, int N, int ep, int e_local);
/* Bytes of one block's component caches (MLA + MLP or MoE; device memory,
 * the MoE layer's host counts excluded) for B x T tokens: its slot in the
 * model's activation buffer. ep: the expert group's size; e_local: this
 * rank's routed experts per layer (uneven ownership: E/ep or E/ep + 1). */
double cost_block_cache_bytes(const model_opts *o, int layer, int ep, int e_local, int B, int T);
/* Bytes of the activation buffer's cache region: every block's slot, or with
 * activation checkpointing max(the MTP blocks' slots, the largest main
 * block's slot) — all main blocks share one slot (recomputed one at a time)
 * and the MTP slots overlap it (their caches live from the MTP forward to the
 * MTP backward, which runs before any main recompute). */
double cost_cache_region_bytes(const model_opts *o, int ep, int e_local, int B, int T);
/* Host bytes of the MoE layers' routing counts (moe_cache_host_ints each) and
 * of the B x T micro-batch's ids staging (tokens, targets, MTP shifts: int32). */
double cost_host_act_bytes(const model_opts *o, int ep, int e_local, int B, int T);
/* Peak floats of the components' scratch arena (ops_arena) for B sequences of
 * T tokens: the max over MLA, the dense MLP, the MoE layer, the MTP eh_proj
 * and the lm_head (LoRA rank r on every adaptable linear: an upper bound). */
size_t cost_scratch_floats(const model_opts *o, int B, int T);
/* Floats of the largest GEMM scratch (ops_matmul_w_scratch_floats) of a weight stored narrow (train.base_dtype
 * bf16/fp8, at train.gemm_dtype); 0 for fp32. */
size_t cost_tile_floats(const model_opts *o);
/* Bytes the model keeps whatever the blocks hold: per-block inputs and norms,
 * MTP extras, the ids (tokens, targets, MTP shifts), head, logits, backward
 * scratch and the scratch arena. */
double cost_base_act_bytes(const model_opts *o, int B, int T);
/* What the model allocates for activations (model.c: acts_create): the
 * activation buffer (base + cache region) and the host counts, on a rank
 * owning e_local routed experts of each MoE layer. */
double cost_act_bytes(const model_opts *o, int ep, int e_local, int B, int T);

/* ---- the GPU layout estimate (bf16 decks, --dry-run) ---- */
/* Floats saved per token by one decoder layer for its backward (moe: MoE FFN,
 * else dense MLP; lora: count the adapters' x*A^T caches). */
double cost_gpu_layer_floats(const model_opts *o, int moe, int lora);
/* Bytes of activations kept for one micro-batch of `tokens` tokens with
 * elem_bytes per element (logits fp32). */
double cost_gpu_act_bytes(const model_opts *o, double tokens, double elem_bytes);

#endif

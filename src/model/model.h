/* model.h — the whole DeepSeek-V3 model: embedding, decoder layers (MLA +
 * dense MLP or MoE), final norm, lm_head, and D MTP modules; forward and
 * backward over a micro-batch of B sequences of T tokens.
 *
 * Parameters and gradients live in flat buffers laid out by the param table
 * (params.h); every component holds pointers into them, bound by HF name.
 */
#ifndef DSV3_MODEL_H
#define DSV3_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../ops.h"
#include "../zero.h"
#include "config.h"
#include "params.h"

struct plan;
typedef struct model model;

typedef struct {
    const int32_t *tokens;  /* [B, T] input ids */
    const int32_t *targets; /* [B, T] id to predict after tokens[b,t] (already shifted), -100 = ignore */
    int B, T;
    /* LoRA dropout (lora.dropout > 0) when `dropout` is set: the masks are drawn from
     * (seed, step, global sample index of each row), so any layout draws the same */
    int dropout;            /* 1 in training steps, 0 for evaluation */
    uint64_t seed;          /* run.seed */
    int64_t step;           /* the optimizer step */
    int64_t sample0;        /* global index (within the step) of row 0's sample */
} model_batch;

#define MODEL_MAX_MTP 8

typedef struct {
    double lm_sum;          /* sum of -log p over counted targets */
    double mtp_sum[MODEL_MAX_MTP]; /* per MTP depth k-1: CE sums */
    double bal_sum;         /* sum over MoE layers and sequences of the balance loss */
    int64_t lm_count;       /* counted targets */
} model_sums;

/* Loss scales the caller gives so that gradients are those of the global mean:
 * lm: 1/global_lm_count; mtp[k-1]: lambda/D/global count of depth-k targets;
 * bal: 1/global_sequences. */
typedef struct {
    float lm, mtp[MODEL_MAX_MTP], bal;
} model_scales;

/* Targets of MTP depth k for a [B,T] batch: targets[b, t+k] (-100 past the end). Host-side. */
int64_t model_count_targets(const int32_t *targets, int B, int T, int k);

/* Builds the model for this rank (deck_model_opts(d) from a deck). p == NULL:
 * one rank, EP=1, no ZeRO. 0, or -1 with err set. */
int model_create(model **out, const model_opts *o, const struct plan *p, char *err, int errlen);
void model_free(model *m);
const param_table *model_params(const model *m);
/* Parameters: the flat local layout, or under ZeRO-3 this rank's packed shard
 * (plan.h). Gradients: the flat local layout, or under ZeRO-2/3 the packed
 * shard, already reduced over the data/world communicators by model_step. */
float *model_param_buffer(model *m);  /* the masters (may be written: w16 regathers at the next open) */
int model_params_layout(const model *m); /* its layout (zero.h): packed shard at ZeRO 3, or ZeRO >= 1 with bf16 */
float *model_grad_buffer(model *m);
/* The parameter/gradient buffers and their ZeRO stage (the optimizer step, zero.h). */
zero_state *model_zero(model *m);
/* Pointer to a tensor's local data by HF name (NULL if absent); *grad gets its gradient. */
float *model_tensor(model *m, const char *hf_name, float **grad);
/* The storage of a frozen weight (train.base_dtype, params.h P_STORED): local
 * matrix g (a routed expert's local index; 0 for a 2-D weight) as an
 * ops_weight view of the frozen store; dtype OPS_F32 with data NULL when the
 * tensor is not stored narrow (or absent). */
ops_weight model_stored_weight(model *m, const char *hf_name, int g);
/* Counter-based init: every value is a pure function of (seed, tensor name, global element index),
 * so any rank count gives the same weights. Norm weights 1, router bias 0, LoRA B 0. */
void model_init_weights(model *m, uint64_t seed);
/* skip = 1: model_init_weights leaves the frozen store alone (zeros), for a
 * run whose checkpoint (run.init_from) then loads every stored tensor: at real
 * width quantising a seeded init that is overwritten costs minutes. */
void model_skip_stored_init(model *m, int skip);
void model_zero_grad(model *m);
/* Lays the activations out for B x T micro-batches (model_create does it for
 * micro_batch x seq_len): the only allocation of activations, between steps.
 * 0, or -1 with err set. */
int model_reshape(model *m, int B, int T, char *err, int errlen);
/* Forward (and backward when `backward`) over one micro-batch of the shape the
 * activations are laid out for (model_reshape); adds to *sums. Allocates nothing. */
void model_step(model *m, const model_batch *b, model_scales sc, int backward, model_sums *sums);
/* Logits [B*T, V] of the main head from the last forward-only model_step (a training step leaves dlogits there). */
const float *model_logits(const model *m);
/* Per-expert token counts of MoE layer slot i (0..n_moe-1) accumulated since the last reset
 * (local tokens, all experts [E]); n_moe layers including MTP blocks. */
int model_n_moe(const model *m);
int64_t *model_expert_counts(model *m, int i);
float *model_router_bias(model *m, int i); /* NULL when the masters are sharded (model_params_layout) */
/* The full router bias [E] of MoE slot i assembled from the ZeRO-3 shards,
 * into HOST memory `full` (collective over world; any stage). */
void model_router_bias_gather(model *m, int i, float *full);
/* Aux-loss-free bias update of slot i from counts summed over all ranks (spec §5). */
void model_bias_update(model *m, int i, const int64_t *counts, float gamma);
int model_moe_layer_index(const model *m, int i); /* HF layer number of slot i */
void model_reset_counts(model *m);
/* Seconds spent in MoE dispatch/combine all-to-all since the last model_reset_counts. */
double model_comm_seconds(const model *m);
/* Bytes this rank sent to other ranks in those all-to-alls since then (rows in
 * the wire dtype, pair records, counts). */
double model_comm_bytes(const model *m);

/* ---- Generation (dsv3-spec §3: absorbed MLA over the latent cache, mla_decode.h) ----
 * The cache holds, per layer, sequence and position, the W = kv_lora_rank +
 * qk_rope_head_dim values [c | k_pe]: model_kv_floats_per_token() floats per
 * token in all. B sequences of up to T positions (T <= model_opts.seq_len: the
 * RoPE table); max_rows = the most tokens (B·n, all sequences) one model_decode
 * takes (sizes its scratch); with_mtp: one more layer for the first MTP module's
 * block (model_decode_mtp). 0, or -1 with err set. */
typedef struct model_kv model_kv;
int model_kv_create(model_kv **kv, const model *m, int B, int T, int max_rows, int with_mtp, char *err, int errlen);
void model_kv_free(model_kv *kv);
size_t model_kv_floats_per_token(const model *m);
/* Runs n new tokens (tokens [B, n]) of the cache's sequences seq0..seq0+B-1,
 * sequence b's at positions pos[b]..pos[b]+n-1 (host array), appending their
 * latents to the cache; the main head's logits land in model_logits(): [B*n, V]
 * (all_logits) or [B, V] for each sequence's last token. model_reshape(m, B, n)
 * first. Collective over the expert-parallel group (MoE). Allocates nothing. */
void model_decode(model *m, model_kv *kv, int seq0, const int32_t *tokens, int B, int n, const int *pos,
                  int all_logits);
/* The first MTP module (spec §6) over the rows of the last model_decode (which
 * ran with all_logits, same B and n): row i of sequence b, at position
 * pos[b]+i, combines the main model's final hidden state there with the
 * embedding of next[b*n+i], the token that follows it, and predicts the token
 * after that; logits [B*n, V] in model_logits() (the main ones are replaced).
 * The MTP block's latents go to the cache's extra layer (with_mtp). Drafts
 * for self-speculative decoding. Collective over the expert group. */
void model_decode_mtp(model *m, model_kv *kv, int seq0, const int32_t *next, int B, int n, const int *pos);
/* Folds every LoRA pair into its base weight, W += (alpha/r)·B·A, and drops the
 * adapters from the forward (generation of an adapted model; the absorbed
 * attention needs a plain kv_b_proj). Below ZeRO-3 only. 0, or -1 with err. */
int model_merge_lora(model *m, char *err, int errlen);

/* FLOPs and activation bytes of a config: cost.h. */

#endif

/* mtp.h — a multi-token-prediction module (dsv3-spec.md §6): depth k predicts
 * token t+k+1 from
 *     h^k = block(eh_proj([enorm(E[token t+k]) ; hnorm(h^{k-1}_t)]))
 *     logits^k = lm_head(shared_head.norm(h^k))
 * with the embedding E and lm_head shared with the main model and the block
 * a full decoder layer (model.c runs it). Forward and backward side by side
 * (temporaries from the scratch arena):
 * the input (embedding, norms, concat, eh_proj) and the head (norm, shared
 * lm_head, cross-entropy).
 */
#ifndef DSV3_MTP_H
#define DSV3_MTP_H

#include <stdint.h>

#include "../ops.h"
#include "linear.h"

typedef struct {
    float *enorm, *g_enorm;         /* [H] */
    float *hnorm, *g_hnorm;         /* [H] */
    float *head_norm, *g_head_norm; /* [H] shared_head.norm */
    linear eh_proj;                 /* [H, 2H] */
} mtp_layer;

/* What the backward reads, for N = B*T tokens. e_ids and targets are device
 * memory (the embedding and cross-entropy ops read them), filled by the model
 * from a host mtp_shift (model.c: batch_to_device). */
typedef struct {
    int32_t *e_ids, *targets;       /* [N] device: token t+k, target t+k (-100 past the end) */
    float *e, *en, *e_rstd;         /* [N,H], [N,H], [N] embedding, enorm out */
    float *hn, *h_rstd;             /* [N,H], [N] hnorm out */
    float *cat;                     /* [N,2H] [en ; hn], embedding first */
    float *eh_cache;                /* [N, r+1] eh_proj LoRA cache */
    float *z, *z_rstd;              /* [N,H], [N] shared_head.norm out */
} mtp_cache;

/* Depth-k inputs of a [B,T] batch: ids[b,t] = tokens[b,t+k], tgt[b,t] = targets[b,t+k]. Host arrays. */
void mtp_shift(int32_t *ids, int32_t *tgt, const int32_t *tokens, const int32_t *targets, int B, int T, int k);

/* x[N,H] = eh_proj([enorm(embed[e_ids]) ; hnorm(hprev)]); hprev [N,H] is h^{k-1}. */
void mtp_input_forward(const mtp_layer *l, mtp_cache *c, const float *embed, const float *hprev, float *x, int N,
                       int H, int V, float eps, ops_arena *scratch);
/* Activation checkpointing: x[N,H] = eh_proj(cat) again from the saved concat. */
void mtp_input_recompute(const mtp_layer *l, mtp_cache *c, float *x, int N, ops_arena *scratch);
/* dx[N,H]: gradient w.r.t. eh_proj's output, used as scratch (clobbered).
 * Adds into g_embed (if not NULL; rows e_ids), the norms' gradients, eh_proj's,
 * and dh[N,H] += d hprev. dcat [N,2H], den, de [N,H]: scratch. */
void mtp_input_backward(const mtp_layer *l, mtp_cache *c, float *dx, const float *hprev, float *g_embed, float *dh,
                        float *dcat, float *den, float *de, int N, int H, int V, ops_arena *scratch);

/* logits[N,V] = lm_head(shared_head.norm(x_out)); returns the cross-entropy
 * sum over the counted depth-k targets. */
double mtp_head_forward(const mtp_layer *l, mtp_cache *c, const linear *lm_head, const float *x_out, float *logits,
                        int N, int H, int V, float eps, ops_arena *scratch);
/* dx[N,H] += d(scale * CE)/d x_out: recomputes the logits into `logits`
 * (overwritten with dlogits), adds lm_head's gradient; dz [N,H] scratch. */
void mtp_head_backward(const mtp_layer *l, mtp_cache *c, const linear *lm_head, const float *x_out, float *logits,
                       float *dz, float *dx, float scale, int N, int H, int V, ops_arena *scratch);

#endif

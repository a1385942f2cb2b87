/* mtp.c — multi-token prediction: input and head, forward beside backward. */
#include "mtp.h"

#include <stddef.h>

#include "../ops.h"

void mtp_shift(int32_t *ids, int32_t *tgt, const int32_t *tokens, const int32_t *targets, int B, int T, int k) {
    for (int s = 0; s < B; s++)
        for (int t = 0; t < T; t++) {
            int i = s * T + t, ok = t + k < T;
            ids[i] = ok ? tokens[i + k] : 0;
            tgt[i] = ok ? targets[i + k] : -100;
        }
}

/* ---- input: [enorm(E[ids]) ; hnorm(h)] -> eh_proj ---- */

void mtp_input_forward(const mtp_layer *l, mtp_cache *c, const float *embed, const float *hprev, float *x, int N,
                       int H, int V, float eps, ops_arena *scratch) {
    ops_embedding_forward(c->e, embed, c->e_ids, N, V, H);
    ops_rmsnorm_forward(c->en, c->e_rstd, c->e, l->enorm, N, H, eps);
    ops_rmsnorm_forward(c->hn, c->h_rstd, hprev, l->hnorm, N, H, eps);
    ops_zero(c->cat, (size_t)N * 2 * H); /* cat = [en ; hn], embedding first (spec §6) */
    ops_add_cols(c->cat, 2 * H, 0, c->en, H, H, N);
    ops_add_cols(c->cat, 2 * H, H, c->hn, H, H, N);
    linear_forward(&l->eh_proj, x, c->cat, c->eh_cache, N, scratch);
}

void mtp_input_recompute(const mtp_layer *l, mtp_cache *c, float *x, int N, ops_arena *scratch) {
    linear_forward(&l->eh_proj, x, c->cat, c->eh_cache, N, scratch);
}

void mtp_input_backward(const mtp_layer *l, mtp_cache *c, float *dx, const float *hprev, float *g_embed, float *dh,
                        float *dcat, float *den, float *de, int N, int H, int V, ops_arena *scratch) {
    ops_zero(dcat, (size_t)N * 2 * H);
    linear_backward(&l->eh_proj, dcat, dx, c->cat, c->eh_cache, N, scratch);
    float *dhn = dx; /* dx is consumed: reuse it for d hn */
    ops_copy_cols(den, H, dcat, 2 * H, 0, H, N);
    ops_copy_cols(dhn, H, dcat, 2 * H, H, H, N);
    ops_zero(de, (size_t)N * H);
    ops_rmsnorm_backward(de, l->g_enorm, den, c->e, l->enorm, c->e_rstd, N, H);
    if (g_embed) ops_embedding_backward(g_embed, de, c->e_ids, N, V, H);
    ops_rmsnorm_backward(dh, l->g_hnorm, dhn, hprev, l->hnorm, c->h_rstd, N, H);
}

/* ---- head: shared_head.norm -> lm_head -> cross-entropy ---- */

double mtp_head_forward(const mtp_layer *l, mtp_cache *c, const linear *lm_head, const float *x_out, float *logits,
                        int N, int H, int V, float eps, ops_arena *scratch) {
    ops_rmsnorm_forward(c->z, c->z_rstd, x_out, l->head_norm, N, H, eps);
    linear_forward(lm_head, logits, c->z, NULL, N, scratch);
    int64_t cnt = 0; /* the count is known globally from the targets (train.c) */
    return ops_cross_entropy_forward(NULL, &cnt, logits, c->targets, N, V);
}

void mtp_head_backward(const mtp_layer *l, mtp_cache *c, const linear *lm_head, const float *x_out, float *logits,
                       float *dz, float *dx, float scale, int N, int H, int V, ops_arena *scratch) {
    linear_forward(lm_head, logits, c->z, NULL, N, scratch);
    ops_cross_entropy_fused(logits, NULL, logits, c->targets, N, V, scale); /* in place: dlogits */
    ops_zero(dz, (size_t)N * H);
    linear_backward(lm_head, dz, logits, c->z, NULL, N, scratch);
    ops_rmsnorm_backward(dx, l->g_head_norm, dz, x_out, l->head_norm, c->z_rstd, N, H);
}

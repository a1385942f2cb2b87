/* mla_decode.c — absorbed MLA over the latent KV cache (see mla_decode.h). */
#include "mla_decode.h"

#include "../error.h"
#include "../ops.h"

size_t mla_decode_scratch_floats(const deck_model *m, int N) {
    const size_t n = (size_t)N, nh = m->num_attention_heads, dn = m->qk_nope_head_dim;
    const size_t dqk = dn + m->qk_rope_head_dim, dv = m->v_head_dim, ql = m->q_lora_rank;
    const size_t kvl = m->kv_lora_rank, W = (size_t)mla_decode_row(m);
#define RND(x) ops_arena_round(x)
    size_t s = RND(n * nh * dqk) + RND(n * nh * W) + RND(n * nh * kvl) + RND(n * nh * dv); /* q, qabs, olat, o */
    size_t qpath = ql > 0 ? 2 * RND(n * ql) + RND(n) : 0;                                    /* cq_raw, cq, rstd */
    size_t kvpath = RND(n * W) + 2 * RND(n * kvl) + RND(n);                                  /* kv, c_raw, c, rstd */
    size_t heads = RND(n * (dn > kvl ? dn : kvl)) + RND(n * (kvl > dv ? kvl : dv));          /* per-head in, out */
#undef RND
    size_t t = qpath > kvpath ? qpath : kvpath;
    return s + (t > heads ? t : heads);
}

void mla_decode(const deck_model *m, const mla_layer *l, const rope_table *rt, float *kv, int Tcap, const int *pos,
                float *out, const float *x, int B, int n, ops_arena *scratch) {
    const int N = B * n, nh = m->num_attention_heads, dn = m->qk_nope_head_dim, dr = m->qk_rope_head_dim;
    const int dqk = dn + dr, dv = m->v_head_dim, ql = m->q_lora_rank, kvl = m->kv_lora_rank;
    const int W = mla_decode_row(m), ldq = nh * dqk, half = rt->half;
    const float eps = 1e-6f; /* q_a/kv_a layernorms: the RMSNorm default (spec §2), as mla_forward */
    int lora = l->kv_a.r + l->kv_b.r + l->o.r + (ql > 0 ? l->q_a.r + l->q_b.r : l->q.r);
    DSV3_CHECK(lora == 0 && l->kv_b.W.dtype == OPS_F32,
               "mla_decode: kv_b_proj must be a plain F32 weight and no projection may carry LoRA (merge it first)");
    for (int b = 0; b < B; b++)
        DSV3_CHECK(pos[b] >= 0 && pos[b] + n <= Tcap && pos[b] + n <= rt->T,
                   "mla_decode: positions %d..%d of sequence %d exceed the cache (%d) or the RoPE table (%d)", pos[b],
                   pos[b] + n - 1, b, Tcap, rt->T);
    size_t mark0 = ops_arena_mark(scratch);
    float *q = ops_arena_take(scratch, (size_t)N * ldq);         /* [N, nh, dqk] */
    float *qabs = ops_arena_take(scratch, (size_t)N * nh * W);   /* [N, nh, W] absorbed queries */
    float *olat = ops_arena_take(scratch, (size_t)N * nh * kvl); /* [N, nh, kvl] Σ_j p·c(j) */
    float *o = ops_arena_take(scratch, (size_t)N * nh * dv);     /* [N, nh, dv] o_proj input */

    /* query path, then RoPE on every head's q_pe at the sequence's positions */
    size_t mark = ops_arena_mark(scratch);
    if (ql > 0) {
        float *cq_raw = ops_arena_take(scratch, (size_t)N * ql), *cq = ops_arena_take(scratch, (size_t)N * ql);
        float *rstd = ops_arena_take(scratch, (size_t)N);
        linear_forward(&l->q_a, cq_raw, x, NULL, N, scratch);
        ops_rmsnorm_forward(cq, rstd, cq_raw, l->q_a_norm, N, ql, eps);
        linear_forward(&l->q_b, q, cq, NULL, N, scratch);
    } else {
        linear_forward(&l->q, q, x, NULL, N, scratch);
    }
    ops_arena_release(scratch, mark);
    for (int b = 0; b < B; b++)
        ops_rope_forward(q + (size_t)b * n * ldq, ldq, nh, dqk, dn, dr, rt->cos_t + (size_t)pos[b] * half,
                         rt->sin_t + (size_t)pos[b] * half, 1, n);

    /* the new cache rows: [kv_a_layernorm(c_raw) | RoPE(k_pe)], appended at pos[b] */
    float *kvr = ops_arena_take(scratch, (size_t)N * W); /* [N, W] */
    float *c_raw = ops_arena_take(scratch, (size_t)N * kvl), *c = ops_arena_take(scratch, (size_t)N * kvl);
    float *rstd = ops_arena_take(scratch, (size_t)N);
    linear_forward(&l->kv_a, kvr, x, NULL, N, scratch);
    ops_copy_cols(c_raw, kvl, kvr, W, 0, kvl, N);
    ops_rmsnorm_forward(c, rstd, c_raw, l->kv_a_norm, N, kvl, eps);
    ops_copy_cols(kvr, W, c, kvl, 0, kvl, N);
    for (int b = 0; b < B; b++) {
        float *rows = kvr + (size_t)b * n * W;
        ops_rope_forward(rows, W, 1, W, kvl, dr, rt->cos_t + (size_t)pos[b] * half, rt->sin_t + (size_t)pos[b] * half,
                         1, n);
        ops_copy(kv + ((size_t)b * Tcap + pos[b]) * W, rows, (size_t)n * W);
    }
    ops_arena_release(scratch, mark);

    /* absorbed queries: q_abs_h = [q_nope_h·W_UK_h ; q_pe_h] (W_UK_h: rows h·(dn+dv).. of kv_b, [dn, kvl]) */
    float *qn = ops_arena_take(scratch, (size_t)N * (dn > kvl ? dn : kvl));  /* [N, dn] */
    float *ql_h = ops_arena_take(scratch, (size_t)N * (kvl > dv ? kvl : dv)); /* [N, kvl] */
    ops_zero(qabs, (size_t)N * nh * W);
    for (int h = 0; h < nh; h++) {
        const float *w_uk = l->kv_b.w + (size_t)h * (dn + dv) * kvl;
        ops_copy_cols(qn, dn, q, ldq, h * dqk, dn, N);
        ops_zero(ql_h, (size_t)N * kvl);
        ops_matmul_backward(ql_h, NULL, qn, NULL, w_uk, N, kvl, dn); /* ql_h[N,kvl] += qn[N,dn]·W_UK_h */
        ops_add_cols(qabs, nh * W, h * W, ql_h, kvl, kvl, N);
        ops_add_cols(qabs, nh * W, h * W + kvl, q + (size_t)h * dqk + dn, ldq, dr, N);
    }

    /* attention of each sequence over its cache rows 0..pos[b]+n-1 */
    for (int b = 0; b < B; b++)
        ops_latent_attention(olat + (size_t)b * n * nh * kvl, qabs + (size_t)b * n * nh * W, kv + (size_t)b * Tcap * W,
                             n, nh, W, kvl, pos[b], rope_softmax_scale(m));

    /* values: o_h = (Σ p·c)·W_UV_hᵀ (W_UV_h: rows h·(dn+dv)+dn.. of kv_b, [dv, kvl]) */
    ops_zero(o, (size_t)N * nh * dv);
    for (int h = 0; h < nh; h++) {
        const float *w_uv = l->kv_b.w + ((size_t)h * (dn + dv) + dn) * kvl;
        ops_copy_cols(qn, kvl, olat, nh * kvl, h * kvl, kvl, N);
        ops_matmul(ql_h, qn, w_uv, N, kvl, dv, 0.0f); /* [N, dv] */
        ops_add_cols(o, nh * dv, h * dv, ql_h, dv, dv, N);
    }
    linear_forward(&l->o, out, o, NULL, N, scratch);
    ops_arena_release(scratch, mark0);
}

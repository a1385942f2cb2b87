/* mla.c — Multi-head Latent Attention (dsv3-spec §3): forward and backward. */
#include "mla.h"

#include "../error.h"

#include <string.h>

#include "../ops.h"

/* scratch temporaries: taken from the arena (not zeroed), zeroed where the op accumulates */
static float *take(ops_arena *a, size_t n) { return ops_arena_take(a, n); }
static float *take0(ops_arena *a, size_t n) {
    float *p = ops_arena_take(a, n);
    ops_zero(p, n);
    return p;
}

static size_t max2(size_t a, size_t b) { return a > b ? a : b; }

size_t mla_scratch_floats(const deck_model *m, int lora_r, int lora_drop, int B, int T, int gemm) {
    const size_t N = (size_t)B * T, nh = m->num_attention_heads, dn = m->qk_nope_head_dim;
    const size_t dr = m->qk_rope_head_dim, dqk = dn + dr, dv = m->v_head_dim, ql = m->q_lora_rank;
    const size_t kvl = m->kv_lora_rank, kva = kvl + dr, kvbw = dn + dv;
    const int n = B * T;
#define RND(x) ops_arena_round(x)
    const int H = m->hidden_size, r = lora_r, dp = lora_drop;
    size_t Lqa = ql > 0 ? linear_scratch_floats(H, (int)ql, r, dp, n) : 0;
    size_t Lqb = ql > 0 ? linear_scratch_floats((int)ql, (int)(nh * dqk), r, dp, n) : 0;
    size_t Lq = ql > 0 ? 0 : linear_scratch_floats(H, (int)(nh * dqk), r, dp, n);
    size_t Lkva = linear_scratch_floats(H, (int)kva, r, dp, n);
    size_t Lkvb = linear_scratch_floats((int)kvl, (int)(nh * kvbw), r, dp, n);
    size_t Lo = linear_scratch_floats((int)(nh * dv), H, r, dp, n);
    size_t Af = ops_attention_scratch_floats(B, T, (int)nh, (int)dqk, (int)dv, 0, gemm);
    size_t Ab = ops_attention_scratch_floats(B, T, (int)nh, (int)dqk, (int)dv, 1, gemm);
    /* forward: q path; kv, then kv_a; kv, kvb, then kv_b; attention; o_proj */
    size_t fwd = max2(max2(Lqa, Lqb), max2(Lq, max2(Af, Lo)));
    fwd = max2(fwd, RND(N * kva) + max2(Lkva, RND(N * nh * kvbw) + Lkvb));
    /* backward: dq, dkv, dkvb live throughout; then one phase at a time (mla_backward) */
    size_t phase = RND(N * nh * dv) + max2(Lo, RND(N * nh * dqk) + RND(N * nh * dv) + Ab); /* d_o; dk, d_v, attention */
    phase = max2(phase, RND(N * kvl) + max2(Lkvb, RND(N * kvl)));                     /* dc; dc_raw */
    phase = max2(phase, Lkva);
    phase = max2(phase, ql > 0 ? RND(N * ql) + max2(Lqb, RND(N * ql) + Lqa) : Lq);   /* dcq; dcq_raw */
    size_t bwd = RND(N * nh * dqk) + RND(N * kva) + RND(N * nh * kvbw) + phase;
#undef RND
    return max2(fwd, bwd);
}

size_t mla_cache_floats(const deck_model *m, int lora_r_sum, int B, int T) {
    size_t N = (size_t)B * T;
    size_t nh = m->num_attention_heads, dqk = m->qk_nope_head_dim + m->qk_rope_head_dim;
    size_t dv = m->v_head_dim, ql = m->q_lora_rank, kvl = m->kv_lora_rank;
    size_t per_tok = (ql > 0 ? 2 * ql + 1 : 0)  /* cq_raw, cq, rstd_q */
                     + nh * dqk                 /* q */
                     + 2 * kvl + 1              /* c_raw, c, rstd_kv */
                     + nh * dqk + 2 * nh * dv   /* k, v, o */
                     + nh                       /* lse */
                     + (size_t)lora_r_sum;      /* LoRA caches */
    return N * per_tok;
}

static int mla_lora_sum(const deck_model *m, const mla_layer *l) { /* LoRA cache floats per token */
    size_t s = linear_cache_floats(&l->kv_a) + linear_cache_floats(&l->kv_b) + linear_cache_floats(&l->o);
    return (int)(s + (m->q_lora_rank > 0 ? linear_cache_floats(&l->q_a) + linear_cache_floats(&l->q_b)
                                         : linear_cache_floats(&l->q)));
}

size_t mla_cache_bind(mla_cache *c, const deck_model *m, const mla_layer *l, int B, int T, float *mem) {
    memset(c, 0, sizeof *c);
    size_t N = (size_t)B * T;
    size_t nh = m->num_attention_heads, dqk = m->qk_nope_head_dim + m->qk_rope_head_dim;
    size_t dv = m->v_head_dim, ql = m->q_lora_rank, kvl = m->kv_lora_rank;
    c->floats = mla_cache_floats(m, mla_lora_sum(m, l), B, T);
    c->buf = mem;
    c->B = B;
    c->T = T;
    float *p = c->buf;
#define TAKE(field, n) (c->field = p, p += (n))
    if (ql > 0) {
        TAKE(cq_raw, N * ql);
        TAKE(cq, N * ql);
        TAKE(rstd_q, N);
    }
    TAKE(q, N * nh * dqk);
    TAKE(c_raw, N * kvl);
    TAKE(c, N * kvl);
    TAKE(rstd_kv, N);
    TAKE(k, N * nh * dqk);
    TAKE(v, N * nh * dv);
    TAKE(o, N * nh * dv);
    TAKE(lse, N * nh);
    if (ql > 0) {
        if (l->q_a.r) TAKE(lc_q_a, N * linear_cache_floats(&l->q_a));
        if (l->q_b.r) TAKE(lc_q_b, N * linear_cache_floats(&l->q_b));
    } else if (l->q.r) {
        TAKE(lc_q, N * linear_cache_floats(&l->q));
    }
    if (l->kv_a.r) TAKE(lc_kv_a, N * linear_cache_floats(&l->kv_a));
    if (l->kv_b.r) TAKE(lc_kv_b, N * linear_cache_floats(&l->kv_b));
    if (l->o.r) TAKE(lc_o, N * linear_cache_floats(&l->o));
#undef TAKE
    DSV3_CHECK((size_t)(p - c->buf) == c->floats, "mla_cache_bind: layout %zu != mla_cache_floats %zu",
               (size_t)(p - c->buf), c->floats);
    return c->floats;
}

void mla_cache_alloc(mla_cache *c, const deck_model *m, const mla_layer *l, int B, int T) {
    size_t floats = mla_cache_floats(m, mla_lora_sum(m, l), B, T);
    float *buf = ops_alloc(floats * sizeof *buf);
    if (!buf) error_one("mla: out of memory for the attention cache (%zu floats)", floats);
    mla_cache_bind(c, m, l, B, T, buf);
    c->own = buf;
}

void mla_cache_free(mla_cache *c) {
    ops_free(c->own);
    memset(c, 0, sizeof *c);
}

void mla_forward(const deck_model *m, const mla_layer *l, const rope_table *rt, mla_cache *c, float *out,
                 const float *x, int B, int T, ops_arena *scratch) {
    const int N = B * T, nh = m->num_attention_heads, dn = m->qk_nope_head_dim, dr = m->qk_rope_head_dim;
    const int dqk = dn + dr, dv = m->v_head_dim, ql = m->q_lora_rank, kvl = m->kv_lora_rank;
    const int kva = kvl + dr, kvbw = dn + dv; /* kv_a / kv_b row widths */
    /* q_a_layernorm and kv_a_layernorm use the RMSNorm default 1e-6, not the config value (spec §2) */
    const float eps = 1e-6f;
    DSV3_CHECK(c->B == B && c->T == T && T <= rt->T,
               "mla_forward: cache is for B=%d T=%d, rope table T=%d, called with B=%d T=%d", c->B, c->T, rt->T, B, T);
    c->x = x;

    /* query path: q [N, nh, dqk] */
    if (ql > 0) {
        linear_forward(&l->q_a, c->cq_raw, x, c->lc_q_a, N, scratch);
        ops_rmsnorm_forward(c->cq, c->rstd_q, c->cq_raw, l->q_a_norm, N, ql, eps);
        linear_forward(&l->q_b, c->q, c->cq, c->lc_q_b, N, scratch);
    } else {
        linear_forward(&l->q, c->q, x, c->lc_q, N, scratch);
    }

    /* kv path: kv [N, kvl + dr] = [c | k_pe] */
    size_t mark = ops_arena_mark(scratch);
    float *kv = take(scratch, (size_t)N * kva);
    linear_forward(&l->kv_a, kv, x, c->lc_kv_a, N, scratch);
    ops_copy_cols(c->c_raw, kvl, kv, kva, 0, kvl, N);
    ops_rmsnorm_forward(c->c, c->rstd_kv, c->c_raw, l->kv_a_norm, N, kvl, eps);
    float *kvb = take(scratch, (size_t)N * nh * kvbw); /* [N, nh, dn+dv] */
    linear_forward(&l->kv_b, kvb, c->c, c->lc_kv_b, N, scratch);

    /* RoPE: q_pe of every head (in place in q), the shared k_pe (in place in kv) */
    ops_rope_forward(c->q, nh * dqk, nh, dqk, dn, dr, rt->cos_t, rt->sin_t, B, T);
    ops_rope_forward(kv, kva, 1, kva, kvl, dr, rt->cos_t, rt->sin_t, B, T);

    /* assembly: k_h = [k_nope_h ; k_pe], v_h */
    for (int h = 0; h < nh; h++) {
        ops_copy_cols(c->k + (size_t)h * dqk, nh * dqk, kvb, nh * kvbw, h * kvbw, dn, N);
        ops_copy_cols(c->k + (size_t)h * dqk + dn, nh * dqk, kv, kva, kvl, dr, N);
        ops_copy_cols(c->v + (size_t)h * dv, nh * dv, kvb, nh * kvbw, h * kvbw + dn, dv, N);
    }
    ops_arena_release(scratch, mark); /* kv, kvb */

    ops_attention_forward(c->o, c->lse, c->q, c->k, c->v, B, T, nh, dqk, dv, rope_softmax_scale(m), scratch);
    linear_forward(&l->o, out, c->o, c->lc_o, N, scratch);
}

void mla_backward(const deck_model *m, const mla_layer *l, const rope_table *rt, mla_cache *c, float *dx,
                  const float *dout, int B, int T, ops_arena *scratch) {
    const int N = B * T, nh = m->num_attention_heads, dn = m->qk_nope_head_dim, dr = m->qk_rope_head_dim;
    const int dqk = dn + dr, dv = m->v_head_dim, ql = m->q_lora_rank, kvl = m->kv_lora_rank;
    const int kva = kvl + dr, kvbw = dn + dv;
    DSV3_CHECK(c->B == B && c->T == T && c->x,
               "mla_backward: cache is for B=%d T=%d (forward run: %s), called with B=%d T=%d", c->B, c->T,
               c->x ? "yes" : "no", B, T);
    const float *x = c->x;
    /* arena layout (mla_scratch_floats): dq, dkv, dkvb live to the end; each phase's temporaries above them */
    size_t mark0 = ops_arena_mark(scratch);
    float *dq = take0(scratch, (size_t)N * nh * dqk);
    float *dkv = take0(scratch, (size_t)N * kva);            /* [N, kvl + dr] */
    float *dkvb = take0(scratch, (size_t)N * nh * kvbw);     /* [N, nh, dn+dv] */

    /* o_proj */
    size_t mark = ops_arena_mark(scratch);
    float *d_o = take0(scratch, (size_t)N * nh * dv);
    linear_backward(&l->o, d_o, dout, c->o, c->lc_o, N, scratch);

    /* attention */
    float *dk = take0(scratch, (size_t)N * nh * dqk);
    float *d_v = take0(scratch, (size_t)N * nh * dv);
    ops_attention_backward(dq, dk, d_v, d_o, c->q, c->k, c->v, c->lse, B, T, nh, dqk, dv, rope_softmax_scale(m),
                           scratch);

    /* disassembly: k_pe is shared by all heads, so its gradient sums over heads */
    for (int h = 0; h < nh; h++) {
        ops_add_cols(dkv, kva, kvl, dk + (size_t)h * dqk + dn, nh * dqk, dr, N);
        ops_add_cols(dkvb, nh * kvbw, h * kvbw, dk + (size_t)h * dqk, nh * dqk, dn, N);
        ops_add_cols(dkvb, nh * kvbw, h * kvbw + dn, d_v + (size_t)h * dv, nh * dv, dv, N);
    }
    ops_arena_release(scratch, mark); /* d_o, dk, d_v */
    ops_rope_backward(dkv, kva, 1, kva, kvl, dr, rt->cos_t, rt->sin_t, B, T);
    ops_rope_backward(dq, nh * dqk, nh, dqk, dn, dr, rt->cos_t, rt->sin_t, B, T);

    /* kv path */
    float *dc = take0(scratch, (size_t)N * kvl);
    linear_backward(&l->kv_b, dc, dkvb, c->c, c->lc_kv_b, N, scratch);
    float *dc_raw = take0(scratch, (size_t)N * kvl);
    ops_rmsnorm_backward(dc_raw, l->g_kv_a_norm, dc, c->c_raw, l->kv_a_norm, c->rstd_kv, N, kvl);
    ops_add_cols(dkv, kva, 0, dc_raw, kvl, kvl, N);
    ops_arena_release(scratch, mark); /* dc, dc_raw */
    linear_backward(&l->kv_a, dx, dkv, x, c->lc_kv_a, N, scratch);

    /* query path */
    if (ql > 0) {
        float *dcq = take0(scratch, (size_t)N * ql);
        linear_backward(&l->q_b, dcq, dq, c->cq, c->lc_q_b, N, scratch);
        float *dcq_raw = take0(scratch, (size_t)N * ql);
        ops_rmsnorm_backward(dcq_raw, l->g_q_a_norm, dcq, c->cq_raw, l->q_a_norm, c->rstd_q, N, ql);
        linear_backward(&l->q_a, dx, dcq_raw, x, c->lc_q_a, N, scratch);
    } else {
        linear_backward(&l->q, dx, dq, x, c->lc_q, N, scratch);
    }
    ops_arena_release(scratch, mark0);
}

/* model.c — DeepSeek-V3 assembled: embedding, decoder blocks, final norm,
 * lm_head, MTP modules; forward and backward over one micro-batch.
 *
 * Tokens of a micro-batch are flattened to N = B*T rows; attention and the
 * balance loss see the B sequences. Every block keeps what its backward needs
 * (or only its input, with activation checkpointing, and recomputes).
 *
 * Memory (design §4, llm.c style): all activations, their backward scratch
 * and the components' scratch arena are carved from ONE device allocation,
 * the activation buffer, laid out once by acts_create for the micro-batch
 * shape from the sizes cost.c computes (cost_act_bytes is exactly what is
 * allocated):
 *   base region   the scratch arena (cost_scratch_floats), every block's
 *                 input and norms (with activation checkpointing the main
 *                 blocks' norms are one shared set, valid like their caches
 *                 below), the MTP blocks' extras, final norm, head, logits
 *                 (a training step writes dlogits over them) and backward
 *                 scratch (cost_base_act_bytes). With act_bf16 (train.dtype
 *                 "bf16") the residual stream is rounded to bf16 where it
 *                 enters a main block, and the block keeps that input in bf16
 *                 (exact), widening it into one shared fp32 copy for its
 *                 recompute and backward: the gradient passes the rounding
 *                 unchanged, as a bf16 cast's does
 *   cache region  the component caches (MLA + MLP or MoE) of every block, one
 *                 slot each (cost_block_cache_bytes). With activation
 *                 checkpointing all main blocks share one slot at the region
 *                 start and the MTP blocks' slots are laid out from the region
 *                 start too (cost_cache_region_bytes): a main block's cache is
 *                 valid only from its (re)computation to its backward, which
 *                 follows at once; the MTP caches from the MTP forward (after
 *                 every main forward) to the MTP backward (before any main
 *                 recompute). block->cached says "holds this micro-batch's
 *                 values", not "allocated".
 * The micro-batch's token ids and targets, and every MTP depth's shifted
 * ones (mtp_shift), are int32 in 4-byte slots of the base region (device
 * memory: the embedding and cross-entropy ops read them), written by one
 * ops_to_device per micro-batch from a host staging copy of the same size
 * (ids_stage, counted with the host counts: cost_host_act_bytes).
 * The MoE layers' host counts are one small host allocation each
 * (moe_cache_host_create); rows beyond a MoE layer's planned capacity are
 * the one allocation on the step path (moe_rows_reserve, exceptional).
 * A forward/backward allocates nothing; a new micro-batch shape re-creates
 * the buffer (model_reshape, between steps: never inside one).
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../comm.h"
#include "../error.h"
#include "../ops.h"
#include "../plan.h"
#include "../zero.h"
#include "cost.h"
#include "linear.h"
#include "lora.h"
#include "mla.h"
#include "mla_decode.h"
#include "mlp.h"
#include "moe.h"
#include "mtp.h"
#include "rope.h"

typedef struct {
    int layer;                        /* HF layer number */
    int is_moe, is_mtp;
    float *in_norm, *g_in_norm;       /* [H] input_layernorm */
    float *post_norm, *g_post_norm;   /* [H] post_attention_layernorm */
    mla_layer attn;
    mlp_layer mlp;
    moe_layer moe;
    int moe_slot;                     /* index into the model's MoE slots, -1 dense */
    mtp_layer mtp;                    /* MTP blocks only (spec §6): enorm, hnorm, eh_proj, shared_head.norm */
    /* saved activations */
    mla_cache ac;
    mlp_cache mc;
    moe_cache ec;
    int cached;                       /* the component caches hold this micro-batch's values */
    float *x_in;                      /* [N,H] block input (act_bf16 main blocks: the shared fp32 copy) */
    uint16_t *x_in16;                 /* [N,H] act_bf16 main blocks: the input as kept, bf16; else NULL */
    float *xn1, *rstd1;               /* [N,H], [N] after input_layernorm */
    float *x_mid;                     /* [N,H] residual after attention */
    float *xn2, *rstd2;               /* [N,H], [N] after post_attention_layernorm */
    float *x_out;                     /* [N,H] block output (MTP: feeds the next depth and the head) */
    mtp_cache tc;                     /* MTP saved activations */
} block;

struct model {
    model_opts o;                     /* config, LoRA settings, seq_len, checkpointing */
    const deck_model *cfg;
    const plan *p;                    /* NULL: one rank, no ZeRO */
    param_table pt;
    zero_state z;                     /* parameters, gradients and their ZeRO stage (zero.h) */
    int ep, ep_first, ep_local;       /* EP size, routed experts held */
    comm_t ep_comm;
    float *embed, *g_embed;           /* [V,H] (NULL when stored: embed_W) */
    ops_weight embed_W;               /* [V,H] storage: F32 over embed, or bf16 in the frozen store */
    int skip_stored_init;             /* model_skip_stored_init */
    float *final_norm, *g_final_norm; /* [H] */
    linear lm_head;                   /* [V,H] */
    int nblocks;                      /* L + D */
    block *blk;
    int n_moe;
    int *moe_block;                   /* [n_moe] block index */
    int64_t *counts;                  /* [n_moe, E] host: tokens routed per expert */
    int64_t *count_scratch;           /* [E] host: counts of a recompute (discarded) */
    float *e_scratch;                 /* [E] a router-bias update under ZeRO-3 */
    rope_table rope;
    int B, T, N;                      /* shape the activation buffer is laid out for (N = 0: none) */
    float *acts;                      /* the activation buffer (ops_alloc), act_floats floats */
    size_t act_floats;
    float *x_final, *rstd_final, *h_final; /* [N,H], [N], [N,H] */
    float *logits;                    /* [N,V]; a training step overwrites them with dlogits */
    float *dx, *tmp, *dh_final;       /* [N,H] backward scratch */
    float *recomp;                    /* [N,H] output of a recomputed block (discarded) */
    float *dcat, *de, *dh_mtp;        /* [N,2H], [N,H], [N,H] MTP backward scratch (D > 0) */
    int32_t *ids;                     /* [(2+2D), N] device: tokens, targets, then per MTP depth e_ids, targets */
    int32_t *ids_stage;               /* [(2+2D), N] host: what batch_to_device copies into ids */
    int checkpointing;
    ops_arena scratch;                /* components' temporaries: the buffer's first cost_scratch_floats floats */
    lora_dropout_ctx drop;            /* the micro-batch's LoRA dropout stream (every adapter points here) */
    int lora_merged;                  /* model_merge_lora ran: the linears carry no adapters any more */
};

/* The latent KV cache of generation (model_kv_create, mla_decode.h). */
struct model_kv {
    int B, T, W, L;                   /* sequences, positions, floats per row, layers */
    float *buf;                       /* [L, B, T, W] */
    ops_arena scratch;                /* mla_decode's temporaries for up to max_rows new tokens per call */
    int max_rows;
};

/* ---------- binding tensors by HF name ---------- */

static float *bind(model *m, const char *name, float **g, int required) {
    int i = params_find(&m->pt, name);
    if (i < 0) {
        DSV3_CHECK(!required, "internal error: tensor %s missing from the table", name);
        if (g) *g = NULL;
        return NULL;
    }
    const param_spec *s = &m->pt.t[i];
    if (s->flags & P_STORED) { /* in the frozen store: stored_weight() */
        if (g) *g = NULL;
        return NULL;
    }
    if (g) *g = (s->flags & (P_FROZEN | P_NOGRAD)) || !m->z.gg[s->group] ? NULL : m->z.gg[s->group] + zero_grad_offset(&m->z, i);
    return zero_param_f32(&m->z, i); /* NULL for a bf16 working weight (w16): stored_weight() */
}

/* The storage of tensor i: a P_STORED tensor's view of the frozen store
 * (stacked experts: expert 0's [out, in], ops_weight_expert for the others),
 * else F32 over `w`. */
static ops_weight stored_weight(const model *m, int i, float *w) {
    const param_spec *s = &m->pt.t[i];
    int out = (int)s->shape[s->ndim - 2], in = (int)s->shape[s->ndim - 1];
    if (m->z.w16 && params_copied(s)) return (ops_weight){OPS_BF16, zero_param_bf16(&m->z, i), NULL, out, in};
    if (!(s->flags & P_STORED)) return (ops_weight){OPS_F32, w, NULL, out, in};
    uint8_t *base = m->z.frozen + s->soff;
    return (ops_weight){(ops_dtype)s->dtype, base, s->dtype == OPS_FP8_E4M3 ? (const float *)(void *)(base + s->sscale) : NULL,
                        out, in};
}

static void bind_linear(model *m, linear *l, int layer, const char *module, int in, int out) {
    char name[160];
    memset(l, 0, sizeof *l);
    l->in = in;
    l->out = out;
    if (layer >= 0)
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, module);
    else
        snprintf(name, sizeof name, "%s.weight", module);
    l->w = bind(m, name, &l->g, 1);
    l->W = stored_weight(m, params_find(&m->pt, name), l->w);
    if (layer < 0 || m->lora_merged) return;
    snprintf(name, sizeof name, "model.layers.%d.%s.lora_A.weight", layer, module);
    l->A = bind(m, name, &l->gA, 0);
    if (params_find(&m->pt, name) >= 0) {
        snprintf(name, sizeof name, "model.layers.%d.%s.lora_B.weight", layer, module);
        l->B = bind(m, name, &l->gB, 1);
        l->r = m->o.lora->r;
        l->scaling = lora_scaling(m->o.lora);
        l->dropout = (float)m->o.lora->dropout;
        l->key = (uint32_t)layer * 32u + (uint32_t)lora_module_index(module); /* < 2^24: (step << 24) ^ key */
        l->drop = &m->drop;
    }
}

static float *bind_norm(model *m, int layer, const char *what, float **g) {
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, what);
    return bind(m, name, g, 1);
}

static void bind_block(model *m, block *b) {
    const deck_model *c = m->cfg;
    int L = b->layer, H = c->hidden_size, nh = c->num_attention_heads;
    int qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    b->in_norm = bind_norm(m, L, "input_layernorm", &b->g_in_norm);
    b->post_norm = bind_norm(m, L, "post_attention_layernorm", &b->g_post_norm);
    mla_layer *a = &b->attn;
    memset(a, 0, sizeof *a);
    if (c->q_lora_rank > 0) {
        bind_linear(m, &a->q_a, L, "self_attn.q_a_proj", H, c->q_lora_rank);
        a->q_a_norm = bind_norm(m, L, "self_attn.q_a_layernorm", &a->g_q_a_norm);
        bind_linear(m, &a->q_b, L, "self_attn.q_b_proj", c->q_lora_rank, nh * qk);
    } else {
        bind_linear(m, &a->q, L, "self_attn.q_proj", H, nh * qk);
    }
    bind_linear(m, &a->kv_a, L, "self_attn.kv_a_proj_with_mqa", H, c->kv_lora_rank + c->qk_rope_head_dim);
    a->kv_a_norm = bind_norm(m, L, "self_attn.kv_a_layernorm", &a->g_kv_a_norm);
    bind_linear(m, &a->kv_b, L, "self_attn.kv_b_proj", c->kv_lora_rank,
                nh * (c->qk_nope_head_dim + c->v_head_dim));
    bind_linear(m, &a->o, L, "self_attn.o_proj", nh * c->v_head_dim, H);
    if (!b->is_moe) {
        bind_linear(m, &b->mlp.gate, L, "mlp.gate_proj", H, c->intermediate_size);
        bind_linear(m, &b->mlp.up, L, "mlp.up_proj", H, c->intermediate_size);
        bind_linear(m, &b->mlp.down, L, "mlp.down_proj", c->intermediate_size, H);
    } else {
        moe_layer *e = &b->moe;
        char name[160];
        memset(e, 0, sizeof *e);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", L);
        e->gate_w = bind(m, name, &e->gate_g, 1);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", L);
        e->bias = bind(m, name, NULL, 1);
        int Is = c->moe_intermediate_size * c->n_shared_experts;
        e->has_shared = c->n_shared_experts > 0;
        if (e->has_shared) {
            bind_linear(m, &e->sh_gate, L, "mlp.shared_experts.gate_proj", H, Is);
            bind_linear(m, &e->sh_up, L, "mlp.shared_experts.up_proj", H, Is);
            bind_linear(m, &e->sh_down, L, "mlp.shared_experts.down_proj", Is, H);
        }
        static const char *const ex[3] = {"gate_proj", "up_proj", "down_proj"};
        float **ew[3] = {&e->eg, &e->eu, &e->ed}, **eg[3] = {&e->geg, &e->geu, &e->ged};
        for (int j = 0; j < 3; j++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s.weight", L, ex[j]);
            *ew[j] = bind(m, name, eg[j], 1);
            e->eW[j] = stored_weight(m, params_find(&m->pt, name), *ew[j]);
        }
        for (int j = 0; j < 3 && !m->lora_merged; j++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s.lora_A.weight", L, ex[j]);
            if (params_find(&m->pt, name) < 0) continue;
            e->eA[j] = bind(m, name, &e->geA[j], 1);
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s.lora_B.weight", L, ex[j]);
            e->eB[j] = bind(m, name, &e->geB[j], 1);
            e->er[j] = m->o.lora->r;
            e->escaling = lora_scaling(m->o.lora);
        }
        e->e_first = m->ep_first;
        e->e_local = m->ep_local;
        e->wire = m->o.wire;
        e->overlap = m->o.moe_overlap;
    }
    if (b->is_mtp) {
        mtp_layer *t = &b->mtp;
        t->enorm = bind_norm(m, L, "enorm", &t->g_enorm);
        t->hnorm = bind_norm(m, L, "hnorm", &t->g_hnorm);
        t->head_norm = bind_norm(m, L, "shared_head.norm", &t->g_head_norm);
        bind_linear(m, &t->eh_proj, L, "eh_proj", 2 * H, H);
    }
}

/* Points the components of group g at its open workspaces. */
static void rebind(model *m, int g) {
    int L = m->cfg->num_hidden_layers, D = m->cfg->num_nextn_predict_layers;
    if (g == 0) {
        m->embed = bind(m, "model.embed_tokens.weight", &m->g_embed, 1);
        m->embed_W = stored_weight(m, params_find(&m->pt, "model.embed_tokens.weight"), m->embed);
    } else if (g == L + D + 1) {
        m->final_norm = bind(m, "model.norm.weight", &m->g_final_norm, 1);
        m->lm_head.w = bind(m, "lm_head.weight", &m->lm_head.g, 1);
        m->lm_head.W = stored_weight(m, params_find(&m->pt, "lm_head.weight"), m->lm_head.w); /* F32, or bf16 stored */
    } else {
        bind_block(m, &m->blk[g - 1]);
    }
}

/* ---------- ZeRO-3 gathers and ZeRO-2/3 flushes (zero.c), then rebinding ---------- */

static void open_params(model *m, int g) {
    if (zero_open_params(&m->z, g)) rebind(m, g);
}
static void close_params(model *m, int g) { zero_close_params(&m->z, g); }
static void open_grads(model *m, int g) {
    if (zero_open_grads(&m->z, g)) rebind(m, g);
}
static void flush_grads(model *m, int g) {
    if (zero_flush_grads(&m->z, g)) rebind(m, g);
}

/* ---------- the activation buffer (see the top of the file) ---------- */

static size_t block_cache_floats(const model *m, int i, int B, int T) {
    return (size_t)(cost_block_cache_bytes(&m->o, i, m->ep, m->ep_local, B, T) / 4.0);
}

static void acts_destroy(model *m) {
    for (int i = 0; m->blk && i < m->nblocks; i++) {
        block *b = &m->blk[i];
        mla_cache_free(&b->ac); /* bound: frees nothing */
        mlp_cache_free(&b->mc); /* bound: frees nothing */
        moe_cache_free(&b->ec); /* its host counts, and rows grown past the plan */
        b->cached = 0;
        b->x_in = b->xn1 = b->rstd1 = b->x_mid = b->xn2 = b->rstd2 = b->x_out = NULL;
        b->x_in16 = NULL;
        memset(&b->tc, 0, sizeof b->tc);
    }
    ops_arena_destroy(&m->scratch); /* wraps the buffer: frees nothing */
    ops_host_free(m->ids_stage);
    m->ids_stage = NULL;
    m->ids = NULL;
    ops_free(m->acts);
    m->acts = NULL;
    m->act_floats = 0;
    m->x_final = m->rstd_final = m->h_final = m->logits = m->dx = m->tmp = m->dh_final = NULL;
    m->recomp = m->dcat = m->de = m->dh_mtp = NULL;
    m->B = m->T = m->N = 0;
}

/* Allocates the activation buffer for B×T tokens and carves it (layout at the
 * top of the file); 0, or -1 when out of memory (nothing left allocated). */
static int acts_alloc(model *m, int B, int T) {
    const deck_model *c = m->cfg;
    size_t N = (size_t)B * T, H = c->hidden_size, V = c->vocab_size;
    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    size_t sf = cost_scratch_floats(&m->o, B, T);
    size_t base = (size_t)(cost_base_act_bytes(&m->o, B, T) / 4.0);
    size_t region = (size_t)(cost_cache_region_bytes(&m->o, m->ep, m->ep_local, B, T) / 4.0);
    m->acts = ops_alloc((base + region) * sizeof(float));
    m->ids_stage = ops_host_alloc((2 + 2 * (size_t)D) * N * sizeof(int32_t));
    if (!m->acts || !m->ids_stage) {
        ops_free(m->acts), ops_host_free(m->ids_stage);
        m->acts = NULL, m->ids_stage = NULL;
        return -1;
    }
    m->act_floats = base + region;
    m->B = B, m->T = T, m->N = (int)N;
    /* base region */
    float *p = m->acts;
#define TAKE(ptr, n) ((ptr) = p, p += (n))
#define TAKE_I32(ptr, n) ((ptr) = (int32_t *)(void *)p, p += (n)) /* int32 in 4-byte slots */
    ops_arena_init_at(&m->scratch, p, sf);
    p += sf;
    TAKE_I32(m->ids, (2 + 2 * (size_t)D) * N);
    /* shared by the main blocks (cost_base_act_bytes): with checkpointing one set of norms, with act_bf16 the
     * fp32 copy of the input a block widens for its recompute and backward */
    float *norms = NULL, *x_in32 = NULL;
    int bf = m->o.act_bf16;
    if (m->checkpointing && L > 0) TAKE(norms, 3 * N * H + 2 * N);
    if (bf && L > 0) TAKE(x_in32, N * H);
    for (int i = 0; i < m->nblocks; i++) {
        block *b = &m->blk[i];
        if (bf && !b->is_mtp) {
            b->x_in = x_in32;
            b->x_in16 = (uint16_t *)(void *)p, p += (N * H + 1) / 2; /* bf16 in float slots */
        } else {
            TAKE(b->x_in, N * H);
        }
        float *q = p; /* this block's norms: its own, or the shared set */
        if (m->checkpointing && !b->is_mtp) q = norms;
        b->xn1 = q, b->rstd1 = q + N * H, b->x_mid = b->rstd1 + N, b->xn2 = b->x_mid + N * H, b->rstd2 = b->xn2 + N * H;
        if (q == p) p += 3 * N * H + 2 * N;
        if (b->is_mtp) {
            mtp_cache *t = &b->tc;
            TAKE(b->x_out, N * H);
            t->e_ids = m->ids + (size_t)(2 * (i - L) + 2) * N, t->targets = t->e_ids + N; /* depth i-L+1 */
            TAKE(t->e, N * H), TAKE(t->en, N * H), TAKE(t->e_rstd, N);
            TAKE(t->hn, N * H), TAKE(t->h_rstd, N), TAKE(t->cat, N * 2 * H);
            TAKE(t->eh_cache, N * (linear_cache_floats(&b->mtp.eh_proj) + 1));
            TAKE(t->z, N * H), TAKE(t->z_rstd, N);
        }
    }
    TAKE(m->x_final, N * H), TAKE(m->rstd_final, N), TAKE(m->h_final, N * H);
    TAKE(m->logits, N * V); /* the fused cross-entropy writes dlogits over it */
    TAKE(m->dx, N * H), TAKE(m->tmp, N * H), TAKE(m->dh_final, N * H), TAKE(m->recomp, N * H);
    if (m->nblocks > L) TAKE(m->dcat, N * 2 * H), TAKE(m->de, N * H), TAKE(m->dh_mtp, N * H);
#undef TAKE
#undef TAKE_I32
    DSV3_CHECK((size_t)(p - m->acts) == base, "acts_create: base layout %zu != cost_base_act_bytes %zu floats",
               (size_t)(p - m->acts), base);
    /* cache region: a slot per block, or (checkpointing) one shared main slot and the MTP slots, both from the start */
    float *r0 = m->acts + base;
    size_t run = 0, run_mtp = 0, end = 0, host = 0;
    for (int i = 0; i < m->nblocks; i++) {
        block *b = &m->blk[i];
        size_t want = block_cache_floats(m, i, B, T), at;
        if (!m->checkpointing)
            at = run, run += want;
        else if (b->is_mtp)
            at = run_mtp, run_mtp += want;
        else
            at = 0;
        float *slot = r0 + at;
        size_t got = mla_cache_bind(&b->ac, c, &b->attn, B, T, slot);
        if (b->is_moe) {
            if (moe_cache_host_create(&b->ec, c, &b->moe, m->ep)) {
                acts_destroy(m);
                return -1;
            }
            host += moe_cache_host_ints(c->n_routed_experts, b->moe.e_local, m->ep, b->moe.overlap ? 2 : 1) * sizeof(int);
            got += moe_cache_bind(&b->ec, c, &b->moe, m->ep, (int)N, cost_moe_row_cap(c, (int)N, m->ep, m->ep_local), slot + got);
        } else {
            got += mlp_cache_bind(&b->mc, &b->mlp, (int)N, slot + got);
        }
        DSV3_CHECK(got == want, "acts_create: block %d caches %zu floats != cost_block_cache_bytes %zu", i, got, want);
        if (at + got > end) end = at + got;
        b->cached = 0;
    }
    DSV3_CHECK(end == region, "acts_create: cache region %zu != cost_cache_region_bytes %zu floats", end, region);
    host += (2 + 2 * (size_t)D) * N * sizeof(int32_t); /* ids_stage */
    double bytes = (double)m->act_floats * sizeof(float) + (double)host;
    DSV3_CHECK(bytes == cost_act_bytes(&m->o, m->ep, m->ep_local, B, T), "acts_create: %.0f bytes != cost_act_bytes %.0f", bytes,
               cost_act_bytes(&m->o, m->ep, m->ep_local, B, T));
    return 0;
}

static int acts_create(model *m, int B, int T) { /* charged to the activations (ops_mem_category) */
    int cat = ops_mem_category(OPS_MEM_ACTS);
    int rc = acts_alloc(m, B, T);
    ops_mem_category(cat);
    return rc;
}

/* ---------- creation ---------- */

int model_create(model **out, const model_opts *o, const struct plan *p, char *err, int errlen) {
    model *m = ops_host_alloc(sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory for the model");
        return -1;
    }
    const deck_model *c = o->cfg;
    m->o = *o;
    m->cfg = c;
    ops_gemm_set(params_gemm_dtype(o->lora)); /* train.gemm_dtype: the frozen store's GEMMs (ops.h ops_gemm) */
    int ep = p ? p->ep : 1, e_local = p ? p->experts_per_rank : c->n_routed_experts;
    if (params_build_owned(&m->pt, o->cfg, o->lora, ep, e_local, err, errlen)) {
        ops_host_free(m);
        return -1;
    }
    m->ep = ep;
    m->ep_local = e_local; /* uneven ownership: E/ep + 1 on the first E % ep ranks */
    m->ep_first = p ? p->expert_first : 0;
    m->ep_comm = p ? p->expert : COMM_SELF;
    m->checkpointing = o->checkpointing;
    m->p = p;
    if (zero_create(&m->z, &m->pt, p, o->act_bf16, err, errlen)) {
        model_free(m);
        return -1;
    }
    int G = m->pt.n_groups;
    int H = c->hidden_size;
    memset(&m->lm_head, 0, sizeof m->lm_head);
    m->lm_head.in = H;
    m->lm_head.out = c->vocab_size;

    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    m->nblocks = L + D;
    m->blk = ops_host_alloc((size_t)m->nblocks * sizeof *m->blk);
    m->moe_block = ops_host_alloc((size_t)m->nblocks * sizeof *m->moe_block);
    for (int i = 0; m->blk && m->moe_block && i < m->nblocks; i++) {
        block *b = &m->blk[i];
        b->layer = i;
        b->is_mtp = i >= L;
        b->is_moe = b->is_mtp || i >= c->first_k_dense_replace;
        b->moe_slot = b->is_moe ? m->n_moe : -1;
        if (b->is_moe) m->moe_block[m->n_moe++] = i;
    }
    for (int g = 0; m->blk && g < G; g++) rebind(m, g);
    m->counts = ops_host_alloc((size_t)(m->n_moe ? m->n_moe : 1) * c->n_routed_experts * sizeof *m->counts);
    m->count_scratch = ops_host_alloc((size_t)c->n_routed_experts * sizeof *m->count_scratch);
    m->e_scratch = ops_alloc((size_t)c->n_routed_experts * sizeof *m->e_scratch); /* device: ops write it */
    if (!m->blk || !m->moe_block || !m->counts || !m->count_scratch || !m->e_scratch) {
        snprintf(err, errlen, "out of memory for the model's block table");
        model_free(m);
        return -1;
    }
    if (rope_table_build(&m->rope, c, o->seq_len)) {
        snprintf(err, errlen, "cannot build the RoPE table for seq_len %d", o->seq_len);
        model_free(m);
        return -1;
    }
    if (o->micro_batch > 0 && o->seq_len > 0 && acts_create(m, o->micro_batch, o->seq_len)) {
        snprintf(err, errlen, "out of memory for the activations (%.1f MiB)",
                 cost_act_bytes(o, m->ep, m->ep_local, o->micro_batch, o->seq_len) / 1048576.0);
        model_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void model_free(model *m) {
    if (!m) return;
    acts_destroy(m);
    rope_table_free(&m->rope);
    ops_host_free(m->blk);
    ops_host_free(m->moe_block);
    ops_host_free(m->counts), ops_host_free(m->count_scratch), ops_free(m->e_scratch);
    zero_destroy(&m->z);
    params_free(&m->pt);
    ops_host_free(m);
}

int model_reshape(model *m, int B, int T, char *err, int errlen) {
    if (m->N && m->N == B * T && m->B == B) return 0;
    acts_destroy(m);
    if (acts_create(m, B, T)) {
        snprintf(err, errlen, "out of memory for the activations of a %dx%d micro-batch (%.1f MiB)", B, T,
                 cost_act_bytes(&m->o, m->ep, m->ep_local, B, T) / 1048576.0);
        return -1;
    }
    return 0;
}

/* ---------- one decoder block ---------- */

/* x: [N,H] block input, out: [N,H]. Saves x_in, norms and component caches. */
static void block_forward(model *m, block *b, float *out, const float *x, int recompute, double *bal,
                          float bal_scale) {
    const deck_model *c = m->cfg;
    int B = m->B, T = m->T, N = m->N, H = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    if (x != b->x_in) ops_copy(b->x_in, x, (size_t)N * H);
    ops_rmsnorm_forward(b->xn1, b->rstd1, b->x_in, b->in_norm, N, H, eps);
    mla_forward(c, &b->attn, &m->rope, &b->ac, m->tmp, b->xn1, B, T, &m->scratch); /* tmp = attn(xn1) */
    ops_copy(b->x_mid, b->x_in, (size_t)N * H);
    ops_add(b->x_mid, m->tmp, (size_t)N * H);                              /* x_mid = x + attn */
    ops_rmsnorm_forward(b->xn2, b->rstd2, b->x_mid, b->post_norm, N, H, eps);
    if (b->is_moe) {
        /* a recompute must not count tokens twice: its counts go to scratch */
        int64_t *cnt = recompute ? m->count_scratch : m->counts + (size_t)b->moe_slot * c->n_routed_experts;
        double bl = 0.0;
        moe_forward(c, &b->moe, &b->ec, m->ep_comm, m->tmp, b->xn2, B, T, cnt, &bl, bal_scale, &m->scratch);
        if (!recompute && bal) *bal += bl;
    } else {
        mlp_forward(&b->mlp, &b->mc, m->tmp, b->xn2, N, &m->scratch);
    }
    ops_copy(out, b->x_mid, (size_t)N * H);
    ops_add(out, m->tmp, (size_t)N * H);                                   /* out = x_mid + ffn */
    b->cached = 1;
}

/* dx: [N,H] in: gradient w.r.t. the block output; out: w.r.t. the block input. */
static void block_backward(model *m, block *b, float *dx) {
    const deck_model *c = m->cfg;
    int B = m->B, T = m->T, N = m->N, H = c->hidden_size;
    float *t = m->tmp;
    ops_zero(t, (size_t)N * H);
    if (b->is_moe)
        moe_backward(c, &b->moe, &b->ec, m->ep_comm, t, dx, &m->scratch);
    else
        mlp_backward(&b->mlp, &b->mc, t, dx, N, &m->scratch);
    ops_rmsnorm_backward(dx, b->g_post_norm, t, b->x_mid, b->post_norm, b->rstd2, N, H); /* dx = d x_mid */
    ops_zero(t, (size_t)N * H);
    mla_backward(c, &b->attn, &m->rope, &b->ac, t, dx, B, T, &m->scratch);
    ops_rmsnorm_backward(dx, b->g_in_norm, t, b->x_in, b->in_norm, b->rstd1, N, H);      /* dx = d x_in */
}

/* The block's cache slot may be overwritten from here on (checkpointing: shared slots). */
static void block_invalidate(block *b) { b->cached = 0; }

/* ---------- the whole model ---------- */

/* The micro-batch's ids to the device slots: tokens, targets, then each MTP
 * depth's shifted ids and targets, staged on the host, one copy. */
static void batch_to_device(model *m, const int32_t *tokens, const int32_t *targets, int B, int T) {
    size_t N = (size_t)B * T;
    int D = m->cfg->num_nextn_predict_layers;
    int32_t *h = m->ids_stage;
    memcpy(h, tokens, N * sizeof *h);
    memcpy(h + N, targets, N * sizeof *h);
    for (int k = 1; k <= D; k++) mtp_shift(h + (2 * k) * N, h + (2 * k + 1) * N, tokens, targets, B, T, k);
    ops_to_device(m->ids, h, (2 + 2 * (size_t)D) * N * sizeof *h);
}

void model_step(model *m, const model_batch *bt, model_scales sc, int backward, model_sums *sums) {
    const deck_model *c = m->cfg;
    int B = bt->B, T = bt->T, H = c->hidden_size, V = c->vocab_size;
    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    DSV3_CHECK(m->N == B * T && m->B == B, "model_step: a %dx%d micro-batch, activations laid out for %dx%d "
               "(model_reshape first)", B, T, m->B, m->T);
    int N = m->N;
    float eps = (float)c->rms_norm_eps;
    double bal = 0.0;
    m->drop = (lora_dropout_ctx){bt->dropout, bt->seed, (uint64_t)bt->step, (uint64_t)bt->sample0 * (uint64_t)T};
    batch_to_device(m, bt->tokens, bt->targets, B, T);
    const int32_t *tokens = m->ids, *targets = m->ids + N; /* device */

    /* forward: embedding → blocks → final norm → head */
    int G = L + D + 1; /* group of the final norm and lm_head */
    float *x = m->x_final; /* residual stream, ends as the last block's output */
    open_params(m, 0);
    ops_embedding_forward_w(x, &m->embed_W, tokens, N);
    for (int l = 0; l < L; l++) {
        block *b = &m->blk[l];
        open_params(m, l + 1);
        if (b->x_in16) ops_round_bf16(x, b->x_in16, (size_t)N * H); /* act_bf16: the stream is bf16 here, kept so */
        block_forward(m, b, x, x, 0, &bal, sc.bal);
        close_params(m, l + 1);
        if (m->checkpointing) block_invalidate(b); /* the next main block reuses the slot */
    }
    open_params(m, G);
    ops_rmsnorm_forward(m->h_final, m->rstd_final, x, m->final_norm, N, H, eps);
    linear_forward(&m->lm_head, m->logits, m->h_final, NULL, N, &m->scratch);
    if (backward) {
        /* llm.c's fused classifier: loss and dlogits in one pass, dlogits over the logits, and the head's
         * backward at once (dh_final = dlogits·W_head; the MTP depths add theirs later), so one [N,V]
         * buffer serves the main head and every MTP head */
        sums->lm_sum += ops_cross_entropy_fused(m->logits, &sums->lm_count, m->logits, targets, N, V, sc.lm);
        open_grads(m, G);
        ops_zero(m->dh_final, (size_t)N * H);
        linear_backward(&m->lm_head, m->dh_final, m->logits, m->h_final, NULL, N, &m->scratch);
    } else {
        sums->lm_sum += ops_cross_entropy_forward(NULL, &sums->lm_count, m->logits, targets, N, V);
    }

    /* MTP depths k = 1..D (mtp.c): predict tokens[i+k+1] from the block over eh_proj([enorm(E[tokens[i+k]]); hnorm(h^{k-1}_i)]) */
    const float *hprev = m->h_final;
    for (int k = 1; k <= D; k++) {
        block *b = &m->blk[L + k - 1];
        open_params(m, L + k);
        mtp_input_forward(&b->mtp, &b->tc, m->embed, hprev, b->x_out, N, H, V, eps, &m->scratch);
        block_forward(m, b, b->x_out, b->x_out, 0, &bal, sc.bal);
        /* logits reused: the main ones are consumed */
        sums->mtp_sum[k - 1] += mtp_head_forward(&b->mtp, &b->tc, &m->lm_head, b->x_out, m->logits, N, H, V, eps,
                                                 &m->scratch);
        close_params(m, L + k);
        hprev = b->x_out;
    }
    sums->bal_sum += bal;
    if (!backward) {
        if (D > 0) linear_forward(&m->lm_head, m->logits, m->h_final, NULL, N, &m->scratch); /* restore main logits */
        close_params(m, G);
        close_params(m, 0);
        return;
    }
    open_grads(m, 0);

    /* backward of the MTP depths, last first; dh flows into h^{k-1} (depth 1: into dh_final, which holds the
     * main head's part) */
    for (int k = D; k >= 1; k--) {
        block *b = &m->blk[L + k - 1];
        float *dx = m->dx;
        ops_zero(dx, (size_t)N * H);
        if (k < D) ops_add(dx, m->dh_mtp, (size_t)N * H); /* d x_out of depth k from depth k+1 */
        open_params(m, L + k);
        open_grads(m, L + k);
        /* this depth's dlogits go through m->logits */
        mtp_head_backward(&b->mtp, &b->tc, &m->lm_head, b->x_out, m->logits, m->tmp, dx, sc.mtp[k - 1], N, H, V,
                          &m->scratch);
        if (!b->cached) { /* activation checkpointing: recompute the block from its input */
            mtp_input_recompute(&b->mtp, &b->tc, b->x_in, N, &m->scratch);
            block_forward(m, b, m->recomp, b->x_in, 1, NULL, sc.bal);
        }
        block_backward(m, b, dx); /* dx = d eh_proj output */
        /* d h^{k-1}: into the previous depth's output, or the main model's final hidden */
        const float *hp = k == 1 ? m->h_final : m->blk[L + k - 2].x_out;
        float *dh = k == 1 ? m->dh_final : m->dh_mtp; /* dh_mtp was consumed above */
        if (k > 1) ops_zero(dh, (size_t)N * H);
        mtp_input_backward(&b->mtp, &b->tc, dx, hp, m->g_embed, dh, m->dcat, m->tmp, m->de, N, H, V, &m->scratch);
        if (m->checkpointing) block_invalidate(b); /* main recomputes overwrite the MTP slots */
        flush_grads(m, L + k);
        close_params(m, L + k);
    }

    /* the final norm's backward (the main head's ran after its loss; the MTP contribution is in dh_final) */
    float *dx = m->dx;
    ops_zero(dx, (size_t)N * H);
    float *dh = m->dh_final;
    /* x_final holds the last block's output: final norm backward needs it */
    ops_rmsnorm_backward(dx, m->g_final_norm, dh, x, m->final_norm, m->rstd_final, N, H);
    for (int l = L - 1; l >= 0; l--) {
        block *b = &m->blk[l];
        open_params(m, l + 1);
        open_grads(m, l + 1);
        if (b->x_in16) ops_widen_bf16(b->x_in, b->x_in16, (size_t)N * H); /* into the shared fp32 input */
        if (!b->cached) block_forward(m, b, m->recomp, b->x_in, 1, NULL, sc.bal); /* recompute from the saved input */
        block_backward(m, b, dx);
        if (m->checkpointing) block_invalidate(b);
        flush_grads(m, l + 1);
        close_params(m, l + 1);
    }
    if (m->g_embed) ops_embedding_backward(m->g_embed, dx, tokens, N, V, H);
    flush_grads(m, G);
    flush_grads(m, 0);
    close_params(m, G);
    close_params(m, 0);
}

/* ---------- generation: the latent cache and one decode pass ---------- */

int model_kv_create(model_kv **out, const model *m, int B, int T, int max_rows, int with_mtp, char *err, int errlen) {
    const deck_model *c = m->cfg;
    *out = NULL;
    if (with_mtp && c->num_nextn_predict_layers < 1) {
        snprintf(err, errlen, "the model has no MTP module (model.num_nextn_predict_layers = 0)");
        return -1;
    }
    if (T > m->rope.T) {
        snprintf(err, errlen, "a cache of %d positions exceeds the model's RoPE table (%d: model_opts.seq_len)", T,
                 m->rope.T);
        return -1;
    }
    model_kv *kv = ops_host_alloc(sizeof *kv);
    if (!kv) {
        snprintf(err, errlen, "out of memory for the KV cache");
        return -1;
    }
    kv->B = B, kv->T = T, kv->W = mla_decode_row(c), kv->L = c->num_hidden_layers + (with_mtp ? 1 : 0), kv->max_rows = max_rows;
    size_t floats = (size_t)kv->L * B * T * kv->W;
    kv->buf = ops_alloc(floats * sizeof(float));
    if (!kv->buf || ops_arena_create(&kv->scratch, mla_decode_scratch_floats(c, max_rows))) {
        snprintf(err, errlen, "out of memory for the latent KV cache (%.1f MiB)", floats * 4.0 / 1048576.0);
        model_kv_free(kv);
        return -1;
    }
    *out = kv;
    return 0;
}

void model_kv_free(model_kv *kv) {
    if (!kv) return;
    ops_free(kv->buf);
    ops_arena_destroy(&kv->scratch);
    ops_host_free(kv);
}

size_t model_kv_floats_per_token(const model *m) {
    return (size_t)m->cfg->num_hidden_layers * (size_t)mla_decode_row(m->cfg);
}

/* block_forward's inference twin: attention through the latent cache, no saved activations kept. */
static void block_decode(model *m, block *b, float *kv, int Tcap, const int *pos, float *x, int B, int n,
                         ops_arena *dscratch) {
    const deck_model *c = m->cfg;
    int N = B * n, H = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    ops_rmsnorm_forward(b->xn1, b->rstd1, x, b->in_norm, N, H, eps);
    mla_decode(c, &b->attn, &m->rope, kv, Tcap, pos, m->tmp, b->xn1, B, n, dscratch);
    ops_add(x, m->tmp, (size_t)N * H);                                     /* x = x + attn */
    ops_rmsnorm_forward(b->xn2, b->rstd2, x, b->post_norm, N, H, eps);
    if (b->is_moe)
        moe_forward(c, &b->moe, &b->ec, m->ep_comm, m->tmp, b->xn2, B, n, m->count_scratch, NULL, 0.0f, &m->scratch);
    else
        mlp_forward(&b->mlp, &b->mc, m->tmp, b->xn2, N, &m->scratch);
    ops_add(x, m->tmp, (size_t)N * H);                                     /* x = x + ffn */
    b->cached = 0; /* the component caches hold a decode pass, not a training forward */
}

void model_decode(model *m, model_kv *kv, int seq0, const int32_t *tokens, int B, int n, const int *pos,
                  int all_logits) {
    const deck_model *c = m->cfg;
    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers, H = c->hidden_size;
    DSV3_CHECK(m->N == B * n && m->B == B, "model_decode: %d x %d tokens, activations laid out for %dx%d "
               "(model_reshape first)", B, n, m->B, m->T);
    DSV3_CHECK(seq0 >= 0 && seq0 + B <= kv->B && B * n <= kv->max_rows,
               "model_decode: sequences %d..%d, %d tokens each: the cache holds %d sequences, %d tokens per call", seq0,
               seq0 + B - 1, n, kv->B, kv->max_rows);
    int N = m->N, G = L + D + 1;
    float *x = m->x_final; /* residual stream */
    ops_to_device(m->ids, tokens, (size_t)N * sizeof *tokens); /* the ids slots of model_step */
    open_params(m, 0);
    ops_embedding_forward_w(x, &m->embed_W, m->ids, N);
    for (int l = 0; l < L; l++) {
        open_params(m, l + 1);
        float *layer_kv = kv->buf + ((size_t)l * kv->B + seq0) * kv->T * kv->W;
        block_decode(m, &m->blk[l], layer_kv, kv->T, pos, x, B, n, &kv->scratch);
        close_params(m, l + 1);
    }
    open_params(m, G);
    int rows = N;
    if (!all_logits && n > 1) { /* only each sequence's last token: rows b*n+n-1 -> b (never overwrites a later source) */
        for (int b = 0; b < B; b++) ops_copy(x + (size_t)b * H, x + ((size_t)b * n + n - 1) * H, (size_t)H);
        rows = B;
    }
    ops_rmsnorm_forward(m->h_final, m->rstd_final, x, m->final_norm, rows, H, (float)c->rms_norm_eps);
    linear_forward(&m->lm_head, m->logits, m->h_final, NULL, rows, &m->scratch);
    close_params(m, G);
    close_params(m, 0);
}

void model_decode_mtp(model *m, model_kv *kv, int seq0, const int32_t *next, int B, int n, const int *pos) {
    const deck_model *c = m->cfg;
    int L = c->num_hidden_layers, H = c->hidden_size, V = c->vocab_size, N = B * n;
    DSV3_CHECK(kv->L > L && m->N == N && m->B == B && seq0 >= 0 && seq0 + B <= kv->B,
               "model_decode_mtp: a cache without the MTP layer, or not after model_decode of the same %d x %d tokens",
               B, n);
    block *b = &m->blk[L];
    float eps = (float)c->rms_norm_eps;
    int G = L + c->num_nextn_predict_layers + 1; /* group of lm_head, the shared head */
    open_params(m, 0);
    open_params(m, L + 1);
    open_params(m, G);
    /* token ids of the embedding input: the device slots of depth 1 (as batch_to_device fills them in training) */
    int32_t *h = m->ids_stage;
    for (int i = 0; i < N; i++) h[i] = next[i], h[N + i] = OPS_IGNORE_INDEX;
    ops_to_device(b->tc.e_ids, h, 2 * (size_t)N * sizeof *h); /* e_ids, then targets */
    mtp_input_forward(&b->mtp, &b->tc, m->embed, m->h_final, b->x_out, N, H, V, eps, &m->scratch);
    float *layer_kv = kv->buf + ((size_t)L * kv->B + seq0) * kv->T * kv->W;
    block_decode(m, b, layer_kv, kv->T, pos, b->x_out, B, n, &kv->scratch);
    mtp_head_forward(&b->mtp, &b->tc, &m->lm_head, b->x_out, m->logits, N, H, V, eps, &m->scratch);
    close_params(m, G);
    close_params(m, L + 1);
    close_params(m, 0);
}

int model_merge_lora(model *m, char *err, int errlen) {
    if (!m->z.params) {
        snprintf(err, errlen, "merging LoRA needs every weight on every rank (ZeRO stage below 3)");
        return -1;
    }
    for (int i = 0; i < m->cfg->num_hidden_layers + m->cfg->num_nextn_predict_layers; i++) {
        block *b = &m->blk[i];
        linear *ls[] = {&b->attn.q_a, &b->attn.q_b, &b->attn.q, &b->attn.kv_a, &b->attn.kv_b, &b->attn.o,
                        &b->mlp.gate, &b->mlp.up, &b->mlp.down, &b->moe.sh_gate, &b->moe.sh_up, &b->moe.sh_down};
        for (size_t k = 0; k < sizeof ls / sizeof *ls; k++) {
            linear *l = ls[k];
            if (l->r <= 0) continue;
            if (l->W.dtype != OPS_F32) {
                snprintf(err, errlen, "merging LoRA into a non-F32 base weight of layer %d is not supported", i);
                return -1;
            }
            /* W[out,in] += scaling·B[out,r]·A[r,in] (B scaled in place: unused afterwards) */
            ops_scale(l->B, l->scaling, (size_t)l->out * l->r);
            ops_matmul_backward(l->w, NULL, l->B, NULL, l->A, l->out, l->in, l->r);
            l->r = 0, l->A = l->B = l->gA = l->gB = NULL;
        }
        moe_layer *e = &b->moe; /* routed experts: W_e += scaling·B_e·A_e for each local expert */
        int H = m->cfg->hidden_size, I = m->cfg->moe_intermediate_size;
        for (int j = 0; b->is_moe && j < 3; j++) {
            int r = e->er[j], out = j < 2 ? I : H, in = j < 2 ? H : I;
            float *w = j == 0 ? e->eg : j == 1 ? e->eu : e->ed;
            if (!r) continue;
            if (e->eW[j].dtype != OPS_F32) {
                snprintf(err, errlen, "merging LoRA into a non-F32 routed-expert base weight of layer %d is not supported",
                         i);
                return -1;
            }
            for (int g = 0; g < e->e_local; g++) {
                float *Bg = e->eB[j] + (size_t)g * out * r;
                ops_scale(Bg, e->escaling, (size_t)out * r);
                ops_matmul_backward(w + (size_t)g * out * in, NULL, Bg, NULL, e->eA[j] + (size_t)g * r * in, out, in, r);
            }
            e->er[j] = 0, e->eA[j] = e->eB[j] = e->geA[j] = e->geB[j] = NULL;
        }
    }
    /* the activation layout (cost.c) follows model_opts.lora: no adapter caches any more */
    static const deck_lora none;
    m->o.lora = &none;
    m->lora_merged = 1;
    return 0;
}

/* ---------- accessors ---------- */

const param_table *model_params(const model *m) { return &m->pt; }
float *model_param_buffer(model *m) { /* callers may write the masters: w16 regathers what it derives */
    zero_params_changed(&m->z);
    return zero_param_buffer(&m->z);
}
int model_params_layout(const model *m) { return zero_state_params_layout(&m->z); }
float *model_grad_buffer(model *m) { return zero_grad_buffer(&m->z); }
zero_state *model_zero(model *m) { return &m->z; }
const float *model_logits(const model *m) { return m->logits; }
int model_n_moe(const model *m) { return m->n_moe; }
int64_t *model_expert_counts(model *m, int i) { return m->counts + (size_t)i * m->cfg->n_routed_experts; }
float *model_router_bias(model *m, int i) {
    return model_params_layout(m) == ZERO_SHARD_PACKED ? NULL : m->blk[m->moe_block[i]].moe.bias;
}
int model_moe_layer_index(const model *m, int i) { return m->blk[m->moe_block[i]].layer; }
void model_reset_counts(model *m) {
    for (int i = 0; i < m->nblocks; i++) m->blk[i].ec.comm_seconds = m->blk[i].ec.wire_bytes = 0.0;
    memset(m->counts, 0, (size_t)(m->n_moe ? m->n_moe : 1) * m->cfg->n_routed_experts * sizeof *m->counts);
}

float *model_tensor(model *m, const char *name, float **grad) {
    int i = params_find(&m->pt, name);
    if (i < 0 || !m->z.params || !m->z.grads) return NULL; /* sharded: no full copy */
    const param_spec *s = &m->pt.t[i];
    if (grad) *grad = m->z.grads + s->offset;
    return m->z.params + s->offset;
}

void model_zero_grad(model *m) { zero_zero_grad(&m->z); }

void model_skip_stored_init(model *m, int skip) { m->skip_stored_init = skip; }

ops_weight model_stored_weight(model *m, const char *name, int g) {
    int i = params_find(&m->pt, name);
    if (i < 0 || !(m->pt.t[i].flags & P_STORED) || g < 0 || g >= m->pt.t[i].n_mat) return (ops_weight){0};
    ops_weight w = stored_weight(m, i, NULL);
    return ops_weight_expert(&w, g);
}


/* Fills local elements [a, b) of tensor s (a, b relative to the tensor) at dst. */
static void init_range(const model *m, const param_spec *s, float *dst, size_t a, size_t b, uint64_t seed) {
    float std = (float)m->cfg->initializer_range;
    size_t n = b - a;
    /* global index of local element a: routed experts start at e_first */
    uint64_t first = ((s->flags & P_EXPERT) ? (uint64_t)m->ep_first * (uint64_t)(s->numel / s->shape[0]) : 0) + a;
    const char *nm = s->name;
    size_t len = strlen(nm);
    if (s->ndim == 1 && strstr(nm, "e_score_correction_bias"))
        ops_fill(dst, n, 0.0f);
    else if (s->ndim == 1)
        ops_fill(dst, n, 1.0f); /* norms */
    else if (s->flags & P_LORA) {
        if (len > 14 && strcmp(nm + len - 14, ".lora_A.weight") == 0)
            ops_fill_uniform(dst, n, seed, params_name_key(nm), first, 1.0f / sqrtf((float)s->shape[s->ndim - 1])); /* fan_in */
        else
            ops_fill(dst, n, 0.0f);
    } else
        ops_fill_normal(dst, n, seed, params_name_key(nm), first, std);
}

/* A P_STORED tensor from its fp32 init, 128 rows at a time (never a
 * full-precision copy of the tensor): drawn on the device (the fills are
 * ops), stored from a host copy (ops_weight_store_rows takes host rows). */
static void stored_tensor_init(model *m, int i, uint64_t seed) {
    const param_spec *s = &m->pt.t[i];
    size_t out = (size_t)s->shape[s->ndim - 2], in = (size_t)s->shape[s->ndim - 1];
    float *dev = ops_alloc((size_t)OPS_FP8_BLOCK * in * sizeof *dev);
    float *buf = ops_host_alloc((size_t)OPS_FP8_BLOCK * in * sizeof *buf);
    DSV3_CHECK(dev != NULL && buf != NULL, "out of memory initialising %s", s->name);
    ops_weight w = stored_weight(m, i, NULL);
    for (int g = 0; g < s->n_mat; g++) {
        ops_weight v = ops_weight_expert(&w, g);
        for (size_t r0 = 0; r0 < out; r0 += OPS_FP8_BLOCK) {
            size_t n = out - r0 < OPS_FP8_BLOCK ? out - r0 : OPS_FP8_BLOCK, a = ((size_t)g * out + r0) * in;
            init_range(m, s, dev, a, a + n * in, seed);
            ops_to_host(buf, dev, n * in * sizeof *buf);
            ops_weight_store_rows(&v, (int)r0, (int)n, buf);
        }
    }
    ops_host_free(buf);
    ops_free(dev);
}

void model_init_weights(model *m, uint64_t seed) {
    for (int i = 0; i < m->pt.n; i++) {
        const param_spec *s = &m->pt.t[i];
        if (s->flags & P_STORED) {
            /* the node-shared part of the store: one rank of the node writes each tensor (params.h) */
            int w = m->p ? params_shared_writer(&m->pt, i, m->p->node_size) : -1;
            if (!m->skip_stored_init && (w < 0 || w == m->p->node_rank)) stored_tensor_init(m, i, seed);
            continue;
        }
        if (m->z.params) {
            init_range(m, s, m->z.params + s->offset, 0, (size_t)s->numel_local, seed);
            continue;
        }
        int64_t a, b; /* ZeRO-3: only the part of the tensor inside my shard */
        zero_my_part(&m->z.map, i, &a, &b);
        if (b > a) init_range(m, s, zero_at(&m->z.map, i, m->z.pshard, ZERO_SHARD_PACKED, a), (size_t)a, (size_t)b, seed);
    }
    zero_params_changed(&m->z);
}

/* Router bias update of MoE slot i from global counts: every rank applies it
 * to the copy it holds (the full bias, or under ZeRO-3 its shard's part). */
void model_bias_update(model *m, int i, const int64_t *counts, float gamma) {
    int E = m->cfg->n_routed_experts;
    float *bias = m->blk[m->moe_block[i]].moe.bias;
    if (m->z.params) {
        moe_bias_update(bias, counts, E, gamma);
        return;
    }
    char name[160]; /* ZeRO-3: the update of every element, then keep my shard's part */
    snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", m->blk[m->moe_block[i]].layer);
    int t = params_find(&m->pt, name);
    DSV3_CHECK(t >= 0, "internal error: router bias %s missing", name);
    float *full = m->e_scratch;
    ops_zero(full, (size_t)E);
    moe_bias_update(full, counts, E, gamma);
    int64_t a, b;
    zero_my_part(&m->z.map, t, &a, &b);
    if (b > a) ops_add(zero_at(&m->z.map, t, m->z.pshard, ZERO_SHARD_PACKED, a), full + a, (size_t)(b - a));
    zero_params_changed(&m->z);
}

void model_router_bias_gather(model *m, int i, float *full) {
    int E = m->cfg->n_routed_experts;
    if (m->z.params) {
        ops_to_host(full, m->blk[m->moe_block[i]].moe.bias, (size_t)E * sizeof *full);
        return;
    }
    float *dev = m->e_scratch; /* [E] device: assembled there, then to the host */
    char name[160]; /* each element has one owner: my part, zeros elsewhere, summed over world */
    snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", m->blk[m->moe_block[i]].layer);
    int t = params_find(&m->pt, name);
    DSV3_CHECK(t >= 0, "internal error: router bias %s missing", name);
    ops_zero(dev, (size_t)E);
    int64_t a, b;
    zero_my_part(&m->z.map, t, &a, &b);
    if (b > a) ops_copy(dev + a, zero_at(&m->z.map, t, m->z.pshard, ZERO_SHARD_PACKED, a), (size_t)(b - a));
    DSV3_CHECK(comm_sum_floats(dev, (size_t)E, m->p->world) == 0, "all-reduce of router bias %s failed", name);
    ops_to_host(full, dev, (size_t)E * sizeof *full);
}

int64_t model_count_targets(const int32_t *targets, int B, int T, int k) {
    int64_t n = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t + k < T; t++) n += targets[b * T + t + k] != -100;
    return n;
}

double model_comm_seconds(const model *m) {
    double s = 0.0;
    for (int i = 0; i < m->nblocks; i++)
        if (m->blk[i].is_moe) s += m->blk[i].ec.comm_seconds;
    return s;
}

double model_comm_bytes(const model *m) {
    double s = 0.0;
    for (int i = 0; i < m->nblocks; i++)
        if (m->blk[i].is_moe) s += m->blk[i].ec.wire_bytes;
    return s;
}

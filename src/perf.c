/* perf.c — the GPU plan's accounting (perf.h). */
#include "perf.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/cost.h"
#include "model/lora.h"
#include "model/params.h"

perf_opts perf_opts_default(void) { return (perf_opts){0.0, 0.0, PERF_INTER_NDR, 8}; }

/* Sources and derivations: ../shared/docs/sft-perf-model.md §1 (vendor tables,
 * nccl-tests issues); NVLink = what NCCL measures of 300/450 GB/s per direction.
 * Usable memory as the driver reports it: 80.0, 79.6 and about 139 GiB. */
const perf_gpu perf_gpus[PERF_NGPU] = {
    {"A100-80GB", 312.0, 0.0, 2.039, 80.0 * 1.073741824, 240.0},
    {"H100-80GB", 989.4, 1978.9, 3.35, 79.6 * 1.073741824, 360.0},
    {"H200-141GB", 989.4, 1978.9, 4.8, 139.0 * 1.073741824, 360.0},
};

perf_eta perf_eta_default(void) { return (perf_eta){0.70, 0.60, 0.50, 0.80}; }

perf_dtype perf_dtype_of(const char *s) {
    if (s && !strcmp(s, "bf16")) return PERF_BF16;
    if (s && !strcmp(s, "fp8")) return PERF_FP8;
    return PERF_FP32;
}

const char *perf_dtype_name(perf_dtype t) { return t == PERF_FP8 ? "fp8" : t == PERF_BF16 ? "bf16" : "fp32"; }

void perf_expert_range(int E, int ep, int ep_index, int *first, int *count) {
    int base = ep > 0 ? E / ep : 0, extra = ep > 0 ? E % ep : 0;
    *count = base + (ep_index < extra);
    *first = ep_index * base + (ep_index < extra ? ep_index : extra);
}

/* ------------------------------------------------------------ the model */

/* The linears the released DeepSeek-V3 checkpoint stores as e4m3 + 128x128 scales. */
static int fp8_stored(const char *name) {
    static const char *const suf[] = {"self_attn.q_a_proj.weight", "self_attn.q_b_proj.weight",
                                      "self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_b_proj.weight",
                                      "self_attn.o_proj.weight", "self_attn.q_proj.weight", "gate_proj.weight",
                                      "up_proj.weight", "down_proj.weight"};
    size_t n = strlen(name);
    if (strstr(name, "lora_")) return 0;
    for (size_t i = 0; i < sizeof suf / sizeof suf[0]; i++) {
        size_t m = strlen(suf[i]);
        if (n >= m && !strcmp(name + n - m, suf[i])) return 1;
    }
    return 0;
}

static double blocks128(double out, double in) { return ceil(out / 128.0) * ceil(in / 128.0); }

int perf_model_build(perf_model *m, const model_opts *o, char *err, int errlen) {
    const deck_model *c = o->cfg;
    memset(m, 0, sizeof *m);
    param_table pt;
    if (params_build(&pt, c, o->lora, 1, err, errlen)) return -1;
    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers, k0 = c->first_k_dense_replace;
    m->E = c->n_routed_experts;
    m->k = c->num_experts_per_tok;
    m->H = c->hidden_size;
    m->V = c->vocab_size;
    m->L = L;
    m->D = D;
    m->n_group = c->n_group;
    m->topk_group = c->topk_group;
    m->max_pos = c->max_position_embeddings;
    m->n_moe = m->E > 0 ? (L - (k0 < L ? k0 : L)) + D : 0;
    int G = pt.n_groups;
    double lq8[G], lsc[G], lb16[G], lsm[G], ltr[G];
    int moe[G];
    memset(lq8, 0, sizeof lq8), memset(lsc, 0, sizeof lsc), memset(lb16, 0, sizeof lb16);
    memset(lsm, 0, sizeof lsm), memset(ltr, 0, sizeof ltr), memset(moe, 0, sizeof moe);
    double ef = 0, es = 0, et = 0, ff = 0, ft = 0;
    for (int i = 0; i < pt.n; i++) {
        const param_spec *t = &pt.t[i];
        int frozen = (t->flags & (P_FROZEN | P_NOGRAD)) != 0, g = t->group;
        double n = (double)t->numel;
        if (t->flags & P_EXPERT) { /* [E, out, in] */
            double per = n / (double)t->shape[0];
            moe[g] = 1;
            if (frozen) {
                ef += per;
                es += blocks128((double)t->shape[1], (double)t->shape[2]);
                ff += 2.0 * per * m->k;
            } else {
                et += per;
                ft += 2.0 * per * m->k;
            }
            continue;
        }
        if (t->ndim < 2 || (t->flags & P_NOGRAD)) {
            if (frozen) m->small += n, lsm[g] += n;
            else m->train += n, ltr[g] += n;
            continue;
        }
        int emb = !strcmp(t->name, "model.embed_tokens.weight"), head = !strcmp(t->name, "lm_head.weight");
        if (emb) m->embed = n, m->embed_frozen = frozen ? n : 0.0;
        if (head) m->head = n, m->head_frozen = frozen ? n : 0.0, m->head_trainable = !frozen, m->f_head = 2.0 * n;
        if (frozen && fp8_stored(t->name)) {
            double b = blocks128((double)t->shape[0], (double)t->shape[1]);
            m->q8 += n, m->q8_scales += b, lq8[g] += n, lsc[g] += b;
            m->f_q8 += 2.0 * n;
        } else if (frozen) {
            m->b16 += n, lb16[g] += n;
            if (!emb && !head) m->f_b16 += 2.0 * n;
        } else {
            m->train += n, ltr[g] += n;
            if (!emb && !head) m->f_train += 2.0 * n;
        }
        if ((t->flags & P_LORA) && strstr(t->name, "lora_A")) m->lora_io += (double)t->shape[1];     /* in */
        if ((t->flags & P_LORA) && strstr(t->name, "lora_B")) m->lora_io += 2.0 * (double)t->shape[0]; /* out */
    }
    /* expert LoRA: every routed row passes one expert's adapters (k per token and MoE layer) */
    for (int i = 0; i < pt.n; i++) {
        const param_spec *t = &pt.t[i];
        if (!(t->flags & P_EXPERT) || !(t->flags & P_LORA)) continue;
        if (strstr(t->name, "lora_A")) m->lora_io += m->k * (double)t->shape[2];
        if (strstr(t->name, "lora_B")) m->lora_io += 2.0 * m->k * (double)t->shape[1];
    }
    if (m->n_moe > 0) {
        m->exp_frozen = ef / m->n_moe;
        m->exp_scales = es / m->n_moe;
        m->exp_train = et / m->n_moe;
        m->f_exp_frozen = ff; /* top-k rows per token, every MoE layer */
        m->f_exp_train = ft;
    }
    /* the largest decoder-layer groups (groups 1..G-2) by elements: dense and MoE apart */
    double best = -1, bmoe = -1;
    for (int g = 1; g < G - 1; g++) {
        double x = lq8[g] + lb16[g] + lsm[g] + ltr[g];
        if (!moe[g] && x > best) {
            best = x;
            m->lay_q8 = lq8[g], m->lay_q8_scales = lsc[g], m->lay_b16 = lb16[g], m->lay_small = lsm[g];
            m->lay_train = ltr[g];
        }
        if (moe[g] && x > bmoe) {
            bmoe = x;
            m->moe_q8 = lq8[g], m->moe_q8_scales = lsc[g], m->moe_b16 = lb16[g], m->moe_small = lsm[g];
            m->moe_train = ltr[g];
        }
    }
    params_free(&pt);
    double nh = c->num_attention_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim, v = c->v_head_dim;
    m->f_attn_coef = (L + D) * 2.0 * nh * (qk + v) / 2.0; /* x (S+1): forward attention FLOPs per token */
    /* per-token activation bytes (bf16) without the [T,V] buffer, with and without checkpointing */
    model_opts x = *o;
    double V1 = 4.0 * ((double)c->vocab_size + 1);
    x.checkpointing = 1;
    m->act_tok_ckpt = cost_gpu_act_bytes(&x, 1.0, 2.0) - V1;
    x.checkpointing = 0;
    m->act_tok_full = cost_gpu_act_bytes(&x, 1.0, 2.0) - V1;
    for (int l = 0; l < L + D; l++)
        m->act_floats += cost_gpu_layer_floats(o, l >= k0 && m->E > 0, l < L);
    return 0;
}

/* ---------------------------------------------------------------- bytes */

static double wbytes(perf_dtype t) { return t == PERF_FP32 ? 4.0 : t == PERF_BF16 ? 2.0 : 1.0; }
static double sbytes(perf_dtype t) { return t == PERF_FP8 ? 4.0 : 0.0; }   /* per 128x128 block */
static double b16bytes(perf_dtype t) { return t == PERF_FP32 ? 4.0 : 2.0; } /* bf16-stored frozen tensors */

/* One routed expert of one MoE layer, frozen, at the base dtype. */
static double expert_bytes(const perf_model *m, perf_dtype b) {
    return m->exp_frozen * wbytes(b) + m->exp_scales * sbytes(b);
}
static double nonexp_bytes(const perf_model *m, perf_dtype b) {
    return m->q8 * wbytes(b) + m->q8_scales * sbytes(b) + m->b16 * b16bytes(b) + 4.0 * m->small;
}
/* Rows: dispatch (fp8: 1 B + one f32 scale per 128 values), combine and gradients (bf16, fp32 wire: fp32). */
static double row_dispatch(const perf_model *m, perf_dtype w) {
    return m->H * wbytes(w) + (w == PERF_FP8 ? 4.0 * ceil(m->H / 128.0) : 0.0);
}
static double row_combine(const perf_model *m, perf_dtype w) { return m->H * (w == PERF_FP32 ? 4.0 : 2.0); }

static int node_share(const perf_layout *l) { return l->gpn < l->world ? l->gpn : l->world; }
/* "sharded" frozen weights follow the deck's ZeRO stage, as the trainer does: ZeRO-3 shards them
 * (experts over the data group, the rest over world), a lower stage keeps them whole on every rank. */
static int zero3_frozen(const perf_layout *l) { return !l->resident && l->zero >= 3; }
/* Is the non-expert frozen base split over ranks (then gathered)? */
static int base_split(const perf_layout *l) {
    return l->resident ? node_share(l) > 1 : zero3_frozen(l) && l->world > 1;
}

/* Bytes of one gathered layer group's non-expert part: frozen at the base dtype when the base is
 * split, trainable bf16 copies under ZeRO-3. */
static double group_bytes(const perf_layout *l, double q8, double sc, double b16, double small, double train) {
    double f = base_split(l) ? q8 * wbytes(l->base) + sc * sbytes(l->base) + b16 * b16bytes(l->base) + 4.0 * small
                             : 0.0;
    return f + (l->zero >= 3 ? 2.0 * train : 0.0);
}

perf_mem perf_memory(const perf_model *m, const perf_layout *l, int e) {
    perf_mem r;
    memset(&r, 0, sizeof r);
    int W = l->world, dp = l->world / l->ep, z = l->zero;
    double N = (double)l->micro_batch * l->seq_len;
    double eb = expert_bytes(m, l->base);
    r.experts = m->n_moe * e * eb / (zero3_frozen(l) ? (double)dp : 1.0);
    r.base = nonexp_bytes(m, l->base) / (double)(l->resident ? node_share(l) : zero3_frozen(l) ? W : 1);
    double bw16 = b16bytes(l->base);
    if (base_split(l) || (zero3_frozen(l) && dp > 1) || z >= 3) {
        /* a dense layer, or a MoE layer with its experts when they are gathered too */
        double lay = group_bytes(l, m->lay_q8, m->lay_q8_scales, m->lay_b16, m->lay_small, m->lay_train);
        double mo = group_bytes(l, m->moe_q8, m->moe_q8_scales, m->moe_b16, m->moe_small, m->moe_train);
        if (dp > 1 && m->n_moe > 0) mo += (zero3_frozen(l) ? e * eb : 0.0) + (z >= 3 ? 2.0 * e * m->exp_train : 0.0);
        if (mo > lay) lay = mo;
        double head = base_split(l) ? m->head_frozen * bw16 + 4.0 * m->H : 0.0;
        r.gather = 2.0 * (lay > head ? lay : head) + (base_split(l) && m->embed_frozen > 0 ? N * m->H * bw16 : 0.0);
    }
    double nd = m->train, ne = (double)m->n_moe * e * m->exp_train;
    double copy = z < 3 ? 2.0 * (nd + ne) : 0.0;
    double master = 4.0 * (nd / (z >= 3 ? W : 1) + ne / (z >= 3 ? dp : 1));
    double grads = 4.0 * (nd / (z >= 2 ? W : 1) + ne / (z >= 2 ? dp : 1)) + (z >= 2 ? 4.0 * m->lay_train : 0.0);
    double moments = 8.0 * (nd / (z >= 1 ? W : 1) + ne / (z >= 1 ? dp : 1));
    r.train = copy + master + grads + moments;
    r.acts = N * (l->ckpt ? m->act_tok_ckpt : m->act_tok_full);
    r.logits = N * (4.0 * m->V + 4.0); /* one fp32 [T,V]: dlogits are written over the logits (model.c) */
    if (l->ep > 1 && m->n_moe > 0) {
        perf_route q = perf_routing(m, l->ep, l->gpn);
        double rows = N * q.ranks * PERF_DISPATCH_HEADROOM;
        r.dispatch = rows * 2.0 * (row_dispatch(m, l->wire) + row_combine(m, l->wire));
    }
    r.runtime = PERF_RUNTIME_BYTES;
    r.total = r.experts + r.base + r.gather + r.train + r.acts + r.logits + r.dispatch + r.runtime;
    return r;
}

/* -------------------------------------------------------------- routing */

/* P(no expert of the set hit): counts[g] experts of the set in group g. */
static double miss_prob(const perf_model *m, const int *counts, int total) {
    int E = m->E, G = m->n_group, tg = m->topk_group, k = m->k;
    if (G < 1 || E % G || tg < 1 || tg > G || G > 12) { /* no groups, or too many to enumerate: uniform */
        double p = 1.0;
        for (int i = 0; i < k; i++) p *= E - total - i > 0 ? (double)(E - total - i) / (E - i) : 0.0;
        return p;
    }
    int Mx = tg * (E / G);
    double sum = 0.0;
    long n = 0;
    for (unsigned s = 0; s < (1u << G); s++) {
        if (__builtin_popcount(s) != tg) continue;
        int in = 0;
        for (int g = 0; g < G; g++)
            if (s >> g & 1) in += counts[g];
        double p = 1.0;
        for (int i = 0; i < k; i++) p *= Mx - in - i > 0 ? (double)(Mx - in - i) / (Mx - i) : 0.0;
        sum += p;
        n++;
    }
    return n ? sum / n : 1.0;
}

/* P(some expert in [lo, hi) hit). */
static double hit_prob(const perf_model *m, int lo, int hi) {
    int G = m->n_group > 0 ? m->n_group : 1, counts[64] = {0};
    int per = m->E / G > 0 ? m->E / G : 1;
    for (int x = lo; x < hi; x++) counts[(x / per) % 64]++;
    return 1.0 - miss_prob(m, counts, hi - lo);
}

perf_route perf_routing(const perf_model *m, int ep, int gpn) {
    perf_route r = {1.0, 1.0, 0.0, 0.0, 0.0};
    if (ep <= 1 || m->E <= 0 || m->k <= 0) return r;
    memset(&r, 0, sizeof r);
    int first, cnt, nnodes = (ep + gpn - 1) / gpn;
    for (int j = 0; j < ep; j++) {
        perf_expert_range(m->E, ep, j, &first, &cnt);
        double p = cnt > 0 ? hit_prob(m, first, first + cnt) : 0.0;
        r.ranks += p;
        if (j == 0) r.self = p;
        else if (j / gpn == 0) r.local += p;
        else r.remote += p;
    }
    for (int n = 1; n < nnodes; n++) {
        int lo, hi, c2;
        perf_expert_range(m->E, ep, n * gpn, &lo, &c2);
        int last = (n + 1) * gpn < ep ? (n + 1) * gpn - 1 : ep - 1;
        perf_expert_range(m->E, ep, last, &hi, &c2);
        hi += c2;
        r.nodes += hi > lo ? hit_prob(m, lo, hi) : 0.0;
    }
    return r;
}

/* --------------------------------------------------------------- a step */

/* All-gather (or reduce-scatter) of X bytes over all W ranks, hierarchical:
 * rails between nodes (each rank receives (n-1)/W of X over the inter-node
 * link), then inside the node ((g-1)/g of X over NVLink). */
static void split_world(const perf_layout *l, double X, double *intra, double *inter) {
    int g = node_share(l), n = (l->world + g - 1) / g;
    *intra += (g - 1.0) / g * X;
    *inter += (n - 1.0) / l->world * X;
}
/* Over the data group (ranks j*ep, j < dp): members on my node over NVLink, the others inter-node. */
static void split_data(const perf_layout *l, double X, double *intra, double *inter) {
    int dp = l->world / l->ep, same = 0;
    for (int j = 0; j < dp; j++) same += (j * l->ep) / l->gpn == 0;
    *intra += (same - 1.0) / dp * X;
    *inter += (double)(dp - same) / dp * X;
}

perf_traffic perf_step(const perf_model *m, const perf_layout *l, int e, int fp8_gemm) {
    perf_traffic t;
    memset(&t, 0, sizeof t);
    int dp = l->world / l->ep, ga = l->grad_accum > 0 ? l->grad_accum : 1;
    double N = (double)l->micro_batch * l->seq_len, S = l->seq_len;
    t.tokens = N * ga;
    /* routed rows on this rank per own token (balanced routing over the group's tokens) */
    double share = m->E > 0 ? (double)l->ep * e / m->E : 0.0;
    double fexpF = m->f_exp_frozen * share;
    double fexpT = m->f_exp_train * share;
    double fattn = m->f_attn_coef * (S + 1.0);
    int heads = 1 + m->D;
    double q8 = m->f_q8 + fexpF;                         /* frozen FP8-stored GEMMs, one pass */
    double b16 = m->f_b16 + m->f_train + fexpT;          /* other non-head GEMMs, one pass */
    int f8 = l->base == PERF_FP8 && fp8_gemm;
    /* forward */
    double fwd8 = q8, fwd16 = b16 + heads * m->f_head;
    /* backward pass: recompute + dgrad (+ wgrad of trainable) */
    double bwd8 = (l->ckpt ? q8 : 0.0) + q8;
    double bwd16 = (l->ckpt ? b16 + m->D * m->f_head : 0.0) + m->f_b16 + 2.0 * (m->f_train + fexpT) +
                   heads * m->f_head * (m->head_trainable ? 2.0 : 1.0);
    t.flop_fp8[0] = N * (f8 ? fwd8 : 0.0);
    t.flop_bf16[0] = N * (fwd16 + (f8 ? 0.0 : fwd8));
    t.flop_fp8[1] = N * (f8 ? bwd8 : 0.0);
    t.flop_bf16[1] = N * (bwd16 + (f8 ? 0.0 : bwd8));
    t.flop_attn[0] = N * fattn;
    t.flop_attn[1] = N * fattn * ((l->ckpt ? 1.0 : 0.0) + 2.5);
    t.model_flops = N * (fwd8 + fwd16 + fattn + q8 + m->f_b16 + 2.0 * (m->f_train + fexpT) +
                         heads * m->f_head * (m->head_trainable ? 2.0 : 1.0) + 2.0 * fattn);
    /* memory-bound kernels: each saved activation element written and read in
     * the forward, again in the recompute, and read + its gradient written in
     * the backward (bf16); unfused LoRA: input read, output read + written per
     * pass; CE: logits written/read, dlogits written/read (fp32) */
    double act = m->act_floats * 2.0 * N, lio = m->lora_io * 2.0 * N, ce = heads * 2.0 * 4.0 * m->V * N;
    t.hbm[0] = 2.0 * act + lio + ce;
    t.hbm[1] = (l->ckpt ? 2.0 * act + lio : 0.0) + 2.0 * act + lio + ce;
    if (l->base == PERF_FP8 && !fp8_gemm) { /* dequantize to a bf16 scratch per use: read 1 + write 2 */
        double w = m->q8 + m->n_moe * e * m->exp_frozen;
        t.hbm[0] += 3.0 * w;
        t.hbm[1] += 3.0 * w * (l->ckpt ? 2.0 : 1.0);
    }
    /* gathers of weights: forward (layers, head, embedding rows) and backward (layers) */
    double ne_lay = m->q8 * wbytes(l->base) + m->q8_scales * sbytes(l->base) +
                    (m->b16 - m->embed_frozen - m->head_frozen) * b16bytes(l->base) + 4.0 * m->small;
    double head = m->head_frozen * b16bytes(l->base);
    double rows = m->embed_frozen > 0 ? N * m->H * b16bytes(l->base) : 0.0;
    double gi[2] = {0, 0}, gx[2] = {0, 0};
    if (base_split(l)) {
        for (int p = 0; p < 2; p++) {
            double X = ne_lay + (p == 0 ? head + rows : 0.0);
            if (l->resident) gi[p] += (node_share(l) - 1.0) / node_share(l) * X;
            else split_world(l, X, &gi[p], &gx[p]);
        }
    }
    if (zero3_frozen(l) && dp > 1 && m->n_moe > 0)
        for (int p = 0; p < 2; p++) split_data(l, m->n_moe * e * expert_bytes(m, l->base), &gi[p], &gx[p]);
    if (l->zero >= 3) /* bf16 copies of the trainable tensors, gathered with their layer */
        for (int p = 0; p < 2; p++) {
            split_world(l, 2.0 * m->train, &gi[p], &gx[p]);
            if (dp > 1) split_data(l, 2.0 * m->n_moe * e * m->exp_train, &gi[p], &gx[p]);
        }
    /* MoE dispatch/combine: rows per (token, destination rank) */
    double di[2] = {0, 0}, dx[2] = {0, 0};
    if (l->ep > 1 && m->n_moe > 0) {
        perf_route q = perf_routing(m, l->ep, l->gpn);
        double fw = N * (row_dispatch(m, l->wire) + row_combine(m, l->wire)) * m->n_moe;
        double bw = (l->ckpt ? fw : 0.0) + N * 2.0 * row_combine(m, l->wire) * m->n_moe;
        di[0] = fw * (q.local + q.remote);
        dx[0] = fw * q.nodes;
        di[1] = bw * (q.local + q.remote);
        dx[1] = bw * q.nodes;
    }
    /* gradient reduction of the trainable state, once per step (fp32) */
    double ri = 0, rx = 0, times = l->zero >= 2 ? 1.0 : 2.0;
    split_world(l, times * 4.0 * m->train, &ri, &rx);
    if (dp > 1) split_data(l, times * 4.0 * m->n_moe * e * m->exp_train, &ri, &rx);
    for (int p = 0; p < 2; p++) {
        t.intra[p] = ga * (gi[p] + di[p]);
        t.inter[p] = ga * (gx[p] + dx[p]);
        t.flop_fp8[p] *= ga, t.flop_bf16[p] *= ga, t.flop_attn[p] *= ga, t.hbm[p] *= ga;
    }
    t.intra[1] += ri;
    t.inter[1] += rx;
    t.model_flops *= ga;
    t.gather_intra = ga * (gi[0] + gi[1]), t.gather_inter = ga * (gx[0] + gx[1]);
    t.disp_intra = ga * (di[0] + di[1]), t.disp_inter = ga * (dx[0] + dx[1]);
    t.red_intra = ri, t.red_inter = rx;
    return t;
}

perf_time perf_time_of(const perf_traffic *t, const perf_gpu *g, const perf_eta *eta, double intra_gbs,
                       double inter_gbs) {
    perf_time r;
    memset(&r, 0, sizeof r);
    double p16 = g->bf16_tflops * 1e12, p8 = (g->fp8_tflops > 0 ? g->fp8_tflops : g->bf16_tflops) * 1e12;
    for (int p = 0; p < 2; p++) {
        r.comp[p] = t->flop_fp8[p] / (eta->fp8 * p8) + t->flop_bf16[p] / (eta->bf16 * p16) +
                    t->flop_attn[p] / (eta->attn * p16) + t->hbm[p] / (eta->hbm * g->hbm_tbs * 1e12);
        r.intra[p] = t->intra[p] / (intra_gbs * 1e9);
        r.inter[p] = t->inter[p] / (inter_gbs * 1e9);
        r.no_overlap += r.comp[p] + r.intra[p] + r.inter[p];
        double mx = r.comp[p];
        if (r.intra[p] > mx) mx = r.intra[p];
        if (r.inter[p] > mx) mx = r.inter[p];
        r.overlap += mx;
    }
    /* what binds the overlapped step: each pass's time goes to its slowest resource */
    double by[3] = {0, 0, 0};
    for (int p = 0; p < 2; p++) {
        int w = r.comp[p] >= r.intra[p] && r.comp[p] >= r.inter[p] ? 0 : r.inter[p] >= r.intra[p] ? 2 : 1;
        by[w] += w == 0 ? r.comp[p] : w == 1 ? r.intra[p] : r.inter[p];
    }
    r.bound = by[0] >= by[1] && by[0] >= by[2] ? "compute" : by[2] >= by[1] ? "inter" : "intra";
    if (r.no_overlap > 0) {
        r.tok_no_overlap = t->tokens / r.no_overlap;
        r.tok_overlap = t->tokens / r.overlap;
        r.mfu_no_overlap = t->model_flops / (r.no_overlap * p16);
        r.mfu_overlap = t->model_flops / (r.overlap * p16);
    }
    return r;
}

/* ------------------------------------------------------------------ fit */

double perf_max_total(const perf_model *m, const perf_layout *l) {
    int first, hi, lo;
    perf_expert_range(m->E, l->ep, 0, &first, &hi); /* rank 0 owns the most */
    perf_expert_range(m->E, l->ep, l->ep - 1, &first, &lo);
    double a = perf_memory(m, l, hi).total, b = perf_memory(m, l, lo).total;
    return a > b ? a : b;
}

int perf_fit_seq(const perf_model *m, const perf_layout *l, double bytes) {
    perf_layout x = *l;
    int lo = 0, hi = m->max_pos; /* memory grows with seq_len: the largest that fits */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        x.seq_len = mid;
        if (perf_max_total(m, &x) <= bytes) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

int perf_fit_micro(const perf_model *m, const perf_layout *l, double bytes) {
    perf_layout x = *l;
    int lo = 0, hi = 1 << 16;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        x.micro_batch = mid;
        if (perf_max_total(m, &x) <= bytes) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

int perf_hidden_seq(const perf_model *m, const perf_layout *l, const perf_gpu *g, const perf_eta *eta,
                    double intra_gbs, double inter_gbs, int step) {
    perf_layout x = *l;
    int first, e;
    perf_expert_range(m->E, l->ep, 0, &first, &e);
    if (step < 1) step = 1;
    for (int S = step; S <= m->max_pos; S += step) {
        x.seq_len = S;
        perf_traffic t = perf_step(m, &x, e, g->fp8_tflops > 0);
        perf_time tm = perf_time_of(&t, g, eta, intra_gbs, inter_gbs);
        if (tm.inter[0] <= tm.comp[0] && tm.inter[1] <= tm.comp[1]) return S;
    }
    return 0;
}

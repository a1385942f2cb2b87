/* params.c — enumerate DeepSeek-V3 tensors with HF names, shapes and flags. */
#include "params.h"

#include "lora.h"
#include "../error.h"
#include "../ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int add(param_table *pt, int group, int kind, int flags, int ndim, int64_t a, int64_t b,
               int64_t c, const char *fmt, ...) {
    if (pt->n == pt->cap) {
        pt->cap = pt->cap ? 2 * pt->cap : 256;
        pt->t = realloc(pt->t, (size_t)pt->cap * sizeof *pt->t);
        if (!pt->t) return -1;
    }
    param_spec *s = &pt->t[pt->n++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = ndim;
    s->shape[0] = a;
    s->shape[1] = b;
    s->shape[2] = c;
    s->numel = a * (ndim > 1 ? b : 1) * (ndim > 2 ? c : 1);
    s->numel_local = (kind == SEG_EXPERT) ? s->numel / a * pt->e_local : s->numel;
    if (flags & P_STORED) s->numel_local = 0; /* in the frozen store, not the floats */
    s->group = group;
    s->kind = kind;
    s->flags = flags;
    return 0;
}

/* What the table is built from (a copy: model config and LoRA settings). */
typedef struct {
    deck_model model;
    deck_lora lora;
} cfg;

int params_base_dtype(const deck_lora *lora) {
    if (!lora || !lora->enabled) return OPS_F32;
    return !strcmp(lora->base_dtype, "bf16") ? OPS_BF16 : !strcmp(lora->base_dtype, "fp8") ? OPS_FP8_E4M3 : OPS_F32;
}

int params_gemm_dtype(const deck_lora *lora) { /* a narrow base's GEMMs, or (no LoRA) the bf16 working weights' */
    if (!lora) return OPS_GEMM_F32;
    return !strcmp(lora->gemm_dtype, "bf16") ? OPS_GEMM_BF16 : !strcmp(lora->gemm_dtype, "fp8") ? OPS_GEMM_FP8 : OPS_GEMM_F32;
}

int params_copied(const param_spec *t) {
    return !(t->flags & (P_FROZEN | P_NOGRAD | P_STORED | P_LORA)) && t->ndim >= 2 && !strstr(t->name, "embed_tokens") &&
           !strstr(t->name, "mlp.gate.weight");
}

int params_embed_stored(const deck_lora *lora) {
    return lora && lora->enabled && !strcmp(lora->embed_dtype, "bf16");
}

/* Frozen linear weights (MLA projections, dense and shared MLP, stacked
 * routed experts) go to the frozen store when train.base_dtype is narrow. */
static int stored_flag(const cfg *d) { return params_base_dtype(&d->lora) != OPS_F32 ? P_STORED : 0; }

/* A linear [out, in] with an optional LoRA pair right after it. */
static void linear(param_table *pt, const cfg *d, int g, int layer, int is_mtp, const char *module,
                   int64_t out, int64_t in) {
    int frozen = d->lora.enabled ? P_FROZEN | stored_flag(d) : 0;
    add(pt, g, SEG_DENSE, frozen, 2, out, in, 0, "model.layers.%d.%s.weight", layer, module);
    if (lora_rank_of(&d->lora, module, is_mtp) > 0) {
        add(pt, g, SEG_DENSE, P_LORA, 2, d->lora.r, in, 0, "model.layers.%d.%s.lora_A.weight", layer, module);
        add(pt, g, SEG_DENSE, P_LORA, 2, out, d->lora.r, 0, "model.layers.%d.%s.lora_B.weight", layer, module);
    }
}

static void norm(param_table *pt, const cfg *d, int g, const char *fmt, int layer, int64_t n) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    add(pt, g, SEG_DENSE, P_NODECAY | (d->lora.enabled ? P_FROZEN : 0), 1, n, 0, 0, "%s", name);
}

static void decoder_layer(param_table *pt, const cfg *d, int layer, int is_mtp, int moe) {
    const deck_model *m = &d->model;
    int g = layer + 1, frozen = d->lora.enabled ? P_FROZEN : 0;
    int64_t H = m->hidden_size, nh = m->num_attention_heads;
    int64_t qk = m->qk_nope_head_dim + m->qk_rope_head_dim;
    norm(pt, d, g, "model.layers.%d.input_layernorm.weight", layer, H);
    if (m->q_lora_rank > 0) {
        linear(pt, d, g, layer, is_mtp, "self_attn.q_a_proj", m->q_lora_rank, H);
        norm(pt, d, g, "model.layers.%d.self_attn.q_a_layernorm.weight", layer, m->q_lora_rank);
        linear(pt, d, g, layer, is_mtp, "self_attn.q_b_proj", nh * qk, m->q_lora_rank);
    } else {
        linear(pt, d, g, layer, is_mtp, "self_attn.q_proj", nh * qk, H);
    }
    linear(pt, d, g, layer, is_mtp, "self_attn.kv_a_proj_with_mqa", m->kv_lora_rank + m->qk_rope_head_dim, H);
    norm(pt, d, g, "model.layers.%d.self_attn.kv_a_layernorm.weight", layer, m->kv_lora_rank);
    linear(pt, d, g, layer, is_mtp, "self_attn.kv_b_proj", nh * (m->qk_nope_head_dim + m->v_head_dim),
           m->kv_lora_rank);
    linear(pt, d, g, layer, is_mtp, "self_attn.o_proj", H, nh * m->v_head_dim);
    norm(pt, d, g, "model.layers.%d.post_attention_layernorm.weight", layer, H);
    if (!moe) {
        linear(pt, d, g, layer, is_mtp, "mlp.gate_proj", m->intermediate_size, H);
        linear(pt, d, g, layer, is_mtp, "mlp.up_proj", m->intermediate_size, H);
        linear(pt, d, g, layer, is_mtp, "mlp.down_proj", H, m->intermediate_size);
        return;
    }
    int64_t E = m->n_routed_experts, I = m->moe_intermediate_size;
    add(pt, g, SEG_DENSE, frozen, 2, E, H, 0, "model.layers.%d.mlp.gate.weight", layer);
    add(pt, g, SEG_DENSE, P_NOGRAD | P_NODECAY, 1, E, 0, 0, "model.layers.%d.mlp.gate.e_score_correction_bias",
        layer);
    if (m->n_shared_experts > 0) {
        int64_t Is = I * m->n_shared_experts;
        linear(pt, d, g, layer, is_mtp, "mlp.shared_experts.gate_proj", Is, H);
        linear(pt, d, g, layer, is_mtp, "mlp.shared_experts.up_proj", Is, H);
        linear(pt, d, g, layer, is_mtp, "mlp.shared_experts.down_proj", H, Is);
    }
    static const char *const ex[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int j = 0; j < 3; j++) { /* stacked [E, out, in], then per-expert adapters [E, r, in], [E, out, r] */
        int64_t out = j < 2 ? I : H, in = j < 2 ? H : I, r = d->lora.r;
        char module[64];
        snprintf(module, sizeof module, "mlp.experts.%s", ex[j]);
        add(pt, g, SEG_EXPERT, P_EXPERT | frozen | (frozen ? stored_flag(d) : 0), 3, E, out, in,
            "model.layers.%d.%s.weight", layer, module);
        if (lora_rank_of(&d->lora, module, is_mtp) > 0) {
            add(pt, g, SEG_EXPERT, P_EXPERT | P_LORA, 3, E, r, in, "model.layers.%d.%s.lora_A.weight", layer, module);
            add(pt, g, SEG_EXPERT, P_EXPERT | P_LORA, 3, E, out, r, "model.layers.%d.%s.lora_B.weight", layer, module);
        }
    }
}

int params_build(param_table *pt, const deck_model *model, const deck_lora *lora, int ep, char *err, int errlen) {
    if (ep < 1 || model->n_routed_experts % ep) {
        memset(pt, 0, sizeof *pt);
        snprintf(err, errlen, "n_routed_experts %d not divisible by expert_parallel %d", model->n_routed_experts, ep);
        return -1;
    }
    return params_build_owned(pt, model, lora, ep, model->n_routed_experts / ep, err, errlen);
}

int params_build_owned(param_table *pt, const deck_model *model, const deck_lora *lora, int ep, int e_local,
                       char *err, int errlen) {
    static const deck_lora no_lora;
    cfg c = {*model, lora ? *lora : no_lora};
    const cfg *d = &c;
    const deck_model *m = &d->model;
    memset(pt, 0, sizeof *pt);
    pt->ep = ep;
    pt->e_local = e_local;
    if (ep < 1 || e_local < 0 || e_local > m->n_routed_experts) {
        snprintf(err, errlen, "expert_parallel %d with %d local experts of %d", ep, e_local, m->n_routed_experts);
        return -1;
    }
    int L = m->num_hidden_layers, D = m->num_nextn_predict_layers, frozen = d->lora.enabled ? P_FROZEN : 0;
    int64_t V = m->vocab_size, H = m->hidden_size;
    pt->n_groups = L + D + 2;
    int emb = params_embed_stored(&d->lora) ? P_STORED : 0; /* bf16 in the frozen store */
    add(pt, 0, SEG_DENSE, frozen | emb, 2, V, H, 0, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) decoder_layer(pt, d, l, 0, l >= m->first_k_dense_replace);
    for (int k = 0; k < D; k++) {
        int layer = L + k, g = layer + 1;
        norm(pt, d, g, "model.layers.%d.enorm.weight", layer, H);
        norm(pt, d, g, "model.layers.%d.hnorm.weight", layer, H);
        add(pt, g, SEG_DENSE, frozen, 2, H, 2 * H, 0, "model.layers.%d.eh_proj.weight", layer);
        decoder_layer(pt, d, layer, 1, 1);
        norm(pt, d, g, "model.layers.%d.shared_head.norm.weight", layer, H);
    }
    add(pt, L + D + 1, SEG_DENSE, P_NODECAY | frozen, 1, H, 0, 0, "model.norm.weight");
    add(pt, L + D + 1, SEG_DENSE, frozen | emb, 2, V, H, 0, "lm_head.weight");

    /* Offsets: for each group its dense segment, then its expert segment. */
    pt->seg = calloc((size_t)2 * pt->n_groups, sizeof *pt->seg);
    if (!pt->seg || !pt->t) {
        snprintf(err, errlen, "out of memory for the tensor table");
        params_free(pt);
        return -1;
    }
    size_t off = 0;
    for (int g = 0; g < pt->n_groups; g++)
        for (int kind = 0; kind < 2; kind++) {
            param_segment s = {g, kind, off, 0};
            for (int i = 0; i < pt->n; i++)
                if (pt->t[i].group == g && pt->t[i].kind == kind) {
                    pt->t[i].offset = off;
                    off += (size_t)pt->t[i].numel_local;
                }
            s.numel = off - s.offset;
            if (s.numel) pt->seg[pt->nseg++] = s;
        }
    pt->total_local = off;
    /* the frozen store: data then scales of each P_STORED tensor, 64-byte
     * aligned; the non-expert tensors first (pass 0: with lora.node_shared the
     * part one copy per node holds, padded to whole pages), then the experts */
    size_t so = 0;
    int bd = params_base_dtype(&d->lora);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < pt->n; i++) {
            param_spec *t = &pt->t[i];
            if (!(t->flags & P_STORED) || (t->kind == SEG_EXPERT) != pass) continue;
            int64_t rows = t->shape[t->ndim - 2], cols = t->shape[t->ndim - 1];
            t->dtype = t->group == 0 || t->group == L + D + 1 ? OPS_BF16 : bd; /* embedding, lm_head: bf16 */
            t->n_mat = t->ndim == 3 ? pt->e_local : 1;
            size_t data = (size_t)t->n_mat * (size_t)rows * (size_t)cols * (t->dtype == OPS_BF16 ? 2 : 1);
            size_t nsc = t->dtype == OPS_FP8_E4M3 ? (size_t)t->n_mat * (size_t)((rows + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK) *
                                                  (size_t)((cols + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK)
                                            : 0;
            t->soff = so;
            t->sscale = (data + 63) / 64 * 64;
            t->sbytes = t->sscale + (nsc * sizeof(float) + 63) / 64 * 64;
            so += t->sbytes;
        }
        if (pass == 0 && d->lora.node_shared) so = pt->shared_bytes = (so + 4095) / 4096 * 4096;
    }
    pt->stored_bytes = so;
    for (int i = 0; i < pt->n; i++) {
        pt->n_params += (pt->t[i].flags & P_LORA) ? 0 : pt->t[i].numel;
        if (!(pt->t[i].flags & (P_FROZEN | P_NOGRAD))) pt->n_trainable += pt->t[i].numel;
    }
    return 0;
}

size_t params_shared_share(const param_table *pt, int r, int n, size_t *first) {
    size_t pages = pt->shared_bytes / 4096, a = pages * (size_t)r / (size_t)n, b = pages * (size_t)(r + 1) / (size_t)n;
    if (first) *first = a * 4096;
    return (b - a) * 4096;
}

int params_shared_writer(const param_table *pt, int i, int n) {
    const param_spec *t = &pt->t[i];
    if (!(t->flags & P_STORED) || t->soff >= pt->shared_bytes) return -1;
    for (int r = 0; r < n; r++) {
        size_t a, len = params_shared_share(pt, r, n, &a);
        if (t->soff >= a && t->soff < a + len) return r;
    }
    return n - 1;
}

void params_free(param_table *pt) {
    free(pt->t);
    free(pt->seg);
    memset(pt, 0, sizeof *pt);
}

int params_find(const param_table *pt, const char *name) {
    for (int i = 0; i < pt->n; i++)
        if (strcmp(pt->t[i].name, name) == 0) return i;
    return -1;
}

uint64_t params_name_key(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

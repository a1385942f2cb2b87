/* cost.c — FLOPs and activation bytes from the config alone (cost.h). */
#include "cost.h"

#include <math.h>
#include <string.h>

#include "linear.h"
#include "lora.h"
#include "mla.h"
#include "mlp.h"
#include "moe.h"
#include "params.h"

double cost_flops_per_token(const model_opts *o) {
    const deck_model *c = o->cfg;
    param_table pt;
    char err[256];
    if (params_build(&pt, c, o->lora, 1, err, sizeof err)) return 0.0;
    double f = 0.0;
    for (int i = 0; i < pt.n; i++) {
        const param_spec *s = &pt.t[i];
        if (s->ndim < 2 || strstr(s->name, "embed_tokens")) continue; /* norms, biases, lookups */
        double n = (double)s->numel;
        if (s->flags & P_EXPERT) n *= (double)c->num_experts_per_tok / (double)c->n_routed_experts;
        f += ((s->flags & P_FROZEN) ? 4.0 : 6.0) * n;
        if (strcmp(s->name, "lm_head.weight") == 0) f += 6.0 * n * c->num_nextn_predict_layers; /* MTP heads */
    }
    params_free(&pt);
    double T = o->seq_len, nh = c->num_attention_heads;
    double qk = c->qk_nope_head_dim + c->qk_rope_head_dim, v = c->v_head_dim;
    double layers = c->num_hidden_layers + c->num_nextn_predict_layers;
    f += layers * 3.0 * 2.0 * nh * (qk + v) * (T + 1) / 2.0;
    return f;
}

/* ------------------------------------------------ CPU model accounting */

int cost_moe_row_cap(const deck_model *c, int N, int ep, int e_local) {
    /* balanced routing sends a rank its share e_local/E of all EP·N·K pairs: N·K at an even split */
    size_t E = (size_t)c->n_routed_experts, all = (size_t)ep * moe_rows_expected(N, c->num_experts_per_tok);
    return (int)((all * (size_t)e_local + E - 1) / (E ? E : 1) + (size_t)N);
}

/* A linear's shape and LoRA rank: all the cache formulas read. */
static linear shape(const model_opts *o, const char *module, int is_mtp, int in, int out) {
    linear l;
    memset(&l, 0, sizeof l);
    l.in = in;
    l.out = out;
    l.r = lora_rank_of(o->lora, module, is_mtp);
    l.dropout = l.r > 0 ? (float)o->lora->dropout : 0.0f;
    return l;
}

double cost_block_cache_bytes(const model_opts *o, int layer, int ep, int e_local, int B, int T) {
    const deck_model *c = o->cfg;
    int L = c->num_hidden_layers, is_mtp = layer >= L, is_moe = is_mtp || layer >= c->first_k_dense_replace;
    int N = B * T, H = c->hidden_size;
    int nh = c->num_attention_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim, ql = c->q_lora_rank;
    int kl = c->kv_lora_rank, dr = c->qk_rope_head_dim, dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    linear kva = shape(o, "self_attn.kv_a_proj_with_mqa", is_mtp, H, kl + dr);
    linear kvb = shape(o, "self_attn.kv_b_proj", is_mtp, kl, nh * (dn + dv));
    linear op = shape(o, "self_attn.o_proj", is_mtp, nh * dv, H);
    size_t rs = linear_cache_floats(&kva) + linear_cache_floats(&kvb) + linear_cache_floats(&op);
    if (ql > 0) {
        linear qa = shape(o, "self_attn.q_a_proj", is_mtp, H, ql), qb = shape(o, "self_attn.q_b_proj", is_mtp, ql, nh * qk);
        rs += linear_cache_floats(&qa) + linear_cache_floats(&qb);
    } else {
        linear q = shape(o, "self_attn.q_proj", is_mtp, H, nh * qk);
        rs += linear_cache_floats(&q);
    }
    double f = (double)mla_cache_floats(c, (int)rs, B, T);
    if (is_moe) {
        moe_layer e;
        memset(&e, 0, sizeof e);
        int Is = c->moe_intermediate_size * c->n_shared_experts;
        e.has_shared = c->n_shared_experts > 0;
        e.e_local = e_local;
        e.overlap = o->moe_overlap;
        static const char *const ex[3] = {"mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj"};
        for (int j = 0; j < 3; j++) e.er[j] = lora_rank_of(o->lora, ex[j], is_mtp);
        e.sh_gate = shape(o, "mlp.shared_experts.gate_proj", is_mtp, H, Is);
        e.sh_up = shape(o, "mlp.shared_experts.up_proj", is_mtp, H, Is);
        e.sh_down = shape(o, "mlp.shared_experts.down_proj", is_mtp, Is, H);
        f += (double)moe_cache_floats(c, &e, ep, N, cost_moe_row_cap(c, N, ep, e_local));
    } else {
        int I = c->intermediate_size;
        mlp_layer d = {shape(o, "mlp.gate_proj", is_mtp, H, I), shape(o, "mlp.up_proj", is_mtp, H, I),
                       shape(o, "mlp.down_proj", is_mtp, I, H)};
        f += (double)mlp_cache_floats(&d, N);
    }
    return 4.0 * f;
}

double cost_base_act_bytes(const model_opts *o, int B, int T) {
    const deck_model *c = o->cfg;
    double N = (double)B * T, H = c->hidden_size, V = c->vocab_size, f = 0.0;
    int L = c->num_hidden_layers, nblocks = L + c->num_nextn_predict_layers;
    /* Per block its input x_in and norms xn1, x_mid, xn2, rstd1, rstd2. With
     * activation checkpointing a main block's norms live only from its
     * (re)computation to its backward, like its caches: the main blocks share
     * one set, and keep only their inputs (the MTP blocks keep theirs). With
     * act_bf16 a main block keeps its input in bf16 (ceil(N·H/2) floats) and
     * widens it into one shared fp32 [N,H] for its recompute and backward. */
    double xin = o->act_bf16 ? ceil(N * H / 2) : N * H;
    if (L > 0) f += (o->checkpointing ? 3 * N * H + 2 * N : 0.0) + (o->act_bf16 ? N * H : 0.0);
    for (int i = 0; i < nblocks; i++) {
        f += i >= L ? 4 * N * H + 2 * N : xin + (o->checkpointing ? 0.0 : 3 * N * H + 2 * N);
        if (i >= L) {
            linear eh = shape(o, "eh_proj", 1, 2 * (int)H, (int)H);
            f += N * H /* x_out */ + 3 * N * H + 2 * N /* e, en, hn, rstds */ +
                 2 * N * H + N * (double)(linear_cache_floats(&eh) + 1) + N * H + N; /* cat, eh, z */
        }
    }
    f += (2.0 + 2 * c->num_nextn_predict_layers) * N; /* ids: tokens, targets, MTP e_ids, targets (int32) */
    f += N * H + N + N * H + N * V + 3 * N * H;     /* x_final, rstd, h_final, logits (dlogits in place), dx, tmp, dh */
    f += N * H;                                     /* recomputed block output */
    if (nblocks > L) f += 4 * N * H;                /* MTP backward scratch: dcat [N,2H], de, dh */
    f += (double)cost_scratch_floats(o, B, T);      /* the components' scratch arena */
    return 4.0 * f;
}

size_t cost_scratch_floats(const model_opts *o, int B, int T) {
    const deck_model *c = o->cfg;
    int N = B * T, r = o->lora && o->lora->enabled ? o->lora->r : 0, dp = r > 0 && o->lora->dropout > 0;
    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers, H = c->hidden_size;
    size_t f = mla_scratch_floats(c, r, dp, B, T, params_gemm_dtype(o->lora)), x;
    if (c->first_k_dense_replace > 0 && (x = mlp_scratch_floats(H, c->intermediate_size, r, dp, N)) > f) f = x;
    if ((L > c->first_k_dense_replace || D > 0) && (x = moe_scratch_floats(c, r, dp, N)) > f) f = x;
    if (D > 0 && (x = linear_scratch_floats(2 * H, H, 0, 0, N)) > f) f = x;   /* eh_proj: no LoRA in MTP */
    if ((x = linear_scratch_floats(H, c->vocab_size, 0, 0, N)) > f) f = x;    /* lm_head: no LoRA */
    return f + ops_arena_round(cost_tile_floats(o));
}

/* A GEMM with a weight stored narrow takes its dequantisation tile from the
 * arena while its component may hold its own peak: the arena is the largest
 * component peak plus the largest tile (ops_matmul_w_scratch_floats: the
 * dequantisation tile, and with train.gemm_dtype bf16/fp8 the activation chunk) over the
 * weights held narrow — the frozen store's tensors (params.h P_STORED, one
 * expert's matrix for the stacked experts) and the bf16 weights of
 * trainable linears (act_bf16, params_copied). 0 with neither. */
size_t cost_tile_floats(const model_opts *o) {
    param_table pt;
    char err[256];
    if (params_build(&pt, o->cfg, o->lora, 1, err, sizeof err)) return 0;
    size_t f = 0;
    for (int i = 0; i < pt.n; i++) {
        const param_spec *s = &pt.t[i];
        int copied = o->act_bf16 && params_copied(s);
        if (!(s->flags & P_STORED) && !copied) continue;
        size_t x = ops_matmul_w_scratch_floats(copied ? OPS_BF16 : (ops_dtype)s->dtype, params_gemm_dtype(o->lora),
                                               (int)s->shape[s->ndim - 2], (int)s->shape[s->ndim - 1]);
        if (x > f) f = x;
    }
    params_free(&pt);
    return f;
}

double cost_cache_region_bytes(const model_opts *o, int ep, int e_local, int B, int T) {
    const deck_model *c = o->cfg;
    int L = c->num_hidden_layers, nblocks = L + c->num_nextn_predict_layers;
    double all = 0.0, mtp = 0.0, biggest = 0.0;
    for (int i = 0; i < nblocks; i++) {
        double x = cost_block_cache_bytes(o, i, ep, e_local, B, T);
        all += x;
        if (i >= L) mtp += x;
        else if (x > biggest) biggest = x;
    }
    return o->checkpointing ? fmax(mtp, biggest) : all;
}

double cost_host_act_bytes(const model_opts *o, int ep, int e_local, int B, int T) {
    const deck_model *c = o->cfg;
    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers, nblocks = L + D, n_moe = 0;
    for (int i = 0; i < nblocks; i++) n_moe += i >= L || i >= c->first_k_dense_replace;
    return 4.0 * n_moe * (double)moe_cache_host_ints(c->n_routed_experts, e_local, ep, o->moe_overlap ? 2 : 1) +
           4.0 * (2.0 + 2 * D) * B * T; /* the ids' host staging (model.c: batch_to_device) */
}

double cost_act_bytes(const model_opts *o, int ep, int e_local, int B, int T) {
    if (ep < 1 || e_local < 0) return 0.0;
    return cost_base_act_bytes(o, B, T) + cost_cache_region_bytes(o, ep, e_local, B, T) +
           cost_host_act_bytes(o, ep, e_local, B, T);
}

/* ------------------------------------------------ GPU layout estimate */

/* Saved floats per token of one decoder layer (every tensor its backward
 * reads). H hidden, nh heads, qk = dn+dr, k top-k, I expert width.
 *   MLA   x (layer input)             H
 *         input_layernorm out + rstd  H + 1
 *         q_a out, q_a_layernorm out  2*q_lora_rank + 1   (q_lora_rank > 0)
 *         q after RoPE                nh*qk
 *         kv_a out (c ; k_pe)         kv_lora_rank + dr
 *         kv_a_layernorm out + rstd   kv_lora_rank + 1
 *         k assembled, v              nh*qk + nh*dv
 *         attention lse, output       nh + nh*dv            (flash-style: no [T,T])
 *         LoRA x·Aᵀ per target        r each (+ in-sized dropout mask if dropout > 0)
 *         residual after attention    H
 *         post_attention_layernorm    H + 1
 *   MLP   gate, up, silu(gate)*up     3*intermediate_size
 *   MoE   router scores               E
 *         top-k ids and weights       2*k
 *         dispatched rows (received)  k*H
 *         expert gate, up, act        3*k*I
 *         expert outputs (combine in) k*H
 *         routed-expert LoRA x·Aₑᵀ    k*r per target
 *         shared gate, up, act        3*I*n_shared
 * The layer output is the next layer's input x and is counted there. */
double cost_gpu_layer_floats(const model_opts *o, int moe, int lora) {
    const deck_model *m = o->cfg;
    double H = m->hidden_size, nh = m->num_attention_heads, dn = m->qk_nope_head_dim, dr = m->qk_rope_head_dim,
           dv = m->v_head_dim, qr = m->q_lora_rank, kr = m->kv_lora_rank, qk = dn + dr;
    double f = H + (H + 1);
    f += qr > 0 ? 2 * qr + 1 : 0;
    f += nh * qk;
    f += (kr + dr) + (kr + 1);
    f += nh * qk + nh * dv;
    f += nh + nh * dv;
    if (lora) {
        struct { const char *name; double in; } tg[] = {
            {"self_attn.q_a_proj", H},  {"self_attn.q_b_proj", qr}, {"self_attn.q_proj", H},
            {"self_attn.kv_a_proj_with_mqa", H}, {"self_attn.kv_b_proj", kr}, {"self_attn.o_proj", nh * dv}};
        for (size_t j = 0; j < sizeof tg / sizeof tg[0]; j++) {
            int r = lora_rank_of(o->lora, tg[j].name, 0);
            if (r > 0 && (qr > 0) != (j == 2)) f += r + (o->lora->dropout > 0 ? tg[j].in : 0);
        }
    }
    f += H + (H + 1);
    if (!moe) return f + 3.0 * m->intermediate_size;
    double k = m->num_experts_per_tok, I = m->moe_intermediate_size;
    f += m->n_routed_experts + 2 * k;
    f += k * H + 3 * k * I + k * H;
    static const char *const ex[3] = {"mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj"};
    for (int j = 0; lora && j < 3; j++) f += k * lora_rank_of(o->lora, ex[j], 0); /* routed-expert LoRA x·Aₑᵀ */
    f += 3 * I * m->n_shared_experts;
    return f;
}

double cost_gpu_act_bytes(const model_opts *o, double tokens, double es) {
    const deck_model *m = o->cfg;
    double T = tokens, H = m->hidden_size;
    int L = m->num_hidden_layers, D = m->num_nextn_predict_layers, k0 = m->first_k_dense_replace;
    double all = 0, biggest = 0;
    for (int l = 0; l < L + D; l++) {
        int moe = l >= k0 && m->n_routed_experts > 0;
        double f = cost_gpu_layer_floats(o, moe, l < L);
        all += f;
        if (f > biggest) biggest = f;
    }
    /* MTP block extras per depth: shifted embedding H, enorm/hnorm outputs =
     * eh_proj input 2H + 2 rstd, shared_head.norm output H + 1. */
    double mtp = D * (H + 2 * H + 2 + H + 1);
    /* With checkpointing: the L+D layer inputs stay, one layer is recomputed. */
    double layers = o->checkpointing ? (L + D) * H + biggest : all;
    /* Backward scratch: residual-stream gradient (2H) and one layer's gradients. */
    double scratch = 2 * H + biggest;
    double head = H + 1; /* final norm output + rstd */
    double act = T * es * (layers + mtp + scratch + head);
    /* One fp32 [T, V] logits/dlogits buffer, reused by the MTP heads, + per-token loss. */
    act += T * 4.0 * ((double)m->vocab_size + 1);
    return act;
}

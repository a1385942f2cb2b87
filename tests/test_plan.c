/* test_plan.c — the layout plan (src/plan.c) and the comm wrappers at one
 * rank: ownership, row-aligned shards, validation messages, the memory
 * estimate and its accounting identities, LoRA parameter counts for the
 * reference SFT layout (24 ranks, EP 8, looked at rank by rank through
 * plan_layout without MPI). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <mpi.h>

#include "../src/comm.h"
#include "../src/deck.h"
#include "../src/zero.h"
#include "../src/model/cost.h"
#include "../src/model/model.h"
#include "../src/model/moe.h"
#include "../src/plan.h"

/* DeepSeek-V3 671B dims with the reference LoRA SFT settings (input/sft.cfg). */
static void deck_v3(deck *d) {
    memset(d, 0, sizeof *d);
    deck_model *m = &d->model;
    m->vocab_size = 129280;
    m->hidden_size = 7168;
    m->intermediate_size = 18432;
    m->moe_intermediate_size = 2048;
    m->num_hidden_layers = 61;
    m->first_k_dense_replace = 3;
    m->n_routed_experts = 256;
    m->n_shared_experts = 1;
    m->num_experts_per_tok = 8;
    m->n_group = 8;
    m->topk_group = 4;
    m->q_lora_rank = 1536;
    m->kv_lora_rank = 512;
    m->qk_nope_head_dim = 128;
    m->qk_rope_head_dim = 64;
    m->v_head_dim = 128;
    m->num_attention_heads = 128;
    m->num_nextn_predict_layers = 1;
    d->parallel.expert_parallel = 8;
    d->parallel.zero_stage = 3;
    d->parallel.activation_checkpointing = true;
    d->train.micro_batch = 1;
    d->train.global_batch = 24;
    d->train.seq_len = 4096;
    snprintf(d->train.dtype, DECK_STR, "bf16");
    d->lora.enabled = true;
    d->lora.r = 16;
    d->lora.alpha = 32;
    const char *tg[] = {"self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa",
                        "self_attn.kv_b_proj", "self_attn.o_proj"};
    d->lora.n_targets = 5;
    for (int i = 0; i < 5; i++) snprintf(d->lora.targets[i], DECK_STR, "%s", tg[i]);
}

/* A small DeepSeek-V3-shaped model, full training in fp32. */
static void deck_tiny(deck *d) {
    memset(d, 0, sizeof *d);
    deck_model *m = &d->model;
    m->vocab_size = 256;
    m->hidden_size = 64;
    m->intermediate_size = 128;
    m->moe_intermediate_size = 32;
    m->num_hidden_layers = 3;
    m->first_k_dense_replace = 1;
    m->n_routed_experts = 8;
    m->n_shared_experts = 1;
    m->num_experts_per_tok = 2;
    m->n_group = 2;
    m->topk_group = 1;
    m->q_lora_rank = 32;
    m->kv_lora_rank = 16;
    m->qk_nope_head_dim = 16;
    m->qk_rope_head_dim = 8;
    m->v_head_dim = 16;
    m->num_attention_heads = 4;
    m->num_nextn_predict_layers = 1;
    d->parallel.expert_parallel = 1;
    d->parallel.zero_stage = 0;
    d->train.micro_batch = 1;
    d->train.global_batch = 24;
    d->train.seq_len = 32;
    snprintf(d->train.dtype, DECK_STR, "fp32");
}

static int expert_row_len(const param_spec *t) { return (int)(t->ndim > 1 ? t->shape[t->ndim - 1] : 1); }

/* Every shard of every segment: contiguous cover, whole rows, near-equal, compact view consistent. */
static void check_shards(const plan *p) {
    const param_table *pt = &p->params;
    for (int si = 0; si < pt->nseg; si++) {
        const param_segment *s = &pt->seg[si];
        const plan_shard *sh = &p->shard[si];
        int n = sh->nmemb;
        assert_int_equal(n, s->kind == SEG_EXPERT ? p->dp : p->world_size);
        size_t maxrow = 1, trainable = 0;
        for (int i = 0; i < pt->n; i++) {
            const param_spec *t = &pt->t[i];
            if (t->group != s->group || t->kind != s->kind) continue;
            if ((size_t)expert_row_len(t) > maxrow) maxrow = (size_t)expert_row_len(t);
            if (plan_param_trainable(t)) trainable += (size_t)t->numel_local;
            /* a boundary inside the tensor falls on a row boundary */
            size_t a = t->offset - s->offset, b = a + (size_t)t->numel_local;
            for (int k = 0; k < n; k++)
                if (sh->off[k] > a && sh->off[k] < b) assert_int_equal((sh->off[k] - a) % (size_t)expert_row_len(t), 0);
        }
        assert_int_equal(sh->trainable, trainable);
        size_t at = 0, tat = 0;
        double ideal = (double)s->numel / n;
        for (int k = 0; k < n; k++) {
            assert_int_equal(sh->off[k], at);
            assert_int_equal(sh->toff[k], tat);
            at += sh->cnt[k];
            tat += sh->tcnt[k];
            double dev = (double)sh->cnt[k] - ideal;
            assert_true(dev <= (double)maxrow + 1 && dev >= -(double)maxrow - 1);
            if (sh->cnt[k]) {
                assert_int_equal(plan_shard_owner(sh, sh->off[k]), k);
                assert_int_equal(plan_shard_owner(sh, sh->off[k] + sh->cnt[k] - 1), k);
            }
            /* compact count = trainable floats inside [off, off+cnt) */
            size_t tc = 0;
            for (int i = 0; i < pt->n; i++) {
                const param_spec *t = &pt->t[i];
                if (t->group != s->group || t->kind != s->kind || !plan_param_trainable(t)) continue;
                size_t a = t->offset - s->offset, b = a + (size_t)t->numel_local;
                size_t lo = sh->off[k] > a ? sh->off[k] : a, hi = sh->off[k] + sh->cnt[k] < b ? sh->off[k] + sh->cnt[k] : b;
                if (hi > lo) tc += hi - lo;
            }
            assert_int_equal(sh->tcnt[k], tc);
        }
        assert_int_equal(at, s->numel);
        assert_int_equal(tat, sh->trainable);
    }
}

static void test_sft_layout(void **state) {
    (void)state;
    deck d;
    deck_v3(&d);
    char err[512];
    double sum_params = 0;
    size_t sum_trainable = 0, sum_dense = 0, sum_expert = 0;
    for (int r = 0; r < 24; r++) {
        plan p;
        assert_int_equal(plan_layout(&p, &d, 24, r, err, sizeof err), 0);
        assert_int_equal(p.ep, 8);
        assert_int_equal(p.dp, 3);
        assert_int_equal(p.ep_index, r % 8);
        assert_int_equal(p.dp_index, r / 8);
        assert_int_equal(p.experts_per_rank, 32);
        assert_int_equal(p.expert_first, (r % 8) * 32);
        assert_int_equal(p.grad_accum, 1);
        assert_int_equal(p.n_moe_layers, 59);
        assert_int_equal(p.params.n_trainable, 97006592);
        if (r == 0 || r == 23) check_shards(&p);
        for (int si = 0; si < p.params.nseg; si++) {
            int me = p.params.seg[si].kind == SEG_EXPERT ? p.dp_index : r;
            if (p.params.seg[si].kind == SEG_EXPERT) sum_expert += p.shard[si].cnt[me];
            else sum_dense += p.shard[si].cnt[me];
        }
        sum_trainable += p.shard_trainable;
        /* stage 3: params = shard bytes + the gather buffer; the trainer holds fp32 (train.dtype bf16 is the
         * GPU plan's layout) and an unset train.base_dtype keeps the frozen base in the floats */
        sum_params += p.mem.params - 4.0 * (double)p.gather_floats;
        /* categories add up */
        assert_true(p.mem.total == p.mem.params + p.mem.grads + p.mem.optim + p.mem.acts);
        /* LoRA: grads and optimizer state only for adapters, tiny */
        assert_true(p.mem.optim < 1e9);
        plan_free(&p);
    }
    /* Every float is owned once: dense over 24 ranks, experts over each data comm. */
    plan p;
    assert_int_equal(plan_layout(&p, &d, 24, 0, err, sizeof err), 0);
    size_t dense = 0, expert = 0;
    double bytes = 0;
    for (int si = 0; si < p.params.nseg; si++)
        *(p.params.seg[si].kind == SEG_EXPERT ? &expert : &dense) += p.params.seg[si].numel;
    for (int i = 0; i < p.params.n; i++) {
        const param_spec *t = &p.params.t[i];
        bytes += (double)t->numel * 4.0;
    }
    assert_int_equal(sum_dense, dense);
    assert_int_equal(sum_expert, expert * 8); /* 8 expert groups' worth: each data comm covers one ep slice */
    assert_int_equal(sum_trainable, (size_t)p.params.n_trainable);
    assert_true(sum_params == bytes);
    /* 671B + 11.6B MTP unique parameters, fp32, over 24 ranks: about 114 GB of shards */
    assert_true(bytes / 24 > 110e9 && bytes / 24 < 116e9);
    plan_free(&p);
}

static void test_shards_tiny(void **state) {
    (void)state;
    deck d;
    deck_tiny(&d);
    char err[512];
    int eps[] = {1, 2, 4, 8};
    for (int size = 1; size <= 40; size++)
        for (int e = 0; e < 4; e++) {
            if (size % eps[e]) continue;
            d.parallel.expert_parallel = eps[e];
            d.train.global_batch = size * 2;
            plan p;
            assert_int_equal(plan_layout(&p, &d, size, size - 1, err, sizeof err), 0);
            assert_int_equal(p.grad_accum, 2);
            check_shards(&p);
            plan_free(&p);
        }
}

static void test_validation(void **state) {
    (void)state;
    deck d;
    deck_v3(&d);
    char err[512];
    plan p;
    d.parallel.expert_parallel = 5;
    assert_int_equal(plan_layout(&p, &d, 24, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "parallel.expert_parallel = 5 does not divide the world size 24"));
    d.parallel.expert_parallel = 3; /* divides 24, not 256: uneven ownership, planned (86 + 85 + 85) */
    for (int r = 0; r < 3; r++) {
        if (plan_layout(&p, &d, 24, r, err, sizeof err)) fail_msg("%s", err);
        assert_int_equal(p.experts_per_rank, r == 0 ? 86 : 85);
        assert_int_equal(p.expert_first, r == 0 ? 0 : r == 1 ? 86 : 171);
        assert_true(p.mem.total > 0);
        plan_free(&p);
    }
    /* the plan's split is the MoE layer's (moe_expert_range checks the communicator against it) */
    for (int E = 1; E <= 40; E += 3)
        for (int ep = 1; ep <= E; ep++)
            for (int r = 0; r < ep; r++) {
                int f1, n1, f2, n2;
                plan_expert_range(E, ep, r, &f1, &n1);
                moe_expert_range(E, ep, r, &f2, &n2);
                assert_int_equal(f1, f2), assert_int_equal(n1, n2);
                assert_int_equal(n1, E / ep + (r < E % ep));
            }
    d.parallel.expert_parallel = 24; /* 256 on 24: 16 x 11 + 8 x 10 */
    assert_int_equal(plan_layout(&p, &d, 24, 15, err, sizeof err), 0);
    assert_int_equal(p.experts_per_rank, 11), assert_int_equal(p.expert_first, 165);
    plan_free(&p);
    assert_int_equal(plan_layout(&p, &d, 24, 16, err, sizeof err), 0);
    assert_int_equal(p.experts_per_rank, 10), assert_int_equal(p.expert_first, 176);
    plan_free(&p);
    deck_v3(&d);
    d.model.n_routed_experts = 16, d.model.n_group = 8, d.parallel.expert_parallel = 24;
    assert_int_equal(plan_layout(&p, &d, 24, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "expert_parallel = 24 exceeds model.n_routed_experts = 16"));
    deck_v3(&d);
    deck_v3(&d);
    d.parallel.zero_stage = 4;
    assert_int_equal(plan_layout(&p, &d, 24, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "zero_stage = 4"));
    deck_v3(&d);
    d.train.global_batch = 36;
    assert_int_equal(plan_layout(&p, &d, 24, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "train.global_batch = 36 is not divisible"));
    deck_v3(&d);
    d.train.micro_batch = 0;
    assert_int_equal(plan_layout(&p, &d, 24, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "micro_batch = 0"));
    /* plan_build fails alike at one rank, leaves nothing to free */
    deck_tiny(&d);
    d.parallel.expert_parallel = 2;
    assert_int_equal(plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not divide the world size 1"));
    assert_true(p.world == MPI_COMM_NULL && p.expert == MPI_COMM_NULL && p.shard == NULL);
    plan_free(&p);
}

static void test_memory(void **state) {
    (void)state;
    deck d;
    deck_v3(&d);
    d.lora.enabled = false; /* full fine-tune: every stage saves something */
    snprintf(d.train.dtype, DECK_STR, "fp32");
    char err[512];
    plan_memory m[4];
    for (int z = 0; z < 4; z++) {
        d.parallel.zero_stage = z;
        plan p;
        assert_int_equal(plan_layout(&p, &d, 24, 5, err, sizeof err), 0);
        m[z] = p.mem;
        assert_true(p.mem.total == p.mem.params + p.mem.grads + p.mem.optim + p.mem.acts);
        /* the model's own activation accounting, which holds the MoE dispatch rows */
        model_opts mo = deck_model_opts(&d);
        assert_true(p.mem.acts == cost_act_bytes(&mo, p.ep, p.experts_per_rank, d.train.micro_batch, d.train.seq_len));
        assert_true(p.mem.acts > 0.0);
        plan_free(&p);
    }
    assert_true(m[1].optim < m[0].optim / 3 && m[1].params == m[0].params && m[1].grads == m[0].grads);
    assert_true(m[2].grads < m[1].grads / 2 && m[2].optim == m[1].optim);
    assert_true(m[3].params < m[2].params / 2 && m[3].grads == m[2].grads);
    /* train.dtype bf16 is the GPU plan's layout, not the trainer's: the trainer's table (what a run allocates)
     * is fp32's but for the main blocks' inputs, kept in bf16 (61 of [N,H] at 2 bytes, not 4) and widened into
     * one shared fp32 [N,H], and for the trainable linears in bf16. ZeRO 0 (every segment local): their bf16
     * values while open, lm_head's (V x H) and the largest layer's (the MTP layer: MLA, shared expert, this
     * rank's 32 routed experts, eh_proj [H, 2H]). ZeRO 1-2 (EP 8 of 24: every segment shared): the masters are my shard and the working
     * weights resident, 2 bytes per copied weight and 4 per other, plus the packing buffer (at most a shard).
     * ZeRO 3: the gathered groups hold the copied weights in bf16 and nothing else in their place, so the
     * fp32 gather's 4 bytes and the copies' 2 become 2: the same embedding, head and MTP layer open */
    snprintf(d.train.dtype, DECK_STR, "bf16");
    const double NH = 4096.0 * 7168;
    for (int z = 0; z < 4; z++) {
        d.parallel.zero_stage = z;
        plan pb;
        assert_int_equal(plan_layout(&pb, &d, 24, 5, err, sizeof err), 0);
        size_t head = 0, layer = 0, *run = calloc(200, sizeof *run); /* copied elements per group */
        for (int i = 0; i < pb.params.n; i++)
            if (params_copied(&pb.params.t[i])) run[pb.params.t[i].group] += (size_t)pb.params.t[i].numel_local;
        head = run[pb.params.n_groups - 1];
        for (int g = 1; g < pb.params.n_groups - 1; g++) layer = run[g] > layer ? run[g] : layer;
        free(run);
        double mla = 7168.0 * 1536 + 1536.0 * 128 * 192 + 7168.0 * 576 + 512.0 * 128 * 256 + 128.0 * 128 * 7168;
        assert_true(head == 129280u * 7168u && layer == (size_t)(mla + 3.0 * 2048 * 7168 * (1 + 32) + 7168.0 * 14336));
        plan_w16_layout w = {calloc(200, sizeof(size_t)), calloc(200, sizeof(size_t)), calloc(200, sizeof(size_t)),
                             calloc(200, sizeof(size_t)), 0};
        assert_true(pb.params.n_groups <= 200 && plan_w16(&pb.params, &pb, 1) && !plan_w16(&pb.params, &pb, 0) && plan_w16_sizes(&pb, &w) == 0);
        size_t copied = 0, maxshard = 0;
        for (int i = 0; i < pb.params.n; i++) copied += params_copied(&pb.params.t[i]) ? (size_t)pb.params.t[i].numel_local : 0;
        for (int s = 0; s < pb.params.nseg; s++) {
            size_t c = pb.shard[s].cnt[pb.params.seg[s].kind == SEG_EXPERT ? pb.dp_index : pb.world_rank];
            maxshard = c > maxshard ? c : maxshard;
        }
        double ag = 4.0 * (double)w.ag_n, want = z == 0 ? m[0].params + 2.0 * (double)(head + layer)
                                           : z < 3  ? 4.0 * (double)pb.shard_floats + 2.0 * (double)copied +
                                                          4.0 * (double)(pb.params.total_local - copied) + ag
                                                    : m[3].params - 2.0 * (double)(head + layer) + ag;
        assert_true(z == 0 || (w.ag_n > 0 && w.ag_n <= maxshard));
        assert_true(pb.mem.params == want && pb.mem.grads == m[z].grads && pb.mem.optim == m[z].optim);
        assert_true(z == 0 || pb.mem.params < m[z].params); /* less than the fp32 working weights */
        free(w.r32), free(w.r16), free(w.t32), free(w.t16);
        /* the scratch arena adds the copies' GEMM tile (ops_matmul_w_scratch_floats: 2^24 floats for lm_head) */
        model_opts ob = deck_model_opts(&d);
        assert_true(cost_tile_floats(&ob) == (size_t)1 << 24);
        assert_true(pb.mem.acts == m[z].acts - 61 * NH * 2 + NH * 4 + 4.0 * (1 << 24));
        plan_free(&pb);
    }
    snprintf(d.train.dtype, DECK_STR, "fp32");
    assert_true(m[0].total > m[1].total && m[1].total > m[2].total && m[2].total > m[3].total);
    /* the GPU layout's activations (cost.h): linear in tokens and in the element size, smaller with
     * checkpointing */
    deck_v3(&d);
    model_opts o = deck_model_opts(&d);
    double a1 = cost_gpu_act_bytes(&o, 4096, 2);
    assert_true(cost_gpu_act_bytes(&o, 8192, 2) == 2 * a1);
    o.checkpointing = 0;
    assert_true(cost_gpu_act_bytes(&o, 4096, 2) > 5 * a1);
    /* a MoE layer saves more than a dense one; LoRA adds r floats per target */
    assert_true(cost_gpu_layer_floats(&o, 1, 0) > cost_gpu_layer_floats(&o, 0, 0));
    assert_true(cost_gpu_layer_floats(&o, 1, 1) == cost_gpu_layer_floats(&o, 1, 0) + 5 * 16);
    /* the trainer's activations: with checkpointing the main blocks keep only their inputs (one shared set of
     * norms) and the logits are one [N,V] buffer (dlogits written over them) */
    model_opts oc = deck_model_opts(&d), of = oc;
    of.checkpointing = 0;
    double N = 4096, H = 7168, L = 61;
    double base_c = cost_base_act_bytes(&oc, 1, 4096), base_f = cost_base_act_bytes(&of, 1, 4096);
    size_t sc = cost_scratch_floats(&oc, 1, 4096), sf = cost_scratch_floats(&of, 1, 4096);
    assert_true(base_f - 4.0 * sf - (base_c - 4.0 * sc) == 4.0 * (L - 1) * (3 * N * H + 2 * N));
    d.model.vocab_size += 1; /* one more logit per token: 4 bytes per token (one buffer), not 8 */
    model_opts ov = deck_model_opts(&d);
    assert_true(cost_base_act_bytes(&ov, 1, 4096) - 4.0 * cost_scratch_floats(&ov, 1, 4096) - (base_c - 4.0 * sc) ==
                4.0 * N);
}

static void test_build_world(void **state) {
    (void)state;
    deck d;
    deck_tiny(&d);
    char err[512];
    plan p;
    assert_int_equal(plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err), 0);
    int n;
    MPI_Comm_size(p.world, &n);
    assert_int_equal(n, 1);
    MPI_Comm_size(p.node, &n);
    assert_int_equal(n, 1);
    MPI_Comm_size(p.expert, &n);
    assert_int_equal(n, 1);
    MPI_Comm_size(p.data, &n);
    assert_int_equal(n, 1);
    assert_int_equal(p.n_nodes, 1);
    assert_int_equal(p.node_index, 0);
    assert_int_equal(p.experts_per_rank, 8);
    assert_true(strlen(p.cpuset) > 0 && strcmp(p.cpuset, "unknown") != 0);
    assert_true(p.ncores >= 1);
    FILE *f = tmpfile();
    plan_print(&p, &d, f);
    rewind(f);
    char buf[8192];
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    buf[got] = 0;
    fclose(f);
    assert_non_null(strstr(buf, "world 1 ranks on 1 node"));
    assert_non_null(strstr(buf, "e0-e7"));
    assert_non_null(strstr(buf, "parameters "));
    assert_non_null(strstr(buf, "total MiB")); /* small decks print MiB */
    /* comm wrappers at one rank: identity, in both paths */
    for (int si = 0; si < p.params.nseg; si++) {
        size_t N = p.params.seg[si].numel;
        float *full = malloc(N * sizeof *full), *mine = malloc(N * sizeof *mine), *back = malloc(N * sizeof *back);
        for (size_t i = 0; i < N; i++) full[i] = (float)(i % 1000);
        for (int pass = 0; pass < 2; pass++) {
            size_t old = comm_set_chunk_limit(pass ? 7 : 0);
            memset(mine, 0, N * sizeof *mine);
            memset(back, 0, N * sizeof *back);
            assert_int_equal(zero_seg_reduce_scatter(&p, si, 0, full, mine), 0);
            assert_memory_equal(mine, full, N * sizeof *full);
            assert_int_equal(zero_seg_allgather(&p, si, 0, mine, back), 0);
            assert_memory_equal(back, full, N * sizeof *full);
            comm_set_chunk_limit(old);
        }
        free(full);
        free(mine);
        free(back);
    }
    assert_true(comm_sum_double(2.5, p.world) == 2.5);
    plan_free(&p);
    assert_true(p.world == MPI_COMM_NULL);
}

/* Thousands separators and the trainable count for a bf16 LoRA run with EP 1. */
static void test_lora_ep1(void **state) {
    (void)state;
    deck d;
    deck_v3(&d);
    d.parallel.expert_parallel = 1;
    d.train.global_batch = 1;
    char err[512];
    plan p;
    assert_int_equal(plan_layout(&p, &d, 1, 0, err, sizeof err), 0);
    assert_int_equal(p.params.n_trainable, 97006592);
    assert_int_equal(p.experts_per_rank, 256);
    /* no ZeRO effect at one rank: stage 3 shard = everything */
    assert_int_equal(p.shard_floats, p.params.total_local);
    plan_free(&p);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sft_layout),  cmocka_unit_test(test_shards_tiny), cmocka_unit_test(test_validation),
        cmocka_unit_test(test_memory),      cmocka_unit_test(test_build_world), cmocka_unit_test(test_lora_ep1),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return rc;
}

/* test_plan_mpi.c — the plan's communicators, expert ownership, shards and
 * the ZeRO collectives at any world size (tests/it_plan.sh runs it under
 * mpirun -np 1, 2, 8, 24; tests/run.sh also runs it alone at size 1).
 * Every legal EP of {1, 2, 4, 8} is tried. Exit 0 when every check passes on
 * every rank.
 *
 * DSV3_PLAN_PRINT=1 also prints the plan of the reference SFT layout
 * (DeepSeek-V3 671B, LoRA r=16, EP 8, ZeRO-3, bf16) built from the same
 * dims as input/sft.cfg, without reading a deck. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "../src/comm.h"
#include "../src/deck.h"
#include "../src/ops.h"
#include "../src/zero.h"
#include "../src/plan.h"

static int nfail, nchecks, wrank;
#define CHECK(c, ...)                                                         \
    do {                                                                      \
        nchecks++;                                                            \
        if (!(c)) {                                                           \
            nfail++;                                                          \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", wrank, __FILE__, __LINE__, #c); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
        }                                                                     \
    } while (0)

static void deck_tiny(deck *d, int ep, int size) {
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
    d->parallel.expert_parallel = ep;
    d->parallel.zero_stage = 3;
    d->train.micro_batch = 1;
    d->train.global_batch = 2 * size;
    d->train.seq_len = 16;
    snprintf(d->train.dtype, DECK_STR, "fp32");
    /* LoRA on two projections so the compact (trainable-only) layout is non-trivial */
    d->lora.enabled = true;
    d->lora.r = 4;
    d->lora.alpha = 8;
    d->lora.n_targets = 2;
    snprintf(d->lora.targets[0], DECK_STR, "self_attn.q_b_proj");
    snprintf(d->lora.targets[1], DECK_STR, "self_attn.o_proj");
}

static void deck_v3_sft(deck *d, int size) {
    deck_tiny(d, 8, size);
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
    d->parallel.activation_checkpointing = true;
    d->train.global_batch = size;
    d->train.seq_len = 4096;
    snprintf(d->train.dtype, DECK_STR, "bf16");
    d->lora.r = 16;
    d->lora.alpha = 32;
    const char *tg[] = {"self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.kv_a_proj_with_mqa",
                        "self_attn.kv_b_proj", "self_attn.o_proj"};
    d->lora.n_targets = 5;
    for (int i = 0; i < 5; i++) snprintf(d->lora.targets[i], DECK_STR, "%s", tg[i]);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Same value on every member of c? */
static int agree_u64(uint64_t v, MPI_Comm c) {
    uint64_t lo, hi;
    MPI_Allreduce(&v, &lo, 1, MPI_UINT64_T, MPI_MIN, c);
    MPI_Allreduce(&v, &hi, 1, MPI_UINT64_T, MPI_MAX, c);
    return lo == hi;
}

static void check_comms(const plan *p, int size) {
    int n, r;
    MPI_Comm_size(p->world, &n);
    MPI_Comm_rank(p->world, &r);
    CHECK(n == size && r == wrank, "world %d/%d", r, n);
    CHECK(wrank == p->dp_index * p->ep + p->ep_index, "rank = dp*EP + ep: %d %d %d", p->dp_index, p->ep,
          p->ep_index);
    CHECK(p->ep * p->dp == size, "ep %d dp %d", p->ep, p->dp);
    /* expert comm: EP consecutive world ranks, ordered by ep_index */
    MPI_Comm_size(p->expert, &n);
    MPI_Comm_rank(p->expert, &r);
    CHECK(n == p->ep && r == p->ep_index, "expert comm %d/%d", r, n);
    int *w = malloc((size_t)size * sizeof *w);
    MPI_Allgather(&wrank, 1, MPI_INT, w, 1, MPI_INT, p->expert);
    for (int j = 0; j < n; j++) CHECK(w[j] == p->dp_index * p->ep + j, "expert member %d is world %d", j, w[j]);
    /* data comm: ranks with my ep_index, ordered by dp_index */
    MPI_Comm_size(p->data, &n);
    MPI_Comm_rank(p->data, &r);
    CHECK(n == p->dp && r == p->dp_index, "data comm %d/%d", r, n);
    MPI_Allgather(&wrank, 1, MPI_INT, w, 1, MPI_INT, p->data);
    for (int j = 0; j < n; j++) CHECK(w[j] == j * p->ep + p->ep_index, "data member %d is world %d", j, w[j]);
    MPI_Allgather(&p->ep_index, 1, MPI_INT, w, 1, MPI_INT, p->data);
    for (int j = 0; j < n; j++) CHECK(w[j] == p->ep_index, "data member %d has ep_index %d", j, w[j]);
    /* node comm: one node index per node, nodes numbered 0..n_nodes-1 */
    MPI_Comm_size(p->node, &n);
    CHECK(n == p->node_size, "node size");
    CHECK(agree_u64((uint64_t)p->node_index, p->node), "node index differs inside a node");
    int maxidx, sumlead, lead = p->node_rank == 0 ? p->node_size : 0;
    MPI_Allreduce(&p->node_index, &maxidx, 1, MPI_INT, MPI_MAX, p->world);
    MPI_Allreduce(&lead, &sumlead, 1, MPI_INT, MPI_SUM, p->world);
    CHECK(maxidx + 1 == p->n_nodes && sumlead == size, "nodes: max index %d, n_nodes %d, ranks %d", maxidx,
          p->n_nodes, sumlead);
    CHECK(strlen(p->cpuset) > 0, "cpuset");
    free(w);
}

static void check_experts(const plan *p, int E) {
    int mine[2] = {p->expert_first, p->experts_per_rank};
    int *all = malloc((size_t)2 * p->ep * sizeof *all), *seen = calloc((size_t)E, sizeof *seen);
    MPI_Allgather(mine, 2, MPI_INT, all, 2, MPI_INT, p->expert);
    for (int j = 0; j < p->ep; j++) {
        CHECK(all[2 * j + 1] == E / p->ep, "experts per rank %d", all[2 * j + 1]);
        for (int e = all[2 * j]; e < all[2 * j] + all[2 * j + 1]; e++)
            if (e >= 0 && e < E) seen[e]++;
    }
    for (int e = 0; e < E; e++) CHECK(seen[e] == 1, "expert %d owned %d times in group %d", e, seen[e], p->dp_index);
    free(all);
    free(seen);
}

static void check_shards(const plan *p) {
    const param_table *pt = &p->params;
    /* every rank computed the same split */
    uint64_t h = 1469598103934665603ull;
    for (int si = 0; si < pt->nseg; si++) {
        h = fnv(h, p->shard[si].off, (size_t)p->shard[si].nmemb * sizeof(size_t));
        h = fnv(h, p->shard[si].cnt, (size_t)p->shard[si].nmemb * sizeof(size_t));
    }
    CHECK(agree_u64(h, p->world), "shards differ between ranks");
    unsigned long long mine[2] = {0, 0}, sum[2], want[2] = {0, 0}; /* dense over world, expert over data */
    for (int si = 0; si < pt->nseg; si++) {
        int ex = pt->seg[si].kind == SEG_EXPERT, me = zero_seg_member(p, si);
        mine[ex] += p->shard[si].cnt[me];
        want[ex] += pt->seg[si].numel;
        /* contiguous, whole cover */
        size_t at = 0;
        for (int k = 0; k < p->shard[si].nmemb; k++) {
            CHECK(p->shard[si].off[k] == at, "segment %d member %d offset", si, k);
            at += p->shard[si].cnt[k];
        }
        CHECK(at == pt->seg[si].numel, "segment %d covered %zu of %zu", si, at, pt->seg[si].numel);
    }
    MPI_Allreduce(&mine[0], &sum[0], 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, p->world);
    MPI_Allreduce(&mine[1], &sum[1], 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, p->data);
    CHECK(sum[0] == want[0] && sum[1] == want[1], "owned floats: dense %llu of %llu, expert %llu of %llu", sum[0],
          want[0], sum[1], want[1]);
    unsigned long long sf = p->shard_floats;
    CHECK(sf == mine[0] + mine[1], "shard_floats");
}

/* Reduce-scatter then all-gather of every segment, both layouts, both paths.
 * Member m contributes (m+1)*(i%7+1): sums are exact in float. */
static void check_collectives(const plan *p) {
    const param_table *pt = &p->params;
    for (int limit = 0; limit < 2; limit++) {
        size_t old = comm_set_chunk_limit(limit ? 5 : 0);
        for (int si = 0; si < pt->nseg; si++)
            for (int compact = 0; compact < 2; compact++) {
                const plan_shard *s = &p->shard[si];
                MPI_Comm c = zero_seg_comm(p, si);
                int me = zero_seg_member(p, si), n = s->nmemb, csize;
                MPI_Comm_size(c, &csize);
                CHECK(csize == n, "segment %d: comm of %d for %d members", si, csize, n);
                size_t N = compact ? s->trainable : pt->seg[si].numel;
                size_t off = compact ? s->toff[me] : s->off[me], cnt = compact ? s->tcnt[me] : s->cnt[me];
                float *full = malloc((N + 1) * sizeof *full), *back = calloc(N + 1, sizeof *back);
                float *mine = malloc((cnt + 1) * sizeof *mine);
                for (size_t i = 0; i < N; i++) full[i] = (float)((me + 1) * (int)(i % 7 + 1));
                int e1 = zero_seg_reduce_scatter(p, si, compact, full, mine);
                int bad = 0;
                for (size_t i = 0; i < cnt; i++)
                    bad += mine[i] != (float)(n * (n + 1) / 2 * (int)((off + i) % 7 + 1));
                int e2 = zero_seg_allgather(p, si, compact, mine, back);
                for (size_t i = 0; i < N; i++) bad += back[i] != (float)(n * (n + 1) / 2 * (int)(i % 7 + 1));
                CHECK(e1 == 0 && e2 == 0 && bad == 0, "segment %d compact %d limit %d: %d wrong floats", si, compact,
                      limit, bad);
                free(full);
                free(back);
                free(mine);
            }
        comm_set_chunk_limit(old);
    }
    double s = comm_sum_double(wrank + 1.0, p->world);
    CHECK(s == p->world_size * (p->world_size + 1) / 2.0, "allreduce %g", s);
}

/* train.dtype bf16 at ZeRO >= 1 (zero.h w16): every group's working weights, gathered from the fp32 master
 * shards, are exactly the masters (fp32 tensors) and their bf16 roundings (params_copied), at stages 1 and 3,
 * through MPI_Allgatherv and the chunked broadcasts; stage 1 keeps them until the masters change. */
static float master_value(int i, size_t k, float bump) { return bump + 1.2345f * sinf(0.37f * (float)k + 131.0f * (float)i); }
static void fill_masters(zero_state *z, float bump) {
    for (int i = 0; i < z->pt->n; i++) {
        int64_t a, b;
        if (z->map.seg_of[i] < 0) continue;
        zero_my_part(&z->map, i, &a, &b);
        for (int64_t k = a; k < b; k++) *zero_at(&z->map, i, z->pshard, ZERO_SHARD_PACKED, k) = master_value(i, (size_t)k, bump);
    }
}
/* Tensors of group g that differ from the masters (bump; a shared segment's at stage 1-2: bump_res). */
static int w16_wrong(zero_state *z, int g, float bump, float bump_res) {
    int bad = 0;
    for (int i = 0; i < z->pt->n; i++) {
        const param_spec *t = &z->pt->t[i];
        if (t->group != g || (t->flags & P_STORED)) continue;
        const float *w = zero_param_f32(z, i);
        const uint16_t *h = zero_param_bf16(z, i);
        float bi = z->stage < 3 && z->p->shard[z->map.seg_of[i]].nmemb > 1 ? bump_res : bump;
        int wrong = params_copied(t) ? (w != NULL || h == NULL) : (w == NULL || h != NULL);
        for (size_t k = 0; k < (size_t)t->numel_local && !wrong; k++) {
            float v = master_value(i, k, bi);
            uint16_t r;
            ops_f32_to_bf16_n(&v, &r, 1);
            wrong = h ? h[k] != r : w[k] != v;
        }
        bad += wrong;
    }
    return bad;
}
static void check_w16(int ep, int size) {
    char err[512];
    for (int stage = 1; stage <= 3; stage += 2) {
        deck d;
        deck_tiny(&d, ep, size);
        d.lora.enabled = false;
        d.parallel.zero_stage = stage;
        snprintf(d.train.dtype, DECK_STR, "bf16");
        plan p;
        int rc = plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err);
        CHECK(rc == 0 && plan_w16(&p.params, &p, 1) && !plan_w16(&p.params, &p, 0), "w16 plan EP %d stage %d: %s", ep, stage, rc ? err : "");
        if (rc) continue;
        zero_state z;
        rc = zero_create(&z, &p.params, &p, 1, err, sizeof err);
        CHECK(rc == 0 && z.w16, "zero_create w16: %s", err);
        if (rc) {
            plan_free(&p);
            continue;
        }
        size_t copied = 0, n16 = 0, n32 = 0, floats = 0;
        for (int i = 0; i < p.params.n; i++) copied += params_copied(&p.params.t[i]) ? (size_t)p.params.t[i].numel_local : 0;
        for (int g = 0; g < p.params.n_groups; g++)
            n16 += z.wl.r16[g] + z.wl.t16[g], n32 += z.wl.r32[g] + z.wl.t32[g], floats += z.glen[g];
        CHECK(n16 == copied && n16 > 0 && n16 + n32 <= floats, "w16 streams: %zu bf16 (%zu copied) + %zu fp32 of %zu", n16,
              copied, n32, floats);
        for (int limit = 0; limit < 2; limit++) {
            size_t old = comm_set_chunk_limit(limit ? 5 : 0);
            float bump = (float)limit;
            fill_masters(&z, bump);
            zero_params_changed(&z);
            int bad = 0;
            for (int g = 0; g < p.params.n_groups; g++) {
                zero_open_params(&z, g);
                bad += w16_wrong(&z, g, bump, bump);
                zero_close_params(&z, g);
            }
            CHECK(bad == 0, "w16 EP %d stage %d chunk limit %d: %d tensors differ from their masters", ep, stage, limit, bad);
            if (stage == 1) { /* shared segments resident: unchanged until told, then regathered; local ones fresh */
                fill_masters(&z, bump + 0.5f);
                zero_open_params(&z, 1);
                int stale = w16_wrong(&z, 1, bump + 0.5f, bump);
                zero_params_changed(&z);
                zero_open_params(&z, 1);
                CHECK(stale == 0 && w16_wrong(&z, 1, bump + 0.5f, bump + 0.5f) == 0,
                      "w16 stage 1: %d tensors not as their masters were / are", stale);
                zero_close_params(&z, 1);
            }
            comm_set_chunk_limit(old);
        }
        zero_destroy(&z);
        plan_free(&p);
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    int eps[] = {1, 2, 4, 8}, tried = 0;
    char err[512];
    for (int e = 0; e < 4; e++) {
        if (size % eps[e]) continue;
        deck d;
        deck_tiny(&d, eps[e], size);
        plan p;
        int rc = plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err);
        CHECK(rc == 0, "plan_build EP %d: %s", eps[e], err);
        if (rc) continue;
        tried++;
        check_comms(&p, size);
        check_experts(&p, d.model.n_routed_experts);
        check_shards(&p);
        check_collectives(&p);
        check_w16(eps[e], size);
        CHECK(p.mem.total == p.mem.params + p.mem.grads + p.mem.optim + p.mem.acts, "memory sum");
        if (wrank == 0) printf("test_plan_mpi: np=%d EP=%d: %d expert groups, %d experts per rank\n", size, eps[e],
                               p.dp, p.experts_per_rank);
        plan_free(&p);
    }
    /* An illegal layout fails on every rank with the same message, no hang. */
    {
        deck d;
        deck_tiny(&d, size + 1, size);
        plan p;
        int rc = plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err);
        CHECK(rc == -1 && p.world == MPI_COMM_NULL, "EP %d accepted", size + 1);
        CHECK(agree_u64(fnv(1469598103934665603ull, err, strlen(err)), MPI_COMM_WORLD), "messages differ");
        plan_free(&p);
        d.parallel.expert_parallel = 1;
        d.train.micro_batch = 2; /* odd global batch: never a multiple of 2 * size */
        d.train.global_batch = 2 * size + 1;
        rc = plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err);
        CHECK(rc == -1 && strstr(err, "global_batch") != NULL, "global batch %d accepted", 2 * size + 1);
        plan_free(&p);
    }
    const char *pr = getenv("DSV3_PLAN_PRINT");
    if (pr && strcmp(pr, "1") == 0 && size % 8 == 0) {
        deck d;
        deck_v3_sft(&d, size);
        plan p;
        if (plan_build(&p, &d, MPI_COMM_WORLD, err, sizeof err) == 0) {
            plan_print(&p, &d, stdout);
            plan_free(&p);
        } else if (wrank == 0) printf("plan_build: %s\n", err);
    }
    int f = nfail, all;
    MPI_Allreduce(&f, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (wrank == 0)
        printf("test_plan_mpi: np=%d, %d layouts, %d checks on rank 0, %d failures on all ranks\n", size, tried,
               nchecks, all);
    MPI_Finalize();
    return all == 0 && tried > 0 ? 0 : 1;
}

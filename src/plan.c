/* plan.c — the layout: communicators, expert ownership, ZeRO row-aligned
 * shards, hwloc binding and the per-rank memory estimate (design §3, §4).
 *
 * plan_layout() is the pure part (deck + size + rank -> everything but MPI),
 * plan_build() adds the communicators and hwloc. Every check in
 * plan_layout() depends on the deck and the world size only, so all ranks
 * fail alike without talking to each other. */
#include "plan.h"
#include "deck.h"
#include "error.h"
#include "model/cost.h"
#include "model/moe.h"
#include "ops.h"
#include "perf.h"

#include <hwloc.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GiB (1024.0 * 1024.0 * 1024.0)

/* ---------------------------------------------------------------- shards */

static size_t row_len(const param_spec *t) { return (size_t)(t->ndim > 1 ? t->shape[t->ndim - 1] : 1); }

/* Tensors of segment `seg` in layout order (params.c assigns offsets in table order). */
static int seg_tensors(const param_table *pt, int seg, int *idx) {
    const param_segment *s = &pt->seg[seg];
    int n = 0;
    for (int i = 0; i < pt->n; i++)
        if (pt->t[i].group == s->group && pt->t[i].kind == s->kind && pt->t[i].numel_local > 0) idx[n++] = i;
    return n;
}

/* Trainable floats of the segment that lie before segment offset x. */
static size_t trainable_before(const param_table *pt, const param_segment *s, const int *idx, int n, size_t x) {
    size_t acc = 0;
    for (int j = 0; j < n; j++) {
        const param_spec *t = &pt->t[idx[j]];
        size_t a = t->offset - s->offset, len = (size_t)t->numel_local;
        if (!plan_param_trainable(t) || x <= a) continue;
        acc += (x - a < len) ? x - a : len;
    }
    return acc;
}

int plan_shard_segment(plan_shard *sh, const param_table *pt, int seg, int nmemb) {
    const param_segment *s = &pt->seg[seg];
    memset(sh, 0, sizeof *sh);
    sh->nmemb = nmemb;
    sh->off = calloc((size_t)nmemb, sizeof(size_t));
    sh->cnt = calloc((size_t)nmemb, sizeof(size_t));
    sh->toff = calloc((size_t)nmemb, sizeof(size_t));
    sh->tcnt = calloc((size_t)nmemb, sizeof(size_t));
    size_t *bound = calloc((size_t)nmemb + 1, sizeof(size_t)); /* member k owns [bound[k], bound[k+1]) */
    int *idx = malloc((size_t)(pt->n > 0 ? pt->n : 1) * sizeof(int));
    if (!sh->off || !sh->cnt || !sh->toff || !sh->tcnt || !bound || !idx) {
        free(bound);
        free(idx);
        plan_shard_free(sh);
        return -1;
    }
    int nt = seg_tensors(pt, seg, idx);
    size_t N = s->numel;
    bound[0] = 0;
    bound[nmemb] = N;
    int j = 0; /* targets increase with k, so the tensor cursor only moves forward */
    for (int k = 1; k < nmemb; k++) {
        size_t target = N / (size_t)nmemb * (size_t)k + N % (size_t)nmemb * (size_t)k / (size_t)nmemb;
        while (j < nt - 1 && pt->t[idx[j]].offset - s->offset + (size_t)pt->t[idx[j]].numel_local <= target) j++;
        size_t b = N;
        if (nt > 0) {
            const param_spec *t = &pt->t[idx[j]];
            size_t a = t->offset - s->offset, len = (size_t)t->numel_local, r = row_len(t);
            size_t rel = target > a ? target - a : 0;
            size_t rows = (rel + r / 2) / r; /* nearest row boundary */
            b = a + rows * r;
            if (b > a + len) b = a + len;
        }
        if (b < bound[k - 1]) b = bound[k - 1];
        bound[k] = b;
    }
    for (int k = 0; k < nmemb; k++) {
        sh->off[k] = bound[k];
        sh->cnt[k] = bound[k + 1] - bound[k];
        sh->toff[k] = trainable_before(pt, s, idx, nt, bound[k]);
    }
    sh->trainable = trainable_before(pt, s, idx, nt, N);
    for (int k = 0; k < nmemb; k++) sh->tcnt[k] = (k + 1 < nmemb ? sh->toff[k + 1] : sh->trainable) - sh->toff[k];
    free(bound);
    free(idx);
    return 0;
}

void plan_shard_free(plan_shard *s) {
    free(s->off);
    free(s->cnt);
    free(s->toff);
    free(s->tcnt);
    memset(s, 0, sizeof *s);
}

int plan_shard_owner(const plan_shard *s, size_t o) {
    int lo = 0, hi = s->nmemb - 1; /* the last member with off <= o owns o */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (s->off[mid] <= o) lo = mid;
        else hi = mid - 1;
    }
    return lo; /* an empty shard shares its offset with the next member, which wins */
}

/* ---------------------------------------------------------------- memory */

/* Floats of tensor t inside [lo, hi) of its segment. */
static size_t overlap(const param_spec *t, const param_segment *s, size_t lo, size_t hi) {
    size_t a = t->offset - s->offset, b = a + (size_t)t->numel_local;
    if (lo < a) lo = a;
    if (hi > b) hi = b;
    return hi > lo ? hi - lo : 0;
}

/* ---- bf16 working weights (plan.h plan_w16) ---- */

int plan_w16(const param_table *pt, const plan *p, int bf16) {
    if (!bf16 || (p && p->state_compact)) return 0;
    for (int i = 0; i < pt->n; i++)
        if (params_copied(&pt->t[i])) return 1;
    return 0;
}

/* Elements of [t0, t1) inside [lo, hi). */
static size_t w16_piece(size_t t0, size_t t1, size_t lo, size_t hi) {
    size_t a = lo > t0 ? lo : t0, b = hi < t1 ? hi : t1;
    return b > a ? b - a : 0;
}
static int w16_in_seg(const param_table *pt, int i, int s) {
    const param_spec *t = &pt->t[i];
    return t->group == pt->seg[s].group && t->kind == pt->seg[s].kind && !(t->flags & P_STORED);
}
int plan_seg_local(const plan *p, int s) { return !p || p->zero_stage == 0 || p->shard[s].nmemb == 1; }
int plan_seg_resident(const plan *p, int s) { return p && p->zero_stage < 3 && !plan_seg_local(p, s); }

int plan_w16_layout_build(const param_table *pt, const plan *p, plan_w16_layout *w, size_t *woff, size_t *s32,
                          size_t *s16, size_t **cnt32, size_t **off32, size_t **cnt16, size_t **off16, char *err,
                          int errlen) {
    for (int g = 0; g < pt->n_groups; g++) w->r32[g] = w->r16[g] = w->t32[g] = w->t16[g] = 0;
    w->ag_n = 0;
    for (int s = 0; s < pt->nseg; s++) {
        const param_segment *sg = &pt->seg[s];
        int g = sg->group, res = plan_seg_resident(p, s), local = plan_seg_local(p, s);
        size_t *run32 = res ? &w->r32[g] : &w->t32[g], *run16 = res ? &w->r16[g] : &w->t16[g];
        size_t b32 = *run32, b16 = *run16; /* the segment's start in each stream */
        if (s32) s32[s] = b32, s16[s] = b16;
        for (int i = 0; i < pt->n; i++) { /* a segment's tensors in layout order = table order */
            if (!w16_in_seg(pt, i, s)) continue;
            int c = params_copied(&pt->t[i]);
            if (!c && local) continue; /* the master itself (zero.c) */
            size_t *run = c ? run16 : run32;
            if (woff) woff[i] = *run - (c ? b16 : b32); /* relative to the segment */
            *run += (size_t)pt->t[i].numel_local;
        }
        if (local) continue; /* converted in place at open: no exchange */
        const plan_shard *sh = &p->shard[s];
        int me = sg->kind == SEG_EXPERT ? p->dp_index : p->world_rank;
        for (int r = 0; r < sh->nmemb; r++)
            if (sh->off[r] != (r ? sh->off[r - 1] + sh->cnt[r - 1] : 0)) {
                snprintf(err, errlen, "segment %d: member %d's shard does not start where the previous one ends", s, r);
                return -1;
            }
        for (int r = 0; r < sh->nmemb; r++) {
            size_t c32 = 0, c16 = 0, lo = sh->off[r], hi = lo + sh->cnt[r];
            for (int i = 0; i < pt->n; i++) {
                if (!w16_in_seg(pt, i, s)) continue;
                size_t t0 = pt->t[i].offset - sg->offset, n = w16_piece(t0, t0 + (size_t)pt->t[i].numel_local, lo, hi);
                if (params_copied(&pt->t[i])) c16 += n; else c32 += n;
            }
            if (cnt32) {
                off32[s][r] = r ? off32[s][r - 1] + cnt32[s][r - 1] : 0;
                off16[s][r] = r ? off16[s][r - 1] + cnt16[s][r - 1] : 0;
                cnt32[s][r] = c32, cnt16[s][r] = c16;
            }
            if (r == me && c32 + (c16 + 1) / 2 > w->ag_n) w->ag_n = c32 + (c16 + 1) / 2;
        }
    }
    return 0;
}

int plan_w16_sizes(const plan *p, plan_w16_layout *w) {
    char err[200];
    return plan_w16_layout_build(&p->params, p, w, NULL, NULL, NULL, NULL, NULL, NULL, NULL, err, sizeof err);
}

plan_memory plan_memory_estimate(const deck *d, const plan *p) {
    plan_memory mem = {0};
    const param_table *pt = &p->params;
    int z = p->zero_stage;
    model_opts o = deck_model_opts(d);
    int w16 = plan_w16(pt, p, o.act_bf16); /* bf16 working weights (zero.h); from ZeRO 1 the masters are my shard */
    double state_local = 0; /* floats with gradient and AdamW slots when unsharded */
    for (int si = 0; si < pt->nseg; si++) {
        const param_segment *s = &pt->seg[si];
        int me = s->kind == SEG_EXPERT ? p->dp_index : p->world_rank;
        size_t lo = p->shard ? p->shard[si].off[me] : 0, hi = lo + (p->shard ? p->shard[si].cnt[me] : 0);
        for (int i = 0; i < pt->n; i++) {
            const param_spec *t = &pt->t[i];
            if (t->group != s->group || t->kind != s->kind) continue;
            int tr = plan_param_trainable(t);
            double n = z >= 3 || (w16 && z >= 1) ? (double)overlap(t, s, lo, hi) : (double)t->numel_local;
            mem.params += n * 4.0;
            if (p->state_compact ? tr : 1) state_local += (double)t->numel_local;
        }
    }
    if (w16) {
        /* the working weights' streams (zero.h): the resident banks, and the opened ones of the embedding's
         * and head's groups (open for the whole step) plus one layer's, as gather_floats; the packing buffer */
        int G = pt->n_groups;
        plan_w16_layout w = {calloc((size_t)G, sizeof(size_t)), calloc((size_t)G, sizeof(size_t)),
                             calloc((size_t)G, sizeof(size_t)), calloc((size_t)G, sizeof(size_t)), 0};
        DSV3_CHECK(w.r32 && w.r16 && w.t32 && w.t16 && plan_w16_sizes(p, &w) == 0,
                   "cannot lay out the bf16 working weights");
        double big = 0.0, opened = 0.0;
        for (int g = 0; g < G; g++) {
            double b = 4.0 * (double)w.t32[g] + 2.0 * (double)w.t16[g];
            mem.params += 4.0 * (double)w.r32[g] + 2.0 * (double)w.r16[g];
            if (g == 0 || g == G - 1) opened += b;
            else if (b > big) big = b;
        }
        mem.params += 4.0 * (double)w.ag_n + opened + big;
        free(w.r32), free(w.r16), free(w.t32), free(w.t16);
    } else if (z >= 3) {
        mem.params += (double)p->gather_floats * 4.0;
    }
    /* the frozen store (train.base_dtype bf16/fp8, train.embed_dtype bf16), resident at any stage; its
     * node-shared part (lora.node_shared) one copy per node, of which this rank allocates its share */
    mem.params += (double)(pt->stored_bytes - pt->shared_bytes) +
                  (double)params_shared_share(pt, p->node_rank, p->node_size, NULL);
    double state_shard = (double)(p->state_compact ? p->shard_trainable : p->shard_floats);
    mem.grads = 4.0 * (z >= 2 ? state_shard + (double)p->reduce_floats : state_local);
    mem.optim = 8.0 * (z >= 1 ? state_shard : state_local);
    /* the model's own accounting (model/cost.c: what acts_create allocates, the MoE dispatch rows included) */
    mem.acts = cost_act_bytes(&o, p->ep, p->experts_per_rank, d->train.micro_batch, d->train.seq_len);
    mem.total = mem.params + mem.grads + mem.optim + mem.acts;
    return mem;
}

/* ---------------------------------------------------------------- layout */

void plan_expert_range(int E, int ep, int ep_index, int *first, int *count) {
    perf_expert_range(E, ep, ep_index, first, count); /* the same split as moe_expert_range (checked by test_plan) */
}

static void plan_init(plan *p) {
    memset(p, 0, sizeof *p);
    p->world = p->node = p->expert = p->data = COMM_NULL;
}

static int fail(char *err, int errlen, const char *msg) {
    snprintf(err, errlen, "%s", msg);
    return -1;
}

int plan_layout(plan *p, const deck *d, int size, int rank, char *err, int errlen) {
    char msg[512];
    plan_init(p);
    const deck_model *m = &d->model;
    int ep = d->parallel.expert_parallel, E = m->n_routed_experts;
    int mb = d->train.micro_batch, gb = d->train.global_batch;
    /* Layout checks: the deck module checks these too; repeated here so a
     * plan can never be built from an inconsistent deck. */
    if (size < 1 || rank < 0 || rank >= size) {
        snprintf(msg, sizeof msg, "plan: rank %d outside world size %d", rank, size);
        return fail(err, errlen, msg);
    }
    if (ep < 1 || size % ep) {
        snprintf(msg, sizeof msg, "parallel.expert_parallel = %d does not divide the world size %d", ep, size);
        return fail(err, errlen, msg);
    }
    if (E > 0 && ep > E) {
        snprintf(msg, sizeof msg, "parallel.expert_parallel = %d exceeds model.n_routed_experts = %d", ep, E);
        return fail(err, errlen, msg);
    }
    if (d->parallel.zero_stage < 0 || d->parallel.zero_stage > 3) {
        snprintf(msg, sizeof msg, "parallel.zero_stage = %d is outside 0..3", d->parallel.zero_stage);
        return fail(err, errlen, msg);
    }
    if (mb < 1 || gb < 1 || d->train.seq_len < 1) {
        snprintf(msg, sizeof msg, "train.micro_batch = %d, train.global_batch = %d, train.seq_len = %d must be >= 1",
                 mb, gb, d->train.seq_len);
        return fail(err, errlen, msg);
    }
    if ((int64_t)gb % ((int64_t)mb * size)) {
        snprintf(msg, sizeof msg,
                 "train.global_batch = %d is not divisible by train.micro_batch x world size = %d x %d", gb, mb,
                 size);
        return fail(err, errlen, msg);
    }
    p->world_rank = rank;
    p->world_size = size;
    p->ep = ep;
    p->ep_index = rank % ep;
    p->dp = size / ep;
    p->dp_index = rank / ep;
    /* Uneven ownership (E % ep != 0): the first E % ep ranks of a group own one expert more. */
    plan_expert_range(E, ep, p->ep_index, &p->expert_first, &p->experts_per_rank);
    p->zero_stage = d->parallel.zero_stage;
    p->micro_batch = mb;
    p->grad_accum = gb / (mb * size);
    p->node_rank = 0;
    p->node_size = 1;
    p->n_nodes = 1;
    snprintf(p->cpuset, sizeof p->cpuset, "-");
    if (params_build_owned(&p->params, &d->model, &d->lora, ep, p->experts_per_rank, msg, sizeof msg)) {
        params_free(&p->params);
        return fail(err, errlen, msg);
    }
    const param_table *pt = &p->params;
    p->shard = calloc((size_t)(pt->nseg > 0 ? pt->nseg : 1), sizeof *p->shard);
    if (!p->shard) return fail(err, errlen, "plan: out of memory");
    size_t gd = 0, ge = 0, rd = 0, re = 0;
    for (int i = 0; i < pt->n; i++)
        if (pt->t[i].flags & P_FROZEN) p->state_compact = 1;
    for (int si = 0; si < pt->nseg; si++) {
        int expert = pt->seg[si].kind == SEG_EXPERT;
        if (plan_shard_segment(&p->shard[si], pt, si, expert ? p->dp : size))
            return fail(err, errlen, "plan: out of memory");
        int me = expert ? p->dp_index : rank;
        p->shard_floats += p->shard[si].cnt[me];
        p->shard_trainable += p->shard[si].tcnt[me];
        size_t n = pt->seg[si].numel, t = p->shard[si].trainable;
        if (expert) {
            if (n > ge) ge = n;
            if (t > re) re = t;
        } else {
            if (n > gd) gd = n;
            if (t > rd) rd = t;
        }
    }
    /* ZeRO workspaces as model.c opens them: the embedding group and the
     * final-norm/lm_head group stay open for the whole step (the MTP heads use
     * both), plus one decoder-layer group at a time. Gradients need only the
     * trainable part of a group (frozen LoRA base weights have none) and the
     * reduce-scatter scratch of the largest shard. */
    {
        int G = pt->n_groups;
        size_t *glen = calloc((size_t)G, sizeof *glen), *tlen = calloc((size_t)G, sizeof *tlen);
        size_t big = 0, tbig = 0, maxshard = 0, maxtshard = 0;
        for (int si = 0; si < pt->nseg; si++) {
            glen[pt->seg[si].group] += pt->seg[si].numel;
            tlen[pt->seg[si].group] += p->shard[si].trainable;
            int me = pt->seg[si].kind == SEG_EXPERT ? p->dp_index : rank;
            if (p->shard[si].cnt[me] > maxshard) maxshard = p->shard[si].cnt[me];
            if (p->shard[si].tcnt[me] > maxtshard) maxtshard = p->shard[si].tcnt[me];
        }
        for (int g = 1; g < G - 1; g++) {
            big = glen[g] > big ? glen[g] : big;
            tbig = tlen[g] > tbig ? tlen[g] : tbig;
        }
        p->gather_floats = glen[0] + glen[G - 1] + big;
        /* without frozen tensors the gradient buffers keep the full layout (the
         * router biases' slots included, zero), as zero.c allocates them */
        p->reduce_floats = p->state_compact ? tlen[0] + tlen[G - 1] + tbig + maxtshard
                                            : glen[0] + glen[G - 1] + big + maxshard;
        free(glen);
        free(tlen);
        (void)gd, (void)ge, (void)rd, (void)re;
    }
    int L = m->num_hidden_layers, D = m->num_nextn_predict_layers;
    int dense = m->first_k_dense_replace < L ? m->first_k_dense_replace : L;
    p->n_moe_layers = E > 0 ? (L - dense) + D : 0;
    p->mem = plan_memory_estimate(d, p);
    return 0;
}

/* ----------------------------------------------------------------- hwloc */

/* My share of the node's cores: node-local rank r of n gets cores
 * [r*c/n, (r+1)*c/n), or one (shared) core when ranks outnumber cores.
 * Binds when allowed: OMPI binding policy not "none" and DSV3_BIND != 0. */
static void plan_hwloc(plan *p) {
    hwloc_topology_t topo;
    snprintf(p->cpuset, sizeof p->cpuset, "unknown");
    if (hwloc_topology_init(&topo)) return;
    if (hwloc_topology_load(topo)) {
        hwloc_topology_destroy(topo);
        return;
    }
    hwloc_obj_type_t type = HWLOC_OBJ_CORE;
    int c = hwloc_get_nbobjs_by_type(topo, type);
    if (c <= 0) {
        type = HWLOC_OBJ_PU;
        c = hwloc_get_nbobjs_by_type(topo, type);
    }
    if (c > 0) {
        int r = p->node_rank, n = p->node_size;
        int lo = (int)((int64_t)r * c / n), hi = (int)((int64_t)(r + 1) * c / n);
        if (hi <= lo) hi = lo + 1;
        hwloc_bitmap_t set = hwloc_bitmap_alloc();
        for (int i = lo; i < hi; i++) {
            hwloc_obj_t o = hwloc_get_obj_by_type(topo, type, (unsigned)i);
            if (o && o->cpuset) hwloc_bitmap_or(set, set, o->cpuset);
        }
        p->ncores = hi - lo;
        hwloc_bitmap_list_snprintf(p->cpuset, sizeof p->cpuset, set);
        const char *pol = getenv("OMPI_MCA_hwloc_base_binding_policy"), *env = getenv("DSV3_BIND");
        int allowed = !(pol && strcmp(pol, "none") == 0) && !(env && strcmp(env, "0") == 0);
        p->bound = 0;
        if (allowed) p->bound = hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) == 0 ? 1 : -1;
        hwloc_bitmap_free(set);
    }
    hwloc_topology_destroy(topo);
}

/* ----------------------------------------------------------------- build */

int plan_build(plan *p, const deck *d, comm_t world, char *err, int errlen) {
    int size = comm_size(world), rank = comm_rank(world);
    char msg[512] = "";
    /* Deterministic: the same on every rank, so no agreement is needed. */
    if (plan_layout(p, d, size, rank, msg, sizeof msg)) {
        int oom = strstr(msg, "out of memory") != NULL;
        comm_max_int(oom, world); /* keep collectives matched */
        plan_free(p);
        snprintf(err, errlen, "%s", msg);
        return -1;
    }
    if (comm_max_int(0, world)) { /* another rank ran out of memory: fail alike */
        plan_free(p);
        snprintf(err, errlen, "plan: out of memory on some rank");
        return -1;
    }
    comm_dup(world, &p->world);
    comm_split_node(p->world, rank, &p->node);
    p->node_rank = comm_rank(p->node);
    p->node_size = comm_size(p->node);
    /* Nodes are numbered by their lowest world rank (node rank 0, key = rank). */
    int leader = p->node_rank == 0;
    p->node_index = comm_exscan_sum_int(leader, p->world);
    comm_bcast(&p->node_index, sizeof p->node_index, 0, p->node);
    p->n_nodes = comm_sum_int(leader, p->world);
    if (p->params.shared_bytes) p->mem = plan_memory_estimate(d, p); /* my share of the node-shared frozen store */
    comm_split(p->world, p->dp_index, rank, &p->expert); /* rank order = ep_index */
    comm_split(p->world, p->ep_index, rank, &p->data);   /* rank order = dp_index */
    if (gethostname(p->host, sizeof p->host)) snprintf(p->host, sizeof p->host, "unknown");
    p->host[sizeof p->host - 1] = 0;
    plan_hwloc(p);
    return 0;
}

void plan_free(plan *p) {
    comm_t *c[] = {&p->world, &p->node, &p->expert, &p->data};
    for (int i = 0; i < 4; i++) comm_free(c[i]);
    if (p->shard)
        for (int i = 0; i < p->params.nseg; i++) plan_shard_free(&p->shard[i]);
    free(p->shard);
    params_free(&p->params);
    plan_init(p);
}

/* ----------------------------------------------------------------- print */

typedef struct {
    char host[64];
    char cpuset[128];
    int node_index, dp_index, ep_index, first, per, bound, ncores;
    double mem[5]; /* plan_memory: params, grads, optim, acts, total */
} rank_row;

static const char *thousands(char *buf, size_t n, int64_t v) {
    char tmp[32];
    int len = snprintf(tmp, sizeof tmp, "%lld", (long long)(v < 0 ? -v : v)), o = 0;
    if (v < 0 && o < (int)n - 1) buf[o++] = '-';
    for (int i = 0; i < len && o < (int)n - 1; i++) {
        if (i > 0 && (len - i) % 3 == 0 && o < (int)n - 1) buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = 0;
    return buf;
}

void plan_print_ownership(const plan *p, const deck *d, const char *prefix, FILE *out) {
    const deck_model *m = &d->model;
    int E = m->n_routed_experts, ep = p->ep;
    if (p->n_moe_layers <= 0) return;
    if (E % ep == 0)
        fprintf(out, "%s%d routed experts per rank per MoE layer (%d of %d, top-%d), %d MoE layers incl. MTP\n", prefix,
                p->experts_per_rank, p->experts_per_rank, E, m->num_experts_per_tok, p->n_moe_layers);
    else
        fprintf(out, "%suneven expert ownership: %d or %d routed experts per rank per MoE layer (%d of %d, top-%d: "
                     "%d ranks x %d + %d x %d), %d MoE layers incl. MTP\n", prefix, E / ep + 1, E / ep, E, E,
                m->num_experts_per_tok, E % ep, E / ep + 1, ep - E % ep, E / ep, p->n_moe_layers);
}

void plan_print(const plan *p, const deck *d, FILE *out) {
    rank_row me;
    memset(&me, 0, sizeof me);
    snprintf(me.host, sizeof me.host, "%s", p->host);
    snprintf(me.cpuset, sizeof me.cpuset, "%s", p->cpuset);
    me.node_index = p->node_index;
    me.dp_index = p->dp_index;
    me.ep_index = p->ep_index;
    me.first = p->expert_first;
    me.per = p->experts_per_rank;
    me.bound = p->bound;
    me.ncores = p->ncores;
    double mv[5] = {p->mem.params, p->mem.grads, p->mem.optim, p->mem.acts, p->mem.total};
    memcpy(me.mem, mv, sizeof mv);
    rank_row *all = NULL;
    if (p->world_rank == 0) all = calloc((size_t)p->world_size, sizeof *all);
    comm_gather_bytes(&me, all, sizeof me, 0, p->world);
    if (p->world_rank != 0) return;
    if (!all) {
        fprintf(out, "dsv3: plan: out of memory printing the plan\n");
        return;
    }
    char a[40], b[40];
    fprintf(out, "plan: world %d ranks on %d node%s, expert parallel %d: %d expert group%s of %d, data parallel %d\n",
            p->world_size, p->n_nodes, p->n_nodes == 1 ? "" : "s", p->ep, p->dp, p->dp == 1 ? "" : "s", p->ep,
            p->dp);
    fprintf(out, "plan: ZeRO stage %d, micro-batch %d, gradient accumulation %d, global batch %d, seq_len %d, "
                 "dtype %s, activation checkpointing %s\n",
            p->zero_stage, p->micro_batch, p->grad_accum, d->train.global_batch, d->train.seq_len, d->train.dtype,
            d->parallel.activation_checkpointing ? "on" : "off");
    if (strcmp(d->lora.base_dtype, "fp32") && d->lora.enabled) /* ops.h ops_gemm */
        fprintf(out, "plan: GEMMs with the %s frozen base: train.gemm_dtype = %s (%s)\n", d->lora.base_dtype,
                d->train.gemm_dtype,
                !strcmp(d->train.gemm_dtype, "fp8")    ? "W8A8: e4m3 weights x e4m3 activations scaled per row and 128 "
                                                         "columns, fp32 accumulation; backward dx bf16"
                : !strcmp(d->train.gemm_dtype, "bf16") ? "bf16 operands, fp32 accumulation"
                                                       : "the weights dequantised to fp32, fp32 GEMMs");
    fprintf(out, "plan: parameters %s total, %s trainable\n", thousands(a, sizeof a, p->params.n_params),
            thousands(b, sizeof b, p->params.n_trainable));
    model_opts o = deck_model_opts(d);
    fprintf(out, "plan: model FLOPs per token (forward+backward): %.6g\n", cost_flops_per_token(&o));
    plan_print_ownership(p, d, "plan: ", out);
    /* GiB for real models, MiB for the small decks that run here */
    double U = GiB;
    const char *un = "GiB";
    for (int r = 0; r < p->world_size; r++)
        if (all[r].mem[4] > U) break;
        else if (r == p->world_size - 1) U = 1048576.0, un = "MiB";
    char tot[16];
    snprintf(tot, sizeof tot, "total %s", un);
    fprintf(out, "%5s  %-24s %5s %6s  %-12s %-14s %8s %8s %8s %8s %9s\n", "rank", "node", "group", "expert",
            "experts", "cpuset", "params", "grads", "optim", "acts", tot);
    double mx[5] = {0}, sum = 0;
    for (int r = 0; r < p->world_size; r++) {
        rank_row *x = &all[r];
        char node[96], ex[32], cpu[160];
        snprintf(node, sizeof node, "%.64s#%d", x->host, x->node_index);
        if (x->per > 0) snprintf(ex, sizeof ex, "e%d-e%d", x->first, x->first + x->per - 1);
        else snprintf(ex, sizeof ex, "-");
        snprintf(cpu, sizeof cpu, "%.128s%s", x->cpuset, x->bound == 1 ? " bound" : x->bound < 0 ? " bind-failed" : "");
        fprintf(out, "%5d  %-24s %5d %6d  %-12s %-14s %8.2f %8.2f %8.2f %8.2f %9.2f\n", r, node, x->dp_index,
                x->ep_index, ex, cpu, x->mem[0] / U, x->mem[1] / U, x->mem[2] / U, x->mem[3] / U, x->mem[4] / U);
        for (int c = 0; c < 5; c++)
            if (x->mem[c] > mx[c]) mx[c] = x->mem[c];
        sum += x->mem[4];
    }
    fprintf(out, "%5s  %-24s %5s %6s  %-12s %-14s %8.2f %8.2f %8.2f %8.2f %9.2f\n", "max", "", "", "", "", "",
            mx[0] / U, mx[1] / U, mx[2] / U, mx[3] / U, mx[4] / U);
    fprintf(out, "plan: memory estimate per rank (what this trainer allocates, CPU or GPU: fp32 activations but for "
                 "the main blocks' bf16 inputs with train.dtype bf16, fp32 gradients and masters (with train.dtype "
                 "bf16 and trainable linears: bf16 working weights, the masters in the optimizer's shard from ZeRO 1), "
                 "the frozen store in train.base_dtype; a run prints its own count "
                 "next to it at step 1): max %.2f %s = %.3g GB; all ranks %.2f %s\n",
            mx[4] / U, un, mx[4] / 1e9, sum / U, un);
    if (!strcmp(d->train.dtype, "bf16"))
        fprintf(out, "plan: train.dtype = \"bf16\": the trainer keeps the main blocks' inputs in bf16 (the residual "
                     "stream rounded there), stores and multiplies trainable linears in bf16 (fp32 masters for AdamW) "
                     "and sets the default wire; its other activations are fp32, so the table above, not the GPU "
                     "plan's layout below (every activation bf16), is what a run of this deck allocates\n");
    free(all);
}

/* ------------------------------------------------------------- GPU plan */

#define GB 1e9

static perf_layout layout_of(const plan *p, const deck *d, const perf_opts *po) {
    perf_layout l;
    memset(&l, 0, sizeof l);
    /* "" = as train.dtype: a bf16 run keeps frozen weights in their bf16 compute copy */
    l.base = perf_dtype_of(d->train.base_dtype[0] ? d->train.base_dtype : d->train.dtype);
    l.resident = !strcmp(d->parallel.frozen, "resident");
    l.wire = perf_dtype_of(d->parallel.dispatch_dtype[0] ? d->parallel.dispatch_dtype : d->train.dtype);
    l.world = p->world_size;
    l.ep = p->ep;
    l.gpn = po->gpus_per_node > 0 ? po->gpus_per_node : 8;
    l.zero = p->zero_stage;
    l.ckpt = d->parallel.activation_checkpointing;
    l.micro_batch = d->train.micro_batch;
    l.seq_len = d->train.seq_len;
    l.grad_accum = p->grad_accum;
    return l;
}

static double intra_of(const perf_opts *po, const perf_gpu *g) {
    return po->intra_gbs > 0 ? po->intra_gbs : g->intra_gbs;
}

/* a is faster than b by more than 0.5 % (ties go to the placement that moves fewer bytes) */
static int faster(double a, double b) { return a < b * 0.995; }

/* One placement of the comparison: its name, layout and the rank that owns the most experts. */
typedef struct {
    char name[64];
    perf_layout l;
} scenario;

static void scen_times(const perf_model *m, const scenario *s, const perf_eta *eta, const perf_opts *po,
                       double inter, perf_time *tm) {
    int first, e;
    perf_expert_range(m->E, s->l.ep, 0, &first, &e);
    for (int g = 0; g < PERF_NGPU; g++) {
        perf_traffic t = perf_step(m, &s->l, e, perf_gpus[g].fp8_tflops > 0);
        tm[g] = perf_time_of(&t, &perf_gpus[g], eta, intra_of(po, &perf_gpus[g]), inter);
    }
}

void plan_print_perf(const plan *p, const deck *d, const perf_opts *po, FILE *out) {
    model_opts o = deck_model_opts(d);
    perf_model m;
    char err[256];
    if (perf_model_build(&m, &o, err, sizeof err)) {
        fprintf(out, "gpu plan: not available: %s\n", err);
        return;
    }
    perf_layout l = layout_of(p, d, po);
    perf_eta eta = perf_eta_default();
    int nodes = (l.world + l.gpn - 1) / l.gpn;
    fprintf(out, "\ngpu plan (README \"The 671B plan\"): the GPU layout of this deck on %d node%s of %d GPUs; "
                 "GB = 1e9 B\n", nodes, nodes == 1 ? "" : "s", l.gpn < l.world ? l.gpn : l.world);
    fprintf(out, "gpu plan: frozen linear weights %s%s, parallel.frozen = \"%s\" (%s), dispatch wire %s%s, "
                 "activations bf16, trainable fp32 master + bf16 copy, ZeRO stage %d\n",
            perf_dtype_name(l.base), l.base == PERF_FP8 ? " (e4m3 + f32 128x128 scales)" : "",
            l.resident ? "resident" : "sharded",
            l.resident      ? "experts stay with their EP owner, the rest of the frozen base sharded inside a node"
            : l.zero >= 3   ? "ZeRO-3: experts over the data group, the rest over all ranks, gathered every step"
                            : "ZeRO stage < 3: frozen weights whole on every rank",
            perf_dtype_name(l.wire), l.wire == PERF_FP8 ? " (1x128 f32 scales; combine bf16)" : "", l.zero);
    if (d->planned[0]) fprintf(out, "gpu plan: planned only (a real run refuses it): %s\n", d->planned);
    /* ownership */
    int f0, e_hi, e_lo, fl;
    perf_expert_range(m.E, l.ep, 0, &f0, &e_hi);
    perf_expert_range(m.E, l.ep, l.ep - 1, &fl, &e_lo);
    if (m.n_moe > 0) {
        if (e_hi == e_lo)
            fprintf(out, "gpu plan: expert ownership: %d routed experts per MoE layer on each of the %d ranks of an "
                         "expert group (even)\n", e_hi, l.ep);
        else
            fprintf(out, "gpu plan: expert ownership (uneven): EP ranks 0-%d own %d experts per MoE layer, ranks "
                         "%d-%d own %d (%d x %d + %d x %d = %d)\n", m.E % l.ep - 1, e_hi, m.E % l.ep, l.ep - 1, e_lo,
                    m.E % l.ep, e_hi, l.ep - m.E % l.ep, e_lo, m.E);
    }
    /* memory by category */
    fprintf(out, "gpu plan: memory per rank, GB  %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "experts", "base", "gather",
            "train", "acts", "logits", "dispatch", "runtime", "total");
    int classes = e_hi == e_lo ? 1 : 2;
    for (int c = 0; c < classes; c++) {
        int e = c == 0 ? e_hi : e_lo;
        perf_mem mm = perf_memory(&m, &l, e);
        char who[64];
        if (classes == 1) snprintf(who, sizeof who, "every rank (%d experts)", e);
        else if (c == 0) snprintf(who, sizeof who, "EP ranks 0-%d (%d exp.)", m.E % l.ep - 1, e);
        else snprintf(who, sizeof who, "EP ranks %d-%d (%d exp.)", m.E % l.ep, l.ep - 1, e);
        fprintf(out, "  %-29s %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f\n", who, mm.experts / GB,
                mm.base / GB, mm.gather / GB, mm.train / GB, mm.acts / GB, mm.logits / GB, mm.dispatch / GB,
                mm.runtime / GB, mm.total / GB);
    }
    {
        perf_mem mm = perf_memory(&m, &l, e_hi);
        double N = (double)l.micro_batch * l.seq_len, chunk = (N < 1024 ? N : 1024) * 4.0 * m.V + 4.0 * N;
        fprintf(out, "gpu plan: not in the design, so not counted as a saving: a chunked cross-entropy (1,024 "
                     "tokens at a time, the frozen head's dgrad right after it) would hold %.2f GB of logits "
                     "instead of %.2f\n", chunk / GB, mm.logits / GB);
    }
    /* routing, traffic, FLOPs */
    perf_route q = perf_routing(&m, l.ep, l.gpn);
    if (l.ep > 1 && m.n_moe > 0)
        fprintf(out, "gpu plan: routing (top-%d of %d, %d of %d groups, uniform inside them): a token's rows go to "
                     "%.2f EP ranks (self %.2f, %.2f more on its node, %.2f on %.2f other nodes): one row per "
                     "(token, destination rank), not %d per (token, expert)\n",
                m.k, m.E, m.topk_group, m.n_group, q.ranks, q.self, q.local, q.remote, q.nodes, m.k);
    perf_traffic t = perf_step(&m, &l, e_hi, 1);
    fprintf(out, "gpu plan: bytes per step per rank, GB   %21s %12s\n", "intra-node (NVLink)", "inter-node");
    char lab[64];
    snprintf(lab, sizeof lab, "weight gathers (%s)", l.resident ? "in node" : l.zero >= 3 ? "ZeRO-3" : "none");
    fprintf(out, "  %-38s %12.2f %12.2f\n", lab, t.gather_intra / GB, t.gather_inter / GB);
    snprintf(lab, sizeof lab, "MoE dispatch + combine (%s)", perf_dtype_name(l.wire));
    fprintf(out, "  %-38s %12.2f %12.2f\n", lab, t.disp_intra / GB, t.disp_inter / GB);
    fprintf(out, "  %-38s %12.2f %12.2f\n", "gradient reduction (fp32)", t.red_intra / GB, t.red_inter / GB);
    fprintf(out, "  %-38s %12.2f %12.2f\n", "total", (t.intra[0] + t.intra[1]) / GB,
            (t.inter[0] + t.inter[1]) / GB);
    double hw = t.flop_fp8[0] + t.flop_fp8[1] + t.flop_bf16[0] + t.flop_bf16[1] + t.flop_attn[0] + t.flop_attn[1];
    fprintf(out, "gpu plan: FLOPs per step per rank: hardware %.4g (fp8 GEMM %.3g, bf16 GEMM %.3g, attention %.3g; "
                 "recompute included, attention backward 2.5x forward), model %.4g (MFU numerator); memory-bound "
                 "kernel bytes %.3g\n", hw, t.flop_fp8[0] + t.flop_fp8[1], t.flop_bf16[0] + t.flop_bf16[1],
            t.flop_attn[0] + t.flop_attn[1], t.model_flops, t.hbm[0] + t.hbm[1]);
    fprintf(out, "gpu plan: roofline: eta bf16 GEMM %.2f, fp8 GEMM %.2f, attention %.2f, HBM %.2f of peak; inter-node "
                 "%.1f GB/s per GPU (%s); intra-node %s; the slowest rank (%d experts) sets the step\n",
            eta.bf16, eta.fp8, eta.attn, eta.hbm, po->inter_gbs,
            po->inter_gbs == PERF_INTER_NDR ? "NDR InfiniBand 400 Gb/s, one NIC per GPU, 94 %" : "--inter-gbs",
            po->intra_gbs > 0 ? "--intra-gbs" : "NVLink as NCCL measures it", e_hi);
    fprintf(out, "  %-11s %6s %6s %5s %6s | %6s %6s %6s | %-22s | %-22s | %s\n", "GPU", "bf16", "fp8", "HBM",
            "intra", "comp s", "intra", "inter", "no overlap: s tok/s MFU", "overlap: s tok/s MFU", "bound");
    fprintf(out, "  %-11s %13s %5s %6s |\n", "", "TFLOP/s", "TB/s", "GB/s");
    for (int g = 0; g < PERF_NGPU; g++) {
        const perf_gpu *G = &perf_gpus[g];
        perf_traffic tg = perf_step(&m, &l, e_hi, G->fp8_tflops > 0);
        perf_time tm = perf_time_of(&tg, G, &eta, intra_of(po, G), po->inter_gbs);
        fprintf(out,
                "  %-11s %6.0f %6.0f %5.2f %6.0f | %6.2f %6.2f %6.2f | %6.2f %6.0f %5.1f%%  | %6.2f %6.0f %5.1f%%  "
                "| %s%s\n", G->name, G->bf16_tflops, G->fp8_tflops, G->hbm_tbs, intra_of(po, G),
                tm.comp[0] + tm.comp[1], tm.intra[0] + tm.intra[1], tm.inter[0] + tm.inter[1], tm.no_overlap,
                tm.tok_no_overlap, 100 * tm.mfu_no_overlap, tm.overlap, tm.tok_overlap, 100 * tm.mfu_overlap,
                tm.bound, G->fp8_tflops > 0 || l.base != PERF_FP8 ? "" : " (fp8 dequantized to bf16)");
    }

    /* the sequence length from which the inter-node traffic hides under compute (pass by pass) */
    if (nodes > 1) {
        fprintf(out, "gpu plan: the inter-node link stops binding (overlap, pass by pass) from seq_len:");
        for (int g = 0; g < PERF_NGPU; g++) {
            int S = perf_hidden_seq(&m, &l, &perf_gpus[g], &eta, intra_of(po, &perf_gpus[g]), po->inter_gbs, 256);
            perf_layout x = l;
            x.seq_len = S;
            if (S > 0)
                fprintf(out, " %s %d (%.1f GB per GPU there)%s", perf_gpus[g].name, S, perf_max_total(&m, &x) / GB,
                        g + 1 < PERF_NGPU ? ";" : "\n");
            else fprintf(out, " %s never up to %d%s", perf_gpus[g].name, m.max_pos, g + 1 < PERF_NGPU ? ";" : "\n");
        }
    }
    /* the comparison: BF16/FP8 x sharded / resident over all ranks / resident at the deck's EP */
    int frozen_any = d->lora.enabled;
    if (!frozen_any) {
        fprintf(out, "gpu plan: no frozen weights (lora.enabled = false): no placement comparison\n");
        return;
    }
    /* sharded at the deck's EP; resident over all ranks, over one node, and at the deck's EP */
    scenario sc[8];
    int ns = 0, eps[3] = {l.world, l.gpn, l.ep};
    for (int b = 0; b < 2; b++) {
        perf_dtype base = b == 0 ? PERF_BF16 : PERF_FP8;
        /* the deck's wire when it sets one, else the base's dtype (fp8: fp8 dispatch, bf16 combine) */
        perf_dtype wire = d->parallel.dispatch_dtype[0] ? l.wire : base;
        for (int k = 0; k < 4; k++) {
            scenario *s = &sc[ns];
            s->l = l;
            s->l.base = base;
            s->l.wire = wire;
            s->l.resident = k > 0;
            if (k > 0) {
                int ep = eps[k - 1], dup = 0;
                for (int j = 0; j < k - 1; j++) dup |= eps[j] == ep;
                if (dup || ep < 1 || ep > l.world || l.world % ep || (m.E > 0 && ep > m.E)) continue;
                s->l.ep = ep;
            }
            snprintf(s->name, sizeof s->name, "%s %s EP%d", perf_dtype_name(base), k ? "resident" : "sharded",
                     s->l.ep);
            ns++;
        }
    }
    double inters[3] = {PERF_INTER_100GBE, PERF_INTER_NDR, po->inter_gbs};
    int ninter = po->inter_gbs != PERF_INTER_NDR && po->inter_gbs != PERF_INTER_100GBE ? 3 : 2;
    fprintf(out, "gpu plan: placements compared (same deck; wire: %s; GB and s per step per rank)\n",
            d->parallel.dispatch_dtype[0] ? "the deck's parallel.dispatch_dtype"
                                           : "bf16 for a bf16 base, fp8 dispatch + bf16 combine for fp8");
    fprintf(out, "gpu plan: usable memory per GPU: %s %.1f GB, %s %.1f GB, %s %.1f GB%s\n", perf_gpus[0].name,
            perf_gpus[0].mem_gb, perf_gpus[1].name, perf_gpus[1].mem_gb, perf_gpus[2].name, perf_gpus[2].mem_gb,
            po->gpu_mem_gb > 0 ? " (--gpu-mem replaces them below)" : "");
    fprintf(out, "  %-21s %7s %8s %8s | %-10s %-29s %-29s %-29s\n", "placement", "mem GB", "NVL GB", "inter GB",
            "inter GB/s", "A100: s no-ovl/ovl, tok/s", "H100: s no-ovl/ovl, tok/s", "H200: s no-ovl/ovl, tok/s");
    for (int s = 0; s < ns; s++) {
        int first, e;
        perf_expert_range(m.E, sc[s].l.ep, 0, &first, &e);
        perf_traffic ts = perf_step(&m, &sc[s].l, e, 1);
        for (int k = 0; k < ninter; k++) {
            perf_time tm[PERF_NGPU];
            scen_times(&m, &sc[s], &eta, po, inters[k], tm);
            if (k == 0)
                fprintf(out, "  %-21s %7.1f %8.1f %8.1f |", sc[s].name, perf_max_total(&m, &sc[s].l) / GB,
                        (ts.intra[0] + ts.intra[1]) / GB, (ts.inter[0] + ts.inter[1]) / GB);
            else fprintf(out, "  %-21s %7s %8s %8s |", "", "", "", "");
            fprintf(out, " %-10.1f", inters[k]);
            for (int g = 0; g < PERF_NGPU; g++)
                fprintf(out, " %5.2f/%5.2f %6.0f/%-6.0f  ", tm[g].no_overlap, tm[g].overlap, tm[g].tok_no_overlap,
                        tm[g].tok_overlap);
            fprintf(out, "\n");
        }
    }
    /* the best placement per GPU and link that fits in the GPU's memory (or --gpu-mem) */
    for (int k = 0; k < ninter; k++) {
        fprintf(out, "gpu plan: fastest placement that fits, inter-node %.1f GB/s (%s):", inters[k],
                inters[k] == PERF_INTER_100GBE ? "100 GbE sockets shared by 8 GPUs"
                : inters[k] == PERF_INTER_NDR  ? "NDR InfiniBand"
                                               : "--inter-gbs");
        for (int g = 0; g < PERF_NGPU; g++) {
            double cap = (po->gpu_mem_gb > 0 ? po->gpu_mem_gb : perf_gpus[g].mem_gb) * GB;
            int best = -1;
            double bt = 0, bx = 0;
            for (int s = 0; s < ns; s++) {
                if (perf_max_total(&m, &sc[s].l) > cap) continue;
                perf_time tm[PERF_NGPU];
                scen_times(&m, &sc[s], &eta, po, inters[k], tm);
                int first, e;
                perf_expert_range(m.E, sc[s].l.ep, 0, &first, &e);
                perf_traffic ts = perf_step(&m, &sc[s].l, e, perf_gpus[g].fp8_tflops > 0);
                double x = ts.inter[0] + ts.inter[1];
                if (best < 0 || faster(tm[g].overlap, bt) || (!faster(bt, tm[g].overlap) && x < bx))
                    best = s, bt = tm[g].overlap, bx = x;
            }
            if (best < 0) fprintf(out, " %s none fits;", perf_gpus[g].name);
            else fprintf(out, " %s %s %.0f tok/s;", perf_gpus[g].name, sc[best].name, l.seq_len * (double)
                         l.micro_batch * l.grad_accum / bt);
        }
        fprintf(out, "\n");
    }
    /* --gpu-mem */
    if (po->gpu_mem_gb > 0) {
        double cap = po->gpu_mem_gb * GB, need = perf_max_total(&m, &l);
        int fs = perf_fit_seq(&m, &l, cap), fm = perf_fit_micro(&m, &l, cap);
        char a[64], b[64];
        if (fs > 0) snprintf(a, sizeof a, "%d", fs);
        else snprintf(a, sizeof a, "none");
        if (fm > 0) snprintf(b, sizeof b, "%d", fm);
        else snprintf(b, sizeof b, "none");
        fprintf(out, "gpu plan: --gpu-mem %.1f GB: this deck %s (%.2f GB per GPU at seq_len %d, micro-batch %d); "
                     "largest seq_len that fits %s (micro-batch %d), largest micro-batch %s (seq_len %d)\n",
                po->gpu_mem_gb, need <= cap ? "fits" : "does not fit", need / GB, l.seq_len, l.micro_batch, a,
                l.micro_batch, b, l.seq_len);
        /* the deck's base and wire: sharded at its EP, resident over all ranks, resident at its EP */
        scenario alt[3];
        int na = 0, aeps[3] = {l.ep, l.world, l.ep};
        for (int a = 0; a < 3; a++) {
            if (a == 2 && l.ep == l.world) continue;
            if (a == 1 && m.E > 0 && l.world > m.E) continue;
            alt[na].l = l;
            alt[na].l.resident = a > 0;
            alt[na].l.ep = aeps[a];
            snprintf(alt[na].name, sizeof alt[na].name, "%s EP%d", a ? "resident" : "sharded", aeps[a]);
            na++;
        }
        for (int g = 0; g < PERF_NGPU; g++) {
            fprintf(out, "gpu plan: --gpu-mem %.1f GB, %s, %.1f GB/s inter-node, %s base:", po->gpu_mem_gb,
                    perf_gpus[g].name, po->inter_gbs, perf_dtype_name(l.base));
            int best = -1;
            double bt = 0, bx = 0;
            for (int a = 0; a < na; a++) {
                perf_time tm[PERF_NGPU];
                scen_times(&m, &alt[a], &eta, po, po->inter_gbs, tm);
                double mem = perf_max_total(&m, &alt[a].l);
                int first, e;
                perf_expert_range(m.E, alt[a].l.ep, 0, &first, &e);
                perf_traffic ts = perf_step(&m, &alt[a].l, e, perf_gpus[g].fp8_tflops > 0);
                double x = ts.inter[0] + ts.inter[1];
                fprintf(out, " %s %.1f GB %s, %.2f s/step (overlap);", alt[a].name, mem / GB,
                        mem <= cap ? "fits" : "does not fit", tm[g].overlap);
                if (mem <= cap && (best < 0 || faster(tm[g].overlap, bt) || (!faster(bt, tm[g].overlap) && x < bx)))
                    best = a, bt = tm[g].overlap, bx = x;
            }
            if (best < 0) fprintf(out, " faster placement: none fits\n");
            else fprintf(out, " faster placement that fits: %s\n", alt[best].name);
        }
    }
}

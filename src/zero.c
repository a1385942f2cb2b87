/* zero.c — ZeRO stages 0-3: shard map, group gathers/flushes, gradient
 * reduction and the sharded update (zero.h). */
#include "zero.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"
#include "optim.h"

comm_t zero_seg_comm(const plan *p, int seg) { return p->params.seg[seg].kind == SEG_EXPERT ? p->data : p->world; }
int zero_seg_member(const plan *p, int seg) {
    return p->params.seg[seg].kind == SEG_EXPERT ? p->dp_index : p->world_rank;
}
int zero_seg_reduce_scatter(const plan *p, int seg, int compact, const float *full, float *mine) {
    const plan_shard *sh = &p->shard[seg];
    comm_t c = zero_seg_comm(p, seg);
    if (comm_size(c) != sh->nmemb) return -1;
    return comm_reduce_scatter(compact ? sh->toff : sh->off, compact ? sh->tcnt : sh->cnt, c, full, mine);
}

int zero_seg_allgather(const plan *p, int seg, int compact, const float *mine, float *full) {
    const plan_shard *sh = &p->shard[seg];
    comm_t c = zero_seg_comm(p, seg);
    if (comm_size(c) != sh->nmemb) return -1;
    return comm_allgather(compact ? sh->toff : sh->off, compact ? sh->tcnt : sh->cnt, c, mine, full);
}

static int member_of(const plan *p, int kind) { return kind == SEG_DENSE ? p->world_rank : p->dp_index; }
static int trainable(const param_spec *t) { return !(t->flags & (P_FROZEN | P_NOGRAD)); }

/* ------------------------------------------------------------ shard map */

int zero_map_init(zero_map *z, const plan *p, char *err, int errlen) {
    const param_table *pt = &p->params;
    memset(z, 0, sizeof *z);
    z->p = p;
    z->pt = pt;
    size_t n = (size_t)(pt->n ? pt->n : 1), ns = (size_t)(pt->nseg ? pt->nseg : 1);
    z->seg_of = malloc(sizeof(int) * n);
    z->pbase = malloc(sizeof(size_t) * ns);
    z->tfbase = malloc(sizeof(size_t) * ns);
    z->tpbase = malloc(sizeof(size_t) * ns);
    z->ttoff = calloc(n, sizeof(size_t));
    if (!z->seg_of || !z->pbase || !z->tfbase || !z->tpbase || !z->ttoff) {
        snprintf(err, errlen, "out of memory for the ZeRO shard map");
        return -1;
    }
    size_t acc = 0, tacc = 0, tf = 0;
    for (int s = 0; s < pt->nseg; s++) {
        int me = member_of(p, pt->seg[s].kind);
        z->pbase[s] = acc;
        z->tpbase[s] = tacc;
        z->tfbase[s] = tf;
        acc += p->shard[s].cnt[me];
        tacc += p->shard[s].tcnt[me];
        tf += p->shard[s].trainable;
        size_t t = 0; /* tensors of a segment in layout order = table order */
        for (int i = 0; i < pt->n; i++)
            if (pt->t[i].group == pt->seg[s].group && pt->t[i].kind == pt->seg[s].kind) {
                z->ttoff[i] = t;
                if (trainable(&pt->t[i])) t += (size_t)pt->t[i].numel_local;
            }
    }
    for (int i = 0; i < pt->n; i++) {
        z->seg_of[i] = -1;
        for (int s = 0; s < pt->nseg; s++)
            if (pt->seg[s].group == pt->t[i].group && pt->seg[s].kind == pt->t[i].kind) z->seg_of[i] = s;
        if (z->seg_of[i] < 0 && !(pt->t[i].flags & P_STORED)) { /* stored: the frozen store, no segment */
            snprintf(err, errlen, "tensor %s belongs to no ZeRO segment", pt->t[i].name);
            return -1;
        }
    }
    return 0;
}

void zero_map_free(zero_map *z) {
    free(z->seg_of), free(z->pbase), free(z->ttoff), free(z->tfbase), free(z->tpbase);
    memset(z, 0, sizeof *z);
}

void zero_tensor_part(const zero_map *z, int i, int member, int64_t *a, int64_t *b) {
    const param_spec *t = &z->pt->t[i];
    const param_segment *sg = &z->pt->seg[z->seg_of[i]];
    const plan_shard *sh = &z->p->shard[z->seg_of[i]];
    size_t t0 = t->offset - sg->offset, t1 = t0 + (size_t)t->numel_local;
    size_t lo = sh->off[member] > t0 ? sh->off[member] : t0;
    size_t hi = sh->off[member] + sh->cnt[member] < t1 ? sh->off[member] + sh->cnt[member] : t1;
    *a = *b = 0;
    if (hi > lo) {
        *a = (int64_t)(lo - t0);
        *b = (int64_t)(hi - t0);
    }
}

void zero_my_part(const zero_map *z, int i, int64_t *a, int64_t *b) {
    zero_tensor_part(z, i, member_of(z->p, z->pt->t[i].kind), a, b);
}

float *zero_at(const zero_map *z, int i, float *buf, int lay, int64_t a) {
    const param_spec *t = &z->pt->t[i];
    if (lay == ZERO_FULL_LOCAL) return buf + t->offset + a;
    int s = z->seg_of[i];
    const param_segment *sg = &z->pt->seg[s];
    const plan_shard *sh = &z->p->shard[s];
    int me = member_of(z->p, sg->kind);
    if (lay == ZERO_FULL_TRAINABLE) return buf + z->tfbase[s] + z->ttoff[i] + a;
    if (lay == ZERO_SHARD_TRAINABLE) return buf + z->tpbase[s] + (z->ttoff[i] + (size_t)a - sh->toff[me]);
    return buf + z->pbase[s] + (t->offset - sg->offset + (size_t)a - sh->off[me]);
}

/* ------------------------------------------ bf16 working weights (w16) */

/* Where the masters are: my packed shard from ZeRO 1 with w16 (and at ZeRO 3), else the flat layout. */
static int masters_packed(const zero_state *z) { return z->stage >= 3 || (z->w16 && z->stage >= 1); }
/* Tensor i's first master element in a local segment (all of it is mine). */
static float *master_at(const zero_state *z, int i) {
    return masters_packed(z) ? zero_at(&z->map, i, z->pshard, ZERO_SHARD_PACKED, 0) : z->params + z->pt->t[i].offset;
}

/* Segment s's part of its group's streams (its bank's buffers for group g; NULL: not allocated). */
static float *seg32(const zero_state *z, int s) {
    int g = z->pt->seg[s].group;
    float *b = plan_seg_resident(z->p, s) ? z->r32[g] : z->t32[g];
    return b ? b + z->s32[s] : NULL;
}
static uint16_t *seg16(const zero_state *z, int s) {
    int g = z->pt->seg[s].group;
    uint16_t *b = plan_seg_resident(z->p, s) ? z->r16[g] : z->t16[g];
    return b ? b + z->s16[s] : NULL;
}

/* Segment s's streams from the masters. Local: the copied tensors rounded in place. Shared: my pieces
 * packed into ag (the copied ones rounded to bf16), then one all-gather per non-empty stream. */
static void w16_fill(zero_state *z, int s) {
    const plan *p = z->p;
    const param_table *pt = z->pt;
    float *d32 = seg32(z, s);
    uint16_t *d16 = seg16(z, s);
    if (plan_seg_local(p, s)) {
        for (int i = 0; i < pt->n; i++)
            if (z->wseg[i] == s && params_copied(&pt->t[i]))
                ops_to_bf16(d16 + z->woff[i], master_at(z, i), (size_t)pt->t[i].numel_local);
        return;
    }
    int me = zero_seg_member(p, s), nm = p->shard[s].nmemb;
    float *t32 = z->ag;
    uint16_t *t16 = z->ag ? (uint16_t *)(void *)(z->ag + z->cnt32[s][me]) : NULL;
    size_t k32 = 0, k16 = 0;
    for (int i = 0; i < pt->n; i++) {
        int64_t a, b;
        if (z->wseg[i] != s) continue;
        zero_my_part(&z->map, i, &a, &b);
        if (b <= a) continue;
        const float *src = zero_at(&z->map, i, z->pshard, ZERO_SHARD_PACKED, a);
        if (params_copied(&pt->t[i])) {
            ops_to_bf16(t16 + k16, src, (size_t)(b - a));
            k16 += (size_t)(b - a);
        } else {
            ops_copy(t32 + k32, src, (size_t)(b - a));
            k32 += (size_t)(b - a);
        }
    }
    comm_t c = zero_seg_comm(p, s);
    int rc = 0;
    if (z->off32[s][nm - 1] + z->cnt32[s][nm - 1] > 0) rc |= comm_allgather(z->off32[s], z->cnt32[s], c, t32, d32);
    if (z->off16[s][nm - 1] + z->cnt16[s][nm - 1] > 0) rc |= comm_allgather_u16(z->off16[s], z->cnt16[s], c, t16, d16);
    DSV3_CHECK(rc == 0, "all-gather of the bf16 working weights of segment %d failed", s);
}

static size_t **member_table(const param_table *pt, const plan *p) { /* rows [nmemb]; one rank: [1] */
    int ns = pt->nseg;
    size_t **t = calloc((size_t)(ns ? ns : 1), sizeof *t);
    for (int s = 0; t && s < ns; s++) t[s] = calloc(p ? (size_t)p->shard[s].nmemb : 1, sizeof **t); /* caller checks */
    return t;
}
static void member_table_free(size_t **t, int nseg) {
    for (int s = 0; t && s < nseg; s++) free(t[s]);
    free(t);
}

static size_t opened_bytes(const plan_w16_layout *w, int g) { return w->t32[g] * sizeof(float) + w->t16[g] * 2; }

static int w16_create(zero_state *z, char *err, int errlen) {
    const param_table *pt = z->pt;
    size_t ng = (size_t)pt->n_groups + 1, ns = (size_t)pt->nseg + 1;
    plan_w16_layout *w = &z->wl;
    w->r32 = calloc(ng, sizeof(size_t)), w->r16 = calloc(ng, sizeof(size_t));
    w->t32 = calloc(ng, sizeof(size_t)), w->t16 = calloc(ng, sizeof(size_t));
    z->woff = calloc((size_t)(pt->n ? pt->n : 1), sizeof *z->woff);
    z->s32 = calloc(ns, sizeof *z->s32), z->s16 = calloc(ns, sizeof *z->s16);
    z->cnt32 = member_table(pt, z->p), z->off32 = member_table(pt, z->p);
    z->cnt16 = member_table(pt, z->p), z->off16 = member_table(pt, z->p);
    z->r32 = calloc(ng, sizeof *z->r32), z->t32 = calloc(ng, sizeof *z->t32);
    z->r16 = calloc(ng, sizeof *z->r16), z->t16 = calloc(ng, sizeof *z->t16);
    z->stale = calloc(ng, 1), z->open = calloc(ng, 1);
    z->wseg = malloc((size_t)(pt->n ? pt->n : 1) * sizeof *z->wseg);
    int bad = !w->r32 || !w->r16 || !w->t32 || !w->t16 || !z->woff || !z->s32 || !z->s16 || !z->cnt32 || !z->off32 ||
              !z->cnt16 || !z->off16 || !z->r32 || !z->t32 || !z->r16 || !z->t16 || !z->stale || !z->open || !z->wseg;
    for (int s = 0; !bad && s < pt->nseg; s++) bad = !z->cnt32[s] || !z->off32[s] || !z->cnt16[s] || !z->off16[s];
    if (bad) {
        snprintf(err, errlen, "out of memory for the bf16 working-weight tables");
        return -1;
    }
    for (int i = 0; i < pt->n; i++) { /* the segment of each tensor (-1: the frozen store) */
        z->wseg[i] = -1;
        for (int sg = 0; sg < pt->nseg; sg++)
            if (pt->seg[sg].group == pt->t[i].group && pt->seg[sg].kind == pt->t[i].kind && !(pt->t[i].flags & P_STORED))
                z->wseg[i] = sg;
    }
    if (plan_w16_layout_build(pt, z->p, w, z->woff, z->s32, z->s16, z->cnt32, z->off32, z->cnt16, z->off16, err, errlen))
        return -1;
    size_t a32 = 0, a16 = 0;
    for (int g = 0; g < pt->n_groups; g++) a32 += w->r32[g], a16 += w->r16[g];
    /* the opened banks' three slots, allocated once (never on the step path): the embedding's group, the
     * head's group, and one for the decoder/MTP layer open at the time (the largest layer's bytes) */
    int G = pt->n_groups;
    size_t slot[3] = {opened_bytes(w, 0), opened_bytes(w, G - 1), 0};
    for (int g = 1; g < G - 1; g++) slot[2] = opened_bytes(w, g) > slot[2] ? opened_bytes(w, g) : slot[2];
    int cat = ops_mem_category(OPS_MEM_PARAMS);
    int fail = w->ag_n && !(z->ag = ops_alloc(w->ag_n * sizeof *z->ag));
    fail |= a32 && !(z->res32 = ops_alloc(a32 * sizeof *z->res32)); /* stages 1-2: the shared segments' streams */
    fail |= a16 && !(z->res16 = ops_alloc(a16 * sizeof *z->res16));
    for (int k = 0; k < 3; k++) fail |= slot[k] && !(z->slot[k] = ops_alloc(slot[k]));
    ops_mem_category(cat);
    if (fail) {
        snprintf(err, errlen, "out of memory for the bf16 working weights (%.1f MiB)",
                 (a32 * 4.0 + a16 * 2.0 + w->ag_n * 4.0 + slot[0] + slot[1] + slot[2]) / 1048576.0);
        return -1;
    }
    a32 = a16 = 0;
    for (int g = 0; g < G; g++) {
        z->r32[g] = w->r32[g] ? z->res32 + a32 : NULL;
        z->r16[g] = w->r16[g] ? z->res16 + a16 : NULL;
        a32 += w->r32[g], a16 += w->r16[g];
        unsigned char *b = z->slot[g == 0 ? 0 : g == G - 1 ? 1 : 2]; /* the opened bank: fp32, then bf16 */
        z->t32[g] = w->t32[g] ? (float *)(void *)b : NULL;
        z->t16[g] = w->t16[g] ? (uint16_t *)(void *)(b + w->t32[g] * sizeof(float)) : NULL;
        z->stale[g] = 1;
    }
    z->open_layer = -1;
    return 0;
}

static void w16_close(zero_state *z, int g) {
    if (z->open_layer == g) z->open_layer = -1;
    z->open[g] = 0;
}

static void w16_destroy(zero_state *z) {
    const param_table *pt = z->pt;
    ops_free(z->ag), ops_free(z->res32), ops_free(z->res16);
    for (int k = 0; k < 3; k++) ops_free(z->slot[k]);
    free(z->wl.r32), free(z->wl.r16), free(z->wl.t32), free(z->wl.t16);
    free(z->woff), free(z->s32), free(z->s16), free(z->r32), free(z->t32), free(z->r16), free(z->t16);
    free(z->stale), free(z->open), free(z->wseg);
    member_table_free(z->cnt32, pt->nseg), member_table_free(z->off32, pt->nseg);
    member_table_free(z->cnt16, pt->nseg), member_table_free(z->off16, pt->nseg);
}

/* Opens group g: the banks opened with it filled (every open: the masters may have moved), the resident
 * ones regathered when stale. Its pointers never move. */
static void w16_open(zero_state *z, int g) {
    const param_table *pt = z->pt;
    if (!z->open[g]) {
        if (g > 0 && g < pt->n_groups - 1) { /* the layers share one slot */
            DSV3_CHECK(z->open_layer < 0, "internal error: layer groups %d and %d open at once", z->open_layer, g);
            z->open_layer = g;
        }
        for (int s = 0; s < pt->nseg; s++)
            if (pt->seg[s].group == g && !plan_seg_resident(z->p, s)) w16_fill(z, s);
        z->open[g] = 1;
    }
    if (z->stale[g])
        for (int s = 0; s < pt->nseg; s++)
            if (pt->seg[s].group == g && plan_seg_resident(z->p, s)) w16_fill(z, s);
    z->stale[g] = 0;
}

/* ------------------------------------------------- model buffers, groups */

int zero_create(zero_state *z, const param_table *pt, const plan *p, int bf16, char *err, int errlen) {
    memset(z, 0, sizeof *z);
    z->p = p;
    z->pt = pt;
    z->stage = p ? p->zero_stage : 0;
    int G = pt->n_groups;
    z->goff = calloc((size_t)G + 1, sizeof *z->goff);
    z->glen = calloc((size_t)G + 1, sizeof *z->glen);
    z->gp = calloc((size_t)G + 1, sizeof *z->gp);
    z->gg = calloc((size_t)G + 1, sizeof *z->gg);
    z->gtoff = calloc((size_t)G + 1, sizeof *z->gtoff);
    z->gtlen = calloc((size_t)G + 1, sizeof *z->gtlen);
    if (!z->goff || !z->glen || !z->gp || !z->gg || !z->gtoff || !z->gtlen) {
        snprintf(err, errlen, "out of memory for the ZeRO group table");
        return -1;
    }
    if (p && zero_map_init(&z->map, p, err, errlen)) return -1;
    if (p)
        for (int i = 0; i < pt->n; i++)
            if (pt->t[i].flags & P_FROZEN) z->compact = 1;
    for (int g = 0; g < G; g++) z->goff[g] = z->gtoff[g] = (size_t)-1;
    size_t max_shard = 0, max_tshard = 0;
    for (int s = 0; s < pt->nseg; s++) {
        const param_segment *sg = &pt->seg[s];
        if (z->goff[sg->group] == (size_t)-1) z->goff[sg->group] = sg->offset;
        z->glen[sg->group] += sg->numel;
        if (p) {
            size_t n = p->shard[s].cnt[zero_seg_member(p, s)], tn = p->shard[s].tcnt[zero_seg_member(p, s)];
            max_shard = n > max_shard ? n : max_shard;
            max_tshard = tn > max_tshard ? tn : max_tshard;
            if (z->gtoff[sg->group] == (size_t)-1) z->gtoff[sg->group] = z->map.tfbase[s];
            z->gtlen[sg->group] += p->shard[s].trainable;
            z->tlocal += p->shard[s].trainable;
        }
    }
    for (int g = 0; g < G; g++) {
        if (z->goff[g] == (size_t)-1) z->goff[g] = 0;
        if (z->gtoff[g] == (size_t)-1) z->gtoff[g] = 0;
    }
    size_t packed = p ? p->shard_floats : 0;
    z->w16 = plan_w16(pt, p, bf16); /* pt: p->params or the model's copy of it, the same table */
    if (z->w16 && w16_create(z, err, errlen)) return -1;
    int fail = 0, cat = ops_mem_category(OPS_MEM_PARAMS);
    if (masters_packed(z)) /* the masters: my shard */
        fail |= !(z->pshard = ops_alloc(packed * sizeof *z->pshard));
    else
        fail |= !(z->params = ops_alloc(pt->total_local * sizeof *z->params));
    if (pt->shared_bytes && p) { /* one copy per node of the non-expert part, this rank's share counted (plan.c) */
        size_t first, share = params_shared_share(pt, p->node_rank, p->node_size, &first);
        z->frozen = comm_node_shared_alloc(p->node, pt->shared_bytes, pt->stored_bytes - pt->shared_bytes, first, share);
        fail |= !z->frozen;
        if (z->frozen) ops_mem_count(OPS_MEM_PARAMS, z->frozen_counted = share + pt->stored_bytes - pt->shared_bytes, 1);
        z->frozen_shared = 1;
    } else if (pt->stored_bytes) {
        fail |= !(z->frozen = ops_alloc(pt->stored_bytes));
    }
    ops_mem_category(OPS_MEM_GRADS);
    size_t gfull = z->compact ? z->tlocal : pt->total_local; /* LoRA: gradients of the trainable floats only */
    size_t gshard = z->compact ? p->shard_trainable : packed;
    z->rs_n = z->stage >= 2 ? (z->compact ? max_tshard : max_shard) : 0;
    if (z->stage >= 2)
        fail |= !(z->gshard = ops_alloc(gshard * sizeof *z->gshard)) || !(z->rs_tmp = ops_alloc(z->rs_n * 4));
    else
        fail |= !(z->grads = ops_alloc(gfull * sizeof *z->grads));
    ops_mem_category(cat);
    if (fail) {
        snprintf(err, errlen, "out of memory allocating %zu parameters", pt->total_local);
        return -1;
    }
    for (int g = 0; g < G; g++) { /* without sharding every group is always open */
        if (z->params) z->gp[g] = z->params + z->goff[g];
        if (z->grads) z->gg[g] = z->grads + (z->compact ? z->gtoff[g] : z->goff[g]);
    }
    return 0;
}

size_t zero_grad_offset(const zero_state *z, int i) {
    const param_spec *t = &z->pt->t[i];
    if (!z->compact) return t->offset - z->goff[t->group];
    int s = z->map.seg_of[i];
    return z->map.tfbase[s] + z->map.ttoff[i] - z->gtoff[t->group];
}

int zero_state_optim_layout(const zero_state *z) { return zero_optim_layout(z->stage, z->compact); }

size_t zero_optim_floats(const zero_state *z) {
    if (z->compact) return z->stage >= 1 ? z->p->shard_trainable : z->tlocal;
    return z->stage >= 1 ? z->p->shard_floats : z->pt->total_local;
}

void zero_destroy(zero_state *z) {
    if (z->w16) w16_destroy(z);
    if (z->gp && z->stage >= 3)
        for (int g = 0; g < z->pt->n_groups; g++) ops_free(z->gp[g]);
    if (z->gg && z->stage >= 2)
        for (int g = 0; g < z->pt->n_groups; g++) ops_free(z->gg[g]);
    if (z->frozen_shared) {
        if (z->frozen) ops_mem_count(OPS_MEM_PARAMS, z->frozen_counted, -1);
        comm_node_shared_free(z->frozen, z->pt->stored_bytes);
    } else {
        ops_free(z->frozen);
    }
    ops_free(z->params), ops_free(z->grads), ops_free(z->pshard), ops_free(z->gshard), ops_free(z->rs_tmp);
    free(z->goff), free(z->glen), free(z->gp), free(z->gg), free(z->gtoff), free(z->gtlen);
    if (z->p) zero_map_free(&z->map);
    memset(z, 0, sizeof *z);
}

int zero_open_params(zero_state *z, int g) {
    if (z->w16) {
        w16_open(z, g);
        return 0;
    }
    if (z->stage < 3 || z->gp[g]) return 0;
    int cat = ops_mem_category(OPS_MEM_PARAMS);
    z->gp[g] = ops_alloc(z->glen[g] * sizeof(float));
    ops_mem_category(cat);
    if (!z->gp[g]) error_one("out of memory gathering parameter group %d (%zu floats)", g, z->glen[g]);
    const plan *p = z->p;
    for (int s = 0; s < z->pt->nseg; s++) {
        const param_segment *sg = &z->pt->seg[s];
        if (sg->group != g) continue;
        int rc = zero_seg_allgather(p, s, 0, z->pshard + z->map.pbase[s], z->gp[g] + (sg->offset - z->goff[g]));
        DSV3_CHECK(rc == 0, "all-gather of parameter group %d failed", g);
    }
    return 1;
}

int zero_close_params(zero_state *z, int g) {
    if (z->w16) {
        w16_close(z, g);
        return 0;
    }
    if (z->stage < 3 || !z->gp[g]) return 0;
    ops_free(z->gp[g]);
    z->gp[g] = NULL;
    return 1;
}

int zero_open_grads(zero_state *z, int g) {
    if (z->stage < 2 || z->gg[g]) return 0;
    size_t len = z->compact ? z->gtlen[g] : z->glen[g];
    int cat = ops_mem_category(OPS_MEM_GRADS);
    z->gg[g] = ops_alloc(len * sizeof(float));
    ops_mem_category(cat);
    if (!z->gg[g]) error_one("out of memory for the gradients of group %d (%zu floats)", g, len);
    return 1;
}

int zero_flush_grads(zero_state *z, int g) {
    if (z->stage < 2 || !z->gg[g]) return 0;
    const plan *p = z->p;
    for (int s = 0; s < z->pt->nseg; s++) {
        const param_segment *sg = &z->pt->seg[s];
        if (sg->group != g) continue;
        if (z->compact) { /* trainable floats only; every rank skips the same frozen segments */
            if (p->shard[s].trainable == 0) continue;
            size_t n = p->shard[s].tcnt[zero_seg_member(p, s)];
            int rc = zero_seg_reduce_scatter(p, s, 1, z->gg[g] + (z->map.tfbase[s] - z->gtoff[g]), z->rs_tmp);
            DSV3_CHECK(rc == 0, "reduce-scatter of gradient group %d failed", g);
            ops_add(z->gshard + z->map.tpbase[s], z->rs_tmp, n);
            continue;
        }
        size_t n = p->shard[s].cnt[zero_seg_member(p, s)];
        int rc = zero_seg_reduce_scatter(p, s, 0, z->gg[g] + (sg->offset - z->goff[g]), z->rs_tmp);
        DSV3_CHECK(rc == 0, "reduce-scatter of gradient group %d failed", g);
        ops_add(z->gshard + z->map.pbase[s], z->rs_tmp, n);
    }
    ops_free(z->gg[g]);
    z->gg[g] = NULL;
    return 1;
}

int zero_state_params_layout(const zero_state *z) { return masters_packed(z) ? ZERO_SHARD_PACKED : ZERO_FULL_LOCAL; }
float *zero_param_buffer(zero_state *z) { return masters_packed(z) ? z->pshard : z->params; }

void zero_params_changed(zero_state *z) {
    if (z->w16 && z->stage < 3) memset(z->stale, 1, (size_t)z->pt->n_groups);
}

float *zero_param_f32(const zero_state *z, int i) {
    const param_spec *t = &z->pt->t[i];
    if (!z->w16) return z->gp[t->group] ? z->gp[t->group] + (t->offset - z->goff[t->group]) : NULL;
    int s = z->wseg[i];
    if (params_copied(t)) return NULL;
    if (plan_seg_local(z->p, s)) return master_at(z, i); /* the master itself */
    float *b = seg32(z, s);
    return b ? b + z->woff[i] : NULL;
}

uint16_t *zero_param_bf16(const zero_state *z, int i) {
    if (!z->w16 || !params_copied(&z->pt->t[i])) return NULL;
    uint16_t *b = seg16(z, z->wseg[i]);
    return b ? b + z->woff[i] : NULL;
}

float *zero_grad_buffer(zero_state *z) { return z->stage >= 2 ? z->gshard : z->grads; }

void zero_zero_grad(zero_state *z) {
    if (z->grads) ops_zero(z->grads, z->compact ? z->tlocal : z->pt->total_local);
    if (z->gshard) ops_zero(z->gshard, z->compact ? z->p->shard_trainable : z->p->shard_floats);
}

/* ------------------------------------------------------ optimizer step */

double zero_reduce_grads(zero_state *z) {
    const plan *p = z->p;
    const param_table *pt = z->pt;
    float *g = zero_grad_buffer(z);
    double ss = 0.0;
    if (z->compact) {
        if (z->stage >= 2)
            ss = ops_sumsq(g, p->shard_trainable);
        else
            for (int s = 0; s < pt->nseg; s++) {
                const plan_shard *sh = &p->shard[s];
                if (sh->trainable == 0) continue;
                float *gs = g + z->map.tfbase[s];
                DSV3_CHECK(comm_sum_floats(gs, sh->trainable, zero_seg_comm(p, s)) == 0,
                           "all-reduce of gradient segment %d failed", s);
                int me = zero_seg_member(p, s);
                ss += ops_sumsq(gs + sh->toff[me], sh->tcnt[me]);
            }
        return comm_sum_double(ss, p->world);
    }
    if (z->stage >= 2) {
        ss = ops_sumsq(g, p->shard_floats);
    } else {
        for (int s = 0; s < pt->nseg; s++) {
            float *gs = g + pt->seg[s].offset;
            DSV3_CHECK(comm_sum_floats(gs, pt->seg[s].numel, zero_seg_comm(p, s)) == 0,
                       "all-reduce of gradient segment %d failed", s);
            int me = zero_seg_member(p, s);
            ss += ops_sumsq(gs + p->shard[s].off[me], p->shard[s].cnt[me]);
        }
    }
    return comm_sum_double(ss, p->world);
}

void zero_update(zero_state *z, const deck *d, float *m, float *v, int64_t step_t, double lr, float scale) {
    const plan *p = z->p;
    const param_table *pt = z->pt;
    float *w = zero_param_buffer(z), *g = zero_grad_buffer(z);
    if (z->compact) {
        /* each trainable tensor's part I own: weights flat (or the flat packed
         * shard at stage 3), gradients and moments compact */
        int wl = zero_params_layout(z->stage), gl = z->stage >= 2 ? ZERO_SHARD_TRAINABLE : ZERO_FULL_TRAINABLE;
        int ml = zero_optim_layout(z->stage, 1);
        for (int i = 0; i < pt->n; i++) {
            const param_spec *ts = &pt->t[i];
            if (!trainable(ts)) continue;
            int64_t a = 0, b = ts->numel_local;
            if (z->stage >= 1) zero_my_part(&z->map, i, &a, &b);
            if (b <= a) continue;
            optim_step_tensor(d, ts, zero_at(&z->map, i, w, wl, a), zero_at(&z->map, i, g, gl, a),
                              zero_at(&z->map, i, m, ml, a), zero_at(&z->map, i, v, ml, a), (size_t)(b - a), step_t,
                              lr, scale);
        }
        if (z->stage == 1 || z->stage == 2)
            for (int s = 0; s < pt->nseg; s++) {
                const param_segment *sg = &pt->seg[s];
                if (p->shard[s].trainable == 0) continue; /* frozen: unchanged everywhere */
                size_t lo = sg->offset + p->shard[s].off[zero_seg_member(p, s)];
                int rc = zero_seg_allgather(p, s, 0, w + lo, w + sg->offset);
                DSV3_CHECK(rc == 0, "all-gather of updated parameter segment %d failed", s);
            }
        return;
    }
    if (z->stage == 0) {
        optim_step(d, pt, w, g, m, v, 0, pt->total_local, step_t, lr, scale);
        return;
    }
    for (int s = 0; s < pt->nseg; s++) {
        const param_segment *sg = &pt->seg[s];
        int me = zero_seg_member(p, s);
        size_t packed = z->map.pbase[s], lo = sg->offset + p->shard[s].off[me], n = p->shard[s].cnt[me];
        float *wp = masters_packed(z) ? w + packed : w + lo;
        const float *gp = z->stage >= 2 ? g + packed : g + lo;
        optim_step(d, pt, wp, gp, m + packed, v + packed, lo, lo + n, step_t, lr, scale);
        if (z->stage < 3 && !z->w16) {
            int rc = zero_seg_allgather(p, s, 0, w + lo, w + sg->offset);
            DSV3_CHECK(rc == 0, "all-gather of updated parameter segment %d failed", s);
        }
    }
    zero_params_changed(z); /* w16: the working weights are regathered from the new masters at their next open */
}

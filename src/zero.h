/* zero.h — ZeRO in one place (design §3): the shard map that model, train
 * and ckpt all use, the stage-3 parameter gathers and stage-2/3 gradient
 * flushes around each layer group, gradient reduction by stage and the
 * sharded AdamW update.
 *
 * Layouts of a buffer (parameters, gradients, AdamW moments):
 *   ZERO_FULL_LOCAL       p->params.total_local floats: the flat local layout
 *                         (params.h; routed experts: my E/EP)
 *   ZERO_SHARD_PACKED     p->shard_floats: my shard of each segment, in order
 *   ZERO_FULL_TRAINABLE   every local trainable float, in layout order
 *   ZERO_SHARD_TRAINABLE  p->shard_trainable: my trainable shard of each segment
 * Dense segments are sharded over world, expert segments over the data comm;
 * shards are row-aligned and contiguous (plan.h).
 */
#ifndef DSV3_ZERO_H
#define DSV3_ZERO_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "plan.h"

enum { ZERO_FULL_LOCAL = 0, ZERO_SHARD_PACKED = 1, ZERO_FULL_TRAINABLE = 2, ZERO_SHARD_TRAINABLE = 3 };

/* The layout a ZeRO stage keeps: parameters packed at stage 3, moments at >= 1. */
static inline int zero_params_layout(int stage) { return stage >= 3 ? ZERO_SHARD_PACKED : ZERO_FULL_LOCAL; }
/* compact (some tensor frozen, i.e. LoRA): the moments cover trainable floats only. */
static inline int zero_optim_layout(int stage, int compact) {
    if (compact) return stage >= 1 ? ZERO_SHARD_TRAINABLE : ZERO_FULL_TRAINABLE;
    return stage >= 1 ? ZERO_SHARD_PACKED : ZERO_FULL_LOCAL;
}

/* The communicator that shards segment `seg` (world or data) and my index in it. */
comm_t zero_seg_comm(const plan *p, int seg);
int zero_seg_member(const plan *p, int seg);

/* Sums segment `seg` of a full buffer over its comm and leaves my shard of the
 * sum in `mine` / rebuilds the full segment from the shards. compact = 0: the
 * flat layout (plan_shard off/cnt); 1: trainable floats only (toff/tcnt).
 * Collective over the segment's comm; 0 or -1. */
int zero_seg_reduce_scatter(const plan *p, int seg, int compact, const float *full, float *mine);
int zero_seg_allgather(const plan *p, int seg, int compact, const float *mine, float *full);

/* ---- the shard map: where every tensor lives in each layout ---- */
typedef struct {
    const plan *p;
    const param_table *pt;
    int *seg_of;    /* [pt->n] segment of tensor i */
    size_t *pbase;  /* [pt->nseg] packed offset of my shard of segment s */
    size_t *ttoff;  /* [pt->n] trainable floats before tensor i in its segment */
    size_t *tfbase; /* [pt->nseg] trainable floats of the segments before s */
    size_t *tpbase; /* [pt->nseg] packed offset of my trainable shard of segment s */
} zero_map;

int zero_map_init(zero_map *z, const plan *p, char *err, int errlen);
void zero_map_free(zero_map *z);
/* Elements [a, b) of tensor i (local layout, relative to the tensor) in the
 * shard of `member` of its segment's comm (a == b: none). */
void zero_tensor_part(const zero_map *z, int i, int member, int64_t *a, int64_t *b);
/* My part of tensor i (member = me). */
void zero_my_part(const zero_map *z, int i, int64_t *a, int64_t *b);
/* Pointer to local element `a` of tensor i in buf of layout `lay` (shard
 * layouts: `a` must lie in my shard). */
float *zero_at(const zero_map *z, int i, float *buf, int lay, int64_t a);

/* ---- the model's parameter and gradient buffers under a stage ---- */
typedef struct {
    const plan *p;   /* NULL: one rank, no sharding */
    int stage;
    const param_table *pt;
    zero_map map;    /* valid when p != NULL */
    /* compact = 1 when some tensor is P_FROZEN (LoRA) and a plan is given:
     * gradients and AdamW moments then hold trainable floats only
     * (ZERO_FULL_TRAINABLE below stage 2, ZERO_SHARD_TRAINABLE from 2 / 1);
     * parameters keep the flat layouts. 0: every float (the original path). */
    int compact;
    size_t tlocal;   /* trainable local floats (compact: the stage-0/1 gradient size) */
    float *params;   /* [total_local] flat local layout (stage < 3) */
    float *grads;    /* [total_local] (stage < 2; compact: [tlocal]) */
    float *pshard;   /* [shard_floats] packed parameter shard (stage 3) */
    float *gshard;   /* [shard_floats] packed gradient shard (stage >= 2; compact: [shard_trainable]) */
    float *rs_tmp;   /* [rs_n] reduce-scatter landing buffer (stage >= 2) */
    /* The frozen store (train.base_dtype bf16/fp8): pt->stored_bytes bytes of
     * the P_STORED tensors in their storage precision (params.h). Resident at
     * every stage: never sharded, gathered, reduced or updated (frozen weights
     * do not change; routed experts are already split by expert parallelism).
     * Charged to the parameters (OPS_MEM_PARAMS); NULL when there is none. */
    uint8_t *frozen;
    int frozen_shared;      /* frozen's first pt->shared_bytes are one copy per node (comm_node_shared_alloc) */
    size_t frozen_counted;  /* bytes of it this rank counts (its share + its private part) */
    size_t rs_n;
    /* Layer group g is [goff[g], goff[g]+glen[g]) of the flat layout; gp[g]/gg[g]
     * are its open parameter/gradient workspaces (views of params/grads below
     * the sharding stage, gathered/zeroed copies around use above it). */
    size_t *goff, *glen;
    size_t *gtoff, *gtlen; /* compact: group g's trainable floats [gtoff[g], +gtlen[g]) of ZERO_FULL_TRAINABLE */
    float **gp, **gg;
    /* w16 (plan_w16): bf16 working weights; from ZeRO 1 pshard holds the fp32 masters (params is NULL). */
    int w16;
    int *wseg;                  /* [pt->n] tensor i's segment (-1: the frozen store) */
    plan_w16_layout wl;         /* plan.h: the banks' sizes */
    size_t *woff;               /* [pt->n] tensor i's offset in its segment's stream (s32/s16 of its bank) */
    size_t *s32, *s16;          /* [nseg] the segment's first element in its group's fp32 / bf16 stream */
    size_t **cnt32, **off32;    /* [nseg][members] a shared segment's members' pieces of its fp32 stream */
    size_t **cnt16, **off16;    /* the same, bf16 stream */
    float *ag;                  /* [wl.ag_n] packing buffer: my fp32 pieces of a segment, then my bf16 pieces */
    float *res32;               /* the resident banks of every group, one allocation each */
    uint16_t *res16;
    unsigned char *slot[3];     /* the opened banks: the embedding's group, the head's, the open layer's */
    float **r32, **t32;         /* [G] group g's fp32 stream: resident bank / opened bank (in its slot) */
    uint16_t **r16, **t16;      /* [G] the same, bf16 */
    unsigned char *stale, *open; /* [G] resident bank to regather / opened bank filled */
    int open_layer;             /* the layer group in the shared slot (-1: none) */
} zero_state;

/* ---- train.dtype "bf16": bf16 working weights, fp32 masters (from ZeRO 1 only in my shard) ----
 * As DeepSpeed's bf16 ZeRO and Megatron's distributed optimizer: the trainable linear weights
 * (params_copied) are stored and gathered in bf16; from ZeRO 1 their fp32 masters exist only in my shard,
 * beside the AdamW moments; the other tensors (embedding, norms, router) stay fp32. Each group's working values are
 * two streams, fp32 and bf16, each a segment after another in layout order. Shards are contiguous ranges
 * in member order, so the members' pieces of a shared segment, concatenated, are the segment's tensors of
 * one kind in layout order: each stream is one all-gather per segment, straight into place. A segment no
 * other rank shares (local: one member, e.g. the routed experts when EP = world; every segment at ZeRO 0
 * or on one rank without a plan) has nothing to gather:
 * its fp32 tensors are the masters themselves and its copied ones are rounded at each open, so it costs
 * one open group's bf16, not a resident copy. The layout: plan.h (plan_w16, plan_w16_layout_build). */

/* p == NULL: one rank (every group always open). pt: the local layout. bf16: train.dtype "bf16"
 * (bf16 working weights when plan_w16 says so). */
int zero_create(zero_state *z, const param_table *pt, const plan *p, int bf16, char *err, int errlen);
void zero_destroy(zero_state *z);
/* Offset of tensor i's gradient within its group's gradient workspace gg[group]. */
size_t zero_grad_offset(const zero_state *z, int i);
/* The moments' layout and floats per rank for this state. */
int zero_state_optim_layout(const zero_state *z);
size_t zero_optim_floats(const zero_state *z);
/* Stage 3: all-gather group g's parameters into gp[g] (collective over its
 * segments' comms). Returns 1 when gp[g] changed (callers rebind), else 0. */
int zero_open_params(zero_state *z, int g);
int zero_close_params(zero_state *z, int g);
/* Stage >= 2: a zeroed full-gradient workspace gg[g]; flush reduce-scatters it
 * into my shard and frees it (collective). Return 1 when gg[g] changed. */
int zero_open_grads(zero_state *z, int g);
int zero_flush_grads(zero_state *z, int g);
/* Tensor i's fp32 values in its open group (NULL: closed, or bf16 under w16) / its bf16 values (w16). */
float *zero_param_f32(const zero_state *z, int i);
uint16_t *zero_param_bf16(const zero_state *z, int i);
/* The masters changed outside zero_update (a load, an init, a bias update): w16 regathers. */
void zero_params_changed(zero_state *z);
/* The buffers the optimizer and checkpoints see (layouts: zero_state_params_layout, zero_optim_layout). */
int zero_state_params_layout(const zero_state *z);
float *zero_param_buffer(zero_state *z);
float *zero_grad_buffer(zero_state *z);
void zero_zero_grad(zero_state *z);

/* ---- the optimizer step under a stage (train.c) ---- */
/* Reduces gradients per stage (0/1: all-reduce each segment over its comm;
 * 2/3: already reduce-scattered by the flushes) and returns the global sum of
 * squares, every element counted once, by its shard owner. Collective. */
double zero_reduce_grads(zero_state *z);
/* AdamW on what this rank owns (moments m, v in zero_optim_layout), then
 * stages 1/2 all-gather the updated parameters. Collective for stage >= 1. */
void zero_update(zero_state *z, const deck *d, float *m, float *v, int64_t step_t, double lr, float scale);

#endif

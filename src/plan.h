/* plan.h — the layout, computed once from deck + world size (design §1.4, §3).
 *
 * The real run and --dry-run use the same plan, so the memory estimate cannot
 * drift from what the run allocates.
 *
 * Ranks: rank = dp_index * EP + ep_index. An expert group (EP consecutive
 * ranks) splits the routed experts; the data communicator joins ranks with
 * the same ep_index.
 *
 * ZeRO shards are row-aligned: a segment of the flat parameter buffer
 * (params.h) is a sequence of rows (a row = the last dimension of a tensor,
 * 1 element for a 1-D tensor), and each member of the segment's communicator
 * (world for dense segments, data for expert segments) owns a contiguous run
 * of whole rows of near-equal size. Every shard of every tensor is therefore
 * a simple hyperslab (checkpoints) and a contiguous range (collectives).
 */
#ifndef DSV3_PLAN_H
#define DSV3_PLAN_H

#include <stdio.h>

#include "comm.h"
#include "perf.h"

typedef struct deck deck; /* deck.h */
#include "model/params.h"

typedef struct {
    int nmemb;            /* members of the comm that shards this segment */
    size_t *off, *cnt;    /* [nmemb] floats, relative to the segment start */
    /* The same split seen in the segment's trainable floats only (tensors
     * without P_FROZEN/P_NOGRAD, concatenated in layout order): member k owns
     * trainable floats [toff[k], toff[k]+tcnt[k]). Gradient and optimizer
     * buffers of LoRA runs are this compact layout (whole rows too). */
    size_t *toff, *tcnt;  /* [nmemb] */
    size_t trainable;     /* trainable floats in the segment */
} plan_shard;

typedef struct {
    double params, grads, optim, acts, total; /* bytes per rank */
} plan_memory;

typedef struct plan {
    comm_t world, node, expert, data;    /* owned (COMM_NULL until built) */
    int world_rank, world_size;
    int node_rank, node_size, node_index, n_nodes;
    int ep, ep_index;                    /* expert comm size / my rank in it */
    int dp, dp_index;                    /* data comm size / my rank in it */
    int experts_per_rank, expert_first;  /* routed experts owned: [first, first+per_rank) */
    int zero_stage;
    int micro_batch, grad_accum;         /* global_batch = micro_batch * grad_accum * world_size */
    param_table params;                  /* local tensor layout (experts: my E/EP) */
    plan_shard *shard;                   /* [params.nseg] */
    size_t shard_floats;                 /* floats of all segments I own under ZeRO (dense+expert) */
    plan_memory mem;                     /* estimate for this rank */
    char cpuset[128];                    /* hwloc: the cores this rank is bound to */
    /* added by plan.c */
    char host[64];                       /* hostname of my node */
    int ncores;                          /* cores in my cpuset share (0 = unknown) */
    int bound;                           /* 1 bound to cpuset, 0 binding not allowed, -1 bind failed */
    int n_moe_layers;                    /* MoE layers incl. MTP (each has E/EP experts here) */
    size_t shard_trainable;              /* trainable floats of all segments I own (compact layout) */
    size_t gather_floats;                /* ZeRO-3 gather buffer: largest dense + largest expert segment */
    size_t reduce_floats;                /* ZeRO-2/3 reduce buffers: open gradient groups + reduce-scatter scratch */
    int state_compact;                   /* a frozen tensor exists (LoRA): gradients and moments of the
                                          * trainable floats only; else the full layout (router-bias slots too) */
} plan;

/* Validates the layout against world size and builds communicators, ownership,
 * shards and the memory estimate. Allocates no model memory. Collective over
 * `world`; every rank returns the same status and message. */
int plan_build(plan *p, const deck *d, comm_t world, char *err, int errlen);
/* Rank 0 prints the plan of every rank (gathered) plus totals. Collective. */
void plan_print(const plan *p, const deck *d, FILE *out);
/* The line of plan_print that states the routed experts per rank (and an
 * uneven ownership: "uneven expert ownership: 3 or 2 ... 2 ranks x 3 + 3 x 2"),
 * after prefix. No collectives; the run prints it too. */
void plan_print_ownership(const plan *p, const deck *d, const char *prefix, FILE *out);
void plan_free(plan *p);
/* Rank 0 (no collectives): the GPU plan of the deck (perf.h): memory by
 * category per rank class, bytes per step per link class, FLOPs, roofline
 * step times on A100/H100/H200, the placements compared over two inter-node
 * links, and with po->gpu_mem_gb > 0 the fit answers. */
void plan_print_perf(const plan *p, const deck *d, const perf_opts *po, FILE *out);

/* Routed experts owned by member ep_index of an expert group of ep ranks:
 * [first, first+count). E % ep != 0 is uneven ownership: the first E % ep
 * members own E/ep + 1, the others E/ep (256 on 24: 16 x 11 + 8 x 10). */
void plan_expert_range(int E, int ep, int ep_index, int *first, int *count);

/* Which member of the segment's comm owns the float at segment offset `o`. */
int plan_shard_owner(const plan_shard *s, size_t o);

/* ---- added by plan.c ---- */

/* The pure part of plan_build: validation, ownership, grad accumulation,
 * param table, shards and memory estimate for rank `rank` of `size`, without
 * MPI (communicators stay COMM_NULL, no hwloc). Same messages as
 * plan_build. Tests and tools use it to look at any rank of any layout. */
int plan_layout(plan *p, const deck *d, int size, int rank, char *err, int errlen);

/* Row-aligned split of segment `seg` of `pt` into `nmemb` contiguous shards
 * of near-equal floats (boundaries at the row boundary nearest to k*N/nmemb).
 * Fills s (allocates off/cnt/toff/tcnt). Returns 0 or -1 (no memory). */
int plan_shard_segment(plan_shard *s, const param_table *pt, int seg, int nmemb);
void plan_shard_free(plan_shard *s);

/* Trainable = gets a gradient and optimizer state. */
static inline int plan_param_trainable(const param_spec *t) { return !(t->flags & (P_FROZEN | P_NOGRAD)); }

/* Memory estimate per rank, bytes (design §4): what the trainer allocates, on
 * either backend, from the same numbers the run uses (plan fields above).
 * The GPU plan (perf.h) is the bf16 design layout. Categories:
 *  params  stage<3: every local tensor unsharded; stage 3: my shard of every
 *          segment + gather_floats, fp32; plus the frozen store (narrow base,
 *          train.base_dtype), its node-shared part counted by share. With
 *          train.dtype bf16 and trainable linears the working weights of
 *          zero.h (plan_w16_sizes: the resident banks, the embedding's,
 *          head's and largest layer's opened banks, the packing buffer), and
 *          from stage 1 the masters are my shard.
 *  grads   fp32 state floats: with state_compact the trainable ones only,
 *          else every float (the full layout keeps the router biases' slots).
 *          stage<2 all local state floats; stage>=2 my state shard +
 *          reduce_floats (open group buffers + reduce-scatter scratch).
 *  optim   AdamW m and v, fp32, the same state floats: stage>=1 my shard,
 *          else all local.
 *  acts    cost_act_bytes() (model/cost.c): the activation buffer (the MoE
 *          dispatch rows included) and the host counts.
 *          (ZeRO buffers are counted once, under params and grads.)
 *  total   the sum. */
plan_memory plan_memory_estimate(const deck *d, const plan *p);

/* ---- train.dtype "bf16": bf16 working weights of the trainable linears (zero.h keeps them) ----
 * 1 when table pt takes that layout: bf16, full training with trainable linears (p: its plan, NULL for one
 * rank without one). */
int plan_w16(const param_table *pt, const plan *p, int bf16);
/* Segment s is local when my masters hold all of it: no plan, ZeRO 0, or a comm of one member. */
int plan_seg_local(const plan *p, int s);
/* The bank of segment s's streams: resident (stages 1-2, shared segments) or opened with its group. */
int plan_seg_resident(const plan *p, int s);
/* The sizes of each group's working-weight streams. Banks: resident (stages 1-2, shared segments:
 * regathered after each update) and opened (every shared segment at stage 3, and the copied tensors of a
 * local segment: filled at each open, in one of three slots allocated once: the embedding's group's, the
 * head's, and one shared by the layers, which open one at a time). A local segment's fp32 tensors are
 * their masters: no stream. */
typedef struct {
    size_t *r32, *r16, *t32, *t16; /* [n_groups] fp32 / bf16 elements of the resident / opened bank */
    size_t ag_n;                    /* floats of the packing buffer */
} plan_w16_layout;
/* The layout for this rank: w's arrays (the caller's, [n_groups]), and optionally per tensor woff (its
 * offset in its segment's stream), per segment s32/s16 (the segment's start in its group's stream of its
 * bank) and the members' pieces of each shared segment (tables [nseg][nmemb]). 0, or -1 with err when a
 * segment's shards are not consecutive ranges from 0 (the streams rely on it). */
int plan_w16_layout_build(const param_table *pt, const plan *p, plan_w16_layout *w, size_t *woff, size_t *s32,
                          size_t *s16, size_t **cnt32, size_t **off32, size_t **cnt16, size_t **off16, char *err,
                          int errlen);
int plan_w16_sizes(const plan *p, plan_w16_layout *w); /* the sizes only */

#endif

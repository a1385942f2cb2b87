/* params.h — the table of model tensors, named by their Hugging Face names.
 *
 * One table, built from the deck alone, serves the model (pointer binding),
 * the plan (--dry-run memory and parameter counts), the optimizer (decay
 * flags, ZeRO slices) and checkpoints (dataset paths, global shapes).
 *
 * Memory (design §4): the tensors are laid out in one flat float buffer,
 * grouped into segments. A segment is (group, kind): group 0 = embedding,
 * 1..L = decoder layers 0..L-1, L+1..L+D = MTP layers, L+D+1 = final norm and
 * lm_head; kind DENSE (replicated, ZeRO-sharded over world) or EXPERT (routed
 * experts, each rank holds E/EP of them, ZeRO-sharded over the data comm).
 * A segment is contiguous, so a ZeRO-3 gather is one call per segment.
 */
#ifndef DSV3_PARAMS_H
#define DSV3_PARAMS_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"

enum {
    P_NODECAY = 1 << 0,   /* norms, router bias: no weight decay */
    P_EXPERT = 1 << 1,    /* routed experts stacked [E, out, in]; rank holds [E/EP, out, in] */
    P_NOGRAD = 1 << 2,    /* model state not trained by gradient (e_score_correction_bias) */
    P_FROZEN = 1 << 3,    /* base weight frozen (LoRA runs) */
    P_LORA = 1 << 4,      /* LoRA adapter tensor */
    P_STORED = 1 << 5,    /* frozen linear weight held narrow (bf16 / fp8) in the frozen store, not in the floats */
};

enum { SEG_DENSE = 0, SEG_EXPERT = 1 };

typedef struct {
    char name[128];       /* HF name; stacked experts: model.layers.3.mlp.experts.gate_proj.weight */
    int ndim;
    int64_t shape[3];     /* global shape, [out, in] for linears, [E, out, in] for stacked experts */
    int64_t numel;        /* global element count */
    int64_t numel_local;  /* elements this rank holds unsharded (experts: E/EP of them) */
    int group;            /* see above */
    int kind;             /* SEG_DENSE | SEG_EXPERT */
    int flags;
    size_t offset;        /* floats from the start of the flat buffer (local layout) */
    /* Storage (train.base_dtype). dtype 0 (OPS_F32): the tensor is floats of
     * the flat buffer. P_STORED: dtype OPS_BF16 or OPS_FP8_E4M3 (ops.h), the
     * tensor takes NO floats (numel_local 0: not in any segment, shard or
     * gather) and lives in the frozen store, a byte buffer every rank holds
     * unsharded at any ZeRO stage (routed experts: my E/EP of them): at byte
     * soff its data [n_mat, out, in] (2 or 1 bytes each), then for FP8 the f32
     * scales [n_mat, ceil(out/128), ceil(in/128)] at byte soff + sscale. */
    int dtype;
    int n_mat;            /* P_STORED: matrices held (1, or E/EP stacked experts) */
    size_t soff, sscale, sbytes; /* P_STORED: byte offset, scale offset (relative), bytes in all */
} param_spec;

typedef struct {
    int group, kind;
    size_t offset, numel; /* local floats in the flat buffer */
} param_segment;

typedef struct {
    int n, cap;
    param_spec *t;
    int nseg;
    param_segment *seg;
    int n_groups;         /* L + D + 2 */
    size_t total_local;   /* floats in the flat buffer of one rank (unsharded) */
    int64_t n_params;     /* global parameters (no MTP copies of embed/head) */
    int64_t n_trainable;  /* global trainable parameters */
    int ep;               /* expert-parallel size the local layout was built for */
    size_t stored_bytes;  /* bytes of the frozen store on one rank (P_STORED tensors; 0 with base_dtype fp32) */
    size_t shared_bytes;  /* its first shared_bytes (the non-expert tensors, padded to 4096 bytes) are one copy
                           * per node when lora.node_shared: each rank of the node allocates params_shared_share
                           * of it; 0 otherwise */
    int e_local;          /* routed experts per layer in the local layout (E/ep, or an uneven
                           * owner's count: params_build_owned) */
} param_table;

/* Builds the table for the model with EP-way expert split (ep >= 1). LoRA
 * tensors are added for lora's targets when lora && lora->enabled (lora.h).
 * Returns 0 or -1 with err set. */
int params_build(param_table *pt, const deck_model *model, const deck_lora *lora, int ep, char *err, int errlen);
/* Same with e_local routed experts per layer in the local layout: the
 * trainer's and the plan's (uneven ownership when E % ep != 0: E/ep or
 * E/ep + 1, plan_expert_range). 0 <= e_local <= E. */
int params_build_owned(param_table *pt, const deck_model *model, const deck_lora *lora, int ep, int e_local,
                       char *err, int errlen);
void params_free(param_table *pt);
/* The init stream of a tensor (counter-based init, design §1.5): FNV-1a of its HF name. */
uint64_t params_name_key(const char *name);
/* The storage dtype the deck asks for frozen linear weights (lora->base_dtype): OPS_F32/BF16/FP8_E4M3. */
int params_base_dtype(const deck_lora *lora);
/* The GEMM precision the deck asks for them (lora->gemm_dtype): OPS_GEMM_F32/BF16/FP8. */
int params_gemm_dtype(const deck_lora *lora);
/* Index of a tensor by HF name, or -1. */
int params_find(const param_table *pt, const char *name);
/* Layer group helpers */
static inline int params_group_of_layer(int layer) { return layer + 1; }

/* bf16 weights (train.dtype = "bf16"): a trainable linear weight — what a GEMM multiplies: the attention,
 * dense-MLP and expert projections, eh_proj, lm_head; not the embedding, the norms or the router — is
 * stored and multiplied in bf16 as a working weight of its fp32 master (zero.h). */
int params_copied(const param_spec *t);

/* 1 when the embedding and lm_head are frozen and stored in bf16 (train.embed_dtype = "bf16"). */
int params_embed_stored(const deck_lora *lora);
/* Bytes of the node-shared part of the frozen store that node rank r of n
 * allocates (whole pages, near-equal), and its first byte. */
size_t params_shared_share(const param_table *pt, int r, int n, size_t *first);
/* The node rank that writes tensor i when it is in the node-shared part (the
 * one whose share holds its first byte); -1 for a tensor every rank writes. */
int params_shared_writer(const param_table *pt, int i, int n);

#endif

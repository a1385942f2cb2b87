/* perf.h — the GPU plan: memory by category, bytes per link class, FLOPs and
 * a roofline step time for the GPU layout of a deck (README "The 671B plan").
 *
 * Pure functions of the model config, the layout and stated hardware
 * numbers; no MPI, no deck, no allocation beyond a parameter table while
 * perf_model_build runs. plan.c prints what these return (--dry-run).
 *
 * What the GPU layout is (the CUDA backend's plan, design §4, §7, issue 14):
 *  - trainable tensors: fp32 master + bf16 compute copy, fp32 gradients and
 *    AdamW moments, sharded by ZeRO as the deck says (dense over world, expert
 *    tensors over the data group);
 *  - frozen linear weights in train.base_dtype: fp32, bf16, or fp8 = e4m3 +
 *    one f32 scale per 128x128 block (the linears the released checkpoint
 *    stores in FP8: the five MLA projections and every gate/up/down of the
 *    dense, shared and routed experts); embed_tokens, lm_head, eh_proj and
 *    the router gate stay bf16 (fp32 with base fp32); norms and router
 *    biases fp32;
 *  - parallel.frozen = "sharded": frozen weights follow the ZeRO stage as the
 *    trainer does: stage 3 shards them (experts over the data group, the rest
 *    over world) and gathers them layer by layer twice a step (forward;
 *    recompute + backward), a lower stage keeps them whole; "resident": a routed expert lives on its
 *    expert-parallel owner and is never gathered, the rest of the frozen base
 *    is sharded inside a node (gathered over NVLink only; nothing frozen
 *    crosses the inter-node link);
 *  - gathers: at most two live gathered groups (the layer in use + the one
 *    prefetched), the head group gathered like a layer, embedding rows
 *    gathered for the micro-batch's tokens (design §3: gather a layer just
 *    before use, free after);
 *  - activations bf16 (cost_gpu_act_bytes), logits one fp32 [T,V] buffer
 *    with the dlogits written over it, as model.c does (no chunked CE: not in
 *    the design);
 *  - MoE dispatch: one row per (token, destination rank) in the wire dtype
 *    (fp8 = e4m3 + one f32 scale per 128 values), combine bf16 (fp32 with an
 *    fp32 wire); send and receive buffers sized for the expected rows x 1.5;
 *  - a runtime reserve for the CUDA context, cuBLAS/cuDNN workspaces and NCCL
 *    buffers (PERF_RUNTIME_BYTES, an assumption; it holds cuBLASLt's 32 MiB W8A8
 *    workspace, cuda/ops.cu LT_WS_BYTES, which a run counts as untracked). */
#ifndef DSV3_PERF_H
#define DSV3_PERF_H

#include "model/config.h"

/* Command-line inputs of the GPU plan (dsv3 --dry-run). */
typedef struct {
    double gpu_mem_gb;  /* --gpu-mem: memory per GPU to fit, GB (1e9 B); 0 = not asked */
    double intra_gbs;   /* --intra-gbs: effective intra-node GB/s per GPU and direction; 0 = the GPU's */
    double inter_gbs;   /* --inter-gbs: effective inter-node GB/s per GPU and direction */
    int gpus_per_node;  /* GPUs sharing a node's NVLink domain (8) */
} perf_opts;
perf_opts perf_opts_default(void);

#define PERF_INTER_NDR 47.0   /* NDR InfiniBand 400 Gb/s = 50 GB/s line, one NIC per GPU, 94 % (nccl-tests) */
#define PERF_INTER_100GBE 1.4 /* 100 GbE sockets = 12.5 GB/s line per node, 90 %, shared by 8 GPUs */
#define PERF_RUNTIME_BYTES (2.0 * 1073741824.0) /* CUDA context + cuBLAS/cuDNN workspaces + NCCL: assumed */
#define PERF_DISPATCH_HEADROOM 1.5              /* dispatch buffers: expected rows x this (routing imbalance) */

typedef struct {
    const char *name;
    double bf16_tflops, fp8_tflops; /* dense tensor-core peaks; fp8 0: none (FP8 stored, dequantized to bf16) */
    double hbm_tbs;                 /* HBM TB/s */
    double mem_gb;                  /* usable memory, GB (1e9 B) */
    double intra_gbs;               /* NVLink, NCCL-effective GB/s per direction */
} perf_gpu;
enum { PERF_NGPU = 3 };
extern const perf_gpu perf_gpus[PERF_NGPU]; /* A100-80GB SXM, H100-80GB SXM, H200-141GB SXM */

typedef struct {
    double bf16, fp8, attn, hbm; /* fractions of peak: bf16 GEMM, fp8 block-scaled GEMM, attention, HBM */
} perf_eta;
perf_eta perf_eta_default(void); /* 0.70, 0.60, 0.50, 0.80 */

typedef enum { PERF_FP32 = 0, PERF_BF16 = 1, PERF_FP8 = 2 } perf_dtype;
/* "fp32" | "bf16" | "fp8" -> dtype (fp32 for anything else) */
perf_dtype perf_dtype_of(const char *s);
const char *perf_dtype_name(perf_dtype t);

/* What the GPU plan counts of a model, from its parameter table (counts are
 * elements; "per token" FLOPs count 2 per multiply-add). */
typedef struct {
    int E, k, H, V, L, D, n_moe, n_group, topk_group, max_pos;
    /* routed experts, per expert and MoE layer */
    double exp_frozen, exp_scales, exp_train;
    /* non-expert tensors over the whole model */
    double q8, q8_scales; /* frozen linears stored FP8 in the release */
    double b16;           /* frozen embed, lm_head, eh_proj, router gate */
    double small;         /* frozen or no-grad 1-D tensors (norms, router biases): fp32 */
    double train;         /* trainable non-expert tensors (LoRA adapters, or the whole model) */
    double train_q8, train_b16; /* base tensors that are trainable (no LoRA): q8-able / not */
    double embed, head;   /* elements of embed_tokens and lm_head */
    double embed_frozen, head_frozen; /* the same when frozen (part of b16), else 0 */
    /* the largest decoder-layer group without routed experts (a dense layer), and the largest MoE
     * layer's non-expert part (its experts come on top when they are gathered); elements */
    double lay_q8, lay_q8_scales, lay_b16, lay_small, lay_train;
    double moe_q8, moe_q8_scales, moe_b16, moe_small, moe_train;
    /* FLOPs per token of one forward (2 per multiply-add) */
    double f_q8, f_b16;   /* frozen non-expert linears, FP8-able / bf16 (no heads) */
    double f_train;       /* trainable non-expert linears (LoRA: adapters; no heads) */
    double f_exp_frozen, f_exp_train; /* routed experts: k rows per token and MoE layer (global average) */
    double f_head;        /* one lm_head */
    double f_attn_coef;   /* attention core of all blocks: x (seq_len+1) = forward FLOPs per token */
    double head_trainable;
    /* bytes of memory-bound traffic per token (bf16 elements) */
    double act_floats;    /* saved floats per token over all blocks (cost_gpu_layer_floats) */
    double lora_io;       /* sum over adapted linears of (in + 2 out): unfused LoRA reads/writes */
    double act_tok_ckpt, act_tok_full; /* activation bytes per token (bf16), no [T,V]: ckpt on / off */
} perf_model;

/* Routed experts owned by member ep_index of an expert group of ep ranks:
 * [first, first+count). E % ep != 0 is uneven ownership: the first E % ep
 * members own E/ep + 1, the others E/ep (256 on 24: 16 x 11 + 8 x 10). */
void perf_expert_range(int E, int ep, int ep_index, int *first, int *count);

/* Builds the counts for the model of `o` at o->seq_len. 0 or -1 with err. */
int perf_model_build(perf_model *m, const model_opts *o, char *err, int errlen);

typedef struct {
    perf_dtype base;     /* frozen linear storage */
    int resident;        /* parallel.frozen = "resident" */
    perf_dtype wire;     /* dispatch dtype; combine bf16 (fp32 with an fp32 wire) */
    int world, ep, gpn;  /* ranks, expert-parallel size, GPUs per node */
    int zero;            /* ZeRO stage of the trainable state */
    int ckpt;            /* activation checkpointing */
    int micro_batch, seq_len, grad_accum;
} perf_layout;

typedef struct {
    double experts;  /* frozen routed experts held (resident: owned; sharded: my ZeRO shard) */
    double base;     /* frozen non-expert weights held (resident: node shard; sharded: world shard) */
    double gather;   /* gather buffers: 2 live groups (in use + prefetch) + embedding rows */
    double train;    /* trainable: bf16 copy, fp32 master, grads, AdamW m+v (ZeRO), reduce buffer */
    double acts;     /* saved activations (bf16) and backward scratch, without the [T,V] buffers */
    double logits;   /* logits, dlogits written over them: one fp32 [T,V] buffer + per-token loss */
    double dispatch; /* MoE dispatch/combine send+recv buffers in the wire dtype */
    double runtime;  /* PERF_RUNTIME_BYTES */
    double total;
} perf_mem;

/* Memory of a rank owning `e_owned` routed experts per MoE layer. */
perf_mem perf_memory(const perf_model *m, const perf_layout *l, int e_owned);

/* Expected destinations of one token's top-k routing (n_group / topk_group
 * group-limited, uniform inside the chosen groups; n_group > 12 or not
 * dividing E: uniform over all E), seen from EP rank 0 (the fullest) of
 * an expert group laid over nodes of gpn consecutive ranks:
 *   ranks       distinct EP ranks hit (incl. self)
 *   self        P(self hit)
 *   local       distinct ranks on my node hit, self excluded
 *   remote      distinct ranks on other nodes hit
 *   nodes       distinct other nodes hit */
typedef struct {
    double ranks, self, local, remote, nodes;
} perf_route;
perf_route perf_routing(const perf_model *m, int ep, int gpn);

/* Bytes and FLOPs of one step of one rank, split into the forward pass (f)
 * and the backward pass (b: recompute + backward + gradient reduction). */
typedef struct {
    double intra[2], inter[2];             /* bytes per link class [f, b] */
    double gather_intra, gather_inter;     /* of which ZeRO/node gathers of weights (whole step) */
    double disp_intra, disp_inter;         /* of which MoE dispatch/combine (whole step) */
    double red_intra, red_inter;           /* of which gradient reduction (whole step) */
    double flop_fp8[2], flop_bf16[2], flop_attn[2]; /* hardware FLOPs (recompute included) */
    double hbm[2];                         /* memory-bound kernel bytes */
    double model_flops;                    /* model FLOPs (no recompute; the MFU numerator) */
    double tokens;                         /* tokens of this rank per step */
} perf_traffic;
/* fp8_gemm: the GPU has FP8 tensor cores (else FP8 weights are dequantized to
 * bf16 per use: bf16 FLOPs + 3 bytes of HBM per weight element used). */
perf_traffic perf_step(const perf_model *m, const perf_layout *l, int e_owned, int fp8_gemm);

typedef struct {
    double comp[2], intra[2], inter[2]; /* seconds per pass */
    double no_overlap, overlap;         /* step seconds */
    double tok_no_overlap, tok_overlap; /* tokens/s/GPU */
    double mfu_no_overlap, mfu_overlap; /* model FLOPs / (step time x bf16 peak) */
    const char *bound;                  /* what binds with overlap: "compute" | "intra" | "inter" */
} perf_time;
/* Roofline: t_comp = fp8/(eta.fp8 peak8) + bf16/(eta.bf16 peak16) +
 * attn/(eta.attn peak16) + hbm/(eta.hbm HBM); links at intra_gbs / inter_gbs
 * (effective). No overlap: sum of all; overlap: per pass max(comp, intra,
 * inter), summed over the two passes. */
perf_time perf_time_of(const perf_traffic *t, const perf_gpu *g, const perf_eta *eta, double intra_gbs,
                       double inter_gbs);

/* The largest perf_memory total over the ranks (the uneven owners of one more expert). */
double perf_max_total(const perf_model *m, const perf_layout *l);
/* Largest seq_len (<= max_position_embeddings) / micro_batch (<= 65536) with
 * perf_max_total <= bytes; 0 when even 1 does not fit. */
int perf_fit_seq(const perf_model *m, const perf_layout *l, double bytes);
int perf_fit_micro(const perf_model *m, const perf_layout *l, double bytes);
/* Smallest seq_len (a multiple of step, <= max_position_embeddings) from which
 * the inter-node link no longer binds either pass (inter <= compute, pass by
 * pass, as the overlapped step needs); 0 = never. */
int perf_hidden_seq(const perf_model *m, const perf_layout *l, const perf_gpu *g, const perf_eta *eta,
                    double intra_gbs, double inter_gbs, int step);

#endif

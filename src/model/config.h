/* config.h — what the model is built from: the Hugging Face DeepSeek-V3
 * config (deck group `model`, dsv3-spec.md §1) and the LoRA settings (deck
 * group `lora`). src/model/ sees these and nothing else of a deck, so the
 * model and its cost formulas do not depend on how a run is configured.
 */
#ifndef DSV3_MODEL_CONFIG_H
#define DSV3_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#define DECK_STR 256
#define DECK_MAX_TARGETS 16

typedef struct {
    /* model.* — Hugging Face DeepSeek-V3 config names (dsv3-spec.md §1) */
    int vocab_size;
    int hidden_size;
    int intermediate_size;      /* dense MLP */
    int moe_intermediate_size;  /* per routed/shared expert */
    int num_hidden_layers;
    int first_k_dense_replace;  /* layers [0, k) are dense */
    int n_routed_experts;
    int n_shared_experts;
    int num_experts_per_tok;
    int n_group;
    int topk_group;
    double routed_scaling_factor;
    bool norm_topk_prob;
    int q_lora_rank;            /* 0 = plain q_proj */
    int kv_lora_rank;
    int qk_nope_head_dim;
    int qk_rope_head_dim;
    int v_head_dim;
    int num_attention_heads;
    double rms_norm_eps;
    double rope_theta;
    int max_position_embeddings;
    char rope_scaling_type[DECK_STR]; /* "yarn" | "none" */
    double rope_factor;
    int rope_original_max_position_embeddings;
    double rope_beta_fast, rope_beta_slow, rope_mscale, rope_mscale_all_dim;
    int num_nextn_predict_layers; /* MTP depth D, 0 = off */
    int bos_token_id, eos_token_id;
    double initializer_range;   /* init std */
    /* training-only model fields */
    double mtp_loss_weight;     /* lambda */
    double aux_loss_alpha;      /* sequence-wise balance loss alpha, 0 = off */
    double bias_update_rate;    /* gamma of the aux-loss-free bias update, 0 = off */
    /* model.quantization_config of the HF checkpoint (import/init_from) */
    char quant_method[DECK_STR];    /* "" (none) | "fp8" (e4m3, 128x128 blocks) */
    char quant_scale_fmt[DECK_STR]; /* "" (fp32 scales) | "ue8m0" (V3.1: powers of two) */
} deck_model;

typedef struct {
    bool enabled;
    int r;
    double alpha;
    double dropout;             /* on the adapters' input, training only (PEFT lora_dropout) */
    bool use_rslora;            /* scaling alpha/sqrt(r) (rank-stabilised LoRA) instead of alpha/r */
    int n_targets;
    char targets[DECK_MAX_TARGETS][DECK_STR]; /* e.g. "self_attn.q_a_proj" */
    /* deck key train.base_dtype, kept here so the model sees it: storage of the
     * frozen base's linear weights, "fp32" | "bf16" | "fp8" (e4m3 + 128x128 f32
     * block scales); anything but fp32 needs enabled (a frozen base) */
    char base_dtype[DECK_STR];
    /* deck key train.gemm_dtype: "fp32" | "bf16" | "fp8", the precision of the
     * GEMMs with the frozen store's weights (ops.h ops_gemm; "" = fp32) */
    char gemm_dtype[DECK_STR];
    /* deck key train.embed_dtype: "fp32" (the embedding and lm_head are floats,
     * as every other tensor) | "bf16" (frozen, in the frozen store in bf16, as
     * the release stores them: never widened whole) */
    char embed_dtype[DECK_STR];
    /* 1: the frozen store's non-expert part is one copy per node, shared by its
     * ranks (parallel.frozen = "resident"; params.h shared_bytes) */
    int node_shared;
} deck_lora;

/* A model instance: config, adapters, the longest sequence (RoPE table), the
 * micro-batch it is planned for and whether blocks keep only their input and
 * recompute (activation checkpointing). */
typedef struct {
    const deck_model *cfg;
    const deck_lora *lora;
    int seq_len;
    int micro_batch;    /* sequences per micro-batch: sizes the scratch arena */
    int checkpointing;
    int wire;           /* MoE dispatch/combine wire dtype (ops_moe.h OPS_WIRE_*: 0 fp32, 1 bf16, 2 fp8) */
    int moe_overlap;    /* MoE exchanges overlapped with the expert GEMMs (two halves; moe.h) */
    int act_bf16;       /* train.dtype = "bf16": the main blocks' inputs are rounded to bf16 and kept in bf16
                         * (model.c), the first activations stored narrow */
} model_opts;

#endif

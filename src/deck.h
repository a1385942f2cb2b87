/* deck.h — the run configuration read from a libconfig input deck.
 *
 * One struct, filled by deck_load() on every rank from the same resolved text.
 * Every field has a default, a type and a range in the schema table in deck.c;
 * a key the program never reads is an error (PETSc's -options_left, fatal).
 */
#ifndef DSV3_DECK_H
#define DSV3_DECK_H

#include <stdbool.h>
#include <stdint.h>

#define DECK_STR 256
#define DECK_MAX_SOURCES 16
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
    char mode[DECK_STR];        /* "pretrain" | "finetune" | "sft" */
    char output_dir[DECK_STR];
    char resume[DECK_STR];      /* "" | "auto" | path */
    char init_from[DECK_STR];   /* "" | checkpoint to load weights from */
    int64_t seed;
    int steps;
    int log_every;
} deck_run;

typedef struct {
    int expert_parallel;        /* EP */
    int zero_stage;             /* 0..3 */
    bool activation_checkpointing;
} deck_parallel;

typedef struct {
    int micro_batch;            /* sequences per rank per micro-step */
    int global_batch;           /* sequences per optimizer step */
    int seq_len;
    char dtype[DECK_STR];       /* "fp32" | "bf16" */
} deck_train;

typedef struct {
    bool enabled;
    int r;
    double alpha;
    double dropout;
    int n_targets;
    char targets[DECK_MAX_TARGETS][DECK_STR]; /* e.g. "self_attn.q_a_proj" */
} deck_lora;

typedef struct {
    char type[DECK_STR];        /* "adamw" */
    double lr, beta1, beta2, eps, weight_decay, grad_clip; /* grad_clip 0 = off */
} deck_optimizer;

typedef struct {
    char type[DECK_STR];        /* "constant" | "linear" | "cosine" | "warmup_decay" */
    int warmup_steps;
    double min_lr;
    int decay_steps;            /* 0 = run.steps */
} deck_schedule;

typedef struct {
    char path[DECK_STR];
    double weight;
} deck_source;

typedef struct {
    char format[DECK_STR];      /* "text" (bytes) | "u32" | "megatron" | "sft" */
    char tokenizer[DECK_STR];
    int n_train;
    deck_source train[DECK_MAX_SOURCES];
    bool pack;                  /* SFT: pack samples into seq_len windows */
} deck_data;

typedef struct {
    int every;                  /* 0 = never */
    int n_valid;
    deck_source valid[DECK_MAX_SOURCES];
    int batches;                /* global batches per evaluation */
} deck_validation;

typedef struct {
    int every;                  /* 0 = never */
    int keep;                   /* keep the last N, 0 = all */
    char save[DECK_STR];        /* "full" | "model" | "adapters" */
} deck_checkpoint;

typedef struct {
    char tensorboard[DECK_STR]; /* "" = off */
    bool csv;
} deck_logging;

typedef struct {
    deck_run run;
    deck_model model;
    deck_parallel parallel;
    deck_train train;
    deck_lora lora;
    deck_optimizer optimizer;
    deck_schedule schedule;
    deck_data data;
    deck_validation validation;
    deck_checkpoint checkpoint;
    deck_logging logging;
    char *text;                 /* resolved deck text (includes inlined), owned */
    char path[DECK_STR];        /* deck file name as given */
} deck;

/* Reads and validates a deck collectively: rank 0 reads `path` (resolving
 * @include), broadcasts the text over `comm`, every rank parses it and applies
 * `n_over` "key.path=value" overrides. world_size is used for layout checks.
 * On any error every rank gets the same message in `err` and a non-zero return;
 * nothing is allocated beyond the deck itself. */
int deck_load(deck *d, const char *path, int n_over, char **over, int world_size,
              void *mpi_comm /* MPI_Comm*, NULL = single process */, char *err, int errlen);

/* Same from a text already in memory (tests, checkpoint decks). */
int deck_load_string(deck *d, const char *text, const char *name, int n_over, char **over,
                     int world_size, char *err, int errlen);

/* Writes the effective deck, every default filled in, as libconfig text that
 * deck_load_string() reads back to the same struct. Returns malloc'd text. */
char *deck_print(const deck *d);

void deck_free(deck *d);

#endif

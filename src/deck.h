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
#include <string.h>

#include "model/config.h" /* deck_model, deck_lora, DECK_STR */

#define DECK_MAX_SOURCES 16

typedef struct {
    char mode[DECK_STR];        /* "pretrain" | "finetune" | "sft" | "eval" (validation loss of a checkpoint) */
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
    char frozen[DECK_STR];      /* "sharded" (ZeRO-3 over the data group, re-gathered every step) |
                                 * "resident" (experts stay with their EP owner, the rest of the frozen
                                 * base sharded inside a node). The CPU trainer runs "resident" with a
                                 * bf16/fp8 base only (its frozen store, never sharded; required at
                                 * ZeRO 3); with an fp32 base it is planned only */
    char dispatch_dtype[DECK_STR]; /* MoE dispatch/combine wire dtype: "" (= train.dtype) | "fp32" | "bf16" |
                                    * "fp8" (fp8 dispatch with 1x128 scales, bf16 combine); the CPU
                                    * trainer packs its rows to it on the wire (deck_wire) */
    bool moe_overlap;           /* MoE all-to-alls overlapped with the expert GEMMs: the layer's tokens in two
                                 * halves, one half's exchange in flight while the other's experts run */
} deck_parallel;

typedef struct {
    int micro_batch;            /* sequences per rank per micro-step */
    int global_batch;           /* sequences per optimizer step */
    int seq_len;
    char dtype[DECK_STR];       /* "fp32" | "bf16" */
    char base_dtype[DECK_STR];  /* storage of frozen linear weights: "" (= train.dtype) | "fp32" | "bf16" |
                                 * "fp8" (e4m3 + 128x128 f32 scales). The CPU trainer keeps a LoRA
                                 * base's linear weights in bf16/fp8 (the frozen store, params.h
                                 * P_STORED; deck.c copies the choice to lora.base_dtype) */
    char embed_dtype[DECK_STR]; /* the frozen embedding and lm_head: "" = "fp32" (floats, as today) | "bf16"
                                 * (in the frozen store in bf16, as the release stores them; LoRA only) */
    char gemm_dtype[DECK_STR];  /* GEMM precision with the narrow frozen weights (ops.h ops_gemm): "fp32"
                                 * (default) | "bf16" (base bf16/fp8) | "fp8" (W8A8, base fp8) */
} deck_train;

typedef struct {
    char type[DECK_STR];        /* "adamw" */
    double lr, beta1, beta2, eps, weight_decay, grad_clip; /* grad_clip 0 = off */
    int max_skipped_steps;      /* consecutive non-finite steps skipped before the run stops */
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
    bool repeat_batch;          /* every step trains on step 0's batch (overfit one batch) */
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
    int stall_timeout;          /* seconds a save may make no progress before the job is aborted, 0 = never */
} deck_checkpoint;

typedef struct {
    char tensorboard[DECK_STR]; /* "" = off */
    bool csv;
} deck_logging;

typedef struct deck {
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
    char planned[2200];         /* "file:line: message" of the first planned-only choice ("" = none):
                                 * --dry-run plans it, a real run refuses it (deck_runnable) */
    char planned_layout[2200];  /* the same for a layout a real run and --check refuse (uneven
                                 * expert ownership) */
} deck;

/* Reads and validates a deck collectively: rank 0 reads `path` (resolving
 * @include), broadcasts the text over `comm`, every rank parses it and applies
 * `n_over` "key.path=value" overrides. world_size is used for layout checks.
 * On any error every rank gets the same message in `err` and a non-zero return;
 * nothing is allocated beyond the deck itself. */
int deck_load(deck *d, const char *path, int n_over, char **over, int world_size,
              void *comm /* comm_t* (comm.h), NULL = single process */, char *err, int errlen);

/* Same from a text already in memory (tests, checkpoint decks). */
int deck_load_string(deck *d, const char *text, const char *name, int n_over, char **over,
                     int world_size, char *err, int errlen);

/* Writes the effective deck, every default filled in, as libconfig text that
 * deck_load_string() reads back to the same struct. Returns malloc'd text. */
char *deck_print(const deck *d);

void deck_free(deck *d);

/* 0 when a real run (check = 0) or --check (check = 1) can take the deck,
 * else -1 with the planned-only choice's message in err (see deck.planned). */
int deck_runnable(const deck *d, int check, char *err, int errlen);

/* What the model needs of a deck (model/config.h). */
/* parallel.dispatch_dtype ("" = train.dtype) as ops_moe.h's OPS_WIRE_* code. */
static inline int deck_wire(const deck *d) {
    const char *w = d->parallel.dispatch_dtype[0] ? d->parallel.dispatch_dtype : d->train.dtype;
    return !strcmp(w, "fp8") ? 2 : !strcmp(w, "bf16") ? 1 : 0;
}
static inline model_opts deck_model_opts(const deck *d) {
    return (model_opts){&d->model, &d->lora, d->train.seq_len, d->train.micro_batch,
                        d->parallel.activation_checkpointing, deck_wire(d), d->parallel.moe_overlap,
                        !strcmp(d->train.dtype, "bf16")};
}

#endif

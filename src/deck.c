/* deck.c — input decks: schema, strict reading, overrides, printing.
 *
 * The schema table below is the only list of keys: defaults, types, ranges,
 * enums and struct offsets. Reading walks the libconfig tree and fails on the
 * first key the table does not know (PETSc's -options_left, made fatal), on
 * any type mismatch (libconfig 1.5 lookups silently fail on `lr = 3;`, so
 * types are checked here, never through config_lookup_float) and on values out
 * of range; then the cross-field and layout checks run. Errors are one line,
 * "file:line: message", identical on every rank because every rank parses the
 * same broadcast text.
 *
 * Positions: rank 0 reads the real file (with @include) and records for every
 * setting path its "file:line"; that map travels with the resolved text, so
 * errors name the original file and line, not a line of the resolved text.
 */
#include "deck.h"

#include "comm.h"
#include "model/lora.h"

#include <errno.h>
#include <float.h>
#include <libconfig.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- schema */

typedef enum {
    K_GROUP,   /* libconfig group of further keys */
    K_INT,
    K_INT64,
    K_FLOAT,
    K_BOOL,
    K_STRING,
    K_SOURCES, /* list of { path = "..."; weight = 1.0; } */
    K_TARGETS, /* array of LoRA target module names */
    K_FIXED,   /* HF config field with one supported value (libconfig literal in `fixed`) */
    K_SAME,    /* int that must equal the int field at `off` (named by `fixed`) */
} key_kind;

enum { OPEN_LO = 1, OPEN_HI = 2, NONEMPTY = 4 };

typedef struct {
    const char *path;
    key_kind kind;
    size_t off, cnt_off;      /* field; element count for K_SOURCES/K_TARGETS */
    long long idef;           /* int, int64, bool default */
    double fdef;
    const char *sdef;
    double lo, hi;            /* inclusive unless OPEN_LO/OPEN_HI */
    int flags;
    const char *const *enums; /* NULL-terminated allowed strings */
    const char *fixed;
} deck_key;

#define OFF(f) offsetof(deck, f)
#define NOMAX HUGE_VAL
#define G(p) {.path = p, .kind = K_GROUP}
#define I(p, f, def, l, h) {.path = p, .kind = K_INT, .off = OFF(f), .idef = def, .lo = l, .hi = h}
#define I64(p, f, def, l) {.path = p, .kind = K_INT64, .off = OFF(f), .idef = def, .lo = l, .hi = NOMAX}
#define F(p, f, def, l, h, fl) \
    {.path = p, .kind = K_FLOAT, .off = OFF(f), .fdef = def, .lo = l, .hi = h, .flags = fl}
#define B(p, f, def) {.path = p, .kind = K_BOOL, .off = OFF(f), .idef = def}
#define S(p, f, def, en, fl) {.path = p, .kind = K_STRING, .off = OFF(f), .sdef = def, .enums = en, .flags = fl}
#define SRC(p, f, n) {.path = p, .kind = K_SOURCES, .off = OFF(f), .cnt_off = OFF(n)}
#define FIX(p, lit) {.path = p, .kind = K_FIXED, .fixed = lit}

static const char *const E_MODE[] = {"pretrain", "finetune", "sft", "eval", NULL};
static const char *const E_ROPE[] = {"yarn", "none", NULL};
static const char *const E_QUANT[] = {"", "fp8", NULL};
static const char *const E_SCALE[] = {"", "ue8m0", NULL};
static const char *const E_DTYPE[] = {"fp32", "bf16", NULL};
static const char *const E_GDTYPE[] = {"fp32", "bf16", "fp8", NULL}; /* train.gemm_dtype */
static const char *const E_WDTYPE[] = {"", "fp32", "bf16", "fp8", NULL}; /* "" = as train.dtype */
static const char *const E_FROZEN[] = {"sharded", "resident", NULL};
static const char *const E_EDTYPE[] = {"", "fp32", "bf16", NULL}; /* "" = fp32 */
static const char *const E_OPT[] = {"adamw", NULL};
static const char *const E_SCHED[] = {"constant", "linear", "cosine", "warmup_decay", NULL};
static const char *const E_FORMAT[] = {"text", "u32", "megatron", "sft", NULL};
static const char *const E_SAVE[] = {"full", "model", "adapters", NULL};

/* LoRA targets: module names relative to a decoder layer (HF / PEFT names). */
#define LORA_TARGETS lora_target_names

/* Order matters: deck_print follows it, groups before their keys. Model
 * defaults are DeepSeek-V3 671B (the Hugging Face config defaults). */
static const deck_key KEYS[] = {
    G("run"),
    S("run.mode", run.mode, "pretrain", E_MODE, 0),
    S("run.output_dir", run.output_dir, "runs/dsv3", NULL, NONEMPTY),
    S("run.resume", run.resume, "", NULL, 0),
    S("run.init_from", run.init_from, "", NULL, 0),
    I64("run.seed", run.seed, 1234, 0),
    I("run.steps", run.steps, 1000, 1, INT_MAX),
    I("run.log_every", run.log_every, 1, 1, INT_MAX),

    G("model"),
    FIX("model.model_type", "\"deepseek_v3\""),
    I("model.vocab_size", model.vocab_size, 129280, 1, INT_MAX),
    I("model.hidden_size", model.hidden_size, 7168, 1, INT_MAX),
    I("model.intermediate_size", model.intermediate_size, 18432, 1, INT_MAX),
    I("model.moe_intermediate_size", model.moe_intermediate_size, 2048, 1, INT_MAX),
    I("model.num_hidden_layers", model.num_hidden_layers, 61, 1, INT_MAX),
    I("model.first_k_dense_replace", model.first_k_dense_replace, 3, 0, INT_MAX),
    I("model.n_routed_experts", model.n_routed_experts, 256, 1, INT_MAX),
    I("model.n_shared_experts", model.n_shared_experts, 1, 0, INT_MAX),
    I("model.num_experts_per_tok", model.num_experts_per_tok, 8, 1, INT_MAX),
    I("model.n_group", model.n_group, 8, 1, INT_MAX),
    I("model.topk_group", model.topk_group, 4, 1, INT_MAX),
    F("model.routed_scaling_factor", model.routed_scaling_factor, 2.5, 0, NOMAX, OPEN_LO),
    B("model.norm_topk_prob", model.norm_topk_prob, 1),
    FIX("model.scoring_func", "\"sigmoid\""),
    FIX("model.topk_method", "\"noaux_tc\""),
    FIX("model.moe_layer_freq", "1"),
    FIX("model.hidden_act", "\"silu\""),
    I("model.q_lora_rank", model.q_lora_rank, 1536, 0, INT_MAX),
    I("model.kv_lora_rank", model.kv_lora_rank, 512, 1, INT_MAX),
    I("model.qk_nope_head_dim", model.qk_nope_head_dim, 128, 1, INT_MAX),
    I("model.qk_rope_head_dim", model.qk_rope_head_dim, 64, 2, INT_MAX),
    I("model.v_head_dim", model.v_head_dim, 128, 1, INT_MAX),
    I("model.num_attention_heads", model.num_attention_heads, 128, 1, INT_MAX),
    {.path = "model.num_key_value_heads", .kind = K_SAME, .off = OFF(model.num_attention_heads),
     .fixed = "model.num_attention_heads"},
    FIX("model.attention_bias", "false"),
    F("model.rms_norm_eps", model.rms_norm_eps, 1e-6, 0, 1, OPEN_LO | OPEN_HI),
    F("model.rope_theta", model.rope_theta, 10000.0, 0, NOMAX, OPEN_LO),
    I("model.max_position_embeddings", model.max_position_embeddings, 163840, 1, INT_MAX),
    G("model.rope_scaling"),
    S("model.rope_scaling.type", model.rope_scaling_type, "yarn", E_ROPE, 0),
    F("model.rope_scaling.factor", model.rope_factor, 40.0, 1, NOMAX, 0),
    I("model.rope_scaling.original_max_position_embeddings",
      model.rope_original_max_position_embeddings, 4096, 1, INT_MAX),
    F("model.rope_scaling.beta_fast", model.rope_beta_fast, 32.0, 0, NOMAX, OPEN_LO),
    F("model.rope_scaling.beta_slow", model.rope_beta_slow, 1.0, 0, NOMAX, OPEN_LO),
    F("model.rope_scaling.mscale", model.rope_mscale, 1.0, 0, NOMAX, 0),
    F("model.rope_scaling.mscale_all_dim", model.rope_mscale_all_dim, 1.0, 0, NOMAX, 0),
    I("model.num_nextn_predict_layers", model.num_nextn_predict_layers, 1, 0, 16),
    FIX("model.tie_word_embeddings", "false"),
    I("model.bos_token_id", model.bos_token_id, 0, 0, INT_MAX),
    I("model.eos_token_id", model.eos_token_id, 1, 0, INT_MAX),
    F("model.initializer_range", model.initializer_range, 0.02, 0, NOMAX, OPEN_LO),
    F("model.aux_loss_alpha", model.aux_loss_alpha, 0.001, 0, NOMAX, 0),
    FIX("model.seq_aux", "true"),
    F("model.mtp_loss_weight", model.mtp_loss_weight, 0.3, 0, NOMAX, 0),
    F("model.bias_update_rate", model.bias_update_rate, 0.001, 0, NOMAX, 0),
    G("model.quantization_config"),
    S("model.quantization_config.quant_method", model.quant_method, "", E_QUANT, 0),
    FIX("model.quantization_config.fmt", "\"e4m3\""),
    FIX("model.quantization_config.activation_scheme", "\"dynamic\""),
    FIX("model.quantization_config.weight_block_size", "[128, 128]"),
    S("model.quantization_config.scale_fmt", model.quant_scale_fmt, "", E_SCALE, 0),

    G("parallel"),
    I("parallel.expert_parallel", parallel.expert_parallel, 1, 1, INT_MAX),
    I("parallel.zero_stage", parallel.zero_stage, 0, 0, 3),
    B("parallel.activation_checkpointing", parallel.activation_checkpointing, 0),
    S("parallel.frozen", parallel.frozen, "sharded", E_FROZEN, 0),
    S("parallel.dispatch_dtype", parallel.dispatch_dtype, "", E_WDTYPE, 0),
    B("parallel.moe_overlap", parallel.moe_overlap, 0),

    G("train"),
    I("train.micro_batch", train.micro_batch, 1, 1, INT_MAX),
    I("train.global_batch", train.global_batch, 0, 0, INT_MAX), /* 0 = micro_batch x world size */
    I("train.seq_len", train.seq_len, 4096, 1, INT_MAX),
    S("train.dtype", train.dtype, "fp32", E_DTYPE, 0),
    S("train.base_dtype", train.base_dtype, "", E_WDTYPE, 0),
    S("train.embed_dtype", train.embed_dtype, "", E_EDTYPE, 0),
    S("train.gemm_dtype", train.gemm_dtype, "fp32", E_GDTYPE, 0),

    G("lora"),
    B("lora.enabled", lora.enabled, 0),
    I("lora.r", lora.r, 16, 1, INT_MAX),
    F("lora.alpha", lora.alpha, 32.0, 0, NOMAX, OPEN_LO),
    F("lora.dropout", lora.dropout, 0.0, 0, 1, OPEN_HI),
    B("lora.use_rslora", lora.use_rslora, 0),
    {.path = "lora.targets", .kind = K_TARGETS, .off = OFF(lora.targets), .cnt_off = OFF(lora.n_targets)},

    G("optimizer"),
    S("optimizer.type", optimizer.type, "adamw", E_OPT, 0),
    F("optimizer.lr", optimizer.lr, 3e-4, 0, NOMAX, 0),
    F("optimizer.beta1", optimizer.beta1, 0.9, 0, 1, OPEN_HI),
    F("optimizer.beta2", optimizer.beta2, 0.95, 0, 1, OPEN_HI),
    F("optimizer.eps", optimizer.eps, 1e-8, 0, NOMAX, OPEN_LO),
    F("optimizer.weight_decay", optimizer.weight_decay, 0.1, 0, NOMAX, 0),
    F("optimizer.grad_clip", optimizer.grad_clip, 1.0, 0, NOMAX, 0),
    I("optimizer.max_skipped_steps", optimizer.max_skipped_steps, 10, 0, INT_MAX),

    G("schedule"),
    S("schedule.type", schedule.type, "cosine", E_SCHED, 0),
    I("schedule.warmup_steps", schedule.warmup_steps, 0, 0, INT_MAX),
    F("schedule.min_lr", schedule.min_lr, 0.0, 0, NOMAX, 0),
    I("schedule.decay_steps", schedule.decay_steps, 0, 0, INT_MAX),

    G("data"),
    S("data.format", data.format, "text", E_FORMAT, 0),
    S("data.tokenizer", data.tokenizer, "", NULL, 0),
    SRC("data.train", data.train, data.n_train),
    B("data.pack", data.pack, 1),
    B("data.repeat_batch", data.repeat_batch, 0),

    G("validation"),
    I("validation.every", validation.every, 0, 0, INT_MAX),
    SRC("validation.valid", validation.valid, validation.n_valid),
    I("validation.batches", validation.batches, 1, 1, INT_MAX),

    G("checkpoint"),
    I("checkpoint.every", checkpoint.every, 0, 0, INT_MAX),
    I("checkpoint.keep", checkpoint.keep, 0, 0, INT_MAX),
    S("checkpoint.save", checkpoint.save, "full", E_SAVE, 0),
    I("checkpoint.stall_timeout", checkpoint.stall_timeout, 600, 0, INT_MAX),

    G("logging"),
    S("logging.tensorboard", logging.tensorboard, "", NULL, 0),
    B("logging.csv", logging.csv, 1),
};
#define NKEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

static const char *const SOURCE_KEYS[] = {"path", "weight", NULL};

static const deck_key *key_find(const char *path)
{
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(KEYS[i].path, path)) return &KEYS[i];
    return NULL;
}

/* ---------------------------------------------------------------- errors */

typedef struct {
    const char *name;      /* deck name for messages */
    const char *locmap;    /* "\npath\tfile:line\n..." from rank 0's read, or NULL */
    int n_over;
    char **over;           /* overrides applied so far */
    config_t *cfg;
    char *err;
    int errlen;
} ctx;

/* Where a setting came from: an override, the original file:line, or the deck. */
static void loc_of(const ctx *c, const char *path, const config_setting_t *s, char *buf, size_t n)
{
    for (int i = c->n_over - 1; i >= 0; i--) {
        size_t kl = strcspn(c->over[i], "=");
        if (!strncmp(c->over[i], path, kl) && (path[kl] == 0 || path[kl] == '.' || path[kl] == '[')) {
            snprintf(buf, n, "override '%s'", c->over[i]);
            return;
        }
    }
    if (c->locmap) {
        size_t pl = strlen(path);
        for (const char *p = strstr(c->locmap, path); p; p = strstr(p + 1, path)) {
            if (p[-1] == '\n' && p[pl] == '\t') {
                size_t e = strcspn(p + pl + 1, "\n");
                snprintf(buf, n, "%.*s", (int)e, p + pl + 1);
                return;
            }
        }
    }
    /* with a map, the parsed text's own lines would mislead: name the deck only */
    if (!c->locmap && !s && c->cfg && !strchr(path, '[')) s = config_lookup(c->cfg, path);
    if (!c->locmap && s && config_setting_source_line(s) > 0)
        snprintf(buf, n, "%s:%u", c->name, config_setting_source_line(s));
    else
        snprintf(buf, n, "%s", c->name);
}

__attribute__((format(printf, 4, 5)))
static int fail(const ctx *c, const char *path, const config_setting_t *s, const char *fmt, ...)
{
    char loc[DECK_STR + 64], msg[1024];
    loc_of(c, path, s, loc, sizeof loc);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s", loc, msg);
    return -1;
}

/* Records a planned-only choice (the first one wins) with the key's position,
 * like fail(), without failing the load. layout: --check refuses it too. */
static void planned(const ctx *c, deck *d, int layout, const char *path, const char *fmt, ...)
{
    char loc[DECK_STR + 64], msg[1024];
    loc_of(c, path, NULL, loc, sizeof loc);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (layout && !d->planned_layout[0]) snprintf(d->planned_layout, sizeof d->planned_layout, "%s: %s", loc, msg);
    if (!d->planned[0]) snprintf(d->planned, sizeof d->planned, "%s: %s", loc, msg);
}

int deck_runnable(const deck *d, int check, char *err, int errlen)
{
    const char *m = check ? d->planned_layout : d->planned;
    if (!m[0]) return 0;
    snprintf(err, errlen, "%s", m);
    return -1;
}

static int levenshtein(const char *a, const char *b)
{
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 200 || lb > 200) return 1000;
    int row[201];
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int up = row[j];
            int v = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < v) v = row[j] + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
        }
    }
    return row[lb];
}

static const char *leaf(const char *path)
{
    const char *d = strrchr(path, '.');
    return d ? d + 1 : path;
}

/* Best guess for an unknown key: the same key name in another group, else
 * the closest sibling, else the closest full path. NULL if nothing is close. */
static const char *did_you_mean(const char *path)
{
    const char *lf = leaf(path), *best = NULL;
    size_t plen = (size_t)(lf - path);
    int n_same = 0;
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(leaf(KEYS[i].path), lf)) { best = KEYS[i].path; n_same++; }
    if (n_same == 1) return best;
    int bd = INT_MAX;
    best = NULL;
    for (int i = 0; i < NKEYS; i++) {
        const char *k = KEYS[i].path, *kl = leaf(k);
        if ((size_t)(kl - k) != plen || strncmp(k, path, plen)) continue;
        int d = levenshtein(lf, kl);
        if (d < bd) { bd = d; best = k; }
    }
    int tol = (int)strlen(lf) / 3;
    if (best && bd <= (tol > 2 ? tol : 2)) return best;
    bd = INT_MAX;
    best = NULL;
    for (int i = 0; i < NKEYS; i++) {
        int d = levenshtein(path, KEYS[i].path);
        if (d < bd) { bd = d; best = KEYS[i].path; }
    }
    return bd <= 2 ? best : NULL;
}

static int fail_unknown(const ctx *c, const char *path, const config_setting_t *s)
{
    const char *g = did_you_mean(path);
    if (g) return fail(c, path, s, "unknown key '%s' (did you mean '%s'?)", path, g);
    return fail(c, path, s, "unknown key '%s'", path);
}

/* ------------------------------------------------------ text formatting */

/* Shortest %.Ng that reads back to the same double, always with a decimal
 * point so libconfig reads it as a float. */
static void fmt_double(char *buf, size_t n, double v)
{
    char t[64];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, v);
        if (strtod(t, NULL) == v) break;
    }
    if (!strpbrk(t, ".ni")) { /* no point, not inf/nan */
        char *e = strpbrk(t, "eE");
        if (e) {
            char tail[64];
            snprintf(tail, sizeof tail, "%s", e);
            snprintf(e, sizeof t - (size_t)(e - t), ".0%s", tail);
        } else {
            strcat(t, ".0");
        }
    }
    snprintf(buf, n, "%s", t);
}

static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch == '\r') fputs("\\r", f);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\x%02x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static const char *type_name(int t)
{
    switch (t) {
    case CONFIG_TYPE_GROUP: return "a group";
    case CONFIG_TYPE_INT: return "an int";
    case CONFIG_TYPE_INT64: return "an int64";
    case CONFIG_TYPE_FLOAT: return "a float";
    case CONFIG_TYPE_STRING: return "a string";
    case CONFIG_TYPE_BOOL: return "a bool";
    case CONFIG_TYPE_ARRAY: return "an array";
    case CONFIG_TYPE_LIST: return "a list";
    default: return "nothing";
    }
}

/* Writes a setting's value (not its name) in libconfig syntax. */
static void write_value(FILE *f, const config_setting_t *s, int depth)
{
    int n = config_setting_length(s);
    char b[64];
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT: fprintf(f, "%d", config_setting_get_int(s)); break;
    case CONFIG_TYPE_INT64: fprintf(f, "%lldL", config_setting_get_int64(s)); break;
    case CONFIG_TYPE_FLOAT: fmt_double(b, sizeof b, config_setting_get_float(s)); fputs(b, f); break;
    case CONFIG_TYPE_BOOL: fputs(config_setting_get_bool(s) ? "true" : "false", f); break;
    case CONFIG_TYPE_STRING: put_string(f, config_setting_get_string(s)); break;
    case CONFIG_TYPE_ARRAY:
    case CONFIG_TYPE_LIST: {
        int arr = config_setting_type(s) == CONFIG_TYPE_ARRAY;
        fputs(arr ? "[" : "(", f);
        for (int i = 0; i < n; i++) {
            fputs(i ? ", " : " ", f);
            write_value(f, config_setting_get_elem(s, (unsigned)i), depth + 1);
        }
        fputs(n ? (arr ? " ]" : " )") : (arr ? "]" : ")"), f);
        break;
    }
    case CONFIG_TYPE_GROUP:
        fputs("{\n", f);
        for (int i = 0; i < n; i++) {
            const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            fprintf(f, "%*s%s = ", 2 * (depth + 1), "", config_setting_name(e));
            write_value(f, e, depth + 1);
            fputs(";\n", f);
        }
        fprintf(f, "%*s}", 2 * depth, "");
        break;
    default: break;
    }
}

/* The whole tree as libconfig text, includes inlined, floats exact. */
static char *write_tree(const config_t *cfg)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    const config_setting_t *r = config_root_setting(cfg);
    for (int i = 0; i < config_setting_length(r); i++) {
        const config_setting_t *e = config_setting_get_elem(r, (unsigned)i);
        fprintf(f, "%s = ", config_setting_name(e));
        write_value(f, e, 0);
        fputs(";\n", f);
    }
    fclose(f);
    return buf;
}

/* Deep copy of src's value into a new setting `name` (NULL in lists) of dst. */
static config_setting_t *copy_setting(config_setting_t *dst, const char *name, const config_setting_t *src)
{
    int t = config_setting_type(src);
    config_setting_t *s = config_setting_add(dst, name, t);
    if (!s) return NULL;
    switch (t) {
    case CONFIG_TYPE_INT: config_setting_set_int(s, config_setting_get_int(src)); break;
    case CONFIG_TYPE_INT64: config_setting_set_int64(s, config_setting_get_int64(src)); break;
    case CONFIG_TYPE_FLOAT: config_setting_set_float(s, config_setting_get_float(src)); break;
    case CONFIG_TYPE_BOOL: config_setting_set_bool(s, config_setting_get_bool(src)); break;
    case CONFIG_TYPE_STRING: config_setting_set_string(s, config_setting_get_string(src)); break;
    default:
        for (int i = 0; i < config_setting_length(src); i++) {
            const config_setting_t *e = config_setting_get_elem(src, (unsigned)i);
            if (!copy_setting(s, t == CONFIG_TYPE_GROUP ? config_setting_name(e) : NULL, e)) return NULL;
        }
    }
    return s;
}

/* Structural equality of two settings (names, types, values). */
static int same_setting(const config_setting_t *a, const config_setting_t *b)
{
    int t = config_setting_type(a);
    if (t != config_setting_type(b)) return 0;
    switch (t) {
    case CONFIG_TYPE_INT: return config_setting_get_int(a) == config_setting_get_int(b);
    case CONFIG_TYPE_INT64: return config_setting_get_int64(a) == config_setting_get_int64(b);
    case CONFIG_TYPE_FLOAT: return config_setting_get_float(a) == config_setting_get_float(b);
    case CONFIG_TYPE_BOOL: return config_setting_get_bool(a) == config_setting_get_bool(b);
    case CONFIG_TYPE_STRING: return !strcmp(config_setting_get_string(a), config_setting_get_string(b));
    default:
        if (config_setting_length(a) != config_setting_length(b)) return 0;
        for (int i = 0; i < config_setting_length(a); i++) {
            const config_setting_t *x = config_setting_get_elem(a, (unsigned)i);
            const config_setting_t *y = config_setting_get_elem(b, (unsigned)i);
            const char *nx = config_setting_name(x), *ny = config_setting_name(y);
            if ((nx || ny) && (!nx || !ny || strcmp(nx, ny))) return 0;
            if (!same_setting(x, y)) return 0;
        }
        return 1;
    }
}

static char *value_text(const config_setting_t *s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    write_value(f, s, 0);
    fclose(f);
    return buf;
}

/* --------------------------------------------------------------- reading */

static void *field(deck *d, const deck_key *k) { return (char *)d + k->off; }

static void set_defaults(deck *d)
{
    for (int i = 0; i < NKEYS; i++) {
        const deck_key *k = &KEYS[i];
        switch (k->kind) {
        case K_INT: *(int *)field(d, k) = (int)k->idef; break;
        case K_INT64: *(int64_t *)field(d, k) = k->idef; break;
        case K_FLOAT: *(double *)field(d, k) = k->fdef; break;
        case K_BOOL: *(bool *)field(d, k) = k->idef != 0; break;
        case K_STRING: strncpy((char *)field(d, k), k->sdef, DECK_STR); break;
        case K_SOURCES:
        case K_TARGETS: *(int *)((char *)d + k->cnt_off) = 0; break;
        default: break;
        }
    }
}

static const char *enum_list(const char *const *en, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; en[i] && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s\"%s\"", i ? ", " : "", en[i]);
    return buf;
}

static int check_range(const ctx *c, const deck_key *k, const char *path, const config_setting_t *s,
                       double v, const char *vtext)
{
    int lo_ok = (k->flags & OPEN_LO) ? v > k->lo : v >= k->lo;
    int hi_ok = (k->flags & OPEN_HI) ? v < k->hi : v <= k->hi;
    if (lo_ok && hi_ok) return 0;
    char lo[64], hi[64];
    if (k->kind == K_FLOAT) {
        snprintf(lo, sizeof lo, "%g", k->lo);
        snprintf(hi, sizeof hi, "%g", k->hi);
    } else {
        snprintf(lo, sizeof lo, "%lld", (long long)k->lo);
        snprintf(hi, sizeof hi, "%lld", (long long)k->hi);
    }
    if (k->hi == NOMAX || (k->kind == K_INT && k->hi == INT_MAX))
        return fail(c, path, s, "%s = %s is out of range: must be %s %s", path, vtext,
                    (k->flags & OPEN_LO) ? ">" : ">=", lo);
    return fail(c, path, s, "%s = %s is out of range %s%s, %s%s", path, vtext,
                (k->flags & OPEN_LO) ? "(" : "[", lo, hi, (k->flags & OPEN_HI) ? ")" : "]");
}

static int wrong_type(const ctx *c, const char *path, const config_setting_t *s, const char *want)
{
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT && !strcmp(want, "a float"))
        return fail(c, path, s, "%s: expected a float, found an int (write %d.0)", path,
                    config_setting_get_int(s));
    return fail(c, path, s, "%s: expected %s, found %s", path, want, type_name(t));
}

static int copy_string(const ctx *c, const char *path, const config_setting_t *s, char *dst)
{
    const char *v = config_setting_get_string(s);
    if (strlen(v) >= DECK_STR)
        return fail(c, path, s, "%s: string longer than %d characters", path, DECK_STR - 1);
    strncpy(dst, v, DECK_STR);
    return 0;
}

static int read_sources(const ctx *c, deck *d, const deck_key *k, const char *path, config_setting_t *s)
{
    int t = config_setting_type(s), n = config_setting_length(s);
    if (t != CONFIG_TYPE_LIST && !(t == CONFIG_TYPE_ARRAY && n == 0))
        return fail(c, path, s, "%s: expected a list of groups ( { path = \"...\"; weight = 1.0; }, ... ), found %s",
                    path, type_name(t));
    if (n > DECK_MAX_SOURCES)
        return fail(c, path, s, "%s: %d sources, at most %d", path, n, DECK_MAX_SOURCES);
    deck_source *src = field(d, k);
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        char ep[DECK_STR + 32];
        snprintf(ep, sizeof ep, "%s[%d]", path, i);
        if (config_setting_type(e) != CONFIG_TYPE_GROUP)
            return fail(c, ep, e, "%s: expected a group { path = \"...\"; weight = 1.0; }, found %s", ep,
                        type_name(config_setting_type(e)));
        memset(&src[i], 0, sizeof src[i]);
        src[i].weight = 1.0;
        int have_path = 0;
        for (int j = 0; j < config_setting_length(e); j++) {
            config_setting_t *f = config_setting_get_elem(e, (unsigned)j);
            const char *nm = config_setting_name(f);
            char fp[2 * DECK_STR];
            snprintf(fp, sizeof fp, "%s.%s", ep, nm);
            if (!strcmp(nm, "path")) {
                if (config_setting_type(f) != CONFIG_TYPE_STRING) return wrong_type(c, fp, f, "a string");
                if (copy_string(c, fp, f, src[i].path)) return -1;
                have_path = src[i].path[0] != 0;
            } else if (!strcmp(nm, "weight")) {
                if (config_setting_type(f) != CONFIG_TYPE_FLOAT) return wrong_type(c, fp, f, "a float");
                src[i].weight = config_setting_get_float(f);
                if (!(src[i].weight > 0))
                    return fail(c, fp, f, "%s = %g is out of range: must be > 0", fp, src[i].weight);
            } else {
                const char *best = NULL;
                int bd = 3;
                for (int q = 0; SOURCE_KEYS[q]; q++) {
                    int dd = levenshtein(nm, SOURCE_KEYS[q]);
                    if (dd < bd) { bd = dd; best = SOURCE_KEYS[q]; }
                }
                if (best) return fail(c, fp, f, "unknown key '%s' (did you mean '%s.%s'?)", fp, ep, best);
                return fail(c, fp, f, "unknown key '%s' (a source has path and weight)", fp);
            }
        }
        if (!have_path) return fail(c, ep, e, "%s: missing path", ep);
    }
    *(int *)((char *)d + k->cnt_off) = n;
    return 0;
}

static int read_targets(const ctx *c, deck *d, const deck_key *k, const char *path, config_setting_t *s)
{
    int t = config_setting_type(s), n = config_setting_length(s);
    if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
        return fail(c, path, s, "%s: expected an array of strings [ \"self_attn.q_a_proj\", ... ], found %s",
                    path, type_name(t));
    if (n > DECK_MAX_TARGETS)
        return fail(c, path, s, "%s: %d targets, at most %d", path, n, DECK_MAX_TARGETS);
    char(*tg)[DECK_STR] = field(d, k);
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        char ep[DECK_STR + 32];
        snprintf(ep, sizeof ep, "%s[%d]", path, i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING) return wrong_type(c, ep, e, "a string");
        const char *v = config_setting_get_string(e);
        int ok = 0, bd = INT_MAX;
        const char *best = NULL;
        for (int q = 0; LORA_TARGETS[q]; q++) {
            if (!strcmp(v, LORA_TARGETS[q])) ok = 1;
            int dd = levenshtein(v, LORA_TARGETS[q]);
            if (dd < bd) { bd = dd; best = LORA_TARGETS[q]; }
        }
        if (!ok) {
            if (bd <= 3) return fail(c, ep, e, "%s: unknown LoRA target \"%s\" (did you mean \"%s\"?)", path, v, best);
            return fail(c, ep, e, "%s: unknown LoRA target \"%s\" (allowed: self_attn.{q_a_proj,q_b_proj,q_proj,"
                        "kv_a_proj_with_mqa,kv_b_proj,o_proj}, mlp.{gate,up,down}_proj, "
                        "mlp.shared_experts.{gate,up,down}_proj)", path, v);
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(tg[j], v)) return fail(c, ep, e, "%s: target \"%s\" listed twice", path, v);
        strncpy(tg[i], v, DECK_STR);
    }
    *(int *)((char *)d + k->cnt_off) = n;
    return 0;
}

static int read_leaf(const ctx *c, deck *d, const deck_key *k, const char *path, config_setting_t *s)
{
    int t = config_setting_type(s);
    char vt[DECK_STR + 16];
    switch (k->kind) {
    case K_INT:
    case K_INT64:
    case K_SAME: {
        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64) return wrong_type(c, path, s, "an int");
        long long v = t == CONFIG_TYPE_INT ? config_setting_get_int(s) : config_setting_get_int64(s);
        if (k->kind == K_SAME) return 0; /* compared in check_layout */
        snprintf(vt, sizeof vt, "%lld", v);
        if (check_range(c, k, path, s, (double)v, vt)) return -1;
        if (k->kind == K_INT && (v < INT_MIN || v > INT_MAX))
            return fail(c, path, s, "%s = %lld does not fit in an int", path, v);
        if (k->kind == K_INT) *(int *)field(d, k) = (int)v;
        else *(int64_t *)field(d, k) = v;
        return 0;
    }
    case K_FLOAT: {
        if (t != CONFIG_TYPE_FLOAT) return wrong_type(c, path, s, "a float");
        double v = config_setting_get_float(s);
        fmt_double(vt, sizeof vt, v);
        if (check_range(c, k, path, s, v, vt)) return -1;
        *(double *)field(d, k) = v;
        return 0;
    }
    case K_BOOL:
        if (t != CONFIG_TYPE_BOOL) return wrong_type(c, path, s, "a bool (true or false)");
        *(bool *)field(d, k) = config_setting_get_bool(s) != 0;
        return 0;
    case K_STRING: {
        if (t != CONFIG_TYPE_STRING) return wrong_type(c, path, s, "a string");
        const char *v = config_setting_get_string(s);
        if ((k->flags & NONEMPTY) && !v[0]) return fail(c, path, s, "%s must not be empty", path);
        if (k->enums) {
            int ok = 0;
            for (int i = 0; k->enums[i]; i++) ok |= !strcmp(v, k->enums[i]);
            if (!ok) {
                char el[512];
                return fail(c, path, s, "%s = \"%s\" is not one of %s", path, v, enum_list(k->enums, el, sizeof el));
            }
        }
        return copy_string(c, path, s, (char *)field(d, k));
    }
    case K_SOURCES: return read_sources(c, d, k, path, s);
    case K_TARGETS: return read_targets(c, d, k, path, s);
    case K_FIXED: {
        config_t lit;
        char buf[256];
        config_init(&lit);
        snprintf(buf, sizeof buf, "v = %s;", k->fixed);
        int ok = config_read_string(&lit, buf) && same_setting(config_lookup(&lit, "v"), s);
        config_destroy(&lit);
        if (ok) return 0;
        char *got = value_text(s);
        int rc = fail(c, path, s, "%s = %s is not supported: DeepSeek-V3 has %s", path, got ? got : "?", k->fixed);
        free(got);
        return rc;
    }
    default: return -1;
    }
}

static int walk(const ctx *c, deck *d, config_setting_t *g, const char *gpath)
{
    for (int i = 0; i < config_setting_length(g); i++) {
        config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        char path[DECK_STR];
        snprintf(path, sizeof path, "%s%s%s", gpath, gpath[0] ? "." : "", config_setting_name(s));
        const deck_key *k = key_find(path);
        if (!k) return fail_unknown(c, path, s);
        if (k->kind == K_GROUP) {
            if (config_setting_type(s) != CONFIG_TYPE_GROUP) return wrong_type(c, path, s, "a group { ... }");
            if (walk(c, d, s, path)) return -1;
        } else if (read_leaf(c, d, k, path, s)) {
            return -1;
        }
    }
    return 0;
}

/* Cross-field consistency and the layout for `world` ranks (design §1.2, §3). */
static int check_layout(const ctx *c, deck *d, int world)
{
    const deck_model *m = &d->model;
    for (int i = 0; i < NKEYS; i++) {
        const deck_key *k = &KEYS[i];
        config_setting_t *s;
        if (k->kind != K_SAME || !(s = config_lookup(c->cfg, k->path))) continue;
        long long v = config_setting_type(s) == CONFIG_TYPE_INT ? config_setting_get_int(s)
                                                                 : config_setting_get_int64(s);
        if (v != *(int *)field(d, k))
            return fail(c, k->path, s, "%s = %lld must equal %s = %d", k->path, v, k->fixed, *(int *)field(d, k));
    }
    if (m->n_routed_experts % m->n_group)
        return fail(c, "model.n_group", NULL, "model.n_routed_experts = %d is not divisible by model.n_group = %d",
                    m->n_routed_experts, m->n_group);
    if (m->topk_group > m->n_group)
        return fail(c, "model.topk_group", NULL, "model.topk_group = %d exceeds model.n_group = %d", m->topk_group,
                    m->n_group);
    int reach = m->n_routed_experts / m->n_group * m->topk_group;
    if (m->num_experts_per_tok > reach)
        return fail(c, "model.num_experts_per_tok", NULL,
                    "model.num_experts_per_tok = %d exceeds the %d experts of the topk_group = %d selected groups "
                    "(n_routed_experts / n_group x topk_group)", m->num_experts_per_tok, reach, m->topk_group);
    if (m->first_k_dense_replace > m->num_hidden_layers)
        return fail(c, "model.first_k_dense_replace", NULL,
                    "model.first_k_dense_replace = %d exceeds model.num_hidden_layers = %d",
                    m->first_k_dense_replace, m->num_hidden_layers);
    if (m->qk_rope_head_dim % 2)
        return fail(c, "model.qk_rope_head_dim", NULL, "model.qk_rope_head_dim = %d must be even (RoPE pairs)",
                    m->qk_rope_head_dim);
    if (m->bos_token_id >= m->vocab_size || m->eos_token_id >= m->vocab_size)
        return fail(c, m->bos_token_id >= m->vocab_size ? "model.bos_token_id" : "model.eos_token_id", NULL,
                    "token id %d is outside model.vocab_size = %d",
                    m->bos_token_id >= m->vocab_size ? m->bos_token_id : m->eos_token_id, m->vocab_size);
    if (!strcmp(m->rope_scaling_type, "yarn") && !(m->rope_beta_fast > m->rope_beta_slow))
        return fail(c, "model.rope_scaling.beta_fast", NULL,
                    "model.rope_scaling.beta_fast must exceed beta_slow for YaRN");
    if (d->train.seq_len > m->max_position_embeddings)
        return fail(c, "train.seq_len", NULL, "train.seq_len = %d exceeds model.max_position_embeddings = %d",
                    d->train.seq_len, m->max_position_embeddings);

    /* LoRA and checkpoints */
    if (!strcmp(d->checkpoint.save, "adapters") && !d->lora.enabled)
        return fail(c, "checkpoint.save", NULL, "checkpoint.save = \"adapters\" needs lora.enabled = true");
    if (d->lora.enabled && d->lora.n_targets == 0)
        return fail(c, "lora.enabled", NULL, "lora.enabled = true needs lora.targets");
    if (d->lora.enabled)
        for (int i = 0; i < d->lora.n_targets; i++) {
            const char *t = d->lora.targets[i];
            int q_plain = !strcmp(t, "self_attn.q_proj");
            int q_low = !strcmp(t, "self_attn.q_a_proj") || !strcmp(t, "self_attn.q_b_proj");
            if ((q_plain && m->q_lora_rank > 0) || (q_low && m->q_lora_rank == 0))
                return fail(c, "lora.targets", NULL, "lora.targets: \"%s\" does not exist with model.q_lora_rank = %d",
                            t, m->q_lora_rank);
            if (!strncmp(t, "mlp.shared_experts.", 19) && m->n_shared_experts == 0)
                return fail(c, "lora.targets", NULL, "lora.targets: \"%s\" needs model.n_shared_experts > 0", t);
            if (!strncmp(t, "mlp.experts.", 12) && m->n_routed_experts == 0)
                return fail(c, "lora.targets", NULL, "lora.targets: \"%s\" needs model.n_routed_experts > 0", t);
            /* an expert row's mask would need its token's global index on the expert's rank */
            if (!strncmp(t, "mlp.experts.", 12) && d->lora.dropout > 0)
                return fail(c, "lora.dropout", NULL,
                            "lora.dropout = %g with the routed-expert target \"%s\": dropout on routed-expert "
                            "adapters is not supported (set 0.0, or drop the target)", d->lora.dropout, t);
        }

    /* optimizer, schedule, validation */
    if (d->schedule.min_lr > d->optimizer.lr)
        return fail(c, "schedule.min_lr", NULL, "schedule.min_lr exceeds optimizer.lr");
    int horizon = d->schedule.decay_steps ? d->schedule.decay_steps : d->run.steps;
    if (d->schedule.warmup_steps > horizon)
        return fail(c, "schedule.warmup_steps", NULL, "schedule.warmup_steps = %d exceeds the %d decay steps",
                    d->schedule.warmup_steps, horizon);
    if (!strcmp(d->run.mode, "eval") && (d->validation.n_valid == 0 || !(d->run.init_from[0] || d->run.resume[0])))
        return fail(c, "run.mode", NULL, "run.mode = \"eval\" needs validation.valid sources and the checkpoint to "
                    "evaluate (run.init_from, or run.resume)");
    if (d->validation.every > 0 && d->validation.n_valid == 0)
        return fail(c, "validation.every", NULL, "validation.every = %d needs validation.valid sources",
                    d->validation.every);

    /* planned-only choices (the GPU plan, --dry-run): valid keys the CPU
     * trainer does not implement yet; a real run refuses them (deck_runnable) */
    int has_frozen = d->lora.enabled;
    int base_set = d->train.base_dtype[0] && strcmp(d->train.base_dtype, "fp32");
    if (base_set && !has_frozen)
        return fail(c, "train.base_dtype", NULL,
                    "train.base_dtype = \"%s\" sets the storage of frozen weights: there are none without "
                    "lora.enabled = true", d->train.base_dtype);
    if (!strcmp(d->parallel.frozen, "resident") && !has_frozen)
        return fail(c, "parallel.frozen", NULL,
                    "parallel.frozen = \"resident\" places frozen weights: there are none without "
                    "lora.enabled = true");
    /* train.base_dtype bf16/fp8 runs: the frozen linears live in the frozen store
     * (params.h P_STORED), which the trainer keeps resident at every ZeRO stage.
     * The model sees the choice through deck_lora (model/config.h). */
    snprintf(d->lora.base_dtype, sizeof d->lora.base_dtype, "%s", base_set ? d->train.base_dtype : "fp32");
    /* train.gemm_dtype: the precision of the GEMMs with those narrow weights (ops.h ops_gemm) */
    /* ... or of the trainable linears' bf16 weights (train.dtype = "bf16" without LoRA: model.c, zero.h) */
    int copies = !strcmp(d->train.dtype, "bf16") && !d->lora.enabled;
    if (strcmp(d->train.gemm_dtype, "fp32") && !base_set && !copies)
        return fail(c, "train.gemm_dtype", NULL,
                    "train.gemm_dtype = \"%s\" sets the GEMM precision of weights held narrow: frozen ones (set "
                    "train.base_dtype = \"bf16\" or \"fp8\" with lora.enabled = true) or the bf16 weights "
                    "of trained ones (train.dtype = \"bf16\" without LoRA); or set gemm_dtype = \"fp32\"",
                    d->train.gemm_dtype);
    if (!strcmp(d->train.gemm_dtype, "fp8") && strcmp(d->train.base_dtype, "fp8"))
        return fail(c, "train.gemm_dtype", NULL,
                    "train.gemm_dtype = \"fp8\" (W8A8) multiplies FP8 weights as stored: it needs train.base_dtype = "
                    "\"fp8\", not \"%s\" (use gemm_dtype = \"bf16\")", d->train.base_dtype);
    snprintf(d->lora.gemm_dtype, sizeof d->lora.gemm_dtype, "%s", d->train.gemm_dtype);
    int emb16 = !strcmp(d->train.embed_dtype, "bf16");
    if (emb16 && !has_frozen)
        return fail(c, "train.embed_dtype", NULL,
                    "train.embed_dtype = \"bf16\" stores the frozen embedding and lm_head: they are trained without "
                    "lora.enabled = true");
    if (emb16 && d->model.num_nextn_predict_layers > 0)
        return fail(c, "train.embed_dtype", NULL,
                    "train.embed_dtype = \"bf16\" with model.num_nextn_predict_layers = %d: not implemented (the MTP "
                    "input reads a float embedding); set num_nextn_predict_layers = 0 or embed_dtype = \"fp32\"",
                    d->model.num_nextn_predict_layers);
    snprintf(d->lora.embed_dtype, sizeof d->lora.embed_dtype, "%s", emb16 ? "bf16" : "fp32");
    /* Where the frozen store's non-expert part lives: "resident" keeps one copy
     * per node in memory its ranks share (each allocates 1/node_size of it:
     * the CPU form of the GPU plan's "sharded inside a node", with no gather);
     * "sharded" at ZeRO 3 shards it over all ranks, which the CPU trainer runs
     * on one node only, where the world is the node (train.c refuses more). */
    int sharded3 = d->parallel.zero_stage >= 3 && strcmp(d->parallel.frozen, "resident");
    /* A device backend cannot share its memory through POSIX shared memory: there each rank
     * holds the store privately (comm_node_shared_available), and the plan counts it so. */
    d->lora.node_shared = (base_set || emb16) && (!strcmp(d->parallel.frozen, "resident") || sharded3) &&
                          comm_node_shared_available();
    if (!strcmp(d->parallel.frozen, "resident") && !base_set && !emb16)
        planned(c, d, 0, "parallel.frozen",
                "parallel.frozen = \"resident\" with an fp32 base is planned only (--dry-run, --check): the CPU "
                "trainer shards fp32 frozen weights with ZeRO (a bf16/fp8 base, train.base_dtype, is resident); "
                "set parallel.frozen = \"sharded\" to run");
    /* layout for this world size: last, so deck-only errors come first */
    int ep = d->parallel.expert_parallel;
    if (world % ep)
        return fail(c, "parallel.expert_parallel", NULL,
                    "parallel.expert_parallel = %d does not divide the world size %d", ep, world);
    if (m->n_routed_experts > 0 && ep > m->n_routed_experts)
        return fail(c, "parallel.expert_parallel", NULL,
                    "parallel.expert_parallel = %d exceeds model.n_routed_experts = %d", ep, m->n_routed_experts);
    /* E % ep != 0 is uneven ownership (the first E % ep ranks of a group own
     * one expert more: plan_expert_range); ep must divide the world so that
     * every data-parallel replica holds whole expert groups */
    long long per_step = (long long)d->train.micro_batch * world;
    if (d->train.global_batch == 0 && per_step <= INT_MAX) d->train.global_batch = (int)per_step;
    if (d->train.global_batch % per_step)
        return fail(c, "train.global_batch", NULL,
                    "train.global_batch = %d is not divisible by train.micro_batch x world size = %d x %d = %lld",
                    d->train.global_batch, d->train.micro_batch, world, per_step);
    return 0;
}

/* Applies one "key.path=value" to the tree; the value is libconfig syntax,
 * a bare word is a string. Types are checked later by the walk. */
static int apply_override(ctx *c, const char *ov)
{
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov) {
        snprintf(c->err, c->errlen, "override '%s': expected key.path=value", ov);
        return -1;
    }
    char path[DECK_STR];
    if ((size_t)(eq - ov) >= sizeof path) {
        snprintf(c->err, c->errlen, "override '%s': key too long", ov);
        return -1;
    }
    snprintf(path, sizeof path, "%.*s", (int)(eq - ov), ov);
    const char *val = eq + 1;
    const deck_key *k = key_find(path);
    if (!k) {
        const char *g = did_you_mean(path);
        if (g) snprintf(c->err, c->errlen, "override '%s': unknown key '%s' (did you mean '%s'?)", ov, path, g);
        else snprintf(c->err, c->errlen, "override '%s': unknown key '%s'", ov, path);
        return -1;
    }
    if (k->kind == K_GROUP) {
        snprintf(c->err, c->errlen, "override '%s': '%s' is a group; override its keys one by one", ov, path);
        return -1;
    }
    config_t vc;
    config_init(&vc);
    size_t bl = strlen(val) + 16;
    char *buf = malloc(bl);
    snprintf(buf, bl, "v = %s;", val);
    int parsed = config_read_string(&vc, buf);
    free(buf);
    config_setting_t *v = parsed ? config_lookup(&vc, "v") : NULL;
    if (!v) {
        /* bare word -> string */
        if (val[strcspn(val, "\"{}[]();=,:# \t\n")] != 0) {
            snprintf(c->err, c->errlen, "override '%s': cannot parse the value (libconfig syntax: 3, 3.0, \"text\", "
                     "true, [ ... ], ( ... ))", ov);
            config_destroy(&vc);
            return -1;
        }
        config_destroy(&vc);
        config_init(&vc);
        v = config_setting_add(config_root_setting(&vc), "v", CONFIG_TYPE_STRING);
        config_setting_set_string(v, val);
    }
    /* walk/create the parent groups */
    config_setting_t *parent = config_root_setting(c->cfg);
    char part[DECK_STR];
    const char *p = path;
    int rc = 0;
    for (;;) {
        size_t l = strcspn(p, ".");
        snprintf(part, sizeof part, "%.*s", (int)l, p);
        if (!p[l]) break;
        config_setting_t *g = config_setting_get_member(parent, part);
        if (!g) g = config_setting_add(parent, part, CONFIG_TYPE_GROUP);
        else if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
            char gp[DECK_STR];
            snprintf(gp, sizeof gp, "%.*s", (int)(p + l - path), path);
            rc = fail(c, gp, g, "%s: expected a group { ... }, found %s", gp, type_name(config_setting_type(g)));
            break;
        }
        parent = g;
        p += l + 1;
    }
    if (!rc) {
        if (config_setting_get_member(parent, part)) config_setting_remove(parent, part);
        if (!copy_setting(parent, part, v)) {
            snprintf(c->err, c->errlen, "override '%s': cannot apply", ov);
            rc = -1;
        }
    }
    config_destroy(&vc);
    return rc;
}

/* Parses `text` (positions from `locmap` when given), applies overrides,
 * validates, fills d. */
static int deck_parse(deck *d, const char *text, const char *name, const char *locmap, int n_over, char **over,
                      int world, char *err, int errlen)
{
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", name);
    if (world < 1) world = 1;
    config_t cfg;
    config_init(&cfg);
    ctx c = {.name = name, .locmap = locmap, .n_over = 0, .over = over, .cfg = &cfg, .err = err, .errlen = errlen};
    int rc = -1;
    if (!config_read_string(&cfg, text)) {
        snprintf(err, errlen, "%s:%d: %s", name, config_error_line(&cfg), config_error_text(&cfg));
        goto out;
    }
    for (int i = 0; i < n_over; i++) {
        c.n_over = i + 1;
        if (apply_override(&c, over[i])) goto out;
    }
    set_defaults(d);
    if (walk(&c, d, config_root_setting(&cfg), "")) goto out;
    /* SFT trains nothing but the adapters (as PEFT): router-bias updates off
     * unless the deck sets model.bias_update_rate itself */
    if (!strcmp(d->run.mode, "sft") && !config_lookup(&cfg, "model.bias_update_rate")) d->model.bias_update_rate = 0.0;
    if (check_layout(&c, d, world)) goto out;
    d->text = write_tree(&cfg);
    if (!d->text) {
        snprintf(err, errlen, "%s: out of memory", name);
        goto out;
    }
    rc = 0;
out:
    config_destroy(&cfg);
    return rc;
}

int deck_load_string(deck *d, const char *text, const char *name, int n_over, char **over, int world_size,
                     char *err, int errlen)
{
    return deck_parse(d, text, name ? name : "<string>", NULL, n_over, over, world_size, err, errlen);
}

/* Rank 0: record "path\tfile:line" for every setting of the file tree.
 * libconfig names included files as written in @include (relative to the
 * include dir), so prefix that dir to make the position usable. */
static void record_locs(FILE *f, const config_setting_t *g, const char *gpath, const char *top, const char *dir)
{
    for (int i = 0; i < config_setting_length(g); i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *nm = config_setting_name(s);
        char path[DECK_STR];
        if (nm) snprintf(path, sizeof path, "%s%s%s", gpath, gpath[0] ? "." : "", nm);
        else snprintf(path, sizeof path, "%s[%d]", gpath, i);
        const char *file = config_setting_source_file(s);
        if (!file) file = top;
        if (strcmp(file, top) && file[0] != '/' && strcmp(dir, "."))
            fprintf(f, "%s\t%s/%s:%u\n", path, dir, file, config_setting_source_line(s));
        else
            fprintf(f, "%s\t%s:%u\n", path, file, config_setting_source_line(s));
        if (config_setting_is_aggregate(s)) record_locs(f, s, path, top, dir);
    }
}

/* Rank 0: read the file; on success returns "text\0\nlocmap" (length in *len), else NULL and err. */
static char *read_deck_file(const char *path, size_t *len, char *err, int errlen)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        snprintf(err, errlen, "%s: cannot read the deck: %s", path, strerror(errno));
        return NULL;
    }
    fclose(fp);
    char dir[DECK_STR];
    snprintf(dir, sizeof dir, "%s", path);
    char *sl = strrchr(dir, '/');
    if (sl == dir) dir[1] = 0;
    else if (sl) *sl = 0;
    else strcpy(dir, ".");
    config_t cfg;
    config_init(&cfg);
    config_set_include_dir(&cfg, dir);
    char *out = NULL;
    if (!config_read_file(&cfg, path)) {
        const char *ef = config_error_file(&cfg) ? config_error_file(&cfg) : path;
        char efp[2 * DECK_STR];
        if (strcmp(ef, path) && ef[0] != '/' && strcmp(dir, ".")) snprintf(efp, sizeof efp, "%s/%s", dir, ef);
        else snprintf(efp, sizeof efp, "%s", ef);
        char extra[DECK_STR + 64] = "";
        if (strstr(config_error_text(&cfg), "include")) {
            /* name the include that failed: line N of the including file */
            FILE *f = fopen(efp, "r");
            char line[1024];
            for (int n = 1; f && fgets(line, sizeof line, f); n++) {
                if (n != config_error_line(&cfg)) continue;
                char *q1 = strchr(line, '"'), *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
                if (q2)
                    snprintf(extra, sizeof extra, " '%s%s%.*s'", q1[1] == '/' ? "" : dir, q1[1] == '/' ? "" : "/",
                             (int)(q2 - q1 - 1), q1 + 1);
                break;
            }
            if (f) fclose(f);
        }
        snprintf(err, errlen, "%s:%d: %s%s", efp, config_error_line(&cfg), config_error_text(&cfg), extra);
        config_destroy(&cfg);
        return NULL;
    }
    char *text = write_tree(&cfg);
    char *map = NULL;
    size_t ml = 0;
    FILE *f = open_memstream(&map, &ml);
    if (text && f) {
        fputc('\n', f);
        record_locs(f, config_root_setting(&cfg), "", path, dir);
        fclose(f);
        f = NULL;
        size_t tl = strlen(text);
        *len = tl + 1 + ml + 1;
        out = malloc(*len);
        if (out) {
            memcpy(out, text, tl + 1);
            memcpy(out + tl + 1, map, ml + 1);
        }
    }
    if (f) fclose(f);
    if (!out) snprintf(err, errlen, "%s: out of memory", path);
    free(text);
    free(map);
    config_destroy(&cfg);
    return out;
}

int deck_load(deck *d, const char *path, int n_over, char **over, int world_size, void *mpi_comm, char *err,
              int errlen)
{
    comm_t comm = mpi_comm ? *(comm_t *)mpi_comm : COMM_NULL;
    int rank = mpi_comm ? comm_rank(comm) : 0;
    size_t len = 0;
    char *buf = NULL;
    long long hdr[2] = {0, 0}; /* status, bytes */
    if (rank == 0) {
        buf = read_deck_file(path, &len, err, errlen);
        if (buf) hdr[1] = (long long)len;
        else {
            hdr[0] = -1;
            hdr[1] = (long long)strlen(err) + 1;
            buf = strdup(err);
        }
    }
    if (mpi_comm) {
        comm_bcast(hdr, sizeof hdr, 0, comm);
        if (hdr[1] > INT_MAX) { /* decks are kilobytes; refuse rather than split */
            snprintf(err, errlen, "%s: resolved deck too large", path);
            free(buf);
            memset(d, 0, sizeof *d);
            return -1;
        }
        if (rank != 0) buf = malloc((size_t)hdr[1]);
        if (comm_max_int(buf == NULL, comm)) { /* every rank stops alike */
            snprintf(err, errlen, "%s: out of memory for the resolved deck", path);
            free(buf);
            memset(d, 0, sizeof *d);
            return -1;
        }
        comm_bcast(buf, (size_t)hdr[1], 0, comm);
    }
    int rc;
    if (hdr[0]) {
        snprintf(err, errlen, "%s", buf);
        memset(d, 0, sizeof *d);
        rc = -1;
    } else {
        const char *text = buf, *map = buf + strlen(buf) + 1;
        rc = deck_parse(d, text, path, map, n_over, over, world_size, err, errlen);
    }
    free(buf);
    return rc;
}

/* --------------------------------------------------------------- printing */

static void print_leaf(FILE *f, const deck *d, const deck_key *k, int ind)
{
    const char *nm = leaf(k->path);
    char b[64];
    const void *p = (const char *)d + k->off;
    fprintf(f, "%*s%s = ", ind, "", nm);
    switch (k->kind) {
    case K_INT: fprintf(f, "%d", *(const int *)p); break;
    case K_SAME: fprintf(f, "%d", *(const int *)p); break;
    case K_INT64: fprintf(f, "%lldL", (long long)*(const int64_t *)p); break;
    case K_FLOAT: fmt_double(b, sizeof b, *(const double *)p); fputs(b, f); break;
    case K_BOOL: fputs(*(const bool *)p ? "true" : "false", f); break;
    case K_STRING: put_string(f, p); break;
    case K_FIXED: fputs(k->fixed, f); break;
    case K_SOURCES: {
        const deck_source *s = p;
        int n = *(const int *)((const char *)d + k->cnt_off);
        fputs("(", f);
        for (int i = 0; i < n; i++) {
            fprintf(f, "%s\n%*s{ path = ", i ? "," : "", ind + 2, "");
            put_string(f, s[i].path);
            fmt_double(b, sizeof b, s[i].weight);
            fprintf(f, "; weight = %s; }", b);
        }
        fputs(n ? " )" : ")", f);
        break;
    }
    case K_TARGETS: {
        const char(*t)[DECK_STR] = p;
        int n = *(const int *)((const char *)d + k->cnt_off);
        fputs("[", f);
        for (int i = 0; i < n; i++) {
            fputs(i ? ", " : " ", f);
            put_string(f, t[i]);
        }
        fputs(n ? " ]" : "]", f);
        break;
    }
    default: break;
    }
    fputs(";\n", f);
}

char *deck_print(const deck *d)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fprintf(f, "# dsv3 effective deck: %s (every default filled in)\n", d->path);
    const char *open[8];
    int depth = 0;
    for (int i = 0; i < NKEYS; i++) {
        const deck_key *k = &KEYS[i];
        /* close groups that do not contain this key */
        while (depth > 0) {
            size_t l = strlen(open[depth - 1]);
            if (!strncmp(k->path, open[depth - 1], l) && k->path[l] == '.') break;
            depth--;
            fprintf(f, "%*s};\n", 2 * depth, "");
        }
        if (k->kind == K_GROUP) {
            fprintf(f, "%s%*s%s = {\n", depth ? "" : "\n", 2 * depth, "", leaf(k->path));
            open[depth++] = k->path;
        } else {
            print_leaf(f, d, k, 2 * depth);
        }
    }
    while (depth > 0) fprintf(f, "%*s};\n", 2 * --depth, "");
    fclose(f);
    return buf;
}

void deck_free(deck *d)
{
    if (!d) return;
    free(d->text);
    d->text = NULL;
}

/* hfconfig.c — config.json <-> the deck's model group (hfconfig.h). */
#include "hfconfig.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void hf_text_add(hf_text *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->oom || k < 0) return;
    if (b->n + (size_t)k + 1 > b->cap) {
        size_t cap = 2 * (b->n + (size_t)k + 1);
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s, b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

void hf_float_literal(char *buf, size_t n, double v) {
    snprintf(buf, n, "%.17g", v);
    if (!strpbrk(buf, ".eEn")) snprintf(buf + strlen(buf), n - strlen(buf), ".0");
}

/* The first problem found is kept; readers return defaults after it. */
typedef struct {
    const char *path;
    char *err;
    int errlen, bad;
} ctx;

static void fail(ctx *x, const char *fmt, ...) {
    if (x->bad) return;
    x->bad = 1;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(x->err, x->errlen, "%s: %s", x->path, msg);
}

static json_t *get(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    return v && !json_is_null(v) ? v : NULL;
}

static long long get_int(ctx *x, json_t *cfg, const char *key, int required, long long dflt) {
    json_t *v = get(cfg, key);
    if (!v) {
        if (required) fail(x, "no \"%s\"", key);
        return dflt;
    }
    if (json_is_integer(v)) return json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v))) return (long long)json_real_value(v);
    fail(x, "\"%s\" is not an integer", key);
    return dflt;
}

static double get_num(ctx *x, json_t *cfg, const char *key, int required, double dflt) {
    json_t *v = get(cfg, key);
    if (!v) {
        if (required) fail(x, "no \"%s\"", key);
        return dflt;
    }
    if (!json_is_number(v)) {
        fail(x, "\"%s\" is not a number", key);
        return dflt;
    }
    return json_number_value(v);
}

static const char *get_str(ctx *x, json_t *cfg, const char *key, const char *dflt) {
    json_t *v = get(cfg, key);
    if (!v) return dflt;
    if (!json_is_string(v)) {
        fail(x, "\"%s\" is not a string", key);
        return dflt;
    }
    return json_string_value(v);
}

static int get_bool(ctx *x, json_t *cfg, const char *key, int dflt) {
    json_t *v = get(cfg, key);
    if (!v) return dflt;
    if (!json_is_boolean(v)) {
        fail(x, "\"%s\" is not a boolean", key);
        return dflt;
    }
    return json_is_true(v);
}

/* Rope in `rope_scaling` + `rope_theta` (the official checkpoints) or in
 * `rope_parameters` (transformers >= 5). */
static void rope(ctx *x, hf_text *b, json_t *cfg) {
    char f[64];
    json_t *rp = get(cfg, "rope_parameters");
    if (!rp) rp = get(cfg, "rope_scaling");
    if (rp && !json_is_object(rp)) {
        fail(x, "rope_parameters/rope_scaling is not an object");
        return;
    }
    double theta = get_num(x, cfg, "rope_theta", 0, rp ? get_num(x, rp, "rope_theta", 0, 10000.0) : 10000.0);
    const char *type = rp ? get_str(x, rp, "rope_type", get_str(x, rp, "type", "default")) : "default";
    hf_float_literal(f, sizeof f, theta);
    hf_text_add(b, "  rope_theta = %s;\n", f);
    if (strcmp(type, "yarn") == 0) {
        long long orig = get_int(x, rp, "original_max_position_embeddings", 1, 1);
        double factor = get_num(x, rp, "factor", 0,
                                (double)get_int(x, cfg, "max_position_embeddings", 1, 1) / (double)(orig ? orig : 1));
        if (get(rp, "attention_factor")) fail(x, "rope attention_factor is not supported");
        if (!get_bool(x, rp, "truncate", 1)) fail(x, "rope truncate=false is not supported");
        double bf = get_num(x, rp, "beta_fast", 0, 32.0), bs = get_num(x, rp, "beta_slow", 0, 1.0);
        if (bf == 0) bf = 32.0; /* HF: `or 32` */
        if (bs == 0) bs = 1.0;
        char ff[64], fbf[64], fbs[64], fm[64], fma[64];
        hf_float_literal(ff, sizeof ff, factor);
        hf_float_literal(fbf, sizeof fbf, bf);
        hf_float_literal(fbs, sizeof fbs, bs);
        hf_float_literal(fm, sizeof fm, get_num(x, rp, "mscale", 0, 0.0)); /* absent = 0, as HF treats it */
        hf_float_literal(fma, sizeof fma, get_num(x, rp, "mscale_all_dim", 0, 0.0));
        hf_text_add(b,
               "  rope_scaling = { type = \"yarn\"; factor = %s; original_max_position_embeddings = %lld;\n"
               "                   beta_fast = %s; beta_slow = %s; mscale = %s; mscale_all_dim = %s; };\n",
               ff, orig, fbf, fbs, fm, fma);
    } else if (strcmp(type, "default") == 0) {
        hf_text_add(b, "  rope_scaling = { type = \"none\"; };\n");
    } else {
        fail(x, "rope type \"%s\" is not supported (yarn or default)", type);
    }
}

/* quantization_config: DeepSeek's FP8 (e4m3, 128x128 blocks), V3.1's ue8m0 scales. */
static void quant(ctx *x, hf_text *b, json_t *cfg) {
    json_t *q = get(cfg, "quantization_config");
    if (!q) return;
    if (!json_is_object(q)) {
        fail(x, "quantization_config is not an object");
        return;
    }
    const char *m = get_str(x, q, "quant_method", "");
    if (strcmp(m, "fp8") != 0) {
        fail(x, "quantization_config.quant_method \"%s\" is not supported (fp8)", m);
        return;
    }
    if (strcmp(get_str(x, q, "fmt", "e4m3"), "e4m3") != 0) fail(x, "quantization_config.fmt must be \"e4m3\"");
    json_t *bs = get(q, "weight_block_size");
    if (bs && (!json_is_array(bs) || json_array_size(bs) != 2 || json_integer_value(json_array_get(bs, 0)) != 128 ||
               json_integer_value(json_array_get(bs, 1)) != 128))
        fail(x, "quantization_config.weight_block_size must be [128, 128]");
    const char *sf = get_str(x, q, "scale_fmt", "");
    if (sf[0] && strcmp(sf, "ue8m0") != 0) fail(x, "quantization_config.scale_fmt \"%s\" is not supported", sf);
    hf_text_add(b, "  quantization_config = { quant_method = \"fp8\";%s%s%s };\n", sf[0] ? " scale_fmt = \"" : "",
           sf, sf[0] ? "\";" : "");
}

char *hf_config_model_group(const char *text, const char *path, int mtp, char *err, int errlen) {
    ctx x = {path, err, errlen, 0};
    json_error_t je;
    json_t *cfg = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!cfg) {
        snprintf(err, errlen, "%s:%d: %s", path, je.line, je.text);
        return NULL;
    }
    if (!json_is_object(cfg)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        json_decref(cfg);
        return NULL;
    }
    json_t *arch = get(cfg, "architectures");
    if (arch && json_is_array(arch)) {
        size_t i;
        json_t *a;
        json_array_foreach(arch, i, a) if (!json_is_string(a) || strcmp(json_string_value(a), "DeepseekV3ForCausalLM"))
            fail(&x, "architecture \"%s\" is not supported (DeepseekV3ForCausalLM)",
                 json_is_string(a) ? json_string_value(a) : "?");
    }
    const char *mt = get_str(&x, cfg, "model_type", "deepseek_v3");
    if (strcmp(mt, "deepseek_v3") != 0) fail(&x, "model_type \"%s\" is not supported (deepseek_v3)", mt);
    if (strcmp(get_str(&x, cfg, "hidden_act", "silu"), "silu") != 0) fail(&x, "hidden_act must be \"silu\"");
    if (strcmp(get_str(&x, cfg, "scoring_func", "sigmoid"), "sigmoid") != 0) fail(&x, "scoring_func must be \"sigmoid\"");
    if (strcmp(get_str(&x, cfg, "topk_method", "noaux_tc"), "noaux_tc") != 0) fail(&x, "topk_method must be \"noaux_tc\"");
    if (get_bool(&x, cfg, "tie_word_embeddings", 0)) fail(&x, "tie_word_embeddings must be false");
    if (get_bool(&x, cfg, "attention_bias", 0)) fail(&x, "attention_bias must be false");
    if (!get_bool(&x, cfg, "rope_interleave", 1))
        fail(&x, "rope_interleave=false (plain rotate-half) is not DeepSeek's RoPE (spec §4)");
    if (get_int(&x, cfg, "moe_layer_freq", 0, 1) != 1) fail(&x, "moe_layer_freq must be 1");
    long long nh = get_int(&x, cfg, "num_attention_heads", 1, 1);
    if (get_int(&x, cfg, "num_key_value_heads", 0, nh) != nh) fail(&x, "num_key_value_heads must equal num_attention_heads");

    static const char *ints[] = {"vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                                 "num_hidden_layers", "first_k_dense_replace", "n_routed_experts",
                                 "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group",
                                 "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                                 "num_attention_heads", "max_position_embeddings"};
    hf_text b = {0};
    char f[64];
    hf_text_add(&b, "model = {\n");
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
        hf_text_add(&b, "  %s = %lld;\n", ints[i], get_int(&x, cfg, ints[i], 1, 0));
    hf_text_add(&b, "  q_lora_rank = %lld;\n", get_int(&x, cfg, "q_lora_rank", 0, 0)); /* null: plain q_proj */
    hf_float_literal(f, sizeof f, get_num(&x, cfg, "routed_scaling_factor", 0, 1.0));
    hf_text_add(&b, "  routed_scaling_factor = %s;\n", f);
    hf_text_add(&b, "  norm_topk_prob = %s;\n", get_bool(&x, cfg, "norm_topk_prob", 1) ? "true" : "false");
    hf_float_literal(f, sizeof f, get_num(&x, cfg, "rms_norm_eps", 0, 1e-6));
    hf_text_add(&b, "  rms_norm_eps = %s;\n", f);
    hf_float_literal(f, sizeof f, get_num(&x, cfg, "initializer_range", 0, 0.02));
    hf_text_add(&b, "  initializer_range = %s;\n", f);
    hf_text_add(&b, "  bos_token_id = %lld;\n  eos_token_id = %lld;\n", get_int(&x, cfg, "bos_token_id", 0, 0),
           json_is_array(get(cfg, "eos_token_id")) ? 1LL : get_int(&x, cfg, "eos_token_id", 0, 1));
    rope(&x, &b, cfg);
    quant(&x, &b, cfg);
    long long d = mtp >= 0 ? mtp : get_int(&x, cfg, "num_nextn_predict_layers", 0, 0);
    hf_text_add(&b, "  num_nextn_predict_layers = %lld;\n};\n", d);
    json_decref(cfg);
    if (b.oom && !x.bad) fail(&x, "out of memory");
    if (x.bad) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

char *hf_config_json(const deck_model *m, int with_quant) {
    json_t *o = json_object();
    json_t *arch = json_array();
    json_array_append_new(arch, json_string("DeepseekV3ForCausalLM"));
    json_object_set_new(o, "architectures", arch);
    json_object_set_new(o, "model_type", json_string("deepseek_v3"));
#define I(k) json_object_set_new(o, #k, json_integer(m->k))
#define R(k) json_object_set_new(o, #k, json_real(m->k))
    I(vocab_size), I(hidden_size), I(intermediate_size), I(moe_intermediate_size), I(num_hidden_layers);
    I(first_k_dense_replace), I(n_routed_experts), I(n_shared_experts), I(num_experts_per_tok), I(n_group);
    I(topk_group), I(kv_lora_rank), I(qk_nope_head_dim), I(qk_rope_head_dim), I(v_head_dim);
    I(num_attention_heads), I(max_position_embeddings), I(num_nextn_predict_layers), I(bos_token_id), I(eos_token_id);
    json_object_set_new(o, "num_key_value_heads", json_integer(m->num_attention_heads));
    json_object_set_new(o, "q_lora_rank", m->q_lora_rank > 0 ? json_integer(m->q_lora_rank) : json_null());
    R(routed_scaling_factor), R(rms_norm_eps), R(rope_theta), R(initializer_range);
    json_object_set_new(o, "norm_topk_prob", json_boolean(m->norm_topk_prob));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "scoring_func", json_string("sigmoid"));
    json_object_set_new(o, "topk_method", json_string("noaux_tc"));
    json_object_set_new(o, "moe_layer_freq", json_integer(1));
    json_object_set_new(o, "tie_word_embeddings", json_false());
    json_object_set_new(o, "attention_bias", json_false());
    json_object_set_new(o, "torch_dtype", json_string("bfloat16"));
    if (strcmp(m->rope_scaling_type, "yarn") == 0) {
        json_t *r = json_object();
        json_object_set_new(r, "type", json_string("yarn"));
        json_object_set_new(r, "factor", json_real(m->rope_factor));
        json_object_set_new(r, "original_max_position_embeddings", json_integer(m->rope_original_max_position_embeddings));
        json_object_set_new(r, "beta_fast", json_real(m->rope_beta_fast));
        json_object_set_new(r, "beta_slow", json_real(m->rope_beta_slow));
        json_object_set_new(r, "mscale", json_real(m->rope_mscale));
        json_object_set_new(r, "mscale_all_dim", json_real(m->rope_mscale_all_dim));
        json_object_set_new(o, "rope_scaling", r);
    } else {
        json_object_set_new(o, "rope_scaling", json_null());
    }
    if (with_quant && strcmp(m->quant_method, "fp8") == 0) {
        json_t *q = json_object(), *bs = json_array();
        json_array_append_new(bs, json_integer(128));
        json_array_append_new(bs, json_integer(128));
        json_object_set_new(q, "activation_scheme", json_string("dynamic"));
        json_object_set_new(q, "fmt", json_string("e4m3"));
        json_object_set_new(q, "quant_method", json_string("fp8"));
        json_object_set_new(q, "weight_block_size", bs);
        if (m->quant_scale_fmt[0]) json_object_set_new(q, "scale_fmt", json_string(m->quant_scale_fmt));
        json_object_set_new(o, "quantization_config", q);
    }
#undef I
#undef R
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}

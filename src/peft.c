/* peft.c — PEFT adapter directories from dsv3 checkpoints (peft.h). */
#include "peft.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "ops.h"
#include "safetensors.h"
#include "fsutil.h"

/* adapter_config.json as PEFT writes it (every LoraConfig field we set). Target
 * modules by last name; with routed-expert targets, whose last names are also
 * the dense and shared MLP's, one regex PEFT full-matches against module names
 * (model.layers.3.mlp.experts.17.gate_proj) instead. */
static char *config_json(const deck *d) {
    json_t *c = json_object(), *tm = json_array();
    int experts = 0;
    for (int k = 0; k < d->lora.n_targets; k++) {
        const char *dot = strrchr(d->lora.targets[k], '.');
        json_array_append_new(tm, json_string(dot ? dot + 1 : d->lora.targets[k]));
        experts |= !strncmp(d->lora.targets[k], "mlp.experts.", 12);
    }
    if (experts) {
        char re[1024] = ".*\\.(?:";
        size_t n = strlen(re);
        for (int k = 0; k < d->lora.n_targets && n < sizeof re; k++) {
            const char *t = d->lora.targets[k];
            n += (size_t)snprintf(re + n, sizeof re - n, "%s", k ? "|" : "");
            for (; *t && n + 12 < sizeof re; t++) { /* dots escaped; experts.<e>. */
                if (!strncmp(t, "experts.", 8) && t == d->lora.targets[k] + 4) {
                    n += (size_t)snprintf(re + n, sizeof re - n, "experts\\.[0-9]+\\.");
                    t += 7;
                } else {
                    n += (size_t)snprintf(re + n, sizeof re - n, *t == '.' ? "\\." : "%c", *t);
                }
            }
        }
        if (n < sizeof re) snprintf(re + n, sizeof re - n, ")");
        json_decref(tm);
        tm = json_string(re);
    }
    json_object_set_new(c, "peft_type", json_string("LORA"));
    json_object_set_new(c, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(c, "base_model_name_or_path", json_string("deepseek-ai/DeepSeek-V3"));
    json_object_set_new(c, "revision", json_null());
    json_object_set_new(c, "inference_mode", json_true());
    json_object_set_new(c, "r", json_integer(d->lora.r));
    json_object_set_new(c, "lora_alpha", json_real(d->lora.alpha));
    json_object_set_new(c, "lora_dropout", json_real(d->lora.dropout));
    json_object_set_new(c, "target_modules", tm);
    json_object_set_new(c, "bias", json_string("none"));
    json_object_set_new(c, "fan_in_fan_out", json_false());
    json_object_set_new(c, "use_rslora", d->lora.use_rslora ? json_true() : json_false());
    json_object_set_new(c, "use_dora", json_false());
    json_object_set_new(c, "init_lora_weights", json_true());
    json_object_set_new(c, "modules_to_save", json_null());
    json_object_set_new(c, "layers_to_transform", json_null());
    json_object_set_new(c, "layers_pattern", json_null());
    json_object_set_new(c, "rank_pattern", json_object());
    json_object_set_new(c, "alpha_pattern", json_object());
    json_object_set_new(c, "lora_bias", json_false());
    json_object_set_new(c, "exclude_modules", json_null());
    char *text = json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(c);
    return text;
}

void peft_name(char *out, size_t len, const char *name, int64_t expert) {
    const char *x = expert >= 0 ? strstr(name, ".mlp.experts.") : NULL;
    if (!x) {
        snprintf(out, len, "base_model.model.%s", name);
        return;
    }
    x += 13; /* after ".mlp.experts." */
    snprintf(out, len, "base_model.model.%.*s%lld.%s", (int)(x - name), name, (long long)expert, x);
}

int peft_write(const char *ckpt, const deck *d, const char *dir, int bf16, double *bytes, char *err, int errlen) {
    if (!d->lora.enabled) {
        snprintf(err, errlen, "%s: its deck has lora.enabled = false: no adapters", ckpt);
        return -1;
    }
    ckpt_in *in;
    if (ckpt_in_open(&in, ckpt, err, errlen)) return -1;
    int nt = ckpt_in_count(in), L = d->model.num_hidden_layers, n = 0, rc = 0;
    char path[4300], final[4300];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors.tmp", dir);
    st_writer *w = NULL;
    float *fb = NULL;
    uint64_t total = 0;
    if (fs_mkdir_p(dir)) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        rc = -1;
    }
    if (!rc) rc = st_writer_open(&w, path, err, errlen);
    if (!rc) st_writer_meta(w, "format", "pt");
    size_t maxn = 0;
    for (int i = 0; !rc && i < nt; i++) {
        const ckpt_tensor_info *ci = ckpt_in_tensor(in, i);
        int layer = -1;
        if (!ci->is_lora || sscanf(ci->name, "model.layers.%d.", &layer) != 1 || layer >= L) continue;
        int stacked = ci->ndim == 3; /* routed experts [E, a, b]: one PEFT tensor per expert */
        if ((ci->ndim != 2 && !stacked) || ci->shape[0] <= 0 || ci->shape[1] <= 0 || (stacked && ci->shape[2] <= 0) ||
            (stacked && !strstr(ci->name, ".mlp.experts."))) {
            snprintf(err, errlen, "%s: %s: an adapter must be a non-empty 2-D tensor (3-D: a routed expert's, stacked)",
                     ckpt, ci->name);
            rc = -1;
            break;
        }
        int64_t ne_ = stacked ? ci->shape[0] : 1;
        for (int64_t e = 0; !rc && e < ne_; e++) {
            char name[520];
            peft_name(name, sizeof name, ci->name, stacked ? e : -1);
            if (st_writer_add(w, name, bf16 ? ST_BF16 : ST_F32, 2, ci->shape + stacked)) rc = -1;
            size_t ne = (size_t)ci->shape[stacked] * (size_t)ci->shape[stacked + 1];
            maxn = ne > maxn ? ne : maxn;
            total += ne * (bf16 ? 2 : 4);
            n++;
        }
    }
    if (!rc && n == 0) {
        snprintf(err, errlen, "%s holds no LoRA tensors (/lora)", ckpt);
        rc = -1;
    }
    if (!rc) rc = st_writer_begin(w, err, errlen);
    if (!rc && !(fb = malloc((maxn ? maxn : 1) * sizeof *fb))) {
        snprintf(err, errlen, "out of memory for an adapter (%zu floats)", maxn);
        rc = -1;
    }
    for (int i = 0; !rc && i < nt; i++) { /* adapters are small: one tensor at a time */
        const ckpt_tensor_info *ci = ckpt_in_tensor(in, i);
        int layer = -1;
        if (!ci->is_lora || sscanf(ci->name, "model.layers.%d.", &layer) != 1 || layer >= L) continue;
        int stacked = ci->ndim == 3;
        size_t ne = (size_t)ci->shape[stacked] * (size_t)ci->shape[stacked + 1];
        for (int64_t e = 0; !rc && e < (stacked ? ci->shape[0] : 1); e++) {
            char name[520];
            peft_name(name, sizeof name, ci->name, stacked ? e : -1);
            rc = stacked ? ckpt_in_read(in, i, e, 1, fb, 0, err, errlen) : ckpt_in_read(in, i, 0, ci->shape[0], fb, 0, err, errlen);
            if (!rc && bf16) {
                uint16_t *h = (uint16_t *)fb; /* in place: element j's 2 bytes never overtake element j's 4 */
                for (size_t j = 0; j < ne; j++) h[j] = ops_f32_to_bf16(fb[j]);
            }
            if (!rc) rc = st_writer_put(w, name, 0, fb, ne * (bf16 ? 2 : 4), err, errlen);
        }
    }
    if (w) {
        if (rc) st_writer_abort(w, 1);
        else rc = st_writer_close(w, 1, err, errlen); /* every tensor's byte size checked */
    }
    snprintf(final, sizeof final, "%s/adapter_model.safetensors", dir);
    if (!rc && rename(path, final)) {
        snprintf(err, errlen, "rename %s: %s", path, strerror(errno));
        rc = -1;
    }
    char *text = rc ? NULL : config_json(d);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (!rc && (!text || fs_write_text(path, text))) {
        snprintf(err, errlen, "cannot write %s", path);
        rc = -1;
    }
    free(text);
    free(fb);
    ckpt_in_close(in);
    if (bytes) *bytes = (double)total;
    return rc ? -1 : n;
}

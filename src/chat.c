/* chat.c — DeepSeek-V3 chat template (see chat.h). */
#include "chat.h"

#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int chat_special_id(const tok_tokenizer *t, const char *tokpath, const char *key, int32_t *id, char *err, int errlen) {
    char *dup = strdup(tokpath);
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dup ? dirname(dup) : ".");
    free(dup);
    json_error_t je;
    json_t *root = json_load_file(cfg, 0, &je);
    if (!root) {
        snprintf(err, errlen, "%s: cannot read (%s): needed for %s", cfg, je.text, key);
        return -1;
    }
    json_t *v = json_object_get(root, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s: no %s string", cfg, key);
        json_decref(root);
        return -1;
    }
    *id = tok_id(t, json_string_value(v));
    if (*id < 0) snprintf(err, errlen, "%s: %s \"%s\" is not a token of the tokenizer", cfg, key, json_string_value(v));
    json_decref(root);
    return *id < 0 ? -1 : 0;
}

int chat_open(chat_state *s, const tok_tokenizer *t, const char *tokpath, char *err, int errlen) {
    memset(s, 0, sizeof *s);
    if (chat_special_id(t, tokpath, "bos_token", &s->bos, err, errlen) ||
        chat_special_id(t, tokpath, "eos_token", &s->eos, err, errlen))
        return -1;
    s->user = tok_id(t, "<｜User｜>");
    s->assistant = tok_id(t, "<｜Assistant｜>");
    if (s->user < 0 || s->assistant < 0) {
        snprintf(err, errlen, "%s: the tokenizer lacks <｜User｜> / <｜Assistant｜> (not a DeepSeek-V3 tokenizer)",
                 tokpath);
        return -1;
    }
    s->c = tok_ctx_new(t);
    if (!s->c) {
        snprintf(err, errlen, "out of memory for the tokenizer context");
        return -1;
    }
    return 0;
}

int chat_open_bytes(chat_state *s, int32_t bos, int32_t eos, char *err, int errlen) {
    memset(s, 0, sizeof *s);
    if (bos < 0 || eos < 0 || bos > 255 || eos > 255) {
        snprintf(err, errlen, "byte-level ids: bos %d / eos %d outside 0..255", bos, eos);
        return -1;
    }
    s->bos = bos, s->eos = eos, s->user = s->assistant = -1;
    return 0;
}

void chat_close(chat_state *s) {
    tok_ctx_free(s->c);
    tok_ids_free(&s->ids);
    tok_ids_free(&s->mask);
    memset(s, 0, sizeof *s);
}

static int seg(chat_state *s, const char *text, size_t len, int m) {
    size_t before = s->ids.n;
    if (!s->c) { /* byte-level: id = byte */
        for (size_t i = 0; i < len; i++)
            if (tok_ids_push(&s->ids, (unsigned char)text[i])) return -1;
    } else if (tok_encode(s->c, text, len, &s->ids))
        return -1;
    for (size_t i = before; i < s->ids.n; i++)
        if (tok_ids_push(&s->mask, m)) return -1;
    return 0;
}

static int tok1(chat_state *s, int32_t id, int m) { return tok_ids_push(&s->ids, id) || tok_ids_push(&s->mask, m); }

/* a role marker: the special token, or its UTF-8 bytes for a byte vocabulary (never trained on) */
static int marker(chat_state *s, int assistant) {
    if (s->c) return tok1(s, assistant ? s->assistant : s->user, 0);
    const char *text = assistant ? "<｜Assistant｜>" : "<｜User｜>";
    return seg(s, text, strlen(text), 0);
}

static const char *jstrn(json_t *o, const char *k, size_t *n) {
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) return NULL;
    *n = json_string_length(v);
    return json_string_value(v);
}

const char *chat_render(chat_state *s, json_t *j, int gen) {
    static char why[256];
    s->ids.n = s->mask.n = 0;
    if (!json_is_object(j)) return "not a JSON object";
    json_t *msgs = json_object_get(j, "messages");
    if (tok1(s, s->bos, 0)) return "out of memory";
    if (msgs) {
        if (!json_is_array(msgs) || json_array_size(msgs) == 0) return "\"messages\" must be a non-empty array";
        size_t i;
        json_t *m;
        /* system prompts first, joined by blank lines (as the template does) */
        int nsys = 0;
        json_array_foreach(msgs, i, m) {
            size_t n = 0;
            const char *role = json_string_value(json_object_get(m, "role"));
            const char *content = jstrn(m, "content", &n);
            if (!role || !content) return "each message needs \"role\" and \"content\" strings";
            if (!strcmp(role, "system")) {
                if (nsys++ && seg(s, "\n\n", 2, 0)) return "out of memory";
                if (seg(s, content, n, 0)) return "out of memory";
            } else if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) {
                snprintf(why, sizeof why, "unsupported role \"%.100s\" (system, user, assistant)", role);
                return why;
            }
        }
        int n_asst = 0;
        json_array_foreach(msgs, i, m) {
            size_t n = 0;
            const char *role = json_string_value(json_object_get(m, "role"));
            const char *content = jstrn(m, "content", &n);
            if (!strcmp(role, "user")) {
                if (marker(s, 0) || seg(s, content, n, 0)) return "out of memory";
            } else if (!strcmp(role, "assistant")) {
                if (marker(s, 1) || seg(s, content, n, 1) || tok1(s, s->eos, 1)) return "out of memory";
                n_asst++;
            }
        }
        if (gen) return marker(s, 1) ? "out of memory" : NULL;
        if (!n_asst) return "no assistant message";
        return NULL;
    }
    size_t ni = 0, nin = 0, no = 0;
    const char *ins = jstrn(j, "instruction", &ni), *inp = jstrn(j, "input", &nin), *out = jstrn(j, "output", &no);
    if (!ins || (!out && !gen)) return "neither \"messages\" nor Alpaca \"instruction\"/\"output\" strings";
    if (json_object_get(j, "input") && !inp) return "\"input\" must be a string";
    if (marker(s, 0)) return "out of memory";
    /* user turn: instruction, then the input after a blank line (one string, one encode) */
    size_t ul = ni + (inp && nin ? 2 + nin : 0);
    char *u = malloc(ul + 1);
    if (!u) return "out of memory";
    memcpy(u, ins, ni);
    if (inp && nin) { memcpy(u + ni, "\n\n", 2); memcpy(u + ni + 2, inp, nin); }
    int e = seg(s, u, ul, 0);
    free(u);
    if (e || marker(s, 1)) return "out of memory";
    if (gen) return NULL;
    if (seg(s, out, no, 1) || tok1(s, s->eos, 1)) return "out of memory";
    return NULL;
}

char *chat_utf8_lossy(const char *s, size_t n, size_t *out_n) {
    char *o = malloc(n * 3 + 1);
    if (!o) return NULL;
    size_t k = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t need = 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { o[k++] = (char)c; i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        size_t j = 1;
        bool ok = need > 0;
        for (; ok && j <= need; j++) {
            if (i + j >= n) { ok = false; break; }
            unsigned x = u[i + j];
            if (x < (j == 1 ? lo : 0x80) || x > (j == 1 ? hi : 0xBF)) { ok = false; break; }
        }
        if (ok) { memcpy(o + k, u + i, need + 1); k += need + 1; i += need + 1; }
        else { memcpy(o + k, "\xEF\xBF\xBD", 3); k += 3; i += need ? j : 1; }
    }
    o[k] = 0;
    *out_n = k;
    return o;
}

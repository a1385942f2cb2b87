/* tokenizer.c — byte-level BPE from a Hugging Face tokenizer.json.
 *
 * Work happens on raw bytes and ids: the ByteLevel byte->unicode mapping is a
 * bijection, so vocab strings are turned into raw bytes once at load, words are
 * split out of the UTF-8 text directly and BPE starts from one id per byte. Merges
 * are a table (left id, right id) -> (rank, merged id), applied lowest rank first,
 * leftmost first on ties, exactly the order of the `tokenizers` library.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_MAX_SPLITS 8

static void seterr(char *err, int errlen, const char *fmt, ...) {
    if (!err || errlen <= 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)errlen, fmt, ap);
    va_end(ap);
}

static inline uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * 0xff51afd7ed558ccdULL);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0x9fb21c651e98df25ULL;
        h ^= h >> 29;
        p += 8; n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0x9fb21c651e98df25ULL;
    h ^= h >> 32;
    return h;
}

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ---- string -> id map (open addressing, keys in a pool) ---- */

typedef struct {
    char *pool; size_t pool_n, pool_cap;
    struct { uint64_t h; uint32_t off, len; int32_t id; } *slot; /* id -1 = empty */
    size_t mask, n;
} strmap;

static int strmap_init(strmap *m, size_t expect) {
    size_t cap = 16;
    while (cap < expect * 2) cap <<= 1;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return -1;
    for (size_t i = 0; i < cap; i++) m->slot[i].id = -1;
    m->mask = cap - 1;
    m->n = 0;
    m->pool = NULL; m->pool_n = m->pool_cap = 0;
    return 0;
}

static void strmap_free(strmap *m) { free(m->slot); free(m->pool); memset(m, 0, sizeof *m); }

static int32_t strmap_get(const strmap *m, const void *k, size_t n) {
    uint64_t h = hash_bytes(k, n);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        if (m->slot[i].id < 0) return -1;
        if (m->slot[i].h == h && m->slot[i].len == n && !memcmp(m->pool + m->slot[i].off, k, n)) return m->slot[i].id;
    }
}

/* inserts (keeps the first id for a duplicate key); -1 on OOM */
static int strmap_put(strmap *m, const void *k, size_t n, int32_t id) {
    if ((m->n + 1) * 2 > m->mask + 1) return -1; /* sized at init */
    uint64_t h = hash_bytes(k, n);
    size_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->slot[i].id < 0) break;
        if (m->slot[i].h == h && m->slot[i].len == n && !memcmp(m->pool + m->slot[i].off, k, n)) return 0;
    }
    if (m->pool_n + n + 1 > m->pool_cap) {
        size_t nc = m->pool_cap ? m->pool_cap * 2 : 1 << 16;
        while (nc < m->pool_n + n + 1) nc *= 2;
        char *np = realloc(m->pool, nc);
        if (!np) return -1;
        m->pool = np; m->pool_cap = nc;
    }
    memcpy(m->pool + m->pool_n, k, n);
    m->pool[m->pool_n + n] = 0;
    m->slot[i].h = h; m->slot[i].off = (uint32_t)m->pool_n; m->slot[i].len = (uint32_t)n; m->slot[i].id = id;
    m->pool_n += n + 1;
    m->n++;
    return 0;
}

/* ---- tokenizer ---- */

typedef struct {
    char *s; size_t len;
    int32_t id;
    bool normalized; /* matched in the second pass (after the non-normalized ones) */
} added_tok;

struct tok_tokenizer {
    strmap vocab;            /* token string as in tokenizer.json (vocab + added) -> id */
    strmap raw;              /* raw bytes of a vocab token -> id (ignore_merges) */
    bool ignore_merges;
    int32_t byte_id[256];    /* id of each single byte */
    /* merges: (left, right) -> rank, merged id */
    struct { uint64_t key; int32_t rank, id; } *pair;
    size_t pair_mask;
    /* decode: raw bytes per id */
    int32_t n_ids;
    uint32_t *dec_off; int32_t *dec_len; /* len -1 = unused id */
    char *dec_pool;
    /* added tokens, two passes (non-normalized first), bucketed by first byte, longest first */
    int n_added;
    added_tok *added;
    int *bucket[2][256]; int bucket_n[2][256];
    /* Split regexes */
    int n_split;
    pcre2_code *re[TOK_MAX_SPLITS];
};

struct tok_ctx {
    const tok_tokenizer *t;
    pcre2_match_data *md[TOK_MAX_SPLITS];
    /* BPE scratch */
    int32_t *sid, *sprev, *snext; size_t scap;
    struct heap_ent { int32_t rank, pos, left, right, id; } *heap; size_t hcap, hn;
    /* word cache: bytes -> ids */
    struct { uint64_t h; uint32_t koff, klen, ioff, in; bool used; } *cache;
    size_t cache_mask, cache_n;
    char *ckeys; size_t ckn, ckcap;
    int32_t *cids; size_t cin, cicap;
    /* UTF-8 repair buffer */
    char *fix; size_t fixcap;
};

/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to 256+k */
static void byte_unicode(uint32_t cp_of_byte[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp_of_byte[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

/* decodes one UTF-8 code point (input known valid: from JSON); returns bytes used */
static int utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80 || n < 2) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = ((c & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (c < 0xF0 || n < 4) {
        if (n < 3) { *cp = c; return 1; }
        *cp = ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* ByteLevel decoding of a token string: every char must be in the byte map, else
 * the string's own UTF-8 bytes are used (what the `tokenizers` decoder does).
 * out must hold len bytes; returns the byte count. */
static size_t bytelevel_to_raw(const int16_t *byte_of_cp, const char *s, size_t len, char *out, bool *mapped) {
    size_t o = 0;
    *mapped = true;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i += (size_t)utf8_next((const unsigned char *)s + i, len - i, &cp);
        if (cp >= 512 || byte_of_cp[cp] < 0) { memcpy(out, s, len); *mapped = false; return len; }
        out[o++] = (char)byte_of_cp[cp];
    }
    return o;
}

static int pair_put(tok_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = mix64(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        if (t->pair[i].key == UINT64_MAX) {
            t->pair[i].key = key; t->pair[i].rank = rank; t->pair[i].id = id;
            return 1;
        }
        if (t->pair[i].key == key) return 0; /* duplicate merge: the first (lowest rank) wins */
    }
}

static inline bool pair_get(const tok_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = mix64(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        if (t->pair[i].key == key) { *rank = t->pair[i].rank; *id = t->pair[i].id; return true; }
        if (t->pair[i].key == UINT64_MAX) return false;
    }
}

void tok_free(tok_tokenizer *t) {
    if (!t) return;
    strmap_free(&t->vocab);
    strmap_free(&t->raw);
    free(t->pair);
    free(t->dec_off); free(t->dec_len); free(t->dec_pool);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].s);
    free(t->added);
    for (int p = 0; p < 2; p++)
        for (int b = 0; b < 256; b++) free(t->bucket[p][b]);
    for (int i = 0; i < t->n_split; i++) pcre2_code_free(t->re[i]);
    free(t);
}

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool jtrue(json_t *o, const char *key) { return json_is_true(json_object_get(o, key)); }

static int add_split(tok_tokenizer *t, const char *path, const char *pattern, bool literal, char *err, int errlen) {
    if (t->n_split == TOK_MAX_SPLITS) { seterr(err, errlen, "%s: more than %d Split pre-tokenizers", path, TOK_MAX_SPLITS); return -1; }
    int ec;
    PCRE2_SIZE eo;
    uint32_t opt = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opt, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        seterr(err, errlen, "%s: pre_tokenizer Split regex does not compile at offset %zu: %s", path, (size_t)eo,
               (char *)msg);
        return -1;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
    t->re[t->n_split++] = re;
    return 0;
}

/* the GPT-2 regex the ByteLevel pre-tokenizer uses when use_regex is true */
static const char *gpt2_regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_pretok(tok_tokenizer *t, const char *path, json_t *pt, char *err, int errlen) {
    if (json_is_null(pt) || !pt) return 0;
    const char *type = jstr(pt, "type");
    if (!type) { seterr(err, errlen, "%s: pre_tokenizer without a type", path); return -1; }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(pt, "pretokenizers");
        if (!json_is_array(arr)) { seterr(err, errlen, "%s: pre_tokenizer Sequence without pretokenizers", path); return -1; }
        size_t i;
        json_t *x;
        json_array_foreach(arr, i, x) if (load_pretok(t, path, x, err, errlen)) return -1;
        return 0;
    }
    if (!strcmp(type, "Split")) {
        const char *beh = jstr(pt, "behavior");
        if (!beh || strcmp(beh, "Isolated") != 0) {
            seterr(err, errlen, "%s: unsupported tokenizer: pre_tokenizer Split behavior \"%s\" (only Isolated)", path,
                   beh ? beh : "?");
            return -1;
        }
        if (jtrue(pt, "invert")) {
            seterr(err, errlen, "%s: unsupported tokenizer: pre_tokenizer Split with invert true", path);
            return -1;
        }
        json_t *pat = json_object_get(pt, "pattern");
        const char *rx = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        if (!rx && !lit) { seterr(err, errlen, "%s: pre_tokenizer Split without a Regex/String pattern", path); return -1; }
        return add_split(t, path, rx ? rx : lit, rx == NULL, err, errlen);
    }
    if (!strcmp(type, "ByteLevel")) {
        if (jtrue(pt, "add_prefix_space")) {
            seterr(err, errlen, "%s: unsupported tokenizer: pre_tokenizer ByteLevel add_prefix_space true", path);
            return -1;
        }
        if (jtrue(pt, "use_regex")) return add_split(t, path, gpt2_regex, false, err, errlen);
        return 0; /* the byte mapping itself is implicit: we work on raw bytes */
    }
    seterr(err, errlen, "%s: unsupported tokenizer: pre_tokenizer type \"%s\" (Sequence, Split, ByteLevel)", path, type);
    return -1;
}

static int cmp_added_len(const void *a, const void *b, void *ctx) {
    const added_tok *A = ctx;
    size_t la = A[*(const int *)a].len, lb = A[*(const int *)b].len;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

int tok_load(tok_tokenizer **tp, const char *path, char *err, int errlen) {
    *tp = NULL;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        seterr(err, errlen, "%s:%d: cannot read tokenizer.json: %s", path, je.line, je.text);
        return -1;
    }
    tok_tokenizer *t = calloc(1, sizeof *t);
    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[512];
    char *tmp = NULL;
    if (!t) { seterr(err, errlen, "out of memory"); goto fail; }
    byte_unicode(cp_of_byte);
    for (int i = 0; i < 512; i++) byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) byte_of_cp[cp_of_byte[b]] = (int16_t)b;

    json_t *model = json_object_get(root, "model");
    const char *mtype = jstr(model, "type");
    if (!model || !mtype || strcmp(mtype, "BPE") != 0) {
        seterr(err, errlen, "%s: unsupported tokenizer: model.type \"%s\" (only byte-level BPE)", path,
               mtype ? mtype : "missing");
        goto fail;
    }
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0)) {
        seterr(err, errlen, "%s: unsupported tokenizer: BPE dropout", path); goto fail;
    }
    if (jtrue(model, "byte_fallback") || jstr(model, "continuing_subword_prefix") || jstr(model, "end_of_word_suffix")) {
        seterr(err, errlen, "%s: unsupported tokenizer: BPE byte_fallback / continuing_subword_prefix / end_of_word_suffix", path);
        goto fail;
    }
    t->ignore_merges = jtrue(model, "ignore_merges");
    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm)) {
        const char *nt = jstr(norm, "type");
        json_t *ns = json_object_get(norm, "normalizers");
        if (!nt || strcmp(nt, "Sequence") != 0 || json_array_size(ns) != 0) {
            seterr(err, errlen, "%s: unsupported tokenizer: normalizer \"%s\" (only none or an empty Sequence)", path,
                   nt ? nt : "?");
            goto fail;
        }
    }
    json_t *dec = json_object_get(root, "decoder");
    if (dec && !json_is_null(dec)) {
        const char *dt = jstr(dec, "type");
        if (!dt || strcmp(dt, "ByteLevel") != 0) {
            seterr(err, errlen, "%s: unsupported tokenizer: decoder \"%s\" (only ByteLevel)", path, dt ? dt : "?");
            goto fail;
        }
    }
    json_t *pp = json_object_get(root, "post_processor");
    if (pp && !json_is_null(pp)) {
        const char *pt = jstr(pp, "type");
        if (!pt || strcmp(pt, "ByteLevel") != 0) {
            seterr(err, errlen, "%s: unsupported tokenizer: post_processor \"%s\" (only ByteLevel or none)", path,
                   pt ? pt : "?");
            goto fail;
        }
    }
    if (load_pretok(t, path, json_object_get(root, "pre_tokenizer"), err, errlen)) goto fail;

    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges)) {
        seterr(err, errlen, "%s: model.vocab must be an object and model.merges an array", path); goto fail;
    }
    size_t nv = json_object_size(vocab), na = json_is_array(added) ? json_array_size(added) : 0;
    if (strmap_init(&t->vocab, nv + na) || strmap_init(&t->raw, t->ignore_merges ? nv : 1)) {
        seterr(err, errlen, "out of memory"); goto fail;
    }
    /* ids */
    int32_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id > INT32_MAX - 1) {
            seterr(err, errlen, "%s: model.vocab[\"%s\"] is not a valid id", path, key); goto fail;
        }
        if (id > max_id) max_id = (int32_t)id;
    }
    size_t ai;
    json_t *ax;
    json_array_foreach(added, ai, ax) {
        json_int_t id = json_integer_value(json_object_get(ax, "id"));
        const char *c = jstr(ax, "content");
        if (!c || !json_is_integer(json_object_get(ax, "id")) || id < 0 || id > INT32_MAX - 1) {
            seterr(err, errlen, "%s: added_tokens[%zu] needs a content string and a valid id", path, ai); goto fail;
        }
        if (jtrue(ax, "lstrip") || jtrue(ax, "rstrip") || jtrue(ax, "single_word")) {
            seterr(err, errlen, "%s: unsupported tokenizer: added token \"%s\" uses lstrip/rstrip/single_word", path, c);
            goto fail;
        }
        if (id > max_id) max_id = (int32_t)id;
    }
    t->n_ids = max_id + 1;
    t->dec_off = calloc((size_t)t->n_ids, sizeof *t->dec_off);
    t->dec_len = malloc((size_t)t->n_ids * sizeof *t->dec_len);
    size_t pool_cap = 1 << 20, pool_n = 0;
    t->dec_pool = malloc(pool_cap);
    tmp = malloc(1 << 16);
    if (!t->dec_off || !t->dec_len || !t->dec_pool || !tmp) { seterr(err, errlen, "out of memory"); goto fail; }
    for (int32_t i = 0; i < t->n_ids; i++) t->dec_len[i] = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    /* vocab then added tokens (an added token's content overrides its id's bytes) */
    for (int pass = 0; pass < 2; pass++) {
        void *it = pass == 0 ? json_object_iter(vocab) : NULL;
        size_t k = 0;
        for (;;) {
            const char *s;
            int32_t id;
            if (pass == 0) {
                if (!it) break;
                s = json_object_iter_key(it);
                id = (int32_t)json_integer_value(json_object_iter_value(it));
                it = json_object_iter_next(vocab, it);
            } else {
                if (k >= na) break;
                json_t *x = json_array_get(added, k++);
                s = jstr(x, "content");
                id = (int32_t)json_integer_value(json_object_get(x, "id"));
            }
            size_t len = strlen(s);
            if (len >= (1 << 16)) { seterr(err, errlen, "%s: token of %zu bytes is too long", path, len); goto fail; }
            if (strmap_put(&t->vocab, s, len, id)) { seterr(err, errlen, "out of memory"); goto fail; }
            bool mapped;
            size_t rl = bytelevel_to_raw(byte_of_cp, s, len, tmp, &mapped);
            if (pass == 0 && mapped && t->ignore_merges && strmap_put(&t->raw, tmp, rl, id)) {
                seterr(err, errlen, "out of memory"); goto fail;
            }
            if (pass == 0 && mapped && rl == 1 && t->byte_id[(unsigned char)tmp[0]] < 0)
                t->byte_id[(unsigned char)tmp[0]] = id;
            if (pool_n + rl > pool_cap) {
                while (pool_n + rl > pool_cap) pool_cap *= 2;
                char *np = realloc(t->dec_pool, pool_cap);
                if (!np) { seterr(err, errlen, "out of memory"); goto fail; }
                t->dec_pool = np;
            }
            memcpy(t->dec_pool + pool_n, tmp, rl);
            t->dec_off[id] = (uint32_t)pool_n;
            t->dec_len[id] = (int32_t)rl;
            pool_n += rl;
        }
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) {
            seterr(err, errlen, "%s: unsupported tokenizer: byte 0x%02x has no ByteLevel token in model.vocab", path, b);
            goto fail;
        }
    /* merges: "a b" strings or ["a", "b"] pairs */
    size_t nm = json_array_size(merges), cap = 16;
    while (cap < nm * 2 + 2) cap <<= 1;
    t->pair = malloc(cap * sizeof *t->pair);
    if (!t->pair) { seterr(err, errlen, "out of memory"); goto fail; }
    t->pair_mask = cap - 1;
    for (size_t i = 0; i < cap; i++) t->pair[i].key = UINT64_MAX;
    for (size_t r = 0; r < nm; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp) { seterr(err, errlen, "%s: model.merges[%zu] \"%s\" is not \"a b\"", path, r, a); goto fail; }
            la = (size_t)(sp - a); b = sp + 1; lb = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0)); la = strlen(a);
            b = json_string_value(json_array_get(m, 1)); lb = strlen(b);
        } else {
            seterr(err, errlen, "%s: model.merges[%zu] is neither \"a b\" nor [a, b]", path, r); goto fail;
        }
        int32_t ia = strmap_get(&t->vocab, a, la), ib = strmap_get(&t->vocab, b, lb);
        if (la + lb >= (1 << 16)) { seterr(err, errlen, "%s: model.merges[%zu] too long", path, r); goto fail; }
        memcpy(tmp, a, la);
        memcpy(tmp + la, b, lb);
        int32_t ic = strmap_get(&t->vocab, tmp, la + lb);
        if (ia < 0 || ib < 0 || ic < 0) {
            seterr(err, errlen, "%s: model.merges[%zu] (\"%.*s\" \"%.*s\") uses a token missing from model.vocab", path,
                   r, (int)la, a, (int)lb, b);
            goto fail;
        }
        pair_put(t, ia, ib, (int32_t)r, ic);
    }
    /* added tokens: buckets by first byte, longest first */
    t->added = calloc(na ? na : 1, sizeof *t->added);
    if (!t->added) { seterr(err, errlen, "out of memory"); goto fail; }
    json_array_foreach(added, ai, ax) {
        const char *c = jstr(ax, "content");
        if (!c[0]) continue;
        added_tok *a = &t->added[t->n_added++];
        a->s = strdup(c);
        if (!a->s) { seterr(err, errlen, "out of memory"); goto fail; }
        a->len = strlen(c);
        a->id = (int32_t)json_integer_value(json_object_get(ax, "id"));
        a->normalized = jtrue(ax, "normalized");
    }
    for (int i = 0; i < t->n_added; i++) {
        int p = t->added[i].normalized, b = (unsigned char)t->added[i].s[0];
        int *nb = realloc(t->bucket[p][b], (size_t)(t->bucket_n[p][b] + 1) * sizeof *nb);
        if (!nb) { seterr(err, errlen, "out of memory"); goto fail; }
        nb[t->bucket_n[p][b]++] = i;
        t->bucket[p][b] = nb;
    }
    for (int p = 0; p < 2; p++)
        for (int b = 0; b < 256; b++)
            if (t->bucket_n[p][b] > 1) qsort_r(t->bucket[p][b], (size_t)t->bucket_n[p][b], sizeof(int), cmp_added_len, t->added);
    free(tmp);
    json_decref(root);
    *tp = t;
    return 0;
fail:
    free(tmp);
    tok_free(t);
    json_decref(root);
    return -1;
}

int tok_vocab_size(const tok_tokenizer *t) { return t->n_ids; }

int32_t tok_id(const tok_tokenizer *t, const char *token) { return strmap_get(&t->vocab, token, strlen(token)); }

/* ---- encoding ---- */

tok_ctx *tok_ctx_new(const tok_tokenizer *t) {
    tok_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->t = t;
    for (int i = 0; i < t->n_split; i++) {
        c->md[i] = pcre2_match_data_create_from_pattern(t->re[i], NULL);
        if (!c->md[i]) { tok_ctx_free(c); return NULL; }
    }
    c->cache_mask = (1 << 16) - 1;
    c->cache = calloc(c->cache_mask + 1, sizeof *c->cache);
    if (!c->cache) { tok_ctx_free(c); return NULL; }
    return c;
}

void tok_ctx_free(tok_ctx *c) {
    if (!c) return;
    for (int i = 0; i < TOK_MAX_SPLITS; i++)
        if (c->md[i]) pcre2_match_data_free(c->md[i]);
    free(c->sid); free(c->sprev); free(c->snext); free(c->heap);
    free(c->cache); free(c->ckeys); free(c->cids); free(c->fix);
    free(c);
}

int tok_ids_push(tok_ids *v, int32_t id) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 256;
        int32_t *p = realloc(v->ids, nc * sizeof *p);
        if (!p) return -1;
        v->ids = p; v->cap = nc;
    }
    v->ids[v->n++] = id;
    return 0;
}

void tok_ids_free(tok_ids *v) { free(v->ids); memset(v, 0, sizeof *v); }

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np) return -1;
    *p = np; *cap = nc;
    return 0;
}

static inline bool heap_less(const struct heap_ent *a, const struct heap_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(tok_ctx *c, struct heap_ent e) {
    if (grow((void **)&c->heap, &c->hcap, c->hn + 1, sizeof *c->heap)) return -1;
    size_t i = c->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &c->heap[p])) break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i] = e;
    return 0;
}

static struct heap_ent heap_pop(tok_ctx *c) {
    struct heap_ent top = c->heap[0], last = c->heap[--c->hn];
    size_t i = 0, n = c->hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct heap_ent *best = &last;
        if (l < n && heap_less(&c->heap[l], best)) { m = l; best = &c->heap[l]; }
        if (r < n && heap_less(&c->heap[r], best)) { m = r; }
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n) c->heap[i] = last;
    return top;
}

static int push_pair(tok_ctx *c, int32_t pos) {
    int32_t nx = c->snext[pos];
    if (nx < 0) return 0;
    int32_t rank, id;
    if (!pair_get(c->t, c->sid[pos], c->sid[nx], &rank, &id)) return 0;
    struct heap_ent e = {rank, pos, c->sid[pos], c->sid[nx], id};
    return heap_push(c, e);
}

/* BPE of one word's bytes; appends ids */
static int bpe_word(tok_ctx *c, const unsigned char *w, size_t n, tok_ids *out) {
    const tok_tokenizer *t = c->t;
    if (n == 1) return tok_ids_push(out, t->byte_id[w[0]]);
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->raw, w, n);
        if (id >= 0) return tok_ids_push(out, id);
    }
    if (grow((void **)&c->sid, &c->scap, n, sizeof *c->sid)) return -1;
    size_t cap = c->scap;
    /* keep the three scratch arrays the same size */
    int32_t *p1 = realloc(c->sprev, cap * sizeof *p1);
    if (!p1) return -1;
    c->sprev = p1;
    int32_t *p2 = realloc(c->snext, cap * sizeof *p2);
    if (!p2) return -1;
    c->snext = p2;
    for (size_t i = 0; i < n; i++) {
        c->sid[i] = t->byte_id[w[i]];
        c->sprev[i] = (int32_t)i - 1;
        c->snext[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    if (n <= 48) {
        /* short words: scan for the lowest-rank pair, leftmost on ties (array form) */
        int32_t *s = c->sid;
        size_t m = n;
        for (;;) {
            int32_t best = INT32_MAX, bid = -1, r, id;
            size_t bi = 0;
            for (size_t i = 0; i + 1 < m; i++)
                if (pair_get(t, s[i], s[i + 1], &r, &id) && r < best) { best = r; bid = id; bi = i; }
            if (bid < 0) break;
            s[bi] = bid;
            memmove(s + bi + 1, s + bi + 2, (m - bi - 2) * sizeof *s);
            m--;
        }
        for (size_t i = 0; i < m; i++)
            if (tok_ids_push(out, s[i])) return -1;
        return 0;
    }
    /* long words: priority queue of candidate merges over a linked list */
    c->hn = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (push_pair(c, (int32_t)i)) return -1;
    while (c->hn) {
        struct heap_ent e = heap_pop(c);
        int32_t p = e.pos, nx = c->snext[p];
        if (c->sid[p] != e.left || nx < 0 || c->sid[nx] != e.right) continue; /* stale */
        c->sid[p] = e.id;
        c->sid[nx] = -1; /* dead */
        c->snext[p] = c->snext[nx];
        if (c->snext[p] >= 0) c->sprev[c->snext[p]] = p;
        if (c->sprev[p] >= 0 && push_pair(c, c->sprev[p])) return -1;
        if (push_pair(c, p)) return -1;
    }
    for (int32_t i = 0; i >= 0; i = c->snext[i])
        if (tok_ids_push(out, c->sid[i])) return -1;
    return 0;
}

#define CACHE_MAX_WORD 64
#define CACHE_MAX_ENTRIES 40000

static int bpe_cached(tok_ctx *c, const unsigned char *w, size_t n, tok_ids *out) {
    if (n == 1) return tok_ids_push(out, c->t->byte_id[w[0]]);
    if (n > CACHE_MAX_WORD) return bpe_word(c, w, n, out);
    uint64_t h = hash_bytes(w, n);
    size_t i = h & c->cache_mask;
    for (; c->cache[i].used; i = (i + 1) & c->cache_mask) {
        if (c->cache[i].h == h && c->cache[i].klen == n && !memcmp(c->ckeys + c->cache[i].koff, w, n)) {
            const int32_t *ids = c->cids + c->cache[i].ioff;
            if (grow((void **)&out->ids, &out->cap, out->n + c->cache[i].in, sizeof *out->ids)) return -1;
            memcpy(out->ids + out->n, ids, c->cache[i].in * sizeof *ids);
            out->n += c->cache[i].in;
            return 0;
        }
    }
    size_t before = out->n;
    if (bpe_word(c, w, n, out)) return -1;
    if (c->cache_n >= CACHE_MAX_ENTRIES) { /* full: start over */
        memset(c->cache, 0, (c->cache_mask + 1) * sizeof *c->cache);
        c->cache_n = c->ckn = c->cin = 0;
        i = h & c->cache_mask;
    }
    size_t k = out->n - before;
    if (grow((void **)&c->ckeys, &c->ckcap, c->ckn + n, 1) ||
        grow((void **)&c->cids, &c->cicap, c->cin + k, sizeof *c->cids))
        return 0; /* no cache entry, result already out */
    memcpy(c->ckeys + c->ckn, w, n);
    memcpy(c->cids + c->cin, out->ids + before, k * sizeof *c->cids);
    c->cache[i].h = h; c->cache[i].koff = (uint32_t)c->ckn; c->cache[i].klen = (uint32_t)n;
    c->cache[i].ioff = (uint32_t)c->cin; c->cache[i].in = (uint32_t)k; c->cache[i].used = true;
    c->ckn += n; c->cin += k; c->cache_n++;
    return 0;
}

/* Split regex `level` on s[0..n) (a separate subject: lookarounds stop at its ends),
 * matches and the gaps between them go on to the next level, then to BPE. */
static int split_level(tok_ctx *c, int level, const char *s, size_t n, tok_ids *out) {
    if (n == 0) return 0;
    if (level == c->t->n_split) return bpe_cached(c, (const unsigned char *)s, n, out);
    pcre2_code *re = c->t->re[level];
    pcre2_match_data *md = c->md[level];
    size_t last = 0, start = 0;
    while (start < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t m0 = ov[0], m1 = ov[1];
        if (m1 == m0) { /* empty match: nothing to isolate, step one character */
            start = m0 + 1;
            while (start < n && ((unsigned char)s[start] & 0xC0) == 0x80) start++;
            continue;
        }
        if (m0 > last && split_level(c, level + 1, s + last, m0 - last, out)) return -1;
        if (split_level(c, level + 1, s + m0, m1 - m0, out)) return -1;
        last = start = m1;
    }
    if (last < n && split_level(c, level + 1, s + last, n - last, out)) return -1;
    return 0;
}

/* added tokens of pass p (0 non-normalized, 1 normalized), leftmost-longest;
 * the gaps go to pass p+1, then to the pre-tokenizer */
static int split_added(tok_ctx *c, int p, const char *s, size_t n, tok_ids *out) {
    const tok_tokenizer *t = c->t;
    if (p == 2) return split_level(c, 0, s, n, out);
    size_t last = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int nb = t->bucket_n[p][b];
        if (!nb) continue;
        for (int k = 0; k < nb; k++) {
            const added_tok *a = &t->added[t->bucket[p][b][k]];
            if (a->len <= n - i && !memcmp(s + i, a->s, a->len)) {
                if (i > last && split_added(c, p + 1, s + last, i - last, out)) return -1;
                if (tok_ids_push(out, a->id)) return -1;
                last = i + a->len;
                i = last - 1;
                break;
            }
        }
    }
    if (last < n) return split_added(c, p + 1, s + last, n - last, out);
    return 0;
}

/* length of a valid UTF-8 sequence at s (Unicode Table 3-7), 0 if invalid; *sub = length
 * of the maximal valid prefix (for U+FFFD replacement) */
static size_t utf8_valid(const unsigned char *s, size_t n, size_t *sub) {
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    *sub = 1;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 0;
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) { *sub = k; return 0; }
        unsigned x = s[k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (x < l || x > h) { *sub = k; return 0; }
    }
    return need + 1;
}

int tok_encode(tok_ctx *c, const char *text, size_t len, tok_ids *out) {
    /* the regexes need valid UTF-8: repair invalid sequences to U+FFFD first */
    const unsigned char *u = (const unsigned char *)text;
    size_t i = 0, sub;
    while (i < len) {
        if (u[i] < 0x80) { i++; continue; }
        size_t k = utf8_valid(u + i, len - i, &sub);
        if (!k) break;
        i += k;
    }
    if (i == len) return split_added(c, 0, text, len, out);
    if (grow((void **)&c->fix, &c->fixcap, len * 3 + 1, 1)) return -1;
    size_t o = 0;
    for (i = 0; i < len;) {
        size_t k = utf8_valid(u + i, len - i, &sub);
        if (k) { memcpy(c->fix + o, u + i, k); o += k; i += k; }
        else { memcpy(c->fix + o, "\xEF\xBF\xBD", 3); o += 3; i += sub; }
    }
    return split_added(c, 0, c->fix, o, out);
}

char *tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || t->dec_len[ids[i]] < 0) return NULL;
        total += (size_t)t->dec_len[ids[i]];
    }
    char *s = malloc(total + 1);
    if (!s) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(s + o, t->dec_pool + t->dec_off[ids[i]], (size_t)t->dec_len[ids[i]]);
        o += (size_t)t->dec_len[ids[i]];
    }
    s[o] = 0;
    if (len) *len = o;
    return s;
}

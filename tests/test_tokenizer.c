/* test_tokenizer.c — byte-level BPE: golden encodings, round trips, merge order,
 * added tokens, invalid input, unsupported tokenizer kinds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "tokenizer.h"

static char tmpdir[256];
static char shared_tok[1024], shared_golden[1024];
static int have_shared;

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dsv3_test_tok_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    const char *sh = getenv("DSV3_SHARED");
    const char *cands[] = {sh, "../shared", "/work/shared"};
    for (int i = 0; i < 3 && !have_shared; i++) {
        if (!cands[i]) continue;
        snprintf(shared_tok, sizeof shared_tok, "%s/data/tokenizer-deepseek-v3/tokenizer.json", cands[i]);
        snprintf(shared_golden, sizeof shared_golden, "%s/data/tokenizer-deepseek-v3/golden-encodings.json", cands[i]);
        have_shared = access(shared_tok, R_OK) == 0 && access(shared_golden, R_OK) == 0;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- a small synthetic byte-level tokenizer ---- */

/* GPT-2 byte -> code point */
static unsigned byte_cp(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (unsigned)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
    return 256u + (unsigned)n;
}

static void bl(char *out, const char *raw) { /* raw bytes -> ByteLevel string */
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        unsigned cp = byte_cp(*p);
        if (cp < 0x80) out[o++] = (char)cp;
        else { out[o++] = (char)(0xC0 | (cp >> 6)); out[o++] = (char)(0x80 | (cp & 0x3F)); }
    }
    out[o] = 0;
}

/* merges, in rank order, as raw strings "left|right" */
static const char *toy_merges[] = {"a|b", "b|c", "ab|c", " |a", "c|c", "x|x", "xx|xx", "xxxx|xxxx", "1|2", "12|3"};
#define N_TOY_MERGES (sizeof toy_merges / sizeof *toy_merges)

/* writes a toy tokenizer.json; `patch` edits the root before writing */
static void write_toy(const char *path, void (*patch)(json_t *root)) {
    json_t *vocab = json_object(), *merges = json_array();
    int id = 0;
    char s[64], l[32], r[32], bs[160];
    for (int b = 0; b < 256; b++) {
        char raw[2] = {(char)b, 0};
        if (b == 0) { /* NUL: write its mapped char directly */
            unsigned cp = byte_cp(0);
            s[0] = (char)(0xC0 | (cp >> 6)); s[1] = (char)(0x80 | (cp & 0x3F)); s[2] = 0;
        } else bl(s, raw);
        json_object_set_new(vocab, s, json_integer(id++));
    }
    for (size_t i = 0; i < N_TOY_MERGES; i++) {
        const char *bar = strchr(toy_merges[i], '|');
        snprintf(l, sizeof l, "%.*s", (int)(bar - toy_merges[i]), toy_merges[i]);
        snprintf(r, sizeof r, "%s", bar + 1);
        char lb[64], rb[64], both[80];
        bl(lb, l); bl(rb, r);
        snprintf(bs, sizeof bs, "%s %s", lb, rb);
        json_array_append_new(merges, json_string(bs));
        snprintf(both, sizeof both, "%s%s", l, r);
        bl(s, both);
        if (!json_object_get(vocab, s)) json_object_set_new(vocab, s, json_integer(id++));
    }
    json_t *root = json_pack("{s:s, s:n, s:n, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}, {s:i, s:s, s:b, s:b, s:b, s:b, s:b}],"
                             " s:{s:s, s:[]},"
                             " s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]},"
                             " s:{s:s}, s:{s:s},"
                             " s:{s:s, s:n, s:n, s:o, s:o}}",
                             "version", "1.0", "truncation", "padding", "added_tokens",
                             "id", 1000, "content", "<s>", "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1,
                             "id", 1001, "content", "<special>", "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 1, "special", 0,
                             "normalizer", "type", "Sequence", "normalizers",
                             "pre_tokenizer", "type", "Sequence", "pretokenizers",
                             "type", "Split", "pattern", "Regex", "\\p{N}{1,3}| ?\\p{L}+|\\s+(?!\\S)|\\s+", "behavior", "Isolated", "invert", 0,
                             "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0,
                             "post_processor", "type", "ByteLevel", "decoder", "type", "ByteLevel",
                             "model", "type", "BPE", "dropout", "unk_token", "vocab", vocab, "merges", merges);
    assert_non_null(root);
    if (patch) patch(root);
    assert_int_equal(json_dump_file(root, path, 0), 0);
    json_decref(root);
}

static tok_tokenizer *load_ok(const char *path) {
    tok_tokenizer *t;
    char err[512];
    if (tok_load(&t, path, err, sizeof err)) fail_msg("tok_load(%s): %s", path, err);
    return t;
}

static size_t enc(const tok_tokenizer *t, const char *s, size_t n, int32_t *out, size_t max) {
    tok_ctx *c = tok_ctx_new(t);
    tok_ids v = {0};
    assert_int_equal(tok_encode(c, s, n, &v), 0);
    assert_true(v.n <= max);
    memcpy(out, v.ids, v.n * sizeof *out);
    size_t k = v.n;
    tok_ids_free(&v);
    tok_ctx_free(c);
    return k;
}

/* reference BPE: repeatedly merge the leftmost lowest-rank pair (strings) */
static int ref_bpe(const char *w, char pieces[][64], int np) {
    int n = 0;
    for (const char *p = w; *p; p++) { pieces[n][0] = *p; pieces[n][1] = 0; n++; }
    (void)np;
    for (;;) {
        int best = 1 << 30, bi = -1;
        for (int i = 0; i + 1 < n; i++) {
            char pr[160];
            size_t a = strlen(pieces[i]), b = strlen(pieces[i + 1]);
            memcpy(pr, pieces[i], a);
            pr[a] = '|';
            memcpy(pr + a + 1, pieces[i + 1], b + 1);
            for (size_t r = 0; r < N_TOY_MERGES; r++)
                if (!strcmp(pr, toy_merges[r]) && (int)r < best) { best = (int)r; bi = i; }
        }
        if (bi < 0) break;
        size_t la = strlen(pieces[bi]), lb = strlen(pieces[bi + 1]);
        assert_true(la + lb < 64);
        memcpy(pieces[bi] + la, pieces[bi + 1], lb + 1);
        memmove(pieces[bi + 1], pieces[bi + 2], (size_t)(n - bi - 2) * 64);
        n--;
    }
    return n;
}

static void test_toy_merges(void **state) {
    (void)state;
    char p[300];
    snprintf(p, sizeof p, "%s/toy.json", tmpdir);
    write_toy(p, NULL);
    tok_tokenizer *t = load_ok(p);
    assert_int_equal(tok_vocab_size(t), 1002);
    int32_t ids[512];
    /* "abc": a|b (rank 0) before b|c (rank 1), then ab|c */
    size_t n = enc(t, "abc", 3, ids, 512);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], tok_id(t, "abc"));
    /* "bcc": b|c rank 1 beats c|c rank 4 */
    n = enc(t, "bcc", 3, ids, 512);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], tok_id(t, "bc"));
    assert_int_equal(ids[1], tok_id(t, "c"));
    /* "ccc": tie between the two c|c pairs -> the leftmost merges */
    n = enc(t, "ccc", 3, ids, 512);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], tok_id(t, "cc"));
    /* digits split in 1-3 groups by the regex, then 1|2, 12|3 */
    n = enc(t, "1234", 4, ids, 512);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], tok_id(t, "123"));
    assert_int_equal(ids[1], tok_id(t, "4"));
    /* long words (heap path) agree with the reference algorithm */
    static const char *words[] = {"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                                  "abcabcbccabcccabbcabcabcabcabccbcbcbabcabcabcbcbcabcabcabccccabcabcbabcbcabbcabcabcabbbcc",
                                  "abcxxxxxabccxxxxxxxxxxxabcbcbcbcbcxxxxxxxabcabcabcabcxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxabc"};
    for (size_t k = 0; k < 3; k++) {
        static char pieces[256][64];
        int np = ref_bpe(words[k], pieces, 256);
        n = enc(t, words[k], strlen(words[k]), ids, 512);
        assert_int_equal((int)n, np);
        for (int i = 0; i < np; i++) {
            char s[64];
            bl(s, pieces[i]);
            assert_int_equal(ids[i], tok_id(t, s));
        }
        /* the same word split into short pieces by spaces takes the array path: round trip */
        size_t len;
        char *d = tok_decode(t, ids, n, &len);
        assert_non_null(d);
        assert_int_equal(len, strlen(words[k]));
        assert_memory_equal(d, words[k], len);
        free(d);
    }
    /* added tokens split out first, leftmost-longest; the normalized one too */
    const char *txt = "ab<s>c<special><s<s>>";
    n = enc(t, txt, strlen(txt), ids, 512);
    size_t len;
    char *d = tok_decode(t, ids, n, &len);
    assert_string_equal(d, txt);
    free(d);
    int seen_s = 0, seen_special = 0;
    for (size_t i = 0; i < n; i++) {
        seen_s += ids[i] == 1000;
        seen_special += ids[i] == 1001;
    }
    assert_int_equal(seen_s, 2);
    assert_int_equal(seen_special, 1);
    assert_int_equal(ids[0], tok_id(t, "ab"));
    assert_int_equal(ids[1], 1000);
    /* spaces: " a" merges (rank 3); whitespace runs keep the last space for the next word */
    n = enc(t, "   a", 4, ids, 512);
    assert_int_equal(n, 3);
    assert_int_equal(ids[2], tok_id(t, "\xc4\xa0" "a")); /* "Ġa" */
    /* invalid UTF-8 becomes U+FFFD (like a Rust/Python string), no crash */
    n = enc(t, "a\xff" "b\xe2\x82", 5, ids, 512);
    d = tok_decode(t, ids, n, &len);
    assert_string_equal(d, "a\xef\xbf\xbd" "b\xef\xbf\xbd");
    free(d);
    /* NUL bytes are ordinary bytes */
    n = enc(t, "a\0b", 3, ids, 512);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 0);
    /* decode rejects unknown ids */
    int32_t badid[1] = {5000};
    assert_null(tok_decode(t, badid, 1, &len));
    assert_int_equal(tok_id(t, "no-such-token"), -1);
    tok_free(t);
}

/* ---- unsupported kinds ---- */

static void p_wordpiece(json_t *r) { json_object_set_new(json_object_get(r, "model"), "type", json_string("WordPiece")); }
static void p_nfc(json_t *r) { json_object_set_new(r, "normalizer", json_pack("{s:s}", "type", "NFC")); }
static void p_removed(json_t *r) {
    json_t *s = json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"), "pretokenizers"), 0);
    json_object_set_new(s, "behavior", json_string("Removed"));
}
static void p_badregex(json_t *r) {
    json_t *s = json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"), "pretokenizers"), 0);
    json_object_set_new(json_object_get(s, "pattern"), "Regex", json_string("(unclosed"));
}
static void p_metaspace(json_t *r) { json_object_set_new(r, "pre_tokenizer", json_pack("{s:s}", "type", "Metaspace")); }
static void p_template(json_t *r) { json_object_set_new(r, "post_processor", json_pack("{s:s}", "type", "TemplateProcessing")); }
static void p_fallback(json_t *r) { json_object_set_new(json_object_get(r, "model"), "byte_fallback", json_true()); }
static void p_lstrip(json_t *r) { json_object_set_new(json_array_get(json_object_get(r, "added_tokens"), 0), "lstrip", json_true()); }
static void p_badmerge(json_t *r) { json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"), json_string("zz qq")); }
static void p_nobyte(json_t *r) { json_object_del(json_object_get(json_object_get(r, "model"), "vocab"), "a"); }

static void expect_load_error(void (*patch)(json_t *), const char *needle) {
    char p[300], err[512] = "";
    snprintf(p, sizeof p, "%s/bad.json", tmpdir);
    write_toy(p, patch);
    tok_tokenizer *t = (tok_tokenizer *)1;
    int rc = tok_load(&t, p, err, sizeof err);
    if (rc == 0 || !strstr(err, needle)) print_error("expected '%s', got rc %d '%s'\n", needle, rc, err);
    assert_int_not_equal(rc, 0);
    assert_null(t);
    assert_non_null(strstr(err, needle));
    assert_non_null(strstr(err, "bad.json"));
}

static void test_unsupported(void **state) {
    (void)state;
    expect_load_error(p_wordpiece, "model.type \"WordPiece\"");
    expect_load_error(p_nfc, "normalizer \"NFC\"");
    expect_load_error(p_removed, "Split behavior \"Removed\"");
    expect_load_error(p_badregex, "regex does not compile");
    expect_load_error(p_metaspace, "pre_tokenizer type \"Metaspace\"");
    expect_load_error(p_template, "post_processor \"TemplateProcessing\"");
    expect_load_error(p_fallback, "byte_fallback");
    expect_load_error(p_lstrip, "lstrip");
    expect_load_error(p_badmerge, "missing from model.vocab");
    expect_load_error(p_nobyte, "byte 0x61 has no ByteLevel token");
    char p[300], err[512];
    snprintf(p, sizeof p, "%s/notjson.json", tmpdir);
    FILE *f = fopen(p, "w");
    fputs("{\"model\": [1, 2", f);
    fclose(f);
    tok_tokenizer *t;
    assert_int_not_equal(tok_load(&t, p, err, sizeof err), 0);
    assert_non_null(strstr(err, "notjson.json"));
    assert_int_not_equal(tok_load(&t, "/nonexistent/tokenizer.json", err, sizeof err), 0);
    assert_non_null(strstr(err, "/nonexistent/tokenizer.json"));
}

/* ---- DeepSeek-V3 golden encodings (../shared) ---- */

static void test_golden(void **state) {
    (void)state;
    if (!have_shared) {
        print_message("skip: DeepSeek-V3 tokenizer not found (set DSV3_SHARED or provide ../shared)\n");
        skip();
    }
    tok_tokenizer *t = load_ok(shared_tok);
    assert_int_equal(tok_vocab_size(t), 128815);
    assert_int_equal(tok_id(t, "<｜begin▁of▁sentence｜>"), 0);
    assert_int_equal(tok_id(t, "<｜end▁of▁sentence｜>"), 1);
    assert_true(tok_id(t, "<｜User｜>") > 0);
    assert_true(tok_id(t, "<｜Assistant｜>") > 0);
    json_error_t je;
    json_t *g = json_load_file(shared_golden, 0, &je);
    assert_non_null(g);
    assert_true(json_array_size(g) >= 50);
    tok_ctx *c = tok_ctx_new(t);
    size_t i;
    json_t *e;
    int bad = 0;
    json_array_foreach(g, i, e) {
        json_t *tx = json_object_get(e, "text"), *ids = json_object_get(e, "ids");
        tok_ids v = {0};
        assert_int_equal(tok_encode(c, json_string_value(tx), json_string_length(tx), &v), 0);
        int ok = v.n == json_array_size(ids);
        for (size_t k = 0; ok && k < v.n; k++) ok = v.ids[k] == json_integer_value(json_array_get(ids, k));
        if (!ok) {
            bad++;
            print_error("golden %zu differs: %.80s\n", i, json_string_value(tx));
        }
        /* round trip */
        size_t len;
        char *d = tok_decode(t, v.ids, v.n, &len);
        assert_non_null(d);
        assert_int_equal(len, json_string_length(tx));
        assert_memory_equal(d, json_string_value(tx), len);
        free(d);
        tok_ids_free(&v);
    }
    assert_int_equal(bad, 0);
    /* more round trips: multilingual, emoji, whitespace runs, digits, CRLF, specials */
    const char *more[] = {"Здравствуй, мир! 你好，世界 こんにちは مرحبا नमस्ते 안녕하세요",
                          "👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪 ❤️ 👍🏽", "a   b\t\t\tc\n\n\n   \r\n\r\n  end   ",
                          "1 12 123 1234 12345 3.14159 ١٢٣٤ ½", "<｜User｜>hi<｜Assistant｜>yo<｜end▁of▁sentence｜>",
                          "\xc2\xa0\xe2\x80\x83\xe3\x80\x80 zero\xe2\x80\x8bwidth e\xcc\x81"};
    for (size_t k = 0; k < sizeof more / sizeof *more; k++) {
        tok_ids v = {0};
        assert_int_equal(tok_encode(c, more[k], strlen(more[k]), &v), 0);
        assert_true(v.n > 0 && v.n <= strlen(more[k]));
        size_t len;
        char *d = tok_decode(t, v.ids, v.n, &len);
        assert_string_equal(d, more[k]);
        free(d);
        tok_ids_free(&v);
    }
    /* exact ids of a chat turn: specials split out, text between encoded normally */
    tok_ids v = {0};
    const char *chat = "<｜User｜>Hello, my dog is cute<｜Assistant｜>";
    assert_int_equal(tok_encode(c, chat, strlen(chat), &v), 0);
    int32_t want[] = {tok_id(t, "<｜User｜>"), 19923, 14, 1026, 6397, 344, 33125, tok_id(t, "<｜Assistant｜>")};
    assert_int_equal(v.n, 8);
    assert_memory_equal(v.ids, want, sizeof want);
    tok_ids_free(&v);
    tok_ctx_free(c);
    json_decref(g);
    tok_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_toy_merges),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_golden),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, setup, teardown);
}

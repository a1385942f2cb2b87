/* test_data.c — loader: formats, mixtures, rank-count invariance, bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "data.h"
#include "tokenizer.h"

static char tmpdir[256];

static void path_in(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", tmpdir, name); }

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void base_deck(deck *d, const char *format, int vocab) {
    memset(d, 0, sizeof *d);
    snprintf(d->data.format, sizeof d->data.format, "%s", format);
    d->model.vocab_size = vocab;
    d->model.eos_token_id = 1;
    d->run.seed = 1234;
}

static void add_source(deck *d, int valid, const char *path, double w) {
    deck_source *s = valid ? &d->validation.valid[d->validation.n_valid++] : &d->data.train[d->data.n_train++];
    size_t n = strlen(path);
    assert_true(n < sizeof s->path);
    memcpy(s->path, path, n + 1);
    s->weight = w;
}

/* a text corpus of 5000 bytes with no repeated 8-byte substrings (positions recoverable) */
static char corpus[5000];
static void make_corpus(void) {
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < sizeof corpus; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        corpus[i] = (char)(32 + x % 90);
    }
}

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dsv3_test_data_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    make_corpus();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_text_windows(void **state) {
    (void)state;
    char p[300];
    path_in(p, sizeof p, "corpus.txt");
    write_file(p, corpus, sizeof corpus);
    deck d;
    base_deck(&d, "text", 256);
    add_source(&d, 0, p, 1.0);
    data_loader *L;
    char err[512];
    const int T = 64;
    assert_int_equal(data_open(&L, &d, 0, T, err, sizeof err), 0);
    assert_int_equal(data_total_tokens(L), (int64_t)sizeof corpus);
    int32_t tok[64], tgt[64];
    for (int i = 0; i < 50; i++) {
        data_sample(L, i / 8, i % 8, tok, tgt);
        char w[65];
        for (int t = 0; t < T; t++) w[t] = (char)tok[t];
        w[T] = 0;
        char *at = memmem(corpus, sizeof corpus, w, (size_t)T);
        assert_non_null(at); /* a contiguous window of the file */
        size_t off = (size_t)(at - corpus);
        assert_true(off + T < sizeof corpus);
        for (int t = 0; t < T; t++) assert_int_equal(tgt[t], (unsigned char)corpus[off + t + 1]);
    }
    data_close(L);
}

static void test_text_short_file_pads(void **state) {
    (void)state;
    char p[300];
    path_in(p, sizeof p, "short.txt");
    write_file(p, "hello", 5);
    deck d;
    base_deck(&d, "text", 256);
    add_source(&d, 0, p, 1.0);
    data_loader *L;
    char err[512];
    assert_int_equal(data_open(&L, &d, 0, 8, err, sizeof err), 0);
    int32_t tok[8], tgt[8];
    data_sample(L, 0, 0, tok, tgt);
    const char *h = "hello";
    for (int t = 0; t < 5; t++) assert_int_equal(tok[t], h[t]);
    for (int t = 0; t < 4; t++) assert_int_equal(tgt[t], h[t + 1]);
    for (int t = 4; t < 8; t++) assert_int_equal(tgt[t], DATA_IGNORE);
    for (int t = 5; t < 8; t++) assert_int_equal(tok[t], 1); /* eos pad */
    data_close(L);
}

static void write_u32(const char *name, char *p, size_t pn, int n, int base) {
    path_in(p, pn, name);
    uint32_t *v = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) v[i] = (uint32_t)(base + i % 100);
    write_file(p, v, (size_t)n * 4);
    free(v);
}

static void test_u32_and_mixture(void **state) {
    (void)state;
    char a[300], b[300];
    write_u32("a.u32", a, sizeof a, 3000, 0);   /* ids 0..99 */
    write_u32("b.u32", b, sizeof b, 3000, 100); /* ids 100..199 */
    deck d;
    base_deck(&d, "u32", 200);
    add_source(&d, 0, a, 3.0);
    add_source(&d, 0, b, 1.0);
    data_loader *L;
    char err[512];
    const int T = 16;
    assert_int_equal(data_open(&L, &d, 0, T, err, sizeof err), 0);
    int32_t tok[16], tgt[16];
    int na = 0, N = 4000;
    for (int i = 0; i < N; i++) {
        data_sample(L, i / 16, i % 16, tok, tgt);
        int src = tok[0] >= 100;
        na += !src;
        for (int t = 0; t < T; t++) {
            assert_int_equal(tok[t] >= 100, src); /* one source per sample */
            int next = (tok[t] - 100 * src + 1) % 100 + 100 * src;
            assert_int_equal(tgt[t], next);
        }
    }
    double fa = (double)na / N;
    assert_true(fa > 0.72 && fa < 0.78); /* weights 3:1 normalised to 0.75 */
    data_close(L);
}

/* the (seed, step, index) -> sample map does not depend on how indices are split over ranks */
static void test_rank_invariance(void **state) {
    (void)state;
    char a[300], b[300];
    write_u32("ia.u32", a, sizeof a, 5000, 0);
    write_u32("ib.u32", b, sizeof b, 7000, 100);
    deck d;
    base_deck(&d, "u32", 200);
    add_source(&d, 0, a, 0.5);
    add_source(&d, 0, b, 0.5);
    char err[512];
    enum { T = 12, GB = 12, STEPS = 5 };
    static int32_t ref[STEPS][GB][2][T];
    data_loader *L1;
    assert_int_equal(data_open(&L1, &d, 0, T, err, sizeof err), 0);
    for (int s = 0; s < STEPS; s++)
        for (int g = 0; g < GB; g++) data_sample(L1, s, g, ref[s][g][0], ref[s][g][1]);
    data_close(L1);
    int distinct = 0;
    for (int g = 1; g < GB; g++) distinct += memcmp(ref[0][0], ref[0][g], sizeof ref[0][0]) != 0;
    assert_true(distinct >= GB - 2); /* samples within a batch differ */
    for (int ranks = 2; ranks <= 4; ranks++) {
        data_loader *R[4];
        for (int r = 0; r < ranks; r++) assert_int_equal(data_open(&R[r], &d, 0, T, err, sizeof err), 0);
        /* rank r takes a contiguous slice; ranks run in reverse order to shuffle call order */
        for (int s = 0; s < STEPS; s++)
            for (int r = ranks - 1; r >= 0; r--)
                for (int g = r * GB / ranks; g < (r + 1) * GB / ranks; g++) {
                    int32_t tok[T], tgt[T];
                    data_sample(R[r], s, g, tok, tgt);
                    assert_memory_equal(tok, ref[s][g][0], sizeof tok);
                    assert_memory_equal(tgt, ref[s][g][1], sizeof tgt);
                }
        for (int r = 0; r < ranks; r++) data_close(R[r]);
    }
    /* resume: a fresh loader asked for step 3 directly gives the same samples */
    data_loader *L2;
    assert_int_equal(data_open(&L2, &d, 0, T, err, sizeof err), 0);
    data_set_position(L2, 3);
    assert_int_equal(data_position(L2), 3);
    int32_t tok[T], tgt[T];
    data_sample(L2, 3, 7, tok, tgt);
    assert_memory_equal(tok, ref[3][7][0], sizeof tok);
    assert_int_equal(data_position(L2), 4);
    /* another seed gives another order */
    data_close(L2);
    d.run.seed = 99;
    assert_int_equal(data_open(&L2, &d, 0, T, err, sizeof err), 0);
    data_sample(L2, 3, 7, tok, tgt);
    assert_true(memcmp(tok, ref[3][7][0], sizeof tok) != 0);
    data_close(L2);
}

static void write_megatron(const char *name, char *prefix, size_t pn, int dtype, int ndoc, int doclen) {
    path_in(prefix, pn, name);
    data_mmidx_writer *w;
    char err[512];
    assert_int_equal(data_mmidx_writer_open(&w, prefix, dtype, err, sizeof err), 0);
    for (int k = 0; k < ndoc; k++) {
        int32_t v32[64];
        uint16_t v16[64];
        int n = doclen + k % 3;
        for (int i = 0; i < n; i++) {
            v32[i] = 1000 * k + i + 2;
            v16[i] = (uint16_t)v32[i];
        }
        v32[n - 1] = v16[n - 1] = 1; /* EOS */
        assert_int_equal(data_mmidx_writer_add(w, dtype == 4 ? (void *)v32 : (void *)v16, n), 0);
    }
    assert_int_equal(data_mmidx_writer_close(w, err, sizeof err), 0);
}

static void test_megatron_roundtrip(void **state) {
    (void)state;
    for (int dt = 0; dt < 2; dt++) {
        int dtype = dt ? 4 : 8;
        char p[300];
        write_megatron(dt ? "m32" : "m16", p, sizeof p, dtype, 40, 20);
        data_mmidx m;
        char err[512];
        assert_int_equal(data_mmidx_open(&m, p, err, sizeof err), 0);
        assert_int_equal(m.n_seq, 40);
        assert_int_equal(m.n_doc, 40);
        assert_int_equal(m.dtype, dtype);
        int64_t i = 0;
        for (int k = 0; k < 40; k++) {
            int n = 20 + k % 3;
            for (int j = 0; j < n; j++, i++)
                assert_int_equal(data_mmidx_token(&m, i), j == n - 1 ? 1 : 1000 * k + j + 2);
        }
        assert_int_equal(m.n_tokens, i);
        data_mmidx_close(&m);

        deck d;
        base_deck(&d, "megatron", 50000);
        add_source(&d, 0, p, 1.0);
        data_loader *L;
        const int T = 32;
        assert_int_equal(data_open(&L, &d, 0, T, err, sizeof err), 0);
        /* windows are aligned at multiples of T in the concatenated stream */
        assert_int_equal(data_mmidx_open(&m, p, err, sizeof err), 0);
        int32_t tok[32], tgt[32];
        for (int s = 0; s < 30; s++) {
            data_sample(L, s, 0, tok, tgt);
            int64_t start = -1;
            for (int64_t w = 0; w + T < m.n_tokens + T; w += T)
                if (data_mmidx_token(&m, w) == tok[0] && data_mmidx_token(&m, w + 1) == tok[1]) start = w;
            assert_true(start >= 0);
            for (int t = 0; t < T; t++) {
                assert_int_equal(tok[t], data_mmidx_token(&m, start + t));
                if (start + t + 1 < m.n_tokens) assert_int_equal(tgt[t], data_mmidx_token(&m, start + t + 1));
                else assert_int_equal(tgt[t], DATA_IGNORE);
            }
        }
        data_mmidx_close(&m);
        data_close(L);
    }
}

static void test_sft_masks(void **state) {
    (void)state;
    char p[300], mp[320];
    path_in(p, sizeof p, "sft");
    snprintf(mp, sizeof mp, "%s.mask", p);
    data_mmidx_writer *w, *wm;
    char err[512];
    assert_int_equal(data_mmidx_writer_open(&w, p, 4, err, sizeof err), 0);
    assert_int_equal(data_mmidx_writer_open(&wm, mp, 1, err, sizeof err), 0);
    /* conversation k: [bos, 10k+1 .. 10k+4 (prompt), 10k+5 .. 10k+7 (answer), eos], answer+eos masked in */
    for (int k = 0; k < 6; k++) {
        int32_t v[9] = {0, 10 * k + 1 + 100, 10 * k + 2 + 100, 10 * k + 3 + 100, 10 * k + 4 + 100,
                        10 * k + 5 + 100, 10 * k + 6 + 100, 10 * k + 7 + 100, 1};
        uint8_t mk[9] = {0, 0, 0, 0, 0, 1, 1, 1, 1};
        assert_int_equal(data_mmidx_writer_add(w, v, 9), 0);
        assert_int_equal(data_mmidx_writer_add(wm, mk, 9), 0);
    }
    assert_int_equal(data_mmidx_writer_close(w, err, sizeof err), 0);
    assert_int_equal(data_mmidx_writer_close(wm, err, sizeof err), 0);
    for (int pack = 0; pack < 2; pack++) {
        deck d;
        base_deck(&d, "sft", 1000);
        d.data.pack = pack;
        add_source(&d, 0, p, 1.0);
        data_loader *L;
        const int T = 20;
        assert_int_equal(data_open(&L, &d, 0, T, err, sizeof err), 0);
        int32_t tok[20], tgt[20];
        for (int s = 0; s < 10; s++) {
            data_sample(L, s, 0, tok, tgt);
            assert_int_equal(tok[0], 0);
            int convs = 0;
            for (int t = 0; t < T; t++) {
                if (tok[t] == 0) convs++;
                int id = tok[t] - 100, pos = id % 10;
                if (tok[t] >= 100 && pos >= 4 && pos <= 6) assert_int_equal(tgt[t], tok[t] + 1); /* answer */
                else if (tok[t] >= 100 && pos == 7) assert_int_equal(tgt[t], 1);                 /* eos */
                else assert_int_equal(tgt[t], DATA_IGNORE);                                      /* prompt/pad */
            }
            if (pack) assert_int_equal(convs, 2); /* 9 + 9 tokens fit in 20 + 1, a third does not */
            else {
                assert_int_equal(convs, 1);
                for (int t = 9; t < T; t++) assert_int_equal(tok[t], 1); /* padding */
            }
        }
        data_close(L);
    }
    /* truncated: a window shorter than a conversation keeps the first T tokens */
    deck d;
    base_deck(&d, "sft", 1000);
    add_source(&d, 0, p, 1.0);
    data_loader *L;
    assert_int_equal(data_open(&L, &d, 0, 6, err, sizeof err), 0);
    int32_t tok[6], tgt[6];
    data_sample(L, 0, 0, tok, tgt);
    for (int t = 0; t < 4; t++) assert_int_equal(tgt[t], DATA_IGNORE);
    assert_int_equal(tgt[4], tok[4] + 1); /* predicts the first answer token */
    assert_int_equal(tgt[5], tok[5] + 1);
    data_close(L);
}

static void expect_error(deck *d, int which, const char *needle) {
    data_loader *L = (data_loader *)1;
    char err[512] = "";
    int rc = data_open(&L, d, which, 16, err, sizeof err);
    if (rc == 0 || !strstr(err, needle)) print_error("expected error containing '%s', got rc %d: '%s'\n", needle, rc, err);
    assert_int_not_equal(rc, 0);
    assert_null(L);
    assert_non_null(strstr(err, needle));
}

static void corrupt_copy(const char *src, const char *dst, long keep, long flip_at, unsigned char flip) {
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    static unsigned char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (keep >= 0 && (size_t)keep < n) n = (size_t)keep;
    if (flip_at >= 0) buf[flip_at] = flip;
    write_file(dst, buf, n);
}

static void test_bad_input(void **state) {
    (void)state;
    char p[300], q[300], a[320], b[320];
    deck d;
    /* missing file */
    path_in(p, sizeof p, "nope.txt");
    base_deck(&d, "text", 256);
    add_source(&d, 0, p, 1);
    expect_error(&d, 0, "nope.txt: cannot open");
    /* empty dataset */
    path_in(p, sizeof p, "empty.txt");
    write_file(p, "", 0);
    base_deck(&d, "text", 256);
    add_source(&d, 0, p, 1);
    expect_error(&d, 0, "empty dataset");
    /* vocab too small for bytes */
    path_in(p, sizeof p, "corpus.txt");
    write_file(p, corpus, sizeof corpus);
    base_deck(&d, "text", 100);
    add_source(&d, 0, p, 1);
    expect_error(&d, 0, "model.vocab_size is 100");
    /* weights */
    base_deck(&d, "text", 256);
    add_source(&d, 0, p, 0);
    add_source(&d, 0, p, 0);
    expect_error(&d, 0, "weights sum to 0");
    base_deck(&d, "text", 256);
    add_source(&d, 0, p, -1);
    add_source(&d, 0, p, 2);
    expect_error(&d, 0, "must be finite and >= 0");
    /* no sources, bad format, validation without sources */
    base_deck(&d, "text", 256);
    expect_error(&d, 0, "data.train: no data sources");
    expect_error(&d, 1, "validation.valid: no data sources");
    base_deck(&d, "parquet", 256);
    add_source(&d, 0, p, 1);
    expect_error(&d, 0, "unsupported \"parquet\"");
    /* u32: truncated and out-of-vocab */
    write_u32("bad.u32", q, sizeof q, 100, 0);
    corrupt_copy(q, q, 398, -1, 0);
    base_deck(&d, "u32", 200);
    add_source(&d, 0, q, 1);
    expect_error(&d, 0, "truncated u32");
    write_u32("big.u32", q, sizeof q, 100, 150); /* ids up to 249 */
    base_deck(&d, "u32", 200);
    add_source(&d, 0, q, 1);
    expect_error(&d, 0, ">= model.vocab_size 200");
    /* megatron: good one first, then corrupted copies */
    write_megatron("good", p, sizeof p, 4, 10, 20);
    base_deck(&d, "megatron", 50000);
    add_source(&d, 0, p, 1);
    data_loader *L;
    char err[512];
    assert_int_equal(data_open(&L, &d, 0, 16, err, sizeof err), 0);
    data_close(L);
    base_deck(&d, "megatron", 5000); /* ids reach 9000+ */
    add_source(&d, 0, p, 1);
    expect_error(&d, 0, ">= model.vocab_size 5000");
    char src_idx[320], src_bin[320];
    snprintf(src_idx, sizeof src_idx, "%s.idx", p);
    snprintf(src_bin, sizeof src_bin, "%s.bin", p);
    path_in(q, sizeof q, "bad");
    snprintf(a, sizeof a, "%s.idx", q);
    snprintf(b, sizeof b, "%s.bin", q);
    base_deck(&d, "megatron", 50000);
    add_source(&d, 0, q, 1);
    corrupt_copy(src_idx, a, -1, -1, 0);
    corrupt_copy(src_bin, b, 500, -1, 0);
    expect_error(&d, 0, "bad.bin: truncated data file");
    corrupt_copy(src_bin, b, -1, -1, 0);
    corrupt_copy(src_idx, a, 100, -1, 0);
    expect_error(&d, 0, "bad.idx: truncated index");
    corrupt_copy(src_idx, a, 20, -1, 0);
    expect_error(&d, 0, "bad.idx: truncated index");
    corrupt_copy(src_idx, a, -1, 0, 'X');
    expect_error(&d, 0, "no MMIDIDX header");
    corrupt_copy(src_idx, a, -1, 9, 2);
    expect_error(&d, 0, "unsupported index version 2");
    corrupt_copy(src_idx, a, -1, 17, 6);
    expect_error(&d, 0, "unsupported token dtype code 6");
    unlink(b);
    corrupt_copy(src_idx, a, -1, -1, 0);
    expect_error(&d, 0, "bad.bin: cannot open");
    /* sft without its mask */
    base_deck(&d, "sft", 50000);
    add_source(&d, 0, p, 1);
    expect_error(&d, 0, "good.mask.idx: cannot open");
}

/* ---- files written by bin/dsv3-prep, read back by the loader ---- */

static int find_prep(char *prep, size_t pn, char *tok, size_t tn) {
    const char *bin = getenv("BIN");
    snprintf(prep, pn, "%s/dsv3-prep", bin && *bin ? bin : "bin");
    const char *sh = getenv("DSV3_SHARED");
    const char *cands[] = {sh, "../shared", "/work/shared"};
    for (int i = 0; i < 3; i++) {
        if (!cands[i]) continue;
        snprintf(tok, tn, "%s/data/tokenizer-deepseek-v3/tokenizer.json", cands[i]);
        if (access(tok, R_OK) == 0) return access(prep, X_OK) == 0;
    }
    return 0;
}

static void test_prep_readback(void **state) {
    (void)state;
    char prep[512], tokp[1024];
    if (!find_prep(prep, sizeof prep, tokp, sizeof tokp)) {
        print_message("skip: needs bin/dsv3-prep and the DeepSeek-V3 tokenizer (DSV3_SHARED or ../shared)\n");
        skip();
    }
    static const char *docs[] = {"The quick brown fox jumps over the lazy dog.", "深度求索 DeepSeek-V3 是一个混合专家模型。",
                                 "emoji 😀👍🏽 and digits 1234567", "a\r\nb\r\n\r\nc", "short"};
    char in[300], pre[300], cmd[4096];
    path_in(in, sizeof in, "docs.jsonl");
    path_in(pre, sizeof pre, "prep_pt");
    FILE *f = fopen(in, "w");
    for (int r = 0; r < 40; r++)
        for (size_t i = 0; i < 5; i++) {
            fputs("{\"text\": \"", f);
            for (const char *p = docs[i]; *p; p++) {
                if (*p == '\r') fputs("\\r", f);
                else if (*p == '\n') fputs("\\n", f);
                else fputc(*p, f);
            }
            fputs("\"}\n", f);
        }
    fclose(f);
    snprintf(cmd, sizeof cmd, "'%s' pretrain --tokenizer '%s' --input '%s' --output '%s' 2>/dev/null", prep, tokp, in, pre);
    assert_int_equal(system(cmd), 0);
    deck d;
    base_deck(&d, "megatron", 129280);
    assert_true(strlen(tokp) < sizeof d.data.tokenizer);
    memcpy(d.data.tokenizer, tokp, strlen(tokp) + 1);
    add_source(&d, 0, pre, 1.0);
    data_loader *L;
    char err[512];
    const int T = 24;
    if (data_open(&L, &d, 0, T, err, sizeof err)) fail_msg("%s", err);
    /* the stream is the documents' ids + EOS, in input order */
    tok_tokenizer *t;
    assert_int_equal(tok_load(&t, tokp, err, sizeof err), 0);
    tok_ctx *c = tok_ctx_new(t);
    tok_ids all = {0};
    for (int r = 0; r < 40; r++)
        for (size_t i = 0; i < 5; i++) {
            assert_int_equal(tok_encode(c, docs[i], strlen(docs[i]), &all), 0);
            tok_ids_push(&all, 1);
        }
    data_mmidx m;
    assert_int_equal(data_mmidx_open(&m, pre, err, sizeof err), 0);
    assert_int_equal(m.dtype, 4);
    assert_int_equal(m.n_doc, 200);
    assert_int_equal(m.n_tokens, (int64_t)all.n);
    for (size_t i = 0; i < all.n; i++) assert_int_equal(data_mmidx_token(&m, (int64_t)i), all.ids[i]);
    data_mmidx_close(&m);
    assert_int_equal(data_total_tokens(L), (int64_t)all.n);
    int32_t tok[24], tgt[24];
    for (int s = 0; s < 20; s++) {
        data_sample(L, s, 3, tok, tgt);
        int found = 0;
        for (size_t w = 0; w + 1 < all.n && !found; w += (size_t)T)
            found = !memcmp(&all.ids[w], tok, (all.n - w < (size_t)T ? all.n - w : (size_t)T) * sizeof *tok);
        assert_true(found);
    }
    data_close(L);
    /* a model vocabulary smaller than the tokenizer's is refused up front */
    d.model.vocab_size = 1000;
    expect_error(&d, 0, "tokenizer has 128815 ids but model.vocab_size is 1000");

    /* sft: the counted targets of a padded sample are the answer's ids then EOS */
    char sin[300], spre[300];
    path_in(sin, sizeof sin, "sft.jsonl");
    path_in(spre, sizeof spre, "prep_sft");
    f = fopen(sin, "w");
    fputs("{\"instruction\": \"Name a colour.\", \"input\": \"\", \"output\": \"Blue, like the sky.\"}\n", f);
    fputs("{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Capital of France?\"},"
          " {\"role\": \"assistant\", \"content\": \"Paris.\"}]}\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "'%s' sft --tokenizer '%s' --template deepseek-v3 --input '%s' --output '%s' 2>/dev/null", prep,
             tokp, sin, spre);
    assert_int_equal(system(cmd), 0);
    base_deck(&d, "sft", 129280);
    add_source(&d, 0, spre, 1.0);
    const int TS = 64;
    if (data_open(&L, &d, 0, TS, err, sizeof err)) fail_msg("%s", err);
    const char *answers[2] = {"Blue, like the sky.", "Paris."};
    int seen[2] = {0, 0};
    for (int s = 0; s < 16; s++) {
        int32_t st[64], sg[64], counted[64];
        data_sample(L, s, 0, st, sg);
        assert_int_equal(st[0], 0); /* bos */
        int nc = 0;
        for (int k = 0; k < TS; k++)
            if (sg[k] != DATA_IGNORE) counted[nc++] = sg[k];
        int matched = 0;
        for (int a = 0; a < 2; a++) {
            tok_ids v = {0};
            tok_encode(c, answers[a], strlen(answers[a]), &v);
            tok_ids_push(&v, 1);
            if ((size_t)nc == v.n && !memcmp(counted, v.ids, v.n * sizeof *counted)) { matched = 1; seen[a]++; }
            tok_ids_free(&v);
        }
        assert_true(matched);
    }
    assert_true(seen[0] > 0 && seen[1] > 0);
    data_close(L);
    tok_ids_free(&all);
    tok_ctx_free(c);
    tok_free(t);
}

static void test_bad_tokenizer(void **state) {
    (void)state;
    char p[300], tk[300];
    write_megatron("tokbad", p, sizeof p, 4, 4, 20);
    path_in(tk, sizeof tk, "wordpiece.json");
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}";
    write_file(tk, wp, strlen(wp));
    deck d;
    base_deck(&d, "megatron", 50000);
    assert_true(strlen(tk) < sizeof d.data.tokenizer);
    memcpy(d.data.tokenizer, tk, strlen(tk) + 1);
    add_source(&d, 0, p, 1);
    expect_error(&d, 0, "wordpiece.json: unsupported tokenizer: model.type \"WordPiece\"");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_windows),   cmocka_unit_test(test_text_short_file_pads),
        cmocka_unit_test(test_u32_and_mixture), cmocka_unit_test(test_rank_invariance),
        cmocka_unit_test(test_megatron_roundtrip), cmocka_unit_test(test_sft_masks),
        cmocka_unit_test(test_bad_input),    cmocka_unit_test(test_bad_tokenizer),
        cmocka_unit_test(test_prep_readback),
    };
    return cmocka_run_group_tests_name("data", tests, setup, teardown);
}

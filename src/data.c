/* data.c — token datasets, weighted mixtures, SFT samples, counter-based order.
 * See data.h for the formats and the sample-order contract. */
#include "data.h"
#include "tokenizer.h"

#include "comm.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum { FMT_TEXT, FMT_U32, FMT_MEGATRON, FMT_SFT };

typedef struct {
    char path[DECK_STR];
    double cum;                  /* cumulative normalised weight (upper bound) */
    /* flat token stream: text (uint8), u32 (uint32) or megatron (.bin) */
    void *map; size_t map_size;
    int64_t n_tokens;
    data_mmidx tok, mask;        /* megatron / sft */
} data_source;

struct data_loader {
    int format;
    int which;
    int seq_len;
    bool pack;
    uint64_t seed;
    int32_t pad_id;
    int n;
    data_source src[DECK_MAX_SOURCES];
    int64_t position;
    char desc[512];
};

static void seterr(char *err, int errlen, const char *fmt, ...) {
    if (!err || errlen <= 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)errlen, fmt, ap);
    va_end(ap);
}

/* ---- counter-based randomness: keyed SplitMix64 ---- */

static inline uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t data_hash(uint64_t seed, uint64_t purpose, uint64_t a, uint64_t b) {
    return mix64(mix64(mix64(mix64(seed) ^ purpose) ^ a) ^ b);
}

/* uniform integer in [0, n) from 64 random bits (multiply-shift, bias < n/2^64) */
static inline uint64_t below(uint64_t r, uint64_t n) {
    return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

/* ---- files ---- */

/* Data files are mapped (terabytes of tokens): a file truncated or replaced
 * while the run reads it raises SIGBUS on the next read past its new end.
 * The handler names the file and ends the job instead of dying on a bare
 * "Bus error". */
#define MAX_MAPS 256
static struct {
    const char *base;
    size_t size;
    char path[240];
} g_maps[MAX_MAPS];
static char g_sigbus_msg[512];

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    (void)sig, (void)ctx;
    const char *a = (const char *)si->si_addr, *path = "a mapped data file";
    for (int i = 0; i < MAX_MAPS; i++)
        if (g_maps[i].base && a >= g_maps[i].base && a < g_maps[i].base + g_maps[i].size) path = g_maps[i].path;
    /* async-signal-safe: build the line by hand */
    const char *parts[] = {"dsv3: error: ", path, " shrank while the run was reading it (truncated or replaced "
                           "during the run?): aborting the job\n"};
    size_t n = 0;
    for (int k = 0; k < 3; k++)
        for (const char *c = parts[k]; *c && n + 1 < sizeof g_sigbus_msg; c++) g_sigbus_msg[n++] = *c;
    ssize_t w = write(2, g_sigbus_msg, n);
    (void)w;
    comm_abort(1);
}

static void track_map(const void *base, size_t size, const char *path) {
    static int installed;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGBUS, &sa, NULL);
        installed = 1;
    }
    for (int i = 0; i < MAX_MAPS; i++)
        if (!g_maps[i].base) {
            g_maps[i].base = base;
            g_maps[i].size = size;
            snprintf(g_maps[i].path, sizeof g_maps[i].path, "%s", path);
            return;
        }
}

static void untrack_map(const void *base) {
    for (int i = 0; i < MAX_MAPS; i++)
        if (g_maps[i].base == base) g_maps[i].base = NULL;
}

static int map_file(const char *path, void **map, size_t *size, char *err, int errlen) {
    *map = NULL; *size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) { seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno)); return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        seterr(err, errlen, "%s: cannot stat: %s", path, strerror(errno)); close(fd); return -1;
    }
    if (!S_ISREG(st.st_mode)) { seterr(err, errlen, "%s: not a regular file", path); close(fd); return -1; }
    *size = (size_t)st.st_size;
    if (*size > 0) {
        void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            seterr(err, errlen, "%s: cannot map: %s", path, strerror(errno)); close(fd); return -1;
        }
        *map = p;
        track_map(p, *size, path);
    }
    close(fd);
    return 0;
}

static void unmap(void **map, size_t *size) {
    if (*map) untrack_map(*map), munmap(*map, *size);
    *map = NULL; *size = 0;
}

/* ---- Megatron MMIDIDX ---- */

static const char mm_magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
#define MM_HEADER 34 /* 9 magic + 8 version + 1 dtype + 8 seq count + 8 doc-index count */

static int mm_itemsize(int code) {
    switch (code) {
    case 1: case 2: return 1;
    case 3: case 8: return 2;
    case 4: case 7: return 4;
    case 5: case 6: return 8;
    default: return 0;
    }
}

void data_mmidx_close(data_mmidx *m) {
    unmap(&m->idx_map, &m->idx_size);
    unmap(&m->bin_map, &m->bin_size);
    memset(m, 0, sizeof *m);
}

int data_mmidx_open(data_mmidx *m, const char *prefix, char *err, int errlen) {
    memset(m, 0, sizeof *m);
    char ip[DECK_STR + 8], bp[DECK_STR + 8];
    snprintf(ip, sizeof ip, "%s.idx", prefix);
    snprintf(bp, sizeof bp, "%s.bin", prefix);
    if (map_file(ip, &m->idx_map, &m->idx_size, err, errlen)) return -1;
    if (map_file(bp, &m->bin_map, &m->bin_size, err, errlen)) { data_mmidx_close(m); return -1; }
    const unsigned char *h = m->idx_map;
    if (m->idx_size < MM_HEADER) {
        seterr(err, errlen, "%s: truncated index (%zu bytes, header needs %d)", ip, m->idx_size, MM_HEADER);
        goto fail;
    }
    if (memcmp(h, mm_magic, 9) != 0) {
        seterr(err, errlen, "%s: not a Megatron indexed dataset (no MMIDIDX header)", ip); goto fail;
    }
    uint64_t version, nseq, ndocidx;
    memcpy(&version, h + 9, 8);
    m->dtype = h[17];
    memcpy(&nseq, h + 18, 8);
    memcpy(&ndocidx, h + 26, 8);
    if (version != 1) {
        seterr(err, errlen, "%s: unsupported index version %llu (expected 1)", ip, (unsigned long long)version);
        goto fail;
    }
    if (m->dtype != 1 && m->dtype != 4 && m->dtype != 8) {
        seterr(err, errlen, "%s: unsupported token dtype code %d (expected 4 int32 or 8 uint16%s)", ip,
               m->dtype, ", or 1 uint8 for masks");
        goto fail;
    }
    m->itemsize = mm_itemsize(m->dtype);
    if (nseq > (1ULL << 40) || ndocidx > (1ULL << 40)) {
        seterr(err, errlen, "%s: corrupt counts (sequences %llu, document indices %llu)", ip,
               (unsigned long long)nseq, (unsigned long long)ndocidx);
        goto fail;
    }
    size_t want = MM_HEADER + nseq * 4 + nseq * 8 + ndocidx * 8;
    if (m->idx_size < want) {
        seterr(err, errlen, "%s: truncated index (%zu bytes, %llu sequences need %zu)", ip, m->idx_size,
               (unsigned long long)nseq, want);
        goto fail;
    }
    if (m->idx_size != want && m->idx_size != want + nseq) { /* + optional int8 modes */
        seterr(err, errlen, "%s: index size %zu does not match its header (expected %zu)", ip, m->idx_size, want);
        goto fail;
    }
    if (ndocidx < 1) { seterr(err, errlen, "%s: no document index (count 0)", ip); goto fail; }
    m->n_seq = (int64_t)nseq;
    m->n_doc = (int64_t)ndocidx - 1;
    m->sizes = h + MM_HEADER;
    m->pointers = h + MM_HEADER + nseq * 4;
    m->doc_idx = h + MM_HEADER + nseq * 12;
    int64_t off = 0;
    for (int64_t i = 0; i < m->n_seq; i++) {
        int32_t s; int64_t p;
        memcpy(&s, h + MM_HEADER + i * 4, 4);
        memcpy(&p, h + MM_HEADER + nseq * 4 + i * 8, 8);
        if (s < 0) { seterr(err, errlen, "%s: sequence %lld has negative size %d", ip, (long long)i, s); goto fail; }
        if (p != off * m->itemsize) {
            seterr(err, errlen, "%s: sequence %lld pointer %lld is not contiguous (expected %lld)", ip,
                   (long long)i, (long long)p, (long long)(off * m->itemsize));
            goto fail;
        }
        off += s;
    }
    m->n_tokens = off;
    int64_t prev = -1;
    for (int64_t i = 0; i < (int64_t)ndocidx; i++) {
        int64_t d;
        memcpy(&d, h + MM_HEADER + nseq * 12 + i * 8, 8);
        if ((i == 0 && d != 0) || d < prev || d > m->n_seq) {
            seterr(err, errlen, "%s: document index %lld = %lld out of order or range", ip, (long long)i, (long long)d);
            goto fail;
        }
        prev = d;
    }
    if (prev != m->n_seq) {
        seterr(err, errlen, "%s: last document index %lld != sequence count %lld", ip, (long long)prev,
               (long long)m->n_seq);
        goto fail;
    }
    if ((int64_t)m->bin_size != m->n_tokens * m->itemsize) {
        seterr(err, errlen, "%s: %s (%zu bytes, index says %lld tokens = %lld bytes)", bp,
               (int64_t)m->bin_size < m->n_tokens * m->itemsize ? "truncated data file" : "data file size mismatch",
               m->bin_size, (long long)m->n_tokens, (long long)(m->n_tokens * m->itemsize));
        goto fail;
    }
    return 0;
fail:
    data_mmidx_close(m);
    return -1;
}

struct data_mmidx_writer {
    char prefix[DECK_STR];
    char tmp_bin[DECK_STR + 16];
    FILE *bin;
    int dtype, itemsize;
    int32_t *sizes;
    int64_t n, cap;
    int failed;
};

int data_mmidx_writer_open(data_mmidx_writer **wp, const char *prefix, int dtype, char *err, int errlen) {
    *wp = NULL;
    if (strlen(prefix) >= DECK_STR - 16) { seterr(err, errlen, "%s: output prefix too long", prefix); return -1; }
    data_mmidx_writer *w = calloc(1, sizeof *w);
    if (!w) { seterr(err, errlen, "out of memory"); return -1; }
    snprintf(w->prefix, sizeof w->prefix, "%s", prefix);
    snprintf(w->tmp_bin, sizeof w->tmp_bin, "%s.bin.tmp", prefix);
    w->dtype = dtype;
    w->itemsize = mm_itemsize(dtype);
    w->bin = fopen(w->tmp_bin, "wb");
    if (!w->bin) {
        seterr(err, errlen, "%s: cannot create: %s", w->tmp_bin, strerror(errno));
        free(w);
        return -1;
    }
    *wp = w;
    return 0;
}

int data_mmidx_writer_add(data_mmidx_writer *w, const void *items, int64_t n) {
    if (n > INT32_MAX) { w->failed = 1; return -1; }
    if (w->n == w->cap) {
        int64_t nc = w->cap ? 2 * w->cap : 1024;
        int32_t *ns = realloc(w->sizes, (size_t)nc * sizeof *ns);
        if (!ns) { w->failed = 1; return -1; }
        w->sizes = ns; w->cap = nc;
    }
    w->sizes[w->n++] = (int32_t)n;
    if (n > 0 && fwrite(items, (size_t)w->itemsize, (size_t)n, w->bin) != (size_t)n) { w->failed = 1; return -1; }
    return 0;
}

int data_mmidx_writer_close(data_mmidx_writer *w, char *err, int errlen) {
    int rc = 0;
    char ip[DECK_STR + 16], ipt[DECK_STR + 16], bp[DECK_STR + 16];
    snprintf(ip, sizeof ip, "%s.idx", w->prefix);
    snprintf(ipt, sizeof ipt, "%s.idx.tmp", w->prefix);
    snprintf(bp, sizeof bp, "%s.bin", w->prefix);
    if (fclose(w->bin) != 0 || w->failed) {
        seterr(err, errlen, "%s: write failed", w->tmp_bin);
        rc = -1;
        goto out;
    }
    FILE *f = fopen(ipt, "wb");
    if (!f) { seterr(err, errlen, "%s: cannot create: %s", ipt, strerror(errno)); rc = -1; goto out; }
    uint64_t version = 1, nseq = (uint64_t)w->n, ndocidx = (uint64_t)w->n + 1;
    unsigned char code = (unsigned char)w->dtype;
    int ok = fwrite(mm_magic, 1, 9, f) == 9 && fwrite(&version, 8, 1, f) == 1 && fwrite(&code, 1, 1, f) == 1 &&
             fwrite(&nseq, 8, 1, f) == 1 && fwrite(&ndocidx, 8, 1, f) == 1 &&
             fwrite(w->sizes, 4, (size_t)w->n, f) == (size_t)w->n;
    int64_t p = 0;
    for (int64_t i = 0; ok && i < w->n; i++) {
        ok = fwrite(&p, 8, 1, f) == 1;
        p += (int64_t)w->sizes[i] * w->itemsize;
    }
    for (int64_t i = 0; ok && i <= w->n; i++) ok = fwrite(&i, 8, 1, f) == 1; /* one sequence per document */
    if (fclose(f) != 0 || !ok) { seterr(err, errlen, "%s: write failed", ipt); rc = -1; goto out; }
    if (rename(w->tmp_bin, bp) != 0 || rename(ipt, ip) != 0) {
        seterr(err, errlen, "%s: cannot rename into place: %s", w->prefix, strerror(errno));
        rc = -1;
    }
out:
    free(w->sizes);
    free(w);
    return rc;
}

void data_mmidx_writer_abort(data_mmidx_writer *w) {
    if (!w) return;
    fclose(w->bin);
    unlink(w->tmp_bin);
    free(w->sizes);
    free(w);
}

/* ---- loader ---- */

static int64_t src_token(const data_loader *L, const data_source *s, int64_t i) {
    switch (L->format) {
    case FMT_TEXT: return ((const unsigned char *)s->map)[i];
    case FMT_U32: return ((const uint32_t *)s->map)[i];
    default: return data_mmidx_token(&s->tok, i);
    }
}

/* max token id of a source (OpenMP over both cores: runs once per open) */
static int64_t src_max_token(const data_loader *L, const data_source *s, int64_t *at) {
    int64_t n = s->n_tokens, best = -1, where = -1;
#pragma omp parallel
    {
        int64_t lb = -1, lw = -1;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            int64_t v = src_token(L, s, i);
            if (v < 0) v = INT64_MAX; /* int32 negative ids are invalid too */
            if (v > lb) { lb = v; lw = i; }
        }
#pragma omp critical
        if (lb > best || (lb == best && lw < where)) { best = lb; where = lw; }
    }
    *at = where;
    return best;
}

void data_close(data_loader *L) {
    if (!L) return;
    for (int i = 0; i < L->n; i++) {
        unmap(&L->src[i].map, &L->src[i].map_size);
        data_mmidx_close(&L->src[i].tok);
        data_mmidx_close(&L->src[i].mask);
    }
    free(L);
}

static int open_source(data_loader *L, data_source *s, const deck *d, char *err, int errlen) {
    const char *path = s->path;
    if (L->format == FMT_TEXT || L->format == FMT_U32) {
        if (map_file(path, &s->map, &s->map_size, err, errlen)) return -1;
        if (L->format == FMT_U32 && s->map_size % 4 != 0) {
            seterr(err, errlen, "%s: truncated u32 token file (%zu bytes is not a multiple of 4)", path, s->map_size);
            return -1;
        }
        s->n_tokens = (int64_t)(L->format == FMT_TEXT ? s->map_size : s->map_size / 4);
    } else {
        if (data_mmidx_open(&s->tok, path, err, errlen)) return -1;
        if (s->tok.dtype == 1) {
            seterr(err, errlen, "%s.idx: uint8 dtype is a mask, not token ids", path);
            return -1;
        }
        s->n_tokens = s->tok.n_tokens;
        if (L->format == FMT_SFT) {
            char mp[DECK_STR + 8];
            snprintf(mp, sizeof mp, "%s.mask", path);
            if (data_mmidx_open(&s->mask, mp, err, errlen)) return -1;
            if (s->mask.n_seq != s->tok.n_seq || s->mask.dtype != 1) {
                seterr(err, errlen, "%s.idx: mask has %lld sequences of dtype %d, tokens %lld (expected equal, uint8)",
                       mp, (long long)s->mask.n_seq, s->mask.dtype, (long long)s->tok.n_seq);
                return -1;
            }
            for (int64_t i = 0; i < s->tok.n_seq; i++) {
                int64_t a = data_mmidx_size(&s->tok, i), b = data_mmidx_size(&s->mask, i);
                if (a != b) {
                    seterr(err, errlen, "%s.idx: sample %lld has %lld mask entries for %lld tokens", mp, (long long)i,
                           (long long)b, (long long)a);
                    return -1;
                }
            }
        }
    }
    if (s->n_tokens < 2) {
        seterr(err, errlen, "%s: empty dataset (%lld tokens, at least 2 needed)", path, (long long)s->n_tokens);
        return -1;
    }
    if (L->format == FMT_TEXT) {
        if (d->model.vocab_size < 256) {
            seterr(err, errlen, "%s: format \"text\" uses byte tokens 0..255 but model.vocab_size is %d", path,
                   d->model.vocab_size);
            return -1;
        }
    } else {
        int64_t at;
        int64_t mx = src_max_token(L, s, &at);
        if (mx >= d->model.vocab_size) {
            if (mx == INT64_MAX)
                seterr(err, errlen, "%s: negative token id at position %lld", path, (long long)at);
            else
                seterr(err, errlen, "%s: token id %lld at position %lld >= model.vocab_size %d", path, (long long)mx,
                       (long long)at, d->model.vocab_size);
            return -1;
        }
    }
    return 0;
}

int data_open(data_loader **Lp, const deck *d, int which, int seq_len, char *err, int errlen) {
    *Lp = NULL;
    const char *fmt = d->data.format;
    const deck_source *srcs = which ? d->validation.valid : d->data.train;
    int n = which ? d->validation.n_valid : d->data.n_train;
    const char *group = which ? "validation.valid" : "data.train";
    if (seq_len < 1) { seterr(err, errlen, "data: seq_len %d must be >= 1", seq_len); return -1; }
    if (n <= 0) { seterr(err, errlen, "%s: no data sources", group); return -1; }
    if (n > DECK_MAX_SOURCES) { seterr(err, errlen, "%s: %d sources, at most %d", group, n, DECK_MAX_SOURCES); return -1; }
    data_loader *L = calloc(1, sizeof *L);
    if (!L) { seterr(err, errlen, "out of memory"); return -1; }
    if (!strcmp(fmt, "text")) L->format = FMT_TEXT;
    else if (!strcmp(fmt, "u32")) L->format = FMT_U32;
    else if (!strcmp(fmt, "megatron")) L->format = FMT_MEGATRON;
    else if (!strcmp(fmt, "sft")) L->format = FMT_SFT;
    else {
        seterr(err, errlen, "data.format: unsupported \"%s\" (text, u32, megatron, sft)", fmt);
        free(L);
        return -1;
    }
    L->which = which;
    L->seq_len = seq_len;
    L->pack = d->data.pack;
    L->seed = (uint64_t)d->run.seed;
    L->pad_id = (d->model.eos_token_id >= 0 && d->model.eos_token_id < d->model.vocab_size) ? d->model.eos_token_id : 0;

    /* the tokenizer that made the data must be one we support and fit the model */
    if (d->data.tokenizer[0]) {
        if (L->format == FMT_TEXT) {
            seterr(err, errlen, "data.tokenizer: format \"text\" uses raw bytes; leave data.tokenizer empty (got %s)",
                   d->data.tokenizer);
            free(L);
            return -1;
        }
        tok_tokenizer *t;
        if (tok_load(&t, d->data.tokenizer, err, errlen)) { free(L); return -1; }
        int tv = tok_vocab_size(t);
        tok_free(t);
        if (tv > d->model.vocab_size) {
            seterr(err, errlen, "%s: tokenizer has %d ids but model.vocab_size is %d", d->data.tokenizer, tv,
                   d->model.vocab_size);
            free(L);
            return -1;
        }
    }

    double sum = 0;
    for (int i = 0; i < n; i++) {
        double w = srcs[i].weight;
        if (!(w >= 0) || !isfinite(w)) {
            seterr(err, errlen, "%s[%d] (%s): weight %g must be finite and >= 0", group, i, srcs[i].path, w);
            free(L);
            return -1;
        }
        sum += w;
    }
    if (!(sum > 0)) {
        seterr(err, errlen, "%s: weights sum to %g; at least one must be > 0", group, sum);
        free(L);
        return -1;
    }
    double cum = 0;
    for (int i = 0; i < n; i++) {
        data_source *s = &L->src[i];
        memcpy(s->path, srcs[i].path, sizeof s->path);
        s->path[sizeof s->path - 1] = 0;
        cum += srcs[i].weight / sum;
        s->cum = (i == n - 1) ? 1.0 : cum;
        L->n = i + 1;
        if (open_source(L, s, d, err, errlen)) { data_close(L); return -1; }
    }
    int off = snprintf(L->desc, sizeof L->desc, "%s %s: %d source%s", which ? "validation" : "train", fmt, n,
                       n > 1 ? "s" : "");
    for (int i = 0; i < n && off < (int)sizeof L->desc; i++)
        off += snprintf(L->desc + off, sizeof L->desc - (size_t)off, "%s %s (%.3g, %lld tokens)", i ? "," : "",
                        L->src[i].path, srcs[i].weight / sum, (long long)L->src[i].n_tokens);
    *Lp = L;
    return 0;
}

/* tokens[0..m) = stream[start..start+m), targets shifted; the rest padded */
static void fill_window(const data_loader *L, const data_source *s, int64_t start, int32_t *tokens,
                        int32_t *targets) {
    int T = L->seq_len;
    int64_t avail = s->n_tokens - start; /* tokens from start to the end of the stream */
    for (int t = 0; t < T; t++) {
        if (t < avail) {
            tokens[t] = (int32_t)src_token(L, s, start + t);
            targets[t] = (t + 1 < avail) ? (int32_t)src_token(L, s, start + t + 1) : DATA_IGNORE;
        } else {
            tokens[t] = L->pad_id;
            targets[t] = DATA_IGNORE;
        }
    }
}

/* SFT: conversations from `first` on, whole ones while they fit (pack), the first
 * one truncated if it alone is longer than the window. */
static void fill_sft(const data_loader *L, const data_source *s, int64_t first, int32_t *tokens, int32_t *targets) {
    int T = L->seq_len;
    const unsigned char *mask = s->mask.bin_map;
    int t = 0;
    for (int64_t k = 0; k < s->tok.n_seq && t < T; k++) {
        int64_t c = (first + k) % s->tok.n_seq;
        int64_t len = data_mmidx_size(&s->tok, c), st = data_mmidx_start(&s->tok, c);
        if (len == 0) continue;
        if (k > 0 && t + len > T + 1) break; /* next whole conversation does not fit */
        int64_t use = len < T + 1 - t ? len : T + 1 - t;
        for (int64_t j = 0; j < use && t < T; j++, t++) {
            tokens[t] = (int32_t)data_mmidx_token(&s->tok, st + j);
            targets[t] = (j + 1 < use && mask[st + j + 1]) ? (int32_t)data_mmidx_token(&s->tok, st + j + 1)
                                                           : DATA_IGNORE;
        }
        if (!L->pack) break;
    }
    for (; t < T; t++) {
        tokens[t] = L->pad_id;
        targets[t] = DATA_IGNORE;
    }
}

void data_sample(data_loader *L, int64_t step, int64_t global_index, int32_t *tokens, int32_t *targets) {
    uint64_t purpose = 0x64617461ULL + (uint64_t)L->which; /* "data" train / validation */
    uint64_t key = data_hash(L->seed, purpose, (uint64_t)step, (uint64_t)global_index);
    /* draw 0: source by weight */
    double u = (double)(mix64(key) >> 11) * (1.0 / 9007199254740992.0);
    int si = 0;
    while (si < L->n - 1 && !(u < L->src[si].cum)) si++;
    const data_source *s = &L->src[si];
    /* draw 1: window */
    uint64_t r = mix64(key ^ 0x5851f42d4c957f2dULL);
    int T = L->seq_len;
    switch (L->format) {
    case FMT_TEXT:
    case FMT_U32: {
        int64_t nstart = s->n_tokens > T ? s->n_tokens - T : 1; /* starts with T+1 tokens available */
        fill_window(L, s, (int64_t)below(r, (uint64_t)nstart), tokens, targets);
        break;
    }
    case FMT_MEGATRON: {
        int64_t nwin = (s->n_tokens - 1) / T;
        if (nwin < 1) nwin = 1;
        fill_window(L, s, (int64_t)below(r, (uint64_t)nwin) * T, tokens, targets);
        break;
    }
    case FMT_SFT:
        fill_sft(L, s, (int64_t)below(r, (uint64_t)s->tok.n_seq), tokens, targets);
        break;
    }
    /* position = max step sampled + 1; atomic so threads may share a loader */
    int64_t cur = __atomic_load_n(&L->position, __ATOMIC_RELAXED);
    while (step + 1 > cur &&
           !__atomic_compare_exchange_n(&L->position, &cur, step + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

int64_t data_position(const data_loader *L) { return __atomic_load_n(&L->position, __ATOMIC_RELAXED); }
void data_set_position(data_loader *L, int64_t position) { __atomic_store_n(&L->position, position, __ATOMIC_RELAXED); }

int64_t data_total_tokens(const data_loader *L) {
    int64_t n = 0;
    for (int i = 0; i < L->n; i++) n += L->src[i].n_tokens;
    return n;
}

const char *data_describe(const data_loader *L) { return L->desc; }

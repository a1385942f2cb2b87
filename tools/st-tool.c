/* st-tool — the safetensors reader and writer (src/safetensors.c) from the
 * command line; tests/it_safetensors_py.sh compares it with the Python client.
 *
 *   bin/st-tool write-sample OUT [numpy]   the sample tensors of
 *       tests/it_safetensors_py.sh (names needing JSON escaping, a scalar, a
 *       zero-sized tensor, BF16, F8_E4M3, ...), __metadata__ {"format":"pt"};
 *       `numpy`: only the dtypes numpy has (no BF16, no F8)
 *   bin/st-tool check FILE                 validates FILE; prints
 *       "meta KEY=VALUE" lines, then per tensor in name order
 *       "HEX(NAME) DTYPE SHAPE FNV1A64(BYTES)" (SHAPE: d0,d1,... or - for a scalar)
 * Exit 0, or 1 with one line on stderr. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

typedef struct { const char *name; st_dtype dt; int ndim; int64_t shape[3]; int numpy; } sample;
/* Keep in step with SAMPLES in tests/it_safetensors_py.sh (same order: index k feeds the data). */
static const sample S[] = {
    {"model.embed_tokens.weight", ST_F32, 2, {4, 3}, 1},
    {"scalar", ST_F32, 0, {0}, 1},
    {"empty", ST_I64, 2, {0, 3}, 1},
    {"idx", ST_I64, 1, {5}, 1},
    {"w.bf16", ST_BF16, 2, {2, 3}, 0},
    {"bytes", ST_U8, 1, {7}, 1},
    {"f8", ST_F8_E4M3, 1, {6}, 0},
    {"quote\"name", ST_F32, 1, {2}, 1},
    {"back\\slash", ST_U8, 1, {1}, 1},
    {"ctl\x01\x1f\x7f", ST_U8, 1, {2}, 1},
    {"new\nline\ttab\r\b\f", ST_I32, 1, {2}, 1},
    {"uni-\xc3\xa9-\xe6\x97\xa5\xe6\x9c\xac/x", ST_F16, 1, {3}, 1},
    {"flag", ST_BOOL, 1, {4}, 1},
    {"d", ST_F64, 1, {2}, 1},
    {"c", ST_C64, 1, {2}, 1},
    {"u16", ST_U16, 1, {3}, 1},
    {"i16", ST_I16, 1, {2}, 1},
    {"u32", ST_U32, 1, {1}, 1},
    {"u64", ST_U64, 1, {2}, 1},
    {"i8", ST_I8, 1, {3}, 1},
    {"f8b", ST_F8_E5M2, 2, {1, 2}, 0},
};
#define NS ((int)(sizeof S / sizeof S[0]))

/* The data of sample k: F32 i*0.25-1, I64 i*1000003-7, BOOL i&1, else byte j = 31j+7k+1. */
static void sample_data(int k, unsigned char *buf, uint64_t nb) {
    const sample *s = &S[k];
    if (s->dt == ST_F32) {
        for (uint64_t i = 0; i < nb / 4; i++) { float v = (float)i * 0.25f - 1.0f; memcpy(buf + 4 * i, &v, 4); }
    } else if (s->dt == ST_I64) {
        for (uint64_t i = 0; i < nb / 8; i++) { int64_t v = (int64_t)i * 1000003 - 7; memcpy(buf + 8 * i, &v, 8); }
    } else if (s->dt == ST_BOOL) {
        for (uint64_t i = 0; i < nb; i++) buf[i] = (unsigned char)(i & 1);
    } else {
        for (uint64_t i = 0; i < nb; i++) buf[i] = (unsigned char)((i * 31 + (uint64_t)k * 7 + 1) & 0xff);
    }
}

static int write_sample(const char *out, int numpy_only) {
    char err[1024];
    st_writer *w;
    if (st_writer_open(&w, out, err, sizeof err)) goto bad;
    st_writer_meta(w, "format", "pt");
    for (int k = 0; k < NS; k++)
        if (!numpy_only || S[k].numpy) st_writer_add(w, S[k].name, S[k].dt, S[k].ndim, S[k].shape);
    if (st_writer_begin(w, err, sizeof err)) { st_writer_abort(w, 1); goto bad; }
    for (int k = 0; k < NS; k++) {
        if (numpy_only && !S[k].numpy) continue;
        const st_tensor *t = st_writer_tensor(w, st_writer_find(w, S[k].name));
        uint64_t nb = st_bytes(t);
        unsigned char buf[256];
        sample_data(k, buf, nb);
        if (st_writer_put(w, S[k].name, 0, buf, nb, err, sizeof err)) { st_writer_abort(w, 1); goto bad; }
    }
    if (st_writer_close(w, 1, err, sizeof err)) goto bad;
    return 0;
bad:
    fprintf(stderr, "st-tool: %s\n", err);
    return 1;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *const *)a)[0]->name, ((const st_tensor *const *)b)[0]->name);
}

static int check(const char *path) {
    char err[1024];
    st_file f;
    if (st_open(&f, path, err, sizeof err)) { fprintf(stderr, "st-tool: %s\n", err); return 1; }
    /* metadata in key order */
    for (int i = 1; i < f.n_meta; i++) /* insertion sort */
        for (int j = i; j > 0 && strcmp(f.meta_key[j - 1], f.meta_key[j]) > 0; j--) {
            char *k = f.meta_key[j], *v = f.meta_val[j];
            f.meta_key[j] = f.meta_key[j - 1], f.meta_val[j] = f.meta_val[j - 1];
            f.meta_key[j - 1] = k, f.meta_val[j - 1] = v;
        }
    for (int i = 0; i < f.n_meta; i++) printf("meta %s=%s\n", f.meta_key[i], f.meta_val[i]);
    const st_tensor **o = malloc((size_t)(f.n ? f.n : 1) * sizeof *o);
    for (int i = 0; i < f.n; i++) o[i] = &f.t[i];
    qsort(o, (size_t)f.n, sizeof *o, by_name);
    int rc = 0;
    unsigned char buf[1 << 16];
    for (int i = 0; i < f.n && !rc; i++) {
        const st_tensor *t = o[i];
        for (const unsigned char *p = (const unsigned char *)t->name; *p; p++) printf("%02x", *p);
        printf(" %s ", st_dtype_name(t->dtype));
        if (t->ndim == 0) printf("-");
        for (int d = 0; d < t->ndim; d++) printf("%s%" PRId64, d ? "," : "", t->shape[d]);
        uint64_t h = 0xcbf29ce484222325ull, nb = st_bytes(t);
        for (uint64_t off = 0; off < nb; off += sizeof buf) {
            uint64_t len = nb - off < sizeof buf ? nb - off : sizeof buf;
            if (st_read(&f, (int)(t - f.t), off, len, buf, err, sizeof err)) { fprintf(stderr, "st-tool: %s\n", err); rc = 1; break; }
            for (uint64_t j = 0; j < len; j++) h = (h ^ buf[j]) * 0x100000001b3ull;
        }
        printf(" %016" PRIx64 "\n", h);
    }
    free(o);
    st_close(&f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "write-sample") == 0) return write_sample(argv[2], argc > 3 && strcmp(argv[3], "numpy") == 0);
    if (argc == 3 && strcmp(argv[1], "check") == 0) return check(argv[2]);
    fprintf(stderr, "usage: st-tool write-sample OUT [numpy] | st-tool check FILE\n");
    return 1;
}

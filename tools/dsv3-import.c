/* dsv3-import — a released Hugging Face DeepSeek-V3 checkpoint (safetensors
 * shards, BF16/F16/F32 or FP8 e4m3 with 128x128 block scales) as a dsv3
 * checkpoint that starts a run with run.init_from.
 *
 *   dsv3-import [--dtype fp32|bf16] [--keep-fp8] [--print-deck] [-q] HF_DIR OUT.h5
 *
 * - config.json becomes the deck's model group (written into the checkpoint;
 *   --print-deck prints it as a deck file for @include); other architectures
 *   are refused by name.
 * - Every tensor is resolved through model.safetensors.index.json's weight_map
 *   (a weight and its weight_scale_inv may sit in different shards), or a
 *   single model.safetensors. Every shard header is validated first.
 * - Every tensor of the files is accounted for before anything is written:
 *   unmatched, missing and wrong-shape tensors are listed and a partial import
 *   is refused.
 * - Routed experts (model.layers.L.mlp.experts.E.<proj>.weight) become the
 *   stacked [E, out, in] datasets; the MTP layer's embed_tokens and
 *   shared_head.head must equal the main embedding and lm_head byte for byte
 *   (dsv3 shares them, spec §6) and are stored once.
 * - FP8: w = float(e4m3) * scale_inv[r/128][c/128] (edge blocks included),
 *   the reference dequantization, exactly. scale_fmt "ue8m0": every scale must
 *   be a power of two; the count that are not is reported. F8_E8M0 scales are
 *   accepted.
 * - --keep-fp8: the FP8 weights a frozen base keeps narrow (train.base_dtype =
 *   "fp8": MLA projections, dense and shared MLP, stacked routed experts) are
 *   stored as they are, e4m3 bytes + their scales as f32 weight_scale_inv
 *   (ckpt_frozen.h), no dequantization; everything else as --dtype says.
 * - Streaming: a fixed buffer of row blocks (multiples of 128 rows), never a
 *   whole model or a whole large tensor in memory; peak RSS is printed.
 * - Progress on stderr (tensors, GB, GB/s, ETA) and a summary at the end.
 *
 * The output is written as OUT.h5.tmp and renamed when complete.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include "../src/ckpt.h"
#include "../src/deck.h"
#include "../src/hfconv.h"
#include "../src/hfconfig.h"
#include "../src/model/params.h"
#include "../src/ops.h"
#include "../src/safetensors.h"
#include "../src/tool.h"

#define BUF_BYTES ((size_t)256 << 20) /* conversion buffer: float rows of one block */
/* Rows are converted and written in pieces of about this many output bytes:
 * the kernel's copy into the page cache then reads them from L2, not memory. */
#define PIECE_BYTES ((size_t)512 << 10)

static int quiet, g_rank, g_size = 1;



static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) free(s), s = NULL;
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

/* ---- the files: shards and the name -> (shard, tensor) map ---- */

typedef struct {
    int nshard;
    st_file *sh;
    char **shard_name;
    int n;          /* tensors over all shards */
    int *ts, *ti;   /* [n] shard and index of tensor k */
    char *used;     /* [n] accounted for */
} source;

static int src_find(const source *s, const char *name) {
    for (int k = 0; k < s->n; k++)
        if (strcmp(s->sh[s->ts[k]].t[s->ti[k]].name, name) == 0) return k;
    return -1;
}
static const st_tensor *src_t(const source *s, int k) { return &s->sh[s->ts[k]].t[s->ti[k]]; }

static void open_shards(source *s, const char *dir) {
    char path[8192], ipath[8192], err[1024];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    snprintf(ipath, sizeof ipath, "%s", path);
    json_error_t je;
    json_t *idx = NULL;
    FILE *probe = fopen(path, "rb");
    if (probe) {
        fclose(probe);
        idx = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        if (!idx) tool_die("%s:%d: %s", path, je.line, je.text);
    }
    const char **names = NULL;
    int nn = 0;
    json_t *wm = idx ? json_object_get(idx, "weight_map") : NULL;
    if (idx && !json_is_object(wm)) tool_die("%s: no weight_map object", path);
    if (wm) { /* distinct shard files, in first-seen order */
        names = calloc(json_object_size(wm) + 1, sizeof *names);
        const char *key;
        json_t *v;
        json_object_foreach(wm, key, v) {
            if (!json_is_string(v)) tool_die("%s: weight_map[\"%s\"] is not a file name", path, key);
            const char *fn = json_string_value(v);
            if (strchr(fn, '/')) tool_die("%s: weight_map[\"%s\"] = \"%s\" is not a file in %s", path, key, fn, dir);
            int seen = 0;
            for (int i = 0; i < nn && !seen; i++) seen = strcmp(names[i], fn) == 0;
            if (!seen) names[nn++] = fn;
        }
    } else {
        static const char *one = "model.safetensors";
        names = &one;
        nn = 1;
    }
    s->nshard = nn;
    s->sh = calloc((size_t)nn, sizeof *s->sh);
    s->shard_name = calloc((size_t)nn, sizeof *s->shard_name);
    for (int i = 0; i < nn; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        s->shard_name[i] = strdup(names[i]);
        if (st_open(&s->sh[i], path, err, sizeof err) || st_map(&s->sh[i], err, sizeof err)) tool_die("%s", err);
        s->n += s->sh[i].n;
    }
    s->ts = calloc((size_t)s->n + 1, sizeof *s->ts);
    s->ti = calloc((size_t)s->n + 1, sizeof *s->ti);
    s->used = calloc((size_t)s->n + 1, 1);
    int k = 0;
    for (int i = 0; i < nn; i++)
        for (int j = 0; j < s->sh[i].n; j++) s->ts[k] = i, s->ti[k] = j, k++;
    if (wm) { /* the index and the shards must name the same tensors, each once */
        const char *key;
        json_t *v;
        json_object_foreach(wm, key, v) {
            int t = src_find(s, key);
            if (t < 0) tool_die("%s: weight_map names %s in %s, which does not hold it", ipath, key, json_string_value(v));
            if (strcmp(s->shard_name[s->ts[t]], json_string_value(v)) != 0)
                tool_die("%s: weight_map puts %s in %s, but it is in %s", ipath, key, json_string_value(v),
                    s->shard_name[s->ts[t]]);
        }
        for (k = 0; k < s->n; k++)
            if (!json_object_get(wm, src_t(s, k)->name))
                tool_die("%s: %s holds %s, which the index does not list", ipath, s->shard_name[s->ts[k]], src_t(s, k)->name);
        free(names);
        json_decref(idx);
    }
    for (k = 0; k < s->n; k++) /* a name in two shards */
        for (int j = k + 1; j < s->n; j++)
            if (s->ts[j] != s->ts[k] && strcmp(src_t(s, k)->name, src_t(s, j)->name) == 0)
                tool_die("%s holds %s twice (%s and %s)", dir, src_t(s, k)->name, s->shard_name[s->ts[k]],
                    s->shard_name[s->ts[j]]);
}

/* ---- conversion of one row block to float ---- */

static float f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 0) {
        if (!m) u = s;
        else { /* subnormal: m * 2^-24 */
            float f = ldexpf((float)m, -24);
            return s ? -f : f;
        }
    } else if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}


static float scale_value(const unsigned char *p, st_dtype dt) {
    if (dt == ST_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    if (dt == ST_BF16) return ops_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
    /* F8_E8M0: 2^(e-127), 255 = NaN */
    return p[0] == 255 ? NAN : ldexpf(1.0f, (int)p[0] - 127);
}

typedef struct {
    int64_t tensors, pow2_bad, scales;
    double bytes_in, bytes_out;
    int64_t by_dtype[ST_NDTYPES];
} stats;

/* A unit's scales: rows [r0/128, +ceil(nr/128)) of FP8 scale tensor sk as
 * floats in sbuf (each counted, and checked for ue8m0). r0 % 128 == 0. */
static void unit_scales(const source *s, int sk, int64_t r0, int64_t nr, float *sbuf, int ue8m0, stats *stt) {
    char err[1024];
    const st_tensor *sc = src_t(s, sk);
    int64_t sc_cols = sc->shape[1], sr0 = r0 / 128, snr = (nr + 127) / 128;
    size_t ses = (size_t)st_dtype_bits(sc->dtype) / 8;
    unsigned char *sraw = (unsigned char *)sbuf; /* scales fit before their float expansion */
    if (st_read(&s->sh[s->ts[sk]], s->ti[sk], (uint64_t)(sr0 * sc_cols) * ses, (uint64_t)(snr * sc_cols) * ses, sraw,
                err, sizeof err))
        tool_die_local("%s", err);
    for (int64_t i = snr * sc_cols - 1; i >= 0; i--) sbuf[i] = scale_value(sraw + (size_t)i * ses, sc->dtype); /* in place, back to front */
    for (int64_t i = 0; i < snr * sc_cols; i++) {
        int ex;
        if (ue8m0 && !(isfinite(sbuf[i]) && sbuf[i] > 0 && frexpf(sbuf[i], &ex) == 0.5f)) stt->pow2_bad++;
        stt->scales++;
    }
}

/* Rows [r0, r0+nr) of a 2-D (or 1-D: one row) source tensor k, read in place
 * from its mapped shard, as bf16 (y16) or floats (y32 when y16 is NULL; also
 * scratch). FP8: times the scales of unit_scales for the unit at row u0. */
static void convert(const source *s, int k, const float *sbuf, int64_t sc_cols, int64_t u0, int64_t r0, int64_t nr,
                    uint16_t *y16, float *y32, stats *stt) {
    const st_tensor *t = src_t(s, k);
    int64_t cols = t->ndim >= 2 ? t->shape[t->ndim - 1] : t->ndim == 1 ? t->shape[0] : 1;
    size_t es = (size_t)st_dtype_bits(t->dtype) / 8, n = (size_t)(nr * cols);
    const unsigned char *x = st_data(&s->sh[s->ts[k]], s->ti[k]) + (size_t)(r0 * cols) * es;
    stt->bytes_in += (double)(n * es);
    switch (t->dtype) {
    case ST_F32:
        if (y16 && ((uintptr_t)x & 3) == 0) ops_f32_to_bf16_n((const float *)(const void *)x, y16, n);
        else {
            memcpy(y32, x, n * 4); /* a shard's data need not be 4-byte aligned */
            if (y16) ops_f32_to_bf16_n(y32, y16, n);
        }
        break;
    case ST_BF16:
        if (y16) hfconv_bf16_bf16(x, n, y16);
        else hfconv_bf16_f32(x, n, y32);
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) y32[i] = f16_to_f32((uint16_t)(x[2 * i] | x[2 * i + 1] << 8));
        if (y16) ops_f32_to_bf16_n(y32, y16, n);
        break;
    case ST_F8_E4M3: /* dequantised and rounded in one pass (hfconv.h) */
        for (int64_t r = 0; r < nr; r++)
            hfconv_fp8_row(x + r * cols, sbuf + ((r0 + r) / 128 - u0 / 128) * sc_cols, cols, y16 ? y16 + r * cols : NULL,
                           y16 ? NULL : y32 + r * cols);
        break;
    default: tool_die("%s: dtype %s is not a weight dtype dsv3 imports", t->name, st_dtype_name(t->dtype));
    }
}

/* madvise on the pages of bytes [off, off+len) of tensor k in its mapping:
 * WILLNEED (read ahead while converting), DONTNEED (out of this process's RSS;
 * the page cache keeps them). A hint: failure changes nothing. */
static void advise(const source *s, int k, uint64_t off, uint64_t len, int advice) {
    const unsigned char *p = st_data(&s->sh[s->ts[k]], s->ti[k]) + off;
    uintptr_t pg = 4096, a = (uintptr_t)p & ~(pg - 1), b = ((uintptr_t)p + len + pg - 1) & ~(pg - 1);
    if (len) (void)madvise((void *)a, b - a, advice);
}

/* --keep-fp8: rows [r0, r0+nr) of an F8_E4M3 tensor k as its bytes (raw) and
 * the scale rows they cover as f32 (sbuf [ceil(nr/128), ceil(cols/128)]). */
static void fp8_rows(const source *s, int k, int sk, int64_t r0, int64_t nr, unsigned char *raw, float *sbuf,
                     int ue8m0, stats *stt) {
    char err[1024];
    const st_tensor *t = src_t(s, k), *sc = src_t(s, sk);
    int64_t cols = t->shape[1], sc_cols = sc->shape[1], sr0 = r0 / 128, snr = (nr + 127) / 128;
    size_t ses = (size_t)st_dtype_bits(sc->dtype) / 8;
    if (st_read(&s->sh[s->ts[k]], s->ti[k], (uint64_t)(r0 * cols), (uint64_t)(nr * cols), raw, err, sizeof err))
        tool_die("%s", err);
    unsigned char *sraw = (unsigned char *)sbuf;
    if (st_read(&s->sh[s->ts[sk]], s->ti[sk], (uint64_t)(sr0 * sc_cols) * ses, (uint64_t)(snr * sc_cols) * ses, sraw,
                err, sizeof err))
        tool_die("%s", err);
    for (int64_t i = snr * sc_cols - 1; i >= 0; i--) sbuf[i] = scale_value(sraw + (size_t)i * ses, sc->dtype);
    for (int64_t i = 0; i < snr * sc_cols; i++) {
        int ex;
        if (ue8m0 && !(isfinite(sbuf[i]) && sbuf[i] > 0 && frexpf(sbuf[i], &ex) == 0.5f)) stt->pow2_bad++;
        stt->scales++;
    }
    stt->bytes_in += (double)(nr * cols) + (double)((size_t)(snr * sc_cols) * ses);
}

/* ---- progress ---- */

typedef struct {
    double t0, last, total_bytes;
    int64_t total_tensors;
} progress;

static void show(const progress *p, const stats *s, int final) {
    if (quiet) return;
    double t = tool_now(), dt = t - p->t0, gb = s->bytes_in / 1e9, rate = dt > 0 ? gb / dt : 0;
    double left = rate > 0 ? (p->total_bytes / 1e9 - gb) / rate : 0;
    if (g_rank) return;
    char who[48] = ""; /* under mpirun: rank 0's share (the others convert as much) */
    if (g_size > 1) snprintf(who, sizeof who, " (rank 0 of %d)", g_size);
    fprintf(stderr, "\rimport%s: tensors %lld/%lld | %.2f/%.2f GB | %.2f GB/s | ETA %02d:%02d:%02d%s", who,
            (long long)s->tensors, (long long)p->total_tensors, gb, p->total_bytes / 1e9, rate, (int)(left / 3600),
            (int)(left / 60) % 60, (int)left % 60, final ? "\n" : "");
    fflush(stderr);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    tool_init("dsv3-import", g_rank, g_size);
    const char *dir = NULL, *out = NULL, *dtype = "fp32";
    int print_deck = 0, keep_fp8 = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = argv[++i];
        else if (!strncmp(argv[i], "--dtype=", 8)) dtype = argv[i] + 8;
        else if (!strcmp(argv[i], "--print-deck")) print_deck = 1;
        else if (!strcmp(argv[i], "--keep-fp8")) keep_fp8 = 1;
        else if (!strcmp(argv[i], "-q")) quiet = 1;
        else if (argv[i][0] == '-') tool_die("unknown option %s (usage: dsv3-import [--dtype fp32|bf16] [--keep-fp8] [--print-deck] [-q] HF_DIR OUT.h5)", argv[i]);
        else if (!dir) dir = argv[i];
        else if (!out) out = argv[i];
        else tool_die("extra argument %s", argv[i]);
    }
    if (!dir || (!out && !print_deck)) tool_die("usage: dsv3-import [--dtype fp32|bf16] [--keep-fp8] [--print-deck] [-q] HF_DIR OUT.h5");
    if (strcmp(dtype, "fp32") && strcmp(dtype, "bf16")) tool_die("--dtype %s: expected fp32 or bf16", dtype);
    int bf16 = !strcmp(dtype, "bf16");

    /* 1. config.json -> deck */
    char path[8192], err[2048];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *cfg = read_text(path);
    if (!cfg) tool_die("%s: %s", path, strerror(errno));
    char *group = hf_config_model_group(cfg, path, -1, err, sizeof err);
    if (!group) tool_die("%s", err);
    json_t *cj = json_loads(cfg, 0, NULL);
    long long maxpos = json_integer_value(json_object_get(cj, "max_position_embeddings"));
    json_decref(cj);
    free(cfg);
    if (print_deck) {
        if (g_rank == 0) printf("# model of %s (dsv3-import --print-deck)\n%s", dir, group);
        if (!out) {
            MPI_Finalize();
            return 0;
        }
    }
    deck d;
    char *text = malloc(strlen(group) + 128); /* a deck for this model: sequences up to its positions */
    sprintf(text, "%strain = { seq_len = %lld; micro_batch = 1; global_batch = 1; };\n", group,
            maxpos > 0 && maxpos < 4096 ? maxpos : 4096);
    if (deck_load_string(&d, text, path, 0, NULL, 1, err, sizeof err)) tool_die("%s", err);
    free(text), free(group);
    const deck_model *m = &d.model;
    int ue8m0 = !strcmp(m->quant_scale_fmt, "ue8m0");

    /* 2. what the model needs, what the files hold */
    param_table pt;
    if (params_build(&pt, m, NULL, 1, err, sizeof err)) tool_die("%s", err);
    param_table pq; /* --keep-fp8: the tensors a base_dtype fp8 run stores narrow (P_STORED) */
    deck_lora lq;
    memset(&lq, 0, sizeof lq);
    lq.enabled = 1, lq.r = 1;
    snprintf(lq.base_dtype, sizeof lq.base_dtype, "fp8");
    if (params_build(&pq, m, &lq, 1, err, sizeof err)) tool_die("%s", err);
    source s;
    memset(&s, 0, sizeof s);
    open_shards(&s, dir);
    int L = m->num_hidden_layers, E = m->n_routed_experts;
    int *src_of = calloc((size_t)pt.n, sizeof *src_of), *scale_of = calloc((size_t)pt.n, sizeof *scale_of);
    int **exp_of = calloc((size_t)pt.n, sizeof *exp_of), **exp_scale = calloc((size_t)pt.n, sizeof *exp_scale);
    int problems = 0;
    char name[600];
    /* every problem is listed (up to 40); a single one is the one line of the error */
    char first[2400] = "";
#define PROBLEM(...)                                                                                           \
    do {                                                                                                       \
        if (!problems++) snprintf(first, sizeof first, __VA_ARGS__);                                          \
        else if (g_rank == 0) {                                                                                \
            if (problems == 2) fprintf(stderr, "dsv3-import: %s\n", first);                                   \
            if (problems <= 40) fprintf(stderr, "dsv3-import: " __VA_ARGS__), fputc('\n', stderr);            \
        }                                                                                                      \
    } while (0)
    for (int i = 0; i < pt.n; i++) {
        const param_spec *t = &pt.t[i];
        src_of[i] = scale_of[i] = -1;
        if (t->flags & P_EXPERT) { /* stacked from per-expert tensors */
            exp_of[i] = malloc(sizeof(int) * (size_t)E);
            exp_scale[i] = malloc(sizeof(int) * (size_t)E);
            const char *proj = strstr(t->name, ".experts.") + 9;
            char pre[200];
            snprintf(pre, sizeof pre, "%.*s", (int)(proj - t->name), t->name);
            for (int e = 0; e < E; e++) {
                snprintf(name, sizeof name, "%s%d.%s", pre, e, proj);
                int k = src_find(&s, name);
                exp_of[i][e] = k;
                exp_scale[i][e] = -1;
                if (k < 0) {
                    PROBLEM("missing tensor %s", name);
                    continue;
                }
                s.used[k] = 1;
                const st_tensor *st = src_t(&s, k);
                if (st->ndim != 2 || st->shape[0] != t->shape[1] || st->shape[1] != t->shape[2])
                    PROBLEM("%s has shape [%lld,%lld], the config gives [%lld,%lld]", name, (long long)st->shape[0],
                            (long long)(st->ndim > 1 ? st->shape[1] : 0), (long long)t->shape[1], (long long)t->shape[2]);
                if (st->dtype == ST_F8_E4M3) {
                    char sn[620];
                    snprintf(sn, sizeof sn, "%s_scale_inv", name);
                    int q = src_find(&s, sn);
                    if (q < 0) PROBLEM("%s is F8_E4M3 but has no %s", name, sn);
                    else s.used[q] = 1, exp_scale[i][e] = q;
                }
            }
            continue;
        }
        int k = src_find(&s, t->name);
        if (k < 0) {
            PROBLEM("missing tensor %s (shape [%lld%s%lld])", t->name, (long long)t->shape[0], t->ndim > 1 ? "," : "",
                    t->ndim > 1 ? (long long)t->shape[1] : 0LL);
            continue;
        }
        s.used[k] = 1;
        src_of[i] = k;
        const st_tensor *st = src_t(&s, k);
        int same = st->ndim == t->ndim;
        for (int j = 0; same && j < t->ndim; j++) same = st->shape[j] == t->shape[j];
        if (!same)
            PROBLEM("%s has shape [%lld%s%lld], the config gives [%lld%s%lld]", t->name, (long long)st->shape[0],
                    st->ndim > 1 ? "," : "", st->ndim > 1 ? (long long)st->shape[1] : 0LL, (long long)t->shape[0],
                    t->ndim > 1 ? "," : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL);
        if (st->dtype == ST_F8_E4M3) {
            snprintf(name, sizeof name, "%s_scale_inv", t->name);
            int q = src_find(&s, name);
            if (q < 0) PROBLEM("%s is F8_E4M3 but has no %s", t->name, name);
            else s.used[q] = 1, scale_of[i] = q;
        }
    }
    /* scales: shape [ceil(out/128), ceil(in/128)], a float dtype */
    for (int i = 0; i < pt.n; i++)
        for (int e = 0; e < ((pt.t[i].flags & P_EXPERT) ? E : 1); e++) {
            int w = (pt.t[i].flags & P_EXPERT) ? exp_of[i][e] : src_of[i];
            int q = (pt.t[i].flags & P_EXPERT) ? exp_scale[i][e] : scale_of[i];
            if (w < 0 || q < 0) continue;
            const st_tensor *wt = src_t(&s, w), *sc = src_t(&s, q);
            int64_t want0 = (wt->shape[0] + 127) / 128, want1 = wt->ndim > 1 ? (wt->shape[1] + 127) / 128 : 1;
            if (sc->ndim != 2 || sc->shape[0] != want0 || sc->shape[1] != want1)
                PROBLEM("%s: shape must be [%lld,%lld] (128x128 blocks of %s)", sc->name, (long long)want0,
                        (long long)want1, wt->name);
            if (sc->dtype != ST_F32 && sc->dtype != ST_BF16 && sc->dtype != ST_F8_E8M0)
                PROBLEM("%s: scale dtype %s (F32, BF16 or F8_E8M0 expected)", sc->name, st_dtype_name(sc->dtype));
        }
    /* MTP copies of the embedding and head: stored once when identical */
    int mtp_copies[2] = {-1, -1}, mtp_main[2] = {-1, -1};
    for (int k = 0; k < m->num_nextn_predict_layers; k++) {
        static const char *what[2] = {"embed_tokens.weight", "shared_head.head.weight"};
        static const char *main_of[2] = {"model.embed_tokens.weight", "lm_head.weight"};
        for (int j = 0; j < 2; j++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", L + k, what[j]);
            int q = src_find(&s, name);
            if (q < 0) continue; /* checkpoints that drop them are fine: dsv3 shares the main ones */
            s.used[q] = 1;
            if (k == 0) mtp_copies[j] = q, mtp_main[j] = src_find(&s, main_of[j]);
        }
    }
    for (int k = 0; k < s.n; k++)
        if (!s.used[k]) PROBLEM("%s (%s) is not a tensor of the config's model", src_t(&s, k)->name, s.shard_name[s.ts[k]]);
    if (problems == 1) tool_die("%s: nothing written (a partial import is refused)", first);
    if (problems) tool_die("%d problems above: nothing written (a partial import is refused)", problems);
    for (int j = 0; j < 2; j++) {
        int a = mtp_copies[j], b = mtp_main[j];
        if (a < 0) continue;
        const st_tensor *ta = src_t(&s, a), *tb = src_t(&s, b);
        int same = ta->dtype == tb->dtype && st_bytes(ta) == st_bytes(tb);
        uint64_t nb = st_bytes(ta);
        for (uint64_t o = 0; same && o < nb; o += BUF_BYTES) { /* in place; the pages read leave the RSS */
            uint64_t n = nb - o < BUF_BYTES ? nb - o : BUF_BYTES;
            same = memcmp(st_data(&s.sh[s.ts[a]], s.ti[a]) + o, st_data(&s.sh[s.ts[b]], s.ti[b]) + o, n) == 0;
            advise(&s, a, o, n, MADV_DONTNEED), advise(&s, b, o, n, MADV_DONTNEED);
        }
        if (!same)
            tool_die("%s differs from %s: dsv3's MTP module shares the main embedding and head (spec §6), so this "
                "checkpoint cannot be trained as is; nothing written", ta->name, tb->name);
        if (!quiet && g_rank == 0) fprintf(stderr, "import: %s is byte-identical to %s: stored once\n", ta->name, tb->name);
    }

    /* 3. write. Under mpirun the ranks take turns along each tensor's units (a
     * routed expert, or a block of rows: multiples of 128, the FP8 block):
     * in every round each rank converts its own unit, then all write
     * collectively, each its own rows. The values do not depend on who
     * converts them: the file holds the same datasets at any rank count. */
    progress pr = {tool_now(), 0, 0, 0};
    ckpt_out *o;
    if (ckpt_out_open(&o, out, &d, bf16, keep_fp8, MPI_COMM_WORLD, err, sizeof err)) tool_die("%s", err);
    int fail = 0;
    /* --keep-fp8: a tensor stays e4m3 when a fp8-base run stores it narrow and every source of it is F8_E4M3 */
    int *raw8 = calloc((size_t)pt.n, sizeof *raw8);
    int64_t n_raw8 = 0;
    for (int i = 0; keep_fp8 && i < pt.n; i++) {
        int j = params_find(&pq, pt.t[i].name), all = j >= 0 && (pq.t[j].flags & P_STORED);
        for (int e = 0; all && e < ((pt.t[i].flags & P_EXPERT) ? E : 1); e++) {
            int k = (pt.t[i].flags & P_EXPERT) ? exp_of[i][e] : src_of[i];
            all = src_t(&s, k)->dtype == ST_F8_E4M3;
        }
        raw8[i] = all;
        n_raw8 += all;
    }
    for (int i = 0; i < pt.n && !fail; i++)
        fail = raw8[i] ? ckpt_out_declare_fp8(o, pt.t[i].name, pt.t[i].ndim, pt.t[i].shape, err, sizeof err)
                       : ckpt_out_declare(o, pt.t[i].name, pt.t[i].ndim, pt.t[i].shape, (pt.t[i].flags & P_NOGRAD) != 0,
                                          err, sizeof err);
    snprintf(path, sizeof path, "dsv3-import %s (--dtype %s%s)", dir, dtype, keep_fp8 ? " --keep-fp8" : "");
    if (!fail) fail = ckpt_out_attr(o, "imported_from", path);
    float *fb = malloc(BUF_BYTES), *sbuf = malloc(BUF_BYTES / 16 + 4096);
    unsigned char *raw = malloc(BUF_BYTES);
    uint16_t *hb = malloc(BUF_BYTES / 2);
    if (!fb || !sbuf || !raw || !hb) tool_die_local("out of memory for the %zu MB conversion buffers", 3 * BUF_BYTES >> 20);
    stats stt;
    memset(&stt, 0, sizeof stt);
    for (int pass = 0; pass < 2 && !fail; pass++) /* pass 0 counts this rank's share (progress), pass 1 converts */
        for (int i = 0; i < pt.n && !fail; i++) {
            const param_spec *t = &pt.t[i];
            int ne = (t->flags & P_EXPERT) ? E : 1;
            const st_tensor *s0 = src_t(&s, (t->flags & P_EXPERT) ? exp_of[i][0] : src_of[i]);
            int64_t rows = s0->ndim >= 2 ? s0->shape[0] : 1, cols = s0->ndim >= 2 ? s0->shape[1] : s0->shape[0];
            int64_t per = (int64_t)(BUF_BYTES / 4 / (size_t)(cols ? cols : 1)) / 128 * 128;
            if (per < 128) per = 128; /* one block row of a very wide tensor */
            if ((size_t)per * (size_t)cols * 4 > BUF_BYTES) tool_die("%s: a 128-row block does not fit the buffer", s0->name);
            if (ne == 1 && g_size > 1 && s0->ndim >= 2) { /* one tensor: its rows over the ranks */
                int64_t share = (rows + g_size - 1) / g_size;
                share = (share + 127) / 128 * 128;
                if (share < per) per = share;
            }
            int64_t nblk = s0->ndim >= 2 ? (rows + per - 1) / per : 1, nunits = (int64_t)ne * nblk;
            for (int64_t u0 = 0; u0 < nunits && !fail; u0 += g_size) {
                int64_t u = u0 + g_rank, e = 0, r0 = 0, nr = 0;
                int k = -1, q = -1;
                if (u < nunits) {
                    e = u / nblk, r0 = (u % nblk) * per;
                    nr = s0->ndim >= 2 ? (rows - r0 < per ? rows - r0 : per) : 1;
                    k = (t->flags & P_EXPERT) ? exp_of[i][e] : src_of[i];
                    q = (t->flags & P_EXPERT) ? exp_scale[i][e] : scale_of[i];
                }
                if (pass == 0) {
                    if (k >= 0) {
                        const st_tensor *st = src_t(&s, k);
                        pr.total_bytes += (double)((size_t)(nr * cols) * (size_t)st_dtype_bits(st->dtype) / 8);
                        if (r0 == 0) pr.total_tensors += 1 + (q >= 0);
                    }
                    continue;
                }
                if (raw8[i]) { /* --keep-fp8: the bytes and scales as they are (per is a multiple of 128 rows) */
                    if (k >= 0) {
                        const st_tensor *st = src_t(&s, k);
                        fp8_rows(&s, k, q, r0, nr, raw, sbuf, ue8m0, &stt);
                        stt.bytes_out += (double)(nr * cols) + 4.0 * (double)((nr + 127) / 128 * ((cols + 127) / 128));
                        if (r0 == 0) {
                            stt.tensors += 1 + (q >= 0);
                            stt.by_dtype[st->dtype]++;
                            if (q >= 0) stt.by_dtype[src_t(&s, q)->dtype]++;
                        }
                    } else
                        nr = 0; /* no unit left for this rank in the last round */
                    fail = ckpt_out_write_fp8(o, t->name, (t->flags & P_EXPERT) ? e : -1, r0, nr, raw, sbuf, err,
                                              sizeof err);
                    if (tool_now() - pr.last > 1.0) show(&pr, &stt, 0), pr.last = tool_now();
                    continue;
                }
                int keep = (t->flags & P_NOGRAD) != 0, to16 = bf16 && !keep; /* the router bias stays F32 */
                /* in pieces of about PIECE_BYTES, each written while in cache (ckpt_out_put); a file
                 * with FP8 datasets (--keep-fp8) is written collectively, a whole unit a call */
                const void *data = to16 ? (const void *)hb : (const void *)fb;
                if (k >= 0) {
                    const st_tensor *st = src_t(&s, k);
                    int64_t sub = keep_fp8 ? nr : (int64_t)(PIECE_BYTES / ((size_t)cols * (to16 ? 2 : 4)));
                    if (sub < 1) sub = 1;
                    size_t es = (size_t)st_dtype_bits(st->dtype) / 8, ub = (size_t)(nr * cols) * es;
                    advise(&s, k, (uint64_t)(r0 * cols) * es, ub, MADV_WILLNEED);
                    int64_t sc_cols = 0;
                    if (q >= 0) unit_scales(&s, q, r0, nr, sbuf, ue8m0, &stt), sc_cols = src_t(&s, q)->shape[1];
                    for (int64_t a = 0; a < nr; a += sub) {
                        int64_t m = nr - a < sub ? nr - a : sub;
                        convert(&s, k, sbuf, sc_cols, r0, r0 + a, m, to16 ? hb : NULL, fb, &stt);
                        if (keep_fp8) break;
                        if (t->flags & P_EXPERT) ckpt_out_put(o, t->name, e, r0 + a, m, data); /* expert e, rows r0+a.. of its [out, in] */
                        else if (t->ndim < 2) ckpt_out_put(o, t->name, -1, 0, t->shape[0], data);
                        else ckpt_out_put(o, t->name, -1, r0 + a, m, data);
                    }
                    advise(&s, k, (uint64_t)(r0 * cols) * es, ub, MADV_DONTNEED); /* read: out of the RSS */
                    stt.bytes_out += (double)(nr * cols) * (to16 ? 2 : 4);
                    if (r0 == 0) {
                        stt.tensors++;
                        stt.by_dtype[st->dtype]++;
                        if (q >= 0) stt.tensors++, stt.by_dtype[src_t(&s, q)->dtype]++;
                    }
                } else
                    nr = 0; /* no unit left for this rank in the last round: it writes nothing */
                if (keep_fp8) { /* every rank, its unit's rows or none */
                    if (t->flags & P_EXPERT) fail = ckpt_out_write_slab(o, t->name, e, r0, nr, data, err, sizeof err);
                    else if (t->ndim < 2) fail = ckpt_out_write(o, t->name, 0, nr ? t->shape[0] : 0, data, err, sizeof err);
                    else fail = ckpt_out_write(o, t->name, r0, nr, data, err, sizeof err);
                }
                if (tool_now() - pr.last > 1.0) show(&pr, &stt, 0), pr.last = tool_now();
            }
            /* the tensor's status on every rank, a failed ckpt_out_put included (a call with no rows) */
            if (pass == 1 && !raw8[i] && !keep_fp8 && !fail) fail = ckpt_out_write(o, t->name, 0, 0, NULL, err, sizeof err);
        }
    if (g_rank == 0)
        for (int j = 0; j < 2; j++)
            if (mtp_copies[j] >= 0) stt.tensors++, stt.by_dtype[src_t(&s, mtp_copies[j])->dtype]++;
    if (fail) {
        ckpt_out_close(o, 1, NULL, 0);
        tool_die("%s: nothing written", err);
    }
    if (ckpt_out_close(o, 0, err, sizeof err)) tool_die("%s", err);
    show(&pr, &stt, 1);
    double secs = tool_now() - pr.t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* the whole job's figures: sums over the ranks, the largest peak RSS */
    MPI_Allreduce(MPI_IN_PLACE, stt.by_dtype, ST_NDTYPES, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    int64_t cnt[3] = {stt.tensors, stt.pow2_bad, stt.scales};
    MPI_Allreduce(MPI_IN_PLACE, cnt, 3, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    stt.tensors = cnt[0], stt.pow2_bad = cnt[1], stt.scales = cnt[2];
    double by[2] = {stt.bytes_in, stt.bytes_out};
    MPI_Allreduce(MPI_IN_PLACE, by, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    stt.bytes_in = by[0], stt.bytes_out = by[1];
    long rss = ru.ru_maxrss;
    MPI_Allreduce(MPI_IN_PLACE, &rss, 1, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &secs, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    ru.ru_maxrss = rss;
    if (g_rank) goto done;
    printf("dsv3-import: %s -> %s: %lld tensors (", dir, out, (long long)stt.tensors);
    int lead = 1;
    for (int t = 0; t < ST_NDTYPES; t++)
        if (stt.by_dtype[t]) printf("%s%lld %s", lead ? "" : ", ", (long long)stt.by_dtype[t], st_dtype_name(t)), lead = 0;
    printf("), %.3f GB read, %.3f GB written as %s, %.1f s (%.2f GB/s), peak RSS %.1f MB%s\n", stt.bytes_in / 1e9,
           stt.bytes_out / 1e9, dtype, secs, secs > 0 ? stt.bytes_in / 1e9 / secs : 0.0, ru.ru_maxrss / 1024.0,
           g_size > 1 ? " (the largest rank's)" : "");
    if (keep_fp8)
        printf("dsv3-import: --keep-fp8: %lld tensors kept as e4m3 bytes + f32 weight_scale_inv (train.base_dtype = "
               "\"fp8\" with LoRA trains on them as they are)\n", (long long)n_raw8);
    if (ue8m0)
        printf("dsv3-import: scale_fmt ue8m0: %lld of %lld scales are not powers of two\n", (long long)stt.pow2_bad,
               (long long)stt.scales);
    if (m->num_nextn_predict_layers > 0)
        printf("dsv3-import: MTP layer %d imported (enorm, hnorm, eh_proj, shared_head.norm, its decoder block)%s\n", L,
               mtp_copies[0] >= 0 ? "; its embed_tokens and shared_head.head equal the main ones and are stored once" : "");
done:
    for (int i = 0; i < s.nshard; i++) st_close(&s.sh[i]), free(s.shard_name[i]);
    free(s.sh), free(s.shard_name), free(s.ts), free(s.ti), free(s.used);
    for (int i = 0; i < pt.n; i++) free(exp_of[i]), free(exp_scale[i]);
    free(exp_of), free(exp_scale), free(src_of), free(scale_of), free(fb), free(sbuf), free(raw), free(hb);
    params_free(&pt);
    params_free(&pq);
    free(raw8);
    deck_free(&d);
    MPI_Finalize();
    return 0;
}

/* dsv3-export — a dsv3 checkpoint as a Hugging Face model directory, or its
 * LoRA adapters as a PEFT adapter directory.
 *
 *   dsv3-export [--dtype bf16|fp32] [--max-shard-size 5GB] [-q] CKPT.h5 OUT_DIR
 *   dsv3-export --adapters [--dtype fp32|bf16] CKPT.h5 OUT_DIR
 *
 * Model: config.json (no quantization_config), model-0000k-of-0000n.safetensors
 * shards with __metadata__ {"format":"pt"}, model.safetensors.index.json with
 * metadata.total_size. BF16 by default; tensors the release keeps in F32 (the
 * router's e_score_correction_bias) stay F32. Stacked experts are written per
 * expert under their HF names. The MTP layer is kept under its HF names,
 * including copies of the embedding and head as embed_tokens and
 * shared_head.head (vLLM and SGLang use it for speculative decoding;
 * transformers does not instantiate it and says "weights not used").
 *
 * Adapters: adapter_config.json and adapter_model.safetensors with keys
 * base_model.model.<module>.lora_{A,B}.weight (F32 by default, as PEFT saves),
 * layers 0..L-1 only. Every tensor's byte size is asserted on write: an empty
 * adapter file (the ZeRO-3 failure of other stacks) cannot be produced.
 *
 * Streaming: a tensor is converted in row blocks through a fixed buffer.
 * Files are written as *.tmp and renamed when complete.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../src/ckpt.h"
#include "../src/deck.h"
#include "../src/hfconfig.h"
#include "../src/model/lora.h"
#include "../src/ops.h"
#include "../src/peft.h"
#include "../src/safetensors.h"
#include "../src/tool.h"
#include "../src/fsutil.h"

#define BUF_BYTES ((size_t)256 << 20)

static int quiet, g_rank, g_size = 1;




/* "5GB", "500MB", "200KB", bytes: decimal units, as transformers' max_shard_size. */
static uint64_t parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end);
    double mul = !strcasecmp(end, "GB") ? 1e9 : !strcasecmp(end, "MB") ? 1e6 : !strcasecmp(end, "KB") ? 1e3
                 : !*end || !strcasecmp(end, "B") ? 1 : -1;
    if (mul < 0 || v <= 0) tool_die("--max-shard-size %s: expected e.g. 5GB, 500MB, 200KB or bytes", s);
    return (uint64_t)(v * mul);
}

/* One output tensor: slice `e` (-1: whole) of checkpoint tensor `src`. */
typedef struct {
    char name[520];
    int src, e, ndim, f32;
    int la, lb;       /* --merge-lora: its lora_A [r,in] and lora_B [out,r] tensors (-1: none) */
    int64_t shape[3];
    uint64_t bytes;
    int shard;
} otensor;

/* Streams ckpt tensor src (slice e) into the writer under `name` as bf16 or f32. */
static float g_merge_scale; /* lora_scaling: lora_alpha / r (rsLoRA: / sqrt(r)) */

/* W' = W + scale * B*A for rows [r0, r0+nr) of an [out,in] weight, in fp32 (then rounded by the caller). */
static void merge_rows(ckpt_in *in, const otensor *t, int64_t r0, int64_t nr, int64_t cols, float *w) {
    char err[1024];
    const ckpt_tensor_info *a = ckpt_in_tensor(in, t->la);
    int64_t r = a->shape[a->ndim - 2]; /* [r,in], or stacked [E,r,in]: expert t->e's */
    float *A = malloc(sizeof *A * (size_t)(r * cols)), *Bm = malloc(sizeof *Bm * (size_t)(nr * r));
    if (!A || !Bm) tool_die_local("out of memory merging %s", t->name);
    int rc = t->e >= 0 ? ckpt_in_read_slab(in, t->la, t->e, 0, r, A, 0, err, sizeof err) ||
                             ckpt_in_read_slab(in, t->lb, t->e, r0, nr, Bm, 0, err, sizeof err)
                       : ckpt_in_read(in, t->la, 0, r, A, 0, err, sizeof err) ||
                             ckpt_in_read(in, t->lb, r0, nr, Bm, 0, err, sizeof err);
    if (rc) tool_die_local("%s", err);
    for (int64_t i = 0; i < nr; i++)
        for (int64_t k = 0; k < r; k++) {
            float bk = g_merge_scale * Bm[i * r + k];
            const float *ak = A + k * cols;
            float *wi = w + i * cols;
            for (int64_t c = 0; c < cols; c++) wi[c] += bk * ak[c];
        }
    free(A), free(Bm);
}

/* ckpt_in_stream's sink: the next bytes of one output tensor. */
typedef struct {
    st_writer *w;
    const char *name;
    uint64_t off;
    double *done;
    char err[1024];
} sink_ctx;
static int sink_put(void *ctx, const void *data, size_t n) {
    sink_ctx *c = ctx;
    if (st_writer_put(c->w, c->name, c->off, data, n, c->err, sizeof c->err)) return -1;
    c->off += n;
    *c->done += (double)n;
    return 0;
}

static void put_tensor(ckpt_in *in, st_writer *w, const otensor *t, float *fb, uint16_t *hb, double *done) {
    char err[1024];
    const ckpt_tensor_info *ci = ckpt_in_tensor(in, t->src);
    int64_t rows = t->ndim >= 2 ? t->shape[0] : 1, cols = t->ndim >= 2 ? t->shape[t->ndim - 1] : t->shape[0];
    int64_t per = (int64_t)(BUF_BYTES / 4 / (size_t)(cols ? cols : 1));
    if (per < 1) per = 1;
    int raw_bf16 = !t->f32 && ci->is_bf16 && t->la < 0; /* bf16 file to bf16 tensor: the bits as stored */
    if (raw_bf16 || (t->f32 && !ci->is_bf16 && t->la < 0)) { /* the stored bytes as they are: streamed, L2-sized */
        sink_ctx c = {w, t->name, 0, done, ""};
        int64_t n = ci->ndim == 1 ? ci->shape[0] : rows;
        int rc = ckpt_in_stream(in, t->src, ci->ndim == 3 ? t->e : -1, 0, n, sink_put, &c, err, sizeof err);
        if (rc < 0) tool_die_local("%s%s%s", err, c.err[0] ? ": " : "", c.err);
        if (rc == 0) return;
    }
    uint64_t off = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += per) {
        int64_t nr = rows - r0 < per ? rows - r0 : per;
        size_t n = (size_t)(nr * cols);
        int rc;
        void *dst = raw_bf16 ? (void *)hb : (void *)fb;
        if (ci->ndim == 3) { /* one expert's rows: read the slice then pick the rows */
            rc = ckpt_in_read_slab(in, t->src, t->e, r0, nr, dst, raw_bf16, err, sizeof err);
        } else if (ci->ndim == 1) {
            rc = ckpt_in_read(in, t->src, 0, ci->shape[0], dst, raw_bf16, err, sizeof err);
        } else {
            rc = ckpt_in_read(in, t->src, r0, nr, dst, raw_bf16, err, sizeof err);
        }
        if (rc) tool_die_local("%s", err);
        if (t->la >= 0) merge_rows(in, t, r0, nr, cols, fb);
        const void *data = dst;
        size_t es = t->f32 ? 4 : 2;
        if (!t->f32 && !raw_bf16) {
            ops_f32_to_bf16_n(fb, hb, n);
            data = hb;
        }
        if (st_writer_put(w, t->name, off, data, n * es, err, sizeof err)) tool_die_local("%s", err);
        off += n * es;
        *done += (double)(n * es);
    }
}

static void export_model(ckpt_in *in, const deck *d, const char *dir, int f32_all, uint64_t max_shard, int merge) {
    const deck_model *m = &d->model;
    int L = m->num_hidden_layers, D = m->num_nextn_predict_layers, nt = ckpt_in_count(in);
    int cap = nt * (m->n_routed_experts + 1) + 4 * (D + 1), n = 0;
    otensor *o = calloc((size_t)cap, sizeof *o);
    int embed = -1, head = -1, merged = 0;
    for (int i = 0; i < cap; i++) o[i].la = o[i].lb = -1;
    for (int i = 0; i < nt; i++) {
        const ckpt_tensor_info *ci = ckpt_in_tensor(in, i);
        if (ci->is_lora) continue;
        if (!strcmp(ci->name, "model.embed_tokens.weight")) embed = i;
        if (!strcmp(ci->name, "lm_head.weight")) head = i;
        int f32 = f32_all || strstr(ci->name, "e_score_correction_bias") != NULL;
        int la = -1, lb = -1; /* --merge-lora: its adapters, if any (stacked per expert for a 3-D weight) */
        size_t len = strlen(ci->name);
        if (merge && ci->ndim >= 2 && len > 7 && !strcmp(ci->name + len - 7, ".weight")) {
            char an[420], bn[420];
            snprintf(an, sizeof an, "%.*s.lora_A.weight", (int)(len - 7), ci->name);
            snprintf(bn, sizeof bn, "%.*s.lora_B.weight", (int)(len - 7), ci->name);
            for (int q = 0; q < nt; q++) {
                const ckpt_tensor_info *x = ckpt_in_tensor(in, q);
                if (x->is_lora && !strcmp(x->name, an)) la = q;
                if (x->is_lora && !strcmp(x->name, bn)) lb = q;
            }
            if ((la < 0) != (lb < 0)) tool_die("%s: only one of lora_A / lora_B in the checkpoint", ci->name);
            if (la >= 0 && ckpt_in_tensor(in, la)->ndim != ci->ndim)
                tool_die("%s: its adapters are %d-D, the weight %d-D", ci->name, ckpt_in_tensor(in, la)->ndim, ci->ndim);
            merged += la >= 0;
        }
        if (ci->ndim == 3) { /* model.layers.L.mlp.experts.<proj>.weight [E,out,in] -> per expert */
            const char *proj = strstr(ci->name, ".experts.");
            if (!proj) tool_die("%s: a 3-D tensor that is not a stacked expert projection", ci->name);
            for (int e = 0; e < ci->shape[0]; e++) {
                otensor *t = &o[n++];
                snprintf(t->name, sizeof t->name, "%.*s.experts.%d.%s", (int)(proj - ci->name), ci->name, e, proj + 9);
                t->src = i, t->e = e, t->ndim = 2, t->f32 = f32, t->la = la, t->lb = lb;
                t->shape[0] = ci->shape[1], t->shape[1] = ci->shape[2];
            }
            continue;
        }
        otensor *t = &o[n++];
        snprintf(t->name, sizeof t->name, "%s", ci->name);
        t->src = i, t->e = -1, t->ndim = ci->ndim, t->f32 = f32, t->la = la, t->lb = lb;
        memcpy(t->shape, ci->shape, sizeof t->shape);
    }
    if (merge && !merged) tool_die("--merge-lora: the checkpoint holds no LoRA adapters of its base weights");
    if (embed < 0 || head < 0) tool_die("checkpoint has no model.embed_tokens.weight or lm_head.weight");
    for (int k = 0; k < D; k++) { /* the MTP layer's own embedding and head, as the release has them */
        int src[2] = {embed, head};
        static const char *what[2] = {"embed_tokens.weight", "shared_head.head.weight"};
        for (int j = 0; j < 2; j++) {
            otensor *t = &o[n++];
            const ckpt_tensor_info *ci = ckpt_in_tensor(in, src[j]);
            snprintf(t->name, sizeof t->name, "model.layers.%d.%s", L + k, what[j]);
            t->src = src[j], t->e = -1, t->ndim = 2, t->f32 = f32_all;
            memcpy(t->shape, ci->shape, sizeof t->shape);
        }
    }
    /* shards: tensors in order, a new shard when the next would pass max_shard */
    uint64_t total = 0, cur = 0;
    int nshard = 0;
    for (int i = 0; i < n; i++) {
        otensor *t = &o[i];
        uint64_t ne = 1;
        for (int k = 0; k < t->ndim; k++) ne *= (uint64_t)t->shape[k];
        t->bytes = ne * (t->f32 ? 4 : 2);
        if (nshard == 0 || (cur > 0 && cur + t->bytes > max_shard)) nshard++, cur = 0;
        t->shard = nshard - 1;
        cur += t->bytes;
        total += t->bytes;
    }
    if (fs_mkdir_p(dir)) tool_die("cannot create %s: %s", dir, strerror(errno));
    char path[8400], err[1024], fname[64];
    float *fb = malloc(BUF_BYTES);
    uint16_t *hb = malloc(BUF_BYTES / 2);
    if (!fb || !hb) tool_die_local("out of memory for the conversion buffers");
    double t0 = tool_now(), done = 0, last = 0;
    json_t *wm = json_object();
    /* Under mpirun each shard file is written by one rank (rank s mod N), the
     * index and config.json by rank 0 once every shard is in place. A shard's
     * bytes do not depend on who writes it. */
    uint64_t mine = 0;
    for (int i = 0; i < n; i++)
        if (o[i].shard % g_size == g_rank) mine += o[i].bytes;
    for (int s = 0; s < nshard; s++) {
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, nshard);
        for (int i = 0; i < n; i++)
            if (o[i].shard == s) json_object_set_new(wm, o[i].name, json_string(fname));
        if (s % g_size != g_rank) continue;
        snprintf(path, sizeof path, "%s/%s.tmp", dir, fname);
        st_writer *w;
        if (st_writer_open(&w, path, err, sizeof err)) tool_die_local("%s", err);
        st_writer_meta(w, "format", "pt");
        for (int i = 0; i < n; i++)
            if (o[i].shard == s && st_writer_add(w, o[i].name, o[i].f32 ? ST_F32 : ST_BF16, o[i].ndim, o[i].shape))
                tool_die_local("%s: cannot add %s", path, o[i].name);
        if (st_writer_begin(w, err, sizeof err)) tool_die_local("%s", err);
        for (int i = 0; i < n; i++)
            if (o[i].shard == s) {
                put_tensor(in, w, &o[i], fb, hb, &done);
                if (!quiet && g_rank == 0 && tool_now() - last > 1.0) {
                    double r = done / 1e9 / (tool_now() - t0);
                    char who[48] = ""; /* under mpirun: rank 0's share */
                    if (g_size > 1) snprintf(who, sizeof who, " (rank 0 of %d)", g_size);
                    fprintf(stderr, "\rexport%s: shard %d/%d | %.2f/%.2f GB | %.2f GB/s", who, s + 1, nshard,
                            done / 1e9, (double)mine / 1e9, r);
                    last = tool_now();
                }
            }
        if (st_writer_close(w, 1, err, sizeof err)) tool_die_local("%s", err);
        char final[8400];
        snprintf(final, sizeof final, "%s/%s", dir, fname);
        if (rename(path, final)) tool_die_local("rename %s: %s", path, strerror(errno));
    }
    MPI_Barrier(MPI_COMM_WORLD); /* every shard in place (a rank that failed has ended the job) */
    double secs = tool_now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long rss = ru.ru_maxrss;
    MPI_Allreduce(MPI_IN_PLACE, &rss, 1, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
    if (g_rank) {
        json_decref(wm);
        free(o), free(fb), free(hb);
        return;
    }
    json_t *idx = json_object(), *meta = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(idx, "metadata", meta);
    json_object_set_new(idx, "weight_map", wm);
    char *itext = json_dumps(idx, JSON_INDENT(2) | JSON_SORT_KEYS);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (!itext || fs_write_text(path, itext)) tool_die("cannot write %s", path);
    free(itext);
    json_decref(idx);
    char *cfg = hf_config_json(m, 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!cfg || fs_write_text(path, cfg)) tool_die("cannot write %s", path);
    free(cfg);
    secs = tool_now() - t0;
    if (!quiet) fprintf(stderr, "\n");
    printf("dsv3-export: %s: %d tensors in %d shard%s, %.3f GB (%s%s), %.1f s (%.2f GB/s), peak RSS %.1f MB%s\n", dir,
           n, nshard, nshard == 1 ? "" : "s", (double)total / 1e9, f32_all ? "F32" : "BF16",
           f32_all ? "" : "; e_score_correction_bias F32", secs, secs > 0 ? (double)total / 1e9 / secs : 0.0,
           rss / 1024.0, g_size > 1 ? " (the largest rank's)" : "");
    if (merged)
        printf("dsv3-export: %d LoRA adapters merged: W + (%g/%s%d)*B*A in fp32, then %s\n", merged, d->lora.alpha,
               d->lora.use_rslora ? "sqrt " : "", d->lora.r, f32_all ? "stored F32" : "rounded to BF16");
    if (D > 0)
        printf("dsv3-export: MTP layer %d written under its HF names (vLLM/SGLang speculative decoding); transformers "
               "does not instantiate it and reports its weights as not used: expected, not a broken export\n", L);
    free(o), free(fb), free(hb);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    tool_init("dsv3-export", g_rank, g_size);
    const char *ck = NULL, *dir = NULL, *dtype = NULL;
    uint64_t max_shard = 5000000000ULL;
    int adapters = 0, merge = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dtype") && i + 1 < argc) dtype = argv[++i];
        else if (!strncmp(argv[i], "--dtype=", 8)) dtype = argv[i] + 8;
        else if (!strcmp(argv[i], "--max-shard-size") && i + 1 < argc) max_shard = parse_size(argv[++i]);
        else if (!strncmp(argv[i], "--max-shard-size=", 17)) max_shard = parse_size(argv[i] + 17);
        else if (!strcmp(argv[i], "--adapters")) adapters = 1;
        else if (!strcmp(argv[i], "--merge-lora")) merge = 1;
        else if (!strcmp(argv[i], "-q")) quiet = 1;
        else if (argv[i][0] == '-') tool_die("unknown option %s (usage: dsv3-export [--adapters | --merge-lora] [--dtype bf16|fp32] [--max-shard-size 5GB] [-q] CKPT.h5 OUT_DIR)", argv[i]);
        else if (!ck) ck = argv[i];
        else if (!dir) dir = argv[i];
        else tool_die("extra argument %s", argv[i]);
    }
    if (!ck || !dir) tool_die("usage: dsv3-export [--adapters | --merge-lora] [--dtype bf16|fp32] [--max-shard-size 5GB] [-q] CKPT.h5 OUT_DIR");
    if (!dtype) dtype = adapters ? "fp32" : "bf16";
    if (strcmp(dtype, "fp32") && strcmp(dtype, "bf16")) tool_die("--dtype %s: expected bf16 or fp32", dtype);
    char err[2048];
    ckpt_in *in;
    if (ckpt_in_open(&in, ck, err, sizeof err)) tool_die("%s", err);
    const char *text = ckpt_in_deck(in);
    if (!text) tool_die("%s: no deck attribute", ck);
    deck d;
    char *over[] = {"parallel.expert_parallel=1", "parallel.zero_stage=0"}; /* the deck of a run on any layout */
    if (deck_load_string(&d, text, ck, 2, over, 1, err, sizeof err)) tool_die("%s: its deck: %s", ck, err);
    if (adapters) { /* PEFT directory (src/peft.c) */
        double bytes = 0; /* one small file: rank 0 writes it, every rank ends with its status */
        int n = g_rank == 0 ? peft_write(ck, &d, dir, !strcmp(dtype, "bf16"), &bytes, err, sizeof err) : 0;
        MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
        MPI_Bcast(err, sizeof err, MPI_CHAR, 0, MPI_COMM_WORLD);
        if (n < 0) tool_die("%s", err);
        if (g_rank == 0) printf("dsv3-export: %s: %d adapter tensors (layers 0..%d), %.3f MB %s, every size checked\n", dir, n,
               d.model.num_hidden_layers - 1, bytes / 1e6, strcmp(dtype, "bf16") ? "F32" : "BF16");
    }
    else {
        if (merge && !d.lora.enabled) tool_die("--merge-lora: the checkpoint's deck has lora.enabled = false");
        g_merge_scale = merge ? lora_scaling(&d.lora) : 0.0f;
        export_model(in, &d, dir, !strcmp(dtype, "fp32"), max_shard, merge);
    }
    deck_free(&d);
    ckpt_in_close(in);
    MPI_Finalize();
    return 0;
}

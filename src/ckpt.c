/* ckpt.c — checkpoints in parallel HDF5: collective save in global shapes,
 * load into any layout, atomic rename, keep-last-N, resume resolution. */
#include "ckpt.h"

#include <hdf5.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "ckpt_frozen.h"
#include "error.h"
#include "fsutil.h"
#include "h5direct.h"
#include "ops.h"
#include "wring.h"

#ifndef DSV3_GIT_REV
#define DSV3_GIT_REV "unknown"
#endif

enum { BUF_PARAM = 0, BUF_M = 1, BUF_V = 2 };

static ckpt_stats g_stats;
const ckpt_stats *ckpt_last_stats(void) { return &g_stats; }
static int g_h5_broken;
int ckpt_io_broken(void) { return g_h5_broken; }

/* Bytes one rank moves per H5Dread/H5Dwrite call: below 2 GiB (HDF5 1.10 limit).
 * DSV3_CKPT_SLAB_BYTES lowers it (tests exercise the slab loop). */
static size_t env_size(const char *name, size_t dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    long long v = atoll(s);
    return v > 0 ? (size_t)v : dflt;
}
static size_t slab_bytes(void) { return env_size("DSV3_CKPT_SLAB_BYTES", (size_t)1 << 30); }
/* Tensors are device memory (ops.h): each HDF5 call moves its rows through a
 * host staging buffer (ops_to_host / ops_to_device; a memcpy on the CPU
 * backend), so a call moves at most STAGE_BYTES, or one row. */
#define STAGE_BYTES ((size_t)64 << 20)
static int64_t rows_per_call(int64_t R) {
    size_t b = slab_bytes() < STAGE_BYTES ? slab_bytes() : STAGE_BYTES;
    int64_t K = (int64_t)(b / (sizeof(float) * (size_t)R));
    return K < 1 ? 1 : K;
}
static size_t chunk_bytes(void) { return env_size("DSV3_CKPT_CHUNK_BYTES", (size_t)4 << 20); }
/* Chunks (every object of 64 KiB or more) start on a page boundary: the kernel
 * then copies whole pages into the page cache (about 10% off a save's time
 * here), for at most 4 KiB of padding per chunk. */
enum { ALIGN_OVER = 65536, ALIGN_TO = 4096 };

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

/* ---- errors ------------------------------------------------------------ */

/* Every rank returns the same status and the message of the lowest failing rank. */
static int agree(comm_t comm, int rc, char *err, int errlen) { return error_agree(comm, rc != 0, err, errlen) ? -1 : 0; }

/* HDF5 prints its error stack by default; we report one line instead. */
typedef struct {
    H5E_auto2_t fn;
    void *data;
} h5quiet;
static void quiet_on(h5quiet *q) {
    H5Eget_auto2(H5E_DEFAULT, &q->fn, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}
static void quiet_off(const h5quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->fn, q->data); }

typedef struct {
    char msg[200];
} h5why;
static herr_t why_cb(unsigned n, const H5E_error2_t *e, void *data) {
    if (n == 0) snprintf(((h5why *)data)->msg, sizeof ((h5why *)data)->msg, "%s", e->desc ? e->desc : "?");
    return 0;
}
/* The innermost HDF5 error description (e.g. "data error detected by Fletcher32 checksum"). */
static const char *h5_reason(h5why *w) {
    snprintf(w->msg, sizeof w->msg, "unknown HDF5 error");
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, why_cb, w);
    H5Eclear2(H5E_DEFAULT);
    return w->msg;
}

/* ---- names and layout ---------------------------------------------------- */

/* "model.layers.3.self_attn.q_a_proj.weight" -> "layers/3/self_attn/q_a_proj/weight",
 * "lm_head.weight" -> "lm_head/weight". */
static void rel_path(const char *name, char *out, size_t len) {
    if (strncmp(name, "model.", 6) == 0) name += 6;
    snprintf(out, len, "%s", name);
    for (char *c = out; *c; c++)
        if (*c == '.') *c = '/';
}

static void ds_path(const param_spec *t, int buf, char *out, size_t len) {
    char rel[160];
    rel_path(t->name, rel, sizeof rel);
    static const char *root[3] = {"/model", "/optim/exp_avg", "/optim/exp_avg_sq"};
    if (buf == BUF_PARAM && (t->flags & P_LORA))
        snprintf(out, len, "/lora/%s", rel);
    else
        snprintf(out, len, "%s/%s", root[buf], rel);
}

/* Inverse of rel_path under /model or /lora. */
static void hf_name(const char *rel, char *out, size_t len) {
    if (strncmp(rel, "lm_head", 7) == 0)
        snprintf(out, len, "%s", rel);
    else
        snprintf(out, len, "model.%s", rel);
    for (char *c = out; *c; c++)
        if (*c == '/') *c = '.';
}

static int trainable(const param_spec *t) { return !(t->flags & (P_FROZEN | P_NOGRAD)); }
/* Which tensors a file holds: all (FILE_ALL); the LoRA tensors and the router
 * biases, the model state a LoRA run changes (FILE_ADAPTERS: checkpoint.save =
 * "adapters"); or a base model without adapters loaded into a LoRA deck
 * (FILE_BASE: run.init_from of a pretrained or imported model; the adapters
 * keep their initial values). */
enum { FILE_ALL = 0, FILE_ADAPTERS = 1, FILE_BASE = 2 };
static int in_file(const param_spec *t, int what) {
    if (what == FILE_ADAPTERS) return (t->flags & (P_LORA | P_NOGRAD)) != 0;
    if (what == FILE_BASE) return !(t->flags & P_LORA);
    return 1;
}
static int64_t row_len(const param_spec *t) { return t->ndim >= 2 ? t->shape[t->ndim - 1] : 1; }

static int member_of(const plan *p, int kind) { return kind == SEG_DENSE ? p->world_rank : p->dp_index; }

/* First global row of this rank's local tensor (experts: my first expert). */
static int64_t row0(const plan *p, const param_spec *t) {
    return t->kind == SEG_EXPERT ? (int64_t)p->expert_first * t->shape[1] : 0;
}

/* The next piece of global rows [*r, r1) (row = last dim) that is ONE hyperslab
 * of at most K rows: for a stacked [E, out, in] tensor, a partial expert or a
 * run of whole experts. Memory and file selections then have the same shape,
 * which keeps HDF5 on its fast path (a 1-D memory space against a 2-D/3-D file
 * selection makes it map chunks element by element). Returns rows in the piece. */
static int64_t next_piece(const param_spec *t, int64_t *r, int64_t r1, int64_t K, hsize_t st[3], hsize_t ct[3]) {
    int64_t n = r1 - *r < K ? r1 - *r : K;
    if (n <= 0) return 0;
    if (t->ndim <= 2) {
        st[0] = (hsize_t)*r; st[1] = 0;
        ct[0] = (hsize_t)n; ct[1] = t->ndim == 2 ? (hsize_t)t->shape[1] : 0;
    } else {
        int64_t O = t->shape[1], e = *r / O, o = *r % O;
        if (o == 0 && n >= O) {
            n = n / O * O;
            st[0] = (hsize_t)e; st[1] = 0; ct[0] = (hsize_t)(n / O); ct[1] = (hsize_t)O;
        } else {
            if (n > O - o) n = O - o;
            st[0] = (hsize_t)e; st[1] = (hsize_t)o; ct[0] = 1; ct[1] = (hsize_t)n;
        }
        st[2] = 0;
        ct[2] = (hsize_t)t->shape[2];
    }
    *r += n;
    return n;
}

static int64_t count_pieces(const param_spec *t, int64_t r0, int64_t r1, int64_t K) {
    hsize_t st[3], ct[3];
    int64_t n = 0;
    while (next_piece(t, &r0, r1, K, st, ct)) n++;
    return n;
}

/* ---- attributes ---------------------------------------------------------- */

static int attr_i64(hid_t loc, const char *name, int64_t v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a < 0 || H5Awrite(a, H5T_NATIVE_INT64, &v) < 0) ? -1 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc;
}

static int attr_str(hid_t loc, const char *name, const char *s) {
    hid_t ty = H5Tcopy(H5T_C_S1);
    H5Tset_size(ty, strlen(s) + 1);
    H5Tset_strpad(ty, H5T_STR_NULLTERM);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, ty, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a < 0 || H5Awrite(a, ty, s) < 0) ? -1 : 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(ty);
    return rc;
}

static int read_attr_i64(hid_t loc, const char *name, int64_t *v) {
    if (H5Aexists(loc, name) <= 0) return -1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    int rc = (a < 0 || H5Aread(a, H5T_NATIVE_INT64, v) < 0) ? -1 : 0;
    if (a >= 0) H5Aclose(a);
    return rc;
}

#define MODEL_DIMS(X)                                                                                    \
    X(vocab_size) X(hidden_size) X(intermediate_size) X(moe_intermediate_size) X(num_hidden_layers)     \
    X(first_k_dense_replace) X(n_routed_experts) X(n_shared_experts) X(num_experts_per_tok) X(n_group)  \
    X(topk_group) X(q_lora_rank) X(kv_lora_rank) X(qk_nope_head_dim) X(qk_rope_head_dim) X(v_head_dim) \
    X(num_attention_heads) X(num_nextn_predict_layers)

/* ---- file system ---------------------------------------------------------- */

/* "step_00000042.h5" -> 42 (tmp: ".h5.tmp"), else -1. */
static int64_t step_of(const char *name, int tmp) {
    if (strncmp(name, "step_", 5)) return -1;
    const char *c = name + 5;
    int64_t s = 0;
    if (*c < '0' || *c > '9') return -1;
    while (*c >= '0' && *c <= '9') s = s * 10 + (*c++ - '0');
    return strcmp(c, tmp ? ".h5.tmp" : ".h5") ? -1 : s;
}

static int cmp_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Keep the file of step `cur` and the keep-1 newest older ones; files of later
 * steps (an abandoned branch before a resume) are never touched. Stale .tmp of
 * other steps (crashed saves) are removed. */
static void prune(const char *dir, int64_t cur, int keep) {
    DIR *dp = opendir(dir);
    if (!dp) return;
    int64_t *older = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    char f[PATH_MAX + 320];
    while ((e = readdir(dp))) {
        int64_t s = step_of(e->d_name, 1);
        if (s >= 0 && s != cur) {
            snprintf(f, sizeof f, "%s/%s", dir, e->d_name);
            unlink(f);
            continue;
        }
        s = step_of(e->d_name, 0);
        if (s < 0 || s >= cur) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *o = realloc(older, sizeof *older * (size_t)cap);
            if (!o) break;
            older = o;
        }
        older[n++] = s;
    }
    closedir(dp);
    if (keep > 0 && n > 0) {
        qsort(older, (size_t)n, sizeof *older, cmp_desc);
        for (int i = keep - 1; i < n; i++) {
            snprintf(f, sizeof f, "%s/step_%08lld.h5", dir, (long long)older[i]);
            unlink(f);
            static const char *peft[] = {"adapter_model.safetensors", "adapter_config.json"}; /* its PEFT copy */
            for (int k = 0; k < 2; k++) {
                snprintf(f, sizeof f, "%s/checkpoint-%lld/%s", dir, (long long)older[i], peft[k]);
                unlink(f);
            }
            snprintf(f, sizeof f, "%s/checkpoint-%lld", dir, (long long)older[i]);
            rmdir(f);
        }
    }
    free(older);
}

static int bad_layouts(int params_layout, int optim_layout, char *err, int errlen) {
    if ((params_layout == ZERO_FULL_LOCAL || params_layout == ZERO_SHARD_PACKED) && optim_layout >= ZERO_FULL_LOCAL &&
        optim_layout <= ZERO_SHARD_TRAINABLE)
        return 0;
    snprintf(err, errlen, "checkpoint: unknown buffer layout (params %d, moments %d)", params_layout, optim_layout);
    return -1;
}

/* ---- save watchdog --------------------------------------------------------- */

/* Parallel HDF5 cannot recover from an I/O error inside a collective call: a
 * full disk can leave one rank failed and another waiting in HDF5's own
 * barrier. The ranks agree after every dataset (a stuck call is the only
 * hang left); a save that makes no progress for checkpoint.stall_timeout
 * seconds ends the job with a message instead of hanging it. */
static char wd_msg[1536];
static char wd_tmp[PATH_MAX + 72];
static int wd_unlink;
static void wd_fire(int sig) {
    (void)sig;
    ssize_t n = write(2, wd_msg, strlen(wd_msg)); /* async-signal-safe from here on */
    (void)n;
    if (wd_unlink) unlink(wd_tmp);
    comm_abort(1);
}
static void wd_arm(int seconds) {
    struct itimerval it = {{0, 0}, {seconds, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
}
static void wd_start(const plan *p, const deck *d, const char *fname, const char *tmp) {
    int s = d->checkpoint.stall_timeout;
    if (s <= 0) return;
    /* rank 0 speaks first; the others only if rank 0 itself is not stuck */
    snprintf(wd_msg, sizeof wd_msg, "dsv3: error: checkpoint %s: no progress for %d s (checkpoint.stall_timeout); "
             "a rank is stuck in parallel HDF5/MPI-IO (disk full or I/O error?): aborting the job\n", fname,
             s + (p->world_rank ? 5 : 0));
    snprintf(wd_tmp, sizeof wd_tmp, "%s", tmp);
    wd_unlink = p->world_rank == 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = wd_fire;
    sigaction(SIGALRM, &sa, NULL);
    wd_arm(s + (p->world_rank ? 5 : 0));
}
static void wd_progress(const plan *p, const deck *d, const char *last_err) {
    int s = d->checkpoint.stall_timeout;
    if (s <= 0) return;
    if (last_err && last_err[0]) { /* say what this rank saw, should it hang next */
        size_t k = strlen(wd_msg);
        if (k > 0 && wd_msg[k - 1] == '\n' && !strstr(wd_msg, "; last I/O error"))
            snprintf(wd_msg + k - 1, sizeof wd_msg - k + 1, "; last I/O error on this rank: %.600s\n", last_err);
    }
    wd_arm(s + (p->world_rank ? 5 : 0));
}
static void wd_stop(void) {
    struct itimerval it = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
    signal(SIGALRM, SIG_DFL);
}

/* ---- save ------------------------------------------------------------------ */

double ckpt_file_bytes(const plan *p, const deck *d, int with_optim, int adapters_only) {
    const param_table *pt = &p->params;
    double data = 0.0, n = 0.0, big = 0.0;
    for (int i = 0; i < pt->n; i++) {
        const param_spec *t = &pt->t[i];
        if (!in_file(t, adapters_only ? FILE_ADAPTERS : FILE_ALL)) continue;
        int copies = with_optim && trainable(t) ? 3 : 1;
        data += 4.0 * copies * (double)t->numel;
        n += copies;
        if (4.0 * (double)t->numel >= ALIGN_OVER) big += copies; /* its chunks are aligned */
    }
    /* Fletcher32 (4 bytes a chunk), page alignment of the large chunks,
     * object headers and B-trees (~4 KiB a dataset), the deck attribute and
     * the superblock. */
    double chunks = data / (double)chunk_bytes() + n;
    return data + 4.0 * chunks + (double)ALIGN_TO * (data / (double)chunk_bytes() + big) + 4096.0 * n +
           (d->text ? (double)strlen(d->text) : 0.0) + 65536.0;
}

/* Rank 0, before the file is created: the checkpoint must fit on the disk. */
static int space_check(const char *dir, const char *fname, double need, char *err, int errlen) {
    const char *skip = getenv("DSV3_CKPT_NO_SPACE_CHECK"); /* fault tests: reach a full disk mid-write */
    if (skip && strcmp(skip, "1") == 0) return 0;
    struct statvfs sv;
    if (statvfs(dir, &sv)) return 0; /* unknown: the write itself will tell */
    double avail = (double)sv.f_bavail * (double)sv.f_frsize;
    if (avail >= need) return 0;
    snprintf(err, errlen, "checkpoint %s needs about %.1f MB but only %.1f MB are free in %s: not written "
             "(free space, or lower checkpoint.keep)", fname, need / 1e6, avail / 1e6, dir);
    return -1;
}

typedef struct {
    hid_t file, lcpl, dxpl;
    const zero_map *L;
    char *err;
    int errlen;
    const char *fname;
} wctx;

/* Chunks of about chunk_bytes(): runs of whole rows along axis 0 ([E, out, in]:
 * along axis 1 of one slice). Near-equal chunks, so the partial edge chunk
 * (stored at full size) wastes less than one row per chunk. */
static void chunk_shape(const param_spec *t, hsize_t dims[3], hsize_t chunk[3]) {
    size_t cb = chunk_bytes();
    int64_t R = row_len(t), rows = (int64_t)(cb / (sizeof(float) * (size_t)R));
    if (rows < 1) rows = 1;
    for (int k = 0; k < t->ndim; k++) dims[k] = chunk[k] = (hsize_t)t->shape[k];
    int ax = t->ndim == 3 ? 1 : 0;
    int64_t n = t->shape[ax], nchunks = (n + rows - 1) / rows;
    chunk[ax] = (hsize_t)((n + nchunks - 1) / nchunks);
    if (t->ndim == 3) chunk[0] = 1;
}

static hid_t create_ds(const wctx *w, const param_spec *t, const char *path, h5why *why) {
    hsize_t dims[3], chunk[3];
    chunk_shape(t, dims, chunk);
    hid_t sp = H5Screate_simple(t->ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, t->ndim, chunk);
    H5Pset_fletcher32(dcpl);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_INCR); /* parallel HDF5 1.10 makes it EARLY: see ckpt_save */
    hid_t ds = H5Dcreate2(w->file, path, H5T_IEEE_F32LE, sp, w->lcpl, dcpl, H5P_DEFAULT);
    if (ds < 0) h5_reason(why); /* before the next call clears the error stack */
    H5Pclose(dcpl);
    H5Sclose(sp);
    return ds;
}

/* Collective: every rank writes the rows of its shard, in the same number of
 * calls (slabs below the per-call limit), empty selections included. */
static int write_tensor(const wctx *w, int i, const float *buf, int lay, int which) {
    const zero_map *L = w->L;
    const plan *p = L->p;
    const param_spec *t = &L->pt->t[i];
    const plan_shard *sh = &p->shard[L->seg_of[i]];
    char path[256];
    h5why why;
    ds_path(t, which, path, sizeof path);
    hid_t ds = create_ds(w, t, path, &why);
    if (ds < 0) snprintf(w->err, w->errlen, "checkpoint %s: cannot create dataset %s: %s", w->fname, path, why.msg);
    if (comm_max_int(ds < 0, p->world)) { /* creation is collective: all stop together */
        if (ds >= 0) H5Dclose(ds);
        return -1;
    }
    int64_t R = row_len(t), K = rows_per_call(R), a, b;
    zero_tensor_part(L, i, member_of(p, t->kind), &a, &b);
    int rc = 0;
    if (a % R || b % R) {
        snprintf(w->err, w->errlen, "checkpoint: shard of %s is not row-aligned ([%lld, %lld), row %lld)", t->name,
                 (long long)a, (long long)b, (long long)R);
        rc = -1;
        b = a; /* still take part in the collective calls */
    }
    size_t cap = (size_t)((b - a) / R < K ? (b - a) / R : K) * (size_t)R;
    float *stage = cap ? malloc(cap * sizeof *stage) : NULL;
    if (cap && !stage) {
        snprintf(w->err, w->errlen, "checkpoint: out of memory staging %s (%zu floats)", t->name, cap);
        rc = -1;
        b = a;
    }
    int64_t ncalls = 0, g0 = row0(p, t), r = g0 + a / R, rend = g0 + b / R;
    for (int mbr = 0; mbr < sh->nmemb; mbr++) { /* every rank makes as many calls as the busiest member */
        int64_t x, y, n;
        zero_tensor_part(L, i, mbr, &x, &y);
        n = count_pieces(t, g0 + x / R, g0 + y / R, K); /* g0 only shifts whole experts: same pieces */
        if (n > ncalls) ncalls = n;
    }
    hid_t fs = H5Dget_space(ds);
    static const float dummy[1] = {0};
    for (int64_t c = 0; c < ncalls; c++) {
        hsize_t st[3], ct[3], one = 1;
        int64_t r0 = r, n = next_piece(t, &r, rend, K, st, ct);
        hid_t ms;
        const float *src = dummy;
        herr_t sel;
        if (n) {
            ms = H5Screate_simple(t->ndim, ct, NULL);
            ops_to_host(stage, zero_at(L, i, (float *)buf, lay, (r0 - g0) * R), (size_t)(n * R) * sizeof *stage);
            src = stage;
            sel = H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, ct, NULL);
        } else {
            ms = H5Screate_simple(1, &one, NULL);
            H5Sselect_none(ms);
            sel = H5Sselect_none(fs);
        }
        if (sel < 0 || H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, w->dxpl, src) < 0) {
            if (!rc) snprintf(w->err, w->errlen, "checkpoint %s: writing %s failed: %s", w->fname, path, h5_reason(&why));
            rc = -1;
        } else {
            H5D_mpio_actual_io_mode_t mode;
            if (p->world_size > 1 && H5Pget_mpio_actual_io_mode(w->dxpl, &mode) >= 0 && mode == H5D_MPIO_NO_COLLECTIVE && n)
                g_stats.n_independent++;
        }
        H5Sclose(ms);
    }
    free(stage);
    H5Sclose(fs);
    H5Dclose(ds);
    g_stats.n_datasets++;
    g_stats.bytes += (double)t->numel * sizeof(float);
    return rc;
}

/* A P_STORED tensor in its storage precision (ckpt_frozen.h); collective. */
static int frozen_write(const wctx *w, const plan *p, int i, const uint8_t *store) {
    if (!store) {
        snprintf(w->err, w->errlen, "ckpt_save: %s is in the frozen store, and no store was given", p->params.t[i].name);
        return -1;
    }
    g_stats.n_datasets++;
    return ckpt_frozen_write(w->file, w->lcpl, w->dxpl, p, i, store, w->fname, w->err, w->errlen);
}

static int write_attrs(hid_t f, const plan *p, const deck *d, const ckpt_state *st, int has_optim, int adapters) {
    int rc = 0;
    rc |= attr_i64(f, "adapters_only", adapters);
    rc |= attr_i64(f, "format_version", CKPT_FORMAT_VERSION);
    rc |= attr_str(f, "format", "dsv3 checkpoint");
    rc |= attr_i64(f, "step", st->step);
    rc |= attr_i64(f, "tokens_seen", st->tokens_seen);
    rc |= attr_i64(f, "data_position", st->data_position);
    rc |= attr_i64(f, "optim_t", st->optim_t);
    rc |= attr_i64(f, "has_optim", has_optim);
    rc |= attr_str(f, "deck", d->text ? d->text : "");
    rc |= attr_str(f, "git_rev", DSV3_GIT_REV);
    rc |= attr_i64(f, "world_size", p->world_size);
    rc |= attr_i64(f, "ep", p->ep);
    rc |= attr_i64(f, "zero_stage", p->zero_stage);
#define W(k) rc |= attr_i64(f, #k, d->model.k);
    MODEL_DIMS(W)
#undef W
    return rc;
}

/* The frozen store's tensors (bf16/fp8 + scales, ckpt_frozen.c): every rank
 * writes its rows collectively through parallel HDF5. */
static int save_collective(const plan *p, const deck *d, const zero_map *L, const float *params, int params_layout,
                           const float *m, const float *v, int optim_layout, const ckpt_state *st, int full,
                           int adapters, const char *tmp, const char *fname, char *err, int errlen) {
    int rc = 0;
    h5why why;
    /* Where the time goes (tools/bench-ckpt.sh): parallel HDF5 1.10 allocates a
     * filtered dataset's chunks when it is created (H5D_ALLOC_TIME_EARLY is forced
     * for MPI-IO files) and writes every chunk with checksummed fill values, so the
     * file is written twice; on top, MPI-IO's collective buffering copies the
     * data once more. One rank needs neither: it writes with the POSIX driver,
     * chunks allocated as they are written (each byte written once). */
    const int par = p->world_size > 1;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (par) {
        H5Pset_fapl_mpio(fapl, p->world, COMM_INFO_NULL);
        H5Pset_coll_metadata_write(fapl, 1);
    }
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST); /* dense storage for a long deck attribute */
    H5Pset_alignment(fapl, ALIGN_OVER, ALIGN_TO);
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (file < 0) {
        snprintf(err, errlen, "checkpoint: cannot create %s: %s", tmp, h5_reason(&why));
        rc = -1;
    }
    H5Pclose(fapl);
    if (agree(p->world, rc, err, errlen)) return -1;
    wctx w = {file, H5Pcreate(H5P_LINK_CREATE), H5Pcreate(H5P_DATASET_XFER), L, err, errlen, fname};
    H5Pset_create_intermediate_group(w.lcpl, 1);
    if (par) H5Pset_dxpl_mpio(w.dxpl, H5FD_MPIO_COLLECTIVE);
    if (write_attrs(file, p, d, st, full, adapters)) {
        snprintf(err, errlen, "checkpoint %s: writing root attributes failed: %s", fname, h5_reason(&why));
        rc = -1;
    }
    /* The ranks agree after every dataset and stop at the first failure
     * (a full disk, an I/O error): no rank waits in a collective the others left. */
    const param_table *pt = &p->params;
    rc = agree(p->world, rc, err, errlen);
    for (int i = 0; !rc && i < pt->n; i++) {
        if (!in_file(&pt->t[i], adapters ? FILE_ADAPTERS : FILE_ALL)) continue; /* the same decision on every rank */
        int e = (pt->t[i].flags & P_STORED) ? frozen_write(&w, p, i, st->frozen)
                                             : write_tensor(&w, i, params, params_layout, BUF_PARAM);
        wd_progress(p, d, e ? err : NULL);
        rc = agree(p->world, e, err, errlen);
    }
    for (int which = BUF_M; !rc && full && which <= BUF_V; which++)
        for (int i = 0; !rc && i < pt->n; i++)
            if (trainable(&pt->t[i])) {
                int e = write_tensor(&w, i, which == BUF_M ? m : v, optim_layout, which);
                wd_progress(p, d, e ? err : NULL);
                rc = agree(p->world, e, err, errlen);
            }
    H5Pclose(w.lcpl);
    H5Pclose(w.dxpl);
    if (H5Fclose(file) < 0) {
        /* HDF5 1.10 leaves a file whose close failed (e.g. ENOSPC flushing
         * metadata) half torn down: closing it again, or HDF5's own shutdown
         * at MPI_Finalize, crashes. Remember it: main ends without them. */
        g_h5_broken = 1;
        if (!rc) snprintf(err, errlen, "checkpoint %s: closing failed: %s", tmp, h5_reason(&why));
        rc = -1;
    }
    /* Data on disk before the rename makes it visible (each rank flushes its client's pages). */
    if (!rc && fs_fsync_path(tmp)) {
        snprintf(err, errlen, "checkpoint: fsync %s: %s", tmp, strerror(errno));
        rc = -1;
    }
    return rc;
}

/* ---- direct chunk writes (h5direct.h) -----------------------------------------
 * Where the time went (tools/bench-ckpt.sh, 2.1 GB, np=1): H5Dwrite 3.3 s of
 * 3.9 s (HDF5's Fletcher32 loop, the filter pipeline's copy, the kernel's copy
 * from a cold buffer), fsync 0.55 s; at np=2 also 1.4-1.9 s in H5Dcreate, the
 * fill pass parallel HDF5 1.10 makes over every filtered chunk. Now rank 0
 * builds the metadata alone (attributes, datasets with Fletcher32, every chunk
 * allocated by H5Dwrite_chunk while the skeleton driver drops its bytes),
 * broadcasts the chunk addresses, and every rank pwrites the rows it holds,
 * 512 KiB at a time through a host buffer (the tensors are device memory,
 * ops.h) after summing their part of the chunk's checksum (the piece is then
 * in L2 for the kernel's copy). The parts add up
 * across ranks; rank 0 writes each checksum and the zero padding of edge
 * chunks. The file is the one HDF5 writes: h5py/h5dump verify every chunk. */

/* A chunked dataset's geometry: rows (the last axis' vectors; 1-D: elements)
 * numbered slice * O + row across the slices of [E, O, R] (2-D, 1-D: one slice). */
typedef struct {
    size_t rowb;                 /* bytes a row */
    int64_t O, c, nch, nsl;      /* rows a slice, rows a chunk, chunks a slice, slices */
    int64_t first;               /* its first chunk in the address and sum tables (slice-major) */
} cgeom;

static cgeom geom_of(int ndim, const hsize_t *dims, const hsize_t *chunk, size_t rowb, int64_t *nchunks) {
    int ax = ndim == 3 ? 1 : 0;
    cgeom g = {rowb, (int64_t)dims[ax], (int64_t)chunk[ax], 0, ndim == 3 ? (int64_t)dims[0] : 1, *nchunks};
    g.nch = (g.O + g.c - 1) / g.c;
    *nchunks += g.nch * g.nsl;
    return g;
}

/* Rank 0: allocates every chunk of ds (H5Dwrite_chunk of bytes the skeleton
 * driver drops) and keeps their addresses. 0 or -1 (HDF5's error stack set). */
static int alloc_chunks(hid_t ds, int ndim, const cgeom *g, haddr_t *addr) {
    size_t cb = (size_t)g->c * g->rowb;
    uint8_t *dummy = calloc(1, cb + 4); /* never read */
    int rc = dummy ? 0 : -1;
    for (int64_t e = 0; !rc && e < g->nsl; e++)
        for (int64_t j = 0; !rc && j < g->nch; j++) {
            hsize_t off[3] = {0, 0, 0};
            off[ndim == 3] = (hsize_t)(j * g->c);
            if (ndim == 3) off[0] = (hsize_t)e;
            h5skel_drop(1);
            herr_t e2 = H5Dwrite_chunk(ds, H5P_DEFAULT, 0, off, cb + 4, dummy);
            h5skel_drop(0);
            haddr_t a = addr[g->first + e * g->nch + j] = h5skel_last_addr();
            if (e2 < 0 || a == HADDR_UNDEF) rc = -1;
        }
    free(dummy);
    return rc;
}

/* Rows go to the kernel in pieces of PIECE bytes, each right after its
 * checksum sum read it: the kernel's copy into the page cache then reads L2
 * (a save took 2-3x longer with 4 MB pieces here). Every KICK bytes the
 * kernel is told to start writing back (sync_file_range), so the disk works
 * while we copy and the final fsync finds little left (2.1 GB at np=1:
 * fsync 0.6 s -> 0.02 s). */
enum { PIECE = 512 << 10, KICK = 16 << 20 };
static size_t g_unkicked;
static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off) {
    const uint8_t *b = buf;
    if ((g_unkicked += n) >= KICK) {
        sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); /* a hint: its failure changes nothing */
        g_unkicked = 0;
    }
    while (n > 0) {
        ssize_t k = pwrite(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k, off += (uint64_t)k, n -= (size_t)k;
    }
    return 0;
}

/* Rows [r, rend) of g (contiguous at src) to their chunks; each chunk's
 * checksum part is added to sums[3 * chunk] (s1, s2, nonzero). src is host
 * memory, or with stage (PIECE bytes of host memory) device memory (ops.h)
 * that each piece is copied from first. -1: errno. */
static int put_rows(int fd, wring *w, const cgeom *g, const haddr_t *addr, int64_t *sums, int64_t r, int64_t rend,
                    const uint8_t *src, uint8_t *stage) {
    while (r < rend) { /* a slice's chunk j holds its rows [j*c, min((j+1)*c, O)) */
        int64_t e = r / g->O, j = r % g->O / g->c, c0 = e * g->O + j * g->c;
        int64_t cend = c0 + (g->O - j * g->c < g->c ? g->O - j * g->c : g->c), y = rend < cend ? rend : cend;
        int64_t k = g->first + e * g->nch + j;
        size_t nb = (size_t)(y - r) * g->rowb;
        uint64_t at = addr[k] + (uint64_t)(r - c0) * g->rowb;
        fl32_part x = {0, 0, 0};
        for (size_t o = 0; o < nb; o += PIECE) { /* the kernel copies each piece while it is in L2 */
            size_t n = nb - o < PIECE ? nb - o : PIECE;
            const uint8_t *h = src + o;
            if (stage) ops_to_host(stage, h, n), h = stage;
            fl32_add(&x, fl32_shift(fl32_sum(h, n), (nb - o - n) / 2));
            if (w ? wring_put(w, h, n, at + o) : pwrite_all(fd, h, n, at + o)) return -1;
        }
        x = fl32_shift(x, (uint64_t)(c0 + g->c - y) * g->rowb / 2); /* the chunk's rows after these, padding included */
        sums[3 * k] += (int64_t)x.s1, sums[3 * k + 1] += (int64_t)x.s2, sums[3 * k + 2] += (int64_t)x.nz;
        src += nb;
        r = y;
    }
    return 0;
}

/* Rank 0, once the parts are summed over the ranks: each chunk's checksum (4
 * bytes, little-endian, after the chunk) and the zeros past the last row of
 * an edge chunk. -1: errno. */
static int put_sums(int fd, const cgeom *g, int ng, const haddr_t *addr, const int64_t *sums) {
    size_t maxpad = 0;
    for (int k = 0; k < ng; k++) {
        size_t pad = (size_t)(g[k].nch * g[k].c - g[k].O) * g[k].rowb;
        if (pad > maxpad) maxpad = pad;
    }
    uint8_t *zero = calloc(1, maxpad + 4);
    int rc = zero ? 0 : -1;
    for (int k = 0; !rc && k < ng; k++) {
        const size_t cb = (size_t)g[k].c * g[k].rowb;
        for (int64_t e = 0; !rc && e < g[k].nsl; e++)
            for (int64_t j = 0; !rc && j < g[k].nch; j++) {
                int64_t q = g[k].first + e * g[k].nch + j, valid = g[k].O - j * g[k].c;
                const int64_t *s = sums + 3 * q;
                uint32_t f = fl32_final((fl32_part){(uint64_t)s[0], (uint64_t)s[1], s[2] != 0});
                uint8_t le[4] = {(uint8_t)f, (uint8_t)(f >> 8), (uint8_t)(f >> 16), (uint8_t)(f >> 24)};
                if (valid < g[k].c && pwrite_all(fd, zero, cb - (size_t)valid * g[k].rowb, addr[q] + (uint64_t)valid * g[k].rowb))
                    rc = -1;
                if (!rc && pwrite_all(fd, le, 4, addr[q] + cb)) rc = -1;
            }
    }
    if (!zero) errno = ENOMEM;
    free(zero);
    return rc;
}

/* A trainer buffer's tensor in a direct save. */
typedef struct {
    int i, which, lay;
    const float *buf;
} dset;

/* Rank 0: the file without its chunks' bytes; addr[] gets every chunk's address. */
static int skeleton(const plan *p, const deck *d, const ckpt_state *st, int full, int adapters, const dset *ds,
                    const cgeom *g, int ng, haddr_t *addr, const char *tmp, const char *fname, char *err, int errlen) {
    h5why why;
    int rc = 0;
    hid_t fapl = h5skel_fapl();
    if (fapl >= 0) {
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST); /* dense storage for a long deck attribute */
        H5Pset_alignment(fapl, ALIGN_OVER, ALIGN_TO);
    }
    hid_t file = fapl < 0 ? -1 : H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (fapl >= 0) H5Pclose(fapl);
    if (file < 0) {
        snprintf(err, errlen, "checkpoint: cannot create %s: %s", tmp, h5_reason(&why));
        return -1;
    }
    wctx w = {file, H5Pcreate(H5P_LINK_CREATE), H5P_DEFAULT, NULL, err, errlen, fname};
    H5Pset_create_intermediate_group(w.lcpl, 1);
    if (write_attrs(file, p, d, st, full, adapters)) {
        snprintf(err, errlen, "checkpoint %s: writing root attributes failed: %s", fname, h5_reason(&why));
        rc = -1;
    }
    for (int k = 0; !rc && k < ng; k++) {
        const param_spec *t = &p->params.t[ds[k].i];
        char path[256];
        ds_path(t, ds[k].which, path, sizeof path);
        hid_t h = create_ds(&w, t, path, &why);
        if (h < 0) {
            snprintf(err, errlen, "checkpoint %s: cannot create dataset %s: %s", fname, path, why.msg);
            rc = -1;
        } else if (alloc_chunks(h, t->ndim, &g[k], addr)) {
            snprintf(err, errlen, "checkpoint %s: allocating %s failed: %s", fname, path, h5_reason(&why));
            rc = -1;
        }
        if (h >= 0) H5Dclose(h);
    }
    H5Pclose(w.lcpl);
    if (H5Fclose(file) < 0) {
        g_h5_broken = 1; /* see save_collective */
        if (!rc) snprintf(err, errlen, "checkpoint %s: closing failed: %s", tmp, h5_reason(&why));
        rc = -1;
    }
    return rc;
}

/* This rank's rows of tensor ds. */
static int write_rows(int fd, const zero_map *L, const dset *ds, const cgeom *g, const haddr_t *addr, int64_t *sums,
                      uint8_t *stage, const char *fname, char *err, int errlen) {
    const plan *p = L->p;
    const param_spec *t = &L->pt->t[ds->i];
    int64_t R = row_len(t), a, b;
    zero_tensor_part(L, ds->i, member_of(p, t->kind), &a, &b);
    if (a % R || b % R) {
        snprintf(err, errlen, "checkpoint: shard of %s is not row-aligned ([%lld, %lld), row %lld)", t->name,
                 (long long)a, (long long)b, (long long)R);
        return -1;
    }
    int64_t g0 = row0(p, t);
    if (b > a && put_rows(fd, NULL, g, addr, sums, g0 + a / R, g0 + b / R,
                          (const uint8_t *)zero_at(L, ds->i, (float *)ds->buf, ds->lay, a), stage)) {
        char path[256];
        ds_path(t, ds->which, path, sizeof path);
        snprintf(err, errlen, "checkpoint %s: writing %s failed: %s", fname, path, strerror(errno));
        return -1;
    }
    return 0;
}

static int save_direct(const plan *p, const deck *d, const zero_map *L, const float *params, int params_layout,
                       const float *m, const float *v, int optim_layout, const ckpt_state *st, int full, int adapters,
                       const char *tmp, const char *fname, char *err, int errlen) {
    const param_table *pt = &p->params;
    dset *ds = calloc((size_t)pt->n * 3 + 1, sizeof *ds);
    cgeom *g = calloc((size_t)pt->n * 3 + 1, sizeof *g);
    int ng = 0, rc = 0;
    int64_t nchunks = 0;
    for (int k = 0; ds && g && k < 3 * pt->n; k++) { /* the order of save_collective: params, then m, then v */
        int i = k % pt->n, which = k / pt->n;
        const param_spec *t = &pt->t[i];
        if (which == BUF_PARAM ? !in_file(t, adapters ? FILE_ADAPTERS : FILE_ALL) : !full || !trainable(t)) continue;
        hsize_t dims[3], chunk[3];
        chunk_shape(t, dims, chunk);
        ds[ng] = (dset){i, which, which == BUF_PARAM ? params_layout : optim_layout,
                        which == BUF_PARAM ? params : which == BUF_M ? m : v};
        g[ng++] = geom_of(t->ndim, dims, chunk, sizeof(float) * (size_t)row_len(t), &nchunks);
    }
    haddr_t *addr = calloc((size_t)nchunks + 1, sizeof *addr);
    int64_t *sums = calloc((size_t)nchunks * 3 + 1, sizeof *sums);
    uint8_t *stage = malloc(PIECE); /* the tensors are device memory (ops.h) */
    if (!addr || !sums || !g || !ds || !stage) {
        snprintf(err, errlen, "checkpoint %s: out of memory for %lld chunks", fname, (long long)nchunks);
        rc = -1;
    }
    if (!rc && p->world_rank == 0) rc = skeleton(p, d, st, full, adapters, ds, g, ng, addr, tmp, fname, err, errlen);
    wd_progress(p, d, rc ? err : NULL);
    rc = agree(p->world, rc, err, errlen);
    if (!rc) comm_bcast(addr, sizeof *addr * (size_t)nchunks, 0, p->world);
    int fd = -1;
    if (!rc && (fd = open(tmp, O_WRONLY)) < 0) {
        snprintf(err, errlen, "checkpoint: cannot open %s: %s", tmp, strerror(errno));
        rc = -1;
    }
    for (int k = 0; !rc && k < ng; k++) {
        rc = write_rows(fd, L, &ds[k], &g[k], addr, sums, stage, fname, err, errlen);
        g_stats.n_datasets++;
        g_stats.bytes += (double)pt->t[ds[k].i].numel * sizeof(float);
    }
    wd_progress(p, d, rc ? err : NULL);
    rc = agree(p->world, rc, err, errlen); /* every rank reaches the sum, or none */
    if (!rc) comm_sum_i64(sums, (int)(3 * nchunks), p->world);
    if (!rc && p->world_rank == 0 && put_sums(fd, g, ng, addr, sums)) {
        snprintf(err, errlen, "checkpoint %s: writing checksums failed: %s", fname, strerror(errno));
        rc = -1;
    }
    /* Data on disk before the rename makes it visible (each rank flushes its client's pages). */
    if (fd >= 0) {
        if (!rc && fsync(fd)) {
            snprintf(err, errlen, "checkpoint: fsync %s: %s", tmp, strerror(errno));
            rc = -1;
        }
        if (close(fd) && !rc) {
            snprintf(err, errlen, "checkpoint: closing %s: %s", tmp, strerror(errno));
            rc = -1;
        }
    }
    free(stage), free(sums), free(addr), free(g), free(ds);
    return rc;
}

int ckpt_save(const plan *p, const deck *d, const char *output_dir, const float *params, int params_layout,
              const float *m, const float *v, int optim_layout, const ckpt_state *st, char *err, int errlen) {
    double t0 = comm_wtime();
    memset(&g_stats, 0, sizeof g_stats);
    err[0] = 0;
    int rc = 0, full = 1, adapters = 0;
    const char *mode = d->checkpoint.save;
    if (!output_dir) output_dir = d->run.output_dir;
    if (!mode[0] || !strcmp(mode, "full")) full = 1;
    else if (!strcmp(mode, "model")) full = 0;
    else if (!strcmp(mode, "adapters")) {
        if (!d->lora.enabled) {
            snprintf(err, errlen, "checkpoint.save = \"adapters\" needs lora.enabled = true");
            rc = -1;
        }
        adapters = 1; /* the adapters, their AdamW moments and the run's state; the base stays where it came from */
    } else {
        snprintf(err, errlen, "checkpoint.save = \"%s\": expected \"full\" or \"model\"", mode);
        rc = -1;
    }
    if (!rc && (!params || (full && (!m || !v)))) {
        snprintf(err, errlen, "ckpt_save: %s buffer missing", !params ? "parameter" : "optimizer moment");
        rc = -1;
    }
    if (!rc && bad_layouts(params_layout, optim_layout, err, errlen)) rc = -1;
    char dir[PATH_MAX], fname[64], final[PATH_MAX + 64], tmp[PATH_MAX + 72];
    snprintf(dir, sizeof dir, "%s/checkpoints", output_dir);
    snprintf(fname, sizeof fname, "step_%08lld.h5", (long long)st->step);
    snprintf(final, sizeof final, "%s/%s", dir, fname);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    if (!rc && p->world_rank == 0 && fs_mkdir_p(dir)) {
        snprintf(err, errlen, "checkpoint: cannot create %s: %s", dir, strerror(errno));
        rc = -1;
    }
    if (!rc && p->world_rank == 0) rc = space_check(dir, fname, ckpt_file_bytes(p, d, full, adapters), err, errlen);
    if (agree(p->world, rc, err, errlen)) return -1;

    zero_map L;
    if (agree(p->world, zero_map_init(&L, p, err, errlen), err, errlen)) {
        zero_map_free(&L);
        return -1;
    }
    h5quiet q;
    quiet_on(&q);
    wd_start(p, d, fname, tmp);
    int stored = 0;
    for (int i = 0; i < p->params.n; i++)
        stored |= in_file(&p->params.t[i], adapters ? FILE_ADAPTERS : FILE_ALL) && (p->params.t[i].flags & P_STORED);
    rc = stored ? save_collective(p, d, &L, params, params_layout, m, v, optim_layout, st, full, adapters, tmp, fname,
                                  err, errlen)
                : save_direct(p, d, &L, params, params_layout, m, v, optim_layout, st, full, adapters, tmp, fname,
                              err, errlen);
    quiet_off(&q);
    zero_map_free(&L);
    rc = agree(p->world, rc, err, errlen);
    wd_stop();
    if (rc) {
        if (p->world_rank == 0) unlink(tmp);
        return -1;
    }
    if (p->world_rank == 0) {
        char latest[PATH_MAX + 16];
        snprintf(latest, sizeof latest, "%s/latest", dir);
        if (rename(tmp, final)) {
            snprintf(err, errlen, "checkpoint: rename %s -> %s: %s", tmp, final, strerror(errno));
            rc = -1;
        } else if (fs_fsync_path(dir), fs_write_text(latest, fname)) {
            snprintf(err, errlen, "checkpoint: writing %s: %s", latest, strerror(errno));
            rc = -1;
        }
        if (rc) unlink(final); /* a failed save leaves what was there: `latest` and the kept files */
        if (!rc) {
            fs_fsync_path(dir);
            prune(dir, st->step, d->checkpoint.keep);
        }
    }
    rc = agree(p->world, rc, err, errlen);
    g_stats.seconds = comm_wtime() - t0;
    return rc;
}

/* ---- load ------------------------------------------------------------------ */

static int link_exists(hid_t file, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *c = buf + 1;; c++) {
        if (*c == '/' || !*c) {
            char save = *c;
            *c = 0;
            if (H5Lexists(file, buf, H5P_DEFAULT) <= 0) return 0;
            if (!save) return 1;
            *c = save;
        }
    }
}

/* Compares a dataset's shape to the tensor's; 0 = match, message otherwise. */
static int check_shape(hid_t file, const param_spec *t, const char *path, const char *fname, const char *what,
                       char *err, int errlen) {
    if (!link_exists(file, path)) {
        snprintf(err, errlen, "checkpoint %s: %s%s is missing (dataset %s; the deck's model has it)", fname, what,
                 t->name, path);
        return -1;
    }
    hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
    if (ds < 0) {
        snprintf(err, errlen, "checkpoint %s: %s is not a dataset", fname, path);
        return -1;
    }
    hid_t sp = H5Dget_space(ds);
    hsize_t dims[8] = {0};
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd > 0 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
    hid_t ty = H5Dget_type(ds);
    int isfloat = H5Tget_class(ty) == H5T_FLOAT;
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(ds);
    int same = nd == t->ndim;
    for (int k = 0; same && k < nd; k++) same = dims[k] == (hsize_t)t->shape[k];
    if (!same) {
        char fs[96] = "[", ds_[96] = "[";
        for (int k = 0; k < nd && k < 8; k++)
            snprintf(fs + strlen(fs), sizeof fs - strlen(fs), "%s%llu", k ? "," : "", (unsigned long long)dims[k]);
        for (int k = 0; k < t->ndim; k++)
            snprintf(ds_ + strlen(ds_), sizeof ds_ - strlen(ds_), "%s%lld", k ? "," : "", (long long)t->shape[k]);
        snprintf(err, errlen, "checkpoint %s: %s%s has shape %s], deck gives %s]", fname, what, t->name, fs, ds_);
        return -1;
    }
    if (!isfloat) {
        snprintf(err, errlen, "checkpoint %s: %s is not a float dataset%s", fname, path,
                 ckpt_frozen_is_fp8(file, path) ? " (FP8 bytes: set train.base_dtype = \"fp8\" or \"bf16\" with "
                                                   "lora.enabled, or import with --dtype)" : "");
        return -1;
    }
    return 0;
}

typedef struct {
    const param_table *pt;
    const char *root;
    char extra[160];
} visit_ctx;

static herr_t visit_cb(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    (void)obj;
    visit_ctx *v = data;
    if (info->type != H5O_TYPE_DATASET || v->extra[0]) return 0;
    char hf[160];
    hf_name(name, hf, sizeof hf);
    int i = params_find(v->pt, hf);
    int lora = !strcmp(v->root, "/lora");
    if (!lora && ckpt_frozen_is_scale(v->pt, hf)) return 0; /* an fp8 weight's scales (ckpt_frozen.h) */
    if (i < 0 || !(v->pt->t[i].flags & P_LORA) != !lora) snprintf(v->extra, sizeof v->extra, "%s", hf);
    return 0;
}

/* Every tensor of the deck's model present with its shape, and nothing else under /model, /lora. */
static int check_model(hid_t file, const param_table *pt, int want_optim, int what, const char *fname,
                       char *err, int errlen) {
    char path[256];
    if (what == FILE_ADAPTERS) {
        int any = 0;
        for (int i = 0; i < pt->n; i++) any |= (pt->t[i].flags & P_LORA) != 0;
        if (!any) {
            snprintf(err, errlen, "checkpoint %s holds adapters only, and the deck's model has no LoRA adapters "
                     "(lora.enabled)", fname);
            return -1;
        }
    }
    for (int i = 0; i < pt->n; i++) {
        if (!in_file(&pt->t[i], what)) continue;
        if (pt->t[i].flags & P_STORED) { /* f32, bf16 or fp8 bytes + scales */
            if (ckpt_frozen_check(file, pt, i, fname, err, errlen)) return -1;
            continue;
        }
        ds_path(&pt->t[i], BUF_PARAM, path, sizeof path);
        if (check_shape(file, &pt->t[i], path, fname, "", err, errlen)) return -1;
    }
    for (int which = BUF_M; want_optim && which <= BUF_V; which++)
        for (int i = 0; i < pt->n; i++) {
            if (!trainable(&pt->t[i])) continue;
            ds_path(&pt->t[i], which, path, sizeof path);
            if (check_shape(file, &pt->t[i], path, fname, which == BUF_M ? "exp_avg of " : "exp_avg_sq of ", err,
                            errlen))
                return -1;
        }
    static const char *roots[2] = {"/model", "/lora"};
    for (int r = 0; r < 2; r++) {
        if (H5Lexists(file, roots[r], H5P_DEFAULT) <= 0) continue;
        visit_ctx v = {pt, roots[r], ""};
        hid_t g = H5Gopen2(file, roots[r], H5P_DEFAULT);
        if (g < 0) continue;
        H5Ovisit2(g, H5_INDEX_NAME, H5_ITER_INC, visit_cb, &v, H5O_INFO_BASIC);
        H5Gclose(g);
        if (v.extra[0]) {
            snprintf(err, errlen, "checkpoint %s: %s is in the file but not in the deck's model", fname, v.extra);
            return -1;
        }
    }
    return 0;
}

/* The load's host staging buffer: one for every tensor, grown when needed
 * (a buffer per tensor cost a fresh mmap, a page fault and a zeroed page per
 * 4 KiB of the checkpoint: the cold load at np=1 fell from ~1.0 to ~0.7 GB/s). */
typedef struct {
    float *p;
    size_t cap;         /* floats */
    const uint8_t *map; /* the file mapped read-only (NULL: HDF5 reads it all), map_size bytes */
    uint64_t map_size;
} stagebuf;

static int direct_rows(hid_t ds, int ndim, const hsize_t *dims, size_t es, const uint8_t *map, uint64_t map_size,
                       int64_t a, int64_t b, int (*sink)(void *ctx, const void *data, size_t n), void *ctx,
                       const char *fname, const char *dpath, char *err, int errlen);

/* direct_rows' sink in a load: the next floats of tensor i's part, to device memory. */
typedef struct {
    const zero_map *L;
    int i, lay;
    float *buf;
    int64_t off; /* floats */
} load_sink;
static int to_device(void *ctx, const void *data, size_t n) {
    load_sink *c = ctx;
    ops_to_device(zero_at(c->L, c->i, c->buf, c->lay, c->off), data, n);
    c->off += (int64_t)(n / sizeof(float));
    return 0;
}

/* Independent reads: each rank reads its own selection; a checksum failure on
 * one rank cannot leave the others waiting in a collective call. */
static int read_tensor(hid_t file, const zero_map *L, int i, float *buf, int lay, int which, hid_t dxpl,
                       stagebuf *sb, const char *fname, char *err, int errlen) {
    const plan *p = L->p;
    const param_spec *t = &L->pt->t[i];
    char path[256];
    h5why why;
    ds_path(t, which, path, sizeof path);
    int64_t a = 0, b = t->numel_local, R = row_len(t);
    if (lay == ZERO_SHARD_PACKED || lay == ZERO_SHARD_TRAINABLE) zero_tensor_part(L, i, member_of(p, t->kind), &a, &b);
    if (b <= a) return 0;
    if (a % R || b % R) {
        snprintf(err, errlen, "checkpoint: shard of %s is not row-aligned", t->name);
        return -1;
    }
    hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
    if (ds < 0) {
        snprintf(err, errlen, "checkpoint %s: cannot open dataset %s: %s", fname, path, h5_reason(&why));
        return -1;
    }
    hid_t fs = H5Dget_space(ds), dcpl = H5Dget_create_plist(ds);
    int64_t K = rows_per_call(R), g0 = row0(p, t), rc = 0, n;
    hsize_t chunk[3] = {0, 0, 0};
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 3, chunk) == t->ndim) {
        int64_t c = (int64_t)chunk[t->ndim == 3]; /* rows a chunk: pieces of whole chunks read each chunk once */
        if (c > 0 && K > c) K = K / c * c;
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    int64_t r = g0 + a / R, rend = g0 + b / R, r0 = r;
    size_t cap = (size_t)((b - a) / R < K ? (b - a) / R : K) * (size_t)R;
    if (cap > sb->cap) {
        free(sb->p);
        sb->p = malloc(cap * sizeof *sb->p);
        sb->cap = sb->p ? cap : 0;
    }
    float *stage = sb->p;
    if (!stage) {
        snprintf(err, errlen, "checkpoint %s: out of memory staging %s (%zu floats)", fname, t->name, cap);
        rc = -1;
    }
    hid_t ty = H5Dget_type(ds);
    if (!rc && sb->map && ty >= 0 && H5Tequal(ty, H5T_IEEE_F32LE) > 0) { /* f32 chunks straight from the file */
        hsize_t dims[3] = {1, 1, 1};
        load_sink c = {L, i, lay, buf, a};
        if (H5Sget_simple_extent_dims(fs, dims, NULL) == t->ndim) {
            rc = direct_rows(ds, t->ndim, dims, sizeof(float), sb->map, sb->map_size, r, rend, to_device, &c, fname, path,
                             err, errlen);
            if (rc == 0) r = rend; /* done */
            else if (rc == 1) rc = 0; /* another layout: through HDF5 */
        }
    }
    if (ty >= 0) H5Tclose(ty);
    hsize_t st[3], ct[3];
    while (!rc && (n = next_piece(t, &r, rend, K, st, ct))) {
        hid_t ms = H5Screate_simple(t->ndim, ct, NULL);
        if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, ct, NULL) < 0 ||
            H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, stage) < 0) {
            snprintf(err, errlen, "checkpoint %s: dataset %s is corrupted or unreadable: %s", fname, path,
                     h5_reason(&why));
            rc = -1;
        } else {
            ops_to_device(zero_at(L, i, buf, lay, (r0 - g0) * R), stage, (size_t)(n * R) * sizeof *stage);
        }
        H5Sclose(ms);
        r0 = r;
    }
    H5Sclose(fs);
    H5Dclose(ds);
    return (int)rc;
}

static void zero_part(const zero_map *L, int i, float *buf, int lay) {
    const param_spec *t = &L->pt->t[i];
    int64_t a = 0, b = t->numel_local;
    if (lay >= ZERO_FULL_TRAINABLE && !trainable(t)) return; /* no storage */
    if (lay == ZERO_SHARD_PACKED || lay == ZERO_SHARD_TRAINABLE) zero_tensor_part(L, i, member_of(L->p, t->kind), &a, &b);
    if (b > a) ops_memset0(zero_at(L, i, buf, lay, a), sizeof(float) * (size_t)(b - a));
}

int ckpt_load(const plan *p, const deck *d, const char *path, float *params, int params_layout, float *m,
              float *v, int optim_layout, ckpt_state *st, char *err, int errlen) {
    double t0 = comm_wtime();
    memset(&g_stats, 0, sizeof g_stats);
    (void)d; /* the model is the plan's table, built from the deck */
    err[0] = 0;
    int rc = 0;
    const char *fname = base_name(path);
    uint8_t *frozen = st ? st->frozen : NULL; /* an input (ckpt.h) */
    struct stat sb;
    if (p->world_rank == 0 && stat(path, &sb)) {
        snprintf(err, errlen, "checkpoint %s: %s", path, strerror(errno));
        rc = -1;
    }
    if (!rc && (!params || (!m) != (!v))) {
        snprintf(err, errlen, "ckpt_load: parameter buffer missing or only one moment buffer given");
        rc = -1;
    }
    if (!rc && bad_layouts(params_layout, optim_layout, err, errlen)) rc = -1;
    if (agree(p->world, rc, err, errlen)) return -1;
    zero_map L;
    if (agree(p->world, zero_map_init(&L, p, err, errlen), err, errlen)) {
        zero_map_free(&L);
        return -1;
    }
    h5quiet q;
    h5why why;
    quiet_on(&q);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (p->world_size > 1) H5Pset_fapl_mpio(fapl, p->world, COMM_INFO_NULL); /* one rank: POSIX, as ckpt_save */
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (file < 0) {
        snprintf(err, errlen, "checkpoint %s: cannot open (truncated or not an HDF5 file?): %s", path,
                 h5_reason(&why));
        rc = -1;
    }
    H5Pclose(fapl);
    if (agree(p->world, rc, err, errlen)) {
        quiet_off(&q);
        zero_map_free(&L);
        return -1;
    }
    ckpt_state s;
    memset(&s, 0, sizeof s);
    int64_t ver = 0, has_optim = 0, ws = 0, ep = 0, zs = 0, ad = 0;
    const char *missing = NULL;
    if (read_attr_i64(file, "format_version", &ver)) missing = "format_version";
    else if (read_attr_i64(file, "step", &s.step)) missing = "step";
    else if (read_attr_i64(file, "tokens_seen", &s.tokens_seen)) missing = "tokens_seen";
    else if (read_attr_i64(file, "data_position", &s.data_position)) missing = "data_position";
    else if (read_attr_i64(file, "optim_t", &s.optim_t)) missing = "optim_t";
    else if (read_attr_i64(file, "has_optim", &has_optim)) missing = "has_optim";
    read_attr_i64(file, "world_size", &ws);
    read_attr_i64(file, "ep", &ep);
    read_attr_i64(file, "zero_stage", &zs);
    read_attr_i64(file, "adapters_only", &ad); /* absent in older files: full */
    if (missing) {
        snprintf(err, errlen, "checkpoint %s: not a dsv3 checkpoint (no root attribute %s)", fname, missing);
        rc = -1;
    } else if (ver != CKPT_FORMAT_VERSION) {
        snprintf(err, errlen, "checkpoint %s: format_version %lld, this dsv3 reads %d", fname, (long long)ver,
                 CKPT_FORMAT_VERSION);
        rc = -1;
    }
    s.has_optim = (int)has_optim;
    s.world_size = (int)ws;
    s.ep = (int)ep;
    s.zero_stage = (int)zs;
    s.adapters_only = (int)ad;
    const param_table *pt = &p->params;
    int want_optim = m && has_optim;
    int what = s.adapters_only ? FILE_ADAPTERS : H5Lexists(file, "/lora", H5P_DEFAULT) > 0 ? FILE_ALL : FILE_BASE;
    if (what == FILE_BASE && want_optim) {
        for (int i = 0; i < pt->n; i++)
            if (pt->t[i].flags & P_LORA) what = FILE_ALL; /* resuming LoRA state needs the adapters: say they are missing */
    }
    if (!rc) rc = check_model(file, pt, want_optim, what, fname, err, errlen);
    /* Collective-free from here until H5Fclose: reads are independent. */
    if (agree(p->world, rc, err, errlen)) rc = -1;
    if (!rc) {
        hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
        if (p->world_size > 1) H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT);
        stagebuf sb = {NULL, 0, NULL, 0};
        int mfd = open(path, O_RDONLY); /* the chunks read in place (direct_rows): HDF5 took 2-3x the CPU time */
        struct stat ms;
        if (mfd >= 0 && !fstat(mfd, &ms) && ms.st_size > 0) {
            void *m = mmap(NULL, (size_t)ms.st_size, PROT_READ, MAP_SHARED, mfd, 0);
            if (m != MAP_FAILED) sb.map = m, sb.map_size = (uint64_t)ms.st_size;
        }
        if (mfd >= 0) close(mfd);
        for (int i = 0; i < pt->n && !rc; i++) /* adapters-only: the base tensors stay as they are */
            if (in_file(&pt->t[i], what) && (pt->t[i].flags & P_STORED)) {
                if (!frozen) {
                    snprintf(err, errlen, "ckpt_load: %s is in the frozen store, and no store was given", pt->t[i].name);
                    rc = -1;
                } else {
                    int w = params_shared_writer(pt, i, p->node_size); /* node-shared: one reader per node */
                    if (w < 0 || w == p->node_rank) rc = ckpt_frozen_read(file, dxpl, p, i, frozen, fname, err, errlen);
                }
            } else if (in_file(&pt->t[i], what)) {
                rc = read_tensor(file, &L, i, params, params_layout, BUF_PARAM, dxpl, &sb, fname, err, errlen);
            }
        for (int which = BUF_M; m && which <= BUF_V && !rc; which++)
            for (int i = 0; i < pt->n && !rc; i++) {
                float *buf = which == BUF_M ? m : v;
                if (want_optim && trainable(&pt->t[i]))
                    rc = read_tensor(file, &L, i, buf, optim_layout, which, dxpl, &sb, fname, err, errlen);
                else
                    zero_part(&L, i, buf, optim_layout);
            }
        free(sb.p);
        if (sb.map) munmap((void *)sb.map, (size_t)sb.map_size);
        H5Pclose(dxpl);
        for (int i = 0; i < pt->n; i++) {
            g_stats.bytes += (double)pt->t[i].numel * sizeof(float);
            g_stats.n_datasets++;
            if (want_optim && trainable(&pt->t[i])) {
                g_stats.bytes += 2.0 * (double)pt->t[i].numel * sizeof(float);
                g_stats.n_datasets += 2;
            }
        }
    }
    H5Fclose(file);
    quiet_off(&q);
    zero_map_free(&L);
    rc = agree(p->world, rc, err, errlen);
    s.frozen = frozen;
    if (!rc && st) *st = s;
    g_stats.seconds = comm_wtime() - t0;
    return rc;
}

int ckpt_is_adapters_only(const char *path) {
    h5quiet q;
    quiet_on(&q);
    int64_t ad = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) {
        read_attr_i64(f, "adapters_only", &ad);
        H5Fclose(f);
    }
    quiet_off(&q);
    return ad == 1;
}

/* ---- resume ------------------------------------------------------------------ */

int ckpt_resolve(const deck *d, char *path, int len, char *err, int errlen) {
    struct stat sb;
    path[0] = 0;
    if (!d->run.resume[0]) return 0;
    if (strcmp(d->run.resume, "auto")) {
        if (stat(d->run.resume, &sb)) {
            snprintf(err, errlen, "run.resume = \"%s\": %s", d->run.resume, strerror(errno));
            return -1;
        }
        snprintf(path, len, "%s", d->run.resume);
        return 0;
    }
    char latest[PATH_MAX], name[256] = "";
    snprintf(latest, sizeof latest, "%s/checkpoints/latest", d->run.output_dir);
    FILE *f = fopen(latest, "r");
    if (!f) {
        if (errno == ENOENT) return 0; /* nothing saved yet: fresh start */
        snprintf(err, errlen, "run.resume = \"auto\": %s: %s", latest, strerror(errno));
        return -1;
    }
    if (!fgets(name, sizeof name, f)) name[0] = 0;
    fclose(f);
    name[strcspn(name, "\r\n")] = 0;
    if (step_of(name, 0) < 0) {
        snprintf(err, errlen, "run.resume = \"auto\": %s holds \"%s\", not a checkpoint file name", latest, name);
        return -1;
    }
    if (snprintf(path, len, "%s/checkpoints/%s", d->run.output_dir, name) >= len) {
        snprintf(err, errlen, "run.resume: path too long");
        path[0] = 0;
        return -1;
    }
    if (stat(path, &sb)) {
        snprintf(err, errlen, "run.resume = \"auto\": %s names %s: %s", latest, path, strerror(errno));
        path[0] = 0;
        return -1;
    }
    return 0;
}

/* ---- streaming single-tensor I/O (dsv3-import, dsv3-export) --------------- */


static int ds_is_bf16(hid_t ds) {
    hid_t ty = H5Dget_type(ds);
    int b = H5Tget_class(ty) == H5T_FLOAT && H5Tget_size(ty) == 2;
    H5Tclose(ty);
    return b;
}

/* A dataset of a direct ckpt_out: its chunk geometry (as dset) and its chunks' place in the tables. */
typedef struct {
    char path[420];
    int ndim;
    int64_t shape[3];
    cgeom g;
} odset;

struct ckpt_out {
    hid_t file, bf16, dxpl;
    int use_bf16, par, rank;
    comm_t comm;
    char path[4096], tmp[4200];
    h5quiet q;
    /* direct (no FP8 datasets): rank 0 holds the HDF5 file (skeleton driver),
     * every rank pwrites its rows into fd, as save_direct */
    int direct, fd, nd, dcap;
    wring *w; /* direct: the rows' pieces go through a writer thread */
    odset *ds;
    haddr_t *addr;
    int64_t *sums, nchunks, chcap;
    int put_rc; /* a failed ckpt_out_put, reported by the next collective call */
    char put_err[4400];
};

static int out_root_attrs(ckpt_out *o, const deck *d);

int ckpt_out_open(ckpt_out **out, const char *path, const deck *d, int use_bf16, int fp8, comm_t comm, char *err,
                  int errlen) {
    ckpt_out *o = calloc(1, sizeof *o);
    int rc = o ? 0 : -1;
    if (!o) snprintf(err, errlen, "%s: out of memory", path);
    if (agree(comm, rc, err, errlen)) {
        free(o);
        return -1;
    }
    snprintf(o->path, sizeof o->path, "%s", path);
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp", path);
    o->use_bf16 = use_bf16;
    o->comm = comm;
    o->par = comm_size(comm) > 1;
    o->rank = comm_rank(comm);
    o->bf16 = ckpt_frozen_bf16_type();
    o->dxpl = H5Pcreate(H5P_DATASET_XFER);
    o->direct = !fp8;
    o->fd = -1;
    quiet_on(&o->q);
    hid_t fapl = o->direct ? h5skel_fapl() : H5Pcreate(H5P_FILE_ACCESS);
    if (o->par && !o->direct) { /* FP8 datasets: collective writes through parallel HDF5 (ckpt_frozen.c) */
        H5Pset_fapl_mpio(fapl, comm, COMM_INFO_NULL);
        H5Pset_coll_metadata_write(fapl, 1);
        H5Pset_dxpl_mpio(o->dxpl, H5FD_MPIO_COLLECTIVE);
    }
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    H5Pset_alignment(fapl, ALIGN_OVER, ALIGN_TO);
    o->file = o->direct && o->rank ? 0 : H5Fcreate(o->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl); /* direct: rank 0 */
    H5Pclose(fapl);
    h5why why;
    if (o->file < 0) {
        snprintf(err, errlen, "cannot create %s: %s", o->tmp, h5_reason(&why));
        rc = -1;
    }
    /* the writer thread only where a core is left for it on this node: with as
     * many ranks as cores it took time from conversion (np 2 on 2 cores: import
     * 5-9% slower) */
    comm_t node;
    comm_split_node(comm, 0, &node);
    const int thread = comm_size(node) < sysconf(_SC_NPROCESSORS_ONLN);
    comm_free(&node);
    if (!agree(comm, rc, err, errlen) && o->direct &&
        ((o->fd = open(o->tmp, O_WRONLY)) < 0 || (thread && !(o->w = wring_open(o->fd))))) {
        snprintf(err, errlen, "cannot %s %s: %s", o->fd < 0 ? "open" : "start a writer thread for", o->tmp,
                 strerror(errno));
        rc = -1;
    }
    if (agree(comm, rc, err, errlen)) {
        if (o->file > 0) H5Fclose(o->file);
        wring_close(o->w);
        if (o->fd >= 0) close(o->fd);
        if (o->rank == 0) unlink(o->tmp);
        quiet_off(&o->q);
        H5Tclose(o->bf16);
        H5Pclose(o->dxpl);
        free(o);
        return -1;
    }
    if (o->file > 0) rc = out_root_attrs(o, d);
    if (rc) snprintf(err, errlen, "%s: writing root attributes failed: %s", o->tmp, h5_reason(&why));
    if (agree(comm, rc, err, errlen)) {
        ckpt_out_close(o, 1, NULL, 0);
        return -1;
    }
    *out = o;
    return 0;
}

static int out_root_attrs(ckpt_out *o, const deck *d) {
    int rc = 0;
    rc |= attr_i64(o->file, "format_version", CKPT_FORMAT_VERSION);
    rc |= attr_str(o->file, "format", "dsv3 checkpoint");
    rc |= attr_i64(o->file, "step", 0);
    rc |= attr_i64(o->file, "tokens_seen", 0);
    rc |= attr_i64(o->file, "data_position", 0);
    rc |= attr_i64(o->file, "optim_t", 0);
    rc |= attr_i64(o->file, "has_optim", 0);
    rc |= attr_str(o->file, "deck", d->text ? d->text : "");
    rc |= attr_str(o->file, "git_rev", DSV3_GIT_REV);
    rc |= attr_i64(o->file, "world_size", 1); /* the layout of a fresh model, however many ranks wrote it */
    rc |= attr_i64(o->file, "ep", 1);
    rc |= attr_i64(o->file, "zero_stage", 0);
#define W(k) rc |= attr_i64(o->file, #k, d->model.k);
    MODEL_DIMS(W)
#undef W
    return rc;
}

int ckpt_out_attr(ckpt_out *o, const char *name, const char *value) {
    char err[8];
    return agree(o->comm, o->file > 0 ? attr_str(o->file, name, value) : 0, err, 0);
}

/* /model/<path of hf_name>; chunks of about chunk_bytes() along axis 0 (3-D: one slice). */
int ckpt_out_declare(ckpt_out *o, const char *hf_name, int ndim, const int64_t *shape, int f32, char *err,
                     int errlen) {
    int bf16 = o->use_bf16 && !f32;
    char rel[400], path[420];
    rel_path(hf_name, rel, sizeof rel);
    snprintf(path, sizeof path, "/model/%s", rel);
    hsize_t dims[3], chunk[3];
    size_t es = bf16 ? 2 : 4;
    for (int k = 0; k < ndim; k++) dims[k] = chunk[k] = (hsize_t)shape[k];
    int ax = ndim == 3 ? 1 : 0;
    size_t rowb = es * (ndim >= 2 ? (size_t)shape[ndim - 1] : 1);
    int64_t rows = (int64_t)(chunk_bytes() / (rowb ? rowb : 1));
    if (rows < 1) rows = 1;
    int64_t n = shape[ax] > 0 ? shape[ax] : 1, nch = (n + rows - 1) / rows;
    chunk[ax] = (hsize_t)((n + nch - 1) / nch);
    if (ndim == 3) chunk[0] = 1;
    for (int k = 0; k < ndim; k++)
        if (chunk[k] == 0) chunk[k] = 1;
    hid_t sp = H5Screate_simple(ndim, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    H5Pset_chunk(dcpl, ndim, chunk);
    H5Pset_fletcher32(dcpl);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_INCR); /* one rank; parallel HDF5 1.10 makes it EARLY */
    h5why why;
    odset *g = NULL;
    int rc = 0;
    if (o->direct) { /* every rank: the geometry and room for its chunks' addresses and sums */
        if (o->nd == o->dcap) {
            int cap = o->dcap ? 2 * o->dcap : 256;
            odset *x = realloc(o->ds, sizeof *x * (size_t)cap);
            if (x) o->ds = x, o->dcap = cap;
        }
        int64_t end = o->nchunks;
        cgeom cg = geom_of(ndim, dims, chunk, rowb, &end);
        if (end > o->chcap) {
            int64_t cap = 2 * end;
            haddr_t *a = realloc(o->addr, sizeof *a * (size_t)cap);
            if (a) o->addr = a;
            int64_t *sm = realloc(o->sums, sizeof *sm * 3 * (size_t)cap);
            if (sm) o->sums = sm;
            if (a && sm) o->chcap = cap;
        }
        if (o->nd < o->dcap && end <= o->chcap) {
            g = &o->ds[o->nd];
            memset(g, 0, sizeof *g);
            snprintf(g->path, sizeof g->path, "%s", path);
            g->ndim = ndim;
            for (int k = 0; k < ndim; k++) g->shape[k] = shape[k];
            g->g = cg;
            memset(o->sums + 3 * o->nchunks, 0, sizeof *o->sums * 3 * (size_t)(end - o->nchunks));
        } else {
            snprintf(err, errlen, "%s: out of memory declaring %s", o->tmp, path);
            rc = -1;
        }
    }
    if (o->file > 0 && !rc) {
        hid_t ds = H5Dcreate2(o->file, path, bf16 ? o->bf16 : H5T_IEEE_F32LE, sp, lcpl, dcpl, H5P_DEFAULT);
        if (ds < 0) {
            snprintf(err, errlen, "%s: cannot create dataset %s: %s", o->tmp, path, h5_reason(&why));
            rc = -1;
        } else if (g && alloc_chunks(ds, ndim, &g->g, o->addr)) {
            snprintf(err, errlen, "%s: allocating %s failed: %s", o->tmp, path, h5_reason(&why));
            rc = -1;
        }
        if (ds >= 0) H5Dclose(ds);
    }
    H5Pclose(lcpl), H5Pclose(dcpl), H5Sclose(sp);
    if (agree(o->comm, rc, err, errlen)) return -1;
    if (g) { /* every chunk's address on every rank */
        comm_bcast(o->addr + g->g.first, sizeof *o->addr * (size_t)(g->g.nsl * g->g.nch), 0, o->comm);
        o->nchunks += g->g.nsl * g->g.nch;
        o->nd++;
    }
    return 0;
}

/* Rows [row0, row0+nrows) of slice e of a 3-D dataset (e >= 0), or along the
 * dataset's axis 0 (e < 0, any rank); data is bf16 bits (uint16) when the file
 * is bf16, else float. */
/* Direct: this rank's rows to their chunks; 0 or -1 (err set), no collective call. */
static int put_direct(ckpt_out *o, const char *path, int64_t e, int64_t row0, int64_t nrows, const void *data,
                      char *err, int errlen) {
    const odset *g = NULL;
    int rc = 0;
    for (int k = o->nd - 1; k >= 0 && !g; k--) /* declared just before, as a rule */
        if (!strcmp(o->ds[k].path, path)) g = &o->ds[k];
    const int r = e >= 0; /* the row axis */
    if (!g) {
        snprintf(err, errlen, "%s: no dataset %s", o->tmp, path);
        rc = -1;
    } else if (nrows > 0 && (r ? g->ndim != 3 || e >= g->shape[0] || row0 < 0 || row0 + nrows > g->shape[1]
                                : row0 < 0 || row0 + nrows > g->shape[0])) {
        char what[64] = "";
        if (r) snprintf(what, sizeof what, "slice %lld ", (long long)e);
        snprintf(err, errlen, "%s: %srows [%lld, %lld) outside %s", o->tmp, what, (long long)row0,
                 (long long)(row0 + nrows), path);
        rc = -1;
    } else if (nrows > 0) {
        int64_t a = r ? e * g->g.O + row0 : row0, n = nrows; /* in rows of g->g */
        if (!r && g->ndim == 3) a *= g->g.O, n *= g->g.O;     /* whole slices */
        if (put_rows(o->fd, o->w, &g->g, o->addr, o->sums, a, a + n, data, NULL)) { /* the tools' host buffers */
            snprintf(err, errlen, "%s: writing %s failed: %s", o->tmp, path, strerror(errno));
            rc = -1;
        }
    }
    return rc;
}

/* Every rank's status, an earlier ckpt_out_put failure included. */
static int out_agree(ckpt_out *o, int rc, char *err, int errlen) {
    if (o->put_rc && !rc) snprintf(err, errlen, "%s", o->put_err), rc = -1;
    return agree(o->comm, rc, err, errlen);
}

static int out_write(ckpt_out *o, const char *hf_name, int64_t e, int64_t row0, int64_t nrows, const void *data,
                     char *err, int errlen) {
    char rel[400], path[420];
    rel_path(hf_name, rel, sizeof rel);
    snprintf(path, sizeof path, "/model/%s", rel);
    if (o->direct) return out_agree(o, put_direct(o, path, e, row0, nrows, data, err, errlen), err, errlen);
    h5why why;
    hid_t ds = H5Dopen2(o->file, path, H5P_DEFAULT);
    int rc = 0;
    if (ds < 0) {
        snprintf(err, errlen, "%s: no dataset %s", o->tmp, path);
        rc = -1;
    }
    if (out_agree(o, rc, err, errlen)) { /* the same datasets on every rank: all or none go on */
        if (ds >= 0) H5Dclose(ds);
        return -1;
    }
    hid_t fs = H5Dget_space(ds);
    hsize_t dims[3] = {1, 1, 1};
    int nd = H5Sget_simple_extent_ndims(fs);
    H5Sget_simple_extent_dims(fs, dims, NULL);
    const int r = e >= 0; /* the row axis */
    hsize_t st[3] = {0, 0, 0}, ct[3] = {dims[0], dims[1], dims[2]};
    if (r) st[0] = (hsize_t)e, ct[0] = 1;
    st[r] = (hsize_t)row0, ct[r] = (hsize_t)nrows;
    if (nrows > 0 && (r ? nd != 3 || (hsize_t)e >= dims[0] || row0 < 0 || (hsize_t)(row0 + nrows) > dims[1]
                        : nd < 1 || row0 < 0 || (hsize_t)(row0 + nrows) > dims[0])) {
        char what[64] = "";
        if (r) snprintf(what, sizeof what, "slice %lld ", (long long)e);
        snprintf(err, errlen, "%s: %srows [%lld, %lld) outside %s", o->tmp, what, (long long)row0,
                 (long long)(row0 + nrows), path);
        rc = -1;
    }
    /* a rank with nothing (or a bad request) still takes part in the collective call */
    static const float dummy[1] = {0};
    hsize_t one = 1;
    hid_t ms = rc || nrows <= 0 ? H5Screate_simple(1, &one, NULL) : H5Screate_simple(nd, ct, NULL);
    herr_t sel;
    if (rc || nrows <= 0) {
        H5Sselect_none(ms);
        sel = H5Sselect_none(fs);
        data = dummy;
    } else
        sel = H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, ct, NULL);
    if ((rc || nrows > 0 || o->par) &&
        (sel < 0 || H5Dwrite(ds, ds_is_bf16(ds) ? o->bf16 : H5T_NATIVE_FLOAT, ms, fs, o->dxpl, data) < 0) && !rc) {
        snprintf(err, errlen, "%s: writing %s failed: %s", o->tmp, path, h5_reason(&why));
        rc = -1;
    }
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(ds);
    return out_agree(o, rc, err, errlen);
}

int ckpt_out_write(ckpt_out *o, const char *hf_name, int64_t row0, int64_t nrows, const void *data, char *err,
                   int errlen) {
    return out_write(o, hf_name, -1, row0, nrows, data, err, errlen);
}

int ckpt_out_write_slab(ckpt_out *o, const char *hf_name, int64_t e, int64_t row0, int64_t nrows, const void *data,
                        char *err, int errlen) {
    return out_write(o, hf_name, e, row0, nrows, data, err, errlen);
}

int ckpt_out_put(ckpt_out *o, const char *hf_name, int64_t e, int64_t row0, int64_t nrows, const void *data) {
    char rel[400], path[420];
    rel_path(hf_name, rel, sizeof rel);
    snprintf(path, sizeof path, "/model/%s", rel);
    if (o->put_rc) return -1; /* the first failure is the one reported */
    if (!o->direct) snprintf(o->put_err, sizeof o->put_err, "%s: ckpt_out_put in a file opened with fp8", o->tmp), o->put_rc = -1;
    else o->put_rc = put_direct(o, path, e, row0, nrows, data, o->put_err, (int)sizeof o->put_err);
    return o->put_rc;
}

int ckpt_out_declare_fp8(ckpt_out *o, const char *hf_name, int ndim, const int64_t *shape, char *err, int errlen) {
    if (o->direct) {
        snprintf(err, errlen, "%s: FP8 dataset %s in a file opened without fp8 (ckpt_out_open)", o->tmp, hf_name);
        return -1;
    }
    return ckpt_frozen_declare_fp8(o->file, hf_name, ndim, shape, err, errlen);
}

int ckpt_out_write_fp8(ckpt_out *o, const char *hf_name, int64_t e, int64_t row0, int64_t nrows, const uint8_t *q,
                       const float *scales, char *err, int errlen) {
    int rc = ckpt_frozen_write_fp8(o->file, o->dxpl, hf_name, e, row0, nrows, q, scales, err, errlen);
    return out_agree(o, rc, err, errlen); /* every rank calls it (nrows 0 for none), as out_write */
}

int ckpt_out_close(ckpt_out *o, int failed, char *err, int errlen) {
    h5why why;
    char scratch[8];
    if (!err) err = scratch, errlen = 0;
    int rc = failed ? -1 : 0;
    if (o->direct) { /* the checksums: parts summed over the ranks, written by rank 0 */
        if (wring_close(o->w) && !rc && !o->put_rc) { /* every piece written, or the first failure */
            snprintf(err, errlen, "%s: writing failed: %s", o->tmp, strerror(errno));
            rc = -1;
        }
        o->w = NULL;
        rc = out_agree(o, rc, err, errlen);
        cgeom *g = malloc(sizeof *g * (size_t)(o->nd + 1));
        for (int k = 0; g && k < o->nd; k++) g[k] = o->ds[k].g;
        if (!rc) comm_sum_i64(o->sums, (int)(3 * o->nchunks), o->comm);
        if (!rc && o->rank == 0 && (!g || put_sums(o->fd, g, o->nd, o->addr, o->sums))) {
            snprintf(err, errlen, "%s: writing checksums failed: %s", o->tmp, g ? strerror(errno) : "out of memory");
            rc = -1;
        }
        free(g);
    }
    if (o->file > 0 && H5Fclose(o->file) < 0) { /* direct: rank 0 alone */
        g_h5_broken = 1;
        if (!rc) snprintf(err, errlen, "%s: closing failed: %s", o->tmp, h5_reason(&why));
        rc = -1;
    }
    quiet_off(&o->q);
    H5Tclose(o->bf16);
    H5Pclose(o->dxpl);
    if (!rc && (o->direct ? fsync(o->fd) : fs_fsync_path(o->tmp))) { /* each rank: its client's pages */
        snprintf(err, errlen, "fsync %s: %s", o->tmp, strerror(errno));
        rc = -1;
    }
    if (o->fd >= 0 && close(o->fd) && !rc) {
        snprintf(err, errlen, "closing %s: %s", o->tmp, strerror(errno));
        rc = -1;
    }
    free(o->ds), free(o->addr), free(o->sums);
    rc = agree(o->comm, rc, err, errlen);
    if (!rc && o->rank == 0 && rename(o->tmp, o->path)) {
        snprintf(err, errlen, "rename %s -> %s: %s", o->tmp, o->path, strerror(errno));
        rc = -1;
    }
    rc = agree(o->comm, rc, err, errlen);
    if (rc && o->rank == 0) unlink(o->tmp); /* never a damaged file under the final name */
    free(o);
    return rc;
}

/* ---- reading one tensor at a time ---- */

struct ckpt_in {
    hid_t file, bf16;
    char path[4096];
    char *deck_text;
    int n, cap;
    ckpt_tensor_info *t;
    h5quiet q;
    int fd;               /* ckpt_in_stream: the file (-1: not yet opened) */
    const uint8_t *map;   /* ckpt_in_stream: the file mapped read-only, map_size bytes */
    uint64_t map_size;
};

typedef struct {
    ckpt_in *r;
    const char *root;
    int fail;
} tvisit_ctx;

static herr_t tvisit_cb(hid_t g, const char *name, const H5O_info_t *info, void *op) {
    tvisit_ctx *v = op;
    if (info->type != H5O_TYPE_DATASET) return 0;
    ckpt_in *r = v->r;
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 256;
        ckpt_tensor_info *t = realloc(r->t, (size_t)cap * sizeof *t);
        if (!t) return -1;
        r->t = t, r->cap = cap;
    }
    ckpt_tensor_info *t = &r->t[r->n];
    memset(t, 0, sizeof *t);
    hf_name(name, t->name, sizeof t->name);
    snprintf(t->path, sizeof t->path, "%s/%s", v->root, name);
    t->is_lora = strcmp(v->root, "/lora") == 0;
    hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
    if (ds < 0) return -1;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    t->ndim = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[8] = {0};
    if (t->ndim > 0 && t->ndim <= 3) H5Sget_simple_extent_dims(sp, dims, NULL);
    for (int k = 0; k < t->ndim && k < 3; k++) t->shape[k] = (int64_t)dims[k];
    t->is_bf16 = H5Tget_class(ty) == H5T_FLOAT && H5Tget_size(ty) == 2;
    t->is_fp8 = H5Tget_class(ty) == H5T_INTEGER && H5Tget_size(ty) == 1 && H5Aexists(ds, "dtype") > 0; /* ckpt_frozen.h */
    int ok = (H5Tget_class(ty) == H5T_FLOAT || t->is_fp8) && t->ndim >= 1 && t->ndim <= 3;
    H5Tclose(ty), H5Sclose(sp), H5Dclose(ds);
    if (!ok) {
        v->fail = 1;
        return -1;
    }
    r->n++;
    return 0;
}

int ckpt_in_open(ckpt_in **out, const char *path, char *err, int errlen) {
    ckpt_in *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    snprintf(r->path, sizeof r->path, "%s", path);
    r->fd = -1;
    r->bf16 = ckpt_frozen_bf16_type();
    quiet_on(&r->q);
    h5why why;
    r->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (r->file < 0) {
        snprintf(err, errlen, "%s: not a readable HDF5 file: %s", path, h5_reason(&why));
        ckpt_in_close(r);
        return -1;
    }
    int64_t ver = 0;
    if (read_attr_i64(r->file, "format_version", &ver) || ver != CKPT_FORMAT_VERSION) {
        snprintf(err, errlen, "%s: not a dsv3 checkpoint (format_version %lld)", path, (long long)ver);
        ckpt_in_close(r);
        return -1;
    }
    if (H5Aexists(r->file, "deck") > 0) {
        hid_t a = H5Aopen(r->file, "deck", H5P_DEFAULT), ty = H5Aget_type(a);
        size_t n = H5Tget_size(ty);
        r->deck_text = calloc(n + 1, 1);
        if (!r->deck_text || H5Aread(a, ty, r->deck_text) < 0) {
            free(r->deck_text);
            r->deck_text = NULL;
        }
        H5Tclose(ty), H5Aclose(a);
    }
    static const char *roots[2] = {"/model", "/lora"};
    for (int k = 0; k < 2; k++) {
        if (H5Lexists(r->file, roots[k], H5P_DEFAULT) <= 0) continue;
        tvisit_ctx v = {r, roots[k], 0};
        hid_t g = H5Gopen2(r->file, roots[k], H5P_DEFAULT);
        herr_t e = H5Ovisit(g, H5_INDEX_NAME, H5_ITER_INC, tvisit_cb, &v);
        H5Gclose(g);
        if (e < 0) {
            snprintf(err, errlen, "%s: a dataset under %s is not a float (or FP8-byte) tensor of 1-3 dimensions", path, roots[k]);
            ckpt_in_close(r);
            return -1;
        }
    }
    *out = r;
    return 0;
}

const char *ckpt_in_deck(const ckpt_in *r) { return r->deck_text; }
int ckpt_in_count(const ckpt_in *r) { return r->n; }
const ckpt_tensor_info *ckpt_in_tensor(const ckpt_in *r, int i) { return &r->t[i]; }

/* Rows [row0, row0+nrows) of slice e of a 3-D tensor (e >= 0), or along axis 0
 * (e < 0); as bf16 bits (bf16 datasets only) or as floats. */
static int in_read(ckpt_in *r, int i, int64_t e, int64_t row0, int64_t nrows, void *dst, int as_bf16, char *err,
                   int errlen) {
    const ckpt_tensor_info *t = &r->t[i];
    const int ax = e >= 0; /* the row axis */
    if ((ax && (t->ndim != 3 || e >= t->shape[0])) || row0 < 0 || nrows < 0 || row0 + nrows > t->shape[ax]) {
        char what[64] = "";
        if (ax) snprintf(what, sizeof what, "slice %lld ", (long long)e);
        snprintf(err, errlen, "%s: %srows [%lld, %lld) outside %s", r->path, what, (long long)row0,
                 (long long)(row0 + nrows), t->path);
        return -1;
    }
    if (t->is_fp8) { /* e4m3 bytes: HDF5 would convert them as integers */
        snprintf(err, errlen, "%s: %s holds FP8 e4m3 bytes (train.base_dtype = \"fp8\", or dsv3-import --keep-fp8); "
                 "this reader takes float datasets only", r->path, t->path);
        return -1;
    }
    if (as_bf16 && !t->is_bf16) { /* bf16 bits out of a bf16 dataset need no conversion; floats from either */
        snprintf(err, errlen, "%s: %s is not bf16", r->path, t->path);
        return -1;
    }
    hid_t ds = H5Dopen2(r->file, t->path, H5P_DEFAULT);
    if (ds < 0) {
        snprintf(err, errlen, "%s: cannot open %s", r->path, t->path);
        return -1;
    }
    hsize_t st[3] = {0, 0, 0}, ct[3] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1], (hsize_t)t->shape[2]};
    if (ax) st[0] = (hsize_t)e, ct[0] = 1;
    st[ax] = (hsize_t)row0, ct[ax] = (hsize_t)nrows;
    h5why why;
    hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(t->ndim, ct, NULL);
    int rc = 0;
    if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, ct, NULL) < 0 ||
        H5Dread(ds, as_bf16 ? r->bf16 : H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, dst) < 0) {
        snprintf(err, errlen, "%s: reading %s failed (checksum?): %s", r->path, t->path, h5_reason(&why));
        rc = -1;
    }
    H5Sclose(ms), H5Sclose(fs), H5Dclose(ds);
    return rc;
}

int ckpt_in_read(ckpt_in *r, int i, int64_t row0, int64_t nrows, void *dst, int as_bf16, char *err, int errlen) {
    return in_read(r, i, -1, row0, nrows, dst, as_bf16, err, errlen);
}

int ckpt_in_read_slab(ckpt_in *r, int i, int64_t e, int64_t row0, int64_t nrows, void *dst, int as_bf16, char *err,
                      int errlen) {
    return in_read(r, i, e, row0, nrows, dst, as_bf16, err, errlen);
}

/* Is ds chunked with Fletcher32 as its only filter? Its chunk dims then. */
static int fletcher_only(hid_t ds, int ndim, hsize_t *chunk) {
    hid_t dcpl = H5Dget_create_plist(ds);
    unsigned flags, cd[4];
    size_t ncd = 4;
    char name[32];
    int ok = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, ndim, chunk) == ndim &&
             H5Pget_nfilters(dcpl) == 1 &&
             H5Pget_filter2(dcpl, 0, &flags, &ncd, cd, sizeof name, name, NULL) == H5Z_FILTER_FLETCHER32;
    if (dcpl >= 0) H5Pclose(dcpl);
    return ok;
}

/* Rows [a, b) (a slice's rows after another's: the rows of geom_of) of dataset
 * ds (ndim, dims), chunked in whole rows with Fletcher32 its only filter, es
 * bytes an element, straight from map (the file, map_size bytes): every chunk
 * the rows touch is read whole and its checksum checked as HDF5 checks it, and
 * the wanted rows' bytes go to sink in order, in pieces of at most PIECE bytes
 * (each summed first: the sink's copy then reads L2). The pages read leave the
 * process's RSS. 0; 1: another layout (read it through HDF5); -1: err. */
static int direct_rows(hid_t ds, int ndim, const hsize_t *dims, size_t es, const uint8_t *map, uint64_t map_size,
                       int64_t a, int64_t b, int (*sink)(void *ctx, const void *data, size_t n), void *ctx,
                       const char *fname, const char *dpath, char *err, int errlen) {
    hsize_t chunk[3] = {1, 1, 1};
    if (!fletcher_only(ds, ndim, chunk)) return 1;
    int64_t none = 0;
    cgeom g = geom_of(ndim, dims, chunk, es * (ndim >= 2 ? (size_t)dims[ndim - 1] : 1), &none);
    if (ndim == 3 ? chunk[0] != 1 || chunk[2] != dims[2] : ndim == 2 && chunk[1] != dims[1]) return 1; /* not rows */
    int rc = 0;
    const size_t cb = (size_t)g.c * g.rowb;
    for (int64_t c0 = a - a % g.O % g.c; !rc && c0 < b;) { /* every chunk the rows touch, whole */
        int64_t sl = c0 / g.O, j = c0 % g.O / g.c;
        hsize_t off[3] = {0, 0, 0};
        off[ndim == 3] = (hsize_t)(j * g.c);
        if (ndim == 3) off[0] = (hsize_t)sl;
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        uint8_t le[4];
        if (H5Dget_chunk_info_by_coord(ds, off, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF || mask ||
            size != cb + 4 || addr > map_size || cb + 4 > map_size - addr) {
            snprintf(err, errlen, "%s: dataset %s: chunk at row %lld unreadable (not allocated, or the file is "
                     "truncated)", fname, dpath, (long long)c0);
            rc = -1;
            break;
        }
        { /* the disk reads this chunk and the next ones (laid out after it, as a rule) while we sum */
            uintptr_t pg = 4096, lo = (uintptr_t)(map + addr) & ~(pg - 1);
            uint64_t ahead = 4 * (uint64_t)(cb + 4), end = addr + ahead < map_size ? addr + ahead : map_size;
            (void)madvise((void *)lo, (uintptr_t)(map + end) - lo, MADV_WILLNEED);
        }
        memcpy(le, map + addr + cb, 4);
        /* the chunk's bytes in pieces: all summed, the wanted rows' handed on */
        uint64_t w0 = (uint64_t)((a > c0 ? a : c0) - c0) * g.rowb, w1 = (uint64_t)((b < c0 + g.c ? b : c0 + g.c) - c0) * g.rowb;
        fl32_part x = {0, 0, 0};
        for (uint64_t o = 0; !rc && o < cb;) {
            size_t n = cb - o < PIECE ? (size_t)(cb - o) : PIECE;
            if (o < w0 && o + n > w0) n = (size_t)(w0 - o); /* pieces split where the wanted rows begin and end */
            if (o < w1 && o + n > w1) n = (size_t)(w1 - o);
            const uint8_t *piece = map + addr + o;
            fl32_add(&x, fl32_shift(fl32_sum(piece, n), (cb - o - n) / 2)); /* the sink's copy then reads L2 */
            if (o >= w0 && o < w1 && sink(ctx, piece, n)) {
                snprintf(err, errlen, "%s: dataset %s: the output refused the data", fname, dpath);
                rc = -1;
            }
            o += n;
        }
        uint32_t f = fl32_final(x), stored = (uint32_t)le[0] | (uint32_t)le[1] << 8 | (uint32_t)le[2] << 16 |
                                                 (uint32_t)le[3] << 24;
        uint32_t swapped = (f & 0xff00ff00u) >> 8 | (f & 0x00ff00ffu) << 8; /* HDF5 accepts it too (files of < 1.6.3) */
        if (!rc && stored != f && stored != swapped) {
            snprintf(err, errlen, "%s: reading %s failed: data error detected by Fletcher32 checksum (chunk at row "
                     "%lld)", fname, dpath, (long long)(c0 % g.O));
            rc = -1;
        }
        uintptr_t pg = 4096, lo = (uintptr_t)(map + addr) & ~(pg - 1); /* read: out of this process's RSS */
        (void)madvise((void *)lo, (uintptr_t)(map + addr + cb + 4) - lo, MADV_DONTNEED);
        c0 = (sl + (j + 1 == g.nch)) * g.O + (j + 1 == g.nch ? 0 : (j + 1) * g.c); /* the next chunk */
    }
    return rc;
}

int ckpt_in_stream(ckpt_in *r, int i, int64_t e, int64_t row0, int64_t nrows,
                   int (*sink)(void *ctx, const void *data, size_t n), void *ctx, char *err, int errlen) {
    const ckpt_tensor_info *t = &r->t[i];
    const int ax = e >= 0; /* the row axis */
    if ((ax && (t->ndim != 3 || e >= t->shape[0])) || row0 < 0 || nrows < 0 || row0 + nrows > t->shape[ax]) {
        snprintf(err, errlen, "%s: rows [%lld, %lld) outside %s", r->path, (long long)row0, (long long)(row0 + nrows),
                 t->path);
        return -1;
    }
    if (t->is_fp8) return 1;
    if (r->fd < 0) { /* the chunks are read in place: no copy out of the page cache (export: 22% of its time) */
        struct stat sb;
        void *m = MAP_FAILED;
        r->fd = open(r->path, O_RDONLY);
        if (r->fd >= 0 && !fstat(r->fd, &sb) && sb.st_size > 0)
            m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, r->fd, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "%s: %s", r->path, strerror(errno));
            return -1;
        }
        r->map = m, r->map_size = (uint64_t)sb.st_size;
    }
    hid_t ds = H5Dopen2(r->file, t->path, H5P_DEFAULT);
    if (ds < 0) {
        snprintf(err, errlen, "%s: cannot open %s", r->path, t->path);
        return -1;
    }
    hsize_t dims[3] = {1, 1, 1};
    for (int k = 0; k < t->ndim; k++) dims[k] = (hsize_t)t->shape[k];
    int64_t O = t->ndim == 3 ? t->shape[1] : t->shape[0];
    int64_t a = ax ? e * O + row0 : row0, b = a + nrows; /* wanted rows of the chunk geometry */
    if (!ax && t->ndim == 3) a *= O, b *= O;
    int rc = direct_rows(ds, t->ndim, dims, t->is_bf16 ? 2 : 4, r->map, r->map_size, a, b, sink, ctx, r->path, t->path,
                         err, errlen);
    H5Dclose(ds);
    return rc;
}

void ckpt_in_close(ckpt_in *r) {
    if (!r) return;
    if (r->fd >= 0) close(r->fd);
    if (r->map) munmap((void *)r->map, (size_t)r->map_size);
    if (r->file >= 0 && r->file) H5Fclose(r->file);
    quiet_off(&r->q);
    H5Tclose(r->bf16);
    free(r->deck_text);
    free(r->t);
    free(r);
}

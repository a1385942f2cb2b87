/* test_ckpt_mpi.c — checkpoints: save/load across layouts, atomicity, integrity.
 *
 * A cmocka program that is also an MPI program: run alone (size 1, as the
 * suite does) or under mpirun -np 2/4. Every check is agreed over all ranks
 * before asserting, so a failure cannot leave ranks waiting in a collective.
 *
 * CLI mode for tests/it_ckpt.sh (restarts on another rank count):
 *   test_ckpt_mpi save DIR EP ZERO STEP [lora]   writes DIR/checkpoints/step_STEP.h5
 *   test_ckpt_mpi load FILE EP ZERO [lora]       loads, compares every value, prints OK
 *   test_ckpt_mpi names [lora]                   prints "index name" of every tensor
 * Values are a function of (buffer, tensor, global index), so any layout
 * knows what every float it holds must be.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/ckpt.h"

static int g_rank, g_size;
static int g_scale = 1; /* CLI: CKPT_SCALE=k widens the model ~k^2 (crash test, tools/bench-ckpt.sh) */
static char g_dir[128]; /* scratch directory shared by all ranks */

/* ---- fixtures ---------------------------------------------------------- */

static void tiny_deck(deck *d, const char *out, int ep, int zero, int lora) {
    memset(d, 0, sizeof *d);
    deck_model *m = &d->model;
    int k = g_scale;
    m->vocab_size = 64 * k;
    m->hidden_size = 16 * k;
    m->intermediate_size = 32 * k;
    m->moe_intermediate_size = 8 * k;
    m->num_hidden_layers = 3;
    m->first_k_dense_replace = 1;
    m->n_routed_experts = 8;
    m->n_shared_experts = 1;
    m->num_experts_per_tok = 2;
    m->n_group = 1;
    m->topk_group = 1;
    m->q_lora_rank = 12 * k;
    m->kv_lora_rank = 8 * k;
    m->qk_nope_head_dim = 4 * k;
    m->qk_rope_head_dim = 4 * k;
    m->v_head_dim = 4 * k;
    m->num_attention_heads = 2;
    m->num_nextn_predict_layers = 1;
    m->rms_norm_eps = 1e-6;
    snprintf(d->run.output_dir, sizeof d->run.output_dir, "%s", out);
    d->parallel.expert_parallel = ep;
    d->parallel.zero_stage = zero;
    d->train.micro_batch = 1;
    d->train.global_batch = g_size;
    d->train.seq_len = 8;
    snprintf(d->train.dtype, sizeof d->train.dtype, "fp32");
    snprintf(d->checkpoint.save, sizeof d->checkpoint.save, "full");
    if (lora) {
        d->lora.enabled = 1;
        d->lora.r = 2;
        d->lora.alpha = 4;
        d->lora.n_targets = 2;
        snprintf(d->lora.targets[0], DECK_STR, "self_attn.q_a_proj");
        snprintf(d->lora.targets[1], DECK_STR, "self_attn.o_proj");
    }
    d->text = "# resolved deck of test_ckpt_mpi\nmodel = { hidden_size = 16; };\n";
}

/* plan_layout gives shards and ownership without MPI; we lend it the world. */
static int make_plan(plan *p, const deck *d) {
    char err[512];
    if (plan_layout(p, d, g_size, g_rank, err, sizeof err)) {
        fprintf(stderr, "plan_layout: %s\n", err);
        return -1;
    }
    p->world = MPI_COMM_WORLD;
    return 0;
}
static void drop_plan(plan *p) {
    p->world = MPI_COMM_NULL;
    plan_free(p);
}

static int all_ok(int ok) {
    int r;
    MPI_Allreduce(&ok, &r, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    return r;
}

/* Exactly representable value of float g of tensor i in buffer `which` (0 w, 1 m, 2 v). */
static float val(int which, int i, int64_t g) {
    uint32_t h = (uint32_t)i * 2654435761u ^ ((uint32_t)g * 40503u + (uint32_t)which * 977u + (uint32_t)(g >> 32));
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return (float)((int)(h % 20001u) - 10000) / 64.0f;
}

static int is_trainable(const param_spec *t) { return !(t->flags & (P_FROZEN | P_NOGRAD)); }

static int seg_of(const param_table *pt, const param_spec *t) {
    for (int s = 0; s < pt->nseg; s++)
        if (pt->seg[s].group == t->group && pt->seg[s].kind == t->kind) return s;
    return -1;
}

/* Floats a buffer of layout `lay` holds on this rank. */
static size_t lay_size(const plan *p, int lay) {
    size_t n = 0;
    if (lay == ZERO_FULL_LOCAL) return p->params.total_local;
    if (lay == ZERO_SHARD_PACKED) return p->shard_floats;
    if (lay == ZERO_SHARD_TRAINABLE) return p->shard_trainable;
    for (int s = 0; s < p->params.nseg; s++) n += p->shard[s].trainable;
    return n;
}

/* Fills what the rank holds in layout `lay` with the expected values
 * (untrained tensors' moments: 0). An independent restatement of the layouts. */
static void fill(const plan *p, float *buf, int lay, int which) {
    const param_table *pt = &p->params;
    size_t pbase = 0, tbase = 0, tfull = 0;
    for (int s = 0; s < pt->nseg; s++) {
        const param_segment *sg = &pt->seg[s];
        const plan_shard *sh = &p->shard[s];
        int me = sg->kind == SEG_EXPERT ? p->dp_index : p->world_rank;
        size_t toff = 0;
        for (int i = 0; i < pt->n; i++) {
            const param_spec *t = &pt->t[i];
            if (seg_of(pt, t) != s) continue;
            int tr = is_trainable(t);
            size_t rel = t->offset - sg->offset;
            int64_t g0 = t->kind == SEG_EXPERT ? (int64_t)p->expert_first * t->shape[1] * t->shape[2] : 0;
            for (int64_t k = 0; k < t->numel_local; k++) {
                float x = (which && !tr) ? 0.0f : val(which, i, g0 + k);
                size_t o = rel + (size_t)k;
                int mine = o >= sh->off[me] && o < sh->off[me] + sh->cnt[me];
                if (lay == ZERO_FULL_LOCAL) buf[t->offset + k] = x;
                else if (lay == ZERO_SHARD_PACKED && mine) buf[pbase + o - sh->off[me]] = x;
                else if (lay == ZERO_FULL_TRAINABLE && tr) buf[tfull + toff + k] = x;
                else if (lay == ZERO_SHARD_TRAINABLE && tr && mine) buf[tbase + toff + k - sh->toff[me]] = x;
            }
            if (tr) toff += (size_t)t->numel_local;
        }
        pbase += sh->cnt[me];
        tbase += sh->tcnt[me];
        tfull += sh->trainable;
    }
}

typedef struct {
    size_t nw, nm;
    float *w, *m, *v;
} bufs;

static void bufs_make(bufs *b, const plan *p, int wl, int ol, int filled) {
    b->nw = lay_size(p, wl);
    b->nm = lay_size(p, ol);
    b->w = malloc(sizeof(float) * (b->nw + 1));
    b->m = malloc(sizeof(float) * (b->nm + 1));
    b->v = malloc(sizeof(float) * (b->nm + 1));
    memset(b->w, 0xff, sizeof(float) * (b->nw + 1)); /* NaN: anything not loaded shows */
    memset(b->m, 0xff, sizeof(float) * (b->nm + 1));
    memset(b->v, 0xff, sizeof(float) * (b->nm + 1));
    if (filled) {
        fill(p, b->w, wl, 0);
        fill(p, b->m, ol, 1);
        fill(p, b->v, ol, 2);
    }
}
static void bufs_free(bufs *b) {
    free(b->w);
    free(b->m);
    free(b->v);
}

/* Bitwise comparison of what was loaded with what must be there. */
static int bufs_check(const plan *p, const bufs *got, int wl, int ol, int with_optim) {
    bufs want;
    bufs_make(&want, p, wl, ol, 1);
    int ok = memcmp(got->w, want.w, sizeof(float) * got->nw) == 0;
    if (with_optim)
        ok = ok && memcmp(got->m, want.m, sizeof(float) * got->nm) == 0 &&
             memcmp(got->v, want.v, sizeof(float) * got->nm) == 0;
    bufs_free(&want);
    return ok;
}

static const int WL[4] = {ZERO_FULL_LOCAL, ZERO_FULL_LOCAL, ZERO_FULL_LOCAL, ZERO_SHARD_PACKED};
static const int OL[4] = {ZERO_FULL_LOCAL, ZERO_SHARD_PACKED, ZERO_SHARD_PACKED, ZERO_SHARD_PACKED};

static int save_as(const char *dir, int ep, int zero, int lora, int64_t step, int wl, int ol, char *err) {
    deck d;
    plan p;
    tiny_deck(&d, dir, ep, zero, lora);
    if (make_plan(&p, &d)) return -1;
    bufs b;
    bufs_make(&b, &p, wl, ol, 1);
    ckpt_state st = {.step = step, .tokens_seen = 1000 * step, .data_position = 7 * step, .optim_t = step};
    int rc = ckpt_save(&p, &d, NULL, b.w, wl, b.m, b.v, ol, &st, err, 512);
    bufs_free(&b);
    drop_plan(&p);
    return rc;
}

/* Loads `file` into (ep, zero) layouts wl/ol and compares every value. 1 = all equal. */
static int load_check(const char *file, int ep, int zero, int lora, int wl, int ol, int64_t step, char *err) {
    deck d;
    plan p;
    tiny_deck(&d, "/nonexistent", ep, zero, lora);
    if (make_plan(&p, &d)) return 0;
    bufs b;
    bufs_make(&b, &p, wl, ol, 0);
    ckpt_state st;
    int ok = ckpt_load(&p, &d, file, b.w, wl, b.m, b.v, ol, &st, err, 512) == 0;
    ok = ok && st.step == step && st.tokens_seen == 1000 * step && st.data_position == 7 * step &&
         st.optim_t == step && st.has_optim == 1;
    ok = all_ok(ok && bufs_check(&p, &b, wl, ol, 1));
    bufs_free(&b);
    drop_plan(&p);
    return ok;
}

static void path_of(char *out, size_t len, const char *dir, int64_t step) {
    snprintf(out, len, "%s/checkpoints/step_%08lld.h5", dir, (long long)step);
}

static void sub_dir(char *out, size_t len, const char *name) {
    snprintf(out, len, "%s/%s", g_dir, name);
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ---- tests --------------------------------------------------------------- */

/* Every (EP, ZeRO layout) the world allows saves; every one loads it back. */
static void test_roundtrip_layouts(void **state) {
    (void)state;
    char dir[300], file[400], err[512] = "";
    sub_dir(dir, sizeof dir, "rt");
    for (int sep = 1; sep <= g_size; sep *= 2) {
        if (g_size % sep) continue;
        for (int sz = 0; sz < 4; sz += (sz == 0 ? 1 : 2)) { /* stages 0, 1, 3 */
            int64_t step = 100 + sep * 10 + sz;
            int rc = save_as(dir, sep, sz, 0, step, WL[sz], OL[sz], err);
            if (rc && g_rank == 0) fprintf(stderr, "save ep=%d zero=%d: %s\n", sep, sz, err);
            assert_int_equal(rc, 0);
            assert_int_equal(ckpt_last_stats()->n_independent, 0);
            path_of(file, sizeof file, dir, step);
            for (int lep = 1; lep <= g_size; lep *= 2)
                for (int lz = 0; lz < 4; lz += 1 + (lz == 1)) { /* stage 2 = stage 1 layouts */
                    if (g_size % lep) continue;
                    int ok = load_check(file, lep, lz, 0, WL[lz], OL[lz], step, err);
                    if (!ok && g_rank == 0)
                        fprintf(stderr, "saved ep=%d zero=%d, loaded ep=%d zero=%d: %s\n", sep, sz, lep, lz, err);
                    assert_true(ok);
                }
        }
    }
}

/* LoRA runs: frozen base, /lora adapters, compact (trainable-only) moments. */
static void test_lora_compact(void **state) {
    (void)state;
    char dir[300], file[400], err[512] = "";
    sub_dir(dir, sizeof dir, "lora");
    int ep = g_size >= 2 ? 2 : 1;
    assert_int_equal(save_as(dir, ep, 1, 1, 5, ZERO_FULL_LOCAL, ZERO_SHARD_TRAINABLE, err), 0);
    path_of(file, sizeof file, dir, 5);
    assert_true(load_check(file, 1, 0, 1, ZERO_FULL_LOCAL, ZERO_FULL_TRAINABLE, 5, err));
    assert_true(load_check(file, g_size, 3, 1, ZERO_SHARD_PACKED, ZERO_SHARD_TRAINABLE, 5, err));
    assert_true(load_check(file, 1, 2, 1, ZERO_FULL_LOCAL, ZERO_SHARD_PACKED, 5, err)); /* zeros for frozen */
    if (g_rank == 0) {
        hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
        assert_true(f >= 0);
        assert_true(H5Lexists(f, "/lora", H5P_DEFAULT) > 0);
        assert_true(H5Oexists_by_name(f, "/lora/layers/0/self_attn/q_a_proj/lora_A/weight", H5P_DEFAULT) > 0);
        assert_true(H5Oexists_by_name(f, "/optim/exp_avg/layers/0/self_attn/q_a_proj/lora_B/weight", H5P_DEFAULT) > 0);
        /* frozen base weights carry no moments */
        assert_true(H5Lexists(f, "/optim/exp_avg/layers", H5P_DEFAULT) > 0);
        assert_true(H5Lexists(f, "/optim/exp_avg/embed_tokens", H5P_DEFAULT) == 0);
        H5Fclose(f);
    }
    /* the same file into a deck without LoRA: named precisely */
    deck d;
    plan p;
    tiny_deck(&d, dir, 1, 0, 0);
    assert_int_equal(make_plan(&p, &d), 0);
    bufs b;
    bufs_make(&b, &p, ZERO_FULL_LOCAL, ZERO_FULL_LOCAL, 0);
    assert_int_equal(ckpt_load(&p, &d, file, b.w, 0, NULL, NULL, 0, NULL, err, sizeof err), -1);
    if (g_rank == 0) printf("lora file into plain deck: %s\n", err);
    assert_non_null(strstr(err, "lora_A.weight is in the file but not in the deck's model"));
    bufs_free(&b);
    drop_plan(&p);
}

/* Root attributes and HF-named layout, read with plain serial HDF5. */
static void test_layout_and_attrs(void **state) {
    (void)state;
    char dir[300], file[400], err[512] = "";
    sub_dir(dir, sizeof dir, "attrs");
    assert_int_equal(save_as(dir, 1, 0, 0, 3, ZERO_FULL_LOCAL, ZERO_FULL_LOCAL, err), 0);
    path_of(file, sizeof file, dir, 3);
    if (g_rank == 0) {
        hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
        assert_true(f >= 0);
        static const char *must[] = {"/model/embed_tokens/weight", "/model/lm_head/weight", "/model/norm/weight",
                                     "/model/layers/0/self_attn/q_a_proj/weight",
                                     "/model/layers/1/mlp/gate/e_score_correction_bias",
                                     "/model/layers/1/mlp/experts/gate_proj/weight",
                                     "/optim/exp_avg/layers/1/mlp/experts/down_proj/weight",
                                     "/optim/exp_avg_sq/lm_head/weight", "/model/layers/3/eh_proj/weight"};
        for (size_t k = 0; k < sizeof must / sizeof *must; k++) {
            if (H5Oexists_by_name(f, must[k], H5P_DEFAULT) <= 0) fprintf(stderr, "missing %s\n", must[k]);
            assert_true(H5Oexists_by_name(f, must[k], H5P_DEFAULT) > 0);
        }
        /* router biases are model state, not trained: no moments */
        assert_true(H5Lexists(f, "/optim/exp_avg/layers/1/mlp/gate/e_score_correction_bias", H5P_DEFAULT) <= 0);
        hid_t ds = H5Dopen2(f, "/model/layers/1/mlp/experts/gate_proj/weight", H5P_DEFAULT);
        hid_t sp = H5Dget_space(ds);
        hsize_t dims[3];
        assert_int_equal(H5Sget_simple_extent_ndims(sp), 3);
        H5Sget_simple_extent_dims(sp, dims, NULL);
        assert_true(dims[0] == 8 && dims[1] == 8 && dims[2] == 16);
        hid_t dcpl = H5Dget_create_plist(ds);
        unsigned flags;
        size_t nel = 0;
        int nf = H5Pget_nfilters(dcpl);
        assert_int_equal(nf, 1);
        assert_int_equal(H5Pget_filter2(dcpl, 0, &flags, &nel, NULL, 0, NULL, NULL), H5Z_FILTER_FLETCHER32);
        H5Pclose(dcpl);
        H5Sclose(sp);
        H5Dclose(ds);
        int64_t v;
        hid_t a = H5Aopen(f, "step", H5P_DEFAULT);
        H5Aread(a, H5T_NATIVE_INT64, &v);
        H5Aclose(a);
        assert_int_equal(v, 3);
        a = H5Aopen(f, "world_size", H5P_DEFAULT);
        H5Aread(a, H5T_NATIVE_INT64, &v);
        H5Aclose(a);
        assert_int_equal(v, g_size);
        a = H5Aopen(f, "deck", H5P_DEFAULT);
        hid_t ty = H5Aget_type(a);
        size_t n = H5Tget_size(ty);
        char *txt = calloc(n + 1, 1);
        H5Aread(a, ty, txt);
        assert_non_null(strstr(txt, "resolved deck of test_ckpt_mpi"));
        free(txt);
        H5Tclose(ty);
        H5Aclose(a);
        assert_true(H5Aexists(f, "git_rev") > 0 && H5Aexists(f, "hidden_size") > 0);
        H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

/* checkpoint.save = "model": no /optim; loading with moments zeroes them. */
static void test_model_only(void **state) {
    (void)state;
    char dir[300], file[400], err[512] = "";
    sub_dir(dir, sizeof dir, "modelonly");
    deck d;
    plan p;
    tiny_deck(&d, dir, 1, 1, 0);
    snprintf(d.checkpoint.save, sizeof d.checkpoint.save, "model");
    assert_int_equal(make_plan(&p, &d), 0);
    bufs b;
    bufs_make(&b, &p, ZERO_FULL_LOCAL, ZERO_SHARD_PACKED, 1);
    ckpt_state st = {.step = 4};
    assert_int_equal(ckpt_save(&p, &d, NULL, b.w, 0, NULL, NULL, 1, &st, err, sizeof err), 0);
    path_of(file, sizeof file, dir, 4);
    memset(b.w, 0, sizeof(float) * b.nw);
    ckpt_state got;
    assert_int_equal(ckpt_load(&p, &d, file, b.w, 0, b.m, b.v, 1, &got, err, sizeof err), 0);
    assert_int_equal(got.has_optim, 0);
    bufs want;
    bufs_make(&want, &p, ZERO_FULL_LOCAL, ZERO_SHARD_PACKED, 1);
    int ok = memcmp(b.w, want.w, sizeof(float) * b.nw) == 0;
    for (size_t k = 0; k < b.nm; k++) ok = ok && b.m[k] == 0 && b.v[k] == 0;
    assert_true(all_ok(ok));
    bufs_free(&want);
    snprintf(d.checkpoint.save, sizeof d.checkpoint.save, "adapters");
    assert_int_equal(ckpt_save(&p, &d, NULL, b.w, 0, NULL, NULL, 1, &st, err, sizeof err), -1);
    assert_non_null(strstr(err, "adapters"));
    bufs_free(&b);
    drop_plan(&p);
}

/* A save that died mid-way leaves step_X.h5.tmp: latest and loading are unaffected,
 * the next save of that step overwrites it; keep=N prunes older files. */
static void test_crash_tmp_and_keep(void **state) {
    (void)state;
    char dir[300], file[400], tmp[420], err[512] = "", got[512];
    sub_dir(dir, sizeof dir, "crash");
    assert_int_equal(save_as(dir, 1, 0, 0, 1, 0, 0, err), 0);
    path_of(file, sizeof file, dir, 2);
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    if (g_rank == 0) { /* a partial file, as a kill -9 during the write leaves it */
        char one[400];
        path_of(one, sizeof one, dir, 1);
        FILE *in = fopen(one, "rb"), *out = fopen(tmp, "wb");
        char blk[4096];
        size_t n = fread(blk, 1, sizeof blk, in);
        fwrite(blk, 1, n, out);
        fclose(in);
        fclose(out);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    deck d;
    tiny_deck(&d, dir, 1, 0, 0);
    snprintf(d.run.resume, sizeof d.run.resume, "auto");
    assert_int_equal(ckpt_resolve(&d, got, sizeof got, err, sizeof err), 0);
    path_of(file, sizeof file, dir, 1);
    assert_string_equal(got, file);
    assert_true(load_check(got, 1, 0, 0, 0, 0, 1, err));
    /* the tmp itself is refused cleanly */
    assert_false(load_check(tmp, 1, 0, 0, 0, 0, 2, err));
    if (g_rank == 0) printf("partial tmp: %s\n", err);
    assert_non_null(strstr(err, "cannot open"));
    /* next saves: 2 replaces the tmp; keep = 2 leaves 3 and 4 */
    for (int s = 2; s <= 4; s++) {
        tiny_deck(&d, dir, 1, 0, 0);
        d.checkpoint.keep = 2;
        plan p;
        assert_int_equal(make_plan(&p, &d), 0);
        bufs b;
        bufs_make(&b, &p, 0, 0, 1);
        ckpt_state st = {.step = s, .tokens_seen = 1000 * s, .data_position = 7 * s, .optim_t = s};
        assert_int_equal(ckpt_save(&p, &d, NULL, b.w, 0, b.m, b.v, 0, &st, err, sizeof err), 0);
        bufs_free(&b);
        drop_plan(&p);
    }
    for (int s = 1; s <= 4; s++) {
        path_of(file, sizeof file, dir, s);
        assert_int_equal(file_exists(file), s >= 3);
    }
    assert_false(file_exists(tmp));
    tiny_deck(&d, dir, 1, 0, 0);
    snprintf(d.run.resume, sizeof d.run.resume, "auto");
    assert_int_equal(ckpt_resolve(&d, got, sizeof got, err, sizeof err), 0);
    path_of(file, sizeof file, dir, 4);
    assert_string_equal(got, file);
    assert_true(load_check(got, g_size, 3, 0, ZERO_SHARD_PACKED, ZERO_SHARD_PACKED, 4, err));
    MPI_Barrier(MPI_COMM_WORLD);
}

static void test_resolve(void **state) {
    (void)state;
    char dir[200], got[512], err[512] = "";
    sub_dir(dir, sizeof dir, "fresh");
    deck d;
    tiny_deck(&d, dir, 1, 0, 0);
    got[0] = 'x';
    assert_int_equal(ckpt_resolve(&d, got, sizeof got, err, sizeof err), 0); /* resume = "" */
    assert_string_equal(got, "");
    snprintf(d.run.resume, sizeof d.run.resume, "auto");
    assert_int_equal(ckpt_resolve(&d, got, sizeof got, err, sizeof err), 0); /* nothing yet: fresh */
    assert_string_equal(got, "");
    snprintf(d.run.resume, sizeof d.run.resume, "%s/nope.h5", dir);
    assert_int_equal(ckpt_resolve(&d, got, sizeof got, err, sizeof err), -1);
    assert_non_null(strstr(err, "nope.h5"));
}

/* Bytes flipped inside one dataset's chunk: the load names that dataset. */
static void corrupt_and_load(const char *src, const char *dst, const char *dset, int ep, int zero) {
    char err[512] = "";
    if (g_rank == 0) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", src, dst);
        assert_int_equal(system(cmd), 0);
        hid_t f = H5Fopen(dst, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t ds = H5Dopen2(f, dset, H5P_DEFAULT);
        hsize_t off[3];
        unsigned mask;
        haddr_t addr;
        hsize_t size;
        hid_t sp = H5Dget_space(ds);
        assert_true(H5Dget_chunk_info(ds, sp, 0, off, &mask, &addr, &size) >= 0);
        H5Sclose(sp);
        H5Dclose(ds);
        H5Fclose(f);
        FILE *fp = fopen(dst, "r+b");
        assert_non_null(fp);
        fseek(fp, (long)(addr + size / 2), SEEK_SET);
        unsigned char c[2];
        assert_int_equal(fread(c, 1, 2, fp), 2);
        c[0] ^= 0x5a;
        c[1] ^= 0x81;
        fseek(fp, (long)(addr + size / 2), SEEK_SET);
        fwrite(c, 1, 2, fp);
        fclose(fp);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    assert_false(load_check(dst, ep, zero, 0, WL[zero], OL[zero], 9, err));
    if (g_rank == 0) printf("corrupted %s: %s\n", dset, err);
    assert_non_null(strstr(err, dset));
}

static void test_corruption_truncation(void **state) {
    (void)state;
    char dir[300], file[400], bad[400], err[512] = "";
    sub_dir(dir, sizeof dir, "corrupt");
    assert_int_equal(save_as(dir, g_size, 3, 0, 9, ZERO_SHARD_PACKED, ZERO_SHARD_PACKED, err), 0);
    path_of(file, sizeof file, dir, 9);
    assert_true(load_check(file, 1, 0, 0, 0, 0, 9, err));
    snprintf(bad, sizeof bad, "%s/bad.h5", dir);
    /* an expert tensor: at EP > 1 only its owners read it */
    corrupt_and_load(file, bad, "/model/layers/2/mlp/experts/down_proj/weight", g_size, 3);
    corrupt_and_load(file, bad, "/model/layers/2/mlp/experts/down_proj/weight", 1, 0);
    corrupt_and_load(file, bad, "/optim/exp_avg_sq/layers/0/self_attn/kv_b_proj/weight", 1, 1);
    corrupt_and_load(file, bad, "/model/embed_tokens/weight", g_size, 3);
    /* truncated: the file is refused by name */
    if (g_rank == 0) {
        struct stat sb;
        stat(file, &sb);
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "head -c %lld '%s' > '%s'", (long long)sb.st_size * 2 / 3, file, bad);
        assert_int_equal(system(cmd), 0);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    assert_false(load_check(bad, 1, 0, 0, 0, 0, 9, err));
    if (g_rank == 0) printf("truncated: %s\n", err);
    assert_non_null(strstr(err, "bad.h5"));
    assert_false(load_check("/nonexistent/step_00000001.h5", 1, 0, 0, 0, 0, 9, err));
    assert_non_null(strstr(err, "No such file"));
}

static void test_shape_mismatch(void **state) {
    (void)state;
    char dir[300], file[400], err[512] = "";
    sub_dir(dir, sizeof dir, "shape");
    assert_int_equal(save_as(dir, 1, 0, 0, 10, 0, 0, err), 0);
    path_of(file, sizeof file, dir, 10);
    deck d;
    plan p;
    bufs b;
    tiny_deck(&d, dir, 1, 0, 0);
    d.model.n_routed_experts = 16;
    assert_int_equal(make_plan(&p, &d), 0);
    bufs_make(&b, &p, 0, 0, 0);
    assert_int_equal(ckpt_load(&p, &d, file, b.w, 0, b.m, b.v, 0, NULL, err, sizeof err), -1);
    if (g_rank == 0) printf("E mismatch: %s\n", err);
    assert_string_equal(err, "checkpoint step_00000010.h5: model.layers.1.mlp.gate.weight has shape [8,16], deck gives [16,16]");
    bufs_free(&b);
    drop_plan(&p);
    tiny_deck(&d, dir, 1, 0, 0);
    d.model.num_hidden_layers = 4; /* deck has one more layer */
    assert_int_equal(make_plan(&p, &d), 0);
    bufs_make(&b, &p, 0, 0, 0);
    assert_int_equal(ckpt_load(&p, &d, file, b.w, 0, NULL, NULL, 0, NULL, err, sizeof err), -1);
    if (g_rank == 0) printf("layers mismatch: %s\n", err);
    assert_string_equal(err, "checkpoint step_00000010.h5: model.layers.4.enorm.weight is missing "
                             "(dataset /model/layers/4/enorm/weight; the deck's model has it)");
    bufs_free(&b);
    drop_plan(&p);
    tiny_deck(&d, dir, 1, 0, 0);
    d.model.num_nextn_predict_layers = 0; /* file has an MTP layer the deck lacks */
    assert_int_equal(make_plan(&p, &d), 0);
    bufs_make(&b, &p, 0, 0, 0);
    assert_int_equal(ckpt_load(&p, &d, file, b.w, 0, NULL, NULL, 0, NULL, err, sizeof err), -1);
    if (g_rank == 0) printf("MTP mismatch: %s\n", err);
    assert_non_null(strstr(err, "is in the file but not in the deck's model"));
    bufs_free(&b);
    drop_plan(&p);
}

/* ---- CLI mode (it_ckpt.sh) ------------------------------------------------ */

static int cli(int argc, char **argv) {
    char err[512] = "";
    if (getenv("CKPT_SCALE")) g_scale = atoi(getenv("CKPT_SCALE")) > 0 ? atoi(getenv("CKPT_SCALE")) : 1;
    if (argc >= 6 && !strcmp(argv[1], "save")) {
        int ep = atoi(argv[3]), z = atoi(argv[4]), lora = argc > 6;
        int rc = save_as(argv[2], ep, z, lora, atoll(argv[5]), zero_params_layout(z), zero_optim_layout(z, 0), err);
        if (g_rank == 0) printf("%s np=%d ep=%d zero=%d: %s (%.3f s, %.0f bytes)\n", rc ? "FAIL" : "saved", g_size,
                                ep, z, rc ? err : "ok", ckpt_last_stats()->seconds, ckpt_last_stats()->bytes);
        return rc ? 1 : 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "load")) {
        int ep = atoi(argv[3]), z = atoi(argv[4]), lora = argc > 5;
        const char *b = strrchr(argv[2], '_');
        int64_t step = b ? atoll(b + 1) : 0;
        int ok = load_check(argv[2], ep, z, lora, zero_params_layout(z), zero_optim_layout(z, 0), step, err);
        if (g_rank == 0)
            printf("%s np=%d ep=%d zero=%d %s %s(%.3f s, %.0f bytes)\n", ok ? "OK" : "FAIL", g_size, ep, z, argv[2],
                   ok ? "" : err, ckpt_last_stats()->seconds, ckpt_last_stats()->bytes);
        return ok ? 0 : 1;
    }
    if (argc >= 2 && !strcmp(argv[1], "names")) { /* tensor index -> name (it_ckpt_h5py.sh recomputes values) */
        deck d;
        plan p;
        tiny_deck(&d, "/nonexistent", 1, 0, argc > 2);
        if (make_plan(&p, &d)) return 1;
        if (g_rank == 0)
            for (int i = 0; i < p.params.n; i++) printf("%d %s\n", i, p.params.t[i].name);
        drop_plan(&p);
        return 0;
    }
    fprintf(stderr, "usage: %s [save DIR EP ZERO STEP [lora] | load FILE EP ZERO [lora] | names [lora]]\n", argv[0]);
    return 2;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    setenv("HDF5_USE_FILE_LOCKING", "FALSE", 0);
    if (argc > 1) {
        int rc = cli(argc, argv);
        MPI_Finalize();
        return rc;
    }
    /* small slabs and chunks: the per-call slab loop and multi-chunk datasets get exercised */
    setenv("DSV3_CKPT_SLAB_BYTES", g_size == 1 ? "1000" : "100000", 0); /* many tiny calls are slow oversubscribed */
    setenv("DSV3_CKPT_CHUNK_BYTES", "1000", 0);
    if (g_rank == 0) {
        snprintf(g_dir, sizeof g_dir, "%s/dsv3-ckpt-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(g_dir)) g_dir[0] = 0;
    }
    MPI_Bcast(g_dir, sizeof g_dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (!g_dir[0]) {
        MPI_Finalize();
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_layouts),  cmocka_unit_test(test_lora_compact),
        cmocka_unit_test(test_layout_and_attrs),   cmocka_unit_test(test_model_only),
        cmocka_unit_test(test_crash_tmp_and_keep), cmocka_unit_test(test_resolve),
        cmocka_unit_test(test_corruption_truncation), cmocka_unit_test(test_shape_mismatch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_rank == 0 && !getenv("DSV3_KEEP_TMP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd)) fprintf(stderr, "could not remove %s\n", g_dir);
    }
    MPI_Finalize();
    return rc;
}

/* dsv3-refcheck — check the model against an independent implementation.
 *
 *   bin/dsv3-refcheck FIXTURE.h5
 *
 * The fixture (written by tools/reference/make_fixture.py with Hugging Face
 * transformers) holds a DeepSeek-V3 config.json, weights by HF name, a batch,
 * and what transformers computed: logits, loss, every gradient, and the losses
 * after 3 AdamW steps. This tool builds the model from the fixture's own config
 * (MTP off, balance loss off, bias updates off, constant LR, no clipping),
 * loads the weights, repeats the computation in fp32 and compares:
 *   logits relative L2 error <= 1e-5, |loss diff| <= 1e-5,
 *   every gradient tensor's relative L2 error <= 1e-4 (routed experts: per expert),
 *   each step loss within 1e-5.
 * Exit 0 when all hold, 1 on a mismatch or a bad fixture, 2 on usage errors.
 *
 * Fixture conventions (see make_fixture.py): /inputs/labels are HF labels,
 * shifted inside the model (target of position t is labels[t+1]); routed
 * experts are stored per expert (model.layers.L.mlp.experts.E.gate_proj.weight)
 * and copied into the model's stacked [E, out, in] tensors; step_losses[k] is
 * the loss after k+1 optimizer steps on the same batch.
 */
#include <hdf5.h>
#include <jansson.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/ckpt.h"
#include "../src/deck.h"
#include "../src/hfconfig.h"
#include "../src/model/model.h"
#include "../src/model/params.h"
#include "../src/optim.h"
#include "../src/safetensors.h"

#define TOL_LOGITS 1e-5
#define TOL_LOSS 1e-5
#define TOL_GRAD 1e-4
#define TOL_STEP 1e-5
#define MAX_STEPS 64

static const char *g_file = "";

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dsv3-refcheck: %s: ", g_file);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    MPI_Finalize();
    exit(1);
}

/* ---------- HDF5 helpers ---------- */

static int ds_exists(hid_t f, const char *path) {
    /* check every component: H5Lexists on a path with a missing group is an error */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *s = strchr(buf + 1, '/');; s = strchr(s + 1, '/')) {
        if (s) *s = 0;
        if (H5Lexists(f, buf, H5P_DEFAULT) <= 0) return 0;
        if (!s) return 1;
        *s = '/';
    }
}

/* Reads dataset `path` of exactly `ndim` dims `dims` (converted to `mtype`) into out. */
static void read_ds(hid_t f, const char *path, hid_t mtype, int ndim, const hsize_t *dims, void *out) {
    if (!ds_exists(f, path)) die("missing dataset %s", path);
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0) die("cannot open dataset %s", path);
    hid_t sp = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(sp);
    hsize_t got[8] = {0};
    if (nd >= 0 && nd <= 8) H5Sget_simple_extent_dims(sp, got, NULL);
    int ok = nd == ndim;
    for (int i = 0; ok && i < nd; i++) ok = got[i] == dims[i];
    if (!ok) {
        char want[128] = "", have[128] = "";
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%llu", i ? "," : "", (unsigned long long)dims[i]);
        for (int i = 0; i < nd && i < 8; i++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%llu", i ? "," : "", (unsigned long long)got[i]);
        die("dataset %s has shape [%s], expected [%s]", path, have, want);
    }
    if (H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) die("cannot read dataset %s", path);
    H5Sclose(sp);
    H5Dclose(d);
}

/* Shape of a dataset (up to 3 dims); returns ndim. */
static int ds_shape(hid_t f, const char *path, hsize_t *dims) {
    if (!ds_exists(f, path)) die("missing dataset %s", path);
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    hid_t sp = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd < 0 || nd > 3) die("dataset %s has %d dimensions", path, nd);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    H5Dclose(d);
    return nd;
}

static double attr_double(hid_t f, const char *name) {
    if (H5Aexists(f, name) <= 0) die("missing root attribute %s", name);
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    double v = 0;
    if (H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0) die("root attribute %s is not a number", name);
    H5Aclose(a);
    return v;
}

/* String attribute (variable- or fixed-length); malloc'd. */
static char *attr_string(hid_t f, const char *name) {
    if (H5Aexists(f, name) <= 0) die("missing root attribute %s", name);
    hid_t a = H5Aopen(f, name, H5P_DEFAULT), t = H5Aget_type(a);
    if (H5Tget_class(t) != H5T_STRING) die("root attribute %s is not a string", name);
    char *out;
    if (H5Tis_variable_str(t) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));
        char *p = NULL;
        if (H5Aread(a, mt, &p) < 0 || !p) die("cannot read root attribute %s", name);
        out = strdup(p);
        H5free_memory(p);
        H5Tclose(mt);
    } else {
        size_t n = H5Tget_size(t);
        out = calloc(n + 1, 1);
        hid_t mt = H5Tcopy(t);
        if (H5Aread(a, mt, out) < 0) die("cannot read root attribute %s", name);
        H5Tclose(mt);
    }
    H5Tclose(t);
    H5Aclose(a);
    return out;
}

/* ---------- device memory (ops.h): the model's tensors are device memory; this
 * tool reads and writes them through host buffers ---------- */

/* n floats of device memory at dev into host, returned */
static float *dev_to_host(float *host, const float *dev, size_t n) {
    ops_to_host(host, dev, n * sizeof *host);
    return host;
}

/* ---------- comparisons ---------- */

static double rel_l2(const float *a, const float *ref, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - (double)ref[i];
        d += e * e;
        r += (double)ref[i] * ref[i];
    }
    if (r == 0) return d == 0 ? 0 : INFINITY;
    return sqrt(d / r);
}

typedef struct {
    char name[256];
    double err;
} gerr;

static int gerr_cmp(const void *a, const void *b) {
    double x = ((const gerr *)a)->err, y = ((const gerr *)b)->err;
    return (x < y) - (x > y);
}

/* name of expert e's tensor in the checkpoint: "...mlp.experts.gate_proj.weight" -> "...mlp.experts.E.gate_proj.weight" */
static void expert_name(char *out, size_t n, const char *stacked, int e) {
    const char *p = strstr(stacked, ".experts.");
    size_t k = (size_t)(p - stacked) + strlen(".experts.");
    snprintf(out, n, "%.*s%d.%s", (int)k, stacked, e, stacked + k);
}

/* Target counts of the main head and each MTP depth; lambda/D weighting (train.c's). */
static int64_t g_cnt[1 + MODEL_MAX_MTP];
static int g_D;
static double g_lambda;

/* The total loss: lm + lambda/D * sum_k mtp_k + balance (mean over the B sequences). */
static double step_loss(model *m, const model_batch *bt, model_scales sc, int backward) {
    model_sums s;
    memset(&s, 0, sizeof s);
    if (backward) model_zero_grad(m);
    model_step(m, bt, sc, backward, &s);
    if (!s.lm_count) return NAN;
    double l = s.lm_sum / (double)s.lm_count;
    for (int k = 1; k <= g_D; k++)
        if (g_cnt[k]) l += g_lambda / g_D * s.mtp_sum[k - 1] / (double)g_cnt[k];
    return l + s.bal_sum / (double)bt->B;
}

/* --logits CKPT.h5 EXPECTED.safetensors: the logits of a dsv3 checkpoint (e.g.
 * from dsv3-import) on the expected file's input_ids [B,T] against its logits
 * [B,T,V] (transformers' forward of the same weights, fp32). */
static int logits_mode(const char *ckpt, const char *expected, int write) {
    g_file = ckpt;
    char err[2048];
    ckpt_in *in;
    if (ckpt_in_open(&in, ckpt, err, sizeof err)) die("%s", err);
    st_file ex;
    memset(&ex, 0, sizeof ex);
    int ii = -1, li = -1, B = 2, T = 16, V = 0;
    if (!write) {
        if (st_open(&ex, expected, err, sizeof err)) die("%s", err);
        ii = st_find(&ex, "input_ids"), li = st_find(&ex, "logits");
        if (ii < 0 || li < 0 || ex.t[ii].ndim != 2 || ex.t[li].ndim != 3) die("%s: want input_ids [B,T] and logits [B,T,V]", expected);
        B = (int)ex.t[ii].shape[0], T = (int)ex.t[ii].shape[1], V = (int)ex.t[li].shape[2];
        if (ex.t[ii].dtype != ST_I64 || ex.t[li].dtype != ST_F32) die("%s: input_ids must be I64, logits F32", expected);
    }
    char o1[64], o2[64], o3[64], *over[5] = {"parallel.expert_parallel=1", "parallel.zero_stage=0", o1, o2, o3};
    snprintf(o1, sizeof o1, "train.micro_batch=%d", B);
    snprintf(o2, sizeof o2, "train.global_batch=%d", B);
    snprintf(o3, sizeof o3, "train.seq_len=%d", T);
    deck d;
    if (!ckpt_in_deck(in) || deck_load_string(&d, ckpt_in_deck(in), ckpt, 5, over, 1, err, sizeof err))
        die("its deck: %s", ckpt_in_deck(in) ? err : "missing");
    if (write) V = d.model.vocab_size;
    if (d.model.vocab_size != V) die("vocab %d, the expected logits have %d", d.model.vocab_size, V);
    model *m;
    model_opts mo = deck_model_opts(&d);
    if (model_create(&m, &mo, NULL, err, sizeof err)) die("model_create: %s", err);
    const param_table *pt = model_params(m);
    int loaded = 0;
    size_t maxn = 0;
    for (int i = 0; i < pt->n; i++) maxn = (size_t)pt->t[i].numel > maxn ? (size_t)pt->t[i].numel : maxn;
    float *hbuf = malloc(maxn * sizeof *hbuf); /* host staging of one tensor */
    if (!hbuf) die("out of memory");
    for (int i = 0; i < ckpt_in_count(in); i++) {
        const ckpt_tensor_info *t = ckpt_in_tensor(in, i);
        int k = params_find(pt, t->name);
        if (k < 0) die("%s is not a tensor of its deck's model", t->name);
        float *w = model_tensor(m, t->name, NULL);
        if (ckpt_in_read(in, i, 0, t->shape[0], hbuf, 0, err, sizeof err)) die("%s", err);
        ops_to_device(w, hbuf, (size_t)pt->t[k].numel * sizeof *hbuf);
        loaded++;
    }
    free(hbuf);
    if (loaded != pt->n) die("%d tensors loaded, the model has %d", loaded, pt->n);
    int64_t *ids64 = malloc(sizeof(int64_t) * (size_t)B * T);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * T), *tgt = malloc(sizeof(int32_t) * (size_t)B * T);
    float *ref = malloc(sizeof(float) * (size_t)B * T * V), *lg = malloc(sizeof(float) * (size_t)B * T * V);
    if (write) /* fixed token ids: a reference batch from this checkpoint */
        for (int i = 0; i < B * T; i++) ids64[i] = (int64_t)((i * 7919 + 13) % V);
    else if (st_read(&ex, ii, 0, st_bytes(&ex.t[ii]), ids64, err, sizeof err) ||
             st_read(&ex, li, 0, st_bytes(&ex.t[li]), ref, err, sizeof err))
        die("%s", err);
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)ids64[i];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tgt[b * T + t] = t + 1 < T ? tok[b * T + t + 1] : -100;
    model_batch bt = {.tokens = tok, .targets = tgt, .B = B, .T = T};
    model_scales sc;
    memset(&sc, 0, sizeof sc);
    model_sums s;
    memset(&s, 0, sizeof s);
    model_step(m, &bt, sc, 0, &s);
    dev_to_host(lg, model_logits(m), (size_t)B * T * V);
    if (write) {
        st_writer *w;
        int64_t sh_i[2] = {B, T}, sh_l[3] = {B, T, V};
        if (st_writer_open(&w, expected, err, sizeof err)) die("%s", err);
        st_writer_meta(w, "format", "pt");
        st_writer_add(w, "input_ids", ST_I64, 2, sh_i);
        st_writer_add(w, "logits", ST_F32, 3, sh_l);
        if (st_writer_begin(w, err, sizeof err) ||
            st_writer_put(w, "input_ids", 0, ids64, sizeof(int64_t) * (size_t)B * T, err, sizeof err) ||
            st_writer_put(w, "logits", 0, lg, sizeof(float) * (size_t)B * T * V, err, sizeof err) ||
            st_writer_close(w, 1, err, sizeof err))
            die("%s", err);
        printf("dsv3-refcheck --logits %s: %dx%d logits of this checkpoint written to %s\n", ckpt, B, T, expected);
        free(ids64), free(tok), free(tgt), free(ref), free(lg);
        model_free(m);
        deck_free(&d);
        ckpt_in_close(in);
        MPI_Finalize();
        return 0;
    }
    double e = rel_l2(lg, ref, (size_t)B * T * V);
    int ok = e <= 1e-5;
    printf("dsv3-refcheck --logits %s\n  %d tensors loaded; batch %dx%d, V=%d\n  logits      rel L2 error %.3e  (tol 1e-05)  %s\n"
           "dsv3-refcheck: %s\n", ckpt, loaded, B, T, V, e, ok ? "ok" : "FAIL", ok ? "PASS" : "FAIL");
    free(ids64), free(tok), free(tgt), free(ref), free(lg);
    model_free(m);
    deck_free(&d);
    st_close(&ex);
    ckpt_in_close(in);
    MPI_Finalize();
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc == 4 && !strcmp(argv[1], "--logits")) return logits_mode(argv[2], argv[3], 0);
    if (argc == 5 && !strcmp(argv[1], "--logits") && !strcmp(argv[4], "--write")) return logits_mode(argv[2], argv[3], 1);
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: dsv3-refcheck FIXTURE.h5   (written by tools/reference/make_fixture.py)\n"
                        "       dsv3-refcheck --logits CKPT.h5 EXPECTED.safetensors [--write]   (input_ids, logits;\n"
                        "       --write: this checkpoint's logits on fixed ids become EXPECTED)\n");
        MPI_Finalize();
        return 2;
    }
    g_file = argv[1];
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our messages name the dataset; no HDF5 stack dumps */
    hid_t f = H5Fopen(g_file, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) die("cannot open as HDF5");

    /* config and optimizer settings */
    char *cfg_text = attr_string(f, "config");
    /* an MTP fixture (make_mtp_fixture.py) carries lambda and alpha: MTP depth from its config,
     * the balance loss on; the transformers fixture has neither (both off) */
    int mtp_fx = H5Aexists(f, "mtp_loss_weight") > 0;
    double lambda = mtp_fx ? attr_double(f, "mtp_loss_weight") : 0.0, alpha = mtp_fx ? attr_double(f, "aux_loss_alpha") : 0.0;
    char cerr[512];
    char *mg = hf_config_model_group(cfg_text, "root attribute config", mtp_fx ? -1 : 0, cerr, sizeof cerr);
    if (!mg) die("%s", cerr);
    hsize_t idims[3];
    if (ds_shape(f, "/inputs/input_ids", idims) != 2) die("dataset /inputs/input_ids must be [B,T]");
    int B = (int)idims[0], T = (int)idims[1];
    int nsteps = H5Aexists(f, "steps") > 0 ? (int)attr_double(f, "steps") : 3;
    if (nsteps < 0 || nsteps > MAX_STEPS) die("root attribute steps = %d out of range", nsteps);

    hf_text dk = {0};
    mg[strlen(mg) - 3] = 0; /* drop "};\n": the reference's loss terms; no bias updates */
    char fl[64], fa[64];
    hf_float_literal(fl, sizeof fl, lambda);
    hf_float_literal(fa, sizeof fa, alpha);
    hf_text_add(&dk, "%s  aux_loss_alpha = %s;\n  mtp_loss_weight = %s;\n  bias_update_rate = 0.0;\n};\n", mg, fa, fl);
    /* a PEFT fixture (make_lora_fixture.py): the adapters, the base frozen */
    int lora_fx = H5Aexists(f, "lora_r") > 0;
    if (lora_fx) {
        char *tg = attr_string(f, "lora_targets"), fal[64];
        hf_float_literal(fal, sizeof fal, attr_double(f, "lora_alpha"));
        int rs = H5Aexists(f, "lora_use_rslora") > 0 && attr_double(f, "lora_use_rslora") != 0;
        hf_text_add(&dk, "lora = { enabled = true; r = %d; alpha = %s; dropout = 0.0; use_rslora = %s; targets = %s; };\n",
               (int)attr_double(f, "lora_r"), fal, rs ? "true" : "false", tg); /* a JSON list of strings is a libconfig array */
        free(tg);
    }
    /* base_dtype (make_lora_fixture.py --base-dtype): the frozen base's linear weights were
     * quantized; the fixture holds them dequantized and dsv3 keeps them in that storage */
    char base_dtype[16] = "fp32";
    if (H5Aexists(f, "base_dtype") > 0) {
        char *bd = attr_string(f, "base_dtype");
        if (strcmp(bd, "fp32") && strcmp(bd, "bf16") && strcmp(bd, "fp8"))
            die("root attribute base_dtype = \"%s\": expected fp32, bf16 or fp8", bd);
        if (!lora_fx && strcmp(bd, "fp32")) die("root attribute base_dtype = \"%s\" needs a LoRA fixture (lora_r)", bd);
        snprintf(base_dtype, sizeof base_dtype, "%s", bd);
        free(bd);
    }
    free(mg);
    char lr[64], b1[64], b2[64], ep[64], wd[64];
    hf_float_literal(lr, sizeof lr, attr_double(f, "lr"));
    hf_float_literal(b1, sizeof b1, attr_double(f, "beta1"));
    hf_float_literal(b2, sizeof b2, attr_double(f, "beta2"));
    hf_float_literal(ep, sizeof ep, attr_double(f, "eps"));
    hf_float_literal(wd, sizeof wd, attr_double(f, "weight_decay"));
    hf_text_add(&dk,
           "optimizer = { type = \"adamw\"; lr = %s; beta1 = %s; beta2 = %s; eps = %s; weight_decay = %s;"
           " grad_clip = 0.0; };\n"
           "schedule = { type = \"constant\"; warmup_steps = 0; };\n"
           "train = { micro_batch = %d; global_batch = %d; seq_len = %d; dtype = \"fp32\"; base_dtype = \"%s\"; };\n"
           "run = { steps = %d; };\n",
           lr, b1, b2, ep, wd, B, B, T, base_dtype, nsteps > 0 ? nsteps : 1);
    deck d;
    char err[1024];
    if (dk.oom) die("out of memory building the deck");
    if (deck_load_string(&d, dk.s, "fixture config", 0, NULL, 1, err, sizeof err))
        die("deck built from the config is rejected: %s\n--- deck ---\n%s", err, dk.s);
    const deck_model *c = &d.model;
    int V = c->vocab_size, E = c->n_routed_experts;

    /* inputs; targets[b,t] = labels[b,t+1] (HF shifts inside the model) */
    size_t N = (size_t)B * T;
    int32_t *ids = malloc(N * sizeof *ids), *labels = malloc(N * sizeof *labels), *tgt = malloc(N * sizeof *tgt);
    read_ds(f, "/inputs/input_ids", H5T_NATIVE_INT32, 2, idims, ids);
    read_ds(f, "/inputs/labels", H5T_NATIVE_INT32, 2, idims, labels);
    int64_t count = 0;
    for (size_t i = 0; i < N; i++) {
        if (ids[i] < 0 || ids[i] >= V) die("/inputs/input_ids[%zu] = %d outside the vocabulary [0,%d)", i, ids[i], V);
        int t = (int)(i % T);
        tgt[i] = t + 1 < T ? labels[i + 1] : -100;
        if (tgt[i] != -100 && (tgt[i] < 0 || tgt[i] >= V)) die("/inputs/labels[%zu] = %d is neither -100 nor a token", i + 1, tgt[i]);
        count += tgt[i] != -100;
    }
    if (!count) die("/inputs/labels has no counted targets");

    /* fail fast (before allocating) when the weights are not this config's */
    hsize_t edims[3];
    if (ds_shape(f, "/weights/model.embed_tokens.weight", edims) != 2 || edims[0] != (hsize_t)V ||
        edims[1] != (hsize_t)c->hidden_size)
        die("dataset /weights/model.embed_tokens.weight is not [vocab_size=%d, hidden_size=%d] of the config", V,
            c->hidden_size);
    model *m;
    model_opts mo = deck_model_opts(&d);
    if (model_create(&m, &mo, NULL, err, sizeof err)) die("model_create: %s", err);
    const param_table *pt = model_params(m);

    /* weights by HF name; stacked experts from their per-expert tensors */
    char path[512], nm[256];
    int n_loaded = 0;
    int64_t st_n = 0, st_diff = 0;
    int n_stored = 0;
    size_t maxn = 0;
    for (int i = 0; i < pt->n; i++) maxn = (size_t)pt->t[i].numel > maxn ? (size_t)pt->t[i].numel : maxn;
    float *buf = malloc(maxn * sizeof *buf); /* host staging of one tensor (weights, then gradients) */
    if (!buf) die("out of memory");
    for (int i = 0; i < pt->n; i++) {
        const param_spec *s = &pt->t[i];
        float *w = model_tensor(m, s->name, NULL); /* LoRA fixtures hold the adapters too */
        if (s->flags & P_STORED) { /* base_dtype bf16/fp8: into the frozen store through its quantizer */
            int ne = (s->flags & P_EXPERT) ? E : 1;
            hsize_t dims[2] = {(hsize_t)s->shape[s->ndim - 2], (hsize_t)s->shape[s->ndim - 1]};
            size_t nq = (size_t)(dims[0] * dims[1]), nsc = 0;
            float *tmp = malloc(nq * sizeof *tmp), *sch = NULL;
            void *dh = malloc(nq * sizeof(uint16_t)); /* the stored codes, back on the host */
            if (!tmp || !dh) die("out of memory");
            for (int e = 0; e < ne; e++) {
                if (s->flags & P_EXPERT) expert_name(nm, sizeof nm, s->name, e);
                else snprintf(nm, sizeof nm, "%s", s->name);
                snprintf(path, sizeof path, "/weights/%s", nm);
                read_ds(f, path, H5T_NATIVE_FLOAT, 2, dims, tmp);
                ops_weight sw = model_stored_weight(m, s->name, e);
                ops_weight_store_rows(&sw, 0, sw.out, tmp);
                /* the fixture's values came out of the same quantizer: stored again they must come back exactly */
                int nb = (sw.in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
                ops_to_host(dh, sw.data, nq * (sw.dtype == OPS_BF16 ? 2 : 1));
                if (sw.dtype == OPS_FP8_E4M3) {
                    nsc = (size_t)((sw.out + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK) * nb;
                    if (!sch && !(sch = malloc(nsc * sizeof *sch))) die("out of memory");
                    ops_to_host(sch, sw.scale, nsc * sizeof *sch);
                }
                for (size_t q = 0; q < nq; q++) {
                    size_t r = q / dims[1], cc = q % dims[1];
                    float v = sw.dtype == OPS_BF16 ? ops_bf16_to_f32(((const uint16_t *)dh)[q])
                                                    : ops_e4m3_to_f32(((const uint8_t *)dh)[q]) *
                                                          sch[(r / OPS_FP8_BLOCK) * (size_t)nb + cc / OPS_FP8_BLOCK];
                    st_diff += v != tmp[q];
                    st_n++;
                }
                n_loaded++;
            }
            free(tmp), free(dh), free(sch);
            n_stored++;
            continue;
        }
        if (s->flags & P_EXPERT) {
            hsize_t dims[2] = {(hsize_t)s->shape[1], (hsize_t)s->shape[2]};
            for (int e = 0; e < E; e++) {
                expert_name(nm, sizeof nm, s->name, e);
                snprintf(path, sizeof path, "/weights/%s", nm);
                read_ds(f, path, H5T_NATIVE_FLOAT, 2, dims, buf);
                ops_to_device(w + (size_t)e * dims[0] * dims[1], buf, (size_t)(dims[0] * dims[1]) * sizeof *buf);
                n_loaded++;
            }
        } else {
            hsize_t dims[3] = {(hsize_t)s->shape[0], (hsize_t)s->shape[1], (hsize_t)s->shape[2]};
            snprintf(path, sizeof path, "/weights/%s", s->name);
            read_ds(f, path, H5T_NATIVE_FLOAT, s->ndim, dims, buf);
            ops_to_device(w, buf, (size_t)s->numel * sizeof *buf);
            n_loaded++;
        }
    }
    H5G_info_t gi;
    if (H5Gget_info_by_name(f, "/weights", &gi, H5P_DEFAULT) < 0) die("missing group /weights");
    if ((int)gi.nlinks != n_loaded)
        die("/weights holds %llu tensors, the config's model has %d: the config does not describe these weights",
            (unsigned long long)gi.nlinks, n_loaded);

    /* expected values */
    hsize_t ldims[3] = {(hsize_t)B, (hsize_t)T, (hsize_t)V}, one[3] = {1, 1, 1}, sdims = (hsize_t)nsteps;
    float *ref_logits = malloc(N * V * sizeof *ref_logits), ref_loss = 0, ref_steps[MAX_STEPS];
    read_ds(f, "/expected/logits", H5T_NATIVE_FLOAT, 3, ldims, ref_logits);
    int lnd = ds_shape(f, "/expected/loss", one); /* a scalar, or [1] */
    if (lnd > 1 || one[0] != 1) die("dataset /expected/loss must be a scalar");
    read_ds(f, "/expected/loss", H5T_NATIVE_FLOAT, lnd, one, &ref_loss);
    read_ds(f, "/expected/step_losses", H5T_NATIVE_FLOAT, 1, &sdims, ref_steps);

    if (n_stored)
        printf("dsv3-refcheck: base_dtype %s: %d frozen linear weights held in it; requantizing the fixture's "
               "dequantized values gives them back exactly for %lld of %lld elements\n", base_dtype, n_stored,
               (long long)(st_n - st_diff), (long long)st_n);
    if (g_D) printf("dsv3-refcheck: MTP depth %d (lambda %g) and the sequence-wise balance loss (alpha %g) on\n", g_D, lambda, alpha);
    printf("dsv3-refcheck %s\n  model: V=%d H=%d layers=%d (%d dense) heads=%d q_lora=%d kv_lora=%d experts=%d "
           "(groups %d, keep %d, top-%d) shared=%d rope=%s; batch %dx%d, %lld counted targets\n",
           g_file, V, c->hidden_size, c->num_hidden_layers, c->first_k_dense_replace, c->num_attention_heads,
           c->q_lora_rank, c->kv_lora_rank, E, c->n_group, c->topk_group, c->num_experts_per_tok,
           c->n_shared_experts, c->rope_scaling_type, B, T, (long long)count);

    /* forward + backward */
    model_batch bt = {.tokens = ids, .targets = tgt, .B = B, .T = T};
    model_scales sc;
    memset(&sc, 0, sizeof sc);
    sc.lm = (float)(1.0 / (double)count);
    g_D = c->num_nextn_predict_layers, g_lambda = lambda;
    for (int k = 1; k <= g_D; k++) {
        g_cnt[k] = model_count_targets(tgt, B, T, k);
        sc.mtp[k - 1] = g_cnt[k] ? (float)(lambda / g_D / (double)g_cnt[k]) : 0.0f;
    }
    sc.bal = 1.0f / (float)B;
    int fails = st_diff != 0; /* a stored base that does not hold the fixture's values */
    step_loss(m, &bt, sc, 0); /* the main logits (with MTP, the heads' backward reuses that buffer) */
    float *logits = malloc(N * V * sizeof *logits);
    if (!logits) die("out of memory");
    double e_log = rel_l2(dev_to_host(logits, model_logits(m), N * V), ref_logits, N * V);
    free(logits);
    double loss = step_loss(m, &bt, sc, 1);
    fails += !(e_log <= TOL_LOGITS);
    printf("  logits      rel L2 error %.3e  (tol %.0e)  %s\n", e_log, TOL_LOGITS, e_log <= TOL_LOGITS ? "ok" : "FAIL");
    double e_loss = fabs(loss - ref_loss);
    fails += !(e_loss <= TOL_LOSS);
    printf("  loss        %.7f vs %.7f  |diff| %.3e  (tol %.0e)  %s\n", loss, (double)ref_loss, e_loss, TOL_LOSS,
           e_loss <= TOL_LOSS ? "ok" : "FAIL");

    /* gradients, one entry per checkpoint tensor */
    gerr *ge = calloc((size_t)n_loaded, sizeof *ge);
    int frozen_clean = 0;
    int ng = 0, gfail = 0;
    float *gh = malloc(maxn * sizeof *gh); /* the model's gradient, on the host */
    if (!gh) die("out of memory");
    for (int i = 0; i < pt->n; i++) {
        const param_spec *s = &pt->t[i];
        if (s->flags & P_NOGRAD) continue; /* router bias: a buffer, no gradient */
        float *g = NULL;
        model_tensor(m, s->name, &g);
        if (g) dev_to_host(gh, g, (size_t)s->numel_local);
        if (lora_fx && (s->flags & P_FROZEN)) { /* the frozen base: no weight gradient is ever computed */
            for (size_t q = 0; g && q < (size_t)s->numel_local; q++)
                if (gh[q] != 0.0f) die("the frozen %s got a gradient (element %zu = %g)", s->name, q, gh[q]);
            frozen_clean++;
            continue;
        }
        if (!lora_fx && (s->flags & P_LORA)) continue;
        int ne = (s->flags & P_EXPERT) ? E : 1;
        for (int e = 0; e < ne; e++) {
            size_t n = (size_t)s->numel / ne;
            hsize_t dims[3] = {(hsize_t)s->shape[0], (hsize_t)s->shape[1], (hsize_t)s->shape[2]};
            if (s->flags & P_EXPERT) {
                expert_name(nm, sizeof nm, s->name, e);
                dims[0] = (hsize_t)s->shape[1];
                dims[1] = (hsize_t)s->shape[2];
            } else {
                snprintf(nm, sizeof nm, "%s", s->name);
            }
            snprintf(path, sizeof path, "/expected/grads/%s", nm);
            read_ds(f, path, H5T_NATIVE_FLOAT, (s->flags & P_EXPERT) ? 2 : s->ndim, dims, buf);
            snprintf(ge[ng].name, sizeof ge[ng].name, "%s", nm);
            ge[ng].err = rel_l2(gh + (size_t)e * n, buf, n);
            gfail += !(ge[ng].err <= TOL_GRAD);
            ng++;
        }
    }
    qsort(ge, (size_t)ng, sizeof *ge, gerr_cmp);
    fails += gfail;
    printf("  gradients   %d tensors, worst rel L2 error %.3e  (tol %.0e)  %s\n", ng, ng ? ge[0].err : 0.0, TOL_GRAD,
           gfail ? "FAIL" : "ok");
    if (lora_fx) printf("  frozen base %d tensors, no gradient computed (all zero)\n", frozen_clean);
    int shown = 0; /* the worst five, and failures up to a dozen */
    for (; shown < ng && (shown < 5 || (shown < 12 && ge[shown].err > TOL_GRAD)); shown++)
        printf("      %.3e  %s%s\n", ge[shown].err, ge[shown].name, ge[shown].err > TOL_GRAD ? "  FAIL" : "");
    if (gfail > shown) printf("      ... and %d more failing tensors\n", gfail - shown);

    /* AdamW steps on the same batch; step_losses[k] = loss after k+1 steps */
    optim_state os;
    if (optim_init(&os, pt->total_local)) die("out of memory for the optimizer state");
    float *w = model_param_buffer(m), *g = model_grad_buffer(m);
    for (int k = 0; k < nsteps; k++) {
        if (k > 0) step_loss(m, &bt, sc, 1);
        os.t++;
        optim_step(&d, pt, w, g, os.m, os.v, 0, pt->total_local, os.t, optim_lr(&d, k), 1.0f);
        double l = step_loss(m, &bt, sc, 0), e = fabs(l - ref_steps[k]);
        fails += !(e <= TOL_STEP);
        printf("  step %d      loss %.7f vs %.7f  |diff| %.3e  (tol %.0e)  %s\n", k + 1, l, (double)ref_steps[k], e,
               TOL_STEP, e <= TOL_STEP ? "ok" : "FAIL");
    }
    printf("dsv3-refcheck: %s\n", fails ? "FAIL" : "PASS");

    optim_free(&os);
    free(buf), free(gh);
    free(ge);
    free(ref_logits);
    free(ids);
    free(labels);
    free(tgt);
    model_free(m);
    deck_free(&d);
    free(dk.s);
    free(cfg_text);
    H5Fclose(f);
    MPI_Finalize();
    return fails ? 1 : 0;
}

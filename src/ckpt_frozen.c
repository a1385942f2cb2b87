/* ckpt_frozen.c — the frozen store in checkpoints, in its storage precision
 * (ckpt_frozen.h). */
#include "ckpt_frozen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "ops.h"

/* HF name -> /model/<path> of the weight and of its weight_scale_inv. */
static void paths(const param_spec *t, char *data, char *scale, size_t len) {
    const char *n = strncmp(t->name, "model.", 6) == 0 ? t->name + 6 : t->name;
    char rel[200];
    snprintf(rel, sizeof rel, "%s", n);
    for (char *c = rel; *c; c++)
        if (*c == '.') *c = '/';
    snprintf(data, len, "/model/%s", rel);
    size_t k = strlen(rel);
    if (k > 7 && strcmp(rel + k - 7, "/weight") == 0) rel[k - 7] = 0;
    snprintf(scale, len, "/model/%s/weight_scale_inv", rel);
}

/* bf16 in HDF5: a custom float type (design §5), so h5py/h5dump and an
 * H5Dread into floats convert it themselves. The one definition (ckpt.c too). */
hid_t ckpt_frozen_bf16_type(void) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 7, 8, 0, 7);
    H5Tset_offset(t, 0);
    H5Tset_precision(t, 16);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 127);
    return t;
}

int ckpt_frozen_is_scale(const param_table *pt, const char *hf) {
    size_t k = strlen(hf);
    const char *suf = ".weight_scale_inv";
    if (k <= strlen(suf) || strcmp(hf + k - strlen(suf), suf)) return 0;
    char w[256];
    snprintf(w, sizeof w, "%.*s.weight", (int)(k - strlen(suf)), hf);
    int i = params_find(pt, w);
    return i >= 0 && (pt->t[i].flags & P_STORED);
}

typedef struct {
    int64_t out, in, nbr, nbc;
    size_t esz, per, nsc; /* bytes per element, elements and scales per matrix */
} dims;
static dims dims_of(const param_spec *t) {
    dims d;
    d.out = t->shape[t->ndim - 2], d.in = t->shape[t->ndim - 1];
    d.nbr = (d.out + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK, d.nbc = (d.in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    d.esz = t->dtype == OPS_BF16 ? 2 : 1;
    d.per = (size_t)d.out * (size_t)d.in;
    d.nsc = (size_t)d.nbr * (size_t)d.nbc;
    return d;
}

/* Storage view of local matrix g of tensor t in the store. */
static ops_weight view(const param_spec *t, uint8_t *store, int g) {
    dims d = dims_of(t);
    uint8_t *base = store + t->soff;
    float *sc = t->dtype == OPS_FP8_E4M3 ? (float *)(void *)(base + t->sscale) + (size_t)g * d.nsc : NULL;
    return (ops_weight){(ops_dtype)t->dtype, base + (size_t)g * d.per * d.esz, sc, (int)d.out, (int)d.in};
}

/* Selection of matrix e (3-D: [e, r0:r0+n, :]; 2-D: [r0:r0+n, :]) of a tensor-shaped dataset. */
static void sel(const param_spec *t, int64_t e, int64_t r0, int64_t n, int64_t width, hsize_t st[3], hsize_t ct[3]) {
    if (t->ndim == 3) {
        st[0] = (hsize_t)e, st[1] = (hsize_t)r0, st[2] = 0;
        ct[0] = 1, ct[1] = (hsize_t)n, ct[2] = (hsize_t)width;
    } else {
        st[0] = (hsize_t)r0, st[1] = 0;
        ct[0] = (hsize_t)n, ct[1] = (hsize_t)width;
    }
}

static hid_t create(hid_t file, hid_t lcpl, const char *path, hid_t type, int nd, const int64_t *shape, size_t esz) {
    hsize_t dims_[3], chunk[3];
    for (int k = 0; k < nd; k++) dims_[k] = chunk[k] = (hsize_t)shape[k];
    int64_t in = shape[nd - 1], rows = (int64_t)(((size_t)4 << 20) / (esz * (size_t)(in > 0 ? in : 1)));
    if (rows < 1) rows = 1;
    if ((hsize_t)rows < chunk[nd - 2]) chunk[nd - 2] = (hsize_t)rows;
    if (nd == 3) chunk[0] = 1;
    for (int k = 0; k < nd; k++)
        if (chunk[k] == 0) chunk[k] = 1;
    hid_t sp = H5Screate_simple(nd, dims_, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, nd, chunk);
    H5Pset_fletcher32(dcpl);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t ds = H5Dcreate2(file, path, type, sp, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(sp);
    return ds;
}

/* One collective write: mine selects [st, ct) from src, or nothing. */
static int write_sel(hid_t ds, hid_t mtype, hid_t dxpl, int nd, int mine, const hsize_t *st, const hsize_t *ct,
                     const void *src) {
    hid_t fs = H5Dget_space(ds), ms;
    hsize_t one = 1;
    static const uint8_t dummy[8];
    herr_t s;
    if (mine) {
        ms = H5Screate_simple(nd, ct, NULL);
        s = H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, ct, NULL);
    } else {
        ms = H5Screate_simple(1, &one, NULL);
        H5Sselect_none(ms);
        s = H5Sselect_none(fs);
        src = dummy;
    }
    int rc = (s < 0 || H5Dwrite(ds, mtype, ms, fs, dxpl, src) < 0) ? -1 : 0;
    H5Sclose(ms);
    H5Sclose(fs);
    return rc;
}

/* The store is device memory (ops.h): a matrix moves through a host staging
 * buffer, stage_rows() rows per HDF5 call (about 64 MiB, at least one row). */
static int64_t stage_rows(const dims *d) {
    int64_t k = (int64_t)(((size_t)64 << 20) / (d->esz * (size_t)(d->in > 0 ? d->in : 1)));
    return k < 1 ? 1 : k > d->out ? (d->out > 0 ? d->out : 1) : k;
}

int ckpt_frozen_write(hid_t file, hid_t lcpl, hid_t dxpl, const plan *p, int i, const uint8_t *store,
                      const char *fname, char *err, int errlen) {
    const param_spec *t = &p->params.t[i];
    int fp8 = t->dtype == OPS_FP8_E4M3, expert = t->ndim == 3;
    dims d = dims_of(t);
    char dpath[256], spath[256];
    paths(t, dpath, spath, sizeof dpath);
    hid_t type = fp8 ? H5Tcopy(H5T_STD_U8LE) : ckpt_frozen_bf16_type();
    hid_t mtype = fp8 ? H5Tcopy(H5T_NATIVE_UINT8) : ckpt_frozen_bf16_type();
    hid_t ds = create(file, lcpl, dpath, type, t->ndim, t->shape, d.esz), sds = -1;
    int64_t sshape[3] = {t->shape[0], d.nbr, d.nbc};
    if (expert) sshape[1] = d.nbr, sshape[2] = d.nbc;
    else sshape[0] = d.nbr, sshape[1] = d.nbc;
    if (fp8 && ds >= 0) {
        sds = create(file, lcpl, spath, H5T_IEEE_F32LE, t->ndim, sshape, 4);
        hid_t ty = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
        const char *v = "float8_e4m3fn";
        H5Tset_size(ty, strlen(v) + 1);
        hid_t a = H5Acreate2(ds, "dtype", ty, sp, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) H5Awrite(a, ty, v), H5Aclose(a);
        H5Sclose(sp), H5Tclose(ty);
    }
    int bad = ds < 0 || (fp8 && sds < 0), rc = 0;
    if (bad) snprintf(err, errlen, "checkpoint %s: cannot create dataset %s", fname, bad && ds >= 0 ? spath : dpath);
    if (comm_max_int(bad, p->world)) rc = -1; /* creation is collective: all stop together */
    int writer = expert ? p->dp_index == 0 : p->world_rank == 0;
    int64_t K = stage_rows(&d);
    size_t nsc_all = (size_t)t->n_mat * d.nsc;
    uint8_t *stage = writer ? malloc((size_t)K * (size_t)d.in * d.esz) : NULL;
    float *sstage = writer && fp8 ? malloc(nsc_all * sizeof *sstage) : NULL;
    int oom = writer && (!stage || (fp8 && !sstage));
    if (oom) writer = 0; /* still takes part in the collective calls; fails at the end */
    for (int g = 0; !rc && g < t->n_mat; g++) /* the same number of calls on every rank */
        for (int64_t r0 = 0; !rc && r0 < d.out; r0 += K) {
            int64_t n = d.out - r0 < K ? d.out - r0 : K;
            hsize_t st[3], ct[3];
            sel(t, p->expert_first + g, r0, n, d.in, st, ct);
            size_t off = t->soff + ((size_t)g * d.per + (size_t)r0 * (size_t)d.in) * d.esz;
            if (writer) ops_to_host(stage, store + off, (size_t)n * (size_t)d.in * d.esz);
            if (write_sel(ds, mtype, dxpl, t->ndim, writer, st, ct, stage)) {
                snprintf(err, errlen, "checkpoint %s: writing %s failed", fname, dpath);
                rc = -1;
            }
        }
    if (!rc && fp8) {
        hsize_t st[3] = {0, 0, 0}, ct[3];
        for (int k = 0; k < t->ndim; k++) ct[k] = (hsize_t)sshape[k];
        if (expert) st[0] = (hsize_t)p->expert_first, ct[0] = (hsize_t)t->n_mat;
        if (writer) ops_to_host(sstage, store + t->soff + t->sscale, nsc_all * sizeof *sstage);
        if (write_sel(sds, H5T_NATIVE_FLOAT, dxpl, t->ndim, writer, st, ct, sstage)) {
            snprintf(err, errlen, "checkpoint %s: writing %s failed", fname, spath);
            rc = -1;
        }
    }
    free(stage), free(sstage);
    if (oom && !rc) {
        snprintf(err, errlen, "checkpoint %s: out of memory staging %s", fname, t->name);
        rc = -1;
    }
    if (sds >= 0) H5Dclose(sds);
    if (ds >= 0) H5Dclose(ds);
    H5Tclose(type), H5Tclose(mtype);
    return rc;
}

/* Source kind of a dataset: 4 = f32, 2 = bf16, 1 = fp8 bytes, 0 = unusable. */
static int kind_of(hid_t ds) {
    hid_t ty = H5Dget_type(ds);
    H5T_class_t c = H5Tget_class(ty);
    size_t sz = H5Tget_size(ty);
    H5Tclose(ty);
    if (c == H5T_FLOAT && (sz == 4 || sz == 2)) return (int)sz;
    if (c == H5T_INTEGER && sz == 1) return 1;
    return 0;
}

int ckpt_frozen_is_fp8(hid_t file, const char *path) {
    hid_t ds = H5Lexists(file, path, H5P_DEFAULT) > 0 ? H5Dopen2(file, path, H5P_DEFAULT) : -1;
    if (ds < 0) return 0;
    int r = kind_of(ds) == 1 && H5Aexists(ds, "dtype") > 0;
    H5Dclose(ds);
    return r;
}

static int shape_is(hid_t ds, int nd, const int64_t *shape) {
    hid_t sp = H5Dget_space(ds);
    hsize_t dd[8] = {0};
    int n = H5Sget_simple_extent_ndims(sp), same = n == nd;
    if (same) H5Sget_simple_extent_dims(sp, dd, NULL);
    for (int k = 0; same && k < nd; k++) same = dd[k] == (hsize_t)shape[k];
    H5Sclose(sp);
    return same;
}

int ckpt_frozen_check(hid_t file, const param_table *pt, int i, const char *fname, char *err, int errlen) {
    const param_spec *t = &pt->t[i];
    dims d = dims_of(t);
    char dpath[256], spath[256];
    paths(t, dpath, spath, sizeof dpath);
    if (H5Lexists(file, dpath, H5P_DEFAULT) <= 0) {
        snprintf(err, errlen, "checkpoint %s: %s is missing (dataset %s; the deck's model has it)", fname, t->name, dpath);
        return -1;
    }
    hid_t ds = H5Dopen2(file, dpath, H5P_DEFAULT);
    if (ds < 0) {
        snprintf(err, errlen, "checkpoint %s: %s is not a dataset", fname, dpath);
        return -1;
    }
    int k = kind_of(ds), same = shape_is(ds, t->ndim, t->shape), rc = 0;
    H5Dclose(ds);
    if (!same) {
        snprintf(err, errlen, "checkpoint %s: %s does not have the deck's shape", fname, t->name);
        return -1;
    }
    if (!k) {
        snprintf(err, errlen, "checkpoint %s: %s is neither f32, bf16 nor fp8 (uint8) bytes", fname, dpath);
        return -1;
    }
    if (k == 1) {
        int64_t ss[3] = {t->shape[0], d.nbr, d.nbc};
        if (t->ndim == 2) ss[0] = d.nbr, ss[1] = d.nbc;
        hid_t s = H5Lexists(file, spath, H5P_DEFAULT) > 0 ? H5Dopen2(file, spath, H5P_DEFAULT) : -1;
        if (s < 0 || kind_of(s) != 4 || !shape_is(s, t->ndim, ss)) {
            snprintf(err, errlen, "checkpoint %s: the fp8 weight %s needs its f32 scales %s of [%s%lld, %lld]", fname,
                     t->name, spath, t->ndim == 3 ? "E, " : "", (long long)d.nbr, (long long)d.nbc);
            rc = -1;
        }
        if (s >= 0) H5Dclose(s);
    }
    return rc;
}

static int read_sel(hid_t ds, hid_t mtype, hid_t dxpl, int nd, const hsize_t *st, const hsize_t *ct, void *dst) {
    hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(nd, ct, NULL);
    int rc = (H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, ct, NULL) < 0 ||
              H5Dread(ds, mtype, ms, fs, dxpl, dst) < 0) ? -1 : 0;
    H5Sclose(ms);
    H5Sclose(fs);
    return rc;
}

int ckpt_frozen_read(hid_t file, hid_t dxpl, const plan *p, int i, uint8_t *store, const char *fname, char *err,
                     int errlen) {
    const param_spec *t = &p->params.t[i];
    dims d = dims_of(t);
    char dpath[256], spath[256];
    paths(t, dpath, spath, sizeof dpath);
    hid_t ds = H5Dopen2(file, dpath, H5P_DEFAULT), sds = -1;
    if (ds < 0) {
        snprintf(err, errlen, "checkpoint %s: cannot open dataset %s", fname, dpath);
        return -1;
    }
    int src = kind_of(ds), rc = 0;
    if (src == 1) sds = H5Dopen2(file, spath, H5P_DEFAULT);
    int direct = (src == 1 && t->dtype == OPS_FP8_E4M3) || (src == 2 && t->dtype == OPS_BF16);
    hid_t bf = ckpt_frozen_bf16_type();
    float *buf = NULL, *srow = NULL;
    uint8_t *qb = NULL;
    int64_t K = stage_rows(&d);
    if (direct) { /* the stored bytes as they are, through host staging */
        qb = malloc((size_t)K * (size_t)d.in * d.esz);
        srow = malloc((d.nsc > 0 ? d.nsc : 1) * sizeof *srow);
        if (!qb || !srow) {
            snprintf(err, errlen, "checkpoint %s: out of memory staging %s", fname, t->name);
            rc = -1;
        }
    } else {
        buf = malloc((size_t)OPS_FP8_BLOCK * (size_t)d.in * sizeof *buf);
        qb = malloc((size_t)OPS_FP8_BLOCK * (size_t)d.in);
        srow = malloc((size_t)(d.nbc > 0 ? d.nbc : 1) * sizeof *srow);
        if (!buf || !qb || !srow) {
            snprintf(err, errlen, "checkpoint %s: out of memory staging %s", fname, t->name);
            rc = -1;
        }
    }
    for (int g = 0; !rc && g < t->n_mat; g++) {
        int64_t e = p->expert_first + g;
        ops_weight w = view(t, store, g);
        hsize_t st[3], ct[3];
        if (direct) {
            for (int64_t r0 = 0; !rc && r0 < d.out; r0 += K) {
                int64_t n = d.out - r0 < K ? d.out - r0 : K;
                sel(t, e, r0, n, d.in, st, ct);
                rc = read_sel(ds, src == 1 ? H5T_NATIVE_UINT8 : bf, dxpl, t->ndim, st, ct, qb);
                if (!rc)
                    ops_to_device((uint8_t *)w.data + (size_t)r0 * (size_t)d.in * d.esz, qb,
                                  (size_t)n * (size_t)d.in * d.esz);
            }
            if (!rc && src == 1) {
                sel(t, e, 0, d.nbr, d.nbc, st, ct);
                rc = read_sel(sds, H5T_NATIVE_FLOAT, dxpl, t->ndim, st, ct, srow);
                if (!rc) ops_to_device((void *)(uintptr_t)w.scale, srow, d.nsc * sizeof *srow);
            }
            continue;
        }
        for (int64_t r0 = 0; !rc && r0 < d.out; r0 += OPS_FP8_BLOCK) { /* 128 rows at a time */
            int64_t n = d.out - r0 < OPS_FP8_BLOCK ? d.out - r0 : OPS_FP8_BLOCK;
            sel(t, e, r0, n, d.in, st, ct);
            if (src == 1) {
                rc = read_sel(ds, H5T_NATIVE_UINT8, dxpl, t->ndim, st, ct, qb);
                sel(t, e, r0 / OPS_FP8_BLOCK, 1, d.nbc, st, ct);
                if (!rc) rc = read_sel(sds, H5T_NATIVE_FLOAT, dxpl, t->ndim, st, ct, srow);
                for (int64_t q = 0; !rc && q < n * d.in; q++)
                    buf[q] = ops_e4m3_to_f32(qb[q]) * srow[(q % d.in) / OPS_FP8_BLOCK];
            } else {
                rc = read_sel(ds, H5T_NATIVE_FLOAT, dxpl, t->ndim, st, ct, buf);
            }
            if (!rc) ops_weight_store_rows(&w, (int)r0, (int)n, buf);
        }
    }
    if (rc && !err[0]) snprintf(err, errlen, "checkpoint %s: dataset %s is corrupted or unreadable", fname, dpath);
    free(buf), free(qb), free(srow);
    H5Tclose(bf);
    if (sds >= 0) H5Dclose(sds);
    H5Dclose(ds);
    return rc;
}

/* ---- one process: dsv3-import --keep-fp8 ---- */

static void name_paths(const char *hf_name, char *data, char *scale, size_t len) {
    param_spec t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", hf_name);
    paths(&t, data, scale, len);
}

int ckpt_frozen_declare_fp8(hid_t file, const char *hf_name, int ndim, const int64_t *shape, char *err, int errlen) {
    char dpath[256], spath[256];
    name_paths(hf_name, dpath, spath, sizeof dpath);
    int64_t ss[3] = {shape[0], 0, 0};
    int64_t out = shape[ndim - 2], in = shape[ndim - 1];
    ss[ndim - 2] = (out + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK, ss[ndim - 1] = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t ds = ndim >= 2 && ndim <= 3 ? create(file, lcpl, dpath, H5T_STD_U8LE, ndim, shape, 1) : -1;
    hid_t sds = ds >= 0 ? create(file, lcpl, spath, H5T_IEEE_F32LE, ndim, ss, 4) : -1;
    int rc = ds < 0 || sds < 0 ? -1 : 0;
    if (!rc) {
        hid_t ty = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
        const char *v = "float8_e4m3fn";
        H5Tset_size(ty, strlen(v) + 1);
        hid_t a = H5Acreate2(ds, "dtype", ty, sp, H5P_DEFAULT, H5P_DEFAULT);
        rc = a < 0 || H5Awrite(a, ty, v) < 0 ? -1 : 0;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp), H5Tclose(ty);
    }
    if (rc) snprintf(err, errlen, "cannot create the fp8 datasets %s and %s", dpath, spath);
    if (sds >= 0) H5Dclose(sds);
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(lcpl);
    return rc;
}

int ckpt_frozen_write_fp8(hid_t file, hid_t dxpl, const char *hf_name, int64_t e, int64_t row0, int64_t nrows,
                          const uint8_t *q, const float *sc, char *err, int errlen) {
    char dpath[256], spath[256];
    name_paths(hf_name, dpath, spath, sizeof dpath);
    hid_t ds = H5Dopen2(file, dpath, H5P_DEFAULT), sds = H5Dopen2(file, spath, H5P_DEFAULT);
    int rc = ds < 0 || sds < 0 || row0 % OPS_FP8_BLOCK ? -1 : 0;
    if (!rc) {
        hid_t fs = H5Dget_space(ds);
        hsize_t dd[3] = {0, 0, 0};
        int nd = H5Sget_simple_extent_ndims(fs);
        H5Sget_simple_extent_dims(fs, dd, NULL);
        H5Sclose(fs);
        param_spec t;
        memset(&t, 0, sizeof t);
        t.ndim = nd;
        int64_t in = (int64_t)dd[nd - 1], nbc = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
        hsize_t st[3], ct[3];
        sel(&t, e, row0, nrows, in, st, ct);
        int mine = nrows > 0; /* 0 rows: this rank takes part in a collective write with nothing */
        rc = write_sel(ds, H5T_NATIVE_UINT8, dxpl, nd, mine, st, ct, q);
        sel(&t, e, row0 / OPS_FP8_BLOCK, (nrows + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK, nbc, st, ct);
        int rc2 = write_sel(sds, H5T_NATIVE_FLOAT, dxpl, nd, mine, st, ct, sc); /* called even after a failure: collective */
        rc = rc ? rc : rc2;
    }
    if (rc) snprintf(err, errlen, "writing rows [%lld, %lld) of the fp8 tensor %s failed", (long long)row0,
                     (long long)(row0 + nrows), hf_name);
    if (sds >= 0) H5Dclose(sds);
    if (ds >= 0) H5Dclose(ds);
    return rc;
}

/* safetensors.c — the safetensors reader and writer (dsv3-spec.md §8).
 * Depends on libc and jansson only (no MPI, no error.h): the libFuzzer
 * harness tools/fuzz/fuzz_safetensors.c compiles it on its own with clang. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000ull

/* ---- dtypes ------------------------------------------------------------- */

static const char *const dt_name[ST_NDTYPES] = {
    [ST_BOOL] = "BOOL", [ST_U8] = "U8", [ST_I8] = "I8", [ST_I16] = "I16", [ST_U16] = "U16",
    [ST_F16] = "F16", [ST_BF16] = "BF16", [ST_I32] = "I32", [ST_U32] = "U32", [ST_F32] = "F32",
    [ST_F64] = "F64", [ST_I64] = "I64", [ST_U64] = "U64", [ST_F8_E4M3] = "F8_E4M3",
    [ST_F8_E5M2] = "F8_E5M2", [ST_F8_E8M0] = "F8_E8M0", [ST_F8_E4M3FNUZ] = "F8_E4M3FNUZ",
    [ST_F8_E5M2FNUZ] = "F8_E5M2FNUZ", [ST_C64] = "C64", [ST_F6_E2M3] = "F6_E2M3",
    [ST_F6_E3M2] = "F6_E3M2", [ST_F4] = "F4",
};
static const int dt_bits[ST_NDTYPES] = {
    [ST_BOOL] = 8, [ST_U8] = 8, [ST_I8] = 8, [ST_I16] = 16, [ST_U16] = 16, [ST_F16] = 16,
    [ST_BF16] = 16, [ST_I32] = 32, [ST_U32] = 32, [ST_F32] = 32, [ST_F64] = 64, [ST_I64] = 64,
    [ST_U64] = 64, [ST_F8_E4M3] = 8, [ST_F8_E5M2] = 8, [ST_F8_E8M0] = 8, [ST_F8_E4M3FNUZ] = 8,
    [ST_F8_E5M2FNUZ] = 8, [ST_C64] = 64, [ST_F6_E2M3] = 6, [ST_F6_E3M2] = 6, [ST_F4] = 4,
};
/* Position in the reference's Rust `Dtype` enum (safetensors 0.8.0; the FNUZ
 * and F8 order checked by experiment with the Python client). The writer
 * orders by descending rank, then by name. */
static const int dt_rank[ST_NDTYPES] = {
    [ST_BOOL] = 0, [ST_F4] = 1, [ST_F6_E2M3] = 2, [ST_F6_E3M2] = 3, [ST_U8] = 4, [ST_I8] = 5,
    [ST_F8_E5M2] = 6, [ST_F8_E4M3] = 7, [ST_F8_E8M0] = 8, [ST_F8_E4M3FNUZ] = 9,
    [ST_F8_E5M2FNUZ] = 10, [ST_I16] = 11, [ST_U16] = 12, [ST_F16] = 13, [ST_BF16] = 14,
    [ST_I32] = 15, [ST_U32] = 16, [ST_F32] = 17, [ST_C64] = 18, [ST_F64] = 19, [ST_I64] = 20,
    [ST_U64] = 21,
};

const char *st_dtype_name(st_dtype t) { return (unsigned)t < ST_NDTYPES ? dt_name[t] : "?"; }
int st_dtype_bits(st_dtype t) { return (unsigned)t < ST_NDTYPES ? dt_bits[t] : 0; }
int st_dtype_parse(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(s, dt_name[i]) == 0) return i;
    return -1;
}

/* ---- helpers ------------------------------------------------------------ */

/* Writes "path: [tensor 'name': ]rule" into err; the name is printed with
 * non-printable bytes as \xNN and cut at 80 bytes, any other control byte
 * becomes '?', so the message stays one line. */
static int fail(char *err, int errlen, const char *path, const char *tensor, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(char *err, int errlen, const char *path, const char *tensor, const char *fmt, ...) {
    if (!err || errlen <= 0) return -1;
    char rule[512], tn[400] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rule, sizeof rule, fmt, ap);
    va_end(ap);
    if (tensor) {
        size_t o = 0;
        int k = 0;
        for (const unsigned char *p = (const unsigned char *)tensor; *p && o + 8 < sizeof tn; p++, k++) {
            if (k == 80) { memcpy(tn + o, "...", 3); o += 3; break; }
            if (*p < 0x20 || *p == 0x7f || *p == '\'' || *p == '\\') o += (size_t)snprintf(tn + o, sizeof tn - o, "\\x%02x", *p);
            else tn[o++] = (char)*p;
        }
        tn[o] = 0;
        snprintf(err, (size_t)errlen, "%s: tensor '%s': %s", path, tn, rule);
    } else {
        snprintf(err, (size_t)errlen, "%s: %s", path, rule);
    }
    /* jansson's messages quote the offending token, which may hold any byte */
    for (char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    return -1;
}

/* Strict UTF-8 (as Rust's str::from_utf8): offset of the first bad byte, or -1. */
static long utf8_check(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) { len = 3; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
        else return (long)i;
        if (n - i < len) return (long)i;
        if (s[i + 1] < lo || s[i + 1] > hi) return (long)i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return (long)i;
        i += len;
    }
    return -1;
}

/* bytes = prod(shape) * bits / 8: 0, or -1 overflow, -2 not a whole number of bytes. */
static int tensor_nbytes(st_dtype dt, int ndim, const int64_t *shape, uint64_t *bytes) {
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        uint64_t s = (uint64_t)shape[d];
        if (s != 0 && n > UINT64_MAX / s) return -1;
        n *= s;
    }
    uint64_t bits = (uint64_t)dt_bits[dt];
    if (n > UINT64_MAX / bits) return -1;
    if ((n * bits) % 8) return -2;
    *bytes = n * bits / 8;
    return 0;
}

uint64_t st_numel(const st_tensor *t) {
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

static int pread_full(int fd, void *dst, uint64_t len, uint64_t off) {
    unsigned char *p = dst;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) { errno = 0; return -1; } /* end of file */
        p += r, off += (uint64_t)r, len -= (uint64_t)r;
    }
    return 0;
}

static int pwrite_full(int fd, const void *src, uint64_t len, uint64_t off) {
    const unsigned char *p = src;
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t r = pwrite(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) { errno = EIO; return -1; }
        p += r, off += (uint64_t)r, len -= (uint64_t)r;
    }
    return 0;
}

/* ---- reader ------------------------------------------------------------- */

static int cmp_offsets(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}
static int cmp_by_name(const void *a, const void *b, void *ctx) {
    const st_tensor *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

/* A JSON integer >= 0, as the reference's usize (jansson holds up to INT64_MAX). */
static int json_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0) return -1;
    *out = (uint64_t)x;
    return 0;
}

static void reset(st_file *f) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

/* Parses and validates header bytes hdr[0..N) of a file of file_size bytes. */
static int parse_header(st_file *f, const char *hdr, uint64_t N, char *err, int errlen) {
    const char *P = f->path;
    long bad = utf8_check((const unsigned char *)hdr, N);
    if (bad >= 0) return fail(err, errlen, P, NULL, "header is not valid UTF-8 (byte %ld of the header) (InvalidHeader)", bad);
    if (N == 0 || hdr[0] != '{') return fail(err, errlen, P, NULL, "header does not start with '{' (InvalidHeaderStart)");
    json_error_t je;
    json_t *root = json_loadb(hdr, N, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_duplicate_key)
            return fail(err, errlen, P, NULL, "header has a duplicate key (%s, line %d column %d) (InvalidHeaderDeserialization)",
                        je.text, je.line, je.column);
        return fail(err, errlen, P, NULL, "header is not valid JSON: %s (line %d column %d) (InvalidHeaderDeserialization)",
                    je.text, je.line, je.column);
    }
    int rc = -1;
    if (!json_is_object(root)) { fail(err, errlen, P, NULL, "header is not a JSON object (InvalidHeaderDeserialization)"); goto out; }
    size_t nkeys = json_object_size(root);
    json_t *meta = json_object_get(root, "__metadata__");
    size_t nt = nkeys - (meta ? 1 : 0);
    if (nt > (size_t)INT_MAX / 2) { fail(err, errlen, P, NULL, "too many tensors"); goto out; }
    /* __metadata__: a flat string -> string map; null is accepted, as by the reference */
    if (meta && !json_is_null(meta)) {
        if (!json_is_object(meta)) { fail(err, errlen, P, NULL, "__metadata__ is not an object of strings (InvalidHeaderDeserialization)"); goto out; }
        size_t nm = json_object_size(meta);
        f->meta_key = calloc(nm ? nm : 1, sizeof *f->meta_key);
        f->meta_val = calloc(nm ? nm : 1, sizeof *f->meta_val);
        if (!f->meta_key || !f->meta_val) { fail(err, errlen, P, NULL, "out of memory"); goto out; }
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                fail(err, errlen, P, NULL, "__metadata__ value of '%.80s' is not a string (InvalidHeaderDeserialization)", k);
                goto out;
            }
            f->meta_key[f->n_meta] = strdup(k);
            f->meta_val[f->n_meta] = strdup(json_string_value(v));
            f->n_meta++;
            if (!f->meta_key[f->n_meta - 1] || !f->meta_val[f->n_meta - 1]) { fail(err, errlen, P, NULL, "out of memory"); goto out; }
        }
    }
    f->t = calloc(nt ? nt : 1, sizeof *f->t);
    f->by_name = calloc(nt ? nt : 1, sizeof *f->by_name);
    if (!f->t || !f->by_name) { fail(err, errlen, P, NULL, "out of memory"); goto out; }
    const char *name;
    json_t *e;
    json_object_foreach(root, name, e) {
        if (strcmp(name, "__metadata__") == 0) continue;
        if (strlen(name) >= ST_MAX_NAME) { fail(err, errlen, P, name, "name longer than %d bytes", ST_MAX_NAME - 1); goto out; }
        if (!json_is_object(e)) { fail(err, errlen, P, name, "entry is not an object (InvalidHeaderDeserialization)"); goto out; }
        st_tensor *t = &f->t[f->n];
        snprintf(t->name, sizeof t->name, "%s", name);
        /* the reference ignores fields other than these three; so do we */
        json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"), *jo = json_object_get(e, "data_offsets");
        if (!jd) { fail(err, errlen, P, name, "missing field 'dtype' (InvalidHeaderDeserialization)"); goto out; }
        if (!js) { fail(err, errlen, P, name, "missing field 'shape' (InvalidHeaderDeserialization)"); goto out; }
        if (!jo) { fail(err, errlen, P, name, "missing field 'data_offsets' (InvalidHeaderDeserialization)"); goto out; }
        if (!json_is_string(jd)) { fail(err, errlen, P, name, "dtype is not a string (InvalidHeaderDeserialization)"); goto out; }
        int dt = st_dtype_parse(json_string_value(jd));
        if (dt < 0) { fail(err, errlen, P, name, "unknown dtype '%.40s' (InvalidHeaderDeserialization)", json_string_value(jd)); goto out; }
        t->dtype = (st_dtype)dt;
        if (!json_is_array(js)) { fail(err, errlen, P, name, "shape is not an array of non-negative integers (InvalidHeaderDeserialization)"); goto out; }
        if (json_array_size(js) > ST_MAX_DIMS) { fail(err, errlen, P, name, "shape has more than %d dimensions", ST_MAX_DIMS); goto out; }
        t->ndim = (int)json_array_size(js);
        for (int d = 0; d < t->ndim; d++) {
            uint64_t s;
            if (json_uint(json_array_get(js, (size_t)d), &s)) {
                fail(err, errlen, P, name, "shape is not an array of non-negative integers (InvalidHeaderDeserialization)");
                goto out;
            }
            t->shape[d] = (int64_t)s;
        }
        if (!json_is_array(jo) || json_array_size(jo) != 2 || json_uint(json_array_get(jo, 0), &t->begin) ||
            json_uint(json_array_get(jo, 1), &t->end)) {
            fail(err, errlen, P, name, "data_offsets is not [BEGIN, END] of non-negative integers (InvalidHeaderDeserialization)");
            goto out;
        }
        f->n++;
    }
    /* the reference's Metadata::validate, in offset order */
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_offsets);
    uint64_t start = 0;
    for (int i = 0; i < f->n; i++) {
        st_tensor *t = &f->t[i];
        if (t->end < t->begin) { fail(err, errlen, P, t->name, "data_offsets [%" PRIu64 ", %" PRIu64 "]: END < BEGIN (InvalidOffset)", t->begin, t->end); goto out; }
        if (t->begin > start) { fail(err, errlen, P, t->name, "data_offsets [%" PRIu64 ", %" PRIu64 "]: gap before BEGIN (previous END %" PRIu64 ") (InvalidOffset)", t->begin, t->end, start); goto out; }
        if (t->begin < start) { fail(err, errlen, P, t->name, "data_offsets [%" PRIu64 ", %" PRIu64 "]: overlap, BEGIN < previous END %" PRIu64 " (InvalidOffset)", t->begin, t->end, start); goto out; }
        start = t->end;
        uint64_t nb;
        int r = tensor_nbytes(t->dtype, t->ndim, t->shape, &nb);
        if (r == -1) { fail(err, errlen, P, t->name, "prod(shape) * bits overflows (ValidationOverflow)"); goto out; }
        if (r == -2) { fail(err, errlen, P, t->name, "prod(shape) * %d bits is not a whole number of bytes (MisalignedSlice)", dt_bits[t->dtype]); goto out; }
        if (nb != t->end - t->begin) {
            fail(err, errlen, P, t->name, "data_offsets size %" PRIu64 " != prod(shape) * bits / 8 = %" PRIu64 " bytes (TensorInvalidInfo)",
                 t->end - t->begin, nb);
            goto out;
        }
    }
    /* start + 8 + N == file length; start <= the file size is checked first (no overflow) */
    uint64_t avail = f->file_size - f->data_start;
    if (start > avail) {
        fail(err, errlen, P, NULL, "data truncated: tensors end at %" PRIu64 " but the data buffer has %" PRIu64 " bytes (MetadataIncompleteBuffer)", start, avail);
        goto out;
    }
    if (start < avail) {
        fail(err, errlen, P, NULL, "%" PRIu64 " trailing bytes after the last tensor (END %" PRIu64 ", data buffer %" PRIu64 " bytes) (MetadataIncompleteBuffer)",
             avail - start, start, avail);
        goto out;
    }
    for (int i = 0; i < f->n; i++) f->by_name[i] = i;
    qsort_r(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_by_name, f->t);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* The checks on the first 8 bytes: the header length N against the file size. */
static int check_prefix(st_file *f, const unsigned char *p8, char *err, int errlen) {
    if (f->file_size < 8) return fail(err, errlen, f->path, NULL, "file is %" PRIu64 " bytes, less than the 8-byte header length (HeaderTooSmall)", f->file_size);
    uint64_t N = 0;
    for (int i = 7; i >= 0; i--) N = N << 8 | p8[i];
    if (N > ST_MAX_HEADER) return fail(err, errlen, f->path, NULL, "header length %" PRIu64 " > 100000000 (HeaderTooLarge)", N);
    if (8 + N > f->file_size)
        return fail(err, errlen, f->path, NULL, "header length %" PRIu64 " runs past the end of the file (8 + N > %" PRIu64 " bytes) (InvalidHeaderLength)", N, f->file_size);
    f->header_len = N;
    f->data_start = 8 + N;
    return 0;
}

int st_open_mem(st_file *f, const void *buf, size_t len, const char *name, char *err, int errlen) {
    reset(f);
    snprintf(f->path, sizeof f->path, "%s", name ? name : "(memory)");
    f->mem = buf;
    f->file_size = len;
    if (check_prefix(f, buf, err, errlen) || parse_header(f, (const char *)buf + 8, f->header_len, err, errlen)) {
        st_close(f);
        return -1;
    }
    return 0;
}

int st_open(st_file *f, const char *path, char *err, int errlen) {
    reset(f);
    snprintf(f->path, sizeof f->path, "%s", path);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return fail(err, errlen, path, NULL, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(f->fd, &sb) || !S_ISREG(sb.st_mode)) {
        fail(err, errlen, path, NULL, "not a regular file");
        st_close(f);
        return -1;
    }
    f->file_size = (uint64_t)sb.st_size;
    unsigned char p8[8] = {0};
    if (f->file_size >= 8 && pread_full(f->fd, p8, 8, 0)) {
        fail(err, errlen, path, NULL, "read error: %s", errno ? strerror(errno) : "unexpected end of file");
        st_close(f);
        return -1;
    }
    if (check_prefix(f, p8, err, errlen)) { st_close(f); return -1; }
    /* N <= 100 MB and 8 + N <= file size: now an allocation of N is safe */
    char *hdr = malloc(f->header_len ? f->header_len : 1);
    if (!hdr) { fail(err, errlen, path, NULL, "out of memory for a %" PRIu64 "-byte header", f->header_len); st_close(f); return -1; }
    int rc = pread_full(f->fd, hdr, f->header_len, 8);
    if (rc) fail(err, errlen, path, NULL, "read error: %s", errno ? strerror(errno) : "unexpected end of file");
    else rc = parse_header(f, hdr, f->header_len, err, errlen);
    free(hdr);
    if (rc) { st_close(f); return -1; }
    return 0;
}

void st_close(st_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    if (f->mapped) munmap((void *)f->mem, (size_t)f->file_size);
    for (int i = 0; i < f->n_meta; i++) free(f->meta_key[i]), free(f->meta_val[i]);
    free(f->meta_key);
    free(f->meta_val);
    free(f->t);
    free(f->by_name);
    reset(f);
}

int st_map(st_file *f, char *err, int errlen) {
    if (f->mem) return 0;
    if (f->file_size == 0 || f->file_size > SIZE_MAX) return fail(err, errlen, f->path, NULL, "cannot map a file of %" PRIu64 " bytes", f->file_size);
    void *m = mmap(NULL, (size_t)f->file_size, PROT_READ, MAP_SHARED, f->fd, 0);
    if (m == MAP_FAILED) return fail(err, errlen, f->path, NULL, "mmap: %s", strerror(errno));
    f->mem = m;
    f->mapped = 1;
    return 0;
}

const unsigned char *st_data(const st_file *f, int i) {
    return f->mem && i >= 0 && i < f->n ? f->mem + f->data_start + f->t[i].begin : NULL;
}

int st_find(const st_file *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, i = f->by_name[mid];
        int c = strcmp(name, f->t[i].name);
        if (c == 0) return i;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -1;
}

const char *st_meta(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0) return f->meta_val[i];
    return NULL;
}

int st_read(const st_file *f, int i, uint64_t off, uint64_t len, void *dst, char *err, int errlen) {
    if (i < 0 || i >= f->n) return fail(err, errlen, f->path, NULL, "st_read: no tensor %d", i);
    const st_tensor *t = &f->t[i];
    uint64_t nb = st_bytes(t);
    if (off > nb || len > nb - off)
        return fail(err, errlen, f->path, t->name, "st_read: bytes [%" PRIu64 ", +%" PRIu64 ") outside the tensor's %" PRIu64 " bytes", off, len, nb);
    if (len == 0) return 0;
    uint64_t at = f->data_start + t->begin + off; /* <= file_size, validated by st_open */
    if (f->mem) {
        memcpy(dst, f->mem + at, (size_t)len);
        return 0;
    }
    if (pread_full(f->fd, dst, len, at))
        return fail(err, errlen, f->path, t->name, "read error: %s", errno ? strerror(errno) : "unexpected end of file (the file shrank)");
    return 0;
}

/* ---- writer ------------------------------------------------------------- */

struct st_writer {
    char path[4096];
    int fd, begun, created;
    int n, cap;
    st_tensor *t;
    uint64_t *got;  /* bytes received per tensor (after begin: file order) */
    int *by_name;   /* after begin */
    int n_meta, cap_meta;
    char **mk, **mv;
    uint64_t data_start, total;
    uint64_t unkicked; /* bytes put since the kernel was last told to start writing back */
    char err[600];  /* the first error of add/meta, reported by begin */
};

static int werr(st_writer *w, const char *tensor, const char *fmt, const char *arg) {
    if (!w->err[0]) {
        char rule[300];
        snprintf(rule, sizeof rule, fmt, arg);
        fail(w->err, sizeof w->err, w->path, tensor, "%s", rule);
    }
    return -1;
}

int st_writer_open(st_writer **wp, const char *path, char *err, int errlen) {
    *wp = NULL;
    if (strlen(path) >= sizeof((st_writer *)0)->path) return fail(err, errlen, path, NULL, "path too long");
    st_writer *w = calloc(1, sizeof *w);
    if (!w) return fail(err, errlen, path, NULL, "out of memory");
    snprintf(w->path, sizeof w->path, "%s", path);
    w->fd = -1;
    *wp = w;
    return 0;
}

static int valid_str(const char *s) { return utf8_check((const unsigned char *)s, strlen(s)) < 0; }

int st_writer_meta(st_writer *w, const char *key, const char *value) {
    if (w->begun) return werr(w, NULL, "st_writer_meta after st_writer_begin%s", "");
    if (!valid_str(key) || !valid_str(value)) return werr(w, NULL, "__metadata__ key '%.80s': not valid UTF-8", key);
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->mk[i], key) == 0) return werr(w, NULL, "duplicate __metadata__ key '%.80s'", key);
    if (w->n_meta == w->cap_meta) {
        int c = w->cap_meta ? 2 * w->cap_meta : 4;
        char **a = realloc(w->mk, (size_t)c * sizeof *a);
        if (!a) return werr(w, NULL, "out of memory%s", "");
        w->mk = a;
        char **b = realloc(w->mv, (size_t)c * sizeof *b);
        if (!b) return werr(w, NULL, "out of memory%s", "");
        w->mv = b;
        w->cap_meta = c;
    }
    w->mk[w->n_meta] = strdup(key);
    w->mv[w->n_meta] = strdup(value);
    if (!w->mk[w->n_meta] || !w->mv[w->n_meta]) {
        free(w->mk[w->n_meta]), free(w->mv[w->n_meta]);
        return werr(w, NULL, "out of memory%s", "");
    }
    w->n_meta++;
    return 0;
}

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape) {
    if (w->begun) return werr(w, name, "st_writer_add after st_writer_begin%s", "");
    if (strlen(name) >= ST_MAX_NAME) return werr(w, name, "name longer than 511 bytes%s", "");
    if (!valid_str(name)) return werr(w, name, "name is not valid UTF-8%s", "");
    if (strcmp(name, "__metadata__") == 0) return werr(w, name, "reserved name%s", "");
    if ((unsigned)dtype >= ST_NDTYPES) return werr(w, name, "unknown dtype%s", "");
    if (ndim < 0 || ndim > ST_MAX_DIMS) return werr(w, name, "ndim outside 0..8%s", "");
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0) return werr(w, name, "negative dimension%s", "");
    uint64_t nb;
    int r = tensor_nbytes(dtype, ndim, shape, &nb);
    if (r == -1) return werr(w, name, "prod(shape) * bits overflows%s", "");
    if (r == -2) return werr(w, name, "prod(shape) * bits is not a whole number of bytes%s", "");
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0) return werr(w, name, "duplicate tensor name%s", "");
    if (w->n == w->cap) {
        int c = w->cap ? 2 * w->cap : 16;
        st_tensor *a = realloc(w->t, (size_t)c * sizeof *a);
        if (!a) return werr(w, name, "out of memory%s", "");
        w->t = a;
        w->cap = c;
    }
    st_tensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->end = nb; /* the size until begin lays the file out */
    return 0;
}

static int cmp_write_order(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    if (dt_rank[x->dtype] != dt_rank[y->dtype]) return dt_rank[x->dtype] > dt_rank[y->dtype] ? -1 : 1;
    return strcmp(x->name, y->name);
}

typedef struct { char *p; size_t n, cap; int oom; } sbuf;
static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        char *p = realloc(b->p, c);
        if (!p) { b->oom = 1; return; }
        b->p = p, b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_s(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
/* A JSON string as serde_json writes it: " and \ escaped, control bytes as
 * \b \t \n \f \r or \u00xx (lower-case hex), everything else (UTF-8, DEL, /) verbatim. */
static void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[8];
        switch (*p) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        default:
            if (*p < 0x20) { snprintf(e, sizeof e, "\\u%04x", *p); sb_put(b, e, 6); }
            else sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int writer_layout(st_writer *w, sbuf *h) {
    if (w->n) qsort(w->t, (size_t)w->n, sizeof *w->t, cmp_write_order);
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        uint64_t nb = w->t[i].end;
        if (off > UINT64_MAX / 2 - nb) return werr(w, w->t[i].name, "file size overflows%s", "");
        w->t[i].begin = off;
        w->t[i].end = off + nb;
        off += nb;
    }
    sb_s(h, "{");
    if (w->n_meta) {
        sb_s(h, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) sb_s(h, ",");
            sb_json_str(h, w->mk[i]);
            sb_s(h, ":");
            sb_json_str(h, w->mv[i]);
        }
        sb_s(h, "}");
    }
    for (int i = 0; i < w->n; i++) {
        const st_tensor *t = &w->t[i];
        char num[64];
        if (i || w->n_meta) sb_s(h, ",");
        sb_json_str(h, t->name);
        sb_s(h, ":{\"dtype\":");
        sb_json_str(h, dt_name[t->dtype]);
        sb_s(h, ",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t->shape[d]);
            sb_s(h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->begin, t->end);
        sb_s(h, num);
    }
    sb_s(h, "}");
    while (h->n % 8) sb_s(h, " ");
    if (h->oom) return werr(w, NULL, "out of memory%s", "");
    if (h->n > ST_MAX_HEADER) return werr(w, NULL, "header longer than 100000000 bytes%s", "");
    w->data_start = 8 + h->n;
    w->total = w->data_start + off;
    w->got = calloc(w->n ? (size_t)w->n : 1, sizeof *w->got);
    w->by_name = calloc(w->n ? (size_t)w->n : 1, sizeof *w->by_name);
    if (!w->got || !w->by_name) return werr(w, NULL, "out of memory%s", "");
    for (int i = 0; i < w->n; i++) w->by_name[i] = i;
    if (w->n) qsort_r(w->by_name, (size_t)w->n, sizeof *w->by_name, cmp_by_name, w->t);
    return 0;
}

static int writer_start(st_writer *w, int create, char *err, int errlen) {
    if (w->begun) return fail(err, errlen, w->path, NULL, "st_writer_begin called twice");
    if (w->err[0]) {
        if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", w->err);
        return -1;
    }
    sbuf h = {0};
    if (writer_layout(w, &h)) {
        free(h.p);
        if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", w->err);
        return -1;
    }
    w->begun = 1;
    if (create) {
        w->fd = open(w->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (w->fd < 0) { free(h.p); return fail(err, errlen, w->path, NULL, "cannot create: %s", strerror(errno)); }
        w->created = 1;
        unsigned char n8[8];
        for (int i = 0; i < 8; i++) n8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
        if (pwrite_full(w->fd, n8, 8, 0) || pwrite_full(w->fd, h.p, h.n, 8) || ftruncate(w->fd, (off_t)w->total)) {
            free(h.p);
            return fail(err, errlen, w->path, NULL, "write error: %s", strerror(errno));
        }
    } else {
        w->fd = open(w->path, O_WRONLY | O_CLOEXEC);
        if (w->fd < 0) { free(h.p); return fail(err, errlen, w->path, NULL, "cannot open: %s", strerror(errno)); }
    }
    free(h.p);
    return 0;
}

int st_writer_begin(st_writer *w, char *err, int errlen) { return writer_start(w, 1, err, errlen); }
int st_writer_attach(st_writer *w, char *err, int errlen) { return writer_start(w, 0, err, errlen); }

int st_writer_find(const st_writer *w, const char *name) {
    if (!w->begun) {
        for (int i = 0; i < w->n; i++)
            if (strcmp(w->t[i].name, name) == 0) return i;
        return -1;
    }
    int lo = 0, hi = w->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, i = w->by_name[mid];
        int c = strcmp(name, w->t[i].name);
        if (c == 0) return i;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -1;
}

int st_writer_count(const st_writer *w) { return w->n; }
const st_tensor *st_writer_tensor(const st_writer *w, int i) { return i >= 0 && i < w->n ? &w->t[i] : NULL; }

int st_writer_put(st_writer *w, const char *name, uint64_t off, const void *data, uint64_t len, char *err, int errlen) {
    if (!w->begun || w->fd < 0) return fail(err, errlen, w->path, name, "st_writer_put before st_writer_begin");
    int i = st_writer_find(w, name);
    if (i < 0) return fail(err, errlen, w->path, name, "st_writer_put: not a declared tensor");
    const st_tensor *t = &w->t[i];
    uint64_t nb = st_bytes(t);
    if (off > nb || len > nb - off)
        return fail(err, errlen, w->path, name, "st_writer_put: bytes [%" PRIu64 ", +%" PRIu64 ") outside the tensor's %" PRIu64 " bytes", off, len, nb);
    if (len && pwrite_full(w->fd, data, len, w->data_start + t->begin + off))
        return fail(err, errlen, w->path, name, "write error: %s", strerror(errno));
    w->got[i] += len;
    if ((w->unkicked += len) >= (16u << 20)) { /* the disk writes while we go on; the final fsync finds little left */
        sync_file_range(w->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        w->unkicked = 0;
    }
    return 0;
}

uint64_t st_writer_size(const st_writer *w) { return w->begun ? w->total : 0; }

static void writer_free(st_writer *w) {
    for (int i = 0; i < w->n_meta; i++) free(w->mk[i]), free(w->mv[i]);
    free(w->mk);
    free(w->mv);
    free(w->t);
    free(w->got);
    free(w->by_name);
    free(w);
}

int st_writer_close(st_writer *w, int check, char *err, int errlen) {
    if (!w) return 0;
    int rc = 0;
    if (!w->begun || w->fd < 0) {
        if (w->err[0] && err && errlen > 0) snprintf(err, (size_t)errlen, "%s", w->err);
        else fail(err, errlen, w->path, NULL, "st_writer_close before st_writer_begin");
        rc = -1;
    } else {
        if (check)
            for (int i = 0; i < w->n && !rc; i++)
                if (w->got[i] != st_bytes(&w->t[i]))
                    rc = fail(err, errlen, w->path, w->t[i].name, "received %" PRIu64 " of its %" PRIu64 " bytes", w->got[i], st_bytes(&w->t[i]));
        if (!rc && fsync(w->fd)) rc = fail(err, errlen, w->path, NULL, "fsync: %s", strerror(errno));
        if (close(w->fd) && !rc) rc = fail(err, errlen, w->path, NULL, "close: %s", strerror(errno));
        w->fd = -1;
        if (rc && w->created) unlink(w->path); /* a known-incomplete file is not left behind */
    }
    writer_free(w);
    return rc;
}

void st_writer_abort(st_writer *w, int unlink_file) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (unlink_file && w->created) unlink(w->path);
    writer_free(w);
}

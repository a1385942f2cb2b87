/* test_safetensors.c — the safetensors writer and reader: round trips of
 * several dtypes and shapes (scalar, zero-sized), the writer's layout rules,
 * and one hostile file per rule of the reference reader, each refused with
 * its rule text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "safetensors.h"

static char tmpdir[256];

static int setup(void **st) {
    (void)st;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_safetensors.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}
static int teardown(void **st) {
    (void)st;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static unsigned char pat(int k, uint64_t i) { return (unsigned char)(i * 31 + (uint64_t)k * 7 + 1); }

typedef struct { const char *name; st_dtype dt; int ndim; int64_t shape[ST_MAX_DIMS]; } spec;
static const spec SPECS[] = {
    {"w.f32", ST_F32, 2, {3, 5}},
    {"scalar", ST_F32, 0, {0}},
    {"empty", ST_I64, 2, {0, 3}},
    {"b.bf16", ST_BF16, 1, {7}},
    {"idx", ST_I64, 1, {4}},
    {"bytes", ST_U8, 3, {2, 1, 3}},
    {"f8", ST_F8_E4M3, 1, {9}},
    {"flag", ST_BOOL, 1, {3}},
    {"d", ST_F64, 1, {2}},
    {"c", ST_C64, 1, {2}},
    {"f4", ST_F4, 2, {2, 3}},
    {"f6", ST_F6_E2M3, 1, {4}},
    {"h", ST_F16, 1, {1}},
    {"u32", ST_U32, 1, {2}},
    {"a.f32", ST_F32, 1, {1}},
};
#define NSPEC ((int)(sizeof SPECS / sizeof SPECS[0]))

static uint64_t spec_bytes(const spec *s) {
    uint64_t n = 1;
    for (int d = 0; d < s->ndim; d++) n *= (uint64_t)s->shape[d];
    return n * (uint64_t)st_dtype_bits(s->dt) / 8;
}

static void write_specs(const char *path) {
    char err[1024];
    st_writer *w;
    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    assert_int_equal(st_writer_meta(w, "format", "pt"), 0);
    for (int k = NSPEC - 1; k >= 0; k--) /* declaration order does not matter */
        assert_int_equal(st_writer_add(w, SPECS[k].name, SPECS[k].dt, SPECS[k].ndim, SPECS[k].shape), 0);
    assert_int_equal(st_writer_add(w, "w.f32", ST_F32, 1, (int64_t[]){1}), -1); /* duplicate */
    assert_int_equal(st_writer_begin(w, err, sizeof err), -1);
    assert_non_null(strstr(err, "tensor 'w.f32': duplicate tensor name"));
    st_writer_abort(w, 1);

    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    assert_int_equal(st_writer_meta(w, "format", "pt"), 0);
    for (int k = NSPEC - 1; k >= 0; k--)
        assert_int_equal(st_writer_add(w, SPECS[k].name, SPECS[k].dt, SPECS[k].ndim, SPECS[k].shape), 0);
    assert_int_equal(st_writer_begin(w, err, sizeof err), 0);
    assert_int_equal(access(path, F_OK), 0);
    /* put the data in pieces, in reverse order of bytes */
    for (int k = 0; k < NSPEC; k++) {
        uint64_t nb = spec_bytes(&SPECS[k]);
        unsigned char buf[256];
        assert_true(nb <= sizeof buf);
        for (uint64_t i = 0; i < nb; i++) buf[i] = pat(k, i);
        uint64_t half = nb / 2;
        assert_int_equal(st_writer_put(w, SPECS[k].name, half, buf + half, nb - half, err, sizeof err), 0);
        assert_int_equal(st_writer_put(w, SPECS[k].name, 0, buf, half, err, sizeof err), 0);
        /* out of bounds */
        assert_int_equal(st_writer_put(w, SPECS[k].name, nb, buf, 1, err, sizeof err), -1);
        assert_int_equal(st_writer_put(w, SPECS[k].name, UINT64_MAX, buf, 2, err, sizeof err), -1);
    }
    assert_int_equal(st_writer_put(w, "nope", 0, "x", 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a declared tensor"));
    uint64_t size = st_writer_size(w);
    assert_true(size > 0);
    assert_int_equal(st_writer_close(w, 1, err, sizeof err), 0);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    assert_int_equal((uint64_t)ftell(fp), size);
    fclose(fp);
}

static void test_roundtrip(void **st) {
    (void)st;
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/rt.safetensors", tmpdir);
    write_specs(path);
    st_file f;
    assert_int_equal(st_open(&f, path, err, sizeof err), 0);
    assert_int_equal(f.n, NSPEC);
    assert_string_equal(st_meta(&f, "format"), "pt");
    assert_null(st_meta(&f, "nope"));
    assert_int_equal(f.data_start % 8, 0);
    /* the reference's order: descending dtype rank, then name */
    static const char *order[] = {"empty", "idx", "d", "c", "a.f32", "scalar", "w.f32", "u32", "b.bf16", "h",
                                  "f8", "bytes", "f6", "f4", "flag"};
    for (int i = 0; i < NSPEC; i++) assert_string_equal(f.t[i].name, order[i]);
    for (int k = 0; k < NSPEC; k++) {
        int i = st_find(&f, SPECS[k].name);
        assert_true(i >= 0);
        const st_tensor *t = &f.t[i];
        assert_int_equal(t->dtype, SPECS[k].dt);
        assert_int_equal(t->ndim, SPECS[k].ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], SPECS[k].shape[d]);
        uint64_t nb = spec_bytes(&SPECS[k]);
        assert_int_equal(st_bytes(t), nb);
        unsigned char buf[256];
        assert_int_equal(st_read(&f, i, 0, nb, buf, err, sizeof err), 0);
        for (uint64_t j = 0; j < nb; j++) assert_int_equal(buf[j], pat(k, j));
        if (nb > 2) { /* a byte range */
            assert_int_equal(st_read(&f, i, 1, nb - 2, buf, err, sizeof err), 0);
            assert_int_equal(buf[0], pat(k, 1));
        }
        assert_int_equal(st_read(&f, i, 0, nb + 1, buf, err, sizeof err), -1);
        assert_non_null(strstr(err, "outside the tensor"));
        assert_int_equal(st_read(&f, i, UINT64_MAX, 2, buf, err, sizeof err), -1);
    }
    assert_int_equal(st_numel(&f.t[st_find(&f, "scalar")]), 1);
    assert_int_equal(st_numel(&f.t[st_find(&f, "empty")]), 0);
    assert_int_equal(st_find(&f, "nope"), -1);
    assert_int_equal(st_read(&f, NSPEC, 0, 0, NULL, err, sizeof err), -1);
    st_close(&f);
}

/* The exact bytes of the reference's test_serialization (safetensors tensor.rs). */
static void test_reference_bytes(void **st) {
    (void)st;
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/ref.safetensors", tmpdir);
    st_writer *w;
    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    assert_int_equal(st_writer_add(w, "attn.0", ST_F32, 3, (int64_t[]){1, 2, 3}), 0);
    assert_int_equal(st_writer_begin(w, err, sizeof err), 0);
    float v[6] = {0, 1, 2, 3, 4, 5};
    assert_int_equal(st_writer_put(w, "attn.0", 0, v, sizeof v, err, sizeof err), 0);
    assert_int_equal(st_writer_close(w, 1, err, sizeof err), 0);
    static const char hdr[] = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
    unsigned char buf[200];
    FILE *fp = fopen(path, "rb");
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    assert_int_equal(n, 8 + 64 + 24);
    assert_int_equal(buf[0], 64);
    assert_memory_equal(buf + 8, hdr, strlen(hdr));
    assert_memory_equal(buf + 8 + 64, v, 24);
    /* an empty file with metadata: {"__metadata__":{"framework":"pt"}} + 5 spaces */
    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    assert_int_equal(st_writer_meta(w, "framework", "pt"), 0);
    assert_int_equal(st_writer_begin(w, err, sizeof err), 0);
    assert_int_equal(st_writer_close(w, 1, err, sizeof err), 0);
    fp = fopen(path, "rb");
    n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    assert_int_equal(n, 48);
    assert_memory_equal(buf + 8, "{\"__metadata__\":{\"framework\":\"pt\"}}     ", 40);
}

static void test_writer_checks(void **st) {
    (void)st;
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/chk.safetensors", tmpdir);
    st_writer *w;
    /* a tensor short of bytes: close fails naming it and removes the file */
    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    assert_int_equal(st_writer_add(w, "a", ST_F32, 1, (int64_t[]){2}), 0);
    assert_int_equal(st_writer_add(w, "b", ST_U8, 1, (int64_t[]){2}), 0);
    assert_int_equal(st_writer_begin(w, err, sizeof err), 0);
    assert_int_equal(st_writer_put(w, "a", 0, "12345678", 8, err, sizeof err), 0);
    assert_int_equal(st_writer_put(w, "b", 0, "x", 1, err, sizeof err), 0);
    assert_int_equal(st_writer_close(w, 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "tensor 'b': received 1 of its 2 bytes"));
    assert_int_not_equal(access(path, F_OK), 0);
    /* bad declarations */
    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    assert_int_equal(st_writer_add(w, "f4", ST_F4, 1, (int64_t[]){3}), -1);
    assert_int_equal(st_writer_begin(w, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a whole number of bytes"));
    st_writer_abort(w, 1);
    char longname[ST_MAX_NAME + 1];
    memset(longname, 'x', ST_MAX_NAME);
    longname[ST_MAX_NAME] = 0;
    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    assert_int_equal(st_writer_add(w, longname, ST_U8, 0, NULL), -1);
    assert_int_equal(st_writer_add(w, "__metadata__", ST_U8, 0, NULL), -1);
    assert_int_equal(st_writer_add(w, "neg", ST_U8, 1, (int64_t[]){-1}), -1);
    assert_int_equal(st_writer_add(w, "ovf", ST_U64, 2, (int64_t[]){INT64_MAX, 4}), -1);
    assert_int_equal(st_writer_add(w, "bad\xff", ST_U8, 0, NULL), -1);
    longname[ST_MAX_NAME - 1] = 0; /* 511 bytes: fine */
    assert_int_equal(st_writer_add(w, longname, ST_U8, 0, NULL), 0);
    assert_int_equal(st_writer_meta(w, "k", "v"), 0);
    assert_int_equal(st_writer_meta(w, "k", "w"), -1);
    st_writer_abort(w, 1);
    /* attach: a second writer of the same file writes its own tensor */
    assert_int_equal(st_writer_open(&w, path, err, sizeof err), 0);
    st_writer *w2;
    assert_int_equal(st_writer_open(&w2, path, err, sizeof err), 0);
    const char *names[2] = {"r0", "r1"};
    for (int r = 0; r < 2; r++) {
        assert_int_equal(st_writer_add(w, names[r], ST_I32, 1, (int64_t[]){2}), 0);
        assert_int_equal(st_writer_add(w2, names[r], ST_I32, 1, (int64_t[]){2}), 0);
    }
    assert_int_equal(st_writer_begin(w, err, sizeof err), 0);
    assert_int_equal(st_writer_attach(w2, err, sizeof err), 0);
    assert_int_equal(st_writer_count(w2), 2);
    assert_int_equal(st_writer_tensor(w2, 1)->begin, 8);
    int32_t a[2] = {1, 2}, b[2] = {3, 4};
    assert_int_equal(st_writer_put(w2, "r1", 0, b, 8, err, sizeof err), 0);
    assert_int_equal(st_writer_close(w2, 0, err, sizeof err), 0);
    assert_int_equal(st_writer_put(w, "r0", 0, a, 8, err, sizeof err), 0);
    assert_int_equal(st_writer_close(w, 0, err, sizeof err), 0);
    st_file f;
    assert_int_equal(st_open(&f, path, err, sizeof err), 0);
    int32_t got[2];
    assert_int_equal(st_read(&f, st_find(&f, "r1"), 0, 8, got, err, sizeof err), 0);
    assert_int_equal(got[1], 4);
    st_close(&f);
}

/* ---- hostile files -------------------------------------------------------- */

/* 8-byte little-endian N (n_hdr, or strlen(hdr) when -1), the header, `data` zero bytes. */
static unsigned char *mk(const char *hdr, int64_t n_hdr, size_t data, size_t *len) {
    size_t h = strlen(hdr);
    uint64_t N = n_hdr < 0 ? h : (uint64_t)n_hdr;
    *len = 8 + h + data;
    unsigned char *b = calloc(*len + 1, 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(N >> (8 * i));
    memcpy(b + 8, hdr, h);
    return b;
}

static void expect_fail(const char *hdr, int64_t n_hdr, size_t data, const char *rule) {
    size_t len;
    unsigned char *b = mk(hdr, n_hdr, data, &len);
    st_file f;
    char err[1024] = "";
    int rc = st_open_mem(&f, b, len, "mem", err, sizeof err);
    if (rc == 0 || !strstr(err, rule)) print_error("header %s\n  expected: %s\n  got: %s\n", hdr, rule, rc ? err : "(success)");
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, rule));
    assert_null(strchr(err, '\n'));
    assert_int_equal(strncmp(err, "mem: ", 5), 0);
    free(b);
}
static void expect_ok(const char *hdr, size_t data) {
    size_t len;
    unsigned char *b = mk(hdr, -1, data, &len);
    st_file f;
    char err[1024] = "";
    int rc = st_open_mem(&f, b, len, "mem", err, sizeof err);
    if (rc) print_error("header %s: %s\n", hdr, err);
    assert_int_equal(rc, 0);
    st_close(&f);
    free(b);
}

#define T1 "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"

static void test_hostile(void **st) {
    (void)st;
    st_file f;
    char err[1024];
    /* 1. fewer than 8 bytes */
    assert_int_equal(st_open_mem(&f, "\x02\0\0\0", 4, "mem", err, sizeof err), -1);
    assert_string_equal(err, "mem: file is 4 bytes, less than the 8-byte header length (HeaderTooSmall)");
    assert_int_equal(st_open_mem(&f, "", 0, "mem", err, sizeof err), -1);
    /* 2. N > 100 MB; N = 2^64-1 */
    expect_fail("{}", 100000001, 0, "header length 100000001 > 100000000 (HeaderTooLarge)");
    expect_fail("{}", INT64_MAX, 0, "(HeaderTooLarge)");
    {
        unsigned char b[16];
        memset(b, 0xff, 8);
        memcpy(b + 8, "{}      ", 8);
        assert_int_equal(st_open_mem(&f, b, 16, "mem", err, sizeof err), -1);
        assert_non_null(strstr(err, "(HeaderTooLarge)"));
    }
    /* 3. header beyond the file */
    expect_fail("{}", 1000, 0, "header length 1000 runs past the end of the file (8 + N > 10 bytes) (InvalidHeaderLength)");
    expect_fail("{}", 3, 0, "(InvalidHeaderLength)");
    /* 4. not '{', not UTF-8, not JSON, duplicate keys, shape of the entries */
    expect_fail(" {}", -1, 0, "header does not start with '{' (InvalidHeaderStart)");
    expect_fail("", -1, 0, "header does not start with '{' (InvalidHeaderStart)");
    expect_fail("[]", -1, 0, "header does not start with '{'");
    expect_fail("{\"a\xff\":1}", -1, 0, "header is not valid UTF-8 (byte 3 of the header) (InvalidHeader)");
    expect_fail("{\"\xed\xa0\x80\":1}", -1, 0, "(InvalidHeader)"); /* an encoded surrogate */
    expect_fail("{\"\xc0\xaf\":1}", -1, 0, "(InvalidHeader)");      /* overlong */
    expect_fail("{\"a\":", -1, 0, "header is not valid JSON");
    expect_fail("{}x", -1, 0, "header is not valid JSON");
    expect_fail("{\"q\\\n\n\":1}", -1, 0, "header is not valid JSON"); /* jansson quotes the token, newline and all (found by the fuzzer) */
    {
        unsigned char b[11] = {3, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0}; /* NUL padding is not whitespace */
        assert_int_equal(st_open_mem(&f, b, 11, "mem", err, sizeof err), -1);
        assert_non_null(strstr(err, "header is not valid JSON"));
    }
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
                -1, 0, "header has a duplicate key");
    expect_fail("{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", -1, 0, "header has a duplicate key");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", -1, 0, "header has a duplicate key");
    expect_fail("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': unknown dtype 'F33'");
    expect_fail("{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': unknown dtype 'f32'");
    expect_fail("{\"a\":{\"dtype\":3,\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': dtype is not a string");
    expect_fail("{\"__metadata__\":{\"format\":1}}", -1, 0, "__metadata__ value of 'format' is not a string");
    expect_fail("{\"__metadata__\":{\"format\":null}}", -1, 0, "__metadata__ value of 'format' is not a string");
    expect_fail("{\"__metadata__\":{\"f\":{\"a\":\"b\"}}}", -1, 0, "__metadata__ value of 'f' is not a string");
    expect_fail("{\"__metadata__\":[\"pt\"]}", -1, 0, "__metadata__ is not an object of strings");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': shape is not an array of non-negative integers");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': shape is not an array of non-negative integers");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': shape is not an array");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': shape is not an array");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", -1, 1, "tensor 'a': shape has more than 8 dimensions");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", -1, 8, "tensor 'a': data_offsets is not [BEGIN, END]");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-1,8]}}", -1, 8, "tensor 'a': data_offsets is not [BEGIN, END]");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", -1, 8, "tensor 'a': missing field 'data_offsets'");
    expect_fail("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': missing field 'dtype'");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", -1, 8, "tensor 'a': missing field 'shape'");
    expect_fail("{\"a\":[]}", -1, 0, "tensor 'a': entry is not an object");
    expect_fail("{\"a\\n\\u0001'\":7}", -1, 0, "tensor 'a\\x0a\\x01\\x27': entry is not an object"); /* one line */
    expect_fail("{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", -1, 0, "header is not valid JSON");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615],\"data_offsets\":[0,0]}}", -1, 0, "header is not valid JSON");
    /* 5. offsets: first BEGIN 0, no gap, no overlap, END >= BEGIN */
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", -1, 12,
                "tensor 'a': data_offsets [4, 12]: gap before BEGIN (previous END 0) (InvalidOffset)");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}",
                -1, 16, "tensor 'b': data_offsets [12, 16]: gap before BEGIN (previous END 8) (InvalidOffset)");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                -1, 8, "tensor 'b': data_offsets [4, 8]: overlap, BEGIN < previous END 8 (InvalidOffset)");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                -1, 8, "overlap, BEGIN < previous END 8 (InvalidOffset)");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", -1, 8,
                "tensor 'a': data_offsets [8, 0]: END < BEGIN (InvalidOffset)");
    /* 6. size == prod(shape) * bits / 8, overflow, whole bytes */
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", -1, 8,
                "tensor 'a': data_offsets size 8 != prod(shape) * bits / 8 = 12 bytes (TensorInvalidInfo)");
    expect_fail("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", -1, 0, "(TensorInvalidInfo)");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", -1, 0,
                "tensor 'a': prod(shape) * bits overflows (ValidationOverflow)");
    expect_fail("{\"a\":{\"dtype\":\"F4\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", -1, 0, "(ValidationOverflow)");
    expect_fail("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", -1, 2,
                "tensor 'a': prod(shape) * 4 bits is not a whole number of bytes (MisalignedSlice)");
    expect_fail("{\"a\":{\"dtype\":\"F6_E3M2\",\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1, "(MisalignedSlice)");
    /* 7. no trailing bytes, no truncated data */
    expect_fail(T1, -1, 9, "mem: 1 trailing bytes after the last tensor (END 8, data buffer 9 bytes) (MetadataIncompleteBuffer)");
    expect_fail("{}", -1, 1, "1 trailing bytes after the last tensor");
    expect_fail(T1, -1, 7, "mem: data truncated: tensors end at 8 but the data buffer has 7 bytes (MetadataIncompleteBuffer)");
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[2305843009213693951],\"data_offsets\":[0,2305843009213693951]}}", -1, 0,
                "data truncated");
    /* prod(shape) * bits overflows u64 at 2^61 bytes, as in the reference */
    expect_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[2305843009213693952],\"data_offsets\":[0,2305843009213693952]}}", -1, 0,
                "(ValidationOverflow)");
    /* accepted, as by the reference */
    expect_ok(T1, 8);
    expect_ok("{}", 0);
    expect_ok("{}      ", 0);
    expect_ok("{} \t\n", 0);
    expect_ok("{\"__metadata__\":null}", 0);
    expect_ok("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":[1]}}", 8);
    expect_ok("{\"a\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]},\"b\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[2,5]}}", 5);
    expect_ok("{\"z\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[1,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
    expect_ok("{ \"a\" : { \"shape\" : [ 2 ] , \"data_offsets\" : [ 0 , 8 ] , \"dtype\" : \"F32\" } }", 8);
}

/* A few of the same on real files (st_open: fstat, pread). */
static void test_hostile_files(void **st) {
    (void)st;
    char path[512], err[1024];
    snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir);
    struct { const char *hdr; int64_t n; size_t data; const char *rule; } c[] = {
        {"", -1, 0, "(HeaderTooSmall)"},
        {"{}", 1 << 20, 0, "(InvalidHeaderLength)"},
        {T1, -1, 7, "data truncated"},
        {T1, -1, 100, "92 trailing bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", -1, 16,
         "tensor 'b': data_offsets [12, 16]: gap before BEGIN"},
    };
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++) {
        size_t len;
        unsigned char *b = mk(c[k].hdr, c[k].n, c[k].data, &len);
        if (k == 0) len = 3;
        FILE *fp = fopen(path, "wb");
        assert_int_equal(fwrite(b, 1, len, fp), len);
        fclose(fp);
        free(b);
        st_file f;
        assert_int_equal(st_open(&f, path, err, sizeof err), -1);
        assert_non_null(strstr(err, c[k].rule));
        assert_int_equal(strncmp(err, path, strlen(path)), 0);
        assert_int_equal(f.fd, -1);
    }
    st_file f;
    assert_int_equal(st_open(&f, tmpdir, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a regular file"));
    snprintf(path, sizeof path, "%s/missing", tmpdir);
    assert_int_equal(st_open(&f, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
}

static void test_dtypes(void **st) {
    (void)st;
    for (int t = 0; t < ST_NDTYPES; t++) {
        assert_int_equal(st_dtype_parse(st_dtype_name((st_dtype)t)), t);
        int b = st_dtype_bits((st_dtype)t);
        assert_true(b == 4 || b == 6 || b == 8 || b == 16 || b == 32 || b == 64);
    }
    assert_int_equal(st_dtype_parse("F8_E4M3"), ST_F8_E4M3);
    assert_int_equal(st_dtype_bits(ST_BF16), 16);
    assert_int_equal(st_dtype_parse("float32"), -1);
    assert_int_equal(st_dtype_parse(NULL), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_reference_bytes),
        cmocka_unit_test(test_writer_checks),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_hostile_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* test_tb.c — TensorBoard writer: crc32c, record framing, the Event/Summary
 * encoding read back by a minimal protobuf decoder, and log.c's use of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <math.h>
#include <cmocka.h>

#include "log.h"
#include "tb.h"

static char tmpdir[256];

static uint64_t get_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static void test_crc32c(void **st) {
    (void)st;
    /* the standard check value of CRC-32C and the RFC 3720 zero vector */
    assert_int_equal(tb_crc32c("123456789", 9), 0xe3069283u);
    uint8_t z[32] = {0};
    assert_int_equal(tb_crc32c(z, 32), 0x8a9136aau);
    uint32_t c = tb_crc32c("abc", 3);
    assert_int_equal(tb_masked_crc("abc", 3), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

/* Reads all records of a file: checks both crcs, returns payload copies. */
static int read_records(const char *path, uint8_t **rec, size_t *len, int max) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    int n = 0;
    uint8_t head[12];
    while (fread(head, 1, 12, f) == 12) {
        assert_true(n < max);
        uint64_t L = get_le(head, 8);
        assert_int_equal(get_le(head + 8, 4), tb_masked_crc(head, 8));
        rec[n] = malloc(L + 1);
        assert_int_equal(fread(rec[n], 1, L, f), L);
        uint8_t foot[4];
        assert_int_equal(fread(foot, 1, 4, f), 4);
        assert_int_equal(get_le(foot, 4), tb_masked_crc(rec[n], L));
        len[n++] = L;
    }
    fclose(f);
    return n;
}

static uint64_t varint(const uint8_t *p, size_t *i) {
    uint64_t v = 0;
    for (int s = 0;; s += 7) {
        uint8_t b = p[(*i)++];
        v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return v;
    }
}

typedef struct {
    double wall;
    int64_t step;
    char version[32];
    int n;
    char tag[32][48];
    float val[32];
    int session_start;
} event;

static void parse_value(const uint8_t *p, size_t n, event *e) {
    size_t i = 0;
    while (i < n) {
        uint64_t k = varint(p, &i);
        if (k == (1 << 3 | 2)) {
            size_t L = varint(p, &i);
            memcpy(e->tag[e->n], p + i, L);
            e->tag[e->n][L] = 0;
            i += L;
        } else if (k == (2 << 3 | 5)) {
            uint32_t u = (uint32_t)get_le(p + i, 4);
            memcpy(&e->val[e->n], &u, 4);
            i += 4;
        } else
            fail_msg("unexpected Value key %llu", (unsigned long long)k);
    }
    e->n++;
}

static void parse_event(const uint8_t *p, size_t n, event *e) {
    memset(e, 0, sizeof *e);
    size_t i = 0;
    while (i < n) {
        uint64_t k = varint(p, &i);
        int field = (int)(k >> 3), wt = (int)(k & 7);
        if (field == 1 && wt == 1) {
            uint64_t u = get_le(p + i, 8);
            memcpy(&e->wall, &u, 8);
            i += 8;
        } else if (field == 2 && wt == 0) {
            e->step = (int64_t)varint(p, &i);
        } else if (wt == 2) {
            size_t L = varint(p, &i), end = i + L;
            if (field == 3) {
                memcpy(e->version, p + i, L);
                e->version[L] = 0;
            } else if (field == 5) {
                size_t j = i;
                while (j < end) {
                    assert_int_equal(varint(p, &j), 1 << 3 | 2);
                    size_t VL = varint(p, &j);
                    parse_value(p + j, VL, e);
                    j += VL;
                }
            } else if (field == 7) {
                size_t j = i;
                assert_int_equal(varint(p, &j), 1 << 3 | 0);
                e->session_start = varint(p, &j) == 1;
            } else
                fail_msg("unexpected Event field %d", field);
            i = end;
        } else
            fail_msg("unexpected Event key %llu", (unsigned long long)k);
    }
}

static void find_events(const char *dir, char *out, size_t n, int which) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int k = 0;
    out[0] = 0;
    while ((de = readdir(d)))
        if (strstr(de->d_name, "tfevents") && k++ == which) snprintf(out, n, "%s/%s", dir, de->d_name);
    closedir(d);
    assert_true(out[0]);
}

static void test_writer(void **st) {
    (void)st;
    char dir[512], err[256], path[1024];
    snprintf(dir, sizeof dir, "%s/w/a/b", tmpdir); /* parents are created */
    tb_writer w;
    assert_int_equal(tb_open(&w, dir, err, sizeof err), 0);
    const char *tags[2] = {"loss", "moe_imbalance/layer_1"};
    double v[2] = {3.25, 1.5};
    assert_int_equal(tb_scalars(&w, 7, 2, tags, v), 0);
    assert_int_equal(tb_start(&w, 5), 0);
    tb_close(&w);
    find_events(dir, path, sizeof path, 0);
    uint8_t *rec[8];
    size_t len[8];
    assert_int_equal(read_records(path, rec, len, 8), 3);
    event e;
    parse_event(rec[0], len[0], &e);
    assert_string_equal(e.version, "brain.Event:2");
    assert_true(e.wall > 1.6e9);
    parse_event(rec[1], len[1], &e);
    assert_int_equal(e.step, 7);
    assert_int_equal(e.n, 2);
    assert_string_equal(e.tag[0], "loss");
    assert_true(e.val[0] == 3.25f);
    assert_string_equal(e.tag[1], "moe_imbalance/layer_1");
    assert_true(e.val[1] == 1.5f);
    parse_event(rec[2], len[2], &e);
    assert_int_equal(e.step, 5);
    assert_true(e.session_start);
    for (int i = 0; i < 3; i++) free(rec[i]);
}

static void test_log_rows(void **st) {
    (void)st;
    char err[256], out[512], path[1024], tbdir[600];
    snprintf(out, sizeof out, "%s/run", tmpdir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", out);
    assert_int_equal(system(cmd), 0);
    int layers[2] = {1, 3};
    double imb[2] = {1.25, 2.5};
    for (int pass = 0; pass < 2; pass++) { /* a fresh run to step 4, then a resume from step 2 */
        log_ctx l;
        assert_int_equal(log_open(&l, 0, out, pass ? 2 : 0, err, sizeof err), 0);
        assert_int_equal(log_open_tb(&l, "tb", err, sizeof err), 0);
        for (int s = pass ? 3 : 1; s <= 4; s++) {
            log_row r = {s, 4.0 - 0.1 * s, 3.0, 0.9, 0.1, 1e-3, 1.0, 1024 * s, 5000, s == 4 ? 2.5 : NAN, 2.5,
                         0.1, 0.01, 0.02, 1.0, 2, layers, imb, 2.0 * 1048576.0, 0, s == 4 ? 0.75 : NAN};
            log_step(&l, &r, 4, 0);
        }
        log_close(&l);
    }
    snprintf(tbdir, sizeof tbdir, "%s/tb", out);
    int files = 0;
    for (int k = 0; k < 2; k++) {
        find_events(tbdir, path, sizeof path, k);
        uint8_t *rec[16];
        size_t len[16];
        int n = read_records(path, rec, len, 16);
        event e;
        parse_event(rec[0], len[0], &e);
        assert_string_equal(e.version, "brain.Event:2");
        parse_event(rec[1], len[1], &e);
        assert_true(e.session_start); /* every run marks its first step */
        int resumed = e.step == 3;
        assert_int_equal(e.step, resumed ? 3 : 1);
        assert_int_equal(n, resumed ? 4 : 6); /* version + start + one event per step */
        parse_event(rec[n - 1], len[n - 1], &e);
        assert_int_equal(e.step, 4);
        int seen = 0;
        for (int i = 0; i < e.n; i++) {
            if (!strcmp(e.tag[i], "val_loss")) seen |= 1, assert_true(e.val[i] == 2.5f);
            if (!strcmp(e.tag[i], "moe_imbalance/layer_3")) seen |= 2, assert_true(e.val[i] == 2.5f);
            if (!strcmp(e.tag[i], "memory/allocated_MiB")) seen |= 4, assert_true(e.val[i] == 2.0f);
            if (!strcmp(e.tag[i], "t_reduce")) seen |= 8;
            if (!strcmp(e.tag[i], "val_acc")) seen |= 16, assert_true(e.val[i] == 0.75f);
        }
        assert_int_equal(seen, 31);
        for (int i = 0; i < n; i++) free(rec[i]);
        files++;
    }
    assert_int_equal(files, 2);
    /* off by default, no directory created */
    log_ctx l;
    assert_int_equal(log_open(&l, 0, out, 0, err, sizeof err), 0);
    assert_int_equal(log_open_tb(&l, "", err, sizeof err), 0);
    assert_false(l.tb_on);
    log_close(&l);
}

static int setup(void **st) {
    (void)st;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dsv3_test_tb_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **st) {
    (void)st;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_writer),
        cmocka_unit_test(test_log_rows),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

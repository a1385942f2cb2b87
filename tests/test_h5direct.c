/* test_h5direct.c — Fletcher32 against HDF5's own function (every length,
 * parts added up, the 0-mod-65535 edge cases); a file built by the skeleton
 * driver with chunk bytes written by pwrite reads back through HDF5's
 * Fletcher32 filter, and a flipped byte is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h5direct.h"

uint32_t H5_checksum_fletcher32(const void *data, size_t len); /* exported by libhdf5 (H5private.h) */

static uint64_t g_rng = 88172645463325252ull;
static uint8_t rnd(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (uint8_t)(g_rng >> 24);
}

static void test_fletcher_equals_hdf5(void **state) {
    (void)state;
    enum { N = 70000 };
    uint8_t *b = malloc(N);
    for (size_t i = 0; i < N; i++) b[i] = rnd();
    /* every length up to a few rounds' worth, odd ones included, and long ones */
    for (size_t n = 0; n < 4200; n++) assert_int_equal(fl32(b, n), H5_checksum_fletcher32(b, n));
    for (size_t n = 4200; n <= N; n += 997) assert_int_equal(fl32(b, n), H5_checksum_fletcher32(b, n));
    /* all 0xff words (65535 = 0 mod 65535), all zero, one nonzero word among zeros */
    memset(b, 0xff, N);
    for (size_t n = 0; n < 300; n++) assert_int_equal(fl32(b, n), H5_checksum_fletcher32(b, n));
    assert_int_equal(fl32(b, N), H5_checksum_fletcher32(b, N));
    memset(b, 0, N);
    assert_int_equal(fl32(b, N), H5_checksum_fletcher32(b, N));
    b[N - 2] = 1;
    assert_int_equal(fl32(b, N), H5_checksum_fletcher32(b, N));
    /* words whose sums are multiples of 65535 */
    memset(b, 0, N);
    b[0] = 0xff, b[1] = 0xfe, b[2] = 0x00, b[3] = 0x01; /* 65534 + 1 */
    assert_int_equal(fl32(b, 4), H5_checksum_fletcher32(b, 4));
    assert_int_equal(fl32(b, 64), H5_checksum_fletcher32(b, 64));
    free(b);
}

/* Parts of a chunk summed separately (as ranks do) give the chunk's checksum. */
static void test_fletcher_parts(void **state) {
    (void)state;
    enum { N = 40000 };
    uint8_t *b = malloc(N);
    for (size_t i = 0; i < N; i++) b[i] = rnd();
    size_t cuts[][3] = {{0, 2, N}, {2, 1000, N}, {12346, 20000, 39998}, {N / 2, N / 2, N}, {38, 36000, N - 1}};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        size_t n = cuts[k][2], c0 = cuts[k][0], c1 = cuts[k][1];
        fl32_part acc = {0, 0, 0};
        size_t seg[4] = {0, c0, c1, n};
        for (int s = 2; s >= 0; s--) { /* any order */
            size_t a = seg[s], e = seg[s + 1];
            fl32_add(&acc, fl32_shift(fl32_sum(b + a, e - a), (n - e + 1) / 2));
        }
        assert_int_equal(fl32_final(acc), H5_checksum_fletcher32(b, n));
    }
    free(b);
}

/* Skeleton: metadata by HDF5, chunk bytes by pwrite; HDF5 verifies them on read. */
static void test_skeleton_file(void **state) {
    (void)state;
    char path[] = "/tmp/test_h5direct_XXXXXX";
    int tfd = mkstemp(path);
    assert_true(tfd >= 0);
    close(tfd);
    enum { ROWS = 10, COLS = 1000, CR = 4 }; /* chunks of 4 rows: the last one is an edge chunk of 2 */
    float *data = malloc(sizeof(float) * ROWS * COLS);
    for (int i = 0; i < ROWS * COLS; i++) data[i] = (float)i * 0.25f - 7.0f;
    hid_t fapl = h5skel_fapl();
    assert_true(fapl >= 0);
    H5Pset_alignment(fapl, 65536, 4096);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    assert_true(f >= 0);
    hsize_t dims[2] = {ROWS, COLS}, chunk[2] = {CR, COLS};
    hid_t sp = H5Screate_simple(2, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 2, chunk);
    H5Pset_fletcher32(dcpl);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t ds = H5Dcreate2(f, "/x", H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    assert_true(ds >= 0);
    const size_t cb = sizeof(float) * CR * COLS;
    uint8_t *dummy = calloc(1, cb + 4);
    haddr_t addr[3];
    for (int c = 0; c < 3; c++) {
        hsize_t off[2] = {(hsize_t)c * CR, 0};
        h5skel_drop(1);
        assert_true(H5Dwrite_chunk(ds, H5P_DEFAULT, 0, off, cb + 4, dummy) >= 0);
        h5skel_drop(0);
        addr[c] = h5skel_last_addr();
        assert_true(addr[c] != HADDR_UNDEF);
    }
    H5Dclose(ds), H5Pclose(dcpl), H5Sclose(sp), H5Pclose(fapl);
    assert_true(H5Fclose(f) >= 0);
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    for (int c = 0; c < 3; c++) {
        size_t rows = c < 2 ? CR : ROWS - 2 * CR, nb = sizeof(float) * rows * COLS;
        const uint8_t *p = (const uint8_t *)(data + (size_t)c * CR * COLS);
        fl32_part x = fl32_shift(fl32_sum(p, nb), (cb - nb) / 2);
        uint32_t sum = fl32_final(x);
        uint8_t le[4] = {(uint8_t)sum, (uint8_t)(sum >> 8), (uint8_t)(sum >> 16), (uint8_t)(sum >> 24)};
        assert_int_equal(pwrite(fd, p, nb, (off_t)addr[c]), (ssize_t)nb);
        if (nb < cb) assert_int_equal(pwrite(fd, dummy, cb - nb, (off_t)(addr[c] + nb)), (ssize_t)(cb - nb));
        assert_int_equal(pwrite(fd, le, 4, (off_t)(addr[c] + cb)), 4);
    }
    close(fd);
    float *got = calloc(ROWS * COLS, sizeof(float));
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); /* plain sec2: an ordinary HDF5 file */
    ds = H5Dopen2(f, "/x", H5P_DEFAULT);
    assert_true(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, got) >= 0);
    assert_memory_equal(got, data, sizeof(float) * ROWS * COLS);
    H5Dclose(ds), H5Fclose(f);
    /* one flipped byte in the middle chunk: HDF5's checksum refuses it */
    fd = open(path, O_RDWR);
    uint8_t byte;
    assert_int_equal(pread(fd, &byte, 1, (off_t)addr[1] + 100), 1);
    byte ^= 0x10;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)addr[1] + 100), 1);
    close(fd);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ds = H5Dopen2(f, "/x", H5P_DEFAULT);
    assert_true(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, got) < 0);
    H5Dclose(ds), H5Fclose(f);
    unlink(path);
    free(got), free(dummy), free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fletcher_equals_hdf5),
        cmocka_unit_test(test_fletcher_parts),
        cmocka_unit_test(test_skeleton_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
